//! `session-proxy run` without a cluster file: one node described by flags
//! (or their environment variables, so an orchestrator can start N
//! identical replicas), registered in a registry under a lease. Backends
//! follow the frontends registered there.

use super::node::{backend_service, secret_from_env, serve_backend, FrontendNode};
use super::node_admin::{self, Control};
use anyhow::{bail, Context};
use session_proxy::registry::{
    follow_frontends, EtcdMembership, EtcdMembershipConfig, Membership, NodeRecord, NodeRole,
    NodeState, RedisMembership, RedisMembershipConfig, Registration,
};
use session_proxy::GatewayConfig;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// How long a new frontend stays `starting` waiting for a backend.
const READY_WAIT: Duration = Duration::from_secs(5);

/// A node's role, on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum RoleArg {
    /// Owns client sessions.
    Frontend,
    /// Runs handlers.
    Backend,
}

/// One node, by flags; each flag also reads `SESSION_PROXY_<NAME>`.
#[derive(clap::Args, Clone, Debug)]
pub struct NodeFlags {
    /// The node's role (without --config).
    #[arg(long, env = "SESSION_PROXY_ROLE", value_enum)]
    pub role: Option<RoleArg>,
    /// The node's id, unique in the cluster (e.g. connector-7).
    #[arg(long, env = "SESSION_PROXY_ID")]
    pub id: Option<String>,
    /// The node's server type (e.g. connector, chat).
    #[arg(long = "type", env = "SESSION_PROXY_TYPE")]
    pub server_type: Option<String>,
    /// Where a frontend listens for backends.
    #[arg(long, env = "SESSION_PROXY_RPC_ADDR")]
    pub rpc_addr: Option<SocketAddr>,
    /// Where a frontend listens for clients.
    #[arg(long, env = "SESSION_PROXY_CLIENT_ADDR")]
    pub client_addr: Option<SocketAddr>,
    /// The client address as clients should dial it (behind NAT or a load
    /// balancer); default: --client-addr.
    #[arg(long, env = "SESSION_PROXY_ADVERTISE")]
    pub advertise: Option<String>,
    /// The RPC address as backends should dial it; default: --rpc-addr.
    #[arg(long, env = "SESSION_PROXY_ADVERTISE_RPC")]
    pub advertise_rpc: Option<String>,
    /// The registry: redis://host:port/db or etcd://host:port.
    #[arg(long, env = "SESSION_PROXY_REGISTRY")]
    pub registry: Option<String>,
    /// Keep a frontend's sessions in this Redis (redis://…) or Redis
    /// Cluster (redis+cluster://host:port,host:port).
    #[arg(long, env = "SESSION_PROXY_REDIS")]
    pub redis: Option<String>,
    /// The most client connections from one IP address (a load generator
    /// on one machine needs many).
    #[arg(
        long,
        env = "SESSION_PROXY_MAX_CONNECTIONS_PER_IP",
        default_value_t = 256
    )]
    pub max_connections_per_ip: usize,
    /// How long the drain on SIGTERM may take, in seconds, all stages
    /// together (a second SIGTERM ends at once).
    #[arg(long, env = "SESSION_PROXY_DRAIN_SECS", default_value_t = 10)]
    pub drain_secs: u64,
    /// How long a parked session waits for its client to resume, in
    /// seconds (0: no resume).
    #[arg(long, env = "SESSION_PROXY_RESUME_GRACE_SECS", default_value_t = 30)]
    pub resume_grace_secs: u64,
    /// Serve Prometheus metrics (`/metrics`) and health probes (`/healthz`,
    /// `/readyz`) on this address. Off by default.
    #[arg(long, env = "SESSION_PROXY_ADMIN_ADDR")]
    pub admin_addr: Option<SocketAddr>,
    /// The lease of this node's record, in seconds (renewed every third).
    #[arg(long, env = "SESSION_PROXY_LEASE_SECS", default_value_t = 10)]
    pub lease_secs: u64,
}

fn required<'a, T>(value: &'a Option<T>, flag: &str) -> anyhow::Result<&'a T> {
    value
        .as_ref()
        .with_context(|| format!("without --config, {flag} is required"))
}

/// The registry at `url` (`redis://…` or `etcd://…`).
pub(crate) async fn connect(url: &str) -> anyhow::Result<Arc<dyn Membership>> {
    if url.starts_with("redis://") || url.starts_with("rediss://") {
        let membership = RedisMembership::connect(RedisMembershipConfig::new(url))
            .await
            .with_context(|| format!("connecting to the registry at {url}"))?;
        return Ok(Arc::new(membership));
    }
    if url.starts_with("etcd://") || url.starts_with("http://") {
        let membership = EtcdMembership::connect(EtcdMembershipConfig::new(url))
            .await
            .with_context(|| format!("connecting to the registry at {url}"))?;
        return Ok(Arc::new(membership));
    }
    bail!("unsupported registry {url:?}: use redis://host:port/db or etcd://host:port")
}

/// Runs one node described by `flags` until SIGINT/SIGTERM, registered in
/// its registry. Prints `ready <id>` once it serves.
pub async fn run_elastic(flags: NodeFlags, insecure: bool) -> anyhow::Result<()> {
    let role = *required(&flags.role, "--role")?;
    let id = required(&flags.id, "--id")?.clone();
    let server_type = required(&flags.server_type, "--type")?.clone();
    let registry = connect(required(&flags.registry, "--registry")?).await?;
    // Before any service exists: handles made earlier would record nothing.
    let metrics = match flags.admin_addr {
        Some(_) => Some(session_proxy::admin::install_metrics(match role {
            RoleArg::Frontend => NodeRole::Frontend,
            RoleArg::Backend => NodeRole::Backend,
        })?),
        None => None,
    };
    let lease = Duration::from_secs(flags.lease_secs.max(1));
    let drain = Duration::from_secs(flags.drain_secs);
    match role {
        RoleArg::Frontend => {
            let rpc_addr = *required(&flags.rpc_addr, "--rpc-addr")?;
            let mut gateway = GatewayConfig::new(server_type.clone());
            gateway.max_connections_per_ip = flags.max_connections_per_ip;
            gateway.resume_grace = Duration::from_secs(flags.resume_grace_secs);
            let node = FrontendNode {
                id: id.clone(),
                server_type: server_type.clone(),
                rpc_addr,
                client_addr: flags.client_addr,
                redis: flags.redis.clone(),
                gateway,
                tls: None,
                open_sessions: 0,
                insecure,
                drain,
                in_process: false,
            };
            let running = node.start().await?;
            let admin = match flags.admin_addr {
                Some(addr) => Some(running.serve_admin(addr, metrics).await?),
                None => None,
            };
            // Starting until a backend has connected: gates do not hand it
            // out before it can forward.
            let mut record = NodeRecord::new(&id, NodeRole::Frontend, &server_type).with_rpc_addr(
                flags
                    .advertise_rpc
                    .unwrap_or_else(|| running.rpc_addr.to_string()),
            );
            if let Some(addr) = flags
                .advertise
                .or(running.client_addr.map(|a| a.to_string()))
            {
                record = record.with_client_addr(addr);
            }
            if let Some(admin) = &admin {
                record = record.with_admin_addr(admin.local_addr().to_string());
            }
            record.state = NodeState::Starting;
            let registration = Registration::register(registry, record, lease).await;
            let backends = running.backends();
            let readiness = registration.handle();
            tokio::spawn(async move {
                let until = tokio::time::Instant::now() + READY_WAIT;
                while backends.nodes().is_empty() && tokio::time::Instant::now() < until {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                if backends.nodes().is_empty() {
                    tracing::warn!(within = ?READY_WAIT, "no backend connected yet; handed out anyway");
                }
                readiness.update(|r| {
                    // (A SIGTERM meanwhile made it draining: it stays so.)
                    if r.state == NodeState::Starting {
                        r.state = NodeState::Active;
                    }
                });
            });
            let sessions = running.sessions().clone();
            let counting = registration.handle();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(lease / 3).await;
                    if !counting.set_clients(sessions.count() as u64) {
                        return;
                    }
                }
            });
            println!("ready {id}");
            let served = running.serve_registered(Some(registration)).await;
            if let Some(admin) = admin {
                admin.shutdown(Duration::from_secs(1)).await;
            }
            served
        }
        RoleArg::Backend => {
            let service = backend_service(&id, &server_type, None)?;
            let following = follow_frontends(registry.watch(), service.clone());
            let control = Control::default();
            let admin = match flags.admin_addr {
                Some(addr) => Some(
                    node_admin::backend(
                        addr,
                        metrics,
                        (&id, &server_type),
                        &control,
                        secret_from_env(),
                    )
                    .await?,
                ),
                None => None,
            };
            let mut record = NodeRecord::new(&id, NodeRole::Backend, &server_type);
            if let Some(admin) = &admin {
                record = record.with_admin_addr(admin.local_addr().to_string());
            }
            let registration = Registration::register(registry, record, lease).await;
            println!("ready {id}");
            let served = serve_backend(service, Some(registration), drain, control).await;
            drop(following);
            if let Some(admin) = admin {
                admin.shutdown(Duration::from_secs(1)).await;
            }
            served
        }
    }
}
