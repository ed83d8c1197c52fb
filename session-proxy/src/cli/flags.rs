//! `run` without a cluster file: one node described by flags (or their
//! environment variables, so an orchestrator can start N identical
//! replicas), registered in a registry under a lease. Backends follow the
//! frontends registered there.

use super::{App, RunError};
use crate::frontend::{RedisStore, RedisStoreConfig, SessionStore, StoreOptions};
use crate::node::Node;
use crate::registry::{
    EtcdMembership, EtcdMembershipConfig, Membership, NodeRole, RedisMembership,
    RedisMembershipConfig,
};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

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
    /// With --redis: acknowledge a backend's change before it is in the
    /// store, and write it within 50 ms (a frontend that dies loses what
    /// it acknowledged in its last 50 ms). Default: acknowledged means
    /// stored.
    #[arg(long, env = "SESSION_PROXY_REDIS_WRITE_BEHIND")]
    pub redis_write_behind: bool,
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

fn required<'a, T>(value: &'a Option<T>, flag: &str) -> Result<&'a T, RunError> {
    value
        .as_ref()
        .ok_or_else(|| RunError::Usage(format!("without --config, {flag} is required")))
}

/// The registry at `url` (`redis://…` or `etcd://…`).
pub async fn connect_registry(url: &str) -> Result<Arc<dyn Membership>, RunError> {
    let failed = |source| RunError::Registry {
        url: url.to_string(),
        source,
    };
    if url.starts_with("redis://") || url.starts_with("rediss://") {
        let membership = RedisMembership::connect(RedisMembershipConfig::new(url))
            .await
            .map_err(failed)?;
        return Ok(Arc::new(membership));
    }
    if url.starts_with("etcd://") || url.starts_with("http://") {
        let membership = EtcdMembership::connect(EtcdMembershipConfig::new(url))
            .await
            .map_err(failed)?;
        return Ok(Arc::new(membership));
    }
    Err(RunError::Usage(format!(
        "unsupported registry {url:?}: use redis://host:port/db or etcd://host:port"
    )))
}

/// The store's options: the defaults, writing behind if asked.
pub(super) fn store_options(write_behind: bool) -> StoreOptions {
    let mut options = StoreOptions::default();
    options.write_behind = write_behind;
    options
}

/// The Redis session store at `url` (`redis://…` or `redis+cluster://…`).
pub async fn connect_store(url: &str) -> Result<Arc<dyn SessionStore>, RunError> {
    let store = RedisStore::connect(RedisStoreConfig::new(url))
        .await
        .map_err(|source| RunError::Store {
            url: url.to_string(),
            source,
        })?;
    Ok(Arc::new(store))
}

impl App {
    /// Runs one node described by `flags` until SIGINT/SIGTERM, registered
    /// in its registry. Prints `ready <id>` once it serves.
    pub(super) async fn run_flags(
        &self,
        flags: &NodeFlags,
        insecure: bool,
    ) -> Result<(), RunError> {
        let role = *required(&flags.role, "--role")?;
        let id = required(&flags.id, "--id")?.clone();
        let server_type = required(&flags.server_type, "--type")?.clone();
        // What it serves first: a binary without handlers for the type
        // says so before it dials anything.
        let (frontend, backend) = match role {
            RoleArg::Frontend => {
                let mut frontend = self.frontend_role(&id, &server_type);
                frontend.rpc_addr = *required(&flags.rpc_addr, "--rpc-addr")?;
                frontend.client_addr = flags.client_addr;
                frontend.advertise = flags.advertise.clone();
                frontend.advertise_rpc = flags.advertise_rpc.clone();
                frontend.gateway.max_connections_per_ip = flags.max_connections_per_ip;
                frontend.gateway.resume_grace = Duration::from_secs(flags.resume_grace_secs);
                frontend.rpc.insecure = insecure;
                (Some(frontend), None)
            }
            RoleArg::Backend => (None, Some(self.backend_role(&id, &server_type, None)?)),
        };
        let registry = connect_registry(required(&flags.registry, "--registry")?).await?;
        // Before any service exists: handles made earlier would record nothing.
        let metrics = match flags.admin_addr {
            Some(_) => Some(crate::admin::install_metrics(match role {
                RoleArg::Frontend => NodeRole::Frontend,
                RoleArg::Backend => NodeRole::Backend,
            })?),
            None => None,
        };
        let lease = Duration::from_secs(flags.lease_secs.max(1));
        let mut builder = Node::builder()
            .secret_from_env()
            .registry(registry, lease)
            .drain_limit(Duration::from_secs(flags.drain_secs));
        if let Some(addr) = flags.admin_addr {
            builder = builder.admin(addr, metrics);
        }
        if let Some(frontend) = frontend {
            builder = builder.frontend(frontend);
            if let Some(url) = &flags.redis {
                let options = store_options(flags.redis_write_behind);
                builder = builder.store(connect_store(url).await?, options);
            }
        }
        if let Some(backend) = backend {
            builder = builder.backend(backend);
        }
        let node = self.configure(builder).start().await?;
        println!("ready {id}");
        let report = node.run_until_signal().await?;
        if !report.complete() {
            tracing::warn!(
                ?report,
                "the drain did not finish everything; exiting anyway"
            );
        }
        Ok(())
    }
}
