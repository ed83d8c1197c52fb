//! Sessions in Redis: a key per session, a set per uid, TTLs in Redis.
//!
//! Layout under a prefix (default `sp:`):
//! - `sp:s:<sid hex>`: the session, MessagePack, with a TTL;
//! - `sp:u:<uid>`: the set of that uid's session ids (the uid is used as
//!   is, so uids with `:` are fine: nothing parses these keys);
//! - `sp:o`: a hash `sid -> uid`, so a session key that expires or is
//!   evicted can be taken out of its uid's set after it is gone.
//!
//! Keyspace notifications (`expired`, `evicted`, `del`) trigger that
//! clean-up at once; a periodic sweep catches what happened while no node
//! was listening.
//!
//! - this file: [`RedisStore`], its scripts and the [`SessionStore`] calls;
//! - `conn`: the connection, with its timeouts, replaced when it stalls;
//! - `index`: the uid-set clean-up (keyspace listener and sweep).

mod conn;
mod index;

use self::conn::Conn;
use self::index::{listen, scan, sweep, sweep_every};
use super::{SessionStore, StoreError, StoreFuture, StoredSession};
use crate::config::RedisStoreConfig;
use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{AsyncCommands, Client, Script};
use session_proxy_protocol::SessionId;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// Writes a session and keeps its uid set and owner entry in step.
/// KEYS: session key, owner hash. ARGV: sid, blob, ttl ms, uid ('' if
/// none), prefix.
const PUT: &str = r#"
local old = redis.call('HGET', KEYS[2], ARGV[1])
if old and old ~= ARGV[4] then redis.call('SREM', ARGV[5] .. 'u:' .. old, ARGV[1]) end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
if ARGV[4] ~= '' then
  redis.call('SADD', ARGV[5] .. 'u:' .. ARGV[4], ARGV[1])
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[4])
else
  redis.call('HDEL', KEYS[2], ARGV[1])
end
return 1
"#;

/// Deletes a session with its index entries; returns 1 if it existed.
/// KEYS: session key, owner hash. ARGV: sid, prefix, only-if-gone flag.
const DELETE: &str = r#"
if ARGV[3] == '1' and redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local uid = redis.call('HGET', KEYS[2], ARGV[1])
if uid then redis.call('SREM', ARGV[2] .. 'u:' .. uid, ARGV[1]) end
redis.call('HDEL', KEYS[2], ARGV[1])
return redis.call('DEL', KEYS[1])
"#;

/// Keys of one store.
#[derive(Clone)]
struct Keys {
    prefix: String,
}

impl Keys {
    fn session(&self, sid: SessionId) -> String {
        format!("{}s:{:016x}", self.prefix, sid.as_u64())
    }
    fn uid(&self, uid: &str) -> String {
        format!("{}u:{uid}", self.prefix)
    }
    fn owners(&self) -> String {
        format!("{}o", self.prefix)
    }
    /// The sid of a session key, if it is one of ours.
    fn sid_of(&self, key: &str) -> Option<String> {
        key.strip_prefix(&self.prefix)?
            .strip_prefix("s:")
            .map(str::to_string)
    }
}

/// Sessions in a real Redis server, shared by every frontend that points
/// at it.
///
/// Every command has a response timeout and every connection attempt a
/// connect timeout ([`RedisStoreConfig`]), so a failing or stalled server
/// makes calls fail with [`StoreError::Unavailable`] instead of hanging.
pub struct RedisStore {
    conn: Arc<Conn>,
    keys: Keys,
    put: Script,
    delete: Script,
    /// Stops the keyspace listener and the sweeper.
    stop: CancellationToken,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.keys.prefix)
            .finish_non_exhaustive()
    }
}

impl Drop for RedisStore {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn parse_sid(hex: &str) -> Option<SessionId> {
    u64::from_str_radix(hex, 16).ok().map(SessionId::from_raw)
}

impl From<::redis::RedisError> for StoreError {
    fn from(err: ::redis::RedisError) -> Self {
        StoreError::unavailable(err)
    }
}

fn encode(s: &StoredSession) -> Result<Vec<u8>, StoreError> {
    rmp_serde::to_vec_named(s).map_err(StoreError::Encode)
}

fn decode(b: &[u8]) -> Result<StoredSession, StoreError> {
    rmp_serde::from_slice(b).map_err(StoreError::Decode)
}

impl RedisStore {
    /// Connects, turns on keyspace notifications (if the server allows
    /// `CONFIG SET`; otherwise only the sweep cleans up), and starts the
    /// keyspace listener and the sweeper. Must be called within a tokio
    /// runtime.
    pub async fn connect(config: RedisStoreConfig) -> Result<RedisStore, StoreError> {
        let client = Client::open(config.url.as_str())?;
        let db = client.get_connection_info().redis.db;
        let timeout_ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(config.connect_timeout)
            .set_response_timeout(config.response_timeout)
            // A few quick redials per failure; the session service retries
            // on its own schedule beyond that.
            .set_number_of_retries(2)
            .set_max_delay(timeout_ms(config.connect_timeout).max(1));
        let dial_timeout = config.connect_timeout + config.response_timeout;
        let dial = client.get_connection_manager_with_config(manager_config.clone());
        let mut conn = tokio::time::timeout(dial_timeout, dial)
            .await
            .map_err(|_| StoreError::TimedOut {
                after: dial_timeout,
            })??;
        let enabled: Result<(), _> = ::redis::cmd("CONFIG")
            .arg("SET")
            .arg("notify-keyspace-events")
            .arg("Egxe")
            .query_async(&mut conn)
            .await;
        if let Err(err) = enabled {
            warn!(cause = %err, "cannot enable keyspace notifications; relying on the sweep");
        }
        let put = Script::new(PUT);
        let delete = Script::new(DELETE);
        put.prepare_invoke().load_async(&mut conn).await?;
        delete.prepare_invoke().load_async(&mut conn).await?;
        let store = RedisStore {
            conn: Arc::new(Conn {
                current: RwLock::new(conn),
                client: client.clone(),
                config: manager_config,
                dial_timeout,
                redialing: AtomicBool::new(false),
            }),
            keys: Keys {
                prefix: config.prefix.clone(),
            },
            put,
            delete,
            stop: CancellationToken::new(),
        };
        tokio::spawn(listen(
            client,
            db,
            store.conn.clone(),
            store.keys.clone(),
            store.delete.clone(),
            store.stop.clone(),
        ));
        tokio::spawn(sweep_every(
            config.sweep_interval,
            store.conn.clone(),
            store.keys.clone(),
            store.delete.clone(),
            store.stop.clone(),
        ));
        Ok(store)
    }

    /// Runs one store operation; a timeout starts a redial.
    async fn guard<T>(
        &self,
        op: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let result = op.await;
        if let Err(StoreError::Unavailable { source }) = &result {
            if let Some(err) = source.downcast_ref::<::redis::RedisError>() {
                self.conn.failed(err);
            }
        }
        result
    }

    /// Removes index entries whose session key is gone; returns how many.
    pub async fn sweep(&self) -> Result<usize, StoreError> {
        self.guard(sweep(&mut self.conn.get(), &self.keys, &self.delete))
            .await
    }

    /// Loads the scripts again after the server forgot them (a restart):
    /// pipelined EVALSHA calls then fail with NOSCRIPT and are retried once.
    async fn reload_scripts(&self, conn: &mut ConnectionManager) -> Result<(), StoreError> {
        self.put.prepare_invoke().load_async(conn).await?;
        self.delete.prepare_invoke().load_async(conn).await?;
        Ok(())
    }

    async fn read_many(&self, sids: &[SessionId]) -> Result<Vec<StoredSession>, StoreError> {
        if sids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = sids.iter().map(|s| self.keys.session(*s)).collect();
        let blobs: Vec<Option<Vec<u8>>> = self.conn.get().mget(keys).await?;
        blobs.into_iter().flatten().map(|b| decode(&b)).collect()
    }
}

impl SessionStore for RedisStore {
    fn put(&self, sessions: Vec<StoredSession>, ttl: Duration) -> StoreFuture<'_, ()> {
        Box::pin(self.guard(async move {
            if sessions.is_empty() {
                return Ok(());
            }
            let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
            let mut pipe = ::redis::pipe();
            for s in &sessions {
                pipe.cmd("EVALSHA")
                    .arg(self.put.get_hash())
                    .arg(2)
                    .arg(self.keys.session(s.info.sid))
                    .arg(self.keys.owners())
                    .arg(format!("{:016x}", s.info.sid.as_u64()))
                    .arg(encode(s)?)
                    .arg(ttl_ms)
                    .arg(s.info.uid.as_deref().unwrap_or(""))
                    .arg(&self.keys.prefix)
                    .ignore();
            }
            let mut conn = self.conn.get();
            match pipe.query_async::<()>(&mut conn).await {
                Err(err) if err.kind() == ::redis::ErrorKind::NoScriptError => {
                    self.reload_scripts(&mut conn).await?;
                    pipe.query_async::<()>(&mut conn).await?;
                    Ok(())
                }
                other => Ok(other?),
            }
        }))
    }

    fn get(&self, sid: SessionId) -> StoreFuture<'_, Option<StoredSession>> {
        Box::pin(self.guard(async move {
            let blob: Option<Vec<u8>> = self.conn.get().get(self.keys.session(sid)).await?;
            blob.map(|b| decode(&b)).transpose()
        }))
    }

    fn by_uid<'a>(&'a self, uid: &'a str) -> StoreFuture<'a, Vec<StoredSession>> {
        Box::pin(self.guard(async move {
            let members: Vec<String> = self.conn.get().smembers(self.keys.uid(uid)).await?;
            let sids: Vec<SessionId> = members.iter().filter_map(|m| parse_sid(m)).collect();
            self.read_many(&sids).await
        }))
    }

    fn delete(&self, sids: Vec<SessionId>) -> StoreFuture<'_, usize> {
        Box::pin(self.guard(async move {
            if sids.is_empty() {
                return Ok(0);
            }
            // One pipeline for the whole batch, as `put` does.
            let mut pipe = ::redis::pipe();
            for sid in &sids {
                pipe.cmd("EVALSHA")
                    .arg(self.delete.get_hash())
                    .arg(2)
                    .arg(self.keys.session(*sid))
                    .arg(self.keys.owners())
                    .arg(format!("{:016x}", sid.as_u64()))
                    .arg(&self.keys.prefix)
                    .arg("0");
            }
            let mut conn = self.conn.get();
            let deleted: Vec<i64> = match pipe.query_async(&mut conn).await {
                Err(err) if err.kind() == ::redis::ErrorKind::NoScriptError => {
                    self.reload_scripts(&mut conn).await?;
                    pipe.query_async(&mut conn).await?
                }
                other => other?,
            };
            Ok(deleted.into_iter().filter(|n| *n > 0).count())
        }))
    }

    fn delete_uid<'a>(&'a self, uid: &'a str) -> StoreFuture<'a, usize> {
        Box::pin(self.guard(async move {
            let members: Vec<String> = self.conn.get().smembers(self.keys.uid(uid)).await?;
            let sids: Vec<SessionId> = members.iter().filter_map(|m| parse_sid(m)).collect();
            self.delete(sids).await
        }))
    }

    fn list(&self) -> StoreFuture<'_, Vec<SessionId>> {
        Box::pin(self.guard(async move {
            let pattern = format!("{}s:*", self.keys.prefix);
            let keys = scan(&mut self.conn.get(), &pattern).await?;
            Ok(keys
                .iter()
                .filter_map(|k| self.keys.sid_of(k))
                .filter_map(|h| parse_sid(&h))
                .collect())
        }))
    }

    fn clear(&self) -> StoreFuture<'_, ()> {
        Box::pin(self.guard(async move {
            let mut conn = self.conn.get();
            let keys = scan(&mut conn, &format!("{}*", self.keys.prefix)).await?;
            for chunk in keys.chunks(500) {
                let _: () = conn.del(chunk).await?;
            }
            Ok(())
        }))
    }

    fn refresh(&self, sids: Vec<SessionId>, ttl: Duration) -> StoreFuture<'_, Vec<SessionId>> {
        Box::pin(self.guard(async move {
            let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1);
            let mut missing = Vec::new();
            for chunk in sids.chunks(1000) {
                let mut pipe = ::redis::pipe();
                for sid in chunk {
                    pipe.pexpire(self.keys.session(*sid), ttl_ms);
                }
                // PEXPIRE answers 0 for a key that is not there.
                let found: Vec<bool> = pipe.query_async(&mut self.conn.get()).await?;
                missing.extend(
                    chunk
                        .iter()
                        .zip(found)
                        .filter(|(_, found)| !found)
                        .map(|(sid, _)| *sid),
                );
            }
            Ok(missing)
        }))
    }
}
