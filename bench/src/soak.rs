//! A bounded soak: steady load on a connector and a chat backend (real
//! processes from a cluster file) while the backend is SIGKILLed and
//! restarted every few seconds and, optionally, the session store's
//! redis-server too (restarted empty). Samples the connector's memory,
//! counts answers, errors and requests never answered, and checks at the
//! end that every acknowledged write is there: with a store, after the
//! connector itself is SIGKILLed and restarted and every client resumes.

use super::idle::rss_kib;
use super::load::Conn;
use anyhow::{bail, Context};
use serde_json::{json, Value};
use session_proxy_client::Transport;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A request with no answer for this long counts as unanswered (the
/// connector's own forwarding deadline is 5 s).
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// Store faults: a redis-server the soak starts on a free loopback port and
/// SIGKILLs on a schedule.
#[derive(Clone, Debug)]
pub struct RedisFaults {
    /// The `redis-server` binary.
    pub binary: PathBuf,
    /// Time between kills.
    pub every: Duration,
    /// How long it stays down before it starts again, empty.
    pub down: Duration,
}

/// What to run.
#[derive(Clone, Debug)]
pub struct SoakOptions {
    /// This `session-proxy` binary.
    pub binary: PathBuf,
    /// The cluster file (nodes `connector-1` and `chat-1`).
    pub config: PathBuf,
    /// The connector's client address.
    pub target: SocketAddr,
    /// Load clients.
    pub clients: usize,
    /// How long to run.
    pub duration: Duration,
    /// Time between backend kills.
    pub kill_every: Duration,
    /// Store faults, if any (the connector then keeps its sessions there).
    pub redis: Option<RedisFaults>,
}

/// What the soak saw.
#[derive(Debug, Default)]
pub struct SoakReport {
    /// (seconds since start, connector RSS KiB).
    pub memory: Vec<(u64, u64)>,
    /// Requests answered with a result.
    pub ok: u64,
    /// Requests answered with an error response (backend down, deadline,
    /// store down: applied, not yet durable).
    pub error_responses: u64,
    /// Requests with no answer within 10 s (must be 0).
    pub unanswered: u64,
    /// Connections lost by the load clients (then reconnected).
    pub reconnects: u64,
    /// Backend kills.
    pub kills: u64,
    /// Store kills.
    pub store_kills: u64,
    /// After each store restart, how long until a write was acknowledged
    /// again.
    pub store_recovery: Vec<Duration>,
    /// Writes acknowledged and later read back intact.
    pub acknowledged_writes_checked: u64,
    /// Acknowledged writes missing at the end (must be 0).
    pub acknowledged_writes_lost: u64,
}

fn spawn(binary: &Path, config: &Path, node: &str) -> anyhow::Result<Child> {
    Command::new(binary)
        .args(["run", "--config"])
        .arg(config)
        .args(["--node", node])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {node}"))
}

/// Waits (20 s at most) for a `session-proxy run` process to print
/// `ready <id>`; from then on its stdout is read to the end, so it never
/// blocks on a full pipe. Kills it if it does not start.
pub(crate) async fn until_ready(child: &mut tokio::process::Child, id: &str) -> anyhow::Result<()> {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
    let ready = format!("ready {id}");
    let started = tokio::time::timeout(Duration::from_secs(20), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains(&ready) {
                return true;
            }
        }
        false
    })
    .await;
    if started != Ok(true) {
        let _ = child.start_kill();
        bail!("{id} did not start");
    }
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(())
}

pub(crate) fn stop(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// A redis-server without persistence on `port`, once it accepts.
pub(crate) async fn start_redis(binary: &Path, port: u16) -> anyhow::Result<Child> {
    let mut child = Command::new(binary)
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let until = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        if Instant::now() > until {
            stop(&mut child);
            bail!("redis-server did not come up on port {port}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(child)
}

/// A copy of the cluster file whose connector keeps sessions in Redis on
/// `port`.
fn with_store(config: &Path, port: u16) -> anyhow::Result<PathBuf> {
    let text =
        std::fs::read_to_string(config).with_context(|| format!("reading {}", config.display()))?;
    if !text.contains("[cluster]") || text.contains("\nredis") {
        bail!(
            "{}: needs a [cluster] table without a redis entry",
            config.display()
        );
    }
    let text = text.replacen(
        "[cluster]",
        &format!("[cluster]\nredis = \"redis://127.0.0.1:{port}/0\""),
        1,
    );
    let dir = std::env::temp_dir().join(format!("session-proxy-soak-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("cluster.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Counters the workers share with the main loop.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    errors: AtomicU64,
    unanswered: AtomicU64,
    reconnects: AtomicU64,
    /// Milliseconds since the start of the last acknowledged write.
    last_ack_ms: AtomicU64,
}

/// One worker's end state: its id, the last value acknowledged on its
/// current session, and that session's connection and resume token.
type WorkerEnd = (usize, Option<u64>, Option<Conn>, Option<String>);

async fn worker(
    i: usize,
    target: SocketAddr,
    end: Instant,
    started: Instant,
    t: Arc<Tally>,
) -> WorkerEnd {
    // Each worker writes its own counter; the last acknowledged value must
    // be what it reads back at the end.
    let mut acked: Option<u64> = None;
    let mut n = 0u64;
    let mut conn: Option<Conn> = None;
    while Instant::now() < end {
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match Conn::open(target, Transport::Tcp, &json!({})).await {
                Ok(c) => conn.insert(c),
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        n += 1;
        let set = json!({ "key": format!("w{i}"), "value": n });
        match tokio::time::timeout(ANSWER_WITHIN, c.request("chat.benchHandler.set", &set)).await {
            Ok(Ok(v)) if v["code"] == 200 => {
                acked = Some(n);
                t.ok.fetch_add(1, Ordering::Relaxed);
                let ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
                t.last_ack_ms.fetch_max(ms, Ordering::Relaxed);
            }
            Ok(Ok(_)) => {
                t.errors.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(_) => {
                // No answer at all: the one outcome that must never happen.
                t.unanswered.fetch_add(1, Ordering::Relaxed);
                conn = None;
                acked = None;
            }
            Ok(Err(_)) => {
                // A new connection is a new session: what the old one
                // acknowledged is not expected there.
                t.reconnects.fetch_add(1, Ordering::Relaxed);
                conn = None;
                acked = None;
            }
        }
    }
    let token = conn
        .as_ref()
        .and_then(|c| c.resume_token().map(str::to_string));
    (i, acked, conn, token)
}

/// Reads worker `i`'s counter through `c`.
async fn read_back(c: &mut Conn, i: usize) -> Option<u64> {
    for _ in 0..50 {
        let get = json!({ "key": format!("w{i}") });
        match tokio::time::timeout(ANSWER_WITHIN, c.request("chat.benchHandler.get", &get)).await {
            Ok(Ok(v)) if v["code"] == 200 => return v["value"].as_u64(),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    None
}

/// Runs the soak.
pub async fn soak(o: SoakOptions) -> anyhow::Result<SoakReport> {
    let mut redis = None;
    let config = match &o.redis {
        Some(faults) => {
            let port = free_port()?;
            redis = Some((start_redis(&faults.binary, port).await?, port));
            with_store(&o.config, port)?
        }
        None => o.config.clone(),
    };
    let mut front = spawn(&o.binary, &config, "connector-1")?;
    let mut back = spawn(&o.binary, &config, "chat-1")?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let front_pid = front.id();
    let tally = Arc::new(Tally::default());
    let started = Instant::now();
    let end = started + o.duration;
    let workers: Vec<_> = (0..o.clients)
        .map(|i| tokio::spawn(worker(i, o.target, end, started, tally.clone())))
        .collect();
    let mut report = SoakReport::default();
    let mut next_kill = Instant::now() + o.kill_every;
    let mut next_store_kill = o.redis.as_ref().map(|f| Instant::now() + f.every);
    // (when the store came back, in ms since start) until a write is acked.
    let mut recovering: Option<u64> = None;
    let mut ticks = 0u64;
    while Instant::now() < end {
        // Four checks a second (store recovery), one memory sample.
        tokio::time::sleep(Duration::from_millis(250)).await;
        ticks += 1;
        if ticks % 4 == 0 {
            if let Some(kib) = rss_kib(front_pid) {
                report.memory.push((started.elapsed().as_secs(), kib));
            }
        }
        if let Some(back_at) = recovering {
            let last = tally.last_ack_ms.load(Ordering::Relaxed);
            if last > back_at {
                report
                    .store_recovery
                    .push(Duration::from_millis(last - back_at));
                recovering = None;
            }
        }
        let soon_over = Instant::now() + Duration::from_secs(5) >= end;
        if Instant::now() >= next_kill && !soon_over {
            stop(&mut back);
            report.kills += 1;
            tokio::time::sleep(Duration::from_millis(500)).await;
            back = spawn(&o.binary, &config, "chat-1")?;
            next_kill = Instant::now() + o.kill_every;
        }
        if let (Some(at), Some(faults), Some((child, port))) =
            (next_store_kill, &o.redis, redis.as_mut())
        {
            if Instant::now() >= at && !soon_over && recovering.is_none() {
                stop(child);
                report.store_kills += 1;
                tokio::time::sleep(faults.down).await;
                *child = start_redis(&faults.binary, *port).await?;
                recovering = Some(u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX));
                next_store_kill = Some(Instant::now() + faults.every);
            }
        }
        eprint!(
            "\rsoak {:>4}/{} s  ok {}  errors {}  unanswered {}  backend kills {}  store kills {}   ",
            started.elapsed().as_secs(),
            o.duration.as_secs(),
            tally.ok.load(Ordering::Relaxed),
            tally.errors.load(Ordering::Relaxed),
            tally.unanswered.load(Ordering::Relaxed),
            report.kills,
            report.store_kills,
        );
    }
    eprintln!();
    let mut ends = Vec::new();
    for w in workers {
        ends.push(w.await?);
    }
    report.ok = tally.ok.load(Ordering::Relaxed);
    report.error_responses = tally.errors.load(Ordering::Relaxed);
    report.unanswered = tally.unanswered.load(Ordering::Relaxed);
    report.reconnects = tally.reconnects.load(Ordering::Relaxed);
    // Let the last backend come up (and the store answer again).
    tokio::time::sleep(Duration::from_secs(2)).await;
    if redis.is_some() {
        // Acknowledged means durable: the connector dies without a chance
        // to write anything more, and its successor must have it all.
        stop(&mut front);
        front = spawn(&o.binary, &config, "connector-1")?;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    for (i, acked, conn, token) in ends {
        let Some(acked) = acked else { continue };
        let mut conn = match (&redis, token) {
            (Some(_), Some(token)) => {
                let resume = json!({ "resumeToken": token });
                match Conn::open(o.target, Transport::Tcp, &resume).await {
                    Ok(c) => c,
                    Err(_) => {
                        report.acknowledged_writes_lost += 1;
                        continue;
                    }
                }
            }
            (Some(_), None) => continue,
            (None, _) => match conn {
                Some(c) => c,
                None => continue,
            },
        };
        match read_back(&mut conn, i).await {
            Some(v) if v >= acked => report.acknowledged_writes_checked += 1,
            _ => report.acknowledged_writes_lost += 1,
        }
    }
    stop(&mut back);
    stop(&mut front);
    if let Some((mut child, _)) = redis {
        stop(&mut child);
    }
    Ok(report)
}

/// The report as one JSON object.
pub fn to_json(r: &SoakReport) -> Value {
    json!({
        "ok": r.ok,
        "error_responses": r.error_responses,
        "unanswered": r.unanswered,
        "reconnects": r.reconnects,
        "backend_kills": r.kills,
        "store_kills": r.store_kills,
        "store_recovery_ms": r.store_recovery.iter().map(|d| d.as_millis() as u64).collect::<Vec<_>>(),
        "acknowledged_writes_checked": r.acknowledged_writes_checked,
        "acknowledged_writes_lost": r.acknowledged_writes_lost,
        "connector_rss_kib": r.memory,
    })
}
