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

pub mod net;
pub mod scenario;

use anyhow::{bail, Context};
use net::Net;
use scenario::{Plan, Planned, Scenario};
use serde_json::{json, Value};
use session_proxy_client::{Entry, ResumeEvent, ResumeOptions, SessionClient};
use session_proxy_faults::{check, Kind, Outcome, Recorder, Violation};
use session_proxy_registry::{Membership, NodeState, RedisMembership, RedisMembershipConfig};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Child;

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

/// One node process on a host.
struct Node {
    child: Child,
}

impl Node {
    fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    fn signal(&self, name: &str) {
        if let Some(pid) = self.pid() {
            let _ = std::process::Command::new("kill")
                .args([format!("-{name}"), pid.to_string()])
                .status();
        }
    }

    async fn kill(&mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}

/// The processes of a run, by host.
struct Cluster<'a> {
    o: &'a FaultOptions,
    net: &'a Net,
    redis: Child,
    redis_url: String,
    secret: String,
    nodes: HashMap<String, Node>,
    generation: u64,
    /// Each frontend's link to the store, through a delaying proxy.
    links: HashMap<String, StoreLink>,
    /// libfaketime, and a clock offset file per host, for clock jumps.
    clock: Option<Clock>,
    /// A Redis Cluster as the store, when the scenario asks for one.
    store_cluster: Option<StoreCluster>,
}

/// The first port of a Redis Cluster's six nodes (three masters, three
/// replicas) on the Redis host.
const CLUSTER_PORT: u16 = 7000;

/// A Redis Cluster on the Redis host: each node by its port, `None` while
/// it is down.
struct StoreCluster {
    nodes: Vec<(u16, Option<Child>)>,
    dir: PathBuf,
    ip: std::net::Ipv4Addr,
}

impl StoreCluster {
    async fn start(o: &FaultOptions, net: &Net) -> anyhow::Result<StoreCluster> {
        let ip = net.host("redis")?.ip;
        let dir = std::env::temp_dir().join(format!(
            "session-proxy-faults-cluster-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir)?;
        let mut cluster = StoreCluster {
            nodes: Vec::new(),
            dir,
            ip,
        };
        for i in 0..6 {
            let port = CLUSTER_PORT + i;
            let child = cluster.spawn(o, net, port)?;
            cluster.nodes.push((port, Some(child)));
        }
        for &(port, _) in &cluster.nodes {
            wait_for_port(ip, port).await?;
        }
        let mut create = tokio::process::Command::new(&o.redis_cli);
        create.args(["--cluster", "create"]);
        for &(port, _) in &cluster.nodes {
            create.arg(format!("{ip}:{port}"));
        }
        let made = create
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .context("redis-cli --cluster create")?;
        if !made.status.success() {
            bail!(
                "redis-cli --cluster create: {}",
                String::from_utf8_lossy(&made.stdout)
            );
        }
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            let mut ok = true;
            for &(port, _) in &cluster.nodes {
                ok &= cluster
                    .cli(o, port, &["cluster", "info"])
                    .await
                    .is_some_and(|info| info.contains("cluster_state:ok"));
            }
            if ok {
                return Ok(cluster);
            }
            if Instant::now() > until {
                bail!("the Redis Cluster did not come up");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn spawn(&self, o: &FaultOptions, net: &Net, port: u16) -> anyhow::Result<Child> {
        let conf = format!("nodes-{port}.conf");
        net.command("redis", &o.redis_server.display().to_string())?
            .args(["--bind", &self.ip.to_string(), "--port", &port.to_string()])
            .args(["--cluster-enabled", "yes", "--cluster-config-file", &conf])
            .args(["--cluster-node-timeout", "1500"])
            .args(["--dir", &self.dir.display().to_string()])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting a Redis Cluster node")
    }

    async fn cli(&self, o: &FaultOptions, port: u16, args: &[&str]) -> Option<String> {
        let out = tokio::time::timeout(
            Duration::from_secs(3),
            tokio::process::Command::new(&o.redis_cli)
                .args(["-h", &self.ip.to_string(), "-p", &port.to_string()])
                .args(args)
                .kill_on_drop(true)
                .output(),
        )
        .await
        .ok()?
        .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The store URL, naming the three first nodes.
    fn url(&self) -> String {
        let seeds: Vec<String> = (0..3)
            .map(|i| format!("{}:{}", self.ip, CLUSTER_PORT + i))
            .collect();
        format!("redis+cluster://{}", seeds.join(","))
    }

    /// SIGKILLs a master, the `draw`-th of those up: its replica takes over
    /// once the others see it fail.
    async fn fail_a_master(&mut self, o: &FaultOptions, draw: u32) -> anyhow::Result<()> {
        let mut masters = Vec::new();
        for &(port, ref child) in &self.nodes {
            if child.is_none() {
                continue;
            }
            if let Some(role) = self.cli(o, port, &["role"]).await {
                if role.lines().next() == Some("master") {
                    masters.push(port);
                }
            }
        }
        if masters.is_empty() {
            bail!("no Redis Cluster master answers");
        }
        let port = masters[draw as usize % masters.len()];
        if let Some((_, slot)) = self.nodes.iter_mut().find(|(p, _)| *p == port) {
            if let Some(mut child) = slot.take() {
                let _ = child.start_kill();
                let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
            }
        }
        Ok(())
    }

    /// Every node up again (a failed master rejoins as a replica).
    async fn restart_all(&mut self, o: &FaultOptions, net: &Net) -> anyhow::Result<()> {
        for i in 0..self.nodes.len() {
            let port = self.nodes[i].0;
            if self.nodes[i].1.is_none() {
                let child = self.spawn(o, net, port)?;
                self.nodes[i].1 = Some(child);
                wait_for_port(self.ip, port).await?;
            }
        }
        Ok(())
    }

    async fn stop(&mut self) {
        for (_, child) in &mut self.nodes {
            if let Some(mut c) = child.take() {
                let _ = c.start_kill();
                let _ = tokio::time::timeout(Duration::from_secs(5), c.wait()).await;
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Waits until `ip:port` accepts (10 s at most).
async fn wait_for_port(ip: std::net::Ipv4Addr, port: u16) -> anyhow::Result<()> {
    let until = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect((ip, port)).await.is_err() {
        if Instant::now() > until {
            bail!("{ip}:{port} did not come up");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// A frontend's link to the store: a proxy in the players' host that
/// holds every chunk for the delay it is given (forever: a stall).
struct StoreLink {
    addr: SocketAddr,
    delay: tokio::sync::watch::Sender<Duration>,
    task: tokio::task::JoinHandle<()>,
}

/// A stall: nothing goes through until it is lifted.
const STALL: Duration = Duration::MAX;

impl StoreLink {
    async fn start(listen: SocketAddr, to: SocketAddr) -> anyhow::Result<StoreLink> {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("the store link's proxy on {listen}"))?;
        let (delay, rx) = tokio::sync::watch::channel(Duration::ZERO);
        let task = tokio::spawn(async move {
            while let Ok((down, _)) = listener.accept().await {
                let rx = rx.clone();
                tokio::spawn(async move {
                    let Ok(up) = tokio::net::TcpStream::connect(to).await else {
                        return;
                    };
                    let (dr, dw) = down.into_split();
                    let (ur, uw) = up.into_split();
                    tokio::join!(pump(dr, uw, rx.clone()), pump(ur, dw, rx));
                });
            }
        });
        Ok(StoreLink {
            addr: listen,
            delay,
            task,
        })
    }
}

/// Copies `from` to `to`, each chunk after the delay in force.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut delay: tokio::sync::watch::Receiver<Duration>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        loop {
            let d = *delay.borrow_and_update();
            if d == STALL {
                if delay.changed().await.is_err() {
                    return;
                }
                continue;
            }
            tokio::time::sleep(d).await;
            break;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// Clock jumps: nodes run under libfaketime, reading their offset from a
/// file of their host at every call (the monotonic clock is left alone, as
/// an NTP step leaves it).
struct Clock {
    lib: PathBuf,
    dir: PathBuf,
}

impl Clock {
    fn find() -> Option<Clock> {
        let lib = [
            "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
            "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1",
            "/usr/lib/faketime/libfaketimeMT.so.1",
        ]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())?;
        let dir = std::env::temp_dir().join(format!(
            "session-proxy-faults-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).ok()?;
        Some(Clock { lib, dir })
    }

    fn file(&self, host: &str) -> PathBuf {
        self.dir.join(format!("clock-{host}"))
    }

    fn set(&self, host: &str, secs: i64) -> anyhow::Result<()> {
        std::fs::write(self.file(host), format!("{secs:+}s\n")).context("a clock file")
    }
}

impl Drop for Clock {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl<'a> Cluster<'a> {
    async fn start(
        o: &'a FaultOptions,
        net: &'a Net,
        cluster_store: bool,
    ) -> anyhow::Result<Cluster<'a>> {
        let redis_ip = net.host("redis")?.ip;
        let redis = start_redis(o, net).await?;
        // Each frontend's store link goes through a proxy in the players'
        // host, where this runtime's sockets are.
        let client_ip = net.host("client")?.ip;
        let mut links = HashMap::new();
        for (i, fe) in ["fe1", "fe2"].iter().enumerate() {
            let port = 6381 + u16::try_from(i)?;
            let link = StoreLink::start(
                SocketAddr::from((client_ip, port)),
                SocketAddr::from((redis_ip, 6379)),
            )
            .await?;
            links.insert(fe.to_string(), link);
        }
        let store_cluster = match cluster_store {
            true => Some(StoreCluster::start(o, net).await?),
            false => None,
        };
        let clock = Clock::find();
        if let Some(c) = &clock {
            for host in ["fe1", "fe2", "be1", "be2"] {
                c.set(host, 0)?;
            }
        }
        let mut cluster = Cluster {
            o,
            net,
            redis,
            redis_url: format!("redis://{redis_ip}:6379/0"),
            secret: format!("faults-{}-{}", std::process::id(), rand::random::<u64>()),
            nodes: HashMap::new(),
            generation: 0,
            links,
            clock,
            store_cluster,
        };
        for host in ["fe1", "fe2", "be1", "be2"] {
            cluster.start_node(host).await?;
        }
        Ok(cluster)
    }

    /// A new node on `host`: a frontend on `fe*`, a backend on `be*`.
    async fn start_node(&mut self, host: &str) -> anyhow::Result<()> {
        self.generation += 1;
        let id = format!("{host}-{}", self.generation);
        let ip = self.net.host(host)?.ip;
        let mut args: Vec<String> = vec!["run".into(), "--id".into(), id.clone()];
        if host.starts_with("fe") {
            let store = match &self.store_cluster {
                Some(c) => c.url(),
                None => format!(
                    "redis://{}/0",
                    self.links.get(host).context("a store link")?.addr
                ),
            };
            args.extend(
                [
                    "--role",
                    "frontend",
                    "--type",
                    "connector",
                    "--rpc-addr",
                    &format!("{ip}:4010"),
                    "--client-addr",
                    &format!("{ip}:3010"),
                    "--redis",
                    &store,
                    "--resume-grace-secs",
                    "60",
                ]
                .map(str::to_string),
            );
        } else {
            args.extend(["--role", "backend", "--type", "chat"].map(str::to_string));
        }
        args.extend(
            [
                "--registry",
                &self.redis_url,
                "--lease-secs",
                &LEASE_SECS.to_string(),
                "--drain-secs",
                &DRAIN_SECS.to_string(),
            ]
            .map(str::to_string),
        );
        let mut command = self
            .net
            .command(host, &self.o.binary.display().to_string())?;
        if let Some(clock) = &self.clock {
            command
                .env("LD_PRELOAD", &clock.lib)
                .env("FAKETIME_TIMESTAMP_FILE", clock.file(host))
                .env("FAKETIME_NO_CACHE", "1")
                .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
        }
        let mut child = command
            .args(&args)
            .env("SESSION_PROXY_APP", "bench")
            .env("SESSION_PROXY_SECRET", &self.secret)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {id}"))?;
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
        // Its stdout is read to the end, so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        if let Some(mut old) = self.nodes.insert(host.to_string(), Node { child }) {
            old.kill().await;
        }
        Ok(())
    }

    fn node(&self, host: &str) -> anyhow::Result<&Node> {
        self.nodes
            .get(host)
            .with_context(|| format!("no node on {host}"))
    }

    async fn apply(&mut self, step: &Planned) -> anyhow::Result<()> {
        let host = || step.host.clone().context("a host");
        match step.action.as_str() {
            "partition" | "one-way" => {
                let (a, b) = (step.a.clone().context("a")?, step.b.clone().context("b")?);
                self.net.partition(&a, &b, step.action == "one-way")?;
            }
            "loss" => self.net.loss(&host()?, step.percent)?,
            "heal" => self.heal_network()?,
            "delay" | "stall" => {
                let link = self
                    .links
                    .get(&host()?)
                    .context("delay and stall act on a frontend")?;
                let d = if step.action == "stall" {
                    STALL
                } else {
                    step.delay
                };
                let _ = link.delay.send(d);
            }
            "clock-jump" => {
                let clock = self
                    .clock
                    .as_ref()
                    .context("clock-jump needs libfaketime (Debian: faketime)")?;
                clock.set(&host()?, step.secs)?;
            }
            "failover" => {
                let o = self.o;
                self.store_cluster
                    .as_mut()
                    .context("failover needs store = \"cluster\"")?
                    .fail_a_master(o, step.draw)
                    .await?;
            }
            "redis-restart" => {
                // Killed, and back empty at the same address.
                let _ = self.redis.start_kill();
                let _ = tokio::time::timeout(Duration::from_secs(5), self.redis.wait()).await;
                self.redis = start_redis(self.o, self.net).await?;
            }
            "pause" => self.node(&host()?)?.signal("STOP"),
            "unpause" => self.node(&host()?)?.signal("CONT"),
            "drain" => self.node(&host()?)?.signal("TERM"),
            "kill" => {
                if let Some(node) = self.nodes.get_mut(&host()?) {
                    node.kill().await;
                }
            }
            "restart" => {
                let h = host()?;
                // A draining node finishes first (or is killed at its limit).
                if let Some(node) = self.nodes.get_mut(&h) {
                    let limit = Duration::from_secs(DRAIN_SECS + 2);
                    if tokio::time::timeout(limit, node.child.wait())
                        .await
                        .is_err()
                    {
                        node.kill().await;
                    }
                }
                self.start_node(&h).await?;
            }
            other => bail!("unknown action {other}"),
        }
        Ok(())
    }

    /// Every network fault healed: rules, delays, stalls, clocks.
    fn heal_network(&self) -> anyhow::Result<()> {
        self.net.heal();
        for link in self.links.values() {
            let _ = link.delay.send(Duration::ZERO);
        }
        if let Some(clock) = &self.clock {
            for host in ["fe1", "fe2", "be1", "be2"] {
                clock.set(host, 0)?;
            }
        }
        Ok(())
    }

    /// Every fault healed, every node running again.
    async fn heal_all(&mut self) -> anyhow::Result<()> {
        self.heal_network()?;
        let (o, net) = (self.o, self.net);
        if let Some(c) = &mut self.store_cluster {
            c.restart_all(o, net).await?;
        }
        let hosts: Vec<String> = self.nodes.keys().cloned().collect();
        for host in hosts {
            let node = self.nodes.get_mut(&host).context("node")?;
            node.signal("CONT");
            if node.child.try_wait()?.is_some() {
                self.start_node(&host).await?;
            }
        }
        Ok(())
    }

    async fn stop(mut self) {
        for node in self.nodes.values_mut() {
            node.signal("CONT");
            node.kill().await;
        }
        let _ = self.redis.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.redis.wait()).await;
        for link in self.links.values() {
            link.task.abort();
        }
        if let Some(c) = &mut self.store_cluster {
            c.stop().await;
        }
    }
}

/// A redis-server without persistence on the `redis` host, once it accepts.
async fn start_redis(o: &FaultOptions, net: &Net) -> anyhow::Result<Child> {
    let ip = net.host("redis")?.ip;
    let mut redis = net
        .command("redis", &o.redis_server.display().to_string())?
        .args(["--bind", &ip.to_string(), "--port", "6379"])
        .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting redis-server")?;
    let until = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect((ip, 6379)).await.is_err() {
        if Instant::now() > until {
            let _ = redis.start_kill();
            bail!("redis-server did not come up in its namespace");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(redis)
}

/// A player: a session of its own, a counter written and read back until
/// `stop`; then one last read, recorded after every fault healed.
struct Player {
    i: usize,
    uid: String,
    client: Option<SessionClient>,
    next: u64,
    /// The session may not be the one written to before (a new client, or
    /// the server gave a fresh session): read before writing again, so a
    /// lost session shows in the history instead of being written over.
    read_first: bool,
}

impl Player {
    async fn connect(&mut self, entry: &Entry) -> bool {
        if self.client.as_ref().is_some_and(|c| !c.is_closed()) {
            return true;
        }
        let mut options = ResumeOptions::default();
        options.client.request_timeout = DEADLINE;
        options.attempts = 30;
        options.min_delay = Duration::from_millis(50);
        options.max_delay = Duration::from_secs(1);
        // A client that gave up resumes from where it was.
        options.saved = self.client.as_ref().and_then(SessionClient::saved);
        let again = self.client.is_some() || self.next > 0;
        match SessionClient::connect(entry.clone(), options).await {
            Ok(c) => {
                self.client = Some(c);
                self.read_first |= again;
                true
            }
            Err(_) => false,
        }
    }

    /// Reads the client's events: a fresh session after the first one
    /// means a read comes next.
    async fn session_events(&mut self) {
        let Some(c) = &self.client else { return };
        while let Some(event) = c.next_event(Duration::ZERO).await {
            if let ResumeEvent::Session { resumed: false, .. } = event {
                self.read_first |= self.next > 0;
            }
        }
    }

    async fn write(&mut self, history: &Recorder) {
        let Some(c) = &self.client else { return };
        self.next += 1;
        let op = history.invoke(
            self.i as u64,
            &self.uid,
            Kind::write("n", self.next),
            DEADLINE,
        );
        let answer = c
            .request(
                "chat.benchHandler.set",
                &json!({ "key": "n", "value": self.next }),
            )
            .await;
        history.complete(op, Outcome::of_answer(&answer));
    }

    async fn read(&mut self, history: &Recorder) -> bool {
        let Some(c) = &self.client else { return false };
        let op = history.invoke(self.i as u64, &self.uid, Kind::read("n"), DEADLINE);
        let answer = c
            .request("chat.benchHandler.get", &json!({ "key": "n" }))
            .await;
        match &answer {
            Ok(a) if a["code"] == 200 => {
                history.complete(op, Outcome::Value(a["value"].as_u64()));
                true
            }
            other => {
                history.complete(op, Outcome::of_answer(other));
                false
            }
        }
    }
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

async fn drive(
    o: &FaultOptions,
    cluster: &mut Cluster<'_>,
    plan: &Plan,
) -> anyhow::Result<Recorder> {
    let mut registry = RedisMembershipConfig::new(cluster.redis_url.clone());
    registry.resync = Duration::from_millis(500);
    let registry = RedisMembership::connect(registry)
        .await
        .context("the registry")?;
    let members = registry.watch();
    // Player i goes to the (i mod n)-th active frontend by id: the players
    // split evenly, so a fault on either frontend hits half of them (the
    // least loaded one, as a gate picks, herds a burst of players onto one
    // before the client counts are renewed).
    let entry_of = move |i: usize| {
        let members = members.clone();
        Entry::Pick(Arc::new(move || {
            let members = members.borrow();
            let mut active: Vec<_> = members
                .iter()
                .filter(|r| r.server_type == "connector" && r.state == NodeState::Active)
                .filter_map(|r| {
                    Some((
                        r.id.clone(),
                        r.client_addr.as_deref()?.parse::<SocketAddr>().ok()?,
                    ))
                })
                .collect();
            active.sort();
            active.get(i % active.len().max(1)).map(|(_, addr)| *addr)
        }))
    };
    // Every frontend serves before the players come.
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let serving = registry
            .watch()
            .borrow()
            .iter()
            .filter(|n| n.server_type == "connector" && n.state == NodeState::Active)
            .count();
        if serving == 2 {
            break;
        }
        if Instant::now() > until {
            bail!("the frontends did not turn active");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let history = Recorder::new();
    let stop = Arc::new(AtomicBool::new(false));
    let mut players = Vec::new();
    for i in 0..o.players {
        let (entry, history, stop, pace) = (entry_of(i), history.clone(), stop.clone(), o.pace);
        players.push(tokio::spawn(async move {
            let mut p = Player {
                i,
                uid: format!("player-{i}"),
                client: None,
                next: 0,
                read_first: false,
            };
            let mut round = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if !p.connect(&entry).await {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
                p.session_events().await;
                round += 1;
                if p.read_first || round % 4 == 0 {
                    // Until one is answered, when the session may be new.
                    if p.read(&history).await {
                        p.read_first = false;
                    }
                } else {
                    p.write(&history).await;
                }
                tokio::time::sleep(pace).await;
            }
            p
        }));
    }

    // The scenario.
    let begun = Instant::now();
    for step in &plan.steps {
        tokio::time::sleep_until((begun + step.at).into()).await;
        cluster
            .apply(step)
            .await
            .with_context(|| format!("{} at {:?}", step.action, step.at))?;
    }
    tokio::time::sleep_until((begun + plan.secs).into()).await;
    cluster.heal_all().await?;
    stop.store(true, Ordering::Relaxed);
    let mut done = Vec::new();
    for p in players {
        done.push(p.await.context("a player")?);
    }

    // Every counter read back once the cluster has settled: a read that
    // fails is retried (each try is in the history) until one answers.
    let until = Instant::now() + SETTLE;
    for p in &mut done {
        let entry = entry_of(p.i);
        loop {
            if p.connect(&entry).await && p.read(&history).await {
                break;
            }
            if Instant::now() > until {
                bail!(
                    "{}: no read answered within {SETTLE:?} of the last fault",
                    p.uid
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(history)
}
