//! The authoritative session store of one frontend.
//!
//! - this file: [`SessionService`], the session table and the uid index,
//!   create and read;
//! - `types`: what embedding code exchanges with it ([`ConnectInfo`],
//!   [`Outbound`], [`SessionEvent`]);
//! - `entry`: one session as it is kept, its settings and limits;
//! - `bind`: bind, unbind, the single-session policy;
//! - `writes`: set, import, remove, and a backend's push;
//! - `close`: close, kick, end at a shutdown, report a session that moved;
//! - `reason`: [`EndReason`], why a session ended for good;
//! - `push`: pushes to clients, by sid, uid, or to everyone;
//! - `handle`: [`SessionOwner`], the connection's side of a session;
//! - `lifetime`: idle and absolute timeouts, and the task that expires
//!   sessions;
//! - `resume`: parking a session when its client drops, and resuming it;
//! - `tokens`: resume tokens, their check and their rotation;
//! - `persist`: dirty tracking, coalesced writes to a session store, and
//!   restoring from it after a restart.

mod bind;
mod close;
mod entry;
mod handle;
mod hooks;
mod lifetime;
mod packed;
mod persist;
mod push;
mod reason;
mod resume;
mod settings;
mod tokens;
mod types;
mod uids;
mod writes;

pub use handle::SessionOwner;
pub use reason::EndReason;
pub use resume::ResumeError;
pub use types::{ConnectInfo, Outbound, SessionEvent};

use crate::owner::{self};
use crate::{Error, SessionConfig};
use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use session_proxy_protocol::{SessionId, SessionSnapshot};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;
use tokio::sync::broadcast;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use entry::SessionEntry;

struct Inner {
    /// Settings this service was built with.
    config: SessionConfig,
    /// The sessions, keyed by id.
    /// Boxed: the table then holds a pointer per session, and its spare
    /// capacity (a hash table is up to half empty) costs pointers, not
    /// whole entries.
    sessions: DashMap<SessionId, Box<SessionEntry>>,
    /// `uid -> sids`, kept in step with `SessionEntry::uid`; it owns the
    /// lock order between the two (see `uids`).
    uids: uids::UidIndex,
    /// Bound/unbound/closed events for subscribers.
    events: broadcast::Sender<SessionEvent>,
    /// The activity clock and the expiry task's queue of checks.
    expiry: lifetime::Expiry,
    /// The close hook and the work it started.
    hooks: hooks::CloseHooks,
    /// The service's background tasks (expiry, store writes, evictions),
    /// so that [`SessionService::stop_tasks`] can end and await them.
    tasks: TaskTracker,
    /// Ends the background tasks.
    stop: tokio_util::sync::CancellationToken,
    /// Where sessions are persisted, once attached.
    store: OnceLock<persist::StoreLink>,
}

/// Called with the final state of a session as it ends for good, and why:
/// exactly once per session, never for one that moved to another frontend.
/// Work it returns runs as a task that
/// [`SessionService::hooks_done`] waits for.
pub type ClosedHook = Arc<dyn Fn(&SessionSnapshot, &EndReason) -> Option<HookWork> + Send + Sync>;

/// Work a close hook started, run as a task of the session service.
pub type HookWork = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// The sessions of one frontend: the single owner of every session it holds.
///
/// Cheap to clone (an `Arc`). Every operation is a short, synchronous map
/// operation; nothing here awaits while holding a map guard.
///
/// ```
/// use session_proxy_frontend::{ConnectInfo, SessionConfig, SessionService};
/// use bytes::Bytes;
///
/// let service = SessionService::new(SessionConfig::new("connector-1"));
/// let owner = service.create(ConnectInfo::default());
/// service.bind(owner.sid(), "alice").expect("fresh session binds");
/// service.set(owner.sid(), "room", Bytes::from_static(b"\xa4hall")).expect("session exists");
/// assert_eq!(service.get_by_uid("alice").len(), 1);
/// drop(owner); // the connection went away: the session closes
/// assert_eq!(service.count(), 0);
/// assert!(service.get_by_uid("alice").is_empty());
/// ```
#[derive(Clone)]
pub struct SessionService {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SessionService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionService")
            .field("frontend_id", &self.inner.config.frontend_id)
            .field("sessions", &self.inner.sessions.len())
            .finish()
    }
}

impl SessionService {
    /// An empty service.
    pub fn new(config: SessionConfig) -> Self {
        let (events, _) = broadcast::channel(config.event_capacity.max(1));
        SessionService {
            inner: Arc::new(Inner {
                config,
                sessions: DashMap::new(),
                uids: uids::UidIndex::default(),
                events,
                expiry: lifetime::Expiry::default(),
                hooks: hooks::CloseHooks::default(),
                tasks: TaskTracker::new(),
                stop: tokio_util::sync::CancellationToken::new(),
                store: OnceLock::new(),
            }),
        }
    }

    /// This frontend's id.
    pub fn frontend_id(&self) -> &str {
        &self.inner.config.frontend_id
    }

    /// The configuration.
    pub fn config(&self) -> &SessionConfig {
        &self.inner.config
    }

    /// Sets the hook that runs with the final state of every session that
    /// ends for good (once per service; later calls are ignored and return
    /// false). It runs on the closing thread: keep it short, and return slow
    /// work as [`HookWork`] (run as a task; without a tokio runtime it is
    /// dropped).
    pub fn on_closed(&self, hook: ClosedHook) -> bool {
        self.inner.hooks.set(hook)
    }

    /// Waits up to `within` for the work close hooks started (see
    /// [`ClosedHook`]) to finish; returns whether
    /// it all did. A drain calls it before it closes the backend links the
    /// hooks talk over.
    pub async fn hooks_done(&self, within: std::time::Duration) -> bool {
        self.inner.hooks.done(within).await
    }

    /// Ends the service's background tasks (session expiry, store writes
    /// and refreshes, evictions) and waits up to `within` for them; returns
    /// whether they all ended. The last step of a drain: sessions no longer
    /// expire and nothing more is written to the store.
    pub async fn stop_tasks(&self, within: std::time::Duration) -> bool {
        self.inner.stop.cancel();
        self.inner.tasks.close();
        tokio::time::timeout(within, self.inner.tasks.wait())
            .await
            .is_ok()
    }

    /// Runs `task` in the background until it ends or
    /// [`stop_tasks`](Self::stop_tasks) is called, on `handle`.
    fn spawn_task(
        &self,
        handle: &tokio::runtime::Handle,
        task: impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        let stop = self.inner.stop.clone();
        self.inner.tasks.spawn_on(
            async move {
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = task => {}
                }
            },
            handle,
        );
    }

    /// Follows session events (bound, unbound, parked, resumed, moved,
    /// closed) from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<SessionEvent> {
        self.inner.events.subscribe()
    }

    fn emit(&self, event: SessionEvent) {
        // No subscriber is fine: events are for whoever listens.
        let _ = self.inner.events.send(event);
    }

    /// Like [`create`](Self::create), but refuses with
    /// [`Error::LimitExceeded`] when the frontend already holds
    /// `max_sessions` sessions.
    pub fn try_create(&self, info: ConnectInfo) -> Result<SessionOwner, Error> {
        let limit = self.inner.config.max_sessions;
        if self.inner.sessions.len() >= limit {
            return Err(Error::LimitExceeded {
                what: "sessions on this frontend",
                limit,
            });
        }
        Ok(self.create(info))
    }

    /// Opens a session for a new client connection and returns its owner
    /// handle. Dropping the handle closes the session. Not limited by
    /// `max_sessions` (see [`try_create`](Self::try_create)).
    pub fn create(&self, info: ConnectInfo) -> SessionOwner {
        let (tx, rx) = owner::queue(self.inner.config.owner_queue);
        let config = &self.inner.config;
        let mut entry = Some(Box::new(SessionEntry {
            uid: None,
            settings: settings::Settings::default(),
            settings_bytes: 0,
            last_version: 0,
            info: packed::PackedInfo::pack(info),
            created_at: SystemTime::now(),
            created: Instant::now(),
            last_active: AtomicU64::new(self.now_ms()),
            idle_timeout: config.idle_timeout,
            lifetime: config.lifetime,
            parked: None,
            owner_gen: 0,
            store_epoch: 0,
            tokens: tokens::Tokens::default(),
            owner: tx,
        }));
        loop {
            let sid = SessionId::from_raw(rand::random::<u64>());
            if let Entry::Vacant(slot) = self.inner.sessions.entry(sid) {
                let entry = slot.insert(entry.take().expect("inserted once, then we return"));
                let due = self.inner.expiry.due(&entry);
                drop(entry);
                self.mark_dirty(sid);
                if let Some(at) = due {
                    self.schedule(sid, at);
                }
                return SessionOwner {
                    sid,
                    gen: 0,
                    rx: Some(rx),
                    service: self.clone(),
                };
            }
            // A 1-in-2^64 collision with a live session: draw again.
        }
    }

    /// A copy of a session's current state.
    pub fn get(&self, sid: SessionId) -> Option<SessionSnapshot> {
        let fid = self.frontend_id();
        self.inner.sessions.get(&sid).map(|e| e.snapshot(sid, fid))
    }

    /// What the connection told us when it opened the session, and when.
    pub fn info(&self, sid: SessionId) -> Option<(ConnectInfo, SystemTime)> {
        self.inner
            .sessions
            .get(&sid)
            .map(|e| (e.info.unpack(), e.created_at))
    }

    /// The ids of a uid's sessions: O(sessions of that uid).
    pub fn sids_of_uid(&self, uid: &str) -> Vec<SessionId> {
        self.inner.uids.of(uid)
    }

    /// Copies of every session bound to `uid`.
    pub fn get_by_uid(&self, uid: &str) -> Vec<SessionSnapshot> {
        // Clone the sids and drop the index guard before touching sessions.
        let sids = self.sids_of_uid(uid);
        sids.into_iter().filter_map(|sid| self.get(sid)).collect()
    }
    /// The entry of `sid`, locked for writing, or [`Error::SessionNotFound`].
    /// Drop it before anything that awaits or takes another guard.
    fn entry_mut(
        &self,
        sid: SessionId,
    ) -> Result<dashmap::mapref::one::RefMut<'_, SessionId, Box<SessionEntry>>, Error> {
        self.inner
            .sessions
            .get_mut(&sid)
            .ok_or(Error::SessionNotFound(sid))
    }

    /// How many sessions are open.
    pub fn count(&self) -> usize {
        self.inner.sessions.len()
    }

    /// How many sessions are bound to a uid, and how many are parked (a
    /// walk over every session: for a scrape, not a request path).
    pub fn bound_and_parked(&self) -> (usize, usize) {
        self.inner.sessions.iter().fold((0, 0), |(b, p), e| {
            (
                b + usize::from(e.uid.is_some()),
                p + usize::from(e.parked.is_some()),
            )
        })
    }

    /// How many uids have at least one session (the size of the uid index).
    pub fn uid_count(&self) -> usize {
        self.inner.uids.len()
    }

    /// The ids of every open session, in no particular order.
    pub fn sids(&self) -> Vec<SessionId> {
        self.inner.sessions.iter().map(|e| *e.key()).collect()
    }

    /// Calls `f` with a snapshot of every open session, one at a time. No map
    /// guard is held while `f` runs.
    pub fn for_each(&self, mut f: impl FnMut(SessionSnapshot)) {
        for sid in self.sids() {
            if let Some(snapshot) = self.get(sid) {
                f(snapshot);
            }
        }
    }
}

#[cfg(test)]
mod tests;
