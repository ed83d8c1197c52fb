//! Keeping sessions beyond one process: the [`SessionStore`] trait, the
//! in-memory [`MemoryStore`] and the Redis-backed [`RedisStore`].
//!
//! The frontend stays the owner of its sessions; the store is where their
//! state survives a restart and where "every session of this user" can be
//! asked across frontends. Values stay opaque MessagePack bytes.

mod memory;
#[cfg(feature = "redis")]
mod redis;

pub use self::memory::MemoryStore;
#[cfg(feature = "redis")]
pub use self::redis::RedisStore;

use serde::{Deserialize, Serialize};
use session_proxy_protocol::{SessionId, SessionInfo, Setting};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// One session as a store keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSession {
    /// Who, where, when.
    pub info: SessionInfo,
    /// The settings with their versions.
    pub settings: BTreeMap<String, Setting>,
    /// The last version handed out, so versions never repeat after a restore.
    pub last_version: u64,
    /// SHA-256 of the current resume token.
    pub token: Option<[u8; 32]>,
    /// SHA-256 of the previous token, and until when (Unix ms) it works.
    pub previous_token: Option<([u8; 32], u64)>,
    /// The ownership epoch the writer holds the session under (see
    /// [`SessionStore::claim`]). A store reports the one it holds.
    #[serde(default)]
    pub epoch: u64,
    /// Pushes that waited for a parked client when its frontend handed the
    /// session over, delivered by the frontend that resumes it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pushes: Vec<QueuedPush>,
}

/// A push to a client that had not been delivered yet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuedPush {
    /// The push route (`onChat`, …).
    pub route: String,
    /// The body, as the backend sent it.
    pub body: bytes::Bytes,
}

/// A write a store refused because another frontend claimed the session
/// (a newer epoch), or it was ended for every holder
/// ([`SessionStore::delete`]). The writer must stop applying changes to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fenced {
    /// The session.
    pub sid: SessionId,
    /// The frontend that holds it now; empty when nobody does (ended, or
    /// handed over by a drained frontend and not resumed yet).
    pub owner: String,
}

/// What [`SessionStore::admit`] decided.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Admission {
    /// The session may be bound. `evicted` lists the uid's oldest sessions
    /// that were ended to make room, each with the frontend that held it
    /// (empty when it had not been written yet).
    Admitted {
        /// Sessions ended to make room.
        evicted: Vec<Fenced>,
    },
    /// The uid holds its limit of sessions already.
    Refused,
}

/// A session ended by another frontend's [`SessionStore::admit`]; the
/// frontend that holds it closes it with `reason`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Evicted {
    /// The session.
    pub sid: SessionId,
    /// Why (the kick reason its client gets).
    pub reason: String,
}

/// How long an admitted session may go unwritten before an admission
/// takes it for gone (its frontend died between admitting and writing).
pub const ADMISSION_GRACE: Duration = Duration::from_secs(30);

/// What a [`SessionStore::refresh`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Refreshed {
    /// Sessions the store no longer holds (it restarted empty, or evicted
    /// them): the caller writes them again.
    pub missing: Vec<SessionId>,
    /// Sessions another frontend holds now: the caller closes its copy.
    pub fenced: Vec<Fenced>,
}

/// What a [`SessionStore::rebind`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rebound {
    /// The node the uid is bound to now (empty: none).
    pub node: String,
    /// Whether this call wrote it; `false` when the binding was not the
    /// expected one (another frontend moved it first).
    pub written: bool,
}

/// What failed in a store. Says what failed, not which store: each
/// [`SessionStore`] maps its own errors into it and keeps them as the
/// source.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The backing service failed or could not be reached; nothing says the
    /// operation was applied.
    #[error("session store unavailable")]
    Unavailable {
        /// What the store's client said.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The store did not answer within its deadline
    /// ([`StoreOptions::call_timeout`](crate::StoreOptions::call_timeout)); the operation may or may not have
    /// been applied there.
    #[error("session store did not answer within {after:?}")]
    TimedOut {
        /// The deadline.
        after: Duration,
    },
    /// An earlier call failed and the store has not answered since; the
    /// frontend retries in the background and fails calls at once until
    /// then, instead of making each one wait for a deadline.
    #[error("session store down for {down_for:?}; retrying in the background")]
    Down {
        /// How long since the store last answered.
        down_for: Duration,
    },
    /// A session could not be encoded.
    #[error("cannot encode a session")]
    Encode(#[source] rmp_serde::encode::Error),
    /// A stored session could not be decoded (written by another version?).
    #[error("cannot decode a stored session")]
    Decode(#[source] rmp_serde::decode::Error),
}

impl StoreError {
    /// The backing service failed with `source`.
    pub fn unavailable(source: impl std::error::Error + Send + Sync + 'static) -> Self {
        StoreError::Unavailable {
            source: Box::new(source),
        }
    }
}

/// The future a store method returns.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// Where sessions live beyond one process.
///
/// Every method is one round trip (or one pipeline) to the backing service.
/// Records expire on their own after their TTL unless written or refreshed.
///
/// **Ownership is fenced by an epoch.** Each stored session has an epoch
/// and an owner (`info.frontend_id`). A frontend that resumes a session it
/// does not hold [`claim`](Self::claim)s it: the epoch goes up by one,
/// atomically, and from then on every write of an older epoch
/// ([`put`](Self::put), [`release`](Self::release),
/// [`refresh`](Self::refresh)) is refused and reported as [`Fenced`], so two
/// frontends never both apply changes to one session. Deleting leaves the
/// epoch behind (for the TTL), so a stale holder cannot write a deleted
/// session back either.
pub trait SessionStore: Send + Sync + 'static {
    /// Inserts or replaces sessions, each with a time to live, unless the
    /// store holds one under a newer epoch than the record's; returns
    /// those refused.
    fn put(&self, sessions: Vec<StoredSession>, ttl: Duration) -> StoreFuture<'_, Vec<Fenced>>;
    /// Reads one session, with the epoch and owner the store holds.
    fn get(&self, sid: SessionId) -> StoreFuture<'_, Option<StoredSession>>;
    /// Reads every session of a uid, whichever frontend owns it.
    fn by_uid<'a>(&'a self, uid: &'a str) -> StoreFuture<'a, Vec<StoredSession>>;
    /// The node of `server_type` that `uid` stays on (a sticky binding,
    /// see [`BackendRegistry::stick`](crate::BackendRegistry::stick)), if
    /// any; reading it restarts its time to live.
    fn binding<'a>(
        &'a self,
        server_type: &'a str,
        uid: &'a str,
        ttl: Duration,
    ) -> StoreFuture<'a, Option<String>>;
    /// Binds `uid` to `node` of `server_type` for `ttl`, if its binding is
    /// still `expected` (`None`: it has none). Atomic: of two frontends
    /// that race, the second sees the first.
    fn rebind<'a>(
        &'a self,
        server_type: &'a str,
        uid: &'a str,
        expected: Option<&'a str>,
        node: &'a str,
        ttl: Duration,
    ) -> StoreFuture<'a, Rebound>;
    /// Ends sessions for whoever holds them (an operator's revoke): later
    /// writes of their current epochs are refused. Returns how many existed.
    fn delete(&self, sids: Vec<SessionId>) -> StoreFuture<'_, usize>;
    /// Deletes sessions their owner closed, each only if still held at the
    /// given epoch; returns those refused.
    fn release(&self, sessions: Vec<(SessionId, u64)>) -> StoreFuture<'_, Vec<Fenced>>;
    /// Takes a session over for `frontend`, if the store still holds it at
    /// `seen` (the epoch of the record the caller checked the token
    /// against). Returns the new epoch, or `None` when the session is gone
    /// or someone else moved it first.
    fn claim<'a>(
        &'a self,
        sid: SessionId,
        seen: u64,
        frontend: &'a str,
    ) -> StoreFuture<'a, Option<u64>>;
    /// Deletes every session of a uid; returns how many existed.
    fn delete_uid<'a>(&'a self, uid: &'a str) -> StoreFuture<'a, usize>;
    /// The ids of every stored session.
    fn list(&self) -> StoreFuture<'_, Vec<SessionId>>;
    /// Deletes everything this store holds.
    fn clear(&self) -> StoreFuture<'_, ()>;
    /// Names the store server's current run (Redis: its `run_id`, one per
    /// master of a cluster). It changes when a server restarts, and one
    /// that restarted may have come back empty: a frontend checks it every
    /// [`StoreOptions::restart_check`](crate::StoreOptions::restart_check)
    /// and on a change writes every live session again at once. `None`: the
    /// store cannot tell (the default; an in-process store never restarts
    /// on its own).
    fn incarnation(&self) -> StoreFuture<'_, Option<String>> {
        Box::pin(std::future::ready(Ok(None)))
    }
    /// Restarts the time to live of sessions still held at the given
    /// epochs. Reports the ones the store no longer holds and the ones
    /// another frontend holds now.
    fn refresh(&self, sessions: Vec<(SessionId, u64)>, ttl: Duration)
        -> StoreFuture<'_, Refreshed>;
    /// Admits `sid` as one of `uid`'s sessions, for a cluster-wide limit of
    /// `limit` per uid. Atomic: of two admissions racing on two frontends,
    /// the second sees the first. When the uid is at its limit it is
    /// refused, or with `evict_oldest` the oldest sessions are ended (as by
    /// [`delete`](Self::delete), so their holders' writes are fenced) and
    /// announced on [`evictions`](Self::evictions) with `reason`. A session
    /// leaves its uid's count when it is unbound, ended or expires.
    fn admit<'a>(
        &'a self,
        uid: &'a str,
        sid: SessionId,
        limit: usize,
        evict_oldest: bool,
        reason: &'a str,
    ) -> StoreFuture<'a, Admission>;
    /// Sessions ended by an admission (on any frontend sharing the store),
    /// as the store announces them.
    fn evictions(&self) -> tokio::sync::broadcast::Receiver<Evicted>;
    /// Stops the store's background work (listeners, sweeps, redials) and
    /// waits for it to end; calls made after it may fail. A node closes its
    /// store at the end of its drain. The default has nothing to stop.
    fn close(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async {})
    }
}
