//! `session-proxy bench faults`: the cluster under real network faults.
//!
//! Each run builds hosts in network namespaces of their own ([`net`]):
//! Redis (store and registry), two frontends, two backends and the
//! players, every node a `session-proxy run` process. Players write
//! counters to their sessions and read them back while the run's scenario
//! ([`scenario`], drawn from its seed) partitions, drops packets, pauses,
//! drains and kills. Then every fault is healed, the cluster settles, each
//! player reads its counter once more, and the history goes through the
//! Jepsen-style checker of `session_proxy_faults`: no acknowledged write
//! lost, no stale read, every request answered or failed in time.

mod clock;
mod cluster;
mod link;
pub mod net;
mod players;
mod redis;
pub mod scenario;

use anyhow::Context;
use cluster::Cluster;
use net::Net;
use players::drive;
use scenario::{Plan, Scenario};
use serde_json::{json, Value};
use session_proxy_faults::{check, Outcome, Violation};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A request's deadline; the checker allows [`SLACK`] past it.
const DEADLINE: Duration = Duration::from_secs(5);
const SLACK: Duration = Duration::from_secs(2);
/// How long the cluster may take to settle after the last fault.
const SETTLE: Duration = Duration::from_secs(30);
/// Each node's drain limit (`--drain-secs`) and lease (`--lease-secs`).
const DRAIN_SECS: u64 = 6;
const LEASE_SECS: u64 = 3;
/// The hosts of every run.
const HOSTS: [&str; 6] = ["redis", "fe1", "fe2", "be1", "be2", "client"];

/// What to run.
#[derive(Clone, Debug)]
pub struct FaultOptions {
    /// This `session-proxy` binary (the nodes).
    pub binary: PathBuf,
    /// The `redis-server` binary.
    pub redis_server: PathBuf,
    /// The `redis-cli` binary (a Redis Cluster's creation and failovers).
    pub redis_cli: PathBuf,
    /// Players writing at once.
    pub players: usize,
    /// Milliseconds between two requests of one player.
    pub pace: Duration,
    /// The scenarios (built-in ones when `None`).
    pub scenarios: Option<PathBuf>,
    /// Write each run's history here, as `seed-N.jsonl` (one operation a
    /// line), for a look at what the checker saw.
    pub histories: Option<PathBuf>,
}

/// What one run saw.
#[derive(Clone, Debug)]
pub struct RunReport {
    /// The run's seed (replay it with `--seed`).
    pub seed: u64,
    /// The scenario it drew.
    pub scenario: String,
    /// Operations recorded.
    pub operations: usize,
    /// Operations acknowledged.
    pub acknowledged: usize,
    /// Operations that failed with a typed error (allowed under faults).
    pub failed: usize,
    /// What the checker found (nothing, when every promise held).
    pub violations: Vec<Violation>,
    /// How long the run took.
    pub took: Duration,
}

impl RunReport {
    /// One line for people.
    pub fn line(&self) -> String {
        format!(
            "seed {:>6}  {:<50}  {:>6} ops  {:>6} acked  {:>5} failed  {} violations  {:.1} s",
            self.seed,
            self.scenario,
            self.operations,
            self.acknowledged,
            self.failed,
            self.violations.len(),
            self.took.as_secs_f64()
        )
    }

    /// The run as JSON.
    pub fn to_json(&self) -> Value {
        json!({
            "seed": self.seed,
            "scenario": self.scenario,
            "operations": self.operations,
            "acknowledged": self.acknowledged,
            "failed": self.failed,
            "violations": self.violations.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "took_secs": self.took.as_secs_f64(),
        })
    }
}

/// The scenarios `o` names (or the built-in ones).
pub fn scenarios(o: &FaultOptions) -> anyhow::Result<Vec<Scenario>> {
    match &o.scenarios {
        Some(path) => scenario::parse(
            &std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?,
        ),
        None => scenario::parse(scenario::BUILT_IN),
    }
}

/// Runs the plan of `seed`, on hosts of its own. Blocks the calling thread
/// (the players run on a runtime of their own, inside the players' network
/// namespace).
pub fn run_seed(o: &FaultOptions, all: &[Scenario], seed: u64) -> anyhow::Result<RunReport> {
    net::available().map_err(anyhow::Error::msg)?;
    let plan = scenario::plan(all, seed);
    static RUNS: AtomicU64 = AtomicU64::new(0);
    let tag = RUNS.fetch_add(1, Ordering::Relaxed);
    let net = Arc::new(Net::create(&tag.to_string(), &HOSTS)?);
    let client_ns = net.host("client")?.ns.clone();
    let o = o.clone();
    let inner = net.clone();
    let thread = std::thread::Builder::new()
        .name(format!("faults-{seed}"))
        .spawn(move || -> anyhow::Result<RunReport> {
            // This thread, and the runtime's threads it starts, are the
            // players' host: every socket they open is in its namespace.
            let ns = std::fs::File::open(format!("/run/netns/{client_ns}"))
                .context("the players' namespace")?;
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                .context("entering the players' namespace")?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            runtime.block_on(run(&o, &inner, plan))
        })?;
    let report = thread
        .join()
        .map_err(|_| anyhow::anyhow!("the run of seed {seed} panicked"))?;
    // The namespaces go once the run's processes are gone.
    drop(net);
    report
}

async fn run(o: &FaultOptions, net: &Net, plan: Plan) -> anyhow::Result<RunReport> {
    let started = Instant::now();
    let mut cluster = Cluster::start(o, net, plan.cluster).await?;
    let outcome = drive(o, &mut cluster, &plan).await;
    cluster.stop().await;
    let history = outcome?;
    if let Some(dir) = &o.histories {
        std::fs::create_dir_all(dir)?;
        std::fs::write(
            dir.join(format!("seed-{}.jsonl", plan.seed)),
            history.to_json_lines(),
        )?;
    }
    let events = history.events();
    let violations = check(&events, SLACK);
    Ok(RunReport {
        seed: plan.seed,
        scenario: plan.scenario.clone(),
        operations: events.len(),
        acknowledged: events.iter().filter(|e| e.outcome == Outcome::Ok).count(),
        failed: events
            .iter()
            .filter(|e| matches!(e.outcome, Outcome::Failed { .. }))
            .count(),
        violations,
        took: started.elapsed(),
    })
}
