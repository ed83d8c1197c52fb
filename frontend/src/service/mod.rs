//! The authoritative session store of one frontend.
//!
//! - this file: the session table, the uid index, settings, kicks, pushes;
//! - `lifetime`: idle and absolute timeouts, and the task that expires
//!   sessions;
//! - `resume`: parking a session when its client drops, resume tokens
//!   and their rotation;
//! - `persist`: dirty tracking, coalesced writes to a session store, and
//!   restoring from it after a restart.

mod lifetime;
mod packed;
mod persist;
mod resume;
mod settings;

pub use resume::ResumeError;

use crate::delivery::{Receipt, Ticket};
use crate::owner::{self, OwnerRx, OwnerTx, SendError};
use crate::{Error, SessionConfig, SingleSessionPolicy};
use bytes::Bytes;
use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use session_proxy_protocol::{KeyWrite, Precondition, SessionId, SessionSnapshot, Setting};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;

/// What a client connection tells the frontend when it opens a session.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectInfo {
    /// The client's address, when the transport has one. Default: `None`.
    pub remote_addr: Option<SocketAddr>,
    /// Free-form metadata (client type, version, device …). Default: empty.
    pub metadata: HashMap<String, String>,
}

impl ConnectInfo {
    /// Info with a client address and no metadata.
    pub fn from_addr(addr: SocketAddr) -> Self {
        ConnectInfo {
            remote_addr: Some(addr),
            metadata: HashMap::new(),
        }
    }
}

/// Something the frontend wants the connection that owns a session to do.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outbound {
    /// Send a kick with this reason to the client, then close. The session
    /// is already closed when this arrives.
    Kick {
        /// Why, as the client will read it.
        reason: String,
    },
    /// Send a server push to the client.
    Push {
        /// The push route, e.g. `onChat`.
        route: String,
        /// The encoded body.
        body: Bytes,
    },
}

/// A change to the session table that embedding code may want to follow.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SessionEvent {
    /// A session was bound to a uid.
    Bound {
        /// The session.
        sid: SessionId,
        /// The uid.
        uid: String,
    },
    /// A session was unbound from a uid.
    Unbound {
        /// The session.
        sid: SessionId,
        /// The uid it was bound to.
        uid: String,
    },
    /// A session's client dropped; the session waits for a resume.
    Parked {
        /// The session.
        sid: SessionId,
    },
    /// A new connection took a session over with its resume token.
    Resumed {
        /// The session.
        sid: SessionId,
    },
    /// A session was closed and removed.
    Closed {
        /// The session.
        sid: SessionId,
        /// The uid it was bound to, if any.
        uid: Option<String>,
        /// Why: `"disconnected"`, `"replaced"`, a kick reason, …
        reason: String,
    },
}

/// One session as the frontend keeps it.
struct SessionEntry {
    /// The bound user, if any; mirrored in the uid index.
    uid: Option<String>,
    /// Settings: opaque bytes with a version each.
    settings: settings::Settings,
    /// Keys plus values of `settings`, in bytes, kept in step by `write` and
    /// `remove_setting` (the limit check must not sum the map per push).
    settings_bytes: usize,
    /// The last version handed out in this session; versions are never reused,
    /// so a removed and re-added key never repeats an old version.
    last_version: u64,
    /// Where the client came from, for embedding code and operators.
    info: packed::PackedInfo,
    /// When the session was created (wall clock, for people).
    created_at: SystemTime,
    /// When the session was created (monotonic, for the lifetime).
    created: Instant,
    /// Client activity, in ms since the service's epoch; an atomic so that
    /// touching a session needs only a read guard.
    last_active: AtomicU64,
    /// This session's idle timeout (`None`: never idles out).
    idle_timeout: Option<Duration>,
    /// This session's absolute lifetime (`None`: unlimited).
    lifetime: Option<Duration>,
    /// Set while no connection owns the session.
    parked: Option<resume::Parked>,
    /// Which owner handle is current; an older handle (a connection that was
    /// taken over) can no longer close or park the session.
    owner_gen: u64,
    /// Hashes of the resume tokens.
    tokens: resume::Tokens,
    /// The queue to the connection that owns this session; closed when the
    /// entry is removed, which tells the connection the session is over.
    owner: OwnerTx,
}

impl SessionEntry {
    fn snapshot(&self, sid: SessionId, frontend_id: &str) -> SessionSnapshot {
        SessionSnapshot {
            sid,
            frontend_id: frontend_id.to_string(),
            uid: self.uid.clone(),
            settings: self.settings.to_map(),
        }
    }

    /// Checks that applying `changes` (key, new value length or `None` for a
    /// removal, in order) keeps the settings within the configured limits.
    fn check_limits<'a>(
        &self,
        config: &SessionConfig,
        changes: impl IntoIterator<Item = (&'a str, Option<usize>)>,
    ) -> Result<(), Error> {
        let mut count = self.settings.len();
        let mut bytes = self.settings_bytes;
        // Keys this batch already changed (pushes name a few keys: a short
        // list beats a hash map, and a one-key push allocates nothing).
        let mut touched: Vec<(&str, Option<usize>)> = Vec::new();
        for (key, new_len) in changes {
            let old = match touched.iter().rev().find(|(k, _)| *k == key) {
                Some((_, v)) => *v,
                None => self.settings.get(key).map(|s| key.len() + s.value.len()),
            };
            let new = new_len.map(|l| key.len() + l);
            match (old, new) {
                (None, Some(n)) => {
                    count += 1;
                    bytes += n;
                }
                (Some(o), Some(n)) => bytes = bytes - o + n,
                (Some(o), None) => {
                    count -= 1;
                    bytes -= o;
                }
                (None, None) => {}
            }
            touched.push((key, new));
        }
        if count > config.max_settings {
            return Err(Error::LimitExceeded {
                what: "settings per session",
                limit: config.max_settings,
            });
        }
        if bytes > config.max_settings_bytes {
            return Err(Error::LimitExceeded {
                what: "bytes of settings per session",
                limit: config.max_settings_bytes,
            });
        }
        Ok(())
    }

    fn write(&mut self, key: String, value: Bytes) -> u64 {
        self.last_version += 1;
        let version = self.last_version;
        let added = key.len() + value.len();
        let key_len = key.len();
        if let Some(old) = self.settings.insert(key, Setting { value, version }) {
            self.settings_bytes -= key_len + old.value.len();
        }
        self.settings_bytes += added;
        version
    }

    fn remove_setting(&mut self, key: &str) -> bool {
        match self.settings.remove(key) {
            Some(old) => {
                self.settings_bytes -= key.len() + old.value.len();
                true
            }
            None => false,
        }
    }
}

struct Inner {
    /// Settings this service was built with.
    config: SessionConfig,
    /// The sessions, keyed by id.
    /// Boxed: the table then holds a pointer per session, and its spare
    /// capacity (a hash table is up to half empty) costs pointers, not
    /// whole entries.
    sessions: DashMap<SessionId, Box<SessionEntry>>,
    /// `uid -> sids`, kept in step with `SessionEntry::uid`. Lock order: a
    /// path that holds a `sessions` guard may take a `uids` guard, never the
    /// other way round.
    uids: DashMap<String, Vec<SessionId>>,
    /// Bound/unbound/closed events for subscribers.
    events: broadcast::Sender<SessionEvent>,
    /// The zero of `SessionEntry::last_active`.
    epoch: Instant,
    /// Deadlines for the expiry task, started with the first deadline.
    timers: OnceLock<mpsc::UnboundedSender<(SessionId, Instant)>>,
    /// Runs with the final state of every session that closes.
    on_closed: OnceLock<ClosedHook>,
    /// Where sessions are persisted, once attached.
    store: OnceLock<persist::StoreLink>,
}

/// Called with the final state of a session as it closes, and the reason.
pub type ClosedHook = Arc<dyn Fn(&SessionSnapshot, &str) + Send + Sync>;

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
                uids: DashMap::new(),
                events,
                epoch: Instant::now(),
                timers: OnceLock::new(),
                on_closed: OnceLock::new(),
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
    /// closes (once per service; later calls are ignored and return false).
    /// It runs on the closing thread: keep it short, spawn slow work.
    pub fn on_closed(&self, hook: ClosedHook) -> bool {
        self.inner.on_closed.set(hook).is_ok()
    }

    /// Follows bound, unbound and closed events from now on.
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
            tokens: resume::Tokens::default(),
            owner: tx,
        }));
        loop {
            let sid = SessionId::from_raw(rand::random::<u64>());
            if let Entry::Vacant(slot) = self.inner.sessions.entry(sid) {
                let entry = slot.insert(entry.take().expect("inserted once, then we return"));
                let due = lifetime::due(&entry, self.inner.epoch);
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
        self.inner
            .uids
            .get(uid)
            .map(|sids| sids.clone())
            .unwrap_or_default()
    }

    /// Copies of every session bound to `uid`.
    pub fn get_by_uid(&self, uid: &str) -> Vec<SessionSnapshot> {
        // Clone the sids and drop the index guard before touching sessions.
        let sids = self.sids_of_uid(uid);
        sids.into_iter().filter_map(|sid| self.get(sid)).collect()
    }

    /// Binds a session to a uid. Binding to the uid it already has is a no-op.
    pub fn bind(&self, sid: SessionId, uid: &str) -> Result<(), Error> {
        let replaced = {
            let mut entry = self
                .inner
                .sessions
                .get_mut(&sid)
                .ok_or(Error::SessionNotFound(sid))?;
            match &entry.uid {
                Some(current) if current == uid => return Ok(()),
                Some(_) => return Err(Error::AlreadyBound { sid }),
                None => {}
            }
            // Lock order: sessions guard first, then the uid index.
            let mut sids = self.inner.uids.entry(uid.to_string()).or_default();
            let replaced = match self.inner.config.single_session {
                SingleSessionPolicy::RejectNew if !sids.is_empty() => {
                    return Err(Error::SessionLimit);
                }
                SingleSessionPolicy::KickOld => std::mem::take(&mut *sids),
                _ => Vec::new(),
            };
            sids.push(sid);
            entry.uid = Some(uid.to_string());
            replaced
        };
        self.mark_dirty(sid);
        self.emit(SessionEvent::Bound {
            sid,
            uid: uid.to_string(),
        });
        for old in replaced {
            self.kick_by_sid(old, "replaced");
        }
        Ok(())
    }

    /// Unbinds a session from `uid`, which must be the uid it is bound to.
    pub fn unbind(&self, sid: SessionId, uid: &str) -> Result<(), Error> {
        {
            let mut entry = self
                .inner
                .sessions
                .get_mut(&sid)
                .ok_or(Error::SessionNotFound(sid))?;
            if entry.uid.as_deref() != Some(uid) {
                return Err(Error::UidMismatch { sid });
            }
            entry.uid = None;
            self.unindex(uid, sid);
        }
        self.mark_dirty(sid);
        self.emit(SessionEvent::Unbound {
            sid,
            uid: uid.to_string(),
        });
        Ok(())
    }

    /// Removes `sid` from the uid index, and the uid when it has no session left.
    fn unindex(&self, uid: &str, sid: SessionId) {
        if let Entry::Occupied(mut sids) = self.inner.uids.entry(uid.to_string()) {
            sids.get_mut().retain(|s| *s != sid);
            if sids.get().is_empty() {
                sids.remove();
            }
        }
    }

    /// Sets one key unconditionally; returns its new version.
    pub fn set(&self, sid: SessionId, key: &str, value: Bytes) -> Result<u64, Error> {
        let mut entry = self
            .inner
            .sessions
            .get_mut(&sid)
            .ok_or(Error::SessionNotFound(sid))?;
        entry.check_limits(&self.inner.config, [(key, Some(value.len()))])?;
        let version = entry.write(key.to_string(), value);
        drop(entry);
        self.mark_dirty(sid);
        Ok(version)
    }

    /// Sets several keys unconditionally; returns their new versions in order.
    pub fn import(
        &self,
        sid: SessionId,
        values: impl IntoIterator<Item = (String, Bytes)>,
    ) -> Result<Vec<u64>, Error> {
        let mut entry = self
            .inner
            .sessions
            .get_mut(&sid)
            .ok_or(Error::SessionNotFound(sid))?;
        let values: Vec<(String, Bytes)> = values.into_iter().collect();
        entry.check_limits(
            &self.inner.config,
            values.iter().map(|(k, v)| (k.as_str(), Some(v.len()))),
        )?;
        let versions = values.into_iter().map(|(k, v)| entry.write(k, v)).collect();
        drop(entry);
        self.mark_dirty(sid);
        Ok(versions)
    }

    /// Removes one key; returns whether it existed.
    pub fn remove_key(&self, sid: SessionId, key: &str) -> Result<bool, Error> {
        let mut entry = self
            .inner
            .sessions
            .get_mut(&sid)
            .ok_or(Error::SessionNotFound(sid))?;
        let existed = entry.remove_setting(key);
        drop(entry);
        self.mark_dirty(sid);
        Ok(existed)
    }

    /// Applies a backend's push: all writes or none.
    ///
    /// Every precondition is checked against the state before the push; if
    /// one fails, nothing changes and [`Error::Conflict`] names the key. Keys
    /// the push does not name are never touched. Returns the new version of
    /// each write (`None` for a removal).
    pub fn apply_push(
        &self,
        sid: SessionId,
        writes: Vec<KeyWrite>,
    ) -> Result<Vec<Option<u64>>, Error> {
        let mut entry = self
            .inner
            .sessions
            .get_mut(&sid)
            .ok_or(Error::SessionNotFound(sid))?;
        for w in &writes {
            let current = entry.settings.get(&w.key).map(|s| s.version);
            let ok = match w.expect {
                Precondition::Any => true,
                Precondition::Absent => current.is_none(),
                Precondition::Version(v) => current == Some(v),
            };
            if !ok {
                return Err(Error::Conflict {
                    key: w.key.clone(),
                    expected: describe_expect(w.expect),
                    found: current.map_or_else(|| "absent".into(), |v| format!("version {v}")),
                });
            }
        }
        entry.check_limits(
            &self.inner.config,
            writes
                .iter()
                .map(|w| (w.key.as_str(), w.value.as_ref().map(Bytes::len))),
        )?;
        let versions = writes
            .into_iter()
            .map(|w| match w.value {
                Some(value) => Some(entry.write(w.key, value)),
                None => {
                    entry.remove_setting(&w.key);
                    None
                }
            })
            .collect();
        drop(entry);
        self.mark_dirty(sid);
        Ok(versions)
    }

    /// Closes a session: removes it, unindexes its uid, fires
    /// [`SessionEvent::Closed`]. Returns whether it existed.
    pub fn close(&self, sid: SessionId, reason: &str) -> bool {
        self.remove(sid, reason, false)
    }

    /// Closes a session if `gen` is still its current owner (see
    /// [`SessionOwner::generation`]).
    pub fn close_if_owner(&self, sid: SessionId, gen: u64, reason: &str) -> bool {
        let current = self.inner.sessions.get(&sid).map(|e| e.owner_gen);
        current == Some(gen) && self.close(sid, reason)
    }

    /// Closes a session and sends its client a kick with `reason`. Returns
    /// whether it existed.
    pub fn kick_by_sid(&self, sid: SessionId, reason: &str) -> bool {
        self.remove(sid, reason, true)
    }

    /// Kicks every session of a uid; returns how many there were.
    pub fn kick_by_uid(&self, uid: &str, reason: &str) -> usize {
        self.sids_of_uid(uid)
            .into_iter()
            .filter(|sid| self.kick_by_sid(*sid, reason))
            .count()
    }

    fn remove(&self, sid: SessionId, reason: &str, kick: bool) -> bool {
        let Some((_, entry)) = self.inner.sessions.remove(&sid) else {
            return false;
        };
        if let Some(uid) = &entry.uid {
            self.unindex(uid, sid);
        }
        self.mark_deleted(sid);
        if kick {
            // Best effort: if the queue is full, closing it below still
            // ends the connection's session.
            let _ = entry.owner.try_send(Outbound::Kick {
                reason: reason.to_string(),
            });
        }
        entry.owner.close();
        tracing::debug!(sid = %sid.redacted(), reason, "session closed");
        let hook = self.inner.on_closed.get().cloned();
        if let Some(hook) = hook {
            hook(&entry.snapshot(sid, self.frontend_id()), reason);
        }
        self.emit(SessionEvent::Closed {
            sid,
            uid: entry.uid,
            reason: reason.to_string(),
        });
        true
    }

    /// Queues a server push for a session's client.
    ///
    /// A client whose queue is full reads too slowly to keep up: its session
    /// is closed with reason `"slow client"` (its connection then closes)
    /// and [`Error::OwnerQueueFull`] is returned. Nothing is buffered
    /// without bound.
    pub fn push_to_client(&self, sid: SessionId, route: &str, body: Bytes) -> Result<(), Error> {
        self.push_to_client_tracked(sid, route, body, None)
    }

    /// [`push_to_client`](Self::push_to_client) counted on `receipt`.
    pub(crate) fn push_to_client_tracked(
        &self,
        sid: SessionId,
        route: &str,
        body: Bytes,
        receipt: Option<&Arc<Receipt>>,
    ) -> Result<(), Error> {
        let owner = self
            .inner
            .sessions
            .get(&sid)
            .map(|e| e.owner.clone())
            .ok_or(Error::SessionNotFound(sid))?;
        self.deliver(sid, &owner, route, body, receipt)
    }

    /// Queues a push; with a `receipt`, the connection holds a ticket on it
    /// until the push is written. A parked session's push waits for its
    /// client to come back, so it takes no ticket (nobody waits that long).
    fn deliver(
        &self,
        sid: SessionId,
        owner: &OwnerTx,
        route: &str,
        body: Bytes,
        receipt: Option<&Arc<Receipt>>,
    ) -> Result<(), Error> {
        let push = Outbound::Push {
            route: route.to_string(),
            body,
        };
        let ticket = receipt.filter(|_| !owner.is_parked()).map(Receipt::ticket);
        match owner.try_send_ticketed(push, ticket) {
            Ok(()) => Ok(()),
            Err(SendError::Full) if owner.is_parked() => {
                // Its client is away: keep the session, drop this push.
                Err(Error::OwnerQueueFull(sid))
            }
            Err(SendError::Full) => {
                tracing::warn!(sid = %sid.redacted(), "client too slow for its pushes; closing");
                self.kick_by_sid(sid, "slow client");
                Err(Error::OwnerQueueFull(sid))
            }
            Err(SendError::Closed) => Err(Error::OwnerGone(sid)),
        }
    }

    /// Pushes to every session of each uid, once per session. Returns the
    /// uids no session of which was reached.
    pub fn push_to_uids(&self, uids: &[String], route: &str, body: &Bytes) -> Vec<String> {
        self.push_to_uids_tracked(uids, route, body, None)
    }

    /// [`push_to_uids`](Self::push_to_uids) counted on `receipt`.
    pub(crate) fn push_to_uids_tracked(
        &self,
        uids: &[String],
        route: &str,
        body: &Bytes,
        receipt: Option<&Arc<Receipt>>,
    ) -> Vec<String> {
        uids.iter()
            .filter(|uid| {
                let reached = self
                    .sids_of_uid(uid)
                    .into_iter()
                    .filter(|sid| {
                        self.push_to_client_tracked(*sid, route, body.clone(), receipt)
                            .is_ok()
                    })
                    .count();
                reached == 0
            })
            .cloned()
            .collect()
    }

    /// Pushes to every session (or every bound session) once. Returns how
    /// many sessions it reached.
    pub fn broadcast(&self, route: &str, body: &Bytes, bound_only: bool) -> usize {
        self.broadcast_tracked(route, body, bound_only, None)
    }

    /// [`broadcast`](Self::broadcast) counted on `receipt`.
    pub(crate) fn broadcast_tracked(
        &self,
        route: &str,
        body: &Bytes,
        bound_only: bool,
        receipt: Option<&Arc<Receipt>>,
    ) -> usize {
        // Clone the senders out, so no shard guard is held while delivering
        // (a full queue closes its session, which needs a write guard).
        let targets: Vec<(SessionId, OwnerTx)> = self
            .inner
            .sessions
            .iter()
            .filter(|e| !bound_only || e.uid.is_some())
            .map(|e| (*e.key(), e.owner.clone()))
            .collect();
        targets
            .into_iter()
            .filter(|(sid, owner)| {
                self.deliver(*sid, owner, route, body.clone(), receipt)
                    .is_ok()
            })
            .count()
    }

    /// How many sessions are open.
    pub fn count(&self) -> usize {
        self.inner.sessions.len()
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

fn describe_expect(expect: Precondition) -> String {
    match expect {
        Precondition::Any => "anything".into(),
        Precondition::Absent => "absent".into(),
        Precondition::Version(v) => format!("version {v}"),
    }
}

/// The connection's side of a session: its id and the queue of kicks and
/// pushes for its client.
///
/// Dropping the owner closes the session with reason `"disconnected"` (if it
/// is still open), so a connection task that ends for any reason cannot leak
/// its session.
#[derive(Debug)]
pub struct SessionOwner {
    /// The session this handle owns.
    sid: SessionId,
    /// Which owner of the session this is (see `SessionEntry::owner_gen`).
    gen: u64,
    /// Kicks and pushes for the client, in order; `None` once parked.
    rx: Option<OwnerRx>,
    /// For closing the session on drop.
    service: SessionService,
}

impl SessionOwner {
    /// The session id.
    pub fn sid(&self) -> SessionId {
        self.sid
    }

    /// Which owner of the session this handle is: a resume makes a new one,
    /// and an older handle can then neither close nor park the session.
    pub fn generation(&self) -> u64 {
        self.gen
    }

    /// The next kick or push for the client. `None` once the session is
    /// closed (by a kick, a replacement, or [`SessionService::close`]) and
    /// everything queued before has been read.
    pub async fn recv(&mut self) -> Option<Outbound> {
        match self.rx.as_mut() {
            Some(rx) => rx.recv().await,
            None => None,
        }
    }

    /// [`recv`](Self::recv) as a poll: for connection code written as a
    /// hand-made future rather than an `async fn`.
    pub fn poll_recv(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Outbound>> {
        match self.rx.as_mut() {
            Some(rx) => rx.poll_recv(cx),
            None => std::task::Poll::Ready(None),
        }
    }

    /// [`poll_recv`](Self::poll_recv) with the delivery ticket of a push
    /// whose sender waits for it to be written: the connection drops the
    /// ticket once the push is written.
    pub(crate) fn poll_recv_ticketed(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<(Outbound, Option<Ticket>)>> {
        match self.rx.as_mut() {
            Some(rx) => rx.poll_recv_ticketed(cx),
            None => std::task::Poll::Ready(None),
        }
    }

    /// [`try_recv`](Self::try_recv) with the delivery ticket (see
    /// [`poll_recv_ticketed`](Self::poll_recv_ticketed)).
    #[allow(clippy::result_unit_err)]
    pub(crate) fn try_recv_ticketed(&mut self) -> Result<Option<(Outbound, Option<Ticket>)>, ()> {
        match self.rx.as_mut() {
            Some(rx) => rx.try_recv_ticketed(),
            None => Err(()),
        }
    }

    /// Like [`recv`](Self::recv) but without waiting: `Ok(None)` when nothing
    /// is queued yet, `Err(())` once the session is over.
    #[allow(clippy::result_unit_err)]
    pub fn try_recv(&mut self) -> Result<Option<Outbound>, ()> {
        match self.rx.as_mut() {
            Some(rx) => rx.try_recv(),
            None => Err(()),
        }
    }
}

impl Drop for SessionOwner {
    fn drop(&mut self) {
        if self.rx.is_some() {
            self.service
                .close_if_owner(self.sid, self.gen, "disconnected");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(policy: SingleSessionPolicy) -> SessionService {
        let mut config = SessionConfig::new("f1");
        config.single_session = policy;
        SessionService::new(config)
    }

    fn bytes(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn bind_unbind_and_index() {
        let s = service(SingleSessionPolicy::Off);
        let a = s.create(ConnectInfo::default());
        let b = s.create(ConnectInfo::default());
        s.bind(a.sid(), "u").expect("bind a");
        s.bind(b.sid(), "u").expect("bind b");
        s.bind(a.sid(), "u")
            .expect("rebinding the same uid is a no-op");
        assert_eq!(s.sids_of_uid("u").len(), 2);
        assert!(matches!(
            s.bind(a.sid(), "v"),
            Err(Error::AlreadyBound { .. })
        ));
        assert!(matches!(
            s.unbind(a.sid(), "v"),
            Err(Error::UidMismatch { .. })
        ));
        s.unbind(a.sid(), "u").expect("unbind");
        assert_eq!(s.sids_of_uid("u"), vec![b.sid()]);
        drop(b);
        assert_eq!(s.uid_count(), 0);
    }

    #[test]
    fn the_settings_byte_count_stays_in_step() {
        let s = service(SingleSessionPolicy::Off);
        let a = s.create(ConnectInfo::default());
        let sid = a.sid();
        let check = || {
            let e = s.inner.sessions.get(&sid).expect("open");
            let sum: usize = e
                .settings
                .iter()
                .map(|(k, v)| k.len() + v.value.len())
                .sum();
            assert_eq!(e.settings_bytes, sum);
        };
        s.set(sid, "a", bytes("12345")).expect("set");
        check();
        s.set(sid, "a", bytes("1")).expect("replace");
        check();
        s.import(
            sid,
            [
                ("b".to_string(), bytes("xy")),
                ("a".to_string(), bytes("zzz")),
            ],
        )
        .expect("import");
        check();
        let writes = vec![
            KeyWrite {
                key: "b".into(),
                value: None,
                expect: Precondition::Any,
            },
            KeyWrite {
                key: "c".into(),
                value: Some(bytes("cc")),
                expect: Precondition::Any,
            },
            KeyWrite {
                key: "c".into(),
                value: Some(bytes("c")),
                expect: Precondition::Any,
            },
        ];
        s.apply_push(sid, writes).expect("push");
        check();
        assert!(s.remove_key(sid, "a").expect("open"));
        check();
    }

    #[test]
    fn versions_are_never_reused() {
        let s = service(SingleSessionPolicy::Off);
        let a = s.create(ConnectInfo::default());
        let v1 = s.set(a.sid(), "k", bytes("1")).expect("set");
        assert!(s.remove_key(a.sid(), "k").expect("remove"));
        let v2 = s.set(a.sid(), "k", bytes("2")).expect("set");
        assert!(v2 > v1);
    }

    #[test]
    fn push_is_all_or_nothing() {
        let s = service(SingleSessionPolicy::Off);
        let a = s.create(ConnectInfo::default());
        let v = s.set(a.sid(), "k", bytes("1")).expect("set");
        let err = s
            .apply_push(
                a.sid(),
                vec![
                    KeyWrite {
                        key: "other".into(),
                        value: Some(bytes("x")),
                        expect: Precondition::Any,
                    },
                    KeyWrite {
                        key: "k".into(),
                        value: Some(bytes("2")),
                        expect: Precondition::Version(v + 1),
                    },
                ],
            )
            .expect_err("stale version");
        assert!(matches!(err, Error::Conflict { ref key, .. } if key == "k"));
        let snap = s.get(a.sid()).expect("open");
        assert!(!snap.settings.contains_key("other"), "nothing applied");
        assert_eq!(snap.settings["k"].value, bytes("1"));
    }

    #[test]
    fn kick_old_policy_replaces() {
        let s = service(SingleSessionPolicy::KickOld);
        let mut a = s.create(ConnectInfo::default());
        let b = s.create(ConnectInfo::default());
        s.bind(a.sid(), "u").expect("bind a");
        s.bind(b.sid(), "u").expect("bind b replaces a");
        assert_eq!(
            a.try_recv(),
            Ok(Some(Outbound::Kick {
                reason: "replaced".into()
            }))
        );
        assert_eq!(a.try_recv(), Err(()));
        assert_eq!(s.sids_of_uid("u"), vec![b.sid()]);
        assert!(s.get(a.sid()).is_none());
    }

    #[test]
    fn reject_new_policy_refuses() {
        let s = service(SingleSessionPolicy::RejectNew);
        let a = s.create(ConnectInfo::default());
        let b = s.create(ConnectInfo::default());
        s.bind(a.sid(), "u").expect("bind a");
        assert!(matches!(s.bind(b.sid(), "u"), Err(Error::SessionLimit)));
        assert_eq!(s.get(b.sid()).expect("b stays open").uid, None);
        assert_eq!(s.sids_of_uid("u"), vec![a.sid()]);
    }

    #[test]
    fn events_follow_the_lifecycle() {
        let s = service(SingleSessionPolicy::Off);
        let mut events = s.subscribe();
        let a = s.create(ConnectInfo::default());
        let sid = a.sid();
        s.bind(sid, "u").expect("bind");
        s.unbind(sid, "u").expect("unbind");
        s.bind(sid, "w").expect("bind");
        drop(a);
        let got: Vec<_> = std::iter::from_fn(|| events.try_recv().ok()).collect();
        assert_eq!(
            got,
            vec![
                SessionEvent::Bound {
                    sid,
                    uid: "u".into()
                },
                SessionEvent::Unbound {
                    sid,
                    uid: "u".into()
                },
                SessionEvent::Bound {
                    sid,
                    uid: "w".into()
                },
                SessionEvent::Closed {
                    sid,
                    uid: Some("w".into()),
                    reason: "disconnected".into()
                },
            ]
        );
    }

    #[test]
    fn a_full_push_queue_closes_the_slow_client() {
        let mut config = SessionConfig::new("f1");
        config.owner_queue = 1;
        let s = SessionService::new(config);
        let mut a = s.create(ConnectInfo::default());
        s.push_to_client(a.sid(), "onChat", bytes("1"))
            .expect("room for one");
        assert!(matches!(
            s.push_to_client(a.sid(), "onChat", bytes("2")),
            Err(Error::OwnerQueueFull(_))
        ));
        assert!(matches!(a.try_recv(), Ok(Some(Outbound::Push { .. }))));
    }
}
