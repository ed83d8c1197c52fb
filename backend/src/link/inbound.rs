//! The requests a frontend sends on a link: who runs them ([`Inbound`]),
//! which are still running (so the frontend can cancel them), the room for
//! their answers in the writer's queue, and the way back ([`Replier`]).

use super::{FrontendClient, Outgoing};
use bytes::Bytes;
use session_proxy_link::inproc::DirectAnswer;
use session_proxy_protocol::sync::LockUnpoisoned as _;
use session_proxy_protocol::{BackendCall, ErrorCode, Handle, Message, Response, RpcError};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio::time::{timeout_at, Instant};

/// What a link does with the requests its frontend sends (forwarded client
/// requests); pings and cancels are the link's own.
pub(crate) trait Inbound: Send + Sync + 'static {
    /// Runs `call` for the frontend behind `link`, within `deadline`, and
    /// answers through `reply` (`None` for a notify). Returns the handle
    /// that stops the request's task when the frontend cancels it (`None`
    /// for a notify), or the refusal to answer (by the caller, so that no
    /// answer is dropped while [`Running::track`] holds its lock).
    fn call(
        self: Arc<Self>,
        link: FrontendClient,
        call: BackendCall,
        deadline: Duration,
        reply: Option<Replier>,
    ) -> Result<Option<AbortHandle>, Refused>;

    /// Starts a forwarded client request that a frontend of this process
    /// calls directly, on its own task, with no frames: the same contract
    /// as [`call`](Self::call) (filters, deadline, the session proxy over
    /// `link`), and the handler's one-way calls reach the frontend before
    /// the answer. `Err` when refused before it runs.
    fn direct(
        self: Arc<Self>,
        link: FrontendClient,
        call: Handle,
        deadline: Duration,
    ) -> Result<DirectAnswer, RpcError>;

    /// The routes of the remote methods served, as they change: each link
    /// announces them to its frontend.
    fn remote_routes(&self) -> tokio::sync::watch::Receiver<Arc<Vec<String>>>;
}

/// A request refused before it ran: answered with `code` and `message`
/// (a notify gets nothing).
pub(crate) struct Refused {
    pub(crate) reply: Option<Replier>,
    pub(crate) code: ErrorCode,
    pub(crate) message: &'static str,
}

impl Refused {
    /// Answers the refusal.
    pub(crate) fn answer(self) {
        refuse(self.reply, self.code, self.message);
    }
}

/// The requests of one connection that are still running, by id, so the
/// frontend can cancel them: each task's abort handle, taken out when its
/// [`Replier`] is dropped (the task ended, or was aborted).
#[derive(Default)]
pub(crate) struct Running {
    by_id: Mutex<HashMap<u64, AbortHandle>>,
}

impl Running {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, AbortHandle>> {
        // One map operation per critical section: a poisoned map is whole.
        self.by_id.lock_unpoisoned()
    }

    /// Runs `start` (which spawns request `id`'s task) and tracks the task;
    /// answers a refusal once the lock is let go. Under the lock: a task
    /// that ends at once takes itself out only after it was put in.
    pub(super) fn track(
        &self,
        id: u64,
        start: impl FnOnce() -> Result<Option<AbortHandle>, Refused>,
    ) {
        let mut running = self.lock();
        match start() {
            Ok(Some(task)) => {
                running.insert(id, task);
            }
            Ok(None) => {}
            Err(refused) => {
                drop(running);
                refused.answer();
            }
        }
    }

    /// The frontend gave up on request `id`: its task stops at its next
    /// await.
    pub(super) fn cancel(&self, id: u64) {
        if let Some(task) = self.lock().remove(&id) {
            task.abort();
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
    pub(super) fn new(cap: usize) -> Self {
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

/// The way back shared by the requests of one connection: its writer's
/// queue, the room for answers in it, and the requests still running. One
/// reference per request.
pub(crate) struct Answers {
    /// The link's writer queue.
    pub(super) tx: mpsc::Sender<Outgoing>,
    /// The room for answers in that queue.
    pub(super) bytes: AnswerBytes,
    /// The requests still running, for cancels.
    pub(super) running: Running,
}

/// The way back for one request the frontend sent.
pub(crate) struct Replier {
    /// The request's id.
    id: u64,
    /// The connection's way back.
    answers: Arc<Answers>,
    /// When the frontend stops waiting for the answer.
    deadline_at: Instant,
}

impl Drop for Replier {
    fn drop(&mut self) {
        self.answers.running.finish(self.id);
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
    /// A request of the connection of `answers`, answered within
    /// `deadline`.
    pub(super) fn new(id: u64, answers: &Arc<Answers>, deadline: Duration) -> Self {
        Replier {
            id,
            answers: answers.clone(),
            deadline_at: Instant::now() + deadline,
        }
    }

    /// Queues `result` if the queue has room for it now (bytes and
    /// frames); otherwise hands the frame back with its cost. A dead link
    /// takes nothing and hands nothing back: there is nobody to answer.
    fn try_answer(&self, result: Result<Bytes, RpcError>) -> Option<(Outgoing, u32)> {
        let frame = Message::Response(Response {
            id: self.id,
            result,
        });
        let cost = self.answers.bytes.cost(&frame);
        let Ok(taken) = self.answers.bytes.room.try_acquire_many(cost) else {
            return Some((frame, cost));
        };
        match self.answers.tx.try_send(frame) {
            Ok(()) => {
                taken.forget();
                None
            }
            Err(mpsc::error::TrySendError::Closed(_)) => None,
            Err(mpsc::error::TrySendError::Full(frame)) => Some((frame, cost)),
        }
    }

    /// Answers at once if the queue has room; a full queue or a dead link
    /// drops the answer (the frontend's deadline answers for it).
    pub(crate) fn now(self, result: Result<Bytes, RpcError>) {
        let _dropped_when_full = self.try_answer(result);
    }

    /// Answers, waiting for room in the queue (bytes and frames) until the
    /// request's deadline; after it the answer is dropped, as its caller
    /// has been told the request failed.
    pub(crate) async fn send(self, result: Result<Bytes, RpcError>) {
        // Room now (the usual case): no timer, no waiting.
        if let Some((frame, cost)) = self.try_answer(result) {
            // Boxed: the fast path's future stays small.
            Box::pin(self.wait_to_send(frame, cost)).await;
        }
    }

    async fn wait_to_send(&self, frame: Outgoing, cost: u32) {
        let queued = timeout_at(self.deadline_at, async {
            let taken = self.answers.bytes.room.acquire_many(cost).await.ok()?;
            taken.forget();
            self.answers.tx.send(frame).await.ok()
        })
        .await;
        if queued.is_err() {
            tracing::debug!(id = self.id, "answer dropped: no room before its deadline");
        }
    }
}
