//! The session store's own throughput: writers that each write batches of
//! bound sessions, as a frontend's group commit does, against one Redis
//! server or a Redis Cluster.

use super::{histogram, progress, BenchResult};
use bytes::Bytes;
use session_proxy_frontend::{RedisStore, RedisStoreConfig, SessionStore, StoredSession};
use session_proxy_protocol::{SessionId, SessionInfo, Setting};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What [`store`] runs.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// `redis://…` or `redis+cluster://…`.
    pub url: String,
    /// Writers at once (frontends' flush tasks).
    pub writers: usize,
    /// Sessions per write (a group commit's batch).
    pub batch: usize,
    /// Sessions each writer cycles through.
    pub sessions: usize,
    /// Measured time.
    pub duration: Duration,
}

/// A bound session as a frontend stores it: one small setting.
fn session(sid: u64, writer: usize, n: u64) -> StoredSession {
    let mut settings = BTreeMap::new();
    let value = rmp_serde::to_vec(&n).unwrap_or_default();
    settings.insert(
        "room".into(),
        Setting {
            value: Bytes::from(value),
            version: n,
        },
    );
    StoredSession {
        info: SessionInfo {
            sid: SessionId::from_raw(sid),
            frontend_id: format!("bench-frontend-{writer}"),
            uid: Some(format!("player{sid}")),
            created_unix_ms: 1,
            last_active_unix_ms: 2,
            remote_addr: Some("127.0.0.1:5555".into()),
            metadata: Default::default(),
            parked: false,
        },
        settings,
        last_version: n,
        token: Some([7; 32]),
        previous_token: None,
        epoch: 0,
        pushes: Vec::new(),
    }
}

/// Clears the store under its default prefix, then writes for
/// `options.duration`: each writer puts batches of its own sessions, one
/// put after the other. Ops are sessions written; latency is per put.
pub async fn store(options: &StoreOptions) -> anyhow::Result<BenchResult> {
    let store = Arc::new(RedisStore::connect(RedisStoreConfig::new(options.url.clone())).await?);
    store.clear().await?;
    let ttl = Duration::from_secs(600);
    let until = Instant::now() + options.duration;
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(options.writers);
    for writer in 0..options.writers {
        let store = store.clone();
        let (batch, sessions) = (options.batch.max(1), options.sessions.max(1));
        tasks.push(tokio::spawn(async move {
            let mut h = histogram();
            let (mut written, mut errors, mut round) = (0u64, 0u64, 0u64);
            let first = (writer * sessions) as u64 + 1;
            while Instant::now() < until {
                round += 1;
                let start = (round as usize * batch) % sessions;
                let batch: Vec<StoredSession> = (0..batch)
                    .map(|i| session(first + ((start + i) % sessions) as u64, writer, round))
                    .collect();
                let n = batch.len() as u64;
                let t = Instant::now();
                match store.put(batch, ttl).await {
                    Ok(fenced) if fenced.is_empty() => written += n,
                    _ => errors += 1,
                }
                let _ = h.record(t.elapsed().as_micros().max(1) as u64);
                if writer == 0 {
                    progress("store", started.elapsed(), until - started, written);
                }
            }
            (h, written, errors)
        }));
    }
    let mut h = histogram();
    let (mut ops, mut errors) = (0, 0);
    for task in tasks {
        let (th, written, failed) = task.await?;
        h.add(&th)?;
        ops += written;
        errors += failed;
    }
    let seconds = started.elapsed().as_secs_f64();
    store.clear().await?;
    let on = (options.url.clone(), "redis".to_string());
    Ok(
        BenchResult::measured("store", on, options.writers, seconds, (ops, errors))
            .with_latency(&h),
    )
}
