//! The link a backend keeps to one frontend: a multiplexed RPC connection
//! that carries this backend's calls out and the frontend's forwarded
//! requests in.
//!
//! A [`FrontendClient`] is a cheap, cloneable handle. Behind it, one
//! supervisor task (`supervisor`) dials the frontend (`dial`), runs the
//! version handshake, and keeps the connection up, redialling with jittered
//! exponential backoff when it drops. While a connection is up, a writer
//! owns its write half (fed by a bounded queue, flushing once per batch) and
//! a reader matches responses to pending calls by id; requests the frontend
//! sends are handed to an `Inbound` (the backend's `serve` module), so this
//! module never runs handlers itself.
//!
//! Every call has a deadline. A call registers its id *before* its request
//! is queued, and a guard removes the id when the caller stops waiting, so an
//! abandoned call leaves nothing behind. When a connection dies, every call
//! pending on it fails at once with [`Error::ConnectionLost`]; calls made
//! while the frontend is unreachable fail at once with [`Error::Unavailable`].

mod dial;
mod supervisor;

use crate::error::LinkError;
use crate::{BackendConfig, Error};
use bytes::Bytes;
use session_proxy_protocol::sync::LockUnpoisoned as _;
use session_proxy_protocol::{
    BackendCall, Call, ErrorCode, FrontendCall, InFlight, Message, RegisterError, Request,
    Response, RpcError,
};
use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use supervisor::Supervisor;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{timeout_at, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// Where the supervisor is with the connection.
#[derive(Clone)]
enum State {
    /// Dialling or handshaking; calls wait (up to their deadline).
    Connecting,
    /// Connected; calls go out on this connection.
    Up(Arc<Conn>),
    /// The last attempt failed with this cause; calls fail at once.
    Down(Arc<LinkError>),
}

/// How a pending call ended, as the reader tells the caller.
enum Outcome {
    /// The reply, encoded as the call's reply type.
    Reply(Bytes),
    Remote(RpcError),
    Lost(Arc<LinkError>),
}

/// What a backend sends on a link.
type Outgoing = Message<FrontendCall>;

/// One live connection: the writer's queue and the calls awaiting responses.
struct Conn {
    /// Frames for the writer.
    tx: mpsc::Sender<Outgoing>,
    /// Calls awaiting responses on this connection.
    inflight: InFlight<Outcome>,
}

/// What a link does with the requests its frontend sends (forwarded client
/// requests); pings and cancels are the link's own.
pub(crate) trait Inbound: Send + Sync + 'static {
    /// Runs `call` for the frontend behind `link`, within `deadline`, and
    /// answers through `reply` (`None` for a notify). A request the
    /// frontend cancels has `reply.cancelled()` fire.
    fn call(
        self: Arc<Self>,
        link: FrontendClient,
        call: BackendCall,
        deadline: Duration,
        reply: Option<Replier>,
    );
}

/// The requests of one connection that are still running, by id, so the
/// frontend can cancel them.
#[derive(Default)]
pub(crate) struct Running {
    by_id: Mutex<HashMap<u64, CancellationToken>>,
}

impl Running {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, CancellationToken>> {
        // One map operation per critical section: a poisoned map is whole.
        self.by_id.lock_unpoisoned()
    }

    /// Starts tracking request `id`; its token fires if the frontend
    /// cancels it.
    fn start(&self, id: u64) -> CancellationToken {
        let token = CancellationToken::new();
        self.lock().insert(id, token.clone());
        token
    }

    /// The frontend gave up on request `id`.
    fn cancel(&self, id: u64) {
        if let Some(token) = self.lock().remove(&id) {
            token.cancel();
        }
    }

    fn finish(&self, id: u64) {
        self.lock().remove(&id);
    }
}

/// The bytes of answers queued for one connection's writer, bounded by
/// [`BackendConfig::max_queued_answer_bytes`]: an answer takes its size
/// (capped at the bound) when it is queued, and the writer gives it back
/// as it writes the frame.
pub(crate) struct AnswerBytes {
    room: tokio::sync::Semaphore,
    cap: usize,
}

impl AnswerBytes {
    fn new(cap: usize) -> Self {
        AnswerBytes {
            room: tokio::sync::Semaphore::new(cap),
            cap,
        }
    }

    /// What a frame takes: the bytes of an answer's reply, capped.
    fn cost(&self, frame: &Outgoing) -> u32 {
        match frame {
            Message::Response(Response {
                result: Ok(body), ..
            }) => u32::try_from(body.len().min(self.cap)).unwrap_or(u32::MAX),
            _ => 0,
        }
    }

    /// Gives back what a written frame took.
    pub(crate) fn written(&self, frame: &Outgoing) {
        let cost = self.cost(frame);
        if cost > 0 {
            self.room.add_permits(cost as usize);
        }
    }
}

/// The way back for one request the frontend sent.
pub(crate) struct Replier {
    /// The request's id.
    id: u64,
    /// The link's writer queue.
    tx: mpsc::Sender<Outgoing>,
    /// The room for answers in that queue.
    bytes: Arc<AnswerBytes>,
    /// When the frontend stops waiting for the answer.
    deadline_at: Instant,
    /// Fires when the frontend cancels the request.
    cancelled: CancellationToken,
    /// Where the request is tracked while it runs.
    running: Arc<Running>,
}

impl Drop for Replier {
    fn drop(&mut self) {
        self.running.finish(self.id);
    }
}

tokio::task_local! {
    /// When the forwarded request a handler serves expires: the calls the
    /// handler makes to frontends wait no longer than that, so work for a
    /// caller that has already been told "deadline exceeded" does not take
    /// effect later.
    pub(crate) static REQUEST_DEADLINE: Instant;
}

/// Refuses a request with an error answer (a notify gets none).
pub(crate) fn refuse(reply: Option<Replier>, code: ErrorCode, message: &str) {
    if let Some(reply) = reply {
        reply.now(Err(RpcError::new(code, message)));
    }
}

impl Replier {
    /// A request of `running`'s connection, answered through `tx` (room
    /// for its bytes in `bytes`) within `deadline`.
    fn new(
        id: u64,
        (tx, bytes): (mpsc::Sender<Outgoing>, Arc<AnswerBytes>),
        running: &Arc<Running>,
        deadline: Duration,
    ) -> Self {
        Replier {
            id,
            tx,
            bytes,
            deadline_at: Instant::now() + deadline,
            cancelled: running.start(id),
            running: running.clone(),
        }
    }

    /// Fires when the frontend cancels the request (its caller gave up).
    pub(crate) fn cancelled(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.cancelled.cancelled()
    }

    /// Answers at once if the queue has room; a full queue or a dead link
    /// drops the answer (the frontend's deadline answers for it).
    pub(crate) fn now(self, result: Result<Bytes, RpcError>) {
        let frame = Message::Response(Response {
            id: self.id,
            result,
        });
        let cost = self.bytes.cost(&frame);
        let Ok(taken) = self.bytes.room.try_acquire_many(cost) else {
            return;
        };
        taken.forget();
        if self.tx.try_send(frame).is_err() {
            self.bytes.room.add_permits(cost as usize);
        }
    }

    /// Answers, waiting for room in the queue (bytes and frames) until the
    /// request's deadline; after it the answer is dropped, as its caller
    /// has been told the request failed.
    pub(crate) async fn send(self, result: Result<Bytes, RpcError>) {
        let frame = Message::Response(Response {
            id: self.id,
            result,
        });
        let cost = self.bytes.cost(&frame);
        let queued = timeout_at(self.deadline_at, async {
            let taken = self.bytes.room.acquire_many(cost).await.ok()?;
            taken.forget();
            // The writer is gone only when the link is; nothing to answer then.
            self.tx.send(frame).await.ok()
        })
        .await;
        if queued.is_err() {
            tracing::debug!(id = self.id, "answer dropped: no room before its deadline");
        }
    }
}

struct ClientInner {
    /// The frontend's node id, checked in the handshake.
    frontend_id: Arc<str>,
    /// Backend settings.
    config: BackendConfig,
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

/// A handle to one frontend's link. Clone it freely; the link closes when
/// the last handle is dropped.
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
    /// Starts keeping a link to the frontend `frontend_id` at `addr`, for
    /// calls only (it serves no forwarded requests). Returns at once; the
    /// first call waits for the connection (up to its deadline). Must be
    /// called within a tokio runtime.
    pub fn connect(
        frontend_id: &str,
        addr: String,
        config: BackendConfig,
    ) -> Result<FrontendClient, Error> {
        config.validate()?;
        Ok(Self::open(
            frontend_id,
            addr,
            config,
            None,
            &TaskTracker::new(),
            CancellationToken::new(),
        ))
    }

    /// Opens a link whose supervisor runs on `tasks` and stops with `stop`
    /// (or when the last handle is dropped); requests from the frontend go
    /// to `inbound`. `config` is already validated.
    pub(crate) fn open(
        frontend_id: &str,
        addr: String,
        config: BackendConfig,
        inbound: Option<Arc<dyn Inbound>>,
        tasks: &TaskTracker,
        stop: CancellationToken,
    ) -> FrontendClient {
        let (state_tx, state_rx) = watch::channel(State::Connecting);
        let frontend_id: Arc<str> = Arc::from(frontend_id);
        let inner = Arc::new(ClientInner {
            frontend_id: frontend_id.clone(),
            config: config.clone(),
            state: state_rx,
            cancel: stop.clone(),
        });
        let supervisor = Supervisor {
            frontend_id: frontend_id.clone(),
            addr,
            config,
            state: state_tx,
            cancel: stop,
            client: Arc::downgrade(&inner),
            inbound,
        };
        tasks.spawn(
            supervisor
                .run()
                .instrument(tracing::info_span!("frontend_link", frontend = %frontend_id)),
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

    /// Waits until the link is up (handshake done, so the frontend forwards
    /// to this backend), for at most `within`. A frontend that cannot be
    /// reached yet is retried meanwhile; on time-out the error says why the
    /// last attempt failed.
    pub async fn connected(&self, within: Duration) -> Result<(), Error> {
        let until = Instant::now() + within;
        let mut state = self.inner.state.clone();
        // The last failure seen, kept while a redial is under way: a
        // deadline that passes mid-redial still reports why it failed.
        let mut last = None;
        loop {
            match &*state.borrow_and_update() {
                State::Up(_) => return Ok(()),
                State::Down(cause) => last = Some(cause.clone()),
                State::Connecting => {}
            }
            match timeout_at(until, state.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(self.unavailable(Arc::new(LinkError::Stopped))),
                Err(_) => {
                    return Err(match last {
                        Some(cause) => self.unavailable(cause),
                        None => self.deadline_error(within),
                    })
                }
            }
        }
    }

    /// Sends a call and waits for its typed reply, with the default
    /// deadline: `client.call(Bind { sid, uid }).await` is `Result<(), _>`.
    pub async fn call<C: Call<Wire = FrontendCall>>(&self, call: C) -> Result<C::Reply, Error> {
        self.send(call).await?.response().await
    }

    /// Sends a call and waits for its reply, with the given deadline.
    pub async fn call_with_deadline<C: Call<Wire = FrontendCall>>(
        &self,
        call: C,
        deadline: Duration,
    ) -> Result<C::Reply, Error> {
        self.send_with_deadline(call, deadline)
            .await?
            .response()
            .await
    }

    /// Queues a call (default deadline) and returns a handle to await its
    /// reply later. Calls queued one after another from one task reach the
    /// frontend, and are applied, in that order: this is how to pipeline.
    pub async fn send<C: Call<Wire = FrontendCall>>(
        &self,
        call: C,
    ) -> Result<PendingCall<C>, Error> {
        self.send_with_deadline(call, self.inner.config.deadline)
            .await
    }

    /// Like [`send`](Self::send), with the given deadline.
    pub async fn send_with_deadline<C: Call<Wire = FrontendCall>>(
        &self,
        call: C,
        deadline: Duration,
    ) -> Result<PendingCall<C>, Error> {
        let now = Instant::now();
        let deadline = match REQUEST_DEADLINE.try_with(|at| at.saturating_duration_since(now)) {
            Ok(left) if left.is_zero() => return Err(self.deadline_error(deadline)),
            Ok(left) => deadline.min(left),
            Err(_) => deadline,
        };
        let deadline_at = now + deadline;
        let conn = self.connection(deadline_at, deadline).await?;
        let (id, rx) = match conn.inflight.register() {
            Ok(pair) => pair,
            Err(RegisterError::Full) => {
                crate::metrics::OVERLOADED.increment(1);
                return Err(Error::Overloaded {
                    frontend: self.frontend_id().to_string(),
                    limit: self.inner.config.max_in_flight,
                });
            }
            Err(RegisterError::Closed) => return Err(self.connection_closed()),
        };
        // The guard exists before the request is queued: however this future
        // ends from here on, the id is forgotten.
        crate::metrics::IN_FLIGHT.increment(1.0);
        let pending = PendingCall {
            id,
            conn: conn.clone(),
            rx,
            deadline_at,
            deadline,
            client: self.clone(),
            kind: C::INDEX,
            started: now,
            call: PhantomData,
        };
        let msg = Message::Request(Request::new(id, deadline, call));
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
    pub async fn notify<C: Call<Wire = FrontendCall>>(&self, call: C) -> Result<(), Error> {
        let deadline = self.inner.config.deadline;
        let deadline_at = Instant::now() + deadline;
        let conn = self.connection(deadline_at, deadline).await?;
        match timeout_at(deadline_at, conn.tx.send(Message::Notify(call.into()))).await {
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
                State::Down(cause) => return Err(self.unavailable(cause.clone())),
                State::Connecting => {}
            }
            match timeout_at(deadline_at, state.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) => return Err(self.unavailable(Arc::new(LinkError::Stopped))),
                Err(_) => return Err(self.deadline_error(deadline)),
            }
        }
    }

    fn unavailable(&self, source: Arc<LinkError>) -> Error {
        Error::Unavailable {
            frontend: self.frontend_id().to_string(),
            source,
        }
    }

    fn deadline_error(&self, after: Duration) -> Error {
        Error::DeadlineExceeded {
            frontend: self.frontend_id().to_string(),
            after,
        }
    }

    fn lost(&self, source: Arc<LinkError>) -> Error {
        Error::ConnectionLost {
            frontend: self.frontend_id().to_string(),
            source,
        }
    }

    /// The error for a call whose connection closed under it.
    fn connection_closed(&self) -> Error {
        self.lost(Arc::new(LinkError::Closed))
    }
}

/// A call on its way. Await [`PendingCall::response`]; dropping it abandons
/// the call (the frontend may still apply it).
#[must_use = "a pending call does nothing unless its response is awaited"]
pub struct PendingCall<C> {
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
    /// The call's kind ([`Call::INDEX`]), for its metrics.
    kind: usize,
    /// When it was sent.
    started: Instant,
    /// The call's type: its reply type.
    call: PhantomData<fn() -> C>,
}

impl<C: Call> std::fmt::Debug for PendingCall<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingCall")
            .field("call", &C::NAME)
            .field("id", &self.id)
            .finish()
    }
}

impl<C: Call> PendingCall<C> {
    /// Waits for the reply, until the call's deadline.
    pub async fn response(mut self) -> Result<C::Reply, Error> {
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
            Ok(Ok(Outcome::Reply(reply))) => {
                C::decode_reply(reply).map_err(|source| Error::BadReply {
                    frontend: self.client.frontend_id().to_string(),
                    call: C::NAME,
                    source,
                })
            }
            Ok(Ok(Outcome::Remote(source))) if source.code == ErrorCode::NotDurable => {
                Err(Error::NotDurable {
                    frontend: self.client.frontend_id().to_string(),
                    message: source.message,
                })
            }
            Ok(Ok(Outcome::Remote(source))) if source.code == ErrorCode::SessionMoved => {
                Err(Error::SessionMoved {
                    frontend: self.client.frontend_id().to_string(),
                    to: source.message,
                })
            }
            Ok(Ok(Outcome::Remote(source))) => Err(Error::Remote {
                frontend: self.client.frontend_id().to_string(),
                source,
            }),
            Ok(Ok(Outcome::Lost(cause))) => Err(self.client.lost(cause)),
            Ok(Err(_)) => Err(self.client.connection_closed()),
            Err(_) => Err(self.client.deadline_error(self.deadline)),
        }
    }
}

impl<C> Drop for PendingCall<C> {
    fn drop(&mut self) {
        crate::metrics::IN_FLIGHT.decrement(1.0);
        crate::metrics::call_ended(self.kind, self.started.into_std());
        // Abandoned before its answer and its deadline (the frontend stops
        // at the deadline by itself): the frontend may stop working on it.
        // Best effort: a full queue or a dead link tells nobody.
        if self.id != 0 && self.conn.inflight.forget(self.id) && Instant::now() < self.deadline_at {
            let _ = self.conn.tx.try_send(Message::Cancel(self.id));
        }
    }
}

#[cfg(test)]
mod tests;
