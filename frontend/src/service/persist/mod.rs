//! Writing sessions to a [`SessionStore`] and reading them back.
//!
//! Changes are tracked per session (a dirty set) and written in batches: a
//! session changed a hundred times between two flushes is written once.
//! Mutations that a backend is waiting on are made durable before they are
//! acknowledged: the RPC server flushes after each batch of calls and only
//! then answers (group commit). A restarted frontend restores its sessions
//! as parked, so clients resume with their tokens.
//!
//! - this file: the service's link to its store, attaching it, flushing;
//! - `records`: a live entry as a stored record, and a record as a parked
//!   entry;
//! - `ownership`: sessions that moved to another frontend, and the drain's
//!   hand-over;
//! - `users`: every session of a user across frontends;
//! - `tasks`: the background writer and the eviction follower.

use super::close::Ended;
use super::SessionService;
use crate::store::{Fenced, SessionStore, StoreError, StoredSession};
use crate::StoreOptions;
use session_proxy_protocol::sync::LockUnpoisoned as _;
use session_proxy_protocol::SessionId;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::Instant;

mod ownership;
mod records;
mod tasks;
mod users;

use self::tasks::{background, follow_evictions};

/// A service's link to its store.
pub(crate) struct StoreLink {
    pub(super) store: Arc<dyn SessionStore>,
    options: StoreOptions,
    /// Sessions changed since the last flush.
    dirty: Mutex<HashSet<SessionId>>,
    /// Sessions closed since the last flush, with the epoch they were
    /// held under.
    deleted: Mutex<HashMap<SessionId, u64>>,
    /// The closed sessions whose close hooks wait for the store to delete
    /// them: one another frontend claimed meanwhile has moved, not ended.
    ending: Mutex<HashMap<SessionId, Ended>>,
    /// Sessions the store said another frontend holds now (their local
    /// copy is closed), and since when: backends that still address this
    /// frontend are told where they went. Pruned after a minute.
    moved: Mutex<HashMap<SessionId, (String, Instant)>>,
    /// Set once this frontend hands its sessions over (a drain): records
    /// are written with no owner, for any frontend to claim.
    handed_over: AtomicBool,
    /// One flush at a time; a caller that waits finds its changes either
    /// written by the flush it waited for or still dirty for its own.
    flush_lock: tokio::sync::Mutex<()>,
    /// Since when the store has failed without answering since; `None`
    /// while it answers. While it is down, callers fail at once and only
    /// the background task tries the store.
    down_since: Mutex<Option<Instant>>,
}

impl StoreLink {
    /// Runs one store call under the deadline, and keeps the up/down state.
    pub(super) async fn call<T>(
        &self,
        op: crate::store::StoreFuture<'_, T>,
    ) -> Result<T, StoreError> {
        let after = self.options.call_timeout;
        let result = match tokio::time::timeout(after, op).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::TimedOut { after }),
        };
        match &result {
            Ok(_) => self.answered(),
            Err(StoreError::Unavailable { .. } | StoreError::TimedOut { .. }) => {
                crate::metrics::STORE_FAILED.increment(1);
                self.failed(result.as_ref().err())
            }
            Err(_) => {}
        }
        result
    }

    /// Fails at once while the store is down.
    pub(super) fn check_up(&self) -> Result<(), StoreError> {
        match *lock(&self.down_since) {
            Some(since) => Err(StoreError::Down {
                down_for: since.elapsed(),
            }),
            None => Ok(()),
        }
    }

    fn is_down(&self) -> bool {
        lock(&self.down_since).is_some()
    }

    fn answered(&self) {
        if let Some(since) = lock(&self.down_since).take() {
            tracing::info!(down_for = ?since.elapsed(), "session store answers again; writing what waited");
        }
    }

    fn failed(&self, err: Option<&StoreError>) {
        let mut down = lock(&self.down_since);
        if down.is_none() {
            *down = Some(Instant::now());
            // Once per outage; the retries that follow log at debug.
            tracing::warn!(
                cause = %err.map(ToString::to_string).unwrap_or_default(),
                "session store failed; changes are kept in memory and retried, \
                 mutations are answered NotDurable until it answers"
            );
        }
    }

    /// Writes the dirty and deleted sessions of `service`; on failure they
    /// stay pending for the next attempt. Sessions the store refuses
    /// (another frontend claimed them) are closed here, not deleted there.
    async fn write(&self, service: &SessionService) -> Result<(), StoreError> {
        let _one_at_a_time = self.flush_lock.lock().await;
        let dirty: Vec<SessionId> = lock(&self.dirty).drain().collect();
        let deleted: Vec<(SessionId, u64)> = lock(&self.deleted).drain().collect();
        if dirty.is_empty() && deleted.is_empty() {
            return Ok(());
        }
        let records: Vec<StoredSession> = dirty
            .iter()
            .filter_map(|sid| {
                service
                    .inner
                    .sessions
                    .get(sid)
                    .map(|e| service.to_stored(*sid, &e))
            })
            .collect();
        let started = Instant::now();
        crate::metrics::FLUSH_SESSIONS.record(records.len() as f64);
        let mut written = self.call(self.store.put(records, self.options.ttl)).await;
        if let Ok(fenced) = &written {
            service.lost(fenced);
            if !deleted.is_empty() {
                written = self.call(self.store.release(deleted.clone())).await;
                if let Ok(fenced) = &written {
                    // Closed here, held elsewhere: theirs stays.
                    tracing::debug!(
                        sessions = fenced.len(),
                        "closed sessions another frontend holds"
                    );
                    self.settle(service, &deleted, fenced);
                }
            }
        }
        crate::metrics::FLUSH_SECONDS.record(started.elapsed().as_secs_f64());
        if written.is_err() {
            lock(&self.dirty).extend(dirty);
            lock(&self.deleted).extend(deleted);
        }
        written.map(drop)
    }

    /// The close hooks of `deleted`, now the store has answered: a session
    /// it says another frontend holds (`fenced`) has moved there.
    fn settle(&self, service: &SessionService, deleted: &[(SessionId, u64)], fenced: &[Fenced]) {
        let settled: Vec<Ended> = {
            let mut ending = lock(&self.ending);
            deleted
                .iter()
                .filter_map(|(sid, _)| ending.remove(sid))
                .collect()
        };
        for end in settled {
            match fenced.iter().find(|f| f.sid == end.sid) {
                Some(f) => {
                    lock(&self.moved).insert(end.sid, (f.owner.clone(), Instant::now()));
                    service.moved_away(end.sid, end.uid, f.owner.clone());
                }
                None => service.ended(end),
            }
        }
    }

    /// Runs every close hook still waiting for the store: at a hand-over
    /// nothing more is deleted there, and these sessions ended here.
    pub(super) fn settle_all(&self, service: &SessionService) {
        let waiting: Vec<Ended> = lock(&self.ending).drain().map(|(_, e)| e).collect();
        for end in waiting {
            service.ended(end);
        }
    }

    /// Restarts the TTL of every live session; sessions the store lost (a
    /// server restarted empty) are marked to be written again.
    async fn refresh(&self, service: &SessionService) -> Result<(), StoreError> {
        let held: Vec<(SessionId, u64)> = service
            .inner
            .sessions
            .iter()
            .map(|e| (*e.key(), e.store_epoch))
            .collect();
        self.refresh_held(service, held).await
    }

    /// Restarts the TTL of the sessions `held` (with the epochs they are
    /// held under) and settles what the store says of them: one another
    /// frontend claimed since is closed here as moved, one the store lost
    /// is marked to be written again. A resume checks its session's copy
    /// with this before trusting it.
    pub(in crate::service) async fn refresh_held(
        &self,
        service: &SessionService,
        held: Vec<(SessionId, u64)>,
    ) -> Result<(), StoreError> {
        let report = self
            .call(self.store.refresh(held, self.options.ttl))
            .await?;
        service.lost(&report.fenced);
        let missing: Vec<SessionId> = report
            .missing
            .into_iter()
            .filter(|sid| service.inner.sessions.contains_key(sid))
            .collect();
        if !missing.is_empty() {
            tracing::warn!(
                sessions = missing.len(),
                "the session store lost sessions (restarted empty?); writing them again"
            );
            lock(&self.dirty).extend(missing);
        }
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Set insertions and swaps only: a poisoned lock still guards a whole set.
    m.lock_unpoisoned()
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl SessionService {
    /// Whether a store is attached.
    pub fn has_store(&self) -> bool {
        self.inner.store.get().is_some()
    }

    /// Whether a backend's change is answered only once it is in the
    /// store: a store is attached, and it does not write behind
    /// ([`StoreOptions::write_behind`]).
    pub(crate) fn acknowledges_after_write(&self) -> bool {
        self.inner
            .store
            .get()
            .is_some_and(|link| !link.options.write_behind)
    }

    /// Whether the store answers a read within `within` (always, without a
    /// store): for a readiness probe.
    pub async fn store_answers(&self, within: Duration) -> bool {
        let Some(link) = self.inner.store.get() else {
            return true;
        };
        let probe = link.store.get(SessionId::from_raw(0));
        matches!(tokio::time::timeout(within, probe).await, Ok(Ok(_)))
    }

    pub(super) fn mark_dirty(&self, sid: SessionId) {
        if let Some(link) = self.inner.store.get() {
            lock(&link.dirty).insert(sid);
        }
    }

    /// Queues the deletion of a session that ended here; its close hook
    /// (`end`) waits for the store's answer. Returns `end` when nothing is
    /// deleted in the store (none attached, or handed over): it has ended.
    pub(super) fn mark_deleted(&self, sid: SessionId, epoch: u64, end: Ended) -> Option<Ended> {
        let Some(link) = self
            .inner
            .store
            .get()
            .filter(|l| !l.handed_over.load(Ordering::Acquire))
        else {
            return Some(end);
        };
        lock(&link.dirty).remove(&sid);
        lock(&link.deleted).insert(sid, epoch);
        lock(&link.ending).insert(sid, end);
        None
    }

    /// Attaches a store: restores the sessions it holds for this frontend
    /// (as parked, waiting `options.restore_grace` for their clients to
    /// resume), then writes changes to it from now on and keeps live
    /// sessions from expiring there. Returns how many sessions were
    /// restored. Call once, before serving; a second call is refused.
    pub async fn attach_store(
        &self,
        store: Arc<dyn SessionStore>,
        options: StoreOptions,
    ) -> Result<usize, StoreError> {
        let link = StoreLink {
            store,
            options,
            dirty: Mutex::default(),
            deleted: Mutex::default(),
            ending: Mutex::default(),
            moved: Mutex::default(),
            handed_over: AtomicBool::new(false),
            flush_lock: tokio::sync::Mutex::new(()),
            down_since: Mutex::new(None),
        };
        // The server's run as the sessions are read: a restart from now on
        // is noticed (see `StoreOptions::restart_check`).
        let incarnation = link.call(link.store.incarnation()).await?;
        let restored = self.restore(&link).await?;
        if self.inner.store.set(link).is_err() {
            tracing::warn!("a store is already attached; ignoring the second one");
            return Ok(0);
        }
        let evictions = self.inner.store.get().map(|l| l.store.evictions());
        let handle = tokio::runtime::Handle::current();
        let task = background(Arc::downgrade(&self.inner), incarnation);
        self.spawn_task(&handle, task);
        if let Some(evictions) = evictions {
            let task = follow_evictions(Arc::downgrade(&self.inner), evictions);
            self.spawn_task(&handle, task);
        }
        Ok(restored)
    }

    /// Writes every change made so far to the store (no-op without one).
    /// On failure the changes stay pending and the background task retries
    /// them. Bounded by [`StoreOptions::call_timeout`]; while the store is
    /// down it fails at once with [`StoreError::Down`].
    pub async fn flush(&self) -> Result<(), StoreError> {
        let Some(link) = self.inner.store.get() else {
            return Ok(());
        };
        link.check_up()?;
        link.write(self).await
    }

    /// Tries once more to write every pending change, even while the store
    /// is down, for at most `within` (for shutdown: the last chance).
    pub async fn flush_within(&self, within: Duration) -> Result<(), StoreError> {
        let Some(link) = self.inner.store.get() else {
            return Ok(());
        };
        match tokio::time::timeout(within, link.write(self)).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::TimedOut { after: within }),
        }
    }
}
