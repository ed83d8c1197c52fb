//! Serving the client requests frontends forward to this backend: each
//! goes to its route's handler on a task of its own (handlers may be slow),
//! under the service's [`TaskTracker`], so shutdown waits for them.

use crate::handler::SharedHandlers;
use crate::link::{refuse, Inbound, Replier, REQUEST_DEADLINE};
use crate::{BackendSession, FrontendClient};
use futures::FutureExt;
use session_proxy_protocol::{Call, ErrorCode, Reply, RpcError};
use std::time::Duration;
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
}

impl Inbound for Dispatcher {
    fn call(&self, link: FrontendClient, call: Call, deadline: Duration, reply: Option<Replier>) {
        let Call::Handle {
            route,
            session,
            body,
        } = call
        else {
            return refuse(
                reply,
                ErrorCode::Unsupported,
                "backends handle only forwarded requests",
            );
        };
        if self.draining.is_cancelled() {
            return refuse(reply, ErrorCode::Unavailable, "backend shutting down");
        }
        let (handler, metrics) = {
            let served = self.handlers.read().unwrap_or_else(|e| e.into_inner());
            (
                served.table.get(&route),
                served.metrics.get(&route).cloned(),
            )
        };
        let Some(handler) = handler else {
            debug!(route = %route, "no handler for forwarded route");
            return refuse(
                reply,
                ErrorCode::UnknownRoute,
                &format!("no handler for route {route}"),
            );
        };
        let started = std::time::Instant::now();
        self.tasks.spawn(async move {
            use crate::metrics::Outcome;
            let session = BackendSession::from_snapshot(link, session);
            let run = std::panic::AssertUnwindSafe(handler(session, body)).catch_unwind();
            let run = REQUEST_DEADLINE.scope(tokio::time::Instant::now() + deadline, run);
            let (result, outcome) = match timeout(deadline, run).await {
                Ok(Ok(Ok(body))) => (Ok(Reply::Handled(body)), Outcome::Ok),
                Ok(Ok(Err(app_error))) => {
                    (Ok(Reply::Handled(app_error.to_body())), Outcome::AppError)
                }
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
            };
            if let Some(m) = metrics {
                m.record(started, outcome);
            }
            if let Some(reply) = reply {
                reply.send(result).await;
            }
        });
    }
}
