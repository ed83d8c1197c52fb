//! The sessions phase: two backends work the same sessions of one frontend
//! at once, then the frontend's state is checked key by key.

use super::{ChatReport, DemoConfig, DemoReport};
use anyhow::{bail, ensure, Context};
use hdrhistogram::Histogram;
use session_proxy::node::{BackendRole, FrontendRole, Node};
use session_proxy::protocol::{KeyWrite, Precondition, Push};
use session_proxy::{
    BackendSessionService, ConnectInfo, ErrorCode, Handlers, Outbound, SessionOwner, SessionService,
};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

struct Counters {
    ops: std::sync::atomic::AtomicU64,
    conflicts: std::sync::atomic::AtomicU64,
}

impl Counters {
    fn op(&self) {
        self.ops.fetch_add(1, Ordering::Relaxed);
    }
}

/// Every tenth session is kicked by backend B while the others work.
const KICK_EVERY: usize = 10;

/// The frontend, its sessions and the two backends working on them: a
/// frontend node, and a node of the two backends linked to it over TCP.
struct Cluster {
    frontend_node: Node,
    backends_node: Node,
    frontend: SessionService,
    owners: Vec<SessionOwner>,
    sids: Arc<Vec<session_proxy::SessionId>>,
    a: BackendSessionService,
    b: BackendSessionService,
    counters: Arc<Counters>,
}

/// Runs the sessions phase and checks the frontend's final state.
pub(super) async fn run(config: &DemoConfig) -> anyhow::Result<DemoReport> {
    ensure!(config.sessions >= 20, "the demo needs at least 20 sessions");
    let mut cluster = Cluster::start(config.sessions).await?;
    let started = Instant::now();
    let push_latency_us = cluster.work_concurrently(config.workers).await?;
    cluster.overwrite_pipelined().await?;
    let concurrent_elapsed = started.elapsed();
    let (kicked, open_at_end) = cluster.check().await?;
    let pipelined_per_sec = cluster.pipelined_throughput(config.pipelined).await?;
    let c = &cluster.counters;
    let report = DemoReport {
        sessions: config.sessions,
        open_at_end,
        operations: c.ops.load(Ordering::Relaxed),
        conflicts: c.conflicts.load(Ordering::Relaxed),
        kicked,
        concurrent_elapsed,
        pipelined_per_sec,
        push_latency_us,
        chat: ChatReport::default(),
    };
    cluster.stop().await;
    Ok(report)
}

impl Cluster {
    async fn start(sessions: usize) -> anyhow::Result<Cluster> {
        let frontend_node = Node::builder()
            .frontend(FrontendRole::new("connector-1", "connector"))
            .start()
            .await
            .context("starting the frontend")?;
        let frontend = frontend_node
            .sessions()
            .context("a frontend node has sessions")?
            .clone();
        let addr = frontend_node
            .rpc_addr()
            .context("a frontend node listens for backends")?
            .to_string();
        let owners: Vec<SessionOwner> = (0..sessions)
            .map(|i| {
                let mut info = ConnectInfo::default();
                info.metadata.insert("client".into(), format!("demo-{i}"));
                frontend.create(info)
            })
            .collect();
        let sids = Arc::new(owners.iter().map(|o| o.sid()).collect());
        // Two callers: they serve no routes of their own.
        let caller = |id: &str| {
            BackendRole::new(id, "demo", Handlers::new()).frontend("connector-1", addr.clone())
        };
        let backends_node = Node::builder()
            .backend(caller("backend-a"))
            .backend(caller("backend-b"))
            .start()
            .await
            .context("starting the backends")?;
        let services: Vec<BackendSessionService> = backends_node.backends().cloned().collect();
        let [a, b] = <[BackendSessionService; 2]>::try_from(services)
            .map_err(|_| anyhow::anyhow!("the backends node has both backends"))?;
        Ok(Cluster {
            frontend_node,
            backends_node,
            frontend,
            owners,
            sids,
            a,
            b,
            counters: Arc::new(Counters {
                ops: 0.into(),
                conflicts: 0.into(),
            }),
        })
    }

    /// Both backends at once: A binds and pushes, B `push_all`s on older
    /// snapshots, kicks every tenth session and provokes conflicts.
    /// Returns A's push latency (p50, p99, max), microseconds.
    async fn work_concurrently(&self, workers: usize) -> anyhow::Result<(u64, u64, u64)> {
        let (a, b, sids, counters) = (&self.a, &self.b, &self.sids, &self.counters);
        let latency = Arc::new(Mutex::new(
            Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).context("histogram bounds")?,
        ));
        let kick_every = KICK_EVERY;
        let n = sids.len();
        let per_worker = n.div_ceil(workers);
        // Backend B's proxies, one slice per worker, fetched up front.
        let mut b_sessions = Vec::with_capacity(workers);
        for w in (0..workers).rev() {
            let mut slice = Vec::new();
            for i in (w * per_worker)..((w + 1) * per_worker).min(n) {
                let s = b
                    .get("connector-1", sids[i])
                    .await?
                    .with_context(|| format!("session {i}"))?;
                counters.op();
                slice.push((i, s));
            }
            b_sessions.push(slice);
        }
        let mut tasks = tokio::task::JoinSet::new();
        for w in 0..workers {
            // Backend A: binds, then pushes "room" and "shared" one call at a
            // time, recording round-trip latency.
            let (a, sids, c, latency) =
                (a.clone(), sids.clone(), counters.clone(), latency.clone());
            tasks.spawn(async move {
                let counters = c;
                let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
                for i in (w * per_worker)..((w + 1) * per_worker).min(n) {
                    let kickable = i % kick_every == 0;
                    let Some(mut s) = a.get("connector-1", sids[i]).await? else {
                        if kickable {
                            continue;
                        } else {
                            bail!("session {i} vanished")
                        }
                    };
                    counters.op();
                    match s.bind(&format!("player-{i}")).await {
                        Ok(()) => counters.op(),
                        Err(e) if kickable && e.code() == ErrorCode::SessionNotFound => continue,
                        Err(e) => return Err(e).with_context(|| format!("bind {i}")),
                    }
                    for round in 0..5u32 {
                        s.set("room", &format!("room-{}", (i as u32 + round) % 7))?;
                        s.set("shared", "from-a")?;
                        let t = Instant::now();
                        match s.push("room").await {
                            Ok(()) => {
                                local.saturating_record(t.elapsed().as_micros() as u64);
                                counters.op();
                            }
                            Err(e) if kickable && e.code() == ErrorCode::SessionNotFound => break,
                            Err(e) => return Err(e).with_context(|| format!("push {i}")),
                        }
                    }
                }
                latency.lock().await.add(&local)?;
                Ok(())
            });
            // Backend B: push_all on proxies it fetched before A wrote anything,
            // so its snapshots name only B's keys: A's keys must survive.
            let (mine, counters) = (
                b_sessions.pop().context("one slice per worker")?,
                counters.clone(),
            );
            tasks.spawn(async move {
                for (i, mut s) in mine {
                    let kickable = i % kick_every == 0;
                    s.set("level", &(i as u32 % 60))?;
                    s.set("gold", &(i as u64 * 10))?;
                    match s.push_all().await {
                        Ok(()) => counters.op(),
                        Err(e) if kickable && e.code() == ErrorCode::SessionNotFound => continue,
                        Err(e) => return Err(e).with_context(|| format!("push_all {i}")),
                    }
                }
                Ok(())
            });
        }
        // Backend B kicks every tenth session meanwhile.
        {
            let (b, sids, counters) = (b.clone(), sids.clone(), counters.clone());
            tasks.spawn(async move {
                for i in (0..n).step_by(kick_every) {
                    ensure!(
                        b.kick_by_sid("connector-1", sids[i], "demo kick").await?,
                        "kick {i}: session already gone"
                    );
                    counters.op();
                }
                Ok(())
            });
        }
        // Meanwhile, conditional pushes with a real conflict: A and B read the
        // same session, B writes first, A's conditional push must be refused.
        let conflict_sessions: Vec<usize> = (1..n).step_by(kick_every).take(50).collect();
        {
            let (a, b, sids, counters) = (a.clone(), b.clone(), sids.clone(), counters.clone());
            tasks.spawn(async move {
                for i in conflict_sessions {
                    let mut from_a = a
                        .get("connector-1", sids[i])
                        .await?
                        .context("open session")?;
                    let mut from_b = b
                        .get("connector-1", sids[i])
                        .await?
                        .context("open session")?;
                    from_b.set("gems", &1u64)?;
                    from_b
                        .push_if_unchanged("gems")
                        .await
                        .context("first conditional push wins")?;
                    counters.op();
                    from_a.set("gems", &2u64)?;
                    match from_a.push_if_unchanged("gems").await {
                        Err(e) if e.code() == ErrorCode::Conflict => {
                            counters.conflicts.fetch_add(1, Ordering::Relaxed);
                        }
                        other => bail!(
                    "conditional push after a concurrent write: expected a conflict, got {other:?}"
                ),
                    }
                    // A refreshes and retries, as a handler would.
                    from_a.refresh().await?;
                    from_a.set("gems", &(from_a.get::<u64>("gems")?.unwrap_or(0) + 2))?;
                    from_a
                        .push_if_unchanged("gems")
                        .await
                        .context("retry after refresh")?;
                    counters.op();
                }
                Ok(())
            });
        }
        while let Some(res) = tasks.join_next().await {
            res.context("a demo worker panicked")??;
        }

        let h = latency.lock().await;
        Ok((h.value_at_quantile(0.5), h.value_at_quantile(0.99), h.max()))
    }

    /// B overwrites "shared" on every open session, in one pipelined burst.
    async fn overwrite_pipelined(&self) -> anyhow::Result<()> {
        let (b, sids, counters, kick_every) = (&self.b, &self.sids, &self.counters, KICK_EVERY);
        let client_b = b.client("connector-1")?;
        let mut pending = Vec::new();
        for (i, sid) in sids.iter().enumerate() {
            if i % kick_every == 0 {
                continue;
            }
            pending.push(
                client_b
                    .send(Push {
                        sid: *sid,
                        writes: vec![KeyWrite {
                            key: "shared".into(),
                            value: Some(rmp_bytes("from-b")),
                            expect: Precondition::Any,
                        }],
                    })
                    .await?,
            );
        }
        for p in pending {
            p.response().await?;
            counters.op();
        }
        Ok(())
    }

    /// Checks the frontend's state key by key; returns (kicked, open).
    async fn check(&mut self) -> anyhow::Result<(usize, usize)> {
        let (frontend, counters, kick_every) = (&self.frontend, &self.counters, KICK_EVERY);
        let n = self.sids.len();
        let conflicts_expected = (1..n).step_by(kick_every).take(50).count() as u64;
        let mut kicked = 0;
        for (i, owner) in self.owners.iter_mut().enumerate() {
            let sid = owner.sid();
            if i % kick_every == 0 {
                ensure!(
                    frontend.get(sid).is_none(),
                    "kicked session {i} is still open"
                );
                let got = owner.recv().await;
                ensure!(
                    matches!(&got, Some(Outbound::Kick { reason }) if reason == "demo kick"),
                    "kicked session {i}: its connection got {got:?} instead of the kick"
                );
                kicked += 1;
                continue;
            }
            let s = frontend
                .get(sid)
                .with_context(|| format!("session {i} is gone"))?;
            ensure!(
                s.uid.as_deref() == Some(&format!("player-{i}")),
                "session {i}: uid {:?}",
                s.uid
            );
            let room: String = decode(&s, "room")?;
            ensure!(
                room == format!("room-{}", (i as u32 + 4) % 7),
                "session {i}: room {room}"
            );
            let shared: String = decode(&s, "shared")?;
            ensure!(shared == "from-b", "session {i}: shared {shared}");
            let level: u32 = decode(&s, "level")?;
            ensure!(level == i as u32 % 60, "session {i}: level {level}");
            let gems: Option<u64> = s
                .settings
                .get("gems")
                .map(|_| decode(&s, "gems"))
                .transpose()?;
            let want_gems = (i % kick_every == 1 && i < kick_every * 50).then_some(3);
            ensure!(
                gems == want_gems,
                "session {i}: gems {gems:?}, expected {want_gems:?}"
            );
            let gold: u64 = decode(&s, "gold")?;
            let want_gold = i as u64 * 10;
            ensure!(
                gold == want_gold,
                "session {i}: gold {gold}, expected {want_gold}"
            );
            ensure!(
                frontend.sids_of_uid(&format!("player-{i}")) == vec![sid],
                "uid index of session {i}"
            );
        }
        let open_at_end = frontend.count();
        ensure!(
            open_at_end == n - kicked,
            "{open_at_end} sessions open, expected {}",
            n - kicked
        );
        ensure!(
            frontend.uid_count() == open_at_end,
            "uid index has {} uids for {open_at_end} sessions",
            frontend.uid_count()
        );
        ensure!(
            counters.conflicts.load(Ordering::Relaxed) == conflicts_expected,
            "conflict count"
        );

        Ok((kicked, open_at_end))
    }

    /// Pushes pipelined on one connection; returns pushes per second.
    async fn pipelined_throughput(&self, count: usize) -> anyhow::Result<f64> {
        let (a, sids, kick_every) = (&self.a, &self.sids, KICK_EVERY);
        let client_a = a.client("connector-1")?;
        let live: Vec<_> = sids
            .iter()
            .enumerate()
            .filter(|(i, _)| i % kick_every != 0)
            .map(|(_, s)| *s)
            .collect();
        let t = Instant::now();
        let window = 4096;
        let mut inflight = std::collections::VecDeque::with_capacity(window);
        for k in 0..count {
            if inflight.len() == window {
                let p: session_proxy::backend::PendingCall<Push> =
                    inflight.pop_front().context("window is full")?;
                p.response().await?;
            }
            inflight.push_back(
                client_a
                    .send(Push {
                        sid: live[k % live.len()],
                        writes: vec![KeyWrite {
                            key: "tick".into(),
                            value: Some(rmp_bytes(&(k as u64))),
                            expect: Precondition::Any,
                        }],
                    })
                    .await?,
            );
        }
        for p in inflight {
            p.response().await?;
        }
        let pipelined_per_sec = count as f64 / t.elapsed().as_secs_f64();

        Ok(pipelined_per_sec)
    }

    /// Backends drain first, so no connection is reported lost.
    async fn stop(mut self) {
        let drain = Duration::from_secs(2);
        self.backends_node.drain(drain).await;
        self.frontend_node.drain(drain).await;
        drop(self.owners);
    }
}

fn rmp_bytes<T: serde::Serialize + ?Sized>(v: &T) -> bytes::Bytes {
    bytes::Bytes::from(rmp_serde::to_vec_named(v).expect("demo values always encode"))
}

fn decode<T: serde::de::DeserializeOwned>(
    s: &session_proxy::protocol::SessionSnapshot,
    key: &str,
) -> anyhow::Result<T> {
    let setting = s
        .settings
        .get(key)
        .with_context(|| format!("key {key} missing"))?;
    rmp_serde::from_slice(&setting.value).with_context(|| format!("key {key} does not decode"))
}
