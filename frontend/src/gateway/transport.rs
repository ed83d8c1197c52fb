//! Raw TCP or WebSocket under one interface: bytes in, packages out.

use crate::GatewayConfig;
use bytes::{Buf, Bytes, BytesMut};
#[cfg(feature = "websocket")]
use futures::{SinkExt, StreamExt};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
#[cfg(feature = "tls")]
use tokio::io::AsyncReadExt;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
#[cfg(feature = "tls")]
use tokio_rustls::server::TlsStream;
#[cfg(feature = "websocket")]
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
#[cfg(feature = "websocket")]
use tokio_tungstenite::tungstenite::Message as WsMessage;
#[cfg(feature = "websocket")]
use tokio_tungstenite::WebSocketStream;

/// A client connection's transport. Over TCP, packages are framed by their
/// own headers; over WebSocket, each binary message carries whole packages.
pub(crate) enum Transport {
    /// Raw TCP.
    Tcp(TcpStream),
    /// WebSocket (boxed: its state is much larger than a TcpStream).
    #[cfg(feature = "websocket")]
    Ws(Box<WebSocketStream<TcpStream>>),
    /// Raw packages over TLS.
    #[cfg(feature = "tls")]
    Tls(Box<TlsStream<TcpStream>>),
    /// WebSocket over TLS (`wss`).
    #[cfg(all(feature = "tls", feature = "websocket"))]
    Wss(Box<WebSocketStream<Rewind<TlsStream<TcpStream>>>>),
}

/// A stream whose first bytes were already read (to sniff them): serves
/// those again, then the rest.
#[cfg_attr(not(all(feature = "tls", feature = "websocket")), allow(dead_code))]
pub(crate) struct Rewind<S> {
    head: Bytes,
    inner: S,
}

impl<S> Rewind<S> {
    #[cfg_attr(not(all(feature = "tls", feature = "websocket")), allow(dead_code))]
    pub(crate) fn new(head: Bytes, inner: S) -> Self {
        Rewind { head, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.head.is_empty() {
            let n = self.head.len().min(buf.remaining());
            let chunk = self.head.split_to(n);
            buf.put_slice(&chunk);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl Transport {
    /// The transport's name, for logs and metadata.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Transport::Tcp(_) => "tcp",
            #[cfg(feature = "websocket")]
            Transport::Ws(_) => "ws",
            #[cfg(feature = "tls")]
            Transport::Tls(_) => "tls",
            #[cfg(all(feature = "tls", feature = "websocket"))]
            Transport::Wss(_) => "wss",
        }
    }

    /// Reads more client bytes onto the end of `buf`; `Ready(Ok(false))` on
    /// a clean close.
    ///
    /// Over TCP and TLS the bytes land in a stack buffer first and `buf`
    /// grows by exactly what arrived: a connection holds no read buffer
    /// between messages, and a burst of handshakes does not leave
    /// page-sized holes in the heap.
    pub(crate) fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<Result<bool, String>> {
        // Uninitialised: zeroing 8 KiB per read cost more than the copy.
        let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
        let mut read = ReadBuf::uninit(&mut chunk);
        // A short read also tells tokio the socket is drained, so the next
        // poll waits for readiness instead of trying a read that would
        // fail with EAGAIN (one wasted syscall per request otherwise).
        let polled = match self {
            Transport::Tcp(stream) => Pin::new(stream).poll_read(cx, &mut read),
            #[cfg(feature = "tls")]
            Transport::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, &mut read),
            #[cfg(all(feature = "tls", feature = "websocket"))]
            Transport::Wss(ws) => return poll_ws_read(ws.as_mut(), cx, buf),
            #[cfg(feature = "websocket")]
            Transport::Ws(ws) => return poll_ws_read(ws.as_mut(), cx, buf),
        };
        ready!(polled).map_err(|e| format!("read failed: {e}"))?;
        if read.filled().is_empty() {
            return Poll::Ready(Ok(false));
        }
        buf.extend_from_slice(read.filled());
        crate::metrics::BYTES_IN.increment(read.filled().len() as u64);
        Poll::Ready(Ok(true))
    }

    /// Writes all of `out`: over TCP and TLS as a byte stream (then a TLS
    /// flush), over WebSocket as one binary message. `flushing` carries a
    /// started flush across calls; call again while `out` is not empty or
    /// `flushing` is set.
    #[cfg_attr(
        not(any(feature = "tls", feature = "websocket")),
        allow(unused_variables)
    )]
    pub(crate) fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut BytesMut,
        flushing: &mut bool,
    ) -> Poll<Result<(), String>> {
        match self {
            Transport::Tcp(stream) => poll_write_all(Pin::new(stream), cx, out),
            #[cfg(feature = "tls")]
            Transport::Tls(stream) => {
                if !out.is_empty() {
                    *flushing = true;
                    ready!(poll_write_all(Pin::new(stream.as_mut()), cx, out))?;
                }
                if *flushing {
                    ready!(Pin::new(stream.as_mut()).poll_flush(cx))
                        .map_err(|e| format!("write failed: {e}"))?;
                    *flushing = false;
                }
                Poll::Ready(Ok(()))
            }
            #[cfg(feature = "websocket")]
            Transport::Ws(ws) => poll_ws_send(ws.as_mut(), cx, out, flushing),
            #[cfg(all(feature = "tls", feature = "websocket"))]
            Transport::Wss(ws) => poll_ws_send(ws.as_mut(), cx, out, flushing),
        }
    }
}

/// Bytes read from a TCP or TLS socket per call (on the stack).
const READ_CHUNK: usize = 8192;

fn poll_write_all<W: AsyncWrite>(
    mut io: Pin<&mut W>,
    cx: &mut Context<'_>,
    out: &mut BytesMut,
) -> Poll<Result<(), String>> {
    while !out.is_empty() {
        let n =
            ready!(io.as_mut().poll_write(cx, out)).map_err(|e| format!("write failed: {e}"))?;
        if n == 0 {
            return Poll::Ready(Err("write failed: the socket accepts no more bytes".into()));
        }
        out.advance(n);
        crate::metrics::BYTES_OUT.increment(n as u64);
    }
    Poll::Ready(Ok(()))
}

#[cfg(feature = "websocket")]
fn poll_ws_read<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
) -> Poll<Result<bool, String>> {
    loop {
        match ready!(ws.poll_next_unpin(cx)) {
            None | Some(Ok(WsMessage::Close(_))) => return Poll::Ready(Ok(false)),
            Some(Err(err)) => return Poll::Ready(Err(format!("websocket error: {err}"))),
            Some(Ok(WsMessage::Binary(data))) => {
                buf.extend_from_slice(&data);
                crate::metrics::BYTES_IN.increment(data.len() as u64);
                return Poll::Ready(Ok(true));
            }
            Some(Ok(WsMessage::Text(_))) => {
                return Poll::Ready(Err(
                    "text websocket messages are not part of the protocol".into()
                ))
            }
            // Pings are answered by tungstenite itself.
            Some(Ok(_)) => continue,
        }
    }
}

#[cfg(feature = "websocket")]
fn poll_ws_send<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    cx: &mut Context<'_>,
    out: &mut BytesMut,
    flushing: &mut bool,
) -> Poll<Result<(), String>> {
    let failed = |e| format!("websocket write failed: {e}");
    if !out.is_empty() {
        ready!(ws.poll_ready_unpin(cx)).map_err(failed)?;
        crate::metrics::BYTES_OUT.increment(out.len() as u64);
        ws.start_send_unpin(WsMessage::Binary(out.split().freeze()))
            .map_err(failed)?;
        *flushing = true;
    }
    if *flushing {
        ready!(ws.poll_flush_unpin(cx)).map_err(failed)?;
        *flushing = false;
    }
    Poll::Ready(Ok(()))
}

/// How a connection ends, for a WebSocket's close frame (RFC 6455 codes a
/// browser's `CloseEvent.code` shows).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ending {
    /// 1000: the session ended (kicked, refused, closed, the client left).
    Normal,
    /// 1001: the server is going away (shutdown or drain).
    GoingAway,
}

impl Transport {
    /// Closes the connection politely (best effort): over WebSocket with a
    /// close frame carrying `ending`'s code and `reason` (cut to the 123
    /// bytes a close frame holds).
    #[cfg_attr(not(feature = "websocket"), allow(unused_variables))]
    pub(crate) async fn close(&mut self, ending: Ending, reason: &str) {
        #[cfg(feature = "websocket")]
        let frame = || {
            use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
            use tokio_tungstenite::tungstenite::protocol::CloseFrame;
            let mut end = reason.len().min(123);
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            let code = match ending {
                Ending::Normal => CloseCode::Normal,
                Ending::GoingAway => CloseCode::Away,
            };
            WsMessage::Close(Some(CloseFrame {
                code,
                reason: reason[..end].to_string().into(),
            }))
        };
        match self {
            Transport::Tcp(stream) => {
                let _ = stream.shutdown().await;
            }
            #[cfg(feature = "websocket")]
            Transport::Ws(ws) => {
                let _ = ws.send(frame()).await;
            }
            #[cfg(feature = "tls")]
            Transport::Tls(stream) => {
                let _ = stream.shutdown().await;
            }
            #[cfg(all(feature = "tls", feature = "websocket"))]
            Transport::Wss(ws) => {
                let _ = ws.send(frame()).await;
            }
        }
    }
}

/// Whether the gateway serves TLS.
pub(crate) fn tls_configured(config: &GatewayConfig) -> bool {
    #[cfg(feature = "tls")]
    return config.tls.is_some();
    #[cfg(not(feature = "tls"))]
    {
        let _ = config;
        false
    }
}

/// Opens a TLS connection (`tls_hello`: the peeked first byte was a TLS
/// ClientHello and TLS is configured) or a WebSocket one (it was a letter:
/// an HTTP upgrade). Also returns bytes already read past the handshake
/// (TLS only).
#[cfg_attr(not(feature = "tls"), allow(unused_variables))]
pub(crate) async fn upgrade(
    stream: TcpStream,
    config: &GatewayConfig,
    tls_hello: bool,
) -> Result<(Transport, BytesMut), String> {
    #[cfg(feature = "tls")]
    if let (Some(tls), true) = (&config.tls, tls_hello) {
        let mut tls = tls
            .accept(stream)
            .await
            .map_err(|e| format!("TLS handshake failed: {e}"))?;
        // Sniff again inside TLS: an HTTP method means `wss`.
        let mut head = BytesMut::with_capacity(512);
        if tls.read_buf(&mut head).await.map_err(|e| e.to_string())? == 0 {
            return Err("closed after the TLS handshake".into());
        }
        if !head[0].is_ascii_alphabetic() {
            return Ok((Transport::Tls(Box::new(tls)), head));
        }
        #[cfg(feature = "websocket")]
        return tokio_tungstenite::accept_async_with_config(
            Rewind::new(head.freeze(), tls),
            Some(ws_config(config)),
        )
        .await
        .map(|ws| (Transport::Wss(Box::new(ws)), BytesMut::new()))
        .map_err(|e| format!("websocket upgrade failed: {e}"));
        #[cfg(not(feature = "websocket"))]
        return Err(NO_WEBSOCKET.into());
    }
    #[cfg(feature = "websocket")]
    return tokio_tungstenite::accept_async_with_config(stream, Some(ws_config(config)))
        .await
        .map(|ws| (Transport::Ws(Box::new(ws)), BytesMut::new()))
        .map_err(|e| format!("websocket upgrade failed: {e}"));
    #[cfg(not(feature = "websocket"))]
    {
        drop(stream);
        Err(NO_WEBSOCKET.into())
    }
}

#[cfg(not(feature = "websocket"))]
const NO_WEBSOCKET: &str = "a WebSocket upgrade, and this build has no WebSocket support";

/// WebSocket limits: messages no bigger than a package, small buffers.
#[cfg(feature = "websocket")]
fn ws_config(config: &GatewayConfig) -> WebSocketConfig {
    let max = config.max_package + 4;
    WebSocketConfig::default()
        .read_buffer_size(1024)
        .write_buffer_size(0)
        .max_message_size(Some(max))
        .max_frame_size(Some(max))
}
