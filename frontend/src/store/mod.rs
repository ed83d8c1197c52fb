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
#[cfg(feature = "redis")]
pub use crate::config::RedisStoreConfig;
pub use crate::config::StoreOptions;

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
}

/// What failed in a store. Says what failed, not which store: each
/// [`SessionStore`] maps its own errors into it and keeps them as the
/// source.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The backing service failed or could not be reached; nothing says the
    /// operation was applied.
    #[error("session store unavailable: {source}")]
    Unavailable {
        /// What the store's client said.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The store did not answer within its deadline
    /// ([`StoreOptions::call_timeout`]); the operation may or may not have
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
pub trait SessionStore: Send + Sync + 'static {
    /// Inserts or replaces sessions, each with a time to live.
    fn put(&self, sessions: Vec<StoredSession>, ttl: Duration) -> StoreFuture<'_, ()>;
    /// Reads one session.
    fn get(&self, sid: SessionId) -> StoreFuture<'_, Option<StoredSession>>;
    /// Reads every session of a uid, whichever frontend owns it.
    fn by_uid<'a>(&'a self, uid: &'a str) -> StoreFuture<'a, Vec<StoredSession>>;
    /// Deletes sessions; returns how many existed.
    fn delete(&self, sids: Vec<SessionId>) -> StoreFuture<'_, usize>;
    /// Deletes every session of a uid; returns how many existed.
    fn delete_uid<'a>(&'a self, uid: &'a str) -> StoreFuture<'a, usize>;
    /// The ids of every stored session.
    fn list(&self) -> StoreFuture<'_, Vec<SessionId>>;
    /// Deletes everything this store holds.
    fn clear(&self) -> StoreFuture<'_, ()>;
    /// Restarts the time to live of sessions that are still alive. Returns
    /// the sessions the store no longer holds (it restarted empty, or
    /// evicted them), so the caller writes them again.
    fn refresh(&self, sids: Vec<SessionId>, ttl: Duration) -> StoreFuture<'_, Vec<SessionId>>;
}
