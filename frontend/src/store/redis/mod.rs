//! Sessions in Redis, one server or a Redis Cluster: a hash per session, a
//! set per uid, TTLs in Redis.
//!
//! Layout under a prefix (default `sp:`). A `{…}` part is a hash tag: on a
//! cluster, keys with the same tag share a slot, so every script runs on
//! one node. Per session (tag: the sid in hex):
//! - `sp:s:{<sid>}`: the session, a hash with `d` (the record,
//!   MessagePack), `e` (its ownership epoch), `f` (the frontend that owns
//!   it) and `u` (its uid), with a TTL. An ended session keeps `e` (one
//!   up) and `f` (empty) until the TTL ends, so a frontend that lost it
//!   cannot write it back;
//! - `sp:o:{<sid>}`: its uid, kept after the session key expires or is
//!   evicted so the session can be taken out of its uid's set.
//!
//! Per uid (tag: the uid, used as is, so uids with `:` are fine: nothing
//! parses these keys):
//! - `sp:u:{<uid>}`: the set of that uid's session ids;
//! - `sp:l:{<uid>}`: the sessions admitted under a per-uid limit, by time;
//! - `sp:x:{<uid>}`: evictions decided by an admission and not yet carried
//!   out (sid -> reason).
//!
//! Every write that depends on the epoch is one Lua script on the
//! session's slot, so the check and the write are atomic. The uid set is
//! written after it by idempotent commands; reads check each member
//! against the session's own `u`, so an entry left behind by a frontend
//! that died in between is never served, and the sweep removes it.
//! Keyspace notifications (`expired`, `evicted`, `del`, heard from every
//! master) clean the uid sets at once; the periodic sweep catches what
//! happened while no node was listening.
//!
//! - this file: [`RedisStore`] and the [`SessionStore`] calls;
//! - `inner`: what the calls and the background tasks share (running
//!   batches, ending sessions, reading records);
//! - `admit`: the per-uid admission;
//! - `scripts`: the Lua scripts;
//! - `conn`: the connection (one server or a cluster), with its timeouts,
//!   replaced when it stalls;
//! - `index`: the uid-set clean-up (keyspace listener and sweep);
//! - `slots`: a cluster's batches, one pipeline per master.

mod admit;
mod conn;
mod index;
mod inner;
mod scripts;
mod slots;

use self::conn::{Conn, Dial};
use self::index::{listen, sweep_every};
use self::inner::{encode, eval, millis, parse_sid, sid_hex, Inner};
use self::scripts::Scripts;
use super::{
    Admission, Evicted, Fenced, Rebound, Refreshed, SessionStore, StoreError, StoreFuture,
    StoredSession,
};
use crate::config::RedisStoreConfig;
use ::redis::aio::ConnectionManagerConfig;
use ::redis::cluster::ClusterClientBuilder;
use ::redis::{Client, Cmd, FromRedisValue, IntoConnectionInfo, Value};
use session_proxy_protocol::SessionId;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::warn;

/// Keys of one store.
#[derive(Clone)]
struct Keys {
    prefix: String,
}

impl Keys {
    fn session(&self, sid: SessionId) -> String {
        format!("{}s:{{{:016x}}}", self.prefix, sid.as_u64())
    }
    fn owner(&self, sid: SessionId) -> String {
        format!("{}o:{{{:016x}}}", self.prefix, sid.as_u64())
    }
    fn uid(&self, uid: &str) -> String {
        format!("{}u:{{{uid}}}", self.prefix)
    }
    fn admitted(&self, uid: &str) -> String {
        format!("{}l:{{{uid}}}", self.prefix)
    }
    fn pending(&self, uid: &str) -> String {
        format!("{}x:{{{uid}}}", self.prefix)
    }
    /// The node of `server_type` that `uid` stays on (its own slot).
    fn binding(&self, server_type: &str, uid: &str) -> String {
        format!("{}k:{server_type}:{{{uid}}}", self.prefix)
    }
    /// The channel admissions announce evicted sessions on.
    fn evictions(&self) -> String {
        format!("{}evicted", self.prefix)
    }
    /// What a key of kind `kind` (`s`, `o`, `u`, `x`) is about: the sid hex
    /// or the uid between its braces, if it is one of ours.
    fn tag_of<'k>(&self, kind: &str, key: &'k str) -> Option<&'k str> {
        key.strip_prefix(&self.prefix)?
            .strip_prefix(kind)?
            .strip_prefix(":{")?
            .strip_suffix('}')
    }
}

/// Sessions in a real Redis server, or a Redis Cluster, shared by every
/// frontend that points at it.
///
/// Every command has a response timeout and every connection attempt a
/// connect timeout ([`RedisStoreConfig`]), so a failing or stalled server
/// makes calls fail with [`StoreError::Unavailable`] instead of hanging.
///
/// The key layout is the one described in this module's source; a store
/// written by an earlier layout (no hash tags) is not read: give the new
/// version its own [`RedisStoreConfig::prefix`].
pub struct RedisStore {
    inner: Arc<Inner>,
    /// What the keyspace listener hears on the evictions channel.
    evictions: tokio::sync::broadcast::Sender<Evicted>,
    /// Stops the keyspace listener and the sweeper.
    stop: CancellationToken,
    /// The listener, the sweeper and redials, for [`SessionStore::close`]
    /// to await.
    tasks: TaskTracker,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.inner.keys.prefix)
            .finish_non_exhaustive()
    }
}

impl Drop for RedisStore {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl From<::redis::RedisError> for StoreError {
    fn from(err: ::redis::RedisError) -> Self {
        StoreError::unavailable(err)
    }
}

impl RedisStore {
    /// Connects (to one server, or to a cluster by the seeds of a
    /// `redis+cluster://` URL), turns on keyspace notifications (if the
    /// server allows `CONFIG SET`; otherwise only the sweep cleans up), and
    /// starts the keyspace listener and the sweeper. Must be called within
    /// a tokio runtime.
    pub async fn connect(config: RedisStoreConfig) -> Result<RedisStore, StoreError> {
        let dial = match config.cluster_seeds() {
            Some(seeds) => {
                let seed = seeds
                    .first()
                    .ok_or_else(|| {
                        StoreError::unavailable(::redis::RedisError::from((
                            ::redis::ErrorKind::InvalidClientConfig,
                            "a redis+cluster:// URL names no node",
                        )))
                    })?
                    .as_str()
                    .into_connection_info()?;
                let client = ClusterClientBuilder::new(seeds)
                    .connection_timeout(config.connect_timeout)
                    .response_timeout(config.response_timeout)
                    .retries(2)
                    .max_retry_wait(millis(config.connect_timeout))
                    .build()?;
                Dial::Cluster { client, seed }
            }
            None => Dial::One {
                client: Client::open(config.url.as_str())?,
                config: ConnectionManagerConfig::new()
                    .set_connection_timeout(config.connect_timeout)
                    .set_response_timeout(config.response_timeout)
                    // A few quick redials per failure; the session service
                    // retries on its own schedule beyond that.
                    .set_number_of_retries(2)
                    .set_max_delay(millis(config.connect_timeout)),
            },
        };
        let dial_timeout = config.connect_timeout + config.response_timeout;
        let conn = Conn::open(dial, dial_timeout).await?;
        let mut link = conn.get();
        let enabled = link
            .on_every_master(
                ::redis::cmd("CONFIG")
                    .arg("SET")
                    .arg("notify-keyspace-events")
                    .arg("Egxe"),
            )
            .await;
        if let Err(err) = enabled {
            warn!(cause = %session_proxy_protocol::chain(&err), "cannot enable keyspace notifications; relying on the sweep");
        }
        let scripts = Scripts::new();
        scripts.load(&mut link).await?;
        let store = RedisStore {
            inner: Arc::new(Inner {
                conn: Arc::new(conn),
                keys: Keys {
                    prefix: config.prefix.clone(),
                },
                scripts,
            }),
            evictions: tokio::sync::broadcast::Sender::new(1024),
            stop: CancellationToken::new(),
            tasks: TaskTracker::new(),
        };
        store.tasks.spawn(listen(
            store.inner.clone(),
            store.evictions.clone(),
            store.stop.clone(),
        ));
        store.tasks.spawn(sweep_every(
            config.sweep_interval,
            store.inner.clone(),
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
                self.inner.conn.failed(err, &self.tasks);
            }
        }
        result
    }

    /// Removes index entries whose session is gone or moved, and carries
    /// out evictions a frontend decided and did not finish; returns how
    /// many entries it mended.
    pub async fn sweep(&self) -> Result<usize, StoreError> {
        self.guard(self.inner.sweep()).await
    }
}

impl SessionStore for RedisStore {
    fn put(&self, sessions: Vec<StoredSession>, ttl: Duration) -> StoreFuture<'_, Vec<Fenced>> {
        let inner = &self.inner;
        Box::pin(self.guard(async move {
            let ttl_ms = millis(ttl);
            let mut cmds = Vec::with_capacity(sessions.len());
            for s in &sessions {
                let mut cmd = inner.on_session(&inner.scripts.put, s.info.sid);
                cmd.arg(s.epoch)
                    .arg(&s.info.frontend_id)
                    .arg(encode(s)?)
                    .arg(ttl_ms)
                    .arg(s.info.uid.as_deref().unwrap_or(""));
                cmds.push(cmd);
            }
            // Idempotent, and checked against the session's `u` on every
            // read, so it goes out even for a write that is fenced; after
            // the writes, so that whoever sees the entry sees its `u`.
            let adds: Vec<Cmd> = sessions
                .iter()
                .filter_map(|s| {
                    let uid = s.info.uid.as_ref()?;
                    Some(
                        ::redis::cmd("SADD")
                            .arg(inner.keys.uid(uid))
                            .arg(sid_hex(s.info.sid))
                            .clone(),
                    )
                })
                .collect();
            let answers = inner.run_then(&cmds, &adds).await?;
            let mut fenced = Vec::new();
            let mut moved = Vec::new();
            for (s, answer) in sessions.iter().zip(answers) {
                let (written, who) = <(i64, String)>::from_redis_value(&answer)?;
                if written == 0 {
                    fenced.push(Fenced {
                        sid: s.info.sid,
                        owner: who,
                    });
                } else if !who.is_empty() && s.info.uid.as_deref() != Some(who.as_str()) {
                    // Rebound or unbound: out of the previous uid's sets.
                    inner.unindex(s.info.sid, &who, &mut moved);
                }
            }
            inner.run::<Value>(&moved).await?;
            Ok(fenced)
        }))
    }

    fn get(&self, sid: SessionId) -> StoreFuture<'_, Option<StoredSession>> {
        Box::pin(self.guard(async move { Ok(self.inner.read_many(&[sid]).await?.pop()) }))
    }

    fn by_uid<'a>(&'a self, uid: &'a str) -> StoreFuture<'a, Vec<StoredSession>> {
        Box::pin(self.guard(self.inner.by_uid(uid)))
    }

    fn binding<'a>(
        &'a self,
        server_type: &'a str,
        uid: &'a str,
        ttl: Duration,
    ) -> StoreFuture<'a, Option<String>> {
        Box::pin(self.guard(async move {
            let key = self.inner.keys.binding(server_type, uid);
            let (node, _): (Option<String>, i64) = ::redis::pipe()
                .get(&key)
                .pexpire(&key, i64::try_from(millis(ttl)).unwrap_or(i64::MAX))
                .query_async(&mut self.inner.conn.get())
                .await?;
            Ok(node)
        }))
    }

    fn rebind<'a>(
        &'a self,
        server_type: &'a str,
        uid: &'a str,
        expected: Option<&'a str>,
        node: &'a str,
        ttl: Duration,
    ) -> StoreFuture<'a, Rebound> {
        Box::pin(self.guard(async move {
            let inner = &self.inner;
            let mut cmd = eval(
                &inner.scripts.rebind,
                &[inner.keys.binding(server_type, uid)],
            );
            cmd.arg(expected.unwrap_or("")).arg(node).arg(millis(ttl));
            let held: Vec<(String, i64)> = inner.run(&[cmd]).await?;
            let (node, written) = held.into_iter().next().unwrap_or_default();
            Ok(Rebound {
                node,
                written: written == 1,
            })
        }))
    }

    fn delete(&self, sids: Vec<SessionId>) -> StoreFuture<'_, usize> {
        Box::pin(self.guard(self.inner.delete(sids)))
    }

    fn release(&self, sessions: Vec<(SessionId, u64)>) -> StoreFuture<'_, Vec<Fenced>> {
        Box::pin(self.guard(async move {
            let answers = self.inner.end(&sessions, "release").await?;
            Ok(sessions
                .iter()
                .zip(answers)
                .filter(|(_, (code, _))| *code == 2)
                .map(|((sid, _), (_, owner))| Fenced { sid: *sid, owner })
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
            let inner = &self.inner;
            let mut cmd = eval(&inner.scripts.claim, &[inner.keys.session(sid)]);
            cmd.arg(seen).arg(frontend);
            let epoch: Vec<Option<u64>> = inner.run(&[cmd]).await?;
            Ok(epoch.into_iter().next().flatten())
        }))
    }

    fn delete_uid<'a>(&'a self, uid: &'a str) -> StoreFuture<'a, usize> {
        Box::pin(self.guard(async move {
            let held = self.inner.by_uid(uid).await?;
            self.inner
                .delete(held.iter().map(|s| s.info.sid).collect())
                .await
        }))
    }

    fn list(&self) -> StoreFuture<'_, Vec<SessionId>> {
        Box::pin(self.guard(async move {
            let keys = &self.inner.keys;
            let mut link = self.inner.conn.get();
            let found = link.scan(&format!("{}s:*", keys.prefix)).await?;
            // Ended sessions leave their epoch behind for a while: only
            // keys with a record count.
            let cmds: Vec<Cmd> = found
                .iter()
                .map(|key| ::redis::cmd("HEXISTS").arg(key).arg("d").clone())
                .collect();
            let held: Vec<bool> = link.each(&cmds).await?;
            Ok(found
                .iter()
                .zip(held)
                .filter(|(_, held)| *held)
                .filter_map(|(key, _)| keys.tag_of("s", key))
                .filter_map(parse_sid)
                .collect())
        }))
    }

    fn incarnation(&self) -> StoreFuture<'_, Option<String>> {
        Box::pin(self.guard(async move {
            let mut link = self.inner.conn.get();
            Ok(Some(link.run_ids().await?))
        }))
    }

    fn clear(&self) -> StoreFuture<'_, ()> {
        Box::pin(self.guard(async move {
            let mut link = self.inner.conn.get();
            let found = link.scan(&format!("{}*", self.inner.keys.prefix)).await?;
            let cmds: Vec<Cmd> = found
                .iter()
                .map(|key| ::redis::cmd("DEL").arg(key).clone())
                .collect();
            link.each::<Value>(&cmds).await?;
            Ok(())
        }))
    }

    fn refresh(
        &self,
        sessions: Vec<(SessionId, u64)>,
        ttl: Duration,
    ) -> StoreFuture<'_, Refreshed> {
        Box::pin(self.guard(async move {
            let inner = &self.inner;
            let cmds: Vec<Cmd> = sessions
                .iter()
                .map(|(sid, epoch)| {
                    let mut cmd = eval(&inner.scripts.refresh, &[inner.keys.session(*sid)]);
                    cmd.arg(*epoch).arg(millis(ttl));
                    cmd
                })
                .collect();
            let answers: Vec<Value> = inner.run(&cmds).await?;
            let mut report = Refreshed::default();
            for ((sid, _), answer) in sessions.iter().zip(answers) {
                match answer {
                    Value::Int(1) => {}
                    Value::Int(_) | Value::Nil => report.missing.push(*sid),
                    owner => report.fenced.push(Fenced {
                        sid: *sid,
                        owner: String::from_redis_value(&owner).unwrap_or_default(),
                    }),
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
        Box::pin(self.guard(self.inner.admit(uid, sid, limit, evict_oldest, reason)))
    }

    fn evictions(&self) -> tokio::sync::broadcast::Receiver<Evicted> {
        self.evictions.subscribe()
    }

    fn close(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        self.stop.cancel();
        self.tasks.close();
        Box::pin(self.tasks.wait())
    }
}
