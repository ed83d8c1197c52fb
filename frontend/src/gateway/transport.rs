//! Raw TCP or WebSocket under one interface: bytes in, packages out.

use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::WebSocketStream;

/// A client connection's transport. Over TCP, packages are framed by their
/// own headers; over WebSocket, each binary message carries whole packages.
pub(crate) enum Transport {
    /// Raw TCP.
    Tcp(TcpStream),
    /// WebSocket (boxed: its state is much larger than a TcpStream).
    Ws(Box<WebSocketStream<TcpStream>>),
    /// Raw packages over TLS.
    Tls(Box<TlsStream<TcpStream>>),
    /// WebSocket over TLS (`wss`).
    Wss(Box<WebSocketStream<Rewind<TlsStream<TcpStream>>>>),
}

/// A stream whose first bytes were already read (to sniff them): serves
/// those again, then the rest.
pub(crate) struct Rewind<S> {
    head: Bytes,
    inner: S,
}

impl<S> Rewind<S> {
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
            Transport::Ws(_) => "ws",
            Transport::Tls(_) => "tls",
            Transport::Wss(_) => "wss",
        }
    }

    /// Reads more client bytes into `buf`. `Ok(false)` on a clean close.
    /// Cancel-safe: nothing is lost if the future is dropped.
    pub(crate) async fn read(&mut self, buf: &mut BytesMut) -> Result<bool, String> {
        match self {
            Transport::Tcp(stream) => {
                // Wait for data without holding a buffer: an idle client
                // then costs no read buffer at all.
                stream
                    .readable()
                    .await
                    .map_err(|e| format!("read failed: {e}"))?;
                buf.reserve(4096);
                match stream.try_read_buf(buf) {
                    Ok(0) => Ok(false),
                    Ok(_) => Ok(true),
                    Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => Ok(true),
                    Err(err) => Err(format!("read failed: {err}")),
                }
            }
            Transport::Tls(stream) => {
                buf.reserve(4096);
                match stream.read_buf(buf).await {
                    Ok(0) => Ok(false),
                    Ok(_) => Ok(true),
                    Err(err) => Err(format!("read failed: {err}")),
                }
            }
            Transport::Wss(ws) => ws_read(ws.as_mut(), buf).await,
            Transport::Ws(ws) => ws_read(ws.as_mut(), buf).await,
        }
    }
}

async fn ws_read<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    buf: &mut BytesMut,
) -> Result<bool, String> {
    loop {
        match ws.next().await {
            None | Some(Ok(WsMessage::Close(_))) => return Ok(false),
            Some(Err(err)) => return Err(format!("websocket error: {err}")),
            Some(Ok(WsMessage::Binary(data))) => {
                buf.extend_from_slice(&data);
                return Ok(true);
            }
            Some(Ok(WsMessage::Text(_))) => {
                return Err("text websocket messages are not part of the protocol".into())
            }
            // Pings are answered by tungstenite itself.
            Some(Ok(_)) => continue,
        }
    }
}

impl Transport {
    /// Writes encoded packages: one write over TCP, one binary message over
    /// WebSocket.
    pub(crate) async fn write(&mut self, data: Bytes) -> Result<(), String> {
        match self {
            Transport::Tcp(stream) => stream
                .write_all(&data)
                .await
                .map_err(|e| format!("write failed: {e}")),
            Transport::Ws(ws) => ws
                .send(WsMessage::Binary(data))
                .await
                .map_err(|e| format!("websocket write failed: {e}")),
            Transport::Tls(stream) => {
                stream
                    .write_all(&data)
                    .await
                    .map_err(|e| format!("write failed: {e}"))?;
                stream
                    .flush()
                    .await
                    .map_err(|e| format!("write failed: {e}"))
            }
            Transport::Wss(ws) => ws
                .send(WsMessage::Binary(data))
                .await
                .map_err(|e| format!("websocket write failed: {e}")),
        }
    }

    /// Closes the connection politely (best effort).
    pub(crate) async fn close(&mut self) {
        match self {
            Transport::Tcp(stream) => {
                let _ = stream.shutdown().await;
            }
            Transport::Ws(ws) => {
                let _ = SinkExt::close(ws).await;
            }
            Transport::Tls(stream) => {
                let _ = stream.shutdown().await;
            }
            Transport::Wss(ws) => {
                let _ = SinkExt::close(ws).await;
            }
        }
    }
}
