//! Sessions in Redis: a hash per session, a set per uid, TTLs in Redis.
//!
//! Layout under a prefix (default `sp:`):
//! - `sp:s:<sid hex>`: the session, a hash with `d` (the record,
//!   MessagePack), `e` (its ownership epoch) and `f` (the frontend that
//!   owns it), with a TTL. A deleted session keeps `e` (one up) and `f`
//!   (empty) until the TTL ends, so a frontend that lost it cannot write
//!   it back;
//! - `sp:u:<uid>`: the set of that uid's session ids (the uid is used as
//!   is, so uids with `:` are fine: nothing parses these keys);
//! - `sp:o`: a hash `sid -> uid`, so a session key that expires or is
//!   evicted can be taken out of its uid's set after it is gone.
//!
//! Every write that depends on the epoch is one Lua script, so the check
//! and the write are atomic. Keyspace notifications (`expired`, `evicted`,
//! `del`) clean the uid sets at once; a periodic sweep catches what
//! happened while no node was listening.
//!
//! - this file: [`RedisStore`] and the [`SessionStore`] calls;
//! - `scripts`: the Lua scripts;
//! - `conn`: the connection, with its timeouts, replaced when it stalls;
//! - `index`: the uid-set clean-up (keyspace listener and sweep).

mod conn;
mod index;
mod scripts;

use self::conn::Conn;
use self::index::{listen, scan, sweep, sweep_every};
use self::scripts::Scripts;
use super::{
    Admission, Evicted, Fenced, Refreshed, SessionStore, StoreError, StoreFuture, StoredSession,
    ADMISSION_GRACE,
};
use crate::config::RedisStoreConfig;
use ::redis::aio::ConnectionManagerConfig;
use ::redis::{AsyncCommands, Client, FromRedisValue, Pipeline, Script, Value};
use session_proxy_protocol::SessionId;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::warn;

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
    fn admitted(&self, uid: &str) -> String {
        format!("{}l:{uid}", self.prefix)
    }
    /// The channel admissions announce evicted sessions on.
    fn evictions(&self) -> String {
        format!("{}evicted", self.prefix)
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
///
/// The key layout is the one described in this module's source; a store
/// written by a version before ownership epochs (session keys as plain
/// strings) is not read: give the new version its own
/// [`RedisStoreConfig::prefix`].
pub struct RedisStore {
    conn: Arc<Conn>,
    keys: Keys,
    scripts: Scripts,
    /// What the keyspace listener hears on the evictions channel.
    evictions: tokio::sync::broadcast::Sender<Evicted>,
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

fn sid_hex(sid: SessionId) -> String {
    format!("{:016x}", sid.as_u64())
}

impl From<::redis::RedisError> for StoreError {
    fn from(err: ::redis::RedisError) -> Self {
        StoreError::unavailable(err)
    }
}

fn encode(s: &StoredSession) -> Result<Vec<u8>, StoreError> {
    rmp_serde::to_vec_named(s).map_err(StoreError::Encode)
}

/// A session from its hash fields `e`, `f`, `d`: the record, with the
/// epoch and owner the store holds. `None` for a deleted one.
fn decode(
    (epoch, owner, record): (Option<u64>, Option<String>, Option<Vec<u8>>),
) -> Result<Option<StoredSession>, StoreError> {
    let Some(record) = record else {
        return Ok(None);
    };
    let mut s: StoredSession = rmp_serde::from_slice(&record).map_err(StoreError::Decode)?;
    s.epoch = epoch.unwrap_or(0);
    if let Some(owner) = owner {
        s.info.frontend_id = owner;
    }
    Ok(Some(s))
}

/// A fenced write's answer: nil when applied, the current owner when not.
fn fenced(sid: SessionId, answer: Option<String>) -> Option<Fenced> {
    answer.map(|owner| Fenced { sid, owner })
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
        let scripts = Scripts::new();
        scripts.load(&mut conn).await?;
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
            scripts,
            evictions: tokio::sync::broadcast::Sender::new(1024),
            stop: CancellationToken::new(),
        };
        tokio::spawn(listen(
            client,
            db,
            store.conn.clone(),
            store.keys.clone(),
            store.scripts.delete.clone(),
            store.evictions.clone(),
            store.stop.clone(),
        ));
        tokio::spawn(sweep_every(
            config.sweep_interval,
            store.conn.clone(),
            store.keys.clone(),
            store.scripts.delete.clone(),
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
        self.guard(sweep(
            &mut self.conn.get(),
            &self.keys,
            &self.scripts.delete,
        ))
        .await
    }

    /// Runs a pipeline of script calls; after a server restart (NOSCRIPT)
    /// loads the scripts again and runs it once more.
    async fn run<T: FromRedisValue>(&self, pipe: &Pipeline) -> Result<T, StoreError> {
        let mut conn = self.conn.get();
        match pipe.query_async(&mut conn).await {
            Err(err) if err.kind() == ::redis::ErrorKind::NoScriptError => {
                self.scripts.load(&mut conn).await?;
                Ok(pipe.query_async(&mut conn).await?)
            }
            other => Ok(other?),
        }
    }

    /// One EVALSHA of `script` on a session's keys (session key, owner
    /// hash, then sid hex and prefix as the first arguments).
    fn eval_indexed<'p>(
        &self,
        pipe: &'p mut Pipeline,
        script: &Script,
        sid: SessionId,
    ) -> &'p mut Pipeline {
        pipe.cmd("EVALSHA")
            .arg(script.get_hash())
            .arg(2)
            .arg(self.keys.session(sid))
            .arg(self.keys.owners())
            .arg(sid_hex(sid))
            .arg(&self.keys.prefix)
    }

    async fn read_many(&self, sids: &[SessionId]) -> Result<Vec<StoredSession>, StoreError> {
        if sids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = ::redis::pipe();
        for sid in sids {
            pipe.cmd("HMGET")
                .arg(self.keys.session(*sid))
                .arg("e")
                .arg("f")
                .arg("d");
        }
        type Fields = (Option<u64>, Option<String>, Option<Vec<u8>>);
        let found: Vec<Fields> = pipe.query_async(&mut self.conn.get()).await?;
        let mut out = Vec::with_capacity(found.len());
        for fields in found {
            out.extend(decode(fields)?);
        }
        Ok(out)
    }

    async fn delete_now(&self, sids: Vec<SessionId>) -> Result<usize, StoreError> {
        if sids.is_empty() {
            return Ok(0);
        }
        // One pipeline for the whole batch, as `put` does.
        let mut pipe = ::redis::pipe();
        for sid in &sids {
            self.eval_indexed(&mut pipe, &self.scripts.delete, *sid)
                .arg("0");
        }
        let deleted: Vec<i64> = self.run(&pipe).await?;
        Ok(deleted.into_iter().filter(|n| *n > 0).count())
    }
}

impl SessionStore for RedisStore {
    fn put(&self, sessions: Vec<StoredSession>, ttl: Duration) -> StoreFuture<'_, Vec<Fenced>> {
        Box::pin(self.guard(async move {
            if sessions.is_empty() {
                return Ok(Vec::new());
            }
            let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
            let mut pipe = ::redis::pipe();
            for s in &sessions {
                self.eval_indexed(&mut pipe, &self.scripts.put, s.info.sid)
                    .arg(s.epoch)
                    .arg(&s.info.frontend_id)
                    .arg(encode(s)?)
                    .arg(ttl_ms)
                    .arg(s.info.uid.as_deref().unwrap_or(""));
            }
            let answers: Vec<Option<String>> = self.run(&pipe).await?;
            Ok(sessions
                .iter()
                .zip(answers)
                .filter_map(|(s, a)| fenced(s.info.sid, a))
                .collect())
        }))
    }

    fn get(&self, sid: SessionId) -> StoreFuture<'_, Option<StoredSession>> {
        Box::pin(self.guard(async move { Ok(self.read_many(&[sid]).await?.pop()) }))
    }

    fn by_uid<'a>(&'a self, uid: &'a str) -> StoreFuture<'a, Vec<StoredSession>> {
        Box::pin(self.guard(async move {
            let members: Vec<String> = self.conn.get().smembers(self.keys.uid(uid)).await?;
            let sids: Vec<SessionId> = members.iter().filter_map(|m| parse_sid(m)).collect();
            self.read_many(&sids).await
        }))
    }

    fn delete(&self, sids: Vec<SessionId>) -> StoreFuture<'_, usize> {
        Box::pin(self.guard(self.delete_now(sids)))
    }

    fn release(&self, sessions: Vec<(SessionId, u64)>) -> StoreFuture<'_, Vec<Fenced>> {
        Box::pin(self.guard(async move {
            if sessions.is_empty() {
                return Ok(Vec::new());
            }
            let mut pipe = ::redis::pipe();
            for (sid, epoch) in &sessions {
                self.eval_indexed(&mut pipe, &self.scripts.release, *sid)
                    .arg(*epoch);
            }
            let answers: Vec<Option<String>> = self.run(&pipe).await?;
            Ok(sessions
                .iter()
                .zip(answers)
                .filter_map(|((sid, _), a)| fenced(*sid, a))
                .collect())
        }))
    }

    fn claim<'a>(
        &'a self,
        sid: SessionId,
        seen: u64,
        frontend: &'a str,
    ) -> StoreFuture<'a, Option<u64>> {
        Box::pin(self.guard(async move {
            let mut pipe = ::redis::pipe();
            pipe.cmd("EVALSHA")
                .arg(self.scripts.claim.get_hash())
                .arg(1)
                .arg(self.keys.session(sid))
                .arg(seen)
                .arg(frontend);
            let (epoch,): (Option<u64>,) = self.run(&pipe).await?;
            Ok(epoch)
        }))
    }

    fn delete_uid<'a>(&'a self, uid: &'a str) -> StoreFuture<'a, usize> {
        Box::pin(self.guard(async move {
            let members: Vec<String> = self.conn.get().smembers(self.keys.uid(uid)).await?;
            let sids: Vec<SessionId> = members.iter().filter_map(|m| parse_sid(m)).collect();
            self.delete_now(sids).await
        }))
    }

    fn list(&self) -> StoreFuture<'_, Vec<SessionId>> {
        Box::pin(self.guard(async move {
            let pattern = format!("{}s:*", self.keys.prefix);
            let mut conn = self.conn.get();
            let keys = scan(&mut conn, &pattern).await?;
            // Deleted sessions leave their epoch behind for a while: only
            // keys with a record count.
            let mut held = Vec::with_capacity(keys.len());
            for chunk in keys.chunks(1000) {
                let mut pipe = ::redis::pipe();
                for key in chunk {
                    pipe.hexists(key, "d");
                }
                let found: Vec<bool> = pipe.query_async(&mut conn).await?;
                held.extend(
                    chunk
                        .iter()
                        .zip(found)
                        .filter(|(_, found)| *found)
                        .filter_map(|(k, _)| self.keys.sid_of(k))
                        .filter_map(|h| parse_sid(&h)),
                );
            }
            Ok(held)
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

    fn refresh(
        &self,
        sessions: Vec<(SessionId, u64)>,
        ttl: Duration,
    ) -> StoreFuture<'_, Refreshed> {
        Box::pin(self.guard(async move {
            let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1);
            let mut report = Refreshed::default();
            for chunk in sessions.chunks(1000) {
                let mut pipe = ::redis::pipe();
                for (sid, epoch) in chunk {
                    pipe.cmd("EVALSHA")
                        .arg(self.scripts.refresh.get_hash())
                        .arg(1)
                        .arg(self.keys.session(*sid))
                        .arg(*epoch)
                        .arg(ttl_ms);
                }
                let answers: Vec<Value> = self.run(&pipe).await?;
                for ((sid, _), answer) in chunk.iter().zip(answers) {
                    match answer {
                        Value::Int(1) => {}
                        Value::Int(_) | Value::Nil => report.missing.push(*sid),
                        owner => report.fenced.push(Fenced {
                            sid: *sid,
                            owner: String::from_redis_value(&owner).unwrap_or_default(),
                        }),
                    }
                }
            }
            Ok(report)
        }))
    }

    fn admit<'a>(
        &'a self,
        uid: &'a str,
        sid: SessionId,
        limit: usize,
        evict_oldest: bool,
        reason: &'a str,
    ) -> StoreFuture<'a, Admission> {
        Box::pin(self.guard(async move {
            let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
            let mut pipe = ::redis::pipe();
            pipe.cmd("EVALSHA")
                .arg(self.scripts.admit.get_hash())
                .arg(2)
                .arg(self.keys.admitted(uid))
                .arg(self.keys.owners())
                .arg(sid_hex(sid))
                .arg(&self.keys.prefix)
                .arg(limit.max(1))
                .arg(if evict_oldest { "1" } else { "0" })
                .arg(ms(ADMISSION_GRACE * 20))
                .arg(reason)
                .arg(ms(ADMISSION_GRACE));
            let (answer,): (Vec<String>,) = self.run(&pipe).await?;
            let mut answer = answer.into_iter();
            if answer.next().as_deref() != Some("1") {
                return Ok(Admission::Refused);
            }
            let mut evicted = Vec::new();
            while let (Some(sid), Some(owner)) = (answer.next(), answer.next()) {
                evicted.extend(parse_sid(&sid).map(|sid| Fenced { sid, owner }));
            }
            Ok(Admission::Admitted { evicted })
        }))
    }

    fn evictions(&self) -> tokio::sync::broadcast::Receiver<Evicted> {
        self.evictions.subscribe()
    }
}
