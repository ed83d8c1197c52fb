//! One backend's link as the registry holds it (its outbox, its calls in
//! flight, the remote methods it serves), the candidates of a server type,
//! and one call's exchange on a link.

use bytes::Bytes;
use futures::future::{ready, BoxFuture, Either, Ready};
use session_proxy_link::inproc::DirectBackend;
use session_proxy_protocol::{
    BackendCall, ErrorCode, Handle, InFlight, Message, RegisterError, Request, Response, RpcError,
};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tracing::debug;

/// One connected backend that serves a server type.
#[derive(Debug)]
pub(crate) struct BackendLink {
    /// The backend's node id.
    pub(crate) node_id: String,
    /// Tells this connection apart from an older one of the same node.
    pub(crate) conn_id: u64,
    /// The connection task's outbox.
    pub(crate) tx: mpsc::Sender<Message<BackendCall>>,
    /// Forwarded calls awaiting responses: the encoded reply, or why not.
    pub(crate) inflight: InFlight<Result<Bytes, RpcError>>,
    /// The remote methods the backend said it serves.
    pub(super) remotes: std::sync::Mutex<Vec<String>>,
    /// A backend of this process that runs forwarded requests when called
    /// directly, instead of through the link.
    pub(super) direct: Option<Direct>,
}

/// A backend called directly ([`DirectBackend`]).
pub(crate) struct Direct(pub(super) Arc<dyn DirectBackend>);

impl std::fmt::Debug for Direct {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Direct")
    }
}

impl BackendLink {
    /// Hands a backend's answer to the forwarded request waiting for it.
    pub(crate) fn complete(&self, resp: Response) {
        if !self.inflight.complete(resp.id, resp.result) {
            debug!(
                id = resp.id,
                "response to a forwarded request nobody waits for"
            );
        }
    }

    /// The error of a forwarded call its backend did not answer in time.
    fn no_answer(&self, deadline: Duration) -> RpcError {
        RpcError::new(
            ErrorCode::DeadlineExceeded,
            format!("{} did not answer within {deadline:?}", self.node_id),
        )
    }

    /// Fails every forwarded request still waiting: the link is gone.
    pub(crate) fn close(&self) {
        self.inflight.close(|| Err(closed()));
    }

    /// Queues `message` for the backend, waiting for room until `until` at
    /// most. Almost every message finds room at once and is queued before
    /// this returns; only one that does not waits, boxed: a send in
    /// progress takes about 500 bytes, which every forwarded request's and
    /// notify's future would otherwise carry (and copy as it moves).
    pub(super) fn queue(
        &self,
        message: Message<BackendCall>,
        until: tokio::time::Instant,
    ) -> Queueing<'_> {
        match self.tx.try_send(message) {
            Ok(()) => Either::Left(ready(Ok(()))),
            Err(TrySendError::Closed(_)) => Either::Left(ready(Err(Unqueued::Closed))),
            Err(TrySendError::Full(message)) => Either::Right(Box::pin(async move {
                match tokio::time::timeout_at(until, self.tx.send(message)).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(_)) => Err(Unqueued::Closed),
                    Err(_) => Err(Unqueued::TimedOut),
                }
            })),
        }
    }
}

/// [`BackendLink::queue`] under way: done at once, or waiting for room.
pub(super) type Queueing<'a> =
    Either<Ready<Result<(), Unqueued>>, BoxFuture<'a, Result<(), Unqueued>>>;

/// Why [`BackendLink::queue`] did not queue a message.
pub(super) enum Unqueued {
    /// The link is gone.
    Closed,
    /// No room came before the deadline.
    TimedOut,
}

/// The error of a call whose backend link is gone.
pub(super) fn closed() -> RpcError {
    RpcError::new(ErrorCode::PeerClosed, "backend connection closed")
}

impl BackendLink {}

/// The connected backends of one server type, sorted by node id, with their
/// ids ready for the router. Replaced whole on (rare) membership changes, so
/// a request takes it with one reference-count increment, no allocation.
#[derive(Default)]
pub(super) struct Candidates {
    pub(super) links: Vec<Arc<BackendLink>>,
    pub(super) ids: Vec<String>,
    /// Request metrics of the server type (its forwarded routes).
    pub(super) metrics: Option<crate::metrics::RouteMetrics>,
    /// The remote methods any of them serves: never forwarded for a client.
    pub(super) remotes: std::collections::HashSet<String>,
}

impl Candidates {
    pub(super) fn from_links(server_type: &str, mut links: Vec<Arc<BackendLink>>) -> Self {
        use session_proxy_protocol::sync::LockUnpoisoned as _;
        links.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        let ids = links.iter().map(|l| l.node_id.clone()).collect();
        let remotes = links
            .iter()
            .flat_map(|l| l.remotes.lock_unpoisoned().clone())
            .collect();
        Candidates {
            links,
            ids,
            metrics: Some(crate::metrics::RouteMetrics::new(server_type)),
            remotes,
        }
    }
}

/// Removes a forwarded call's id when its caller stops waiting, and tells
/// the backend to stop running it if it gave up before the answer and the
/// deadline (at the deadline the backend stops by itself).
struct Forget<'a> {
    link: &'a BackendLink,
    id: u64,
    deadline_at: std::time::Instant,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        if self.link.inflight.forget(self.id) && std::time::Instant::now() < self.deadline_at {
            // Best effort: a full queue or a dead link means the backend
            // learns nothing, and its handler runs to its own deadline.
            let _ = self.link.tx.try_send(Message::Cancel(self.id));
        }
    }
}

/// Sends `call` on `link` and waits for its reply bytes within `deadline`;
/// a call given up on before its deadline is cancelled on the backend.
pub(super) async fn exchange_call(
    link: &Arc<BackendLink>,
    call: BackendCall,
    deadline: Duration,
) -> Result<Bytes, RpcError> {
    let until = tokio::time::Instant::now() + deadline;
    let (id, rx) = link.inflight.register().map_err(|e| match e {
        RegisterError::Full => RpcError::new(
            ErrorCode::Overloaded,
            "too many requests in flight to the backend",
        ),
        RegisterError::Closed => closed(),
    })?;
    let _forget = Forget {
        link,
        id,
        deadline_at: until.into_std(),
    };
    let request = Message::Request(Request::new(id, deadline, call));
    match link.queue(request, until).await {
        Ok(()) => {}
        Err(Unqueued::Closed) => return Err(closed()),
        Err(Unqueued::TimedOut) => return Err(link.no_answer(deadline)),
    }
    match tokio::time::timeout_at(until, rx).await {
        Ok(Ok(result)) => result,
        Ok(Err(_)) => Err(closed()),
        Err(_) => Err(link.no_answer(deadline)),
    }
}

/// Runs a forwarded request through a backend of this process, on the
/// caller's task, within `deadline`: the link's contract without its frames.
pub(super) async fn direct_call(
    link: &BackendLink,
    direct: &Direct,
    handle: Handle,
    deadline: Duration,
) -> Result<Bytes, RpcError> {
    let answer = direct.0.handle(handle, deadline)?;
    match tokio::time::timeout(deadline, answer).await {
        Ok(result) => result,
        Err(_) => Err(link.no_answer(deadline)),
    }
}
