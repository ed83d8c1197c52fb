//! The demo cluster: one frontend and two backends in one process, on
//! loopback ports, working the same sessions at once.
//!
//! It binds, pushes, `push_all`s, provokes a real conditional-push conflict
//! and kicks, all concurrently from both backends, then checks the
//! frontend's final state key by key and reports what it measured.

use crate::{
    BackendSessionService, ClientConfig, ConnectInfo, ErrorCode, Outbound, RpcConfig, RpcServer,
    SessionConfig, SessionOwner, SessionService,
};
use anyhow::{bail, ensure, Context};
use hdrhistogram::Histogram;
use session_proxy_protocol::{Call, KeyWrite, Precondition};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// Demo settings.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct DemoConfig {
    /// Sessions to create. Default: 2000.
    pub sessions: usize,
    /// Concurrent workers per backend in the latency phase. Default: 8.
    pub workers: usize,
    /// Pushes sent pipelined on one connection in the throughput phase.
    /// Default: 200 000.
    pub pipelined: usize,
    /// Simulated players in the chat phase (half TCP, half WebSocket).
    /// Default: 200.
    pub players: usize,
    /// Chat messages each player sends. Default: 20.
    pub messages: usize,
}

impl Default for DemoConfig {
    fn default() -> Self {
        DemoConfig {
            sessions: 2000,
            workers: 8,
            pipelined: 200_000,
            players: 200,
            messages: 20,
        }
    }
}

/// What the demo measured.
#[derive(Debug)]
#[non_exhaustive]
pub struct DemoReport {
    /// Sessions created.
    pub sessions: usize,
    /// Sessions still open at the end (the rest were kicked).
    pub open_at_end: usize,
    /// Successful backend operations, all phases.
    pub operations: u64,
    /// Conditional pushes refused with a conflict, as provoked.
    pub conflicts: u64,
    /// Sessions kicked.
    pub kicked: usize,
    /// Wall time of the concurrent phase.
    pub concurrent_elapsed: Duration,
    /// Pipelined pushes per second on one connection.
    pub pipelined_per_sec: f64,
    /// Push round-trip latency percentiles (p50, p99, max), microseconds.
    pub push_latency_us: (u64, u64, u64),
    /// The chat phase.
    pub chat: ChatReport,
}

/// What the chat phase measured.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct ChatReport {
    /// Players that joined (through the gate, then a connector).
    pub players: usize,
    /// Rooms.
    pub rooms: usize,
    /// Chat requests answered.
    pub requests: u64,
    /// `onChat` pushes received, all exactly as expected.
    pub pushes: u64,
    /// Wall time of the chat traffic.
    pub elapsed: Duration,
    /// Request round trip (client -> connector -> chat server -> client),
    /// percentiles (p50, p99), microseconds.
    pub request_latency_us: (u64, u64),
}

impl std::fmt::Display for DemoReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.concurrent_elapsed.as_secs_f64();
        writeln!(
            f,
            "session-proxy demo: 1 frontend, 2 backends, loopback TCP"
        )?;
        writeln!(
            f,
            "  sessions          {} created, {} kicked, {} open at the end",
            self.sessions, self.kicked, self.open_at_end
        )?;
        writeln!(
            f,
            "  operations        {} (bind, push, push_all, conditional push, get, kick)",
            self.operations
        )?;
        writeln!(
            f,
            "  concurrent phase  {:.2} s, {:.0} ops/s",
            secs,
            self.operations as f64 / secs.max(1e-9)
        )?;
        writeln!(
            f,
            "  push latency      p50 {} µs, p99 {} µs, max {} µs (one call at a time per worker)",
            self.push_latency_us.0, self.push_latency_us.1, self.push_latency_us.2
        )?;
        writeln!(
            f,
            "  pipelined pushes  {:.0} ops/s on one connection",
            self.pipelined_per_sec
        )?;
        writeln!(
            f,
            "  conflicts         {} conditional pushes refused, as provoked",
            self.conflicts
        )?;
        writeln!(
            f,
            "  final state       checked: every key, uid and kick as expected"
        )?;
        let c = &self.chat;
        writeln!(
            f,
            "chat phase: gate + 2 connectors + 2 chat servers, Pomelo protocol clients"
        )?;
        writeln!(
            f,
            "  players           {} in {} rooms (half TCP, half WebSocket)",
            c.players, c.rooms
        )?;
        writeln!(
            f,
            "  chat requests     {} in {:.2} s, {:.0} req/s",
            c.requests,
            c.elapsed.as_secs_f64(),
            c.requests as f64 / c.elapsed.as_secs_f64().max(1e-9)
        )?;
        writeln!(
            f,
            "  request latency   p50 {} µs, p99 {} µs",
            c.request_latency_us.0, c.request_latency_us.1
        )?;
        write!(
            f,
            "  onChat pushes     {} delivered, each player got every message of its room once",
            c.pushes
        )
    }
}

struct Counters {
    ops: std::sync::atomic::AtomicU64,
    conflicts: std::sync::atomic::AtomicU64,
}

impl Counters {
    fn op(&self) {
        self.ops.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Runs the demo and checks the result. Errors name the first check that failed.
pub async fn run(config: DemoConfig) -> anyhow::Result<DemoReport> {
    ensure!(config.sessions >= 20, "the demo needs at least 20 sessions");
    let frontend = SessionService::new(SessionConfig::new("connector-1"));
    let server = RpcServer::bind(
        "127.0.0.1:0".parse()?,
        frontend.clone(),
        RpcConfig::default(),
    )
    .await
    .context("starting the frontend's RPC server")?;
    let addr = server.local_addr().to_string();

    let mut owners: Vec<SessionOwner> = (0..config.sessions)
        .map(|i| {
            let mut info = ConnectInfo::default();
            info.metadata.insert("client".into(), format!("demo-{i}"));
            frontend.create(info)
        })
        .collect();
    let sids: Arc<Vec<_>> = Arc::new(owners.iter().map(|o| o.sid()).collect());

    let a = BackendSessionService::new(ClientConfig::new("backend-a"));
    let b = BackendSessionService::new(ClientConfig::new("backend-b"));
    a.add_frontend("connector-1", addr.clone());
    b.add_frontend("connector-1", addr.clone());

    let counters = Arc::new(Counters {
        ops: 0.into(),
        conflicts: 0.into(),
    });
    let latency = Arc::new(Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).context("histogram bounds")?,
    ));

    // Every tenth session is kicked by backend B while the others work.
    let kick_every = 10;
    let n = config.sessions;
    let per_worker = n.div_ceil(config.workers);
    let started = Instant::now();
    // Backend B's proxies, one slice per worker, fetched up front.
    let mut b_sessions = Vec::with_capacity(config.workers);
    for w in (0..config.workers).rev() {
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
    for w in 0..config.workers {
        // Backend A: binds, then pushes "room" and "shared" one call at a
        // time, recording round-trip latency.
        let (a, sids, c, latency) = (a.clone(), sids.clone(), counters.clone(), latency.clone());
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
    let conflicts_expected = conflict_sessions.len() as u64;
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
                        counters
                            .conflicts
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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

    // Finally B overwrites "shared" on every open session, in one pipelined burst.
    let client_b = b.client("connector-1")?;
    let mut pending = Vec::new();
    for (i, sid) in sids.iter().enumerate() {
        if i % kick_every == 0 {
            continue;
        }
        pending.push(
            client_b
                .send(Call::Push {
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
    let concurrent_elapsed = started.elapsed();

    // Check the frontend's state.
    let mut kicked = 0;
    for (i, owner) in owners.iter_mut().enumerate() {
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
        counters
            .conflicts
            .load(std::sync::atomic::Ordering::Relaxed)
            == conflicts_expected,
        "conflict count"
    );

    // Throughput: pushes pipelined on one connection.
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
    for k in 0..config.pipelined {
        if inflight.len() == window {
            let p: session_proxy_backend::PendingCall =
                inflight.pop_front().context("window is full")?;
            p.response().await?;
        }
        inflight.push_back(
            client_a
                .send(Call::Push {
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
    let pipelined_per_sec = config.pipelined as f64 / t.elapsed().as_secs_f64();

    let h = latency.lock().await;
    let report = DemoReport {
        sessions: n,
        open_at_end,
        operations: counters.ops.load(std::sync::atomic::Ordering::Relaxed),
        conflicts: counters
            .conflicts
            .load(std::sync::atomic::Ordering::Relaxed),
        kicked,
        concurrent_elapsed,
        pipelined_per_sec,
        push_latency_us: (h.value_at_quantile(0.5), h.value_at_quantile(0.99), h.max()),
        chat: ChatReport::default(),
    };
    // Backends leave first, so no connection is reported lost.
    drop((a, b, client_a, client_b));
    tokio::task::yield_now().await;
    drop(owners);
    server.shutdown(Duration::from_secs(2)).await;
    let mut report = report;
    report.chat = run_chat(&config).await.context("chat phase")?;
    Ok(report)
}

/// Starts the chat example cluster and drives it with simulated players.
async fn run_chat(config: &DemoConfig) -> anyhow::Result<ChatReport> {
    use crate::chat::{ChatCluster, ChatConfig};
    use crate::client::{ClientEvent, ClientOptions, PomeloClient, Transport};
    use serde_json::json;

    let mut chat_config = ChatConfig::ephemeral();
    // Every simulated player connects from 127.0.0.1.
    chat_config.max_connections_per_ip = config.players.max(2) + 16;
    let cluster = ChatCluster::start(chat_config).await?;
    let gate = cluster.gate_addr();
    let players = config.players.max(2);
    let rooms = (players / 20).max(1);
    let mut joined = Vec::with_capacity(players);
    for i in 0..players {
        let g = PomeloClient::connect(gate).await?;
        let name = format!("player{i}");
        let entry = g
            .request("gate.gateHandler.queryEntry", &json!({ "uid": name }))
            .await?;
        ensure!(entry["code"] == 200, "gate answered {entry}");
        let addr: std::net::SocketAddr = format!(
            "{}:{}",
            entry["host"].as_str().unwrap_or_default(),
            entry["port"]
        )
        .parse()?;
        let options = ClientOptions {
            transport: if i % 2 == 0 {
                Transport::Tcp
            } else {
                Transport::WebSocket
            },
            ..ClientOptions::default()
        };
        let c = PomeloClient::connect_with(addr, options).await?;
        let answer = c
            .request(
                "connector.entryHandler.enter",
                &json!({ "username": name, "rid": format!("room{}", i % rooms) }),
            )
            .await?;
        ensure!(answer["users"].is_array(), "enter answered {answer}");
        joined.push((i % rooms, c));
    }
    // Let the last onAdd pushes arrive, then forget them.
    tokio::time::sleep(Duration::from_millis(100)).await;
    for (_, c) in joined.iter_mut() {
        while c.next_event(Duration::ZERO).await.is_some() {}
    }
    let mut room_size = vec![0usize; rooms];
    for (r, _) in &joined {
        room_size[*r] += 1;
    }
    let messages = config.messages;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (room, mut c) in joined {
        let expected = room_size[room] * messages;
        tasks.spawn(async move {
            let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            let mut received = 0usize;
            for m in 0..messages {
                let t = Instant::now();
                let answer = c
                    .request(
                        "chat.chatHandler.send",
                        &json!({ "content": format!("m{m}"), "target": "*" }),
                    )
                    .await?;
                h.saturating_record(t.elapsed().as_micros() as u64);
                ensure!(
                    answer["route"] == "chat.chatHandler.send",
                    "send answered {answer}"
                );
            }
            while received < expected {
                match c.next_event(Duration::from_secs(10)).await {
                    Some(ClientEvent::Push { route, .. }) if route == "onChat" => received += 1,
                    Some(ClientEvent::Push { .. }) => {}
                    other => {
                        bail!("a player got {other:?} after {received} of {expected} messages")
                    }
                }
            }
            if let Some(extra) = c.next_event(Duration::from_millis(50)).await {
                bail!("a player got {extra:?} after all {expected} messages of its room");
            }
            // Keep the connection: a player leaving would push onLeave to
            // the others while they are still counting.
            anyhow::Ok((h, received as u64, c))
        });
    }
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut pushes = 0;
    let mut done = Vec::with_capacity(players);
    while let Some(res) = tasks.join_next().await {
        let (h, n, c) = res.context("a player task panicked")??;
        all.add(&h)?;
        pushes += n;
        done.push(c);
    }
    drop(done);
    let elapsed = started.elapsed();
    cluster.shutdown(Duration::from_secs(2)).await;
    Ok(ChatReport {
        players,
        rooms,
        requests: (players * messages) as u64,
        pushes,
        elapsed,
        request_latency_us: (all.value_at_quantile(0.5), all.value_at_quantile(0.99)),
    })
}

fn rmp_bytes<T: serde::Serialize + ?Sized>(v: &T) -> bytes::Bytes {
    bytes::Bytes::from(rmp_serde::to_vec_named(v).expect("demo values always encode"))
}

fn decode<T: serde::de::DeserializeOwned>(
    s: &session_proxy_protocol::SessionSnapshot,
    key: &str,
) -> anyhow::Result<T> {
    let setting = s
        .settings
        .get(key)
        .with_context(|| format!("key {key} missing"))?;
    rmp_serde::from_slice(&setting.value).with_context(|| format!("key {key} does not decode"))
}
