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
use std::sync::Weak;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::time::{delay_queue, DelayQueue};

/// When a session must close unless something changes: the earliest of its
/// idle deadline, its lifetime and the end of its grace period.
pub(super) fn due(entry: &SessionEntry, epoch: Instant) -> Option<Instant> {
    let last_active = epoch + Duration::from_millis(entry.last_active.load(Ordering::Relaxed));
    [
        entry.idle_timeout.map(|t| last_active + t),
        entry.lifetime.map(|t| entry.created + t),
        entry.parked.as_ref().map(|p| p.until),
    ]
    .into_iter()
    .flatten()
    .min()
}

impl SessionService {
    pub(super) fn now_ms(&self) -> u64 {
        u64::try_from(self.inner.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
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
            due(&entry, self.inner.epoch)
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
        let tx = self.inner.timers.get_or_init(|| {
            // Unbounded: one message per session created, parked or given
            // new timeouts; the task drains them as fast as they come.
            let (tx, rx) = mpsc::unbounded_channel();
            match tokio::runtime::Handle::try_current() {
                Ok(handle) => {
                    let task = expiry_task(std::sync::Arc::downgrade(&self.inner), rx);
                    self.spawn_task(&handle, task);
                }
                Err(_) => tracing::warn!("no tokio runtime: session timeouts are off"),
            }
            tx
        });
        let _ = tx.send((sid, at));
    }

    /// Closes the session if its deadline has passed; otherwise returns its
    /// next deadline (`None`: gone, or nothing to wait for).
    fn expire_or_next(&self, sid: SessionId) -> Option<Instant> {
        let due = {
            let entry = self.inner.sessions.get(&sid)?;
            due(&entry, self.inner.epoch)?
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
