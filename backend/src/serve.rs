//! Serving the client requests frontends forward to this backend: each
//! goes to its route's handler on a task of its own (handlers may be slow),
//! under the service's [`TaskTracker`], so shutdown waits for them. A
//! request its frontend cancels (the client left, or the frontend gave up)
//! stops at the handler's next await.

use crate::handler::SharedHandlers;
use crate::link::{Inbound, Refused, Replier, REQUEST_DEADLINE};
use crate::{BackendSession, FrontendClient, HandlerError};
use bytes::Bytes;
use futures::FutureExt;
use session_proxy_filters::{Call, Filters, Started};
use session_proxy_link::inproc::DirectAnswer;
use session_proxy_protocol::sync::{LockUnpoisoned as _, RwLockUnpoisoned as _};
use session_proxy_protocol::{
    BackendCall, ErrorCode, Handle, KickBySid, Remote, RpcError, ServeBackend,
};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::AbortHandle;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

/// Runs forwarded requests: the [`Inbound`] side of every link of one
/// backend service.
pub(crate) struct Dispatcher {
    /// The route table, shared with the service (replaced by `serve`).
    pub(crate) handlers: SharedHandlers,
    /// Every handler task; shutdown waits on it.
    pub(crate) tasks: TaskTracker,
    /// Cancelled when the service starts draining: new requests are refused.
    pub(crate) draining: CancellationToken,
    /// What every forwarded request passes before its handler.
    pub(crate) filters: std::sync::RwLock<Filters>,
    /// The remote methods served to other servers.
    pub(crate) remotes: std::sync::RwLock<crate::Remotes>,
    /// Their routes, as every link announces them to its frontend.
    pub(crate) announced: tokio::sync::watch::Sender<Arc<Vec<String>>>,
}

/// What comes with a forwarded request.
pub(crate) struct RequestCx {
    /// The link it came on, for the session proxy given to the handler.
    link: FrontendClient,
    /// What is left of the frontend's deadline.
    deadline: Duration,
    /// The filters it passes, started as it arrived (taken by the handler).
    filtered: std::sync::Mutex<Option<Started>>,
}

impl Inbound for Dispatcher {
    fn call(
        self: Arc<Self>,
        link: FrontendClient,
        call: BackendCall,
        deadline: Duration,
        reply: Option<Replier>,
    ) -> Result<Option<AbortHandle>, Refused> {
        // Filters see requests in arrival order, before they run.
        let handle = match &call {
            BackendCall::Handle(h) => Some(h),
            BackendCall::Remote(_) => None,
        };
        let filtered = match self.admit(handle) {
            Ok(filtered) => filtered,
            Err((code, message)) => {
                return Err(Refused {
                    reply,
                    code,
                    message,
                })
            }
        };
        let answers = reply.is_some();
        let tasks = self.tasks.clone();
        let task = tasks.spawn(async move {
            let cx = RequestCx::new(link, deadline, filtered);
            let result = caught(call.serve(&*self, &cx)).await;
            // A notify has nobody to answer.
            if let Some(reply) = reply {
                reply.send(result).await;
            }
        });
        // A request its frontend cancels is dropped at its next await.
        Ok(answers.then(|| task.abort_handle()))
    }

    fn direct(
        self: Arc<Self>,
        link: FrontendClient,
        call: Handle,
        deadline: Duration,
    ) -> Result<DirectAnswer, RpcError> {
        let filtered = self
            .admit(Some(&call))
            .map_err(|(code, message)| RpcError::new(code, message))?;
        // Counts as a running handler: a drain waits for it.
        let running = self.tasks.token();
        let run = async move {
            let sid = call.session.sid;
            let settled = link.settled();
            let cx = RequestCx::new(link, deadline, filtered);
            let result = self.handle(call, &cx).await;
            // What the handler sent one way reaches the frontend before
            // its answer, as on the link, where both share one queue.
            cx.link.settle(settled, sid, deadline).await;
            drop(running);
            result
        };
        // Run on the client's connection task: a panic must end this
        // request only.
        Ok(Box::pin(caught(run)))
    }

    fn remote_routes(&self) -> tokio::sync::watch::Receiver<Arc<Vec<String>>> {
        self.announced.subscribe()
    }
}

/// `run`, answered 500 if it panics outside its handler (the handler's own
/// panic is caught where it runs): a filter's bug ends its request, which
/// is still answered, and nothing else.
///
/// A combinator, not an `async fn`: an `async fn` keeps its argument and
/// the future it awaits side by side, which doubled the room every
/// request's task takes (and copies, as it is spawned).
fn caught(
    run: impl std::future::Future<Output = Result<Bytes, RpcError>>,
) -> impl std::future::Future<Output = Result<Bytes, RpcError>> {
    std::panic::AssertUnwindSafe(run).catch_unwind().map(|ran| {
        ran.unwrap_or_else(|_| {
            warn!("a forwarded request panicked outside its handler");
            Err(RpcError::new(ErrorCode::Internal, "request panicked"))
        })
    })
}

impl Dispatcher {
    /// Lets a request in, or says why not (its answer's code and message):
    /// none while the service drains. A client request (`handle`) starts
    /// the filters of its route, in arrival order; `None` when none applies.
    /// A filter that panics as it starts refuses the request, on the task
    /// that read it (a link's reader, a client's connection), which goes on.
    fn admit(&self, handle: Option<&Handle>) -> Result<Option<Started>, (ErrorCode, &'static str)> {
        if self.draining.is_cancelled() {
            return Err((ErrorCode::Unavailable, "backend shutting down"));
        }
        let filters = self.filters.read_unpoisoned();
        let Some(h) = handle.filter(|h| filters.applies(&h.route)) else {
            return Ok(None);
        };
        let mut c = Call::new(h.route.as_str(), h.session.sid);
        c.uid = h.session.uid.clone();
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| filters.start(c)))
            .map(Some)
            .map_err(|_| {
                warn!(route = %h.route, "a filter panicked before a forwarded request");
                (ErrorCode::Internal, "a filter panicked")
            })
    }
}

impl RequestCx {
    fn new(link: FrontendClient, deadline: Duration, filtered: Option<Started>) -> Self {
        RequestCx {
            link,
            deadline,
            filtered: std::sync::Mutex::new(filtered),
        }
    }
}

impl ServeBackend for Dispatcher {
    type Cx = RequestCx;

    async fn handle(&self, call: Handle, cx: &RequestCx) -> Result<Bytes, RpcError> {
        use crate::metrics::Outcome;
        let Handle {
            route,
            session,
            body,
        } = call;
        let (handler, metrics) = {
            let served = self.handlers.read_unpoisoned();
            (
                served.table.get(&route),
                served.metrics.get(&route).cloned(),
            )
        };
        let Some(handler) = handler else {
            if self.remotes.read_unpoisoned().serves(&route) {
                // A client asked for a remote method: refused, never run.
                debug!(route = %route, "a client asked for a remote method; refused");
                let refusal = HandlerError::with_code(
                    session_proxy_filters::NOT_FOR_CLIENTS,
                    format!("{route} is not a client route"),
                );
                return Ok(refusal.to_body());
            }
            debug!(route = %route, "no handler for forwarded route");
            return Err(RpcError::new(
                ErrorCode::UnknownRoute,
                format!("no handler for route {route}"),
            ));
        };
        let started = std::time::Instant::now();
        let deadline = cx.deadline;
        let sid = session.sid;
        let session = BackendSession::from_snapshot(cx.link.clone(), session);
        let run = async {
            let run = std::panic::AssertUnwindSafe(handler(session, body)).catch_unwind();
            let run = REQUEST_DEADLINE.scope(tokio::time::Instant::now() + deadline, run);
            match timeout(deadline, run).await {
                Ok(Ok(Ok(body))) => (Ok(body), Outcome::Ok),
                Ok(Ok(Err(app_error))) => (Ok(app_error.to_body()), Outcome::AppError),
                Ok(Err(_panic)) => {
                    warn!(route = %route, "request handler panicked");
                    (
                        Err(RpcError::new(ErrorCode::Internal, "handler panicked")),
                        Outcome::Failed,
                    )
                }
                Err(_) => (
                    Err(RpcError::new(
                        ErrorCode::DeadlineExceeded,
                        format!("handler for {route} ran past its deadline"),
                    )),
                    Outcome::Failed,
                ),
            }
        };
        let filtered = cx.filtered.lock_unpoisoned().take();
        let (result, outcome) = match filtered {
            None => run.await,
            // Boxed: the unfiltered path's future stays small.
            Some(filtered) => match Box::pin(filtered.around_with(run, body_of)).await {
                Ok(ran) => ran,
                Err(refusal) => {
                    if refusal.disconnect {
                        let reason = refusal.error.message.clone();
                        let _ = Box::pin(cx.link.call(KickBySid { sid, reason })).await;
                    }
                    (Ok(refusal.error.to_body()), Outcome::AppError)
                }
            },
        };
        if let Some(m) = metrics {
            m.record(started, outcome);
        }
        result
    }

    async fn remote(&self, call: Remote, cx: &RequestCx) -> Result<Bytes, RpcError> {
        // Boxed: a forwarded request's future does not carry room for it.
        Box::pin(self.run_remote(call, cx)).await
    }
}

impl Dispatcher {
    /// Runs a remote method for [`ServeBackend::remote`].
    async fn run_remote(&self, call: Remote, cx: &RequestCx) -> Result<Bytes, RpcError> {
        let Remote {
            route,
            caller,
            session,
            args,
        } = call;
        let remote_cx = crate::RemoteCx {
            caller,
            session: session.map(|s| BackendSession::from_snapshot(cx.link.clone(), s)),
        };
        let run = self.remotes.read_unpoisoned().run(&route, remote_cx, args);
        let Some(run) = run else {
            debug!(route = %route, "no such remote method");
            return Err(RpcError::new(
                ErrorCode::UnknownRoute,
                format!("no remote method {route}"),
            ));
        };
        let deadline = cx.deadline;
        let run = std::panic::AssertUnwindSafe(run).catch_unwind();
        let run = REQUEST_DEADLINE.scope(tokio::time::Instant::now() + deadline, run);
        let reply = match timeout(deadline, run).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_panic)) => {
                warn!(route = %route, "remote method panicked");
                return Err(RpcError::new(ErrorCode::Internal, "remote method panicked"));
            }
            Err(_) => {
                return Err(RpcError::new(
                    ErrorCode::DeadlineExceeded,
                    format!("{route} ran past its deadline"),
                ))
            }
        };
        rmp_serde::to_vec(&reply)
            .map(Bytes::from)
            .map_err(|err| RpcError::new(ErrorCode::Internal, format!("cannot encode: {err}")))
    }
}

/// The body of a handler's answer, as after filters see it (none for a
/// failure that is not the handler's answer).
fn body_of(ran: &(Result<Bytes, RpcError>, crate::metrics::Outcome)) -> &[u8] {
    match &ran.0 {
        Ok(body) => body,
        Err(_) => &[],
    }
}
