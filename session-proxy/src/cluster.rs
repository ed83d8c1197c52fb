//! A cluster described in one TOML file, one node per process — the way
//! Pinus starts servers from `servers.json`.
//!
//! ```toml
//! [cluster]
//! app = "bench"                       # what the shipped binary serves
//! # redis = "redis://127.0.0.1:6379/0"  # optional session store (or
//! #                                     # "redis+cluster://h:p,h:p")
//! # redis_write_behind = true           # acknowledge before the write
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
//! node (the CLI runs it); a backend connects to every frontend listed. The cluster secret
//! comes from the `SESSION_PROXY_SECRET` environment variable; TLS from
//! `tls_cert`/`tls_key` (frontends) and `tls_ca` (backends) under
//! `[cluster]`.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Why a cluster file was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// The file could not be read.
    #[error("error reading {}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML for a cluster.
    #[error("error parsing {}", .path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the TOML parser said.
        #[source]
        source: toml::de::Error,
    },
    /// A field holds a value that cannot work; `field` names it.
    #[error("{field}: {problem}")]
    Invalid {
        /// The field, as written in the file (`node.chat-1.worker_threads`).
        field: String,
        /// What is wrong with it.
        problem: String,
    },
    /// No node with this id is in the file.
    #[error("no node {0:?} in the cluster file")]
    UnknownNode(String),
}

fn invalid(field: impl Into<String>, problem: impl Into<String>) -> ClusterError {
    ClusterError::Invalid {
        field: field.into(),
        problem: problem.into(),
    }
}

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
    /// The app the shipped `session-proxy` binary serves, by name:
    /// `"bench"` (its benchmark routes). Without it (or `--app`), that
    /// binary's frontends are generic connectors and its backends refuse
    /// to start. A game's own binary (`session_proxy::cli::App`, feature
    /// `cli`) serves its own handlers and ignores it.
    pub app: Option<String>,
    /// A Redis URL for the session store (frontends).
    pub redis: Option<String>,
    /// Acknowledge changes before they are in the store, written within
    /// 50 ms ([`StoreOptions::write_behind`](crate::frontend::StoreOptions::write_behind),
    /// its loss window). Default: false.
    #[serde(default)]
    pub redis_write_behind: bool,
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
    pub tls_cert: Option<PathBuf>,
    /// TLS: the frontends' private key (PEM file).
    pub tls_key: Option<PathBuf>,
    /// TLS: the CA (PEM file) backends trust when dialling frontends; with
    /// it, backends dial over TLS.
    pub tls_ca: Option<PathBuf>,
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
    pub fn load(path: &Path) -> Result<ClusterConfig, ClusterError> {
        let text = std::fs::read_to_string(path).map_err(|source| ClusterError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let config: ClusterConfig =
            toml::from_str(&text).map_err(|source| ClusterError::Parse {
                path: path.to_path_buf(),
                source,
            })?;
        config.check()?;
        Ok(config)
    }

    /// The runtime threads of a process running the nodes `ids`: the
    /// node's own setting for one node, the cluster's for several.
    pub fn process_threads(&self, ids: &[String]) -> Option<usize> {
        match ids {
            [id] => self.worker_threads(id),
            _ => self.cluster.worker_threads,
        }
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

    fn check(&self) -> Result<(), ClusterError> {
        let mut ids = std::collections::HashSet::new();
        if self.cluster.worker_threads == Some(0) {
            return Err(invalid("cluster.worker_threads", "must be at least 1"));
        }
        if self.cluster.tls_cert.is_some() != self.cluster.tls_key.is_some() {
            return Err(invalid(
                "cluster.tls_cert",
                "tls_cert and tls_key go together",
            ));
        }
        for n in &self.nodes {
            if !ids.insert(&n.id) {
                return Err(invalid(format!("node.{}.id", n.id), "appears twice"));
            }
            if n.worker_threads == Some(0) {
                return Err(invalid(
                    format!("node.{}.worker_threads", n.id),
                    "must be at least 1",
                ));
            }
            if n.role == NodeRole::Frontend && n.rpc.is_none() {
                return Err(invalid(
                    format!("node.{}.rpc", n.id),
                    "a frontend needs an rpc address",
                ));
            }
        }
        match self.cluster.app.as_deref() {
            None | Some("bench") => Ok(()),
            Some(other) => Err(invalid(
                "cluster.app",
                format!("unknown app {other:?} (known: bench)"),
            )),
        }
    }

    /// The node with this id.
    pub fn node(&self, id: &str) -> Result<&NodeConfig, ClusterError> {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .ok_or_else(|| ClusterError::UnknownNode(id.to_string()))
    }

    /// The frontends of the cluster.
    pub fn frontends(&self) -> impl Iterator<Item = &NodeConfig> {
        self.nodes.iter().filter(|n| n.role == NodeRole::Frontend)
    }
}
