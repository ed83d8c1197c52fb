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
//!
//! - this file: [`FrontendClient`] and the connection state it reads;
//! - `pending`: [`PendingCall`], one call until its typed reply;
//! - `inbound`: the frontend's requests: who runs them, their cancels, the
//!   room for their answers, the way back;
//! - `supervisor`: dial, serve, redial; the reader, writer and pinger;
//! - `dial`: the connect and the handshake.

mod dial;
mod inbound;
mod pending;
mod supervisor;

pub(crate) use inbound::{refuse, Inbound, Refused, Replier, REQUEST_DEADLINE};
use inbound::{AnswerBytes, Answers, Running};
pub use pending::PendingCall;

use crate::error::LinkError;
use crate::{BackendConfig, Error};
use bytes::Bytes;
use session_proxy_protocol::calls::GetSession;
use session_proxy_protocol::SessionId;
use session_proxy_protocol::{
    Call, FrontendCall, InFlight, Message, RegisterError, Request, RpcError,
};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use supervisor::Supervisor;
use tokio::sync::{mpsc, watch};
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

struct ClientInner {
    /// The frontend's node id, checked in the handshake.
    frontend_id: Arc<str>,
    /// Backend settings.
    config: BackendConfig,
    /// The supervisor's view of the connection.
    state: watch::Receiver<State>,
    /// Stops the supervisor when the last handle is dropped.
    cancel: CancellationToken,
    /// Calls sent whose effect nobody waited for: notifies, and calls
    /// abandoned before their answer. A request run directly
    /// ([`Inbound::direct`]) that sent one makes sure the frontend has read
    /// it before answering.
    one_way: AtomicU64,
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
            one_way: AtomicU64::new(0),
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
            Ok(Ok(())) => {
                self.sent_one_way();
                Ok(())
            }
            Ok(Err(_)) => Err(self.connection_closed()),
            Err(_) => Err(self.deadline_error(deadline)),
        }
    }

    /// Counts a call whose effect nobody waits for (see `one_way`).
    fn sent_one_way(&self) {
        self.inner.one_way.fetch_add(1, Ordering::Release);
    }

    /// Where the link's one-way calls stand, for [`settle`](Self::settle).
    pub(crate) fn settled(&self) -> u64 {
        self.inner.one_way.load(Ordering::Acquire)
    }

    /// When a one-way call was sent since `since` ([`settled`](Self::settled)),
    /// waits until the frontend has read it: a call on session `sid` is
    /// answered only after every frame before it was read and applied
    /// (calls on one session in order). Within `deadline`; a failure is the
    /// link's, which the caller's own answer does not depend on.
    pub(crate) async fn settle(&self, since: u64, sid: SessionId, deadline: Duration) {
        if self.settled() == since {
            return;
        }
        let _ = self.call_with_deadline(GetSession { sid }, deadline).await;
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

#[cfg(test)]
mod tests;
