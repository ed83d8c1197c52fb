//! The multiplexed RPC client that a backend keeps to each frontend.
//!
//! A [`FrontendClient`] is a cheap, cloneable handle. Behind it, one
//! supervisor task dials the frontend, runs the version handshake, and keeps
//! the connection up, redialling with jittered exponential backoff when it
//! drops. While a connection is up, a writer task owns its write half (fed by
//! a bounded queue, flushing once per batch) and a reader task matches
//! responses to pending calls by id.
//!
//! Every call has a deadline. A call registers its id *before* its request
//! is queued, and a guard removes the id when the caller stops waiting, so an
//! abandoned call leaves nothing behind. When a connection dies, every call
//! pending on it fails at once with [`Error::ConnectionLost`]; calls made
//! while the frontend is unreachable fail at once with [`Error::Unavailable`].

use crate::handler::SharedHandlers;
use crate::BackendSession;
use crate::Error;
use futures::{FutureExt, SinkExt, StreamExt};
use rand::Rng;
use session_proxy_protocol::auth::NONCE_LEN;
use session_proxy_protocol::{
    Call, ErrorCode, Hello, HelloReply, InFlight, Message, MessageCodec, RegisterError, Reply,
    Request, Response, Role, RpcError, Secret, DEFAULT_MAX_FRAME, PROTOCOL_VERSION,
};
use std::sync::{Arc, Weak};
use std::time::Duration;
/// The read half of a cluster connection, plain or TLS.
type ReadHalf = Box<dyn tokio::io::AsyncRead + Send + Unpin>;
/// The write half of a cluster connection, plain or TLS.
type WriteHalf = Box<dyn tokio::io::AsyncWrite + Send + Unpin>;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{timeout, timeout_at, Instant};
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

/// Settings of the RPC clients a backend keeps to frontends.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ClientConfig {
    /// This backend's node id, sent in the hello. Default: `"backend-1"`.
    pub node_id: String,
    /// The deadline of a call that names none. Default: 5 s.
    pub deadline: Duration,
    /// How long one dial may take. Default: 2 s.
    pub connect_timeout: Duration,
    /// How long the frontend may take to answer the hello. Default: 2 s.
    pub handshake_timeout: Duration,
    /// The first redial delay after a failed attempt; doubles up to
    /// `backoff_max`, with ±25 % jitter. Default: 50 ms.
    pub backoff_min: Duration,
    /// The longest redial delay. Default: 2 s.
    pub backoff_max: Duration,
    /// The most calls pending on one connection; more fail at once with
    /// [`Error::Overloaded`]. Default: 65 536.
    pub max_in_flight: usize,
    /// Requests queued for the writer before callers wait. Default: 4096.
    pub queue: usize,
    /// The largest frame sent or accepted, in bytes. Default: 1 MiB.
    pub max_frame: usize,
    /// The cluster secret: when set, this backend proves it knows it and
    /// requires the frontend to prove it too. Default: `None`, or the
    /// `SESSION_PROXY_SECRET` environment variable when set.
    pub secret: Option<Secret>,
    /// When nothing arrives from a frontend for this long, ping it; no
    /// answer within the same time ends the connection (a half-open link)
    /// and redials. Default: 10 s.
    pub ping_interval: Duration,
    /// Dial frontends over TLS, trusting these authorities. Default: `None`.
    pub tls: Option<crate::ClientTls>,
    /// The server type this backend serves forwarded requests for (e.g.
    /// `"chat"`), announced in the hello. Default: `None` (serves none).
    pub server_type: Option<String>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            node_id: "backend-1".into(),
            deadline: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            handshake_timeout: Duration::from_secs(2),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(2),
            max_in_flight: 65_536,
            queue: 4096,
            max_frame: DEFAULT_MAX_FRAME,
            secret: Secret::from_env("SESSION_PROXY_SECRET"),
            ping_interval: Duration::from_secs(10),
            tls: None,
            server_type: None,
        }
    }
}

impl ClientConfig {
    /// Defaults, with the given node id.
    pub fn new(node_id: impl Into<String>) -> Self {
        ClientConfig {
            node_id: node_id.into(),
            ..ClientConfig::default()
        }
    }
}

/// Where the supervisor is with the connection.
#[derive(Clone)]
enum State {
    /// Dialling or handshaking; calls wait (up to their deadline).
    Connecting,
    /// Connected; calls go out on this connection.
    Up(Arc<Conn>),
    /// The last attempt failed with this cause; calls fail at once.
    Down(String),
}

/// How a pending call ended, as the reader tells the caller.
enum Outcome {
    Reply(Reply),
    Remote(RpcError),
    Lost(String),
}

/// One live connection: the writer's queue and the calls awaiting responses.
struct Conn {
    /// Frames for the writer task.
    tx: mpsc::Sender<Message>,
    /// Calls awaiting responses on this connection.
    inflight: InFlight<Outcome>,
}

struct ClientInner {
    /// The frontend's node id, checked in the handshake.
    frontend_id: Arc<str>,
    /// Client settings.
    config: ClientConfig,
    /// The supervisor's view of the connection.
    state: watch::Receiver<State>,
    /// Stops the supervisor when the last handle is dropped.
    cancel: CancellationToken,
}

impl Drop for ClientInner {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// A handle to one frontend's RPC connection. Clone it freely.
#[derive(Clone)]
pub struct FrontendClient {
    inner: Arc<ClientInner>,
}

impl std::fmt::Debug for FrontendClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrontendClient")
            .field("frontend_id", &self.inner.frontend_id)
            .finish()
    }
}

impl FrontendClient {
    /// Starts keeping a connection to the frontend `frontend_id` at `addr`.
    /// Returns at once; the first call waits for the connection (up to its
    /// deadline). Must be called within a tokio runtime.
    pub fn connect(frontend_id: &str, addr: String, config: ClientConfig) -> FrontendClient {
        Self::connect_serving(frontend_id, addr, config, SharedHandlers::default())
    }

    /// Like [`connect`](Self::connect), and serves the client requests the
    /// frontend forwards over this connection with `handlers`.
    pub fn connect_serving(
        frontend_id: &str,
        addr: String,
        config: ClientConfig,
        handlers: SharedHandlers,
    ) -> FrontendClient {
        let (state_tx, state_rx) = watch::channel(State::Connecting);
        let cancel = CancellationToken::new();
        let frontend_id: Arc<str> = Arc::from(frontend_id);
        let inner = Arc::new(ClientInner {
            frontend_id: frontend_id.clone(),
            config: config.clone(),
            state: state_rx,
            cancel: cancel.clone(),
        });
        let supervisor = Supervisor {
            frontend_id: frontend_id.clone(),
            addr,
            config,
            state: state_tx,
            cancel,
            client: Arc::downgrade(&inner),
            handlers,
        };
        tokio::spawn(
            supervisor
                .run()
                .instrument(tracing::info_span!("frontend_client", frontend = %frontend_id)),
        );
        FrontendClient { inner }
    }

    /// The frontend this client talks to.
    pub fn frontend_id(&self) -> &str {
        &self.inner.frontend_id
    }

    /// Whether a connection is up right now.
    pub fn is_connected(&self) -> bool {
        matches!(*self.inner.state.borrow(), State::Up(_))
    }

    /// Sends a call and waits for its reply, with the default deadline.
    pub async fn call(&self, call: Call) -> Result<Reply, Error> {
        self.send(call).await?.response().await
    }

    /// Sends a call and waits for its reply, with the given deadline.
    pub async fn call_with_deadline(&self, call: Call, deadline: Duration) -> Result<Reply, Error> {
        self.send_with_deadline(call, deadline)
            .await?
            .response()
            .await
    }

    /// Queues a call (default deadline) and returns a handle to await its
    /// reply later. Calls queued one after another from one task reach the
    /// frontend, and are applied, in that order: this is how to pipeline.
    pub async fn send(&self, call: Call) -> Result<PendingCall, Error> {
        self.send_with_deadline(call, self.inner.config.deadline)
            .await
    }

    /// Like [`send`](Self::send), with the given deadline.
    pub async fn send_with_deadline(
        &self,
        call: Call,
        deadline: Duration,
    ) -> Result<PendingCall, Error> {
        let deadline_at = Instant::now() + deadline;
        let conn = self.connection(deadline_at, deadline).await?;
        let (id, rx) = match conn.inflight.register() {
            Ok(pair) => pair,
            Err(RegisterError::Full) => {
                return Err(Error::Overloaded {
                    frontend: self.frontend_id().to_string(),
                    limit: self.inner.config.max_in_flight,
                })
            }
            Err(RegisterError::Closed) => return Err(self.connection_closed()),
        };
        // The guard exists before the request is queued: however this future
        // ends from here on, the id is forgotten.
        let pending = PendingCall {
            id,
            conn: conn.clone(),
            rx,
            deadline_at,
            deadline,
            client: self.clone(),
        };
        let msg = Message::Request(Request {
            id,
            deadline_ms: u32::try_from(deadline.as_millis()).unwrap_or(u32::MAX),
            call,
        });
        // Room in the queue (the usual case): no timer needed.
        let msg = match conn.tx.try_send(msg) {
            Ok(()) => return Ok(pending),
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(self.connection_closed()),
            Err(mpsc::error::TrySendError::Full(msg)) => msg,
        };
        match timeout_at(deadline_at, conn.tx.send(msg)).await {
            Ok(Ok(())) => Ok(pending),
            Ok(Err(_)) => Err(self.connection_closed()),
            Err(_) => Err(self.deadline_error(deadline)),
        }
    }

    /// Sends a one-way call: no response, no delivery guarantee beyond the
    /// connection's. Ordered with calls sent before and after it.
    pub async fn notify(&self, call: Call) -> Result<(), Error> {
        let deadline = self.inner.config.deadline;
        let deadline_at = Instant::now() + deadline;
        let conn = self.connection(deadline_at, deadline).await?;
        match timeout_at(deadline_at, conn.tx.send(Message::Notify(call))).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(self.connection_closed()),
            Err(_) => Err(self.deadline_error(deadline)),
        }
    }

    async fn connection(
        &self,
        deadline_at: Instant,
        deadline: Duration,
    ) -> Result<Arc<Conn>, Error> {
        let mut state = self.inner.state.clone();
        loop {
            match &*state.borrow_and_update() {
                State::Up(conn) => return Ok(conn.clone()),
                State::Down(cause) => {
                    return Err(Error::Unavailable {
                        frontend: self.frontend_id().to_string(),
                        cause: cause.clone(),
                    })
                }
                State::Connecting => {}
            }
            match timeout_at(deadline_at, state.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) => {
                    return Err(Error::Unavailable {
                        frontend: self.frontend_id().to_string(),
                        cause: "client stopped".into(),
                    })
                }
                Err(_) => return Err(self.deadline_error(deadline)),
            }
        }
    }

    fn deadline_error(&self, after: Duration) -> Error {
        Error::DeadlineExceeded {
            frontend: self.frontend_id().to_string(),
            after,
        }
    }

    /// The error for a call whose connection closed under it.
    fn connection_closed(&self) -> Error {
        Error::ConnectionLost {
            frontend: self.frontend_id().to_string(),
            cause: "connection closed".into(),
        }
    }
}

/// A call on its way. Await [`PendingCall::response`]; dropping it abandons
/// the call (the frontend may still apply it).
#[must_use = "a pending call does nothing unless its response is awaited"]
pub struct PendingCall {
    /// The request id; 0 once the outcome arrived (nothing left to forget).
    id: u64,
    /// The connection it went out on.
    conn: Arc<Conn>,
    /// Where the reader delivers the outcome.
    rx: oneshot::Receiver<Outcome>,
    /// When the caller stops waiting.
    deadline_at: Instant,
    /// The deadline as given, for the error message.
    deadline: Duration,
    /// For building errors.
    client: FrontendClient,
}

impl std::fmt::Debug for PendingCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingCall").field("id", &self.id).finish()
    }
}

impl PendingCall {
    /// Waits for the reply, until the call's deadline.
    pub async fn response(mut self) -> Result<Reply, Error> {
        // Already answered (usual for pipelined calls): no timer needed.
        let outcome = match self.rx.try_recv() {
            Ok(outcome) => Ok(Ok(outcome)),
            Err(oneshot::error::TryRecvError::Closed) => Ok(Err(())),
            Err(oneshot::error::TryRecvError::Empty) => timeout_at(self.deadline_at, &mut self.rx)
                .await
                .map(|r| r.map_err(|_| ())),
        };
        if matches!(outcome, Ok(Ok(_))) {
            // The reader removed the call from the table when it answered.
            self.id = 0;
        }
        match outcome {
            Ok(Ok(Outcome::Reply(reply))) => Ok(reply),
            Ok(Ok(Outcome::Remote(source))) => Err(Error::Remote {
                frontend: self.client.frontend_id().to_string(),
                source,
            }),
            Ok(Ok(Outcome::Lost(cause))) => Err(Error::ConnectionLost {
                frontend: self.client.frontend_id().to_string(),
                cause,
            }),
            Ok(Err(_)) => Err(self.client.connection_closed()),
            Err(_) => Err(self.client.deadline_error(self.deadline)),
        }
    }
}

impl Drop for PendingCall {
    fn drop(&mut self) {
        if self.id != 0 {
            self.conn.inflight.forget(self.id);
        }
    }
}

/// Keeps one frontend connection alive.
struct Supervisor {
    frontend_id: Arc<str>,
    addr: String,
    config: ClientConfig,
    state: watch::Sender<State>,
    cancel: CancellationToken,
    /// The client handle, for the sessions given to request handlers; weak,
    /// so the supervisor stops when the last handle is dropped.
    client: Weak<ClientInner>,
    /// Handlers for requests the frontend forwards.
    handlers: SharedHandlers,
}

impl Supervisor {
    async fn run(self) {
        let mut backoff = self.config.backoff_min;
        let mut failures = 0u32;
        loop {
            self.state.send_replace(State::Connecting);
            let attempt = tokio::select! {
                _ = self.cancel.cancelled() => return,
                attempt = self.dial() => attempt,
            };
            match attempt {
                Ok((reader, writer)) => {
                    if failures > 0 {
                        info!(addr = %self.addr, after_failures = failures, "reconnected to frontend");
                    } else {
                        info!(addr = %self.addr, "connected to frontend");
                    }
                    failures = 0;
                    backoff = self.config.backoff_min;
                    let cause = self.serve(reader, writer).await;
                    if self.cancel.is_cancelled() {
                        return;
                    }
                    warn!(cause = %cause, "connection to frontend lost");
                    // Redial after a short pause, not in a tight loop, in
                    // case the frontend accepts and drops again at once.
                    if self.pause(self.config.backoff_min).await {
                        return;
                    }
                }
                Err(cause) => {
                    failures += 1;
                    if failures == 1 {
                        warn!(addr = %self.addr, cause = %cause, "cannot reach frontend; retrying with backoff");
                    } else {
                        debug!(addr = %self.addr, cause = %cause, failures, "frontend still unreachable");
                    }
                    self.state.send_replace(State::Down(cause));
                    if self.pause(jitter(backoff)).await {
                        return;
                    }
                    backoff = (backoff * 2).min(self.config.backoff_max);
                }
            }
        }
    }

    /// Sleeps; returns true when the client was stopped meanwhile.
    async fn pause(&self, d: Duration) -> bool {
        tokio::select! {
            _ = self.cancel.cancelled() => true,
            _ = tokio::time::sleep(d) => false,
        }
    }

    async fn dial(
        &self,
    ) -> Result<
        (
            FramedRead<ReadHalf, MessageCodec>,
            FramedWrite<WriteHalf, MessageCodec>,
        ),
        String,
    > {
        let stream =
            match timeout(self.config.connect_timeout, TcpStream::connect(&self.addr)).await {
                Err(_) => return Err(format!("connect to {} timed out", self.addr)),
                Ok(Err(err)) => return Err(format!("connect to {}: {err}", self.addr)),
                Ok(Ok(s)) => s,
            };
        let _ = stream.set_nodelay(true);
        let (r, w): (ReadHalf, WriteHalf) = match &self.config.tls {
            None => {
                let (r, w) = stream.into_split();
                (Box::new(r), Box::new(w))
            }
            Some(tls) => {
                let connect = tls.connector.connect(tls.server_name.clone(), stream);
                let stream = match timeout(self.config.handshake_timeout, connect).await {
                    Err(_) => return Err("TLS handshake timed out".to_string()),
                    Ok(Err(err)) => return Err(format!("TLS handshake with {}: {err}", self.addr)),
                    Ok(Ok(s)) => s,
                };
                let (r, w) = tokio::io::split(stream);
                (Box::new(r), Box::new(w))
            }
        };
        let codec = MessageCodec::new(self.config.max_frame);
        let mut reader = FramedRead::new(r, codec.clone());
        let mut writer = FramedWrite::new(w, codec);
        let mut hello = Hello::new(
            self.config.node_id.clone(),
            Role::Backend,
            Some(self.frontend_id.to_string()),
        );
        hello.server_type = self.config.server_type.clone();
        let mut nonce = Vec::new();
        if self.config.secret.is_some() {
            nonce = vec![0u8; NONCE_LEN];
            rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut nonce);
            hello.nonce = nonce.clone();
        }
        let exchange = async {
            writer
                .send(Message::Hello(hello))
                .await
                .map_err(|e| format!("sending hello: {e}"))?;
            let mut reply = reader.next().await;
            if let Some(Ok(Message::HelloReply(HelloReply::Challenge {
                nonce: theirs,
                proof,
            }))) = &reply
            {
                let Some(secret) = &self.config.secret else {
                    return Err(
                        "the frontend requires the cluster secret; none is configured".to_string(),
                    );
                };
                if !secret.verify_server(proof, &nonce, theirs, &self.frontend_id) {
                    return Err(
                        "the frontend failed authentication (another cluster secret?)".to_string(),
                    );
                }
                let mine = secret.client_proof(theirs, &nonce, &self.config.node_id);
                writer
                    .send(Message::Proof(mine))
                    .await
                    .map_err(|e| format!("sending proof: {e}"))?;
                reply = reader.next().await;
            } else if self.config.secret.is_some()
                && matches!(
                    reply,
                    Some(Ok(Message::HelloReply(HelloReply::Accepted { .. })))
                )
            {
                // Without the challenge the frontend proved nothing: it may
                // be anyone listening on that address.
                return Err("the frontend did not authenticate itself; refusing it".to_string());
            }
            match reply {
                None => Err("closed during the handshake".to_string()),
                Some(Err(err)) => Err(format!("unreadable hello reply: {err}")),
                Some(Ok(Message::HelloReply(HelloReply::Accepted { version, node_id }))) => {
                    if version != PROTOCOL_VERSION {
                        Err(format!("frontend speaks protocol version {version}"))
                    } else if *node_id != *self.frontend_id {
                        Err(format!(
                            "expected frontend {}, reached {node_id}",
                            self.frontend_id
                        ))
                    } else {
                        Ok(())
                    }
                }
                Some(Ok(Message::HelloReply(HelloReply::Refused(err)))) => {
                    Err(format!("handshake refused: {err}"))
                }
                Some(Ok(_)) => Err("unexpected frame during the handshake".to_string()),
            }
        };
        match timeout(self.config.handshake_timeout, exchange).await {
            Err(_) => Err("no handshake reply in time".to_string()),
            Ok(Err(cause)) => Err(cause),
            Ok(Ok(())) => Ok((reader, writer)),
        }
    }

    /// Runs a connection until it dies; returns why.
    async fn serve(
        &self,
        mut reader: FramedRead<ReadHalf, MessageCodec>,
        writer: FramedWrite<WriteHalf, MessageCodec>,
    ) -> String {
        let (tx, rx) = mpsc::channel(self.config.queue.max(1));
        let conn = Arc::new(Conn {
            tx: tx.clone(),
            inflight: InFlight::new(self.config.max_in_flight),
        });
        self.state.send_replace(State::Up(conn.clone()));
        // When the last frame arrived, in ms since `epoch`.
        let epoch = Instant::now();
        let last_rx = std::sync::atomic::AtomicU64::new(0);
        let ping = self.config.ping_interval.max(Duration::from_millis(10));
        let pinger = async {
            loop {
                tokio::time::sleep(ping).await;
                let quiet = epoch.elapsed().saturating_sub(Duration::from_millis(
                    last_rx.load(std::sync::atomic::Ordering::Relaxed),
                ));
                if quiet < ping {
                    continue;
                }
                let Ok((id, rx)) = conn.inflight.register() else {
                    return "connection closed".to_string();
                };
                let request = Message::Request(Request {
                    id,
                    deadline_ms: u32::try_from(ping.as_millis()).unwrap_or(u32::MAX),
                    call: Call::Ping,
                });
                if tx.send(request).await.is_err() {
                    return "writer stopped".to_string();
                }
                if timeout(ping, rx).await.is_err() {
                    conn.inflight.forget(id);
                    return format!("frontend stopped answering (no ping reply within {ping:?})");
                }
            }
        };
        let read = async {
            loop {
                let frame = reader.next().await;
                let ms = u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
                last_rx.store(ms, std::sync::atomic::Ordering::Relaxed);
                match frame {
                    None => return "frontend closed the connection".to_string(),
                    Some(Err(err)) => return format!("corrupt stream from frontend: {err}"),
                    Some(Ok(Message::Response(resp))) => {
                        let outcome = match resp.result {
                            Ok(reply) => Outcome::Reply(reply),
                            Err(err) => Outcome::Remote(err),
                        };
                        if !conn.inflight.complete(resp.id, outcome) {
                            debug!(id = resp.id, "response to a call nobody waits for");
                        }
                    }
                    Some(Ok(Message::Request(req))) => {
                        let deadline = Duration::from_millis(u64::from(req.deadline_ms));
                        self.dispatch(req.call, Some((req.id, deadline)), &tx);
                    }
                    Some(Ok(Message::Notify(call))) => {
                        self.dispatch(call, None, &tx);
                    }
                    Some(Ok(_)) => return "handshake frame after the handshake".to_string(),
                }
            }
        };
        let cause = tokio::select! {
            _ = self.cancel.cancelled() => "client stopped".to_string(),
            cause = write_loop(writer, rx) => cause,
            cause = read => cause,
            cause = pinger => cause,
        };
        // No new call may pick this connection up, then fail the pending ones.
        self.state.send_replace(State::Connecting);
        conn.inflight.close(|| Outcome::Lost(cause.clone()));
        cause
    }

    /// Runs a call the frontend sent: a forwarded client request goes to its
    /// handler on a task of its own (handlers may be slow); anything else is
    /// refused. `reply_to` is the request id and deadline, `None` for a notify.
    fn dispatch(&self, call: Call, reply_to: Option<(u64, Duration)>, tx: &mpsc::Sender<Message>) {
        let refuse = |code, message: &str| {
            if let Some((id, _)) = reply_to {
                let resp = Message::Response(Response {
                    id,
                    result: Err(RpcError::new(code, message)),
                });
                // The writer is gone only when the connection is; nothing to answer then.
                let _ = tx.try_send(resp);
            }
        };
        if matches!(call, Call::Ping) {
            if let Some((id, _)) = reply_to {
                let _ = tx.try_send(Message::Response(Response {
                    id,
                    result: Ok(Reply::Done),
                }));
            }
            return;
        }
        let Call::Handle {
            route,
            session,
            body,
        } = call
        else {
            refuse(
                ErrorCode::Unsupported,
                "backends handle only forwarded requests",
            );
            return;
        };
        let handler = self
            .handlers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&route);
        let Some(handler) = handler else {
            debug!(route = %route, "no handler for forwarded route");
            refuse(
                ErrorCode::UnknownRoute,
                &format!("no handler for route {route}"),
            );
            return;
        };
        let Some(inner) = self.client.upgrade() else {
            refuse(ErrorCode::Unavailable, "backend shutting down");
            return;
        };
        let client = FrontendClient { inner };
        let tx = tx.clone();
        let deadline = reply_to.map_or(self.config.deadline, |(_, d)| d);
        tokio::spawn(async move {
            let session = BackendSession::from_snapshot(client, session);
            let run = std::panic::AssertUnwindSafe(handler(session, body)).catch_unwind();
            let result = match timeout(deadline, run).await {
                Ok(Ok(Ok(body))) => Ok(Reply::Handled(body)),
                Ok(Ok(Err(app_error))) => Ok(Reply::Handled(app_error.to_body())),
                Ok(Err(_panic)) => {
                    warn!(route = %route, "request handler panicked");
                    Err(RpcError::new(ErrorCode::Internal, "handler panicked"))
                }
                Err(_) => Err(RpcError::new(
                    ErrorCode::DeadlineExceeded,
                    format!("handler for {route} ran past its deadline"),
                )),
            };
            if let Some((id, _)) = reply_to {
                let _ = tx.send(Message::Response(Response { id, result })).await;
            }
        });
    }
}

/// Writes queued frames, flushing once per batch of whatever is queued.
async fn write_loop(
    mut writer: FramedWrite<WriteHalf, MessageCodec>,
    mut rx: mpsc::Receiver<Message>,
) -> String {
    loop {
        let Some(msg) = rx.recv().await else {
            return "client stopped".to_string();
        };
        if let Err(err) = writer.feed(msg).await {
            return format!("write failed: {err}");
        }
        // Twice: once now, and once after the other ready tasks (handlers
        // finishing in the same round) had a turn, so their answers leave
        // in this write instead of one write each.
        for turn in 0..2 {
            if turn == 1 {
                tokio::task::yield_now().await;
            }
            while let Ok(msg) = rx.try_recv() {
                if let Err(err) = writer.feed(msg).await {
                    return format!("write failed: {err}");
                }
            }
        }
        if let Err(err) = writer.flush().await {
            return format!("write failed: {err}");
        }
    }
}

fn jitter(d: Duration) -> Duration {
    let factor = rand::thread_rng().gen_range(0.75..1.25);
    d.mul_f64(factor)
}
