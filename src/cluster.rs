//! A cluster described in one TOML file, one node per process — the way
//! Pinus starts servers from `servers.json`.
//!
//! ```toml
//! [cluster]
//! app = "bench"                       # the built-in app the nodes run
//! # redis = "redis://127.0.0.1:6379/0"  # optional session store
//! # worker_threads = 1                  # runtime threads per node process
//!
//! [[node]]
//! id = "connector-1"
//! type = "connector"
//! role = "frontend"
//! rpc = "127.0.0.1:4010"              # where backends connect
//! client = "127.0.0.1:3010"           # where clients connect
//!
//! [[node]]
//! id = "chat-1"
//! type = "chat"
//! role = "backend"
//! ```
//! `session-proxy run --config cluster.toml --node connector-1` starts one
//! node; a backend connects to every frontend listed. The cluster secret
//! comes from the `SESSION_PROXY_SECRET` environment variable; TLS from
//! `tls_cert`/`tls_key` (frontends) and `tls_ca` (backends) under
//! `[cluster]`.

use crate::bench_app;
use crate::{
    BackendSessionService, ClientConfig, RpcConfig, RpcServer, SessionConfig, SessionService,
};
use anyhow::{bail, Context};
use serde::Deserialize;
use session_proxy_backend::ClientTls;
use session_proxy_frontend::{
    Gateway, GatewayConfig, RedisStore, RedisStoreConfig, ServerTls, StoreOptions,
};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The whole file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Cluster-wide settings.
    #[serde(default)]
    pub cluster: ClusterSettings,
    /// The nodes.
    #[serde(rename = "node")]
    pub nodes: Vec<NodeConfig>,
}

/// Cluster-wide settings.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSettings {
    /// The built-in app: `"bench"` (the default).
    pub app: Option<String>,
    /// A Redis URL for the session store (frontends).
    pub redis: Option<String>,
    /// Heartbeat interval told to clients, seconds (default 10).
    pub heartbeat_secs: Option<u64>,
    /// Resume grace of dropped clients, seconds (default 30).
    pub resume_grace_secs: Option<u64>,
    /// Connections one client IP may hold on a frontend (default 256; load
    /// tests from one machine need more).
    pub max_connections_per_ip: Option<usize>,
    /// TLS: the frontends' certificate chain (PEM file). With `tls_key`,
    /// frontends serve backends and clients over TLS too (plain clients
    /// still work on the same port).
    pub tls_cert: Option<std::path::PathBuf>,
    /// TLS: the frontends' private key (PEM file).
    pub tls_key: Option<std::path::PathBuf>,
    /// TLS: the CA (PEM file) backends trust when dialling frontends; with
    /// it, backends dial over TLS.
    pub tls_ca: Option<std::path::PathBuf>,
    /// TLS: the name frontend certificates carry (default `localhost`).
    pub tls_server_name: Option<String>,
    /// Runtime worker threads of each node process (default: one per core).
    /// Several node processes sharing a machine do better with fewer
    /// threads each: less waking of threads across cores.
    pub worker_threads: Option<usize>,
}

/// Whether a node owns client sessions or runs handlers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeRole {
    /// Holds client connections and sessions.
    Frontend,
    /// Runs game logic on session proxies.
    Backend,
}

/// One node.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Unique id.
    pub id: String,
    /// Server type: the first part of the routes it serves.
    #[serde(rename = "type")]
    pub server_type: String,
    /// Frontend or backend.
    pub role: NodeRole,
    /// Frontends: where backends connect.
    pub rpc: Option<SocketAddr>,
    /// Frontends: where clients connect (TCP and WebSocket).
    pub client: Option<SocketAddr>,
    /// This node's runtime worker threads (overrides the cluster's).
    pub worker_threads: Option<usize>,
}

impl ClusterConfig {
    /// Reads and checks a config file.
    pub fn load(path: &Path) -> anyhow::Result<ClusterConfig> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let config: ClusterConfig =
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        config.check()?;
        Ok(config)
    }

    /// The worker threads node `id` runs with: its own setting, else the
    /// cluster's, else `None` (one per core).
    pub fn worker_threads(&self, id: &str) -> Option<usize> {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .and_then(|n| n.worker_threads)
            .or(self.cluster.worker_threads)
    }

    fn check(&self) -> anyhow::Result<()> {
        let mut ids = std::collections::HashSet::new();
        if self.cluster.worker_threads == Some(0) {
            bail!("worker_threads must be at least 1");
        }
        for n in &self.nodes {
            if !ids.insert(&n.id) {
                bail!("node id {} appears twice", n.id);
            }
            if n.worker_threads == Some(0) {
                bail!("node {}: worker_threads must be at least 1", n.id);
            }
            if n.role == NodeRole::Frontend && n.rpc.is_none() {
                bail!("frontend {} needs an rpc address", n.id);
            }
        }
        match self.cluster.app.as_deref() {
            None | Some("bench") => Ok(()),
            Some(other) => bail!("unknown app {other:?} (known: bench)"),
        }
    }

    /// The node with this id.
    pub fn node(&self, id: &str) -> anyhow::Result<&NodeConfig> {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .with_context(|| format!("no node {id:?} in the config"))
    }
}

/// Runs one node until SIGINT/SIGTERM. Prints `ready <node id>` once it
/// serves.
pub async fn run_node(config: &ClusterConfig, id: &str) -> anyhow::Result<()> {
    let node = config.node(id)?;
    match node.role {
        NodeRole::Frontend => run_frontend(config, node).await,
        NodeRole::Backend => run_backend(config, node).await,
    }
}

async fn wait_for_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    Ok(())
}

async fn run_frontend(config: &ClusterConfig, node: &NodeConfig) -> anyhow::Result<()> {
    let sessions = SessionService::new(SessionConfig::new(node.id.clone()));
    if let Some(url) = &config.cluster.redis {
        let store = RedisStore::connect(RedisStoreConfig::new(url.clone())).await?;
        sessions
            .attach_store(Arc::new(store), StoreOptions::default())
            .await?;
    }
    let rpc_addr = node.rpc.context("frontend without an rpc address")?;
    let tls = match (&config.cluster.tls_cert, &config.cluster.tls_key) {
        (Some(cert), Some(key)) => {
            Some(ServerTls::from_files(cert, key).context("loading the TLS certificate")?)
        }
        (None, None) => None,
        _ => bail!("tls_cert and tls_key go together"),
    };
    let mut rpc_config = RpcConfig::default();
    rpc_config.tls = tls.clone();
    let rpc = RpcServer::bind(rpc_addr, sessions.clone(), rpc_config).await?;
    let gateway = match node.client {
        Some(addr) => {
            let mut gw = GatewayConfig::new(node.server_type.clone());
            gw.heartbeat = Duration::from_secs(config.cluster.heartbeat_secs.unwrap_or(10));
            gw.resume_grace = Duration::from_secs(config.cluster.resume_grace_secs.unwrap_or(30));
            gw.max_pending_requests = 1024;
            if let Some(n) = config.cluster.max_connections_per_ip {
                gw.max_connections_per_ip = n;
            }
            gw.tls = tls;
            let mut gateway = Gateway::new(sessions.clone(), rpc.backends(), gw);
            bench_app::frontend_handlers(&node.server_type, gateway.handlers());
            Some(gateway.bind(addr).await?)
        }
        None => None,
    };
    println!("ready {}", node.id);
    wait_for_signal().await?;
    if let Some(g) = gateway {
        g.shutdown(Duration::from_secs(3)).await;
    }
    let _ = sessions.flush().await;
    rpc.shutdown(Duration::from_secs(3)).await;
    Ok(())
}

async fn run_backend(config: &ClusterConfig, node: &NodeConfig) -> anyhow::Result<()> {
    let mut client = ClientConfig::new(node.id.clone());
    client.server_type = Some(node.server_type.clone());
    if let Some(ca) = &config.cluster.tls_ca {
        let name = config
            .cluster
            .tls_server_name
            .as_deref()
            .unwrap_or("localhost");
        client.tls = Some(ClientTls::from_ca_file(ca, name).context("loading the TLS CA")?);
    }
    let service = BackendSessionService::new(client);
    service.serve(bench_app::backend_handlers(&node.server_type, &service));
    for f in config.nodes.iter().filter(|n| n.role == NodeRole::Frontend) {
        if let Some(rpc) = f.rpc {
            service.add_frontend_of_type(&f.id, &f.server_type, rpc.to_string());
        }
    }
    println!("ready {}", node.id);
    wait_for_signal().await?;
    service.close();
    Ok(())
}
