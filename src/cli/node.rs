//! The node runners behind `session-proxy run` and `session-proxy
//! frontend`: they describe nodes (from a cluster file or flags) and hand
//! them to the library's [`Node`], which starts, serves and drains them.

use anyhow::Context;
use session_proxy::backend::LinkTls;
use session_proxy::cluster::{ClusterConfig, NodeConfig, NodeRole};
use session_proxy::frontend::{
    RedisStore, RedisStoreConfig, ServerTls, SessionStore, StoreOptions,
};
use session_proxy::node::{until_signal, BackendRole, FrontendRole, Node, NodeBuilder};
use session_proxy::registry::NodeRole as RegistryRole;
use session_proxy_bench::app;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// How long a node's whole drain may take unless told otherwise.
pub const DEFAULT_DRAIN: Duration = session_proxy::node::DEFAULT_DRAIN;

/// The Redis session store at `url`.
pub async fn connect_store(url: &str) -> anyhow::Result<Arc<dyn SessionStore>> {
    let store = RedisStore::connect(RedisStoreConfig::new(url))
        .await
        .with_context(|| format!("connecting to the session store at {url}"))?;
    Ok(Arc::new(store))
}

/// A frontend serving the bench app's own routes on its gateway.
pub fn bench_frontend(id: &str, server_type: &str) -> FrontendRole {
    let routes_of = server_type.to_string();
    FrontendRole::new(id, server_type)
        .gateway(move |gateway| app::frontend_handlers(&routes_of, gateway.handlers()))
}

/// A backend serving the bench app's routes of `server_type`.
pub fn bench_backend(id: &str, server_type: &str, tls: Option<LinkTls>) -> BackendRole {
    let routes_of = server_type.to_string();
    let mut role = BackendRole::with_service(id, server_type, move |service| {
        app::backend_handlers(&routes_of, service)
    });
    role.config.tls = tls;
    role
}

/// A cluster file's frontend node.
fn cluster_frontend(config: &ClusterConfig, node: &NodeConfig) -> anyhow::Result<FrontendRole> {
    let c = &config.cluster;
    let tls = match (&c.tls_cert, &c.tls_key) {
        (Some(cert), Some(key)) => {
            Some(ServerTls::from_files(cert, key).context("loading the TLS certificate")?)
        }
        _ => None,
    };
    let mut role = bench_frontend(&node.id, &node.server_type);
    role.rpc_addr = node.rpc.context("a frontend needs an rpc address")?;
    role.client_addr = node.client;
    role.gateway.heartbeat = Duration::from_secs(c.heartbeat_secs.unwrap_or(10));
    role.gateway.resume_grace = Duration::from_secs(c.resume_grace_secs.unwrap_or(30));
    if let Some(n) = c.max_connections_per_ip {
        role.gateway.max_connections_per_ip = n;
    }
    role.gateway.tls = tls.clone();
    role.rpc.tls = tls;
    Ok(role)
}

/// A cluster file's backend node, linked to the file's frontends (those in
/// `here` run in this process and are reached there).
fn cluster_backend(
    config: &ClusterConfig,
    node: &NodeConfig,
    here: &[&str],
) -> anyhow::Result<BackendRole> {
    let tls = match &config.cluster.tls_ca {
        Some(ca) => {
            let name = config
                .cluster
                .tls_server_name
                .as_deref()
                .unwrap_or("localhost");
            Some(LinkTls::from_ca_file(ca, name).context("loading the TLS CA")?)
        }
        None => None,
    };
    let mut role = bench_backend(&node.id, &node.server_type, tls);
    for f in config.frontends() {
        let addr = match here.contains(&f.id.as_str()) {
            true => format!("{}{}", session_proxy::protocol::inproc::SCHEME, f.id),
            false => match f.rpc {
                Some(rpc) => rpc.to_string(),
                None => continue,
            },
        };
        role = role.frontend(&f.id, addr);
    }
    Ok(role)
}

/// What every node of a cluster file shares: the store, the secret, the
/// drain limit.
async fn cluster_node(config: &ClusterConfig, frontend: bool) -> anyhow::Result<NodeBuilder> {
    let mut builder = Node::builder().secret_from_env().drain_limit(DEFAULT_DRAIN);
    if let (true, Some(url)) = (frontend, &config.cluster.redis) {
        builder = builder.store(connect_store(url).await?, StoreOptions::default());
    }
    Ok(builder)
}

/// Runs the nodes `ids` of a cluster file in this one process until
/// SIGINT/SIGTERM, with metrics and health probes on `admin` if given (one
/// node only). Its backends reach its frontends in process (no TCP hop),
/// and the file's other frontends over TCP. Prints `ready <node id>` for
/// each node once it serves.
pub async fn run_nodes(
    config: &ClusterConfig,
    ids: &[String],
    insecure: bool,
    admin: Option<SocketAddr>,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        admin.is_none() || ids.len() == 1,
        "--admin-addr serves one node: run one node per process to have it"
    );
    let nodes = ids
        .iter()
        .map(|id| config.node(id))
        .collect::<Result<Vec<_>, _>>()?;
    let (frontends, backends): (Vec<&NodeConfig>, Vec<&NodeConfig>) =
        nodes.iter().partition(|n| n.role == NodeRole::Frontend);
    let in_process = nodes.len() > 1;
    let here: Vec<&str> = match in_process {
        true => frontends.iter().map(|n| n.id.as_str()).collect(),
        false => Vec::new(),
    };
    // Before any service exists: handles made earlier would record nothing.
    let metrics = match (admin, nodes.first()) {
        (Some(_), Some(node)) => Some(session_proxy::admin::install_metrics(match node.role {
            NodeRole::Frontend => RegistryRole::Frontend,
            NodeRole::Backend => RegistryRole::Backend,
        })?),
        _ => None,
    };
    let mut running = Vec::new();
    for node in &frontends {
        let mut role = cluster_frontend(config, node)?;
        role.rpc.insecure = insecure;
        if in_process {
            role.rpc.in_process = Some(node.id.clone());
        }
        let mut builder = cluster_node(config, true).await?.frontend(role);
        if let Some(addr) = admin {
            builder = builder.admin(addr, metrics.clone());
        }
        running.push(builder.start().await?);
        println!("ready {}", node.id);
    }
    if !backends.is_empty() {
        let mut builder = cluster_node(config, false).await?;
        for node in &backends {
            builder = builder.backend(cluster_backend(config, node, &here)?);
        }
        if let Some(addr) = admin {
            builder = builder.admin(addr, metrics);
        }
        running.push(builder.start().await?);
        for node in &backends {
            println!("ready {}", node.id);
        }
    }
    serve_until_signal(running).await
}

/// Serves `nodes` until SIGINT/SIGTERM (or an admin drain of the first),
/// then drains them one after the other in order (frontends first, so
/// their last calls still reach the backends), each within its limit.
pub async fn serve_until_signal(nodes: Vec<Node>) -> anyhow::Result<()> {
    let Some(first) = nodes.first() else {
        return Ok(());
    };
    let _second = until_signal(&first.control()).await?;
    for mut node in nodes {
        let report = node.drain(DEFAULT_DRAIN).await;
        if !report.complete() {
            tracing::warn!(
                ?report,
                "the drain did not finish everything; exiting anyway"
            );
        }
    }
    Ok(())
}
