//! The connection underneath [`PomeloClient`](crate::PomeloClient), for
//! load generators that drive thousands of connections from a few tasks:
//! [`open`] connects and handshakes, then the caller reads and writes
//! packages itself.

use crate::{ClientError, Transport};
use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use session_proxy_link::LinkTls;
use session_proxy_protocol::client::{PackageCodec, PackageType, MAX_PACKAGE_BODY};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::WebSocketStream;
use tokio_util::codec::Decoder;

/// A client socket: TCP or WebSocket, plain or TLS.
pub enum Io {
    /// Packages straight on TCP.
    Tcp(TcpStream),
    /// One package per binary WebSocket message.
    Ws(Box<WebSocketStream<TcpStream>>),
    /// Packages on TLS.
    Tls(Box<TlsStream<TcpStream>>),
    /// WebSocket on TLS.
    Wss(Box<WebSocketStream<TlsStream<TcpStream>>>),
}

async fn ws_read<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    buf: &mut BytesMut,
) -> Result<bool, ClientError> {
    loop {
        match ws.next().await {
            None | Some(Ok(WsMessage::Close(_))) => return Ok(false),
            Some(Err(e)) => return Err(ClientError::WebSocket(Box::new(e))),
            Some(Ok(WsMessage::Binary(b))) => {
                buf.extend_from_slice(&b);
                return Ok(true);
            }
            Some(Ok(_)) => continue,
        }
    }
}

impl Io {
    /// Reads more bytes into `buf`; false on close. Cancel-safe.
    pub async fn read(&mut self, buf: &mut BytesMut) -> Result<bool, ClientError> {
        match self {
            Io::Tcp(s) => {
                buf.reserve(4096);
                Ok(s.read_buf(buf).await.map_err(ClientError::Io)? > 0)
            }
            Io::Tls(s) => {
                buf.reserve(4096);
                Ok(s.read_buf(buf).await.map_err(ClientError::Io)? > 0)
            }
            Io::Wss(ws) => ws_read(ws.as_mut(), buf).await,
            Io::Ws(ws) => ws_read(ws.as_mut(), buf).await,
        }
    }

    /// Writes bytes (one binary message over WebSocket).
    pub async fn write(&mut self, data: Bytes) -> Result<(), ClientError> {
        let ws = |e| ClientError::WebSocket(Box::new(e));
        match self {
            Io::Tcp(s) => s.write_all(&data).await.map_err(ClientError::Io),
            Io::Ws(w) => w.send(WsMessage::Binary(data)).await.map_err(ws),
            Io::Tls(s) => {
                s.write_all(&data).await.map_err(ClientError::Io)?;
                s.flush().await.map_err(ClientError::Io)
            }
            Io::Wss(w) => w.send(WsMessage::Binary(data)).await.map_err(ws),
        }
    }
}

/// One encoded package of `kind` with `body` (of at most
/// [`MAX_PACKAGE_BODY`] bytes: a longer body is an error).
pub fn package(kind: PackageType, body: &[u8]) -> Result<Bytes, ClientError> {
    let mut buf = BytesMut::new();
    PackageCodec::new(MAX_PACKAGE_BODY)
        .encode_to(kind, body, &mut buf)
        .map_err(ClientError::Protocol)?;
    Ok(buf.freeze())
}

/// What [`open`] gives: the socket, the codec to read packages with, the
/// bytes already read past the handshake reply, and the reply.
pub type Opened = (Io, PackageCodec, BytesMut, Value);

/// How long the server has to answer the handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects to `addr`, handshakes with `user` as the handshake's user part,
/// and acks.
pub async fn open(
    addr: SocketAddr,
    transport: Transport,
    user: &Value,
    tls: Option<&LinkTls>,
) -> Result<Opened, ClientError> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|source| ClientError::Connect { addr, source })?;
    let _ = stream.set_nodelay(true);
    let mut io = match (transport, tls) {
        (Transport::Tcp, None) => Io::Tcp(stream),
        (Transport::WebSocket, None) => {
            let url = format!("ws://{addr}/");
            let (ws, _) = tokio_tungstenite::client_async(url, stream)
                .await
                .map_err(|e| ClientError::WebSocket(Box::new(e)))?;
            Io::Ws(Box::new(ws))
        }
        (Transport::Tcp, Some(tls)) => Io::Tls(Box::new(
            tls.connect(stream).await.map_err(ClientError::Tls)?,
        )),
        (Transport::WebSocket, Some(tls)) => {
            let stream = tls.connect(stream).await.map_err(ClientError::Tls)?;
            let url = format!("wss://{addr}/");
            let (ws, _) = tokio_tungstenite::client_async(url, stream)
                .await
                .map_err(|e| ClientError::WebSocket(Box::new(e)))?;
            Io::Wss(Box::new(ws))
        }
    };
    let kind = match transport {
        Transport::Tcp => "rust-tcp",
        Transport::WebSocket => "rust-websocket",
    };
    let hello = json!({ "sys": { "type": kind, "version": "0.1.0" }, "user": user });
    io.write(package(
        PackageType::Handshake,
        hello.to_string().as_bytes(),
    )?)
    .await?;
    let mut codec = PackageCodec::new(MAX_PACKAGE_BODY);
    let mut buf = BytesMut::new();
    let reply = timeout(HANDSHAKE_TIMEOUT, async {
        loop {
            if let Some(p) = codec.decode(&mut buf).map_err(ClientError::Protocol)? {
                return Ok(p);
            }
            if !io.read(&mut buf).await? {
                return Err(ClientError::Closed);
            }
        }
    })
    .await
    .map_err(|_| ClientError::HandshakeTimeout)??;
    if reply.kind != PackageType::Handshake {
        return Err(ClientError::Unexpected(format!(
            "a {:?} package instead of the handshake reply",
            reply.kind
        )));
    }
    let handshake: Value = serde_json::from_slice(&reply.body).map_err(ClientError::Json)?;
    if handshake["code"] != 200 {
        return Err(ClientError::Refused {
            code: handshake["code"].as_u64().unwrap_or(0),
            error: handshake["error"].as_str().unwrap_or("").to_string(),
            retry: handshake["retry"] == true,
        });
    }
    io.write(package(PackageType::HandshakeAck, &[])?).await?;
    Ok((io, codec, buf, handshake))
}
