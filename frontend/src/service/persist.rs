//! Writing sessions to a [`SessionStore`] and reading them back.
//!
//! Changes are tracked per session (a dirty set) and written in batches: a
//! session changed a hundred times between two flushes is written once.
//! Mutations that a backend is waiting on are made durable before they are
//! acknowledged: the RPC server flushes after each batch of calls and only
//! then answers (group commit). A restarted frontend restores its sessions
//! as parked, so clients resume with their tokens.

use super::resume::{Parked, Tokens};
use super::{SessionEntry, SessionService};
use crate::owner;
use crate::store::{Fenced, SessionStore, StoreError, StoreOptions, StoredSession};
use session_proxy_protocol::{SessionId, SessionInfo};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::Instant;

/// A service's link to its store.
pub(crate) struct StoreLink {
    pub(super) store: Arc<dyn SessionStore>,
    options: StoreOptions,
    /// Sessions changed since the last flush.
    dirty: Mutex<HashSet<SessionId>>,
    /// Sessions closed since the last flush, with the epoch they were
    /// held under.
    deleted: Mutex<HashMap<SessionId, u64>>,
    /// Sessions the store said another frontend holds now (their local
    /// copy is closed), and since when: backends that still address this
    /// frontend are told where they went. Pruned after [`MOVED_MEMORY`].
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

    /// Restarts the TTL of every live session; sessions the store lost (a
    /// server restarted empty) are marked to be written again.
    async fn refresh(&self, service: &SessionService) -> Result<(), StoreError> {
        let held: Vec<(SessionId, u64)> = service
            .inner
            .sessions
            .iter()
            .map(|e| (*e.key(), e.store_epoch))
            .collect();
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

/// How long a frontend remembers where a session it lost went.
const MOVED_MEMORY: Duration = Duration::from_secs(60);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Set insertions and swaps only: a poisoned lock still guards a whole set.
    m.lock().unwrap_or_else(|e| e.into_inner())
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

    pub(super) fn mark_deleted(&self, sid: SessionId, epoch: u64) {
        if let Some(link) = self
            .inner
            .store
            .get()
            .filter(|l| !l.handed_over.load(Ordering::Acquire))
        {
            lock(&link.dirty).remove(&sid);
            lock(&link.deleted).insert(sid, epoch);
        }
    }

    /// Closes the local copies of sessions the store says another
    /// frontend holds now (or that were ended for every holder), without
    /// deleting them there, and remembers where they went.
    fn lost(&self, fenced: &[Fenced]) {
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
            if self.remove_as(f.sid, "resumed elsewhere", true, false) {
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

    /// A session's record for the store.
    fn to_stored(&self, sid: SessionId, e: &SessionEntry) -> StoredSession {
        let now_unix = unix_ms(SystemTime::now());
        let idle_ms = self
            .now_ms()
            .saturating_sub(e.last_active.load(Ordering::Relaxed));
        let instant_to_unix = |t: Instant| {
            let now = Instant::now();
            if t >= now {
                now_unix + u64::try_from((t - now).as_millis()).unwrap_or(u64::MAX)
            } else {
                now_unix.saturating_sub(u64::try_from((now - t).as_millis()).unwrap_or(u64::MAX))
            }
        };
        let mut info = self.info_of(sid, e, now_unix.saturating_sub(idle_ms));
        if self
            .inner
            .store
            .get()
            .is_some_and(|l| l.handed_over.load(Ordering::Acquire))
        {
            info.frontend_id.clear();
        }
        StoredSession {
            info,
            settings: e.settings.to_map(),
            last_version: e.last_version,
            token: e.tokens.current,
            previous_token: e
                .tokens
                .previous
                .as_deref()
                .map(|&(h, until)| (h, instant_to_unix(until))),
            epoch: e.store_epoch,
            pushes: Vec::new(),
        }
    }

    pub(super) fn info_of(
        &self,
        sid: SessionId,
        e: &SessionEntry,
        last_active_unix_ms: u64,
    ) -> SessionInfo {
        SessionInfo {
            sid,
            frontend_id: self.frontend_id().to_string(),
            uid: e.uid.clone(),
            created_unix_ms: unix_ms(e.created_at),
            last_active_unix_ms,
            remote_addr: e.info.remote_addr().map(|a| a.to_string()),
            metadata: e
                .info
                .metadata()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
            parked: e.parked.is_some(),
        }
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
            moved: Mutex::default(),
            handed_over: AtomicBool::new(false),
            flush_lock: tokio::sync::Mutex::new(()),
            down_since: Mutex::new(None),
        };
        let restored = self.restore(&link).await?;
        if self.inner.store.set(link).is_err() {
            tracing::warn!("a store is already attached; ignoring the second one");
            return Ok(0);
        }
        let evictions = self.inner.store.get().map(|l| l.store.evictions());
        tokio::spawn(background(Arc::downgrade(&self.inner)));
        if let Some(evictions) = evictions {
            tokio::spawn(follow_evictions(Arc::downgrade(&self.inner), evictions));
        }
        Ok(restored)
    }

    async fn restore(&self, link: &StoreLink) -> Result<usize, StoreError> {
        let mut restored = 0;
        for sid in link.call(link.store.list()).await? {
            let Some(record) = link.call(link.store.get(sid)).await? else {
                continue;
            };
            if record.info.frontend_id != self.frontend_id()
                || self.inner.sessions.contains_key(&sid)
            {
                continue;
            }
            self.insert_restored(record, link.options.restore_grace);
            restored += 1;
        }
        if restored > 0 {
            tracing::info!(restored, "sessions restored from the store");
        }
        Ok(restored)
    }

    pub(super) fn insert_restored(&self, record: StoredSession, grace: Duration) {
        let sid = record.info.sid;
        let now_unix = unix_ms(SystemTime::now());
        let (tx, rx) = owner::queue(self.inner.config.owner_queue);
        tx.set_parked(true);
        for push in record.pushes {
            // Fits: the frontend that handed it over kept at most as many.
            let _ = tx.try_send(crate::Outbound::Push {
                route: push.route,
                body: push.body,
            });
        }
        let until = Instant::now() + grace;
        let previous = record.previous_token.and_then(|(h, until_unix)| {
            (until_unix > now_unix).then(|| {
                Box::new((
                    h,
                    Instant::now() + Duration::from_millis(until_unix - now_unix),
                ))
            })
        });
        let mut info = crate::ConnectInfo::default();
        info.remote_addr = record
            .info
            .remote_addr
            .as_deref()
            .and_then(|a| a.parse().ok());
        info.metadata = record.info.metadata.into_iter().collect();
        let entry = SessionEntry {
            uid: record.info.uid.clone(),
            settings_bytes: record
                .settings
                .iter()
                .map(|(k, s)| k.len() + s.value.len())
                .sum(),
            settings: record.settings.into(),
            last_version: record.last_version,
            info: super::packed::PackedInfo::pack(info),
            created_at: UNIX_EPOCH + Duration::from_millis(record.info.created_unix_ms),
            created: Instant::now(),
            last_active: AtomicU64::new(self.now_ms()),
            idle_timeout: self.inner.config.idle_timeout,
            lifetime: self.inner.config.lifetime,
            parked: Some(Parked { until, rx }),
            owner_gen: 0,
            store_epoch: record.epoch,
            tokens: Tokens {
                current: record.token,
                previous,
            },
            owner: tx,
        };
        self.inner.sessions.insert(sid, Box::new(entry));
        if let Some(uid) = record.info.uid {
            self.inner.uids.entry(uid).or_default().push(sid);
        }
        self.schedule(sid, until);
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

    /// Every session of `uid` on every frontend sharing the store (this
    /// frontend's own, from memory, when there is no store).
    pub async fn user_sessions(&self, uid: &str) -> Result<Vec<SessionInfo>, StoreError> {
        let now_unix = unix_ms(SystemTime::now());
        let mut local: Vec<SessionInfo> = self
            .sids_of_uid(uid)
            .into_iter()
            .filter_map(|sid| {
                self.inner.sessions.get(&sid).map(|e| {
                    let idle = self
                        .now_ms()
                        .saturating_sub(e.last_active.load(Ordering::Relaxed));
                    self.info_of(sid, &e, now_unix.saturating_sub(idle))
                })
            })
            .collect();
        if let Some(link) = self.inner.store.get() {
            link.check_up()?;
            let known: HashSet<SessionId> = local.iter().map(|i| i.sid).collect();
            for record in link.call(link.store.by_uid(uid)).await? {
                if !known.contains(&record.info.sid) {
                    local.push(record.info);
                }
            }
        }
        local.sort_by_key(|i| i.sid);
        Ok(local)
    }

    /// Ends every session of `uid`: kicks this frontend's connected ones,
    /// closes its parked ones, and deletes every session of the uid from
    /// the shared store (parked sessions of other frontends included).
    /// Returns the sessions that ended.
    pub async fn revoke_uid(&self, uid: &str, reason: &str) -> Result<Vec<SessionId>, StoreError> {
        let mut ended: Vec<SessionId> = self
            .sids_of_uid(uid)
            .into_iter()
            .filter(|sid| self.kick_by_sid(*sid, reason))
            .collect();
        if let Some(link) = self.inner.store.get() {
            self.flush().await?;
            let stored: Vec<SessionId> = link
                .call(link.store.by_uid(uid))
                .await?
                .into_iter()
                .map(|s| s.info.sid)
                .collect();
            link.call(link.store.delete(stored.clone())).await?;
            ended.extend(stored);
        }
        ended.sort();
        ended.dedup();
        Ok(ended)
    }
}

/// Closes the sessions another frontend's admission ended (the uid's
/// session limit), as the store announces them, until the service or the
/// store is dropped. One this frontend does not hold is none of its
/// business; one it misses is fenced at its next write.
async fn follow_evictions(
    inner: Weak<super::Inner>,
    mut evictions: tokio::sync::broadcast::Receiver<crate::store::Evicted>,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let evicted = match evictions.recv().await {
            Ok(evicted) => evicted,
            Err(RecvError::Lagged(missed)) => {
                tracing::warn!(
                    missed,
                    "missed session evictions; their writes will be fenced"
                );
                continue;
            }
            Err(RecvError::Closed) => return,
        };
        let Some(inner) = inner.upgrade() else { return };
        let service = SessionService { inner };
        if service.remove_as(evicted.sid, &evicted.reason, true, false) {
            tracing::info!(
                sid = %evicted.sid.redacted(),
                reason = %evicted.reason,
                "session ended by another frontend's login (session limit)"
            );
        }
    }
}

/// Flushes coalesced changes and keeps live sessions alive in the store,
/// until the service is dropped. While the store is down it retries with a
/// doubling pause (up to [`StoreOptions::retry_max`]); once the store
/// answers it writes what waited and refreshes at once, so sessions a
/// restarted-empty server lost are written again.
async fn background(inner: Weak<super::Inner>) {
    let Some((flush_every, ttl, retry_max)) = inner.upgrade().and_then(|i| {
        i.store
            .get()
            .map(|l| (l.options.flush_interval, l.options.ttl, l.options.retry_max))
    }) else {
        return;
    };
    let refresh_every = (ttl / 3).max(Duration::from_millis(10));
    let mut next_refresh = Instant::now() + refresh_every;
    let first_retry = Duration::from_millis(50);
    let mut retry = first_retry;
    loop {
        let down = inner
            .upgrade()
            .and_then(|i| i.store.get().map(StoreLink::is_down))
            .unwrap_or(false);
        let pause = if down { retry } else { flush_every };
        tokio::time::sleep(pause.max(Duration::from_millis(1))).await;
        let Some(inner) = inner.upgrade() else { return };
        let service = SessionService { inner };
        let Some(link) = service.inner.store.get() else {
            return;
        };
        let was_down = link.is_down();
        if let Err(err) = link.write(&service).await {
            tracing::debug!(cause = %err, "writing sessions to the store failed; will retry");
            retry = (retry * 2).min(retry_max);
            continue;
        }
        if was_down {
            if link.is_down() {
                // Nothing was waiting to be written, so nothing asked the
                // store: the refresh is the probe.
                if let Err(err) = link.refresh(&service).await {
                    tracing::debug!(cause = %err, "the session store is still down");
                    retry = (retry * 2).min(retry_max);
                    continue;
                }
            }
            // Back after an outage: it may have come back empty, so
            // refresh (which finds what it lost) at once.
            retry = first_retry;
            next_refresh = Instant::now();
        }
        if Instant::now() >= next_refresh {
            next_refresh = Instant::now() + refresh_every;
            if let Err(err) = link.refresh(&service).await {
                tracing::debug!(cause = %err, "refreshing session TTLs failed; will retry");
            }
        }
    }
}
