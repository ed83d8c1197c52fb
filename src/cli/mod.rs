//! The `session-proxy` command's own modules (binary only, not the library):
//! its arguments, the node runners, the demo and the benchmark dispatch.

pub mod admin;
pub mod bench;
pub mod demo;
pub mod node;

use clap::{Parser, Subcommand};
use session_proxy::cli::{LogFormat, RunArgs};
use session_proxy_client::Transport;
use std::net::SocketAddr;

#[derive(Parser)]
#[command(
    name = "session-proxy",
    version,
    about = "The session layer of a clustered realtime or game server"
)]
pub struct Cli {
    /// How log lines are written to stderr: `text` for people, `json` (one
    /// object per line, the same fields) for log shippers.
    #[arg(long, global = true, env = "SESSION_PROXY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

/// The apps this binary can serve, by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AppName {
    /// The benchmarks' routes, for any server type.
    Bench,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run one node: of a cluster described in a TOML file (--config and
    /// --node), or described by flags and registered in a registry (--role,
    /// --id, --type, --registry, …; each also read from SESSION_PROXY_{FLAG}).
    /// Several --node (or a comma list) run in one process, its backends
    /// linked to its frontends in process.
    Run {
        /// What to run.
        #[command(flatten)]
        args: RunArgs,
        /// The handlers backends serve (and frontends' own routes), by
        /// name: this binary has only `bench` (the benchmarks' echo, set,
        /// push and channel routes). Without it a frontend is a generic
        /// connector and a backend refuses to start; a game runs its own
        /// binary (session_proxy::cli::App).
        #[arg(long, env = "SESSION_PROXY_APP", value_enum)]
        app: Option<AppName>,
    },
    /// Look at and steer a running cluster through the registry and each
    /// node's admin address (`SESSION_PROXY_SECRET` must be the cluster's).
    Admin {
        /// The registry: redis://host:port/db or etcd://host:port.
        #[arg(long, env = "SESSION_PROXY_REGISTRY")]
        registry: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// What to do.
        #[command(subcommand)]
        action: admin::AdminAction,
    },
    /// Load-test any Pomelo/Pinus-compatible server (this one or Pinus).
    Bench {
        #[command(subcommand)]
        mode: BenchMode,
    },
    /// Start one frontend and two backends on loopback, work the same
    /// sessions from both backends at once; then start the chat cluster and
    /// drive it with simulated players; check everything, report.
    Demo {
        #[command(flatten)]
        config: demo::DemoConfig,
        /// Print the report as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Run a frontend's session RPC server until SIGINT/SIGTERM.
    Frontend {
        /// This frontend's id.
        #[arg(long, default_value = "frontend-1")]
        id: String,
        /// Where backends connect.
        #[arg(long, default_value = "127.0.0.1:4010")]
        rpc_addr: SocketAddr,
        /// This frontend's server type.
        #[arg(long = "type", default_value = "connector")]
        server_type: String,
        /// Open this many sessions at start, bound to uids `user-0` …
        /// (stand-ins for connected clients, to try the RPC without a
        /// client connector).
        #[arg(long, default_value_t = 0)]
        open_sessions: usize,
        /// Also serve Pomelo/Pinus clients (TCP and WebSocket) here.
        #[arg(long)]
        client_addr: Option<SocketAddr>,
        /// Keep sessions in this Redis server (e.g. redis://127.0.0.1:6379/0)
        /// or Redis Cluster (redis+cluster://host:port,host:port), so a
        /// restart loses none.
        #[arg(long)]
        redis: Option<String>,
        /// How long a dropped client may resume its session, in seconds.
        #[arg(long, default_value_t = 30)]
        resume_grace: u64,
        /// Listen for backends beyond loopback without a cluster secret
        /// (SESSION_PROXY_SECRET); refused without this flag.
        #[arg(long)]
        insecure: bool,
    },
}

#[derive(clap::Args, Clone)]
pub struct Target {
    /// The server's client address.
    #[arg(long)]
    pub target: SocketAddr,
    /// Speak WebSocket instead of raw TCP.
    #[arg(long)]
    pub ws: bool,
    /// Print one JSON object instead of the summary.
    #[arg(long)]
    pub json: bool,
}

impl Target {
    pub fn transport(&self) -> Transport {
        if self.ws {
            Transport::WebSocket
        } else {
            Transport::Tcp
        }
    }
}

#[derive(Subcommand)]
pub enum BenchMode {
    /// Request/response with N clients (closed loop, or open with --rate).
    Rr {
        #[command(flatten)]
        target: Target,
        /// Connected clients.
        #[arg(long, default_value_t = 50)]
        clients: usize,
        /// Seconds to measure.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Seconds of unmeasured warm-up.
        #[arg(long, default_value_t = 1.0)]
        warmup: f64,
        /// Total requests per second (open loop); omit for a closed loop.
        #[arg(long)]
        rate: Option<f64>,
        /// The route of each request.
        #[arg(long, default_value = "chat.benchHandler.echo")]
        route: String,
        /// The JSON body of each request.
        #[arg(long, default_value = r#"{"msg":"hello"}"#)]
        body: String,
        /// Log each client in first (route `<type>.benchHandler.login`, uid `bench<i>`).
        #[arg(long)]
        login: bool,
    },
    /// Players per node: clients at a fixed per-client rate (open loop per
    /// client, jittered), ramped in steps; reports the largest step whose
    /// p99 stays within the target with no errors.
    Ccu {
        /// The server's client address (raw TCP).
        #[arg(long)]
        target: SocketAddr,
        /// Connected clients at each step, ascending.
        #[arg(long, value_delimiter = ',', default_value = "1000,2000,5000,10000")]
        steps: Vec<usize>,
        /// Requests per second of each client.
        #[arg(long, default_value_t = 1.0)]
        rate_per_client: f64,
        /// Seconds each step is measured.
        #[arg(long, default_value_t = 10.0)]
        hold: f64,
        /// New connections per second while ramping up.
        #[arg(long, default_value_t = 2000)]
        ramp: usize,
        /// The route of each request.
        #[arg(long, default_value = "chat.benchHandler.echo")]
        route: String,
        /// The JSON body of each request.
        #[arg(long, default_value = r#"{"msg":"hello"}"#)]
        body: String,
        /// The p99 a step must stay within, in ms.
        #[arg(long, default_value_t = 50.0)]
        p99_ms: f64,
        /// Spread clients over this many loopback source addresses.
        #[arg(long, default_value_t = 1)]
        sources: u8,
        /// The first source address is 127.0.0.N, N this (give generators side
        /// by side addresses of their own).
        #[arg(long, default_value_t = 1)]
        first_source: u8,
        /// The server's PID, to report its RSS at each step.
        #[arg(long)]
        server_pid: Option<u32>,
        /// Every process of the system under test, comma-separated: their
        /// CPU at each step (for players per core).
        #[arg(long, value_delimiter = ',')]
        cpu_pids: Vec<u32>,
        /// Print one JSON object instead of the summary.
        #[arg(long)]
        json: bool,
    },
    /// Hold N connected clients and report the server's RSS growth.
    Idle {
        #[command(flatten)]
        target: Target,
        /// Clients to connect.
        #[arg(long, default_value_t = 1000)]
        clients: usize,
        /// Server processes whose RSS to read (repeat for several).
        #[arg(long)]
        pid: Vec<u32>,
        /// The target is a gate (chatofpomelo's `gate.gateHandler.queryEntry`):
        /// spread the clients over the connectors it names.
        #[arg(long)]
        gate: bool,
        /// Send this request from each client once connected.
        #[arg(long)]
        login_route: Option<String>,
        /// The login request's JSON body; `{i}` in its strings becomes the
        /// client's number, `{r}` that number modulo 100.
        #[arg(long, default_value = r#"{"uid":"idle{i}"}"#)]
        login_body: String,
        /// Keep the clients connected this many seconds after the report
        /// is printed (to measure something else while they sit idle).
        #[arg(long, default_value_t = 0)]
        hold: u64,
        /// Connect the clients evenly over this many seconds instead of at
        /// once (so their heartbeats are spread over the interval).
        #[arg(long, default_value_t = 0.0)]
        spread: f64,
    },
    /// One channel push to N clients, repeated; delivery latency.
    Fanout {
        #[command(flatten)]
        target: Target,
        /// Channel members.
        #[arg(long, default_value_t = 1000)]
        clients: usize,
        /// Channel pushes.
        #[arg(long, default_value_t = 50)]
        pushes: usize,
        /// The backend server type of the bench routes.
        #[arg(long, default_value = "chat")]
        server_type: String,
    },
    /// The session store alone: writers putting batches of bound sessions
    /// (a frontend's group commit) into Redis or a Redis Cluster; sessions
    /// written per second and the latency of each put. Clears the store's
    /// keys (prefix `sp:`) before and after.
    Store {
        /// The store: redis://host:port/db or redis+cluster://host:port,….
        #[arg(long)]
        redis: String,
        /// Writers at once.
        #[arg(long, default_value_t = 8)]
        writers: usize,
        /// Sessions per put.
        #[arg(long, default_value_t = 18)]
        batch: usize,
        /// Sessions each writer cycles through.
        #[arg(long, default_value_t = 1000)]
        sessions: usize,
        /// Seconds to measure.
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// Print one JSON object instead of the summary.
        #[arg(long)]
        json: bool,
    },
    /// Write the comparison section of docs/BENCHMARKS.md from bench/compare's results.
    Report {
        /// The JSON lines bench/compare wrote.
        #[arg(long)]
        input: std::path::PathBuf,
        /// The markdown file to update.
        #[arg(long)]
        out: std::path::PathBuf,
        /// Where to write the latency plot (SVG).
        #[arg(long)]
        plot: std::path::PathBuf,
        /// The command that produced the results, for the record.
        #[arg(long)]
        command: String,
    },
    /// Steady load plus periodic backend kills for a bounded time; reports
    /// memory over time, errors, and checks every acknowledged write.
    Soak {
        /// The cluster file (needs nodes `connector-1` and `chat-1`).
        #[arg(long, default_value = "bench/cluster.toml")]
        config: std::path::PathBuf,
        /// The connector's client address.
        #[arg(long, default_value = "127.0.0.1:4700")]
        target: SocketAddr,
        /// Load clients.
        #[arg(long, default_value_t = 50)]
        clients: usize,
        /// Minutes to run.
        #[arg(long, default_value_t = 10.0)]
        minutes: f64,
        /// Seconds between backend kills.
        #[arg(long, default_value_t = 20)]
        kill_every: u64,
        /// Also keep the connector's sessions in a redis-server that the
        /// soak starts (this binary) on a free loopback port and SIGKILLs
        /// on a schedule, restarting it empty.
        #[arg(long)]
        redis_server: Option<std::path::PathBuf>,
        /// Seconds between store kills.
        #[arg(long, default_value_t = 45)]
        redis_every: u64,
        /// Seconds the store stays down each time.
        #[arg(long, default_value_t = 5)]
        redis_down: u64,
        /// Print one JSON object instead of the summary.
        #[arg(long)]
        json: bool,
    },
    /// An elastic cluster under load: frontend and backend processes
    /// registered in a redis-server (started here on a free loopback port,
    /// also the session store) are added and drained on a schedule while
    /// clients write and resume. Reports answers, resumes, lost writes,
    /// reconnect time and SIGTERM-to-exit time.
    Elastic {
        /// Load clients.
        #[arg(long, default_value_t = 200)]
        clients: usize,
        /// Minutes to run.
        #[arg(long, default_value_t = 10.0)]
        minutes: f64,
        /// Seconds between scaling events (add frontend, add backend,
        /// drain a frontend, drain a backend, again).
        #[arg(long, default_value_t = 15)]
        every: u64,
        /// Each node's drain limit, in seconds.
        #[arg(long, default_value_t = 10)]
        drain_secs: u64,
        /// Milliseconds between two writes of one client.
        #[arg(long, default_value_t = 100)]
        pace_ms: u64,
        /// The redis-server binary.
        #[arg(long, default_value = "redis-server")]
        redis_server: std::path::PathBuf,
        /// Print one JSON object instead of the summary.
        #[arg(long)]
        json: bool,
    },
    /// The cluster under real network faults: Redis, two frontends, two
    /// backends and the players on hosts of their own (network namespaces
    /// and a bridge; root, `ip` and `nft` needed), a scenario per seed
    /// (partitions, one-way partitions, packet loss, paused, drained and
    /// killed nodes), and a checker that proves no acknowledged write was
    /// lost, no read was stale and every request ended in time.
    Faults {
        /// Run this seed's scenario (repeat for several). Without one, and
        /// without --minutes, seeds 1 to 3.
        #[arg(long = "seed")]
        seeds: Vec<u64>,
        /// Draw seeds at random for this many minutes (a soak).
        #[arg(long)]
        minutes: Option<f64>,
        /// Players writing at once.
        #[arg(long, default_value_t = 12)]
        players: usize,
        /// Milliseconds between two requests of one player.
        #[arg(long, default_value_t = 50)]
        pace_ms: u64,
        /// A scenarios file (default: the built-in ones,
        /// bench/src/faults/scenarios.toml).
        #[arg(long)]
        scenarios: Option<std::path::PathBuf>,
        /// The redis-server binary.
        #[arg(long, default_value = "redis-server")]
        redis_server: std::path::PathBuf,
        /// The redis-cli binary (Redis Cluster scenarios).
        #[arg(long, default_value = "redis-cli")]
        redis_cli: std::path::PathBuf,
        /// Write each run's history to this folder (`seed-N.jsonl`).
        #[arg(long)]
        histories: Option<std::path::PathBuf>,
        /// Print one JSON object per run instead of a line.
        #[arg(long)]
        json: bool,
        /// Print each seed's plan (scenario, hosts drawn, step times) and
        /// run nothing.
        #[arg(long)]
        plan: bool,
    },
    /// Pipelined backend -> frontend pushes on one RPC connection (both
    /// sides in this process, each on its own thread and core).
    Pushes {
        /// Open sessions on the frontend; pushes cycle through them.
        #[arg(long, default_value_t = 10_000)]
        sessions: usize,
        /// Pushes to send.
        #[arg(long, default_value_t = 1_000_000)]
        count: usize,
        /// Pushes in flight at once.
        #[arg(long, default_value_t = 4096)]
        window: usize,
        /// Print one JSON object instead of the summary.
        #[arg(long)]
        json: bool,
    },
    /// Serve the raw floor (handshake + echo, nothing else) on an address.
    Floor {
        /// Where to listen.
        #[arg(long, default_value = "127.0.0.1:4900")]
        addr: SocketAddr,
    },
}
