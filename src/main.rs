//! The `session-proxy` command: the demo cluster, cluster nodes, a
//! standalone frontend, and the benchmarks.

mod cli;

use anyhow::Context;
use clap::Parser;
use cli::{Cli, Command};
use session_proxy::cluster::ClusterConfig;
use session_proxy::frontend::StoreOptions;
use session_proxy::node::Node;
use session_proxy::ConnectInfo;
use std::time::Duration;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    session_proxy::cli::init_logs(cli.log_format);
    if let Command::Run { args, app } = &cli.command {
        // The app asked for by name: the flag, or the cluster file's.
        let app = match (app, &args.config) {
            (Some(app), _) => Some(*app),
            (None, Some(path)) => ClusterConfig::load(path)?
                .cluster
                .app
                .is_some()
                .then_some(cli::AppName::Bench),
            (None, None) => None,
        };
        // The library's command line, as a game's own binary runs it.
        return cli::node::shipped_app(app).block_on(args).map_err(|err| {
            let hint = match err {
                session_proxy::cli::RunError::NoHandlers(_) => {
                    "; session-proxy serves no game code: pass --app bench for the bench app, or build your own binary with session_proxy::cli::App"
                }
                _ => "",
            };
            anyhow::anyhow!("{}{hint}", session_proxy::protocol::chain(&err))
        });
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(async {
        match cli.command {
            Command::Run { .. } => unreachable!("run is handled above"),
            Command::Bench { mode } => cli::bench::run_bench(mode).await,
            Command::Admin {
                registry,
                json,
                action,
            } => cli::admin::run(&registry, json, action).await,
            Command::Demo { config, json } => {
                let report = cli::demo::run(config).await.context("demo failed")?;
                if json {
                    println!("{}", serde_json::to_string(&report)?);
                } else {
                    println!("{report}");
                }
                Ok(())
            }
            Command::Frontend {
                id,
                rpc_addr,
                server_type,
                open_sessions,
                client_addr,
                redis,
                resume_grace,
                insecure,
            } => {
                let mut frontend = cli::node::bench_frontend(&id, &server_type);
                frontend.rpc_addr = rpc_addr;
                frontend.client_addr = client_addr;
                frontend.gateway.resume_grace = Duration::from_secs(resume_grace);
                frontend.rpc.insecure = insecure;
                let mut builder = Node::builder().secret_from_env().frontend(frontend);
                if let Some(url) = &redis {
                    let store = session_proxy::cli::connect_store(url).await?;
                    builder = builder.store(store, StoreOptions::default());
                }
                let node = builder.start().await?;
                let sessions = node.sessions().context("a frontend has sessions")?;
                // Stand-ins for connected clients, to try the RPC without a
                // connector; they end with the drain.
                let mut owners = Vec::with_capacity(open_sessions);
                for i in 0..open_sessions {
                    let owner = sessions.create(ConnectInfo::default());
                    sessions.bind(owner.sid(), &format!("user-{i}"))?;
                    owners.push(owner);
                }
                if redis.is_some() {
                    println!("restored {} sessions", node.restored());
                }
                if let Some(addr) = node.client_addr() {
                    println!("frontend {id} clients on {addr}");
                }
                if let Some(addr) = node.rpc_addr() {
                    println!("frontend {id} listening on {addr}");
                }
                Ok(session_proxy::cli::serve_until_signal(vec![node]).await?)
            }
        }
    })
}
