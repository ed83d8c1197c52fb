//! Idle and absolute timeouts, and the grace period of parked sessions.
//!
//! Nothing here scans the table. Each session has one pending check in a
//! `DelayQueue` owned by one expiry task. A check that finds the session
//! was active meanwhile re-arms itself for the new deadline, so client
//! traffic costs only an atomic store (`touch`), never a timer operation.

use super::{SessionEntry, SessionService};
use crate::Error;
use futures::StreamExt;
use session_proxy_protocol::SessionId;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{OnceLock, Weak};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::time::{delay_queue, DelayQueue};

/// The service's clock for activity, and the queue of checks the expiry
/// task runs.
pub(super) struct Expiry {
    /// The zero of `SessionEntry::last_active`.
    epoch: Instant,
    /// Deadlines for the expiry task, started with the first deadline.
    timers: OnceLock<mpsc::UnboundedSender<(SessionId, Instant)>>,
}

impl Default for Expiry {
    fn default() -> Self {
        Expiry {
            epoch: Instant::now(),
            timers: OnceLock::new(),
        }
    }
}

impl Expiry {
    /// Now, in ms since the epoch: what `last_active` holds.
    pub(super) fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// When a session must close unless something changes: the earliest of
    /// its idle deadline, its lifetime and the end of its grace period.
    pub(super) fn due(&self, entry: &SessionEntry) -> Option<Instant> {
        let last_active =
            self.epoch + Duration::from_millis(entry.last_active.load(Ordering::Relaxed));
        [
            entry.idle_timeout.map(|t| last_active + t),
            entry.lifetime.map(|t| entry.created + t),
            entry.parked.as_ref().map(|p| p.until),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Queues a check of `sid` at `at`; `start` starts the task that runs
    /// the checks, on first use.
    fn queue(
        &self,
        sid: SessionId,
        at: Instant,
        start: impl FnOnce(mpsc::UnboundedReceiver<(SessionId, Instant)>),
    ) {
        let tx = self.timers.get_or_init(|| {
            // Unbounded: one message per session created, parked or given
            // new timeouts; the task drains them as fast as they come.
            let (tx, rx) = mpsc::unbounded_channel();
            start(rx);
            tx
        });
        let _ = tx.send((sid, at));
    }
}

impl SessionService {
    pub(super) fn now_ms(&self) -> u64 {
        self.inner.expiry.now_ms()
    }

    /// Records client activity: restarts the session's idle timeout.
    pub fn touch(&self, sid: SessionId) {
        if let Some(entry) = self.inner.sessions.get(&sid) {
            entry.last_active.store(self.now_ms(), Ordering::Relaxed);
        }
    }

    /// Overrides one session's idle timeout and lifetime (`None`: none).
    pub fn set_timeouts(
        &self,
        sid: SessionId,
        idle: Option<Duration>,
        lifetime: Option<Duration>,
    ) -> Result<(), Error> {
        let due = {
            let mut entry = self.entry_mut(sid)?;
            entry.idle_timeout = idle;
            entry.lifetime = lifetime;
            self.inner.expiry.due(&entry)
        };
        if let Some(at) = due {
            self.schedule(sid, at);
        }
        Ok(())
    }

    /// Asks the expiry task to check `sid` at `at` (or earlier, if it
    /// already had an earlier check). Starts the task on first use; without
    /// a tokio runtime there is no expiry.
    pub(super) fn schedule(&self, sid: SessionId, at: Instant) {
        self.inner
            .expiry
            .queue(sid, at, |rx| match tokio::runtime::Handle::try_current() {
                Ok(handle) => {
                    let task = expiry_task(std::sync::Arc::downgrade(&self.inner), rx);
                    self.spawn_task(&handle, task);
                }
                Err(_) => tracing::warn!("no tokio runtime: session timeouts are off"),
            });
    }

    /// Closes the session if its deadline has passed; otherwise returns its
    /// next deadline (`None`: gone, or nothing to wait for).
    fn expire_or_next(&self, sid: SessionId) -> Option<Instant> {
        let due = {
            let entry = self.inner.sessions.get(&sid)?;
            self.inner.expiry.due(&entry)?
        };
        if due <= Instant::now() {
            tracing::debug!(sid = %sid.redacted(), "session expired");
            self.end(sid, super::EndReason::Expired, true);
            None
        } else {
            Some(due)
        }
    }
}

/// Owns every pending check; ends when the service is dropped.
async fn expiry_task(
    inner: Weak<super::Inner>,
    mut requests: mpsc::UnboundedReceiver<(SessionId, Instant)>,
) {
    let mut queue: DelayQueue<SessionId> = DelayQueue::new();
    let mut keys: HashMap<SessionId, (delay_queue::Key, Instant)> = HashMap::new();
    loop {
        tokio::select! {
            request = requests.recv() => {
                let Some((sid, at)) = request else { return };
                match keys.get(&sid) {
                    Some((key, current)) if *current > at => {
                        queue.reset_at(key, at);
                        keys.insert(sid, (*key, at));
                    }
                    Some(_) => {}
                    None => {
                        let key = queue.insert_at(sid, at);
                        keys.insert(sid, (key, at));
                    }
                }
            }
            Some(expired) = queue.next(), if !queue.is_empty() => {
                let sid = expired.into_inner();
                keys.remove(&sid);
                let Some(inner) = inner.upgrade() else { return };
                let service = SessionService { inner };
                if let Some(next) = service.expire_or_next(sid) {
                    let key = queue.insert_at(sid, next);
                    keys.insert(sid, (key, next));
                }
            }
        }
    }
}
