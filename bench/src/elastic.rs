//! `session-proxy bench elastic`: a soak that scales frontend and backend
//! processes in and out under load, on a schedule, for N minutes.
//!
//! Every node is a `session-proxy run --role …` process registered in one
//! redis-server, which is also the session store. Clients pick their
//! connector from the registry as a gate does (the least loaded active
//! one), write a counter of their own at a steady pace, and on losing their
//! connection (a drain's `"reconnect"` kick) pick again and resume with
//! their token: each is a `session_proxy_client::SessionClient`. The schedule repeats: add a frontend, add a backend, drain
//! (SIGTERM) the oldest frontend, drain the oldest backend.

use super::soak::{free_port, start_redis, stop};
use anyhow::Context;
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use session_proxy_client::{ClientError, Entry, ResumeEvent, ResumeOptions, SessionClient};
use session_proxy_protocol::sync::LockUnpoisoned as _;
use session_proxy_registry::{Membership, RedisMembership, RedisMembershipConfig};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};
use tokio::sync::watch;

/// A request with no answer for this long counts as never answered.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// What to run.
#[derive(Clone, Debug)]
pub struct ElasticOptions {
    /// This `session-proxy` binary.
    pub binary: PathBuf,
    /// The `redis-server` binary (registry and session store).
    pub redis_server: PathBuf,
    /// Load clients.
    pub clients: usize,
    /// How long to run.
    pub duration: Duration,
    /// Time between two scaling events.
    pub every: Duration,
    /// Each node's drain limit (`--drain-secs`).
    pub drain: Duration,
    /// Time between two writes of one client.
    pub pace: Duration,
}

/// What the soak saw.
#[derive(Debug, Default)]
pub struct ElasticReport {
    /// Requests answered with a result.
    pub ok: u64,
    /// Requests answered with an error response.
    pub error_responses: u64,
    /// Requests with no answer within 10 s (must be 0).
    pub unanswered: u64,
    /// Requests whose connection closed before their answer (a kick): the
    /// client does not know whether they were applied.
    pub interrupted: u64,
    /// Sessions resumed on another (or the same) frontend with their token.
    pub resumes_ok: u64,
    /// Resumes refused (the client starts a new session).
    pub resumes_failed: u64,
    /// Acknowledged writes found again after a resume or at the end.
    pub writes_checked: u64,
    /// Acknowledged writes missing after a resume or at the end (must be 0).
    pub writes_lost: u64,
    /// From a lost connection (the client's reconnect notice) to the
    /// resumed session: p50, p99, max (ms).
    pub reconnect_ms: (u64, u64, u64),
    /// From SIGTERM to exit, per drained node (ms), and exit codes other
    /// than 0.
    pub sigterm_to_exit_ms: Vec<u64>,
    /// Drained nodes that did not exit 0.
    pub bad_exits: u64,
    /// Scaling events run.
    pub events: Vec<String>,
}

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    errors: AtomicU64,
    unanswered: AtomicU64,
    interrupted: AtomicU64,
    resumes_ok: AtomicU64,
    resumes_failed: AtomicU64,
    checked: AtomicU64,
    lost: AtomicU64,
}

/// One node process.
struct Node {
    id: String,
    child: Child,
}

impl Node {
    /// Starts `session-proxy run` with `args`; returns once it says ready.
    async fn start(binary: &PathBuf, id: &str, args: &[String]) -> anyhow::Result<Node> {
        let mut child = Command::new(binary)
            // The bench app's routes, asked for by name.
            .env("SESSION_PROXY_APP", "bench")
            .arg("run")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {id}"))?;
        super::soak::until_ready(&mut child, id).await?;
        Ok(Node {
            id: id.to_string(),
            child,
        })
    }

    /// SIGTERM by PID; waits for the exit (up to `limit` plus a margin,
    /// then SIGKILL). Returns the time to exit and whether it exited 0.
    async fn drain(mut self, limit: Duration) -> (Duration, bool) {
        let started = Instant::now();
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status();
        }
        match tokio::time::timeout(limit + Duration::from_secs(5), self.child.wait()).await {
            Ok(Ok(status)) => (started.elapsed(), status.success()),
            _ => {
                let _ = self.child.kill().await;
                (started.elapsed(), false)
            }
        }
    }
}

/// What a client's event task saw since the client last looked.
#[derive(Default)]
struct Seen {
    /// The session came back: check the last acknowledged write.
    resumed: bool,
    /// A new session started: nothing acknowledged is there to check.
    fresh: bool,
    /// The client is closed (kicked, or it gave up): connect anew.
    ended: bool,
}

/// Reads a client's events as they come: the time from a lost connection to
/// the resumed session, resumes ok and failed.
async fn watch_events(
    c: SessionClient,
    seen: Arc<Mutex<Seen>>,
    t: Arc<Tally>,
    reconnects: Arc<Mutex<Histogram<u64>>>,
    end: Instant,
) {
    let mut lost_at: Option<Instant> = None;
    while Instant::now() < end {
        let Some(event) = c.next_event(Duration::from_millis(200)).await else {
            continue;
        };
        match event {
            ResumeEvent::Reconnecting { attempt: 1, .. } => lost_at = Some(Instant::now()),
            ResumeEvent::Session { resumed: true, .. } => {
                if let Some(at) = lost_at.take() {
                    t.resumes_ok.fetch_add(1, Ordering::Relaxed);
                    let ms = u64::try_from(at.elapsed().as_millis()).unwrap_or(u64::MAX);
                    let _ = reconnects.lock_unpoisoned().record(ms.max(1));
                }
                seen.lock_unpoisoned().resumed = true;
            }
            ResumeEvent::Session { resumed: false, .. } => {
                if lost_at.take().is_some() {
                    t.resumes_failed.fetch_add(1, Ordering::Relaxed);
                }
                seen.lock_unpoisoned().fresh = true;
            }
            ResumeEvent::Kicked { .. } | ResumeEvent::GaveUp { .. } => {
                t.resumes_failed.fetch_add(1, Ordering::Relaxed);
                seen.lock_unpoisoned().ended = true;
                return;
            }
            _ => {}
        }
    }
}

/// A client: a counter of its own, written at `pace`, checked after each
/// resume. It is a `SessionClient` that picks its connector from the
/// registry as a gate does (the least loaded active one) and resumes on its
/// own; a task of its own reads its events.
async fn client(
    i: usize,
    members: watch::Receiver<session_proxy_registry::Members>,
    o: Arc<ElasticOptions>,
    end: Instant,
    t: Arc<Tally>,
    reconnects: Arc<Mutex<Histogram<u64>>>,
) {
    let key = format!("c{i}");
    let entry = Entry::Pick(Arc::new(move || {
        members
            .borrow()
            .pick_frontend("connector")
            .and_then(|r| r.client_addr.as_deref()?.parse::<SocketAddr>().ok())
    }));
    let mut options = ResumeOptions::default();
    options.client.request_timeout = ANSWER_WITHIN;
    options.attempts = 100;
    options.min_delay = Duration::from_millis(50);
    options.max_delay = Duration::from_secs(1);
    let mut acked: Option<u64> = None;
    let mut n = 0u64;
    let mut conn: Option<(SessionClient, Arc<Mutex<Seen>>)> = None;
    while Instant::now() < end {
        let (c, seen) = match &conn {
            Some(c) => c,
            None => match SessionClient::connect(entry.clone(), options.clone()).await {
                Ok(c) => {
                    acked = None;
                    let seen = Arc::new(Mutex::new(Seen::default()));
                    let events =
                        watch_events(c.clone(), seen.clone(), t.clone(), reconnects.clone(), end);
                    tokio::spawn(events);
                    conn.insert((c, seen))
                }
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let now = std::mem::take(&mut *seen.lock_unpoisoned());
        if now.ended {
            conn = None;
            continue;
        }
        if now.fresh {
            acked = None;
        }
        // What was acknowledged before is still there.
        if let (true, Some(want)) = (now.resumed, acked) {
            match read(c, &key).await {
                Some(v) if v >= want => t.checked.fetch_add(1, Ordering::Relaxed),
                _ => t.lost.fetch_add(1, Ordering::Relaxed),
            };
        }
        n += 1;
        let set = json!({ "key": key, "value": n });
        match c.request("chat.benchHandler.set", &set).await {
            Ok(v) if v["code"] == 200 => {
                acked = Some(n);
                t.ok.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(o.pace).await;
            }
            Ok(_) => {
                t.errors.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(o.pace).await;
            }
            Err(ClientError::Timeout { .. }) => {
                t.unanswered.fetch_add(1, Ordering::Relaxed);
            }
            // The connection closed under it (a kick): not known whether
            // it was applied; the client resumes by itself.
            Err(_) => {
                t.interrupted.fetch_add(1, Ordering::Relaxed);
                if c.is_closed() {
                    conn = None;
                }
            }
        }
    }
    // The last acknowledged write, read back on the session as it ends.
    if let (Some((c, _)), Some(want)) = (&conn, acked) {
        match read(c, &key).await {
            Some(v) if v >= want => t.checked.fetch_add(1, Ordering::Relaxed),
            _ => t.lost.fetch_add(1, Ordering::Relaxed),
        };
    }
}

async fn read(c: &SessionClient, key: &str) -> Option<u64> {
    for _ in 0..20 {
        let get = json!({ "key": key });
        match c.request("chat.benchHandler.get", &get).await {
            Ok(v) if v["code"] == 200 => return v["value"].as_u64(),
            Ok(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(_) => return None,
        }
    }
    None
}

fn frontend_args(id: &str, url: &str, drain: Duration) -> anyhow::Result<Vec<String>> {
    let (rpc, clients) = (free_port()?, free_port()?);
    Ok([
        "--role",
        "frontend",
        "--id",
        id,
        "--type",
        "connector",
        "--rpc-addr",
        &format!("127.0.0.1:{rpc}"),
        "--client-addr",
        &format!("127.0.0.1:{clients}"),
        "--registry",
        url,
        "--redis",
        url,
        "--lease-secs",
        "3",
        "--drain-secs",
        &drain.as_secs().max(1).to_string(),
        "--max-connections-per-ip",
        "100000",
    ]
    .map(str::to_string)
    .to_vec())
}

fn backend_args(id: &str, url: &str) -> Vec<String> {
    [
        "--role",
        "backend",
        "--id",
        id,
        "--type",
        "chat",
        "--registry",
        url,
        "--lease-secs",
        "3",
    ]
    .map(str::to_string)
    .to_vec()
}

/// Runs the soak.
pub async fn elastic(o: ElasticOptions) -> anyhow::Result<ElasticReport> {
    let o = Arc::new(o);
    let port = free_port()?;
    let mut redis = start_redis(&o.redis_server, port).await?;
    let url = format!("redis://127.0.0.1:{port}/0");
    let run = run(o.clone(), &url).await;
    stop(&mut redis);
    run
}

async fn run(o: Arc<ElasticOptions>, url: &str) -> anyhow::Result<ElasticReport> {
    let mut config = RedisMembershipConfig::new(url);
    config.resync = Duration::from_millis(500);
    let registry = RedisMembership::connect(config)
        .await
        .context("reading the registry")?;
    let (mut next_front, mut next_back) = (1, 1);
    let mut fronts = VecDeque::new();
    let mut backs = VecDeque::new();
    for _ in 0..2 {
        let id = format!("connector-{next_front}");
        next_front += 1;
        fronts.push_back(Node::start(&o.binary, &id, &frontend_args(&id, url, o.drain)?).await?);
        let id = format!("chat-{next_back}");
        next_back += 1;
        backs.push_back(Node::start(&o.binary, &id, &backend_args(&id, url)).await?);
    }
    // Both frontends active (a backend has dialled each).
    let mut members = registry.watch();
    tokio::time::timeout(
        Duration::from_secs(10),
        members.wait_for(|m| {
            m.frontends()
                .filter(|r| r.state == session_proxy_registry::NodeState::Active)
                .count()
                == 2
        }),
    )
    .await
    .context("the frontends did not turn active")??;

    let tally = Arc::new(Tally::default());
    let reconnects = Arc::new(Mutex::new(Histogram::<u64>::new(3)?));
    let started = Instant::now();
    let end = started + o.duration;
    let clients: Vec<_> = (0..o.clients)
        .map(|i| {
            tokio::spawn(client(
                i,
                registry.watch(),
                o.clone(),
                end,
                tally.clone(),
                reconnects.clone(),
            ))
        })
        .collect();
    let mut report = ElasticReport::default();
    let mut drains = Vec::new();
    let mut step = 0usize;
    let mut next_event = Instant::now() + o.every;
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(250)).await;
        eprint!(
            "\relastic {:>4}/{} s  ok {}  errors {}  unanswered {}  resumes {} ok / {} failed  lost {}  nodes {}+{}   ",
            started.elapsed().as_secs(),
            o.duration.as_secs(),
            tally.ok.load(Ordering::Relaxed),
            tally.errors.load(Ordering::Relaxed),
            tally.unanswered.load(Ordering::Relaxed),
            tally.resumes_ok.load(Ordering::Relaxed),
            tally.resumes_failed.load(Ordering::Relaxed),
            tally.lost.load(Ordering::Relaxed),
            fronts.len(),
            backs.len(),
        );
        // No event in the last stretch: the drains must end in the run.
        if Instant::now() < next_event || Instant::now() + o.drain + o.every / 2 > end {
            continue;
        }
        next_event = Instant::now() + o.every;
        let elapsed = started.elapsed().as_secs();
        match step % 4 {
            0 => {
                let id = format!("connector-{next_front}");
                next_front += 1;
                fronts.push_back(
                    Node::start(&o.binary, &id, &frontend_args(&id, url, o.drain)?).await?,
                );
                report.events.push(format!("{elapsed} s: + {id}"));
            }
            1 => {
                let id = format!("chat-{next_back}");
                next_back += 1;
                backs.push_back(Node::start(&o.binary, &id, &backend_args(&id, url)).await?);
                report.events.push(format!("{elapsed} s: + {id}"));
            }
            2 if fronts.len() > 1 => {
                if let Some(node) = fronts.pop_front() {
                    report
                        .events
                        .push(format!("{elapsed} s: - {} (SIGTERM)", node.id));
                    drains.push(tokio::spawn(node.drain(o.drain)));
                }
            }
            3 if backs.len() > 1 => {
                if let Some(node) = backs.pop_front() {
                    report
                        .events
                        .push(format!("{elapsed} s: - {} (SIGTERM)", node.id));
                    drains.push(tokio::spawn(node.drain(o.drain)));
                }
            }
            _ => {}
        }
        step += 1;
    }
    eprintln!();
    for c in clients {
        c.await?;
    }
    for d in drains {
        let (took, ok) = d.await?;
        report
            .sigterm_to_exit_ms
            .push(u64::try_from(took.as_millis()).unwrap_or(u64::MAX));
        if !ok {
            report.bad_exits += 1;
        }
    }
    for mut node in fronts.into_iter().chain(backs) {
        let _ = node.child.kill().await;
    }
    report.ok = tally.ok.load(Ordering::Relaxed);
    report.error_responses = tally.errors.load(Ordering::Relaxed);
    report.unanswered = tally.unanswered.load(Ordering::Relaxed);
    report.interrupted = tally.interrupted.load(Ordering::Relaxed);
    report.resumes_ok = tally.resumes_ok.load(Ordering::Relaxed);
    report.resumes_failed = tally.resumes_failed.load(Ordering::Relaxed);
    report.writes_checked = tally.checked.load(Ordering::Relaxed);
    report.writes_lost = tally.lost.load(Ordering::Relaxed);
    let h = reconnects.lock_unpoisoned();
    report.reconnect_ms = (h.value_at_quantile(0.5), h.value_at_quantile(0.99), h.max());
    Ok(report)
}

/// The report as one JSON object.
pub fn to_json(r: &ElasticReport) -> Value {
    json!({
        "ok": r.ok,
        "error_responses": r.error_responses,
        "unanswered": r.unanswered,
        "interrupted": r.interrupted,
        "resumes_ok": r.resumes_ok,
        "resumes_failed": r.resumes_failed,
        "acknowledged_writes_checked": r.writes_checked,
        "acknowledged_writes_lost": r.writes_lost,
        "reconnect_to_resumed_ms": { "p50": r.reconnect_ms.0, "p99": r.reconnect_ms.1, "max": r.reconnect_ms.2 },
        "sigterm_to_exit_ms": r.sigterm_to_exit_ms,
        "bad_exits": r.bad_exits,
        "events": r.events,
    })
}
