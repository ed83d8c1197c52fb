//! One request at a time per session, in arrival order (Pinus's `serial`).

use crate::{Call, Filter, Verdict};
use session_proxy_protocol::SessionId;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

/// Runs a session's requests one at a time, in the order they came: a
/// request waits until the one before it has answered (or was cancelled).
/// Sessions do not wait for each other. A session that is idle costs
/// nothing.
#[derive(Clone, Default)]
pub struct Serial {
    lanes: Arc<Mutex<HashMap<SessionId, Lane>>>,
}

/// The requests of one busy session that wait their turn.
#[derive(Default)]
struct Lane {
    waiting: VecDeque<oneshot::Sender<Turn>>,
}

/// A request's turn: the session's lane is its until this is dropped.
struct Turn {
    /// `None` for a turn that was never taken (it passes nothing on).
    lanes: Option<Arc<Mutex<HashMap<SessionId, Lane>>>>,
    sid: SessionId,
}

impl Serial {
    /// One request at a time per session.
    pub fn new() -> Serial {
        Serial::default()
    }

    fn lanes(&self) -> std::sync::MutexGuard<'_, HashMap<SessionId, Lane>> {
        use session_proxy_protocol::sync::LockUnpoisoned as _;
        self.lanes.lock_unpoisoned()
    }

    /// Sessions with a request running.
    pub fn busy(&self) -> usize {
        self.lanes().len()
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        use session_proxy_protocol::sync::LockUnpoisoned as _;
        let Some(shared) = self.lanes.take() else {
            return;
        };
        let mut lanes = shared.lock_unpoisoned();
        let Some(lane) = lanes.get_mut(&self.sid) else {
            return;
        };
        // Hand the lane to the next request still waiting; a cancelled one
        // has dropped its receiver and is skipped.
        while let Some(next) = lane.waiting.pop_front() {
            let turn = Turn {
                lanes: Some(shared.clone()),
                sid: self.sid,
            };
            match next.send(turn) {
                Ok(()) => return,
                // Unsent: disarm it, so that dropping it does not take this
                // lock again.
                Err(mut turn) => turn.lanes = None,
            }
        }
        lanes.remove(&self.sid);
    }
}

impl Filter for Serial {
    fn name(&self) -> &'static str {
        "serial"
    }

    fn before(&self, call: &Call) -> Verdict {
        let mut lanes = self.lanes();
        match lanes.get_mut(&call.sid) {
            None => {
                lanes.insert(call.sid, Lane::default());
                Verdict::Go(Some(Box::new(Turn {
                    lanes: Some(self.lanes.clone()),
                    sid: call.sid,
                })))
            }
            Some(lane) => {
                let (tx, rx) = oneshot::channel();
                lane.waiting.push_back(tx);
                Verdict::Wait(Box::pin(async move {
                    match rx.await {
                        Ok(turn) => Verdict::Go(Some(Box::new(turn))),
                        // The lane was dropped without a turn for us (its
                        // holder's map entry is gone): run.
                        Err(_) => Verdict::go(),
                    }
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Filters;
    use bytes::Bytes;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn a_sessions_requests_run_one_at_a_time_in_arrival_order() {
        let serial = Serial::new();
        let filters = Filters::new().with("", serial.clone());
        let running = Arc::new(AtomicUsize::new(0));
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..20u64 {
            // Started in arrival order, then polled in any order.
            let started = filters.start(Call::new("room.h.m", SessionId::from_raw(1)));
            let (running, order) = (running.clone(), order.clone());
            tasks.push(async move {
                started
                    .around(async move {
                        assert_eq!(running.fetch_add(1, Ordering::SeqCst), 0, "alone");
                        tokio::time::sleep(Duration::from_millis(20 - i)).await;
                        order.lock().expect("order").push(i);
                        running.fetch_sub(1, Ordering::SeqCst);
                        Bytes::new()
                    })
                    .await
            });
        }
        tasks.reverse();
        for result in futures_join(tasks).await {
            result.expect("served");
        }
        assert_eq!(*order.lock().expect("order"), (0..20).collect::<Vec<_>>());
        assert_eq!(serial.busy(), 0, "an idle session costs nothing");
    }

    #[tokio::test]
    async fn a_cancelled_request_passes_the_turn_on() {
        let serial = Serial::new();
        let filters = Filters::new().with("", serial.clone());
        let sid = SessionId::from_raw(7);
        let first = filters.start(Call::new("r.h.m", sid));
        let second = filters.start(Call::new("r.h.m", sid));
        let third = filters.start(Call::new("r.h.m", sid));
        drop(second);
        drop(first);
        let answer = third.around(async { Bytes::from_static(b"3") }).await;
        assert_eq!(answer.expect("third ran"), "3");
        assert_eq!(serial.busy(), 0);
        let other = filters.run(Call::new("r.h.m", SessionId::from_raw(8)), async {
            Bytes::from_static(b"other")
        });
        assert_eq!(other.await.expect("other sessions never wait"), "other");
    }

    /// Polls all of `futures` on this task until each is done.
    async fn futures_join<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
        let mut pinned: Vec<_> = futures.into_iter().map(Box::pin).collect();
        let mut outputs: Vec<Option<F::Output>> = pinned.iter().map(|_| None).collect();
        std::future::poll_fn(|cx| {
            let mut pending = false;
            for (f, out) in pinned.iter_mut().zip(outputs.iter_mut()) {
                if out.is_none() {
                    match f.as_mut().poll(cx) {
                        std::task::Poll::Ready(v) => *out = Some(v),
                        std::task::Poll::Pending => pending = true,
                    }
                }
            }
            if pending {
                std::task::Poll::Pending
            } else {
                std::task::Poll::Ready(())
            }
        })
        .await;
        outputs.into_iter().flatten().collect()
    }
}
