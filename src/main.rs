//! The `session-proxy` command: the demo cluster, cluster nodes, a
//! standalone frontend, and the benchmarks.

mod cli;

use anyhow::Context;
use clap::Parser;
use cli::node::{run_nodes, FrontendNode};
use cli::{Cli, Command};
use session_proxy::cluster::ClusterConfig;
use session_proxy::GatewayConfig;
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
                let mut gateway = GatewayConfig::new(server_type.clone());
                gateway.resume_grace = Duration::from_secs(resume_grace);
                let node = FrontendNode {
                    id: id.clone(),
                    server_type,
                    rpc_addr,
                    client_addr,
                    redis: redis.clone(),
                    gateway,
                    tls: None,
                    open_sessions,
                    insecure,
                    drain: cli::node::DEFAULT_DRAIN,
                    in_process: false,
                };
                let running = node.start().await?;
                if redis.is_some() {
                    println!("restored {} sessions", running.restored);
                }
                if let Some(addr) = running.client_addr {
                    println!("frontend {id} clients on {addr}");
                }
                println!("frontend {id} listening on {}", running.rpc_addr);
                running.serve_until_signal().await
            }
        }
    })
}
