//! Who holds a session: closing the copies the store says moved, telling
//! backends where they went, and handing every session over on a drain.

use super::lock;
use crate::service::SessionService;
use crate::store::{Fenced, StoreError};
use session_proxy_protocol::SessionId;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::time::Instant;

/// How long a frontend remembers where a session it lost went.
const MOVED_MEMORY: Duration = Duration::from_secs(60);

impl SessionService {
    /// Closes the local copies of sessions the store says another
    /// frontend holds now (or that were ended for every holder), without
    /// deleting them there, and remembers where they went.
    pub(super) fn lost(&self, fenced: &[Fenced]) {
        let Some(link) = self.inner.store.get() else {
            return;
        };
        if fenced.is_empty() {
            return;
        }
        {
            let mut moved = lock(&link.moved);
            moved.retain(|_, (_, since)| since.elapsed() < MOVED_MEMORY);
            for f in fenced {
                moved.insert(f.sid, (f.owner.clone(), Instant::now()));
            }
        }
        for f in fenced {
            let moved = super::super::close::Ending::Moved {
                to: f.owner.to_string(),
            };
            if self.remove_as(f.sid, moved, true, false) {
                tracing::info!(
                    sid = %f.sid.redacted(),
                    owner = %f.owner,
                    "another frontend holds this session now; closed the local copy"
                );
            }
        }
    }

    /// Where a session this frontend lost went: the frontend the store
    /// named when it refused this frontend's write (its client resumed
    /// there), remembered for a minute. `None` for a session this frontend
    /// still holds, one that closed, or one it never held.
    pub fn moved_to(&self, sid: SessionId) -> Option<String> {
        let link = self.inner.store.get()?;
        if self.inner.sessions.contains_key(&sid) {
            return None;
        }
        let moved = lock(&link.moved);
        let (owner, since) = moved.get(&sid)?;
        (since.elapsed() < MOVED_MEMORY && !owner.is_empty()).then(|| owner.clone())
    }

    /// Hands every session over for another frontend to resume (the last
    /// step of a drain): writes each one with no owner, the pushes that
    /// wait for parked clients included, within `within`. From then on this
    /// frontend deletes nothing from the store: a session it closes is left
    /// for its client to resume elsewhere. Returns how many were written;
    /// sessions another frontend already claimed are closed here.
    pub async fn hand_over(&self, within: Duration) -> Result<usize, StoreError> {
        let Some(link) = self.inner.store.get() else {
            return Ok(0);
        };
        link.handed_over.store(true, Ordering::Release);
        let _one_at_a_time = tokio::time::timeout(within, link.flush_lock.lock())
            .await
            .map_err(|_| StoreError::TimedOut { after: within })?;
        lock(&link.dirty).clear();
        lock(&link.deleted).clear();
        link.settle_all(self);
        let mut records = Vec::with_capacity(self.inner.sessions.len());
        for mut entry in self.inner.sessions.iter_mut() {
            let sid = *entry.key();
            let mut record = self.to_stored(sid, &entry);
            if let Some(parked) = entry.parked.as_mut() {
                while let Ok(Some(event)) = parked.rx.try_recv() {
                    if let crate::Outbound::Push { route, body } = event {
                        record.pushes.push(crate::store::QueuedPush { route, body });
                    }
                }
            }
            records.push(record);
        }
        let count = records.len();
        let put = link.store.put(records, link.options.ttl);
        let fenced = match tokio::time::timeout(within, put).await {
            Ok(result) => result?,
            Err(_) => return Err(StoreError::TimedOut { after: within }),
        };
        self.lost(&fenced);
        tracing::info!(
            sessions = count - fenced.len(),
            "sessions handed over for other frontends to resume"
        );
        Ok(count - fenced.len())
    }
}
