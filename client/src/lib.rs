//! A Pomelo/Pinus protocol client in Rust, over TCP or WebSocket, plain or
//! TLS.
//!
//! It speaks the same bytes as the npm `pinus-protocol` clients, so it works
//! against session-proxy and any Pomelo/Pinus-compatible server: for bots,
//! load generators (its [`raw`] connection) and integration tests. The
//! session-proxy demo's simulated players use it.
//!
//! - [`PomeloClient`]: connect, request, notify, and read pushes and kicks
//!   ([`PomeloEvent`]);
//! - [`SessionClient`]: a client that keeps its session: it resumes with
//!   the server's token after a drop, goes back to its gate when its
//!   connector drains, and says whether the session came back
//!   ([`ResumeEvent`]);
//! - [`raw`]: the handshaken connection alone, for code that reads and
//!   writes packages itself;
//! - [`ClientError`]: why a connection or a request failed.
//!
//! # Example
//! A gateway with one route of its own, and a client that calls it:
//! ```
//! use serde_json::{json, Value};
//! use session_proxy_client::PomeloClient;
//! use session_proxy_frontend::{BackendRegistry, Gateway, GatewayConfig, SessionConfig, SessionService};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let sessions = SessionService::new(SessionConfig::new("connector-1"));
//! let mut gateway = Gateway::new(sessions, BackendRegistry::default(), GatewayConfig::new("connector"));
//! gateway.handlers().add("connector.entryHandler.hello", |_ctx, body: Value| async move {
//!     Ok(json!({ "code": 200, "hello": body["name"] }))
//! });
//! let server = gateway.bind("127.0.0.1:0".parse()?).await?;
//!
//! let client = PomeloClient::connect(server.local_addr()).await?;
//! let answer = client
//!     .request("connector.entryHandler.hello", &json!({ "name": "ana" }))
//!     .await?;
//! assert_eq!(answer, json!({ "code": 200, "hello": "ana" }));
//! server.shutdown(std::time::Duration::from_secs(1)).await;
//! # Ok(())
//! # }
//! ```

mod error;
pub mod raw;
pub mod resume;

pub use error::ClientError;
pub use resume::{Entry, ResumeEvent, ResumeOptions, Saved, SessionClient, WhileReconnecting};

use bytes::{Bytes, BytesMut};
use raw::{open, package, Io};
use serde_json::{json, Value};
use session_proxy_link::LinkTls;
use session_proxy_protocol::client::{
    encode_parts, ClientMessage, MessageType, Package, PackageCodec, PackageType, Route,
    MAX_PACKAGE_BODY,
};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{sleep_until, timeout, Instant};
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

/// The requests awaiting responses (a panic elsewhere cannot leave the map
/// half-changed: each change is one call).
fn waiters_of(
    waiters: &Waiters,
) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<Value>>> {
    use session_proxy_protocol::sync::LockUnpoisoned as _;
    waiters.lock_unpoisoned()
}

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

impl PomeloClient {
    /// Connects with default options over TCP.
    pub async fn connect(addr: SocketAddr) -> Result<PomeloClient, ClientError> {
        Self::connect_with(addr, PomeloOptions::default()).await
    }

    /// Connects, handshakes and acks. Fails if the server refuses the
    /// handshake (its code is in the error).
    pub async fn connect_with(
        addr: SocketAddr,
        options: PomeloOptions,
    ) -> Result<PomeloClient, ClientError> {
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

    /// The resume token of the handshake reply (`user.resumeToken`), when
    /// the server gives one (session-proxy with resume on): a later
    /// handshake with it in `user.resumeToken` gets the same session back.
    pub fn resume_token(&self) -> Option<&str> {
        self.handshake["user"]["resumeToken"].as_str()
    }

    /// Sends a request and waits for its response body.
    pub async fn request(&self, route: &str, body: &Value) -> Result<Value, ClientError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        waiters_of(&self.waiters).insert(id, tx);
        self.send(MessageType::Request, id, route, body).await?;
        match timeout(self.options.request_timeout, rx).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(_)) => Err(ClientError::ClosedBefore {
                route: route.to_string(),
            }),
            Err(_) => {
                waiters_of(&self.waiters).remove(&id);
                Err(ClientError::Timeout {
                    route: route.to_string(),
                    after: self.options.request_timeout,
                })
            }
        }
    }

    /// Sends a notify.
    pub async fn notify(&self, route: &str, body: &Value) -> Result<(), ClientError> {
        self.send(MessageType::Notify, 0, route, body).await
    }

    async fn send(
        &self,
        kind: MessageType,
        id: u64,
        route: &str,
        body: &Value,
    ) -> Result<(), ClientError> {
        let mut buf = BytesMut::new();
        PackageCodec::new(MAX_PACKAGE_BODY)
            .encode_with(PackageType::Data, &mut buf, |b| {
                encode_parts(
                    kind,
                    id,
                    &Route::Name(route.to_string()),
                    body.to_string().as_bytes(),
                    b,
                )
            })
            .map_err(ClientError::Protocol)?;
        self.send_raw(buf.freeze()).await
    }

    /// Sends raw bytes as they are (for tests of malformed input).
    pub async fn send_raw(&self, bytes: Bytes) -> Result<(), ClientError> {
        self.tx.send(bytes).await.map_err(|_| ClientError::Closed)
    }

    /// The next push, kick or close, waiting at most `wait`.
    pub async fn next_event(&mut self, wait: Duration) -> Option<PomeloEvent> {
        timeout(wait, self.events.recv()).await.ok().flatten()
    }

    /// The next push (skipping nothing: a kick or close is an error).
    pub async fn next_push(&mut self, wait: Duration) -> Result<(String, Value), ClientError> {
        match self.next_event(wait).await {
            Some(PomeloEvent::Push { route, body }) => Ok((route, body)),
            Some(other) => Err(ClientError::NotAPush(Box::new(other))),
            None => Err(ClientError::NoPush(wait)),
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
    // Nothing from the server, not even a heartbeat, for two intervals (and
    // a second of slack): the connection is dead.
    let silence = heartbeat.map_or(far, |h| 2 * h + Duration::from_secs(1));
    let mut heard = Instant::now();
    let outcome: Result<(), ClientError> = async {
        loop {
            while let Some(p) = codec.decode(&mut buf).map_err(ClientError::Protocol)? {
                on_package(p, &waiters, &events)?;
            }
            tokio::select! {
                out = rx.recv() => match out {
                    Some(bytes) => io.write(bytes).await?,
                    None => return Ok(()),
                },
                _ = sleep_until(next_beat) => {
                    io.write(package(PackageType::Heartbeat, &[])?).await?;
                    next_beat = Instant::now() + heartbeat.unwrap_or(far);
                }
                more = io.read(&mut buf) => {
                    if !more? {
                        return Ok(());
                    }
                    heard = Instant::now();
                }
                _ = sleep_until(heard + silence) => return Err(ClientError::Silent(silence)),
            }
        }
    }
    .await;
    if let Err(err) = outcome {
        tracing::debug!(cause = %session_proxy_protocol::chain(&err), "client connection ended");
    }
    waiters_of(&waiters).clear();
    let _ = events.send(PomeloEvent::Closed);
}

fn on_package(
    p: Package,
    waiters: &Waiters,
    events: &mpsc::UnboundedSender<PomeloEvent>,
) -> Result<(), ClientError> {
    match p.kind {
        PackageType::Data => {
            let msg = ClientMessage::decode(p.body).map_err(ClientError::Protocol)?;
            let body: Value = if msg.body.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&msg.body).map_err(ClientError::Json)?
            };
            match msg.kind {
                MessageType::Response => {
                    let waiter = waiters_of(waiters).remove(&msg.id);
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
                other => {
                    return Err(ClientError::Unexpected(format!(
                        "the server sent a {other:?} message"
                    )))
                }
            }
        }
        PackageType::Kick => {
            let body: Value = serde_json::from_slice(&p.body).unwrap_or(Value::Null);
            let reason = body["reason"].as_str().unwrap_or_default().to_string();
            let _ = events.send(PomeloEvent::Kick { reason });
        }
        PackageType::Heartbeat => {}
        other => {
            return Err(ClientError::Unexpected(format!(
                "a {other:?} package after the handshake"
            )))
        }
    }
    Ok(())
}
