//! The calls of one backend link that wait, run beside its reader.
//!
//! Almost every session call is a map operation that finishes the first
//! time it is polled, and the link answers it in the same batch. A few wait
//! on the session store (a bind under the cluster-wide single-session
//! policy, `user_sessions`, `revoke_uid`): those are kept here and polled by
//! the link's loop together with its socket, so forwarded requests and the
//! other calls on the link go on while Redis is slow or stopped.
//!
//! Calls on one session stay in arrival order (invariant 2): while a call on
//! a session waits, later calls on that session queue behind it and start,
//! in order, when it is done.

use super::apply::{CallCx, LinkCalls};
use crate::delivery::{Receipt, Ticket};
use bytes::Bytes;
use futures::future::{AbortHandle, Abortable, FutureExt};
use futures::stream::{FuturesUnordered, StreamExt};
use session_proxy_protocol::{FrontendCall, FrontendCallKind, RpcError, SessionId};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// What a finished call needs to be answered.
pub(super) struct Started {
    /// The request id; `None` for a notify.
    pub(super) id: Option<u64>,
    /// The call's kind.
    pub(super) kind: FrontendCallKind,
    /// The one session it addressed, if any.
    pub(super) sid: Option<SessionId>,
    /// For a push to clients: the receipt counting its copies, and how long
    /// the answer may wait for them to be written.
    pub(super) receipt: Option<((Arc<Receipt>, Ticket), Duration)>,
}

/// A finished call and its outcome.
pub(super) type Done = (Started, Result<Bytes, RpcError>);

type Waiting<'a> = Pin<Box<dyn Future<Output = Done> + Send + 'a>>;

/// A waiting call in the set: `None` when its caller cancelled it.
type InSet<'a> = Pin<Box<dyn Future<Output = Option<Done>> + Send + 'a>>;

/// A call that has not started: its session has an earlier call waiting.
struct Queued {
    id: Option<u64>,
    call: FrontendCall,
    deadline: Duration,
}

/// The waiting calls of one link.
pub(super) struct Lanes<'a> {
    calls: &'a LinkCalls<'a>,
    /// How long a push's answer may wait for its copies to be written.
    push_write_wait: Duration,
    waiting: FuturesUnordered<InSet<'a>>,
    /// Sessions with a call waiting, and the calls queued behind it.
    queued: HashMap<SessionId, VecDeque<Queued>>,
    /// The waiting calls a caller may cancel (relayed remote calls), by id.
    cancels: HashMap<u64, AbortHandle>,
}

impl<'a> Lanes<'a> {
    pub(super) fn new(calls: &'a LinkCalls<'a>, push_write_wait: Duration) -> Self {
        Lanes {
            calls,
            push_write_wait,
            waiting: FuturesUnordered::new(),
            queued: HashMap::new(),
            cancels: HashMap::new(),
        }
    }

    /// Runs a call that arrived with `deadline`: returns its outcome when it
    /// finished at once (the usual case); otherwise it waits here (or
    /// queues behind its session's waiting call) and comes out of
    /// [`next`](Self::next).
    pub(super) fn start(
        &mut self,
        id: Option<u64>,
        call: FrontendCall,
        deadline: Duration,
    ) -> Option<Done> {
        if let Some(queue) = call.sid().and_then(|sid| self.queued.get_mut(&sid)) {
            queue.push_back(Queued { id, call, deadline });
            return None;
        }
        self.run(id, call, deadline)
    }

    fn run(&mut self, id: Option<u64>, call: FrontendCall, deadline: Duration) -> Option<Done> {
        let kind = call.kind();
        let sid = call.sid();
        let wait = self.push_write_wait.min(deadline / 2);
        let receipt = (kind.pushes_to_clients() && !wait.is_zero()).then(|| (Receipt::new(), wait));
        let cx = CallCx {
            receipt: receipt.as_ref().map(|((r, _), _)| r.clone()),
            deadline,
        };
        let started = Started {
            id,
            kind,
            sid,
            receipt,
        };
        let calls = self.calls;
        let mut run: Waiting<'a> = Box::pin(async move {
            let result = call.serve(calls, &cx).await;
            (started, result)
        });
        // One poll here: a call that does not wait finishes now, in order
        // with the frames around it. A waiting one is polled again by the
        // set, which polls what is pushed into it.
        match run
            .as_mut()
            .poll(&mut Context::from_waker(futures::task::noop_waker_ref()))
        {
            Poll::Ready(done) => Some(done),
            Poll::Pending => {
                if let Some(sid) = sid {
                    self.queued.entry(sid).or_default();
                }
                let relayed = matches!(kind, FrontendCallKind::Relay | FrontendCallKind::RelayAll);
                match id.filter(|_| relayed) {
                    Some(id) => {
                        let (handle, registration) = AbortHandle::new_pair();
                        self.cancels.insert(id, handle);
                        self.waiting
                            .push(Box::pin(Abortable::new(run, registration).map(Result::ok)));
                    }
                    None => self.waiting.push(Box::pin(run.map(Some))),
                }
                None
            }
        }
    }

    /// The next waiting call to finish. Cancel-safe; pending forever while
    /// nothing waits.
    pub(super) async fn next(&mut self) -> Done {
        loop {
            match self.waiting.next().await {
                Some(Some(done)) => {
                    if let Some(id) = done.0.id {
                        self.cancels.remove(&id);
                    }
                    return done;
                }
                // Cancelled: nobody waits for its answer.
                Some(None) => {}
                None => return std::future::pending().await,
            }
        }
    }

    /// Stops the waiting relayed call `id` (its callee is told); whether
    /// there was one.
    pub(super) fn cancel(&mut self, id: u64) -> bool {
        match self.cancels.remove(&id) {
            Some(handle) => {
                handle.abort();
                true
            }
            None => false,
        }
    }

    /// After a waiting call on `sid` finished: starts the calls queued
    /// behind it, in order, until one waits; returns those that finished.
    pub(super) fn resume(&mut self, sid: Option<SessionId>) -> Vec<Done> {
        let Some(sid) = sid else { return Vec::new() };
        let mut finished = Vec::new();
        loop {
            let next = self.queued.get_mut(&sid).and_then(VecDeque::pop_front);
            let Some(Queued { id, call, deadline }) = next else {
                // Nothing queued and nothing waiting on this session.
                self.queued.remove(&sid);
                return finished;
            };
            // The session's slot stays taken while the call runs.
            match self.run(id, call, deadline) {
                Some(done) => finished.push(done),
                None => return finished,
            }
        }
    }
}
