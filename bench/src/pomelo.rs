//! A Pomelo/Pinus protocol client, over raw TCP or WebSocket.
//!
//! The demo's simulated players and the integration tests use it; it speaks
//! the same bytes as the npm `pinus-protocol` clients, so it works against
//! any Pomelo/Pinus-compatible server.

use anyhow::{anyhow, bail, Context};
use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use session_proxy_backend::LinkTls;
use session_proxy_protocol::client::{
    encode_parts, ClientMessage, MessageType, Package, PackageCodec, PackageType, Route,
    MAX_PACKAGE_BODY,
};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{sleep_until, timeout, Instant};
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::WebSocketStream;
use tokio_util::codec::Decoder;

/// Which transport to speak.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// Packages straight on a TCP stream.
    Tcp,
    /// One package per binary WebSocket message.
    WebSocket,
}

/// Client options.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct PomeloOptions {
    /// The transport. Default: TCP.
    pub transport: Transport,
    /// The `user` part of the handshake. Default: `{}`.
    pub user: Value,
    /// Send heartbeats at the interval the server asks for. Default: true
    /// (turn off to play a silent client).
    pub heartbeats: bool,
    /// How long a request waits for its response. Default: 10 s.
    pub request_timeout: Duration,
    /// Connect over TLS (`wss` with WebSocket). Default: `None`.
    pub tls: Option<LinkTls>,
}

impl Default for PomeloOptions {
    fn default() -> Self {
        PomeloOptions {
            transport: Transport::Tcp,
            user: json!({}),
            heartbeats: true,
            request_timeout: Duration::from_secs(10),
            tls: None,
        }
    }
}

/// Something the server sent that was not a response.
#[derive(Clone, Debug, PartialEq)]
pub enum PomeloEvent {
    /// A push.
    Push {
        /// Its route.
        route: String,
        /// Its JSON body.
        body: Value,
    },
    /// A kick; the connection closes after it.
    Kick {
        /// The server's reason.
        reason: String,
    },
    /// The connection is closed.
    Closed,
}

type Waiters = Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>;

/// A connected, handshaken client.
#[derive(Debug)]
pub struct PomeloClient {
    /// Encoded packages for the I/O task.
    tx: mpsc::Sender<Bytes>,
    /// Requests awaiting responses.
    waiters: Waiters,
    /// Pushes, kicks and the close, in arrival order.
    events: mpsc::UnboundedReceiver<PomeloEvent>,
    /// The next request id (clients count from 1).
    next_id: AtomicU64,
    /// The server's handshake reply.
    handshake: Value,
    /// Options.
    options: PomeloOptions,
    /// The I/O task.
    task: tokio::task::JoinHandle<()>,
}

/// A client socket: raw TCP or WebSocket.
pub(crate) enum Io {
    Tcp(TcpStream),
    Ws(Box<WebSocketStream<TcpStream>>),
    Tls(Box<TlsStream<TcpStream>>),
    Wss(Box<WebSocketStream<TlsStream<TcpStream>>>),
}

async fn ws_read<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    buf: &mut BytesMut,
) -> anyhow::Result<bool> {
    loop {
        match ws.next().await {
            None | Some(Ok(WsMessage::Close(_))) => return Ok(false),
            Some(Err(e)) => return Err(e.into()),
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
    pub(crate) async fn read(&mut self, buf: &mut BytesMut) -> anyhow::Result<bool> {
        match self {
            Io::Tcp(s) => {
                buf.reserve(4096);
                Ok(s.read_buf(buf).await? > 0)
            }
            Io::Tls(s) => {
                buf.reserve(4096);
                Ok(s.read_buf(buf).await? > 0)
            }
            Io::Wss(ws) => ws_read(ws.as_mut(), buf).await,
            Io::Ws(ws) => ws_read(ws.as_mut(), buf).await,
        }
    }

    /// Writes bytes (one binary message over WebSocket).
    pub(crate) async fn write(&mut self, data: Bytes) -> anyhow::Result<()> {
        match self {
            Io::Tcp(s) => Ok(s.write_all(&data).await?),
            Io::Ws(ws) => Ok(ws.send(WsMessage::Binary(data)).await?),
            Io::Tls(s) => {
                s.write_all(&data).await?;
                Ok(s.flush().await?)
            }
            Io::Wss(ws) => Ok(ws.send(WsMessage::Binary(data)).await?),
        }
    }
}

/// One encoded package.
pub(crate) fn package(kind: PackageType, body: &[u8]) -> Bytes {
    let mut buf = BytesMut::new();
    PackageCodec::new(MAX_PACKAGE_BODY)
        .encode_to(kind, body, &mut buf)
        .expect("client packages are small");
    buf.freeze()
}

impl PomeloClient {
    /// Connects with default options over TCP.
    pub async fn connect(addr: SocketAddr) -> anyhow::Result<PomeloClient> {
        Self::connect_with(addr, PomeloOptions::default()).await
    }

    /// Connects, handshakes and acks. Fails if the server refuses the
    /// handshake (its code is in the error).
    pub async fn connect_with(
        addr: SocketAddr,
        options: PomeloOptions,
    ) -> anyhow::Result<PomeloClient> {
        let (io, codec, buf, handshake) =
            open(addr, options.transport, &options.user, options.tls.as_ref()).await?;
        let interval = Duration::from_secs(handshake["sys"]["heartbeat"].as_u64().unwrap_or(0));
        let (tx, rx) = mpsc::channel(1024);
        // Unbounded: fed only by what this one server connection sends, and
        // read by the client's owner (a test or a simulated player).
        let (events_tx, events) = mpsc::unbounded_channel();
        let waiters: Waiters = Arc::default();
        let heartbeat = (options.heartbeats && !interval.is_zero()).then_some(interval);
        let task = tokio::spawn(io_loop(
            io,
            codec,
            buf,
            rx,
            waiters.clone(),
            events_tx,
            heartbeat,
        ));
        Ok(PomeloClient {
            tx,
            waiters,
            events,
            next_id: AtomicU64::new(1),
            handshake,
            options,
            task,
        })
    }

    /// The server's handshake reply.
    pub fn handshake(&self) -> &Value {
        &self.handshake
    }

    /// Sends a request and waits for its response body.
    pub async fn request(&self, route: &str, body: &Value) -> anyhow::Result<Value> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.waiters
            .lock()
            .map_err(|_| anyhow!("client state poisoned"))?
            .insert(id, tx);
        self.send(MessageType::Request, id, route, body).await?;
        match timeout(self.options.request_timeout, rx).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(_)) => bail!("connection closed before the response to {route}"),
            Err(_) => {
                if let Ok(mut w) = self.waiters.lock() {
                    w.remove(&id);
                }
                bail!(
                    "no response to {route} within {:?}",
                    self.options.request_timeout
                )
            }
        }
    }

    /// Sends a notify.
    pub async fn notify(&self, route: &str, body: &Value) -> anyhow::Result<()> {
        self.send(MessageType::Notify, 0, route, body).await
    }

    async fn send(
        &self,
        kind: MessageType,
        id: u64,
        route: &str,
        body: &Value,
    ) -> anyhow::Result<()> {
        let mut buf = BytesMut::new();
        PackageCodec::new(MAX_PACKAGE_BODY).encode_with(PackageType::Data, &mut buf, |b| {
            encode_parts(
                kind,
                id,
                &Route::Name(route.to_string()),
                body.to_string().as_bytes(),
                b,
            )
        })?;
        self.send_raw(buf.freeze()).await
    }

    /// Sends raw bytes as they are (for tests of malformed input).
    pub async fn send_raw(&self, bytes: Bytes) -> anyhow::Result<()> {
        self.tx
            .send(bytes)
            .await
            .map_err(|_| anyhow!("connection closed"))
    }

    /// The next push, kick or close, waiting at most `wait`.
    pub async fn next_event(&mut self, wait: Duration) -> Option<PomeloEvent> {
        timeout(wait, self.events.recv()).await.ok().flatten()
    }

    /// The next push (skipping nothing: a kick or close is an error).
    pub async fn next_push(&mut self, wait: Duration) -> anyhow::Result<(String, Value)> {
        match self.next_event(wait).await {
            Some(PomeloEvent::Push { route, body }) => Ok((route, body)),
            Some(other) => bail!("expected a push, got {other:?}"),
            None => bail!("no push within {wait:?}"),
        }
    }

    /// Closes the connection.
    pub fn close(self) {
        self.task.abort();
    }
}

impl Drop for PomeloClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn io_loop(
    mut io: Io,
    mut codec: PackageCodec,
    mut buf: BytesMut,
    mut rx: mpsc::Receiver<Bytes>,
    waiters: Waiters,
    events: mpsc::UnboundedSender<PomeloEvent>,
    heartbeat: Option<Duration>,
) {
    let far = Duration::from_secs(86_400 * 365);
    let mut next_beat = Instant::now() + heartbeat.unwrap_or(far);
    let outcome: anyhow::Result<()> = async {
        loop {
            while let Some(p) = codec.decode(&mut buf)? {
                on_package(p, &waiters, &events)?;
            }
            tokio::select! {
                out = rx.recv() => match out {
                    Some(bytes) => io.write(bytes).await?,
                    None => return Ok(()),
                },
                _ = sleep_until(next_beat) => {
                    io.write(package(PackageType::Heartbeat, &[])).await?;
                    next_beat = Instant::now() + heartbeat.unwrap_or(far);
                }
                more = io.read(&mut buf) => if !more? { return Ok(()) },
            }
        }
    }
    .await;
    if let Err(err) = outcome {
        tracing::debug!(cause = %err, "client connection ended");
    }
    if let Ok(mut w) = waiters.lock() {
        w.clear();
    }
    let _ = events.send(PomeloEvent::Closed);
}

fn on_package(
    p: Package,
    waiters: &Waiters,
    events: &mpsc::UnboundedSender<PomeloEvent>,
) -> anyhow::Result<()> {
    match p.kind {
        PackageType::Data => {
            let msg = ClientMessage::decode(p.body)?;
            let body: Value = if msg.body.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&msg.body)?
            };
            match msg.kind {
                MessageType::Response => {
                    let waiter = waiters
                        .lock()
                        .map_err(|_| anyhow!("client state poisoned"))?
                        .remove(&msg.id);
                    if let Some(w) = waiter {
                        let _ = w.send(body);
                    }
                }
                MessageType::Push => {
                    let route = match msg.route {
                        Route::Name(n) => n,
                        Route::Code(c) => c.to_string(),
                        Route::None => String::new(),
                    };
                    let _ = events.send(PomeloEvent::Push { route, body });
                }
                other => bail!("server sent a {other:?}"),
            }
        }
        PackageType::Kick => {
            let body: Value = serde_json::from_slice(&p.body).unwrap_or(Value::Null);
            let reason = body["reason"].as_str().unwrap_or_default().to_string();
            let _ = events.send(PomeloEvent::Kick { reason });
        }
        PackageType::Heartbeat => {}
        other => bail!("unexpected {other:?} package"),
    }
    Ok(())
}

/// Connects, handshakes and acks; returns the socket, the codec, the bytes
/// already read past the handshake reply, and the reply.
pub(crate) async fn open(
    addr: SocketAddr,
    transport: Transport,
    user: &Value,
    tls: Option<&LinkTls>,
) -> anyhow::Result<(Io, PackageCodec, BytesMut, Value)> {
    let stream = TcpStream::connect(addr).await.context("connect")?;
    let _ = stream.set_nodelay(true);
    let mut io = match (transport, tls) {
        (Transport::Tcp, None) => Io::Tcp(stream),
        (Transport::WebSocket, None) => {
            let url = format!("ws://{addr}/");
            let (ws, _) = tokio_tungstenite::client_async(url, stream)
                .await
                .context("websocket upgrade")?;
            Io::Ws(Box::new(ws))
        }
        (Transport::Tcp, Some(tls)) => Io::Tls(Box::new(
            tls.connect(stream).await.context("TLS handshake")?,
        )),
        (Transport::WebSocket, Some(tls)) => {
            let stream = tls.connect(stream).await.context("TLS handshake")?;
            let url = format!("wss://{addr}/");
            let (ws, _) = tokio_tungstenite::client_async(url, stream)
                .await
                .context("websocket upgrade")?;
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
    ))
    .await?;
    let mut codec = PackageCodec::new(MAX_PACKAGE_BODY);
    let mut buf = BytesMut::new();
    let reply = timeout(Duration::from_secs(10), async {
        loop {
            if let Some(p) = codec.decode(&mut buf)? {
                return anyhow::Ok(p);
            }
            if !io.read(&mut buf).await? {
                bail!("closed during the handshake");
            }
        }
    })
    .await
    .context("handshake timed out")??;
    if reply.kind != PackageType::Handshake {
        bail!("expected a handshake reply, got {:?}", reply.kind);
    }
    let handshake: Value = serde_json::from_slice(&reply.body)?;
    if handshake["code"] != 200 {
        bail!(
            "handshake refused with code {}: {}",
            handshake["code"],
            handshake["error"].as_str().unwrap_or("")
        );
    }
    io.write(package(PackageType::HandshakeAck, &[])).await?;
    Ok((io, codec, buf, handshake))
}
