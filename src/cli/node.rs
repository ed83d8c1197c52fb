//! The node runners behind `session-proxy run` and `session-proxy frontend`:
//! one frontend runner and one backend runner, each serving until SIGINT or
//! SIGTERM and then draining within a bound.

use super::node_admin::{self, Control};
use anyhow::Context;
use session_proxy::admin;
use session_proxy::backend::LinkTls;
use session_proxy::cluster::{ClusterConfig, NodeConfig, NodeRole};
use session_proxy::frontend::{RedisStore, RedisStoreConfig, ServerTls, StoreOptions};
use session_proxy::protocol::Secret;
use session_proxy::registry::{
    follow_frontends, Membership, NodeRecord, NodeRole as RegistryRole, Registration,
    StaticMembership,
};
use session_proxy::{
    BackendConfig, BackendSessionService, ConnectInfo, Gateway, GatewayConfig, GatewayServer,
    RpcConfig, RpcServer, SessionConfig, SessionOwner, SessionService,
};
use session_proxy_bench::app;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// The environment variable the cluster secret is read from. Only this
/// binary reads it; library configs take the secret as a value.
pub const SECRET_VAR: &str = "SESSION_PROXY_SECRET";

/// How long a node's whole drain may take unless told otherwise.
pub const DEFAULT_DRAIN: Duration = Duration::from_secs(10);

/// The time left of a drain that must end by `until`; each stage gets what
/// the earlier ones left, and at least a moment to try.
fn left(until: tokio::time::Instant) -> Duration {
    until
        .saturating_duration_since(tokio::time::Instant::now())
        .max(Duration::from_millis(100))
}

/// The cluster secret from the environment, if set.
pub fn secret_from_env() -> Option<Secret> {
    Secret::from_env(SECRET_VAR)
}

/// Everything a frontend node needs; both subcommands fill it in.
pub struct FrontendNode {
    /// This frontend's id.
    pub id: String,
    /// Its server type (the first part of its local routes).
    pub server_type: String,
    /// Where backends connect.
    pub rpc_addr: SocketAddr,
    /// Where clients connect, if it serves any.
    pub client_addr: Option<SocketAddr>,
    /// The session store's Redis URL, if any.
    pub redis: Option<String>,
    /// The gateway's settings (heartbeat, resume grace, limits, TLS).
    pub gateway: GatewayConfig,
    /// TLS for backend links, if any.
    pub tls: Option<ServerTls>,
    /// Sessions to open at start, bound to `user-0` … (stand-ins for
    /// clients, to try the RPC without a connector).
    pub open_sessions: usize,
    /// Listen beyond loopback without a cluster secret (`--insecure`).
    pub insecure: bool,
    /// How long the drain on SIGTERM may take, all stages together.
    pub drain: Duration,
    /// Also take backends of this process in process, at `inproc://<id>`.
    pub in_process: bool,
}

/// A frontend node that is serving.
pub struct RunningFrontend {
    /// Sessions restored from the store at start.
    pub restored: usize,
    /// The address backends connect to.
    pub rpc_addr: SocketAddr,
    /// The address clients connect to, if any.
    pub client_addr: Option<SocketAddr>,
    sessions: SessionService,
    rpc: RpcServer,
    gateway: Option<GatewayServer>,
    owners: Vec<SessionOwner>,
    drain: Duration,
    control: Control,
    id: String,
    server_type: String,
}

impl FrontendNode {
    /// Options from a cluster file's node.
    pub fn from_cluster(config: &ClusterConfig, node: &NodeConfig) -> anyhow::Result<Self> {
        let c = &config.cluster;
        let tls = match (&c.tls_cert, &c.tls_key) {
            (Some(cert), Some(key)) => {
                Some(ServerTls::from_files(cert, key).context("loading the TLS certificate")?)
            }
            _ => None,
        };
        let mut gateway = GatewayConfig::new(node.server_type.clone());
        gateway.heartbeat = Duration::from_secs(c.heartbeat_secs.unwrap_or(10));
        gateway.resume_grace = Duration::from_secs(c.resume_grace_secs.unwrap_or(30));
        gateway.max_pending_requests = 1024;
        if let Some(n) = c.max_connections_per_ip {
            gateway.max_connections_per_ip = n;
        }
        gateway.tls = tls.clone();
        Ok(FrontendNode {
            id: node.id.clone(),
            server_type: node.server_type.clone(),
            rpc_addr: node.rpc.context("a frontend needs an rpc address")?,
            client_addr: node.client,
            redis: c.redis.clone(),
            gateway,
            tls,
            open_sessions: 0,
            insecure: false,
            drain: DEFAULT_DRAIN,
            in_process: false,
        })
    }

    /// Restores sessions from the store, binds the RPC server and the
    /// gateway, and opens the stand-in sessions.
    pub async fn start(self) -> anyhow::Result<RunningFrontend> {
        let sessions = SessionService::new(SessionConfig::new(self.id.clone()));
        let mut restored = 0;
        if let Some(url) = &self.redis {
            let store = RedisStore::connect(RedisStoreConfig::new(url.clone()))
                .await
                .with_context(|| format!("connecting to the session store at {url}"))?;
            restored = sessions
                .attach_store(Arc::new(store), StoreOptions::default())
                .await
                .context("restoring sessions from the store")?;
        }
        let mut rpc_config = RpcConfig::default();
        rpc_config.tls = self.tls;
        rpc_config.secret = secret_from_env();
        rpc_config.insecure = self.insecure;
        if self.in_process {
            rpc_config.in_process = Some(self.id.clone());
        }
        let rpc = RpcServer::bind(self.rpc_addr, sessions.clone(), rpc_config)
            .await
            .with_context(|| format!("listening for backends on {}", self.rpc_addr))?;
        let mut owners = Vec::with_capacity(self.open_sessions);
        for i in 0..self.open_sessions {
            let owner = sessions.create(ConnectInfo::default());
            sessions.bind(owner.sid(), &format!("user-{i}"))?;
            owners.push(owner);
        }
        let gateway = match self.client_addr {
            Some(addr) => {
                let mut gateway = Gateway::new(sessions.clone(), rpc.backends(), self.gateway);
                app::frontend_handlers(&self.server_type, gateway.handlers());
                let bound = gateway
                    .bind(addr)
                    .await
                    .with_context(|| format!("listening for clients on {addr}"))?;
                Some(bound)
            }
            None => None,
        };
        Ok(RunningFrontend {
            restored,
            rpc_addr: rpc.local_addr(),
            client_addr: gateway.as_ref().map(GatewayServer::local_addr),
            sessions,
            rpc,
            gateway,
            owners,
            drain: self.drain,
            control: Control::default(),
            id: self.id,
            server_type: self.server_type,
        })
    }
}

impl RunningFrontend {
    /// The sessions it serves.
    pub fn sessions(&self) -> &SessionService {
        &self.sessions
    }

    /// The backends connected to it.
    pub fn backends(&self) -> session_proxy::BackendRegistry {
        self.rpc.backends()
    }

    /// Serves `/metrics`, `/healthz`, `/readyz` and the admin actions on
    /// `addr`.
    pub async fn serve_admin(
        &self,
        addr: SocketAddr,
        metrics: Option<admin::Metrics>,
    ) -> anyhow::Result<admin::AdminServer> {
        node_admin::frontend(
            addr,
            metrics,
            (&self.id, &self.server_type),
            (&self.sessions, self.rpc.backends()),
            &self.control,
            secret_from_env(),
        )
        .await
    }

    /// Serves until SIGINT/SIGTERM, then drains (see
    /// [`serve_registered`](Self::serve_registered)).
    pub async fn serve_until_signal(self) -> anyhow::Result<()> {
        self.serve_registered(None).await
    }

    /// Serves until SIGINT/SIGTERM, then drains within the node's drain
    /// limit: marked draining in the registry (gates stop handing it out),
    /// no new clients, each client kicked with `"reconnect"` after the
    /// answers in flight (its session parks), every change written to the
    /// store, backend links closed once their calls are answered, every
    /// session handed over in the store for any frontend to resume, and the
    /// record removed.
    pub async fn serve_registered(self, registration: Option<Registration>) -> anyhow::Result<()> {
        wait_for_signal(&self.control).await?;
        self.control.start_draining();
        let until = tokio::time::Instant::now() + self.drain;
        tracing::info!(limit = ?self.drain, "draining");
        if let Some(r) = &registration {
            r.set_draining();
        }
        drop(self.owners);
        if let Some(gateway) = self.gateway {
            if !gateway.shutdown(left(until)).await {
                tracing::warn!("client connections still open at the drain limit");
            }
        }
        if let Err(err) = self.sessions.flush_within(left(until)).await {
            tracing::warn!(cause = %err, "last write to the session store failed");
        }
        if !self.rpc.shutdown(left(until)).await {
            tracing::warn!("backend connections still open at the drain limit; exiting anyway");
        }
        if self.sessions.has_store() {
            match self.sessions.hand_over(left(until)).await {
                Ok(n) => tracing::info!(sessions = n, "sessions handed over"),
                Err(err) => {
                    tracing::warn!(cause = %err, "handing sessions over failed; their clients resume once this node's sessions expire or it restarts")
                }
            }
        }
        if let Some(r) = registration {
            r.deregister(left(until)).await;
        }
        tracing::info!("drained");
        Ok(())
    }
}

/// Runs node `id` of a cluster file until SIGINT/SIGTERM, with metrics and
/// health probes on `admin` if given. Prints `ready <node id>` once it
/// serves.
pub async fn run_node(
    config: &ClusterConfig,
    id: &str,
    insecure: bool,
    admin: Option<SocketAddr>,
) -> anyhow::Result<()> {
    let node = config.node(id)?;
    // Before any service exists: handles made earlier would record nothing.
    let metrics = match admin {
        Some(_) => Some(admin::install_metrics(match node.role {
            NodeRole::Frontend => RegistryRole::Frontend,
            NodeRole::Backend => RegistryRole::Backend,
        })?),
        None => None,
    };
    match node.role {
        NodeRole::Frontend => {
            let mut frontend = FrontendNode::from_cluster(config, node)?;
            frontend.insecure = insecure;
            let running = frontend.start().await?;
            let admin = match admin {
                Some(addr) => Some(running.serve_admin(addr, metrics).await?),
                None => None,
            };
            println!("ready {}", node.id);
            let served = running.serve_until_signal().await;
            if let Some(admin) = admin {
                admin.shutdown(Duration::from_secs(1)).await;
            }
            served
        }
        NodeRole::Backend => {
            let control = Control::default();
            let admin = match admin {
                Some(addr) => Some(
                    node_admin::backend(
                        addr,
                        metrics,
                        (&node.id, &node.server_type),
                        &control,
                        secret_from_env(),
                    )
                    .await?,
                ),
                None => None,
            };
            let served = run_backend(config, node, control).await;
            if let Some(admin) = admin {
                admin.shutdown(Duration::from_secs(1)).await;
            }
            served
        }
    }
}

/// Runs the nodes `ids` of the cluster file in this one process until
/// SIGINT/SIGTERM: its backends reach its frontends in process (no TCP hop),
/// and the other frontends of the file over TCP as usual. One node is
/// [`run_node`].
pub async fn run_nodes(
    config: &ClusterConfig,
    ids: &[String],
    insecure: bool,
    admin: Option<SocketAddr>,
) -> anyhow::Result<()> {
    if let [id] = ids {
        return run_node(config, id, insecure, admin).await;
    }
    anyhow::ensure!(
        admin.is_none(),
        "--admin-addr serves one node: run one node per process to have it"
    );
    let nodes = ids
        .iter()
        .map(|id| config.node(id))
        .collect::<Result<Vec<_>, _>>()?;
    let here: std::collections::HashSet<&str> = nodes
        .iter()
        .filter(|n| n.role == NodeRole::Frontend)
        .map(|n| n.id.as_str())
        .collect();
    let mut serving: Vec<std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>>>>> =
        Vec::new();
    for node in nodes.iter().filter(|n| n.role == NodeRole::Frontend) {
        let mut frontend = FrontendNode::from_cluster(config, node)?;
        frontend.insecure = insecure;
        frontend.in_process = true;
        let running = frontend.start().await?;
        println!("ready {}", node.id);
        serving.push(Box::pin(running.serve_until_signal()));
    }
    for node in nodes.iter().filter(|n| n.role == NodeRole::Backend) {
        serving.push(Box::pin(run_backend_with(
            config,
            node,
            Control::default(),
            &here,
        )));
    }
    let mut failed = None;
    for served in futures::future::join_all(serving).await {
        if let Err(err) = served {
            failed.get_or_insert(err);
        }
    }
    failed.map_or(Ok(()), Err)
}

async fn run_backend(
    config: &ClusterConfig,
    node: &NodeConfig,
    control: Control,
) -> anyhow::Result<()> {
    run_backend_with(config, node, control, &Default::default()).await
}

/// A backend node; the frontends in `in_process` run in this process and
/// are reached there.
async fn run_backend_with(
    config: &ClusterConfig,
    node: &NodeConfig,
    control: Control,
    in_process: &std::collections::HashSet<&str>,
) -> anyhow::Result<()> {
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
    let service = backend_service(&node.id, &node.server_type, tls)?;
    // The file's frontends are a static registry, followed like any other.
    let frontends = config.frontends().filter_map(|f| {
        let rpc = match in_process.contains(f.id.as_str()) {
            true => format!("{}{}", session_proxy::protocol::inproc::SCHEME, f.id),
            false => f.rpc?.to_string(),
        };
        Some(NodeRecord::new(&f.id, RegistryRole::Frontend, &f.server_type).with_rpc_addr(rpc))
    });
    let members = StaticMembership::new(frontends.collect());
    let following = follow_frontends(members.watch(), service.clone());
    println!("ready {}", node.id);
    let served = serve_backend(service, None, DEFAULT_DRAIN, control).await;
    drop((following, members));
    served
}

/// A backend node serving the bench app's routes of `server_type`.
pub fn backend_service(
    id: &str,
    server_type: &str,
    tls: Option<LinkTls>,
) -> anyhow::Result<BackendSessionService> {
    let mut client = BackendConfig::new(id);
    client.server_type = Some(server_type.to_string());
    client.secret = secret_from_env();
    client.tls = tls;
    if client.secret.is_none() {
        tracing::warn!(
            "no cluster secret (SESSION_PROXY_SECRET): links to frontends are not authenticated"
        );
    }
    let service = BackendSessionService::new(client)?;
    service.serve(app::backend_handlers(server_type, &service));
    Ok(service)
}

/// Serves until SIGINT/SIGTERM, then drains within `drain`: marked
/// draining in the registry, frontends told to send nothing new, running
/// requests finished and answered, links closed, record removed.
pub async fn serve_backend(
    service: BackendSessionService,
    registration: Option<Registration>,
    drain: Duration,
    control: Control,
) -> anyhow::Result<()> {
    wait_for_signal(&control).await?;
    control.start_draining();
    let until = tokio::time::Instant::now() + drain;
    tracing::info!(limit = ?drain, "draining");
    if let Some(r) = &registration {
        r.set_draining();
    }
    if !service.shutdown(left(until)).await {
        tracing::warn!("handlers still running at the drain limit; exiting anyway");
    }
    if let Some(r) = registration {
        r.deregister(left(until)).await;
    }
    tracing::info!("drained");
    Ok(())
}

/// Waits for SIGINT, SIGTERM or a drain asked for through the admin
/// address; from then on a second signal ends the process at once (exit
/// status 130), skipping the drain.
async fn wait_for_signal(control: &Control) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        _ = control.drain_requested() => {}
    }
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        eprintln!("second signal: exiting without finishing the drain");
        std::process::exit(130);
    });
    Ok(())
}
