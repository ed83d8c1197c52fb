//! Keeping sessions beyond one process: the [`SessionStore`] trait, the
//! in-memory [`MemoryStore`] and the Redis-backed [`RedisStore`].
//!
//! The frontend stays the owner of its sessions; the store is where their
//! state survives a restart and where "every session of this user" can be
//! asked across frontends. Values stay opaque MessagePack bytes.

mod memory;
mod redis;

pub use self::memory::MemoryStore;
pub use self::redis::{RedisStore, RedisStoreConfig};

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

/// What failed in a store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The Redis server failed or could not be reached.
    #[error("redis: {0}")]
    Redis(#[from] ::redis::RedisError),
    /// A session could not be encoded.
    #[error("cannot encode a session")]
    Encode(#[source] rmp_serde::encode::Error),
    /// A stored session could not be decoded (written by another version?).
    #[error("cannot decode a stored session")]
    Decode(#[source] rmp_serde::decode::Error),
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
    /// Restarts the time to live of sessions that are still alive.
    fn refresh(&self, sids: Vec<SessionId>, ttl: Duration) -> StoreFuture<'_, ()>;
}

/// How a [`SessionService`](crate::SessionService) uses its store.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct StoreOptions {
    /// How long a stored session outlives its last write or refresh (a
    /// frontend that dies stops refreshing). Default: 10 min.
    pub ttl: Duration,
    /// How often changes not yet acknowledged to anyone are written
    /// (coalesced: a session changed many times is written once).
    /// Default: 50 ms.
    pub flush_interval: Duration,
    /// How long a session restored after a restart waits for its client to
    /// resume. Default: 60 s.
    pub restore_grace: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            ttl: Duration::from_secs(600),
            flush_interval: Duration::from_millis(50),
            restore_grace: Duration::from_secs(60),
        }
    }
}
