//! `run --config FILE --node ID[,ID…]`: nodes of a cluster file, one or
//! several in this process (its backends then reach its frontends in
//! process).

use super::flags::connect_store;
use super::flags::store_options;
use super::{App, RunError};
use crate::cluster::{ClusterConfig, NodeConfig, NodeRole};
use crate::frontend::ServerTls;
use crate::link::LinkTls;
use crate::node::{until_signal, BackendRole, FrontendRole, Node, NodeBuilder, DEFAULT_DRAIN};
use crate::registry::NodeRole as RegistryRole;
use std::net::SocketAddr;
use std::time::Duration;

impl App {
    /// A cluster file's frontend node.
    fn cluster_frontend(
        &self,
        config: &ClusterConfig,
        node: &NodeConfig,
    ) -> Result<FrontendRole, RunError> {
        let c = &config.cluster;
        let tls = match (&c.tls_cert, &c.tls_key) {
            (Some(cert), Some(key)) => Some(ServerTls::from_files(cert, key)?),
            _ => None,
        };
        let mut role = self.frontend_role(&node.id, &node.server_type);
        role.rpc_addr = node
            .rpc
            .ok_or_else(|| RunError::Usage(format!("frontend {} needs an rpc address", node.id)))?;
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

    /// A cluster file's backend node, linked to the file's frontends (those
    /// in `here` run in this process and are reached there).
    fn cluster_backend(
        &self,
        config: &ClusterConfig,
        node: &NodeConfig,
        here: &[&str],
    ) -> Result<BackendRole, RunError> {
        let tls = match &config.cluster.tls_ca {
            Some(ca) => {
                let name = config
                    .cluster
                    .tls_server_name
                    .as_deref()
                    .unwrap_or("localhost");
                Some(LinkTls::from_ca_file(ca, name).map_err(RunError::Tls)?)
            }
            None => None,
        };
        let mut role = self.backend_role(&node.id, &node.server_type, tls)?;
        for f in config.frontends() {
            let addr = match here.contains(&f.id.as_str()) {
                true => format!("{}{}", crate::link::inproc::SCHEME, f.id),
                false => match f.rpc {
                    Some(rpc) => rpc.to_string(),
                    None => continue,
                },
            };
            role = role.frontend(&f.id, addr);
        }
        Ok(role)
    }

    /// What every node of a cluster file shares: the store (frontends), the
    /// secret, the drain limit.
    async fn cluster_node(
        &self,
        config: &ClusterConfig,
        frontend: bool,
    ) -> Result<NodeBuilder, RunError> {
        let mut builder = Node::builder().secret_from_env().drain_limit(DEFAULT_DRAIN);
        if let (true, Some(url)) = (frontend, &config.cluster.redis) {
            let options = store_options(config.cluster.redis_write_behind);
            builder = builder.store(connect_store(url).await?, options);
        }
        Ok(self.configure(builder))
    }

    /// Runs the nodes `ids` of a cluster file in this one process until
    /// SIGINT/SIGTERM, with metrics and health probes on `admin` if given
    /// (one node only). Prints `ready <node id>` for each node once it
    /// serves.
    pub(super) async fn run_cluster_file(
        &self,
        config: &ClusterConfig,
        ids: &[String],
        insecure: bool,
        admin: Option<SocketAddr>,
    ) -> Result<(), RunError> {
        if admin.is_some() && ids.len() > 1 {
            return Err(RunError::Usage(
                "--admin-addr serves one node: run one node per process to have it".into(),
            ));
        }
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
            (Some(_), Some(node)) => Some(crate::admin::install_metrics(match node.role {
                NodeRole::Frontend => RegistryRole::Frontend,
                NodeRole::Backend => RegistryRole::Backend,
            })?),
            _ => None,
        };
        let mut running = Vec::new();
        for node in &frontends {
            let mut role = self.cluster_frontend(config, node)?;
            role.rpc.insecure = insecure;
            if in_process {
                role.rpc.in_process = Some(node.id.clone());
            }
            let mut builder = self.cluster_node(config, true).await?.frontend(role);
            if let Some(addr) = admin {
                builder = builder.admin(addr, metrics.clone());
            }
            running.push(builder.start().await?);
            println!("ready {}", node.id);
        }
        if !backends.is_empty() {
            let mut builder = self.cluster_node(config, false).await?;
            for node in &backends {
                builder = builder.backend(self.cluster_backend(config, node, &here)?);
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
}

/// Serves `nodes` until SIGINT/SIGTERM (or an admin drain of the first),
/// then drains them one after the other in order (frontends first, so
/// their last calls still reach the backends), each within its limit.
pub async fn serve_until_signal(nodes: Vec<Node>) -> Result<(), RunError> {
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
