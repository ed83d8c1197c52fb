//! The `session-proxy` command.

use anyhow::Context;
use clap::{Parser, Subcommand};
use session_proxy::bench::{self, LoadOptions};
use session_proxy::client::Transport;
use session_proxy::cluster::{run_node, ClusterConfig};
use session_proxy::demo::{self, DemoConfig};
use session_proxy::frontend::{Gateway, GatewayConfig, RedisStore, RedisStoreConfig, StoreOptions};
use session_proxy::{ConnectInfo, RpcConfig, RpcServer, SessionConfig, SessionService};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "session-proxy",
    version,
    about = "The session layer of a clustered realtime or game server"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one node of a cluster described in a TOML file.
    Run {
        /// The cluster file.
        #[arg(long)]
        config: std::path::PathBuf,
        /// The id of the node to run.
        #[arg(long)]
        node: String,
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
        /// Sessions to create.
        #[arg(long, default_value_t = 2000)]
        sessions: usize,
        /// Concurrent workers per backend.
        #[arg(long, default_value_t = 8)]
        workers: usize,
        /// Pushes sent pipelined on one connection in the throughput phase.
        #[arg(long, default_value_t = 200_000)]
        pipelined: usize,
        /// Simulated chat players (Pomelo protocol, half TCP, half WebSocket).
        #[arg(long, default_value_t = 200)]
        players: usize,
        /// Chat messages each player sends.
        #[arg(long, default_value_t = 20)]
        messages: usize,
    },
    /// Run a frontend's session RPC server until SIGINT/SIGTERM.
    Frontend {
        /// This frontend's id.
        #[arg(long, default_value = "frontend-1")]
        id: String,
        /// Where backends connect.
        #[arg(long, default_value = "127.0.0.1:4010")]
        rpc_addr: SocketAddr,
        /// Open this many sessions at start, bound to uids `user-0` …
        /// (stand-ins for connected clients, to try the RPC without a
        /// client connector).
        #[arg(long, default_value_t = 0)]
        open_sessions: usize,
        /// Also serve Pomelo/Pinus clients (TCP and WebSocket) here.
        #[arg(long)]
        client_addr: Option<SocketAddr>,
        /// Keep sessions in this Redis server (e.g. redis://127.0.0.1:6379/0),
        /// so a restart loses none.
        #[arg(long)]
        redis: Option<String>,
        /// How long a dropped client may resume its session, in seconds.
        #[arg(long, default_value_t = 30)]
        resume_grace: u64,
    },
}

#[derive(clap::Args, Clone)]
struct Target {
    /// The server's client address.
    #[arg(long)]
    target: SocketAddr,
    /// Speak WebSocket instead of raw TCP.
    #[arg(long)]
    ws: bool,
    /// Print one JSON object instead of the summary.
    #[arg(long)]
    json: bool,
}

impl Target {
    fn transport(&self) -> Transport {
        if self.ws {
            Transport::WebSocket
        } else {
            Transport::Tcp
        }
    }
}

#[derive(Subcommand)]
enum BenchMode {
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
        /// Send this login route (body `{"uid": ...}`) from each client.
        #[arg(long)]
        login_route: Option<String>,
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

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    // A node's config is read first: it may set the runtime's threads.
    let cluster = match &cli.command {
        Command::Run { config, .. } => Some(ClusterConfig::load(config)?),
        _ => None,
    };
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let (Some(cluster), Command::Run { node, .. }) = (&cluster, &cli.command) {
        if let Some(n) = cluster.worker_threads(node) {
            builder.worker_threads(n);
        }
    }
    let runtime = builder.build().context("starting the tokio runtime")?;
    runtime.block_on(async {
        match cli.command {
            Command::Run { node, .. } => match &cluster {
                Some(config) => run_node(config, &node).await,
                None => anyhow::bail!("no cluster config"),
            },
            Command::Bench { mode } => run_bench(mode).await,
            Command::Demo {
                sessions,
                workers,
                pipelined,
                players,
                messages,
            } => {
                let mut config = DemoConfig::default();
                config.sessions = sessions;
                config.workers = workers.max(1);
                config.pipelined = pipelined;
                config.players = players;
                config.messages = messages;
                let report = demo::run(config).await.context("demo failed")?;
                println!("{report}");
                Ok(())
            }
            Command::Frontend {
                id,
                rpc_addr,
                open_sessions,
                client_addr,
                redis,
                resume_grace,
            } => {
                let options = FrontendOptions {
                    id,
                    rpc_addr,
                    open_sessions,
                    client_addr,
                    redis,
                    resume_grace: Duration::from_secs(resume_grace),
                };
                run_frontend(options).await
            }
        }
    })
}

async fn run_bench(mode: BenchMode) -> anyhow::Result<()> {
    let (result, json) = match mode {
        BenchMode::Report {
            input,
            out,
            plot,
            command,
        } => {
            bench::report::report(&input, &out, &plot, &command)?;
            return Ok(());
        }
        BenchMode::Soak {
            config,
            target,
            clients,
            minutes,
            kill_every,
        } => {
            let binary = std::env::current_exe().context("finding this binary")?;
            let r = bench::soak::soak(
                &binary,
                &config,
                target,
                clients,
                Duration::from_secs_f64(minutes * 60.0),
                Duration::from_secs(kill_every),
            )
            .await?;
            println!(
                "soak: {} ok, {} error responses, {} reconnects, {} backend kills, {} acknowledged writes checked",
                r.ok, r.error_responses, r.reconnects, r.kills, r.acknowledged_writes_checked
            );
            println!("connector RSS (s, KiB): {:?}", r.memory);
            return Ok(());
        }
        BenchMode::Floor { addr } => {
            bench::floor::serve(addr).await?;
            return Ok(());
        }
        BenchMode::Pushes {
            sessions,
            count,
            window,
            json,
        } => {
            let o = bench::pushes::PushOptions {
                sessions,
                count,
                window,
            };
            // Its own threads and runtimes: keep them off this runtime's workers.
            let result = tokio::task::spawn_blocking(move || bench::pushes::pushes(o))
                .await
                .context("the pushes benchmark panicked")??;
            (result, json)
        }
        BenchMode::Rr {
            target,
            clients,
            duration,
            warmup,
            rate,
            route,
            body,
            login,
        } => {
            let mut o = LoadOptions::new(target.target);
            o.transport = target.transport();
            o.clients = clients;
            o.duration = Duration::from_secs_f64(duration);
            o.warmup = Duration::from_secs_f64(warmup);
            o.rate = rate;
            o.body = serde_json::from_str(&body).context("--body is not JSON")?;
            if login {
                let server_type = route.split('.').next().unwrap_or("chat");
                o.setup = vec![(
                    format!("{server_type}.benchHandler.login"),
                    serde_json::json!({ "uid": "bench{i}" }),
                )];
            }
            o.route = route;
            (bench::load(o).await?, target.json)
        }
        BenchMode::Idle {
            target,
            clients,
            pid,
            login_route,
        } => (
            bench::idle(
                target.target,
                target.transport(),
                clients,
                &pid,
                login_route.as_deref(),
            )
            .await?,
            target.json,
        ),
        BenchMode::Fanout {
            target,
            clients,
            pushes,
            server_type,
        } => (
            bench::fanout(
                target.target,
                target.transport(),
                clients,
                pushes,
                &server_type,
            )
            .await?,
            target.json,
        ),
    };
    if json {
        println!("{}", serde_json::to_string(&result)?);
    } else {
        println!("{result}");
    }
    Ok(())
}

struct FrontendOptions {
    id: String,
    rpc_addr: SocketAddr,
    open_sessions: usize,
    client_addr: Option<SocketAddr>,
    redis: Option<String>,
    resume_grace: Duration,
}

async fn run_frontend(o: FrontendOptions) -> anyhow::Result<()> {
    let sessions = SessionService::new(SessionConfig::new(o.id.clone()));
    if let Some(url) = &o.redis {
        let store = RedisStore::connect(RedisStoreConfig::new(url.clone()))
            .await
            .with_context(|| format!("connecting to the session store at {url}"))?;
        let restored = sessions
            .attach_store(Arc::new(store), StoreOptions::default())
            .await
            .context("restoring sessions from the store")?;
        println!("restored {restored} sessions");
    }
    let server = RpcServer::bind(o.rpc_addr, sessions.clone(), RpcConfig::default())
        .await
        .with_context(|| format!("listening on {}", o.rpc_addr))?;
    let mut owners = Vec::with_capacity(o.open_sessions);
    for i in 0..o.open_sessions {
        let owner = sessions.create(ConnectInfo::default());
        sessions.bind(owner.sid(), &format!("user-{i}"))?;
        owners.push(owner);
    }
    let gateway = match o.client_addr {
        Some(addr) => {
            let mut config = GatewayConfig::default();
            config.resume_grace = o.resume_grace;
            let gateway = Gateway::new(sessions.clone(), server.backends(), config)
                .bind(addr)
                .await
                .with_context(|| format!("listening for clients on {addr}"))?;
            println!("frontend {} clients on {}", o.id, gateway.local_addr());
            Some(gateway)
        }
        None => None,
    };
    println!("frontend {} listening on {}", o.id, server.local_addr());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    drop(owners);
    if let Some(gateway) = gateway {
        gateway.shutdown(Duration::from_secs(5)).await;
    }
    if let Err(err) = sessions.flush().await {
        tracing::warn!(cause = %err, "last write to the session store failed");
    }
    if !server.shutdown(Duration::from_secs(5)).await {
        tracing::warn!("connections still open after 5 s; exiting anyway");
    }
    Ok(())
}
