//! The `session-proxy` command: the demo cluster, cluster nodes, a
//! standalone frontend, and the benchmarks.

mod cli;

use anyhow::Context;
use clap::Parser;
use cli::node::run_nodes;
use cli::{Cli, Command};
use session_proxy::cluster::ClusterConfig;
use session_proxy::frontend::StoreOptions;
use session_proxy::node::Node;
use session_proxy::ConnectInfo;
use std::time::Duration;
use tracing_subscriber::EnvFilter;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        cli::LogFormat::Text => logs.init(),
        cli::LogFormat::Json => logs.json().init(),
    }
    // A node's config is read first: it may set the runtime's threads.
    let cluster = match &cli.command {
        Command::Run {
            config: Some(config),
            ..
        } => Some(ClusterConfig::load(config)?),
        _ => None,
    };
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let (Some(cluster), Command::Run { node, .. }) = (&cluster, &cli.command) {
        if let Some(n) = cluster.process_threads(node) {
            builder.worker_threads(n);
        }
    }
    let runtime = builder.build().context("starting the tokio runtime")?;
    runtime.block_on(async {
        match cli.command {
            Command::Run {
                node,
                flags,
                insecure,
                ..
            } => match (&cluster, node.is_empty()) {
                (Some(config), false) => run_nodes(config, &node, insecure, flags.admin_addr).await,
                _ => cli::elastic::run_elastic(flags, insecure).await,
            },
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
                    let store = cli::node::connect_store(url).await?;
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
                cli::node::serve_until_signal(vec![node]).await
            }
        }
    })
}
