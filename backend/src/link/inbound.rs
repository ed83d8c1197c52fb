//! The requests a frontend sends on a link: who runs them ([`Inbound`]),
//! which are still running (so the frontend can cancel them), the room for
//! their answers in the writer's queue, and the way back ([`Replier`]).

use super::{FrontendClient, Outgoing};
use bytes::Bytes;
use session_proxy_protocol::sync::LockUnpoisoned as _;
use session_proxy_protocol::{BackendCall, ErrorCode, Message, Response, RpcError};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::{timeout_at, Instant};
use tokio_util::sync::CancellationToken;

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
    pub(super) fn cancel(&self, id: u64) {
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
    pub(super) fn new(
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
