//! A node: one object per process that starts a frontend, backends or
//! both, owns every task they need, and drains them in the one correct
//! order under one deadline.
//!
//! - this file: [`Node`], [`NodeBuilder`], the roles ([`FrontendRole`],
//!   [`BackendRole`]) and what a drain reports ([`DrainReport`]);
//! - `start`: bringing the parts up (store, listeners, links, registry
//!   records, admin address);
//! - `drain`: the drain sequence;
//! - `signal`: serving until SIGINT/SIGTERM or an admin drain;
//! - `admin` (feature `admin`): what the admin address serves for a node.
//!
//! ```
//! use session_proxy::node::{BackendRole, FrontendRole, Node};
//! use session_proxy::{BackendSession, Handlers};
//! use std::time::Duration;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut handlers = Handlers::new();
//! handlers.add("area.playerHandler.ping", |_s: BackendSession, _body: serde_json::Value| async {
//!     Ok(serde_json::json!({ "code": 200 }))
//! });
//! let mut node = Node::builder()
//!     .frontend(FrontendRole::new("connector-1", "connector").client_addr("127.0.0.1:0".parse()?))
//!     .backend(BackendRole::new("area-1", "area", handlers))
//!     .start()
//!     .await?;
//! println!("clients connect to {:?}", node.client_addr());
//! let report = node.drain(Duration::from_secs(1)).await;
//! assert!(report.complete(), "{report:?}");
//! # Ok(())
//! # }
//! ```

#[cfg(feature = "admin")]
mod admin;
mod drain;
mod follow;
mod signal;
mod start;

pub use follow::{follow_frontends, Following};
pub use signal::until_signal;

use crate::backend::{BackendConfig, BackendSessionService, Handlers};
use crate::frontend::{
    Gateway, GatewayConfig, RpcConfig, SessionConfig, SessionStore, StoreOptions,
};
use crate::protocol::Secret;
use crate::registry::{Membership, Registration};
use crate::{GatewayServer, RpcServer, SessionService};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The environment variable [`NodeBuilder::secret_from_env`] reads.
pub const SECRET_VAR: &str = "SESSION_PROXY_SECRET";

/// How long a whole drain may take unless told otherwise.
pub const DEFAULT_DRAIN: Duration = Duration::from_secs(10);

/// A boxed future, as lifecycle hooks return them.
pub type HookFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The builder was given something that cannot run (the text says
    /// what).
    #[error("invalid node: {0}")]
    Invalid(String),
    /// The frontend could not start (a listener, a configuration field).
    #[error("starting the frontend")]
    Frontend(#[source] crate::frontend::Error),
    /// Restoring sessions from the store failed.
    #[error("restoring sessions from the store")]
    Store(#[source] crate::frontend::StoreError),
    /// A backend could not start (a configuration field).
    #[error("starting a backend")]
    Backend(#[source] crate::backend::Error),
    /// The admin address could not be bound.
    #[error("listening for admin requests on {addr}")]
    Admin {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Signals could not be listened for.
    #[error("listening for SIGTERM")]
    Signal(#[source] std::io::Error),
}

/// The frontend role: the client sessions, the RPC server backends dial,
/// and (with a client address) the gateway Pomelo/Pinus clients connect to.
#[non_exhaustive]
pub struct FrontendRole {
    /// This frontend's id, unique in the cluster (e.g. `connector-1`).
    pub id: String,
    /// Its server type (the first part of its own routes).
    pub server_type: String,
    /// Where backends connect. Default: `127.0.0.1:0`.
    pub rpc_addr: SocketAddr,
    /// Where clients connect; `None` serves no clients (backends still
    /// reach its sessions). Default: `None`.
    pub client_addr: Option<SocketAddr>,
    /// The client address as clients dial it, in the registry record
    /// (behind NAT or a load balancer). Default: the bound address.
    pub advertise: Option<String>,
    /// The RPC address as backends dial it, in the registry record.
    /// Default: the bound address.
    pub advertise_rpc: Option<String>,
    /// The session table's settings. Default: `SessionConfig::new(id)`.
    pub sessions: SessionConfig,
    /// The gateway's settings. Default: `GatewayConfig::new(server_type)`.
    pub gateway: GatewayConfig,
    /// The RPC server's settings; its secret is the node's. Default:
    /// `RpcConfig::default()`.
    pub rpc: RpcConfig,
    /// Server types whose players stay on one node (see
    /// [`BackendRegistry::stick`](crate::BackendRegistry::stick)); their
    /// bindings live in the node's store, or in this frontend alone
    /// without one. Default: none.
    pub sticky: Vec<String>,
    /// How those bindings behave. Default: `StickyOptions::default()`.
    pub sticky_options: crate::frontend::StickyOptions,
    /// Registers handlers and hooks on the gateway before it binds.
    setup: Option<GatewaySetup>,
}

/// What [`FrontendRole::gateway`] takes.
type GatewaySetup = Box<dyn FnOnce(&mut Gateway) + Send>;

impl FrontendRole {
    /// A frontend `id` of type `server_type`, with default settings.
    pub fn new(id: impl Into<String>, server_type: impl Into<String>) -> Self {
        let (id, server_type) = (id.into(), server_type.into());
        FrontendRole {
            rpc_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            client_addr: None,
            advertise: None,
            advertise_rpc: None,
            sessions: SessionConfig::new(id.clone()),
            gateway: GatewayConfig::new(server_type.clone()),
            rpc: RpcConfig::default(),
            sticky: Vec::new(),
            sticky_options: Default::default(),
            setup: None,
            id,
            server_type,
        }
    }

    /// Keeps each player of `server_type` on one node: for servers that
    /// hold a player's game state (see
    /// [`BackendRegistry::stick`](crate::BackendRegistry::stick)).
    pub fn sticky(mut self, server_type: impl Into<String>) -> Self {
        self.sticky.push(server_type.into());
        self
    }

    /// Serves clients on `addr` (TCP and WebSocket on one port).
    pub fn client_addr(mut self, addr: SocketAddr) -> Self {
        self.client_addr = Some(addr);
        self
    }

    /// Listens for backends on `addr`.
    pub fn rpc_addr(mut self, addr: SocketAddr) -> Self {
        self.rpc_addr = addr;
        self
    }

    /// Registers the gateway's own handlers and hooks (`on_close`,
    /// `on_handshake`, routers on its backends) before it binds.
    pub fn gateway(mut self, setup: impl FnOnce(&mut Gateway) + Send + 'static) -> Self {
        self.setup = Some(Box::new(setup));
        self
    }
}

impl std::fmt::Debug for FrontendRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrontendRole")
            .field("id", &self.id)
            .field("server_type", &self.server_type)
            .field("rpc_addr", &self.rpc_addr)
            .field("client_addr", &self.client_addr)
            .finish_non_exhaustive()
    }
}

/// What [`BackendRole::with_service`] takes.
type HandlersOf = Box<dyn FnOnce(&BackendSessionService) -> Handlers + Send>;

/// A backend role: handlers for forwarded client requests of one server
/// type, on links to every frontend.
#[non_exhaustive]
pub struct BackendRole {
    /// Its id, type, deadlines and TLS; its secret is the node's.
    pub config: BackendConfig,
    /// Frontends to link to by id and address, beside those the registry
    /// lists. Without a registry, the node's own frontend is added in
    /// process. Default: none.
    pub frontends: Vec<(String, String)>,
    /// Builds the handlers, once the service exists (handlers that push
    /// through it, or a channel service, need it).
    handlers: HandlersOf,
}

impl BackendRole {
    /// A backend `id` of type `server_type` serving `handlers`.
    pub fn new(id: impl Into<String>, server_type: impl Into<String>, handlers: Handlers) -> Self {
        Self::with_service(id, server_type, move |_| handlers)
    }

    /// A backend whose handlers are built from its service (for handlers
    /// that push through it, or a [`ChannelService`](crate::ChannelService)).
    pub fn with_service(
        id: impl Into<String>,
        server_type: impl Into<String>,
        handlers: impl FnOnce(&BackendSessionService) -> Handlers + Send + 'static,
    ) -> Self {
        let mut config = BackendConfig::new(id);
        config.server_type = Some(server_type.into());
        BackendRole {
            config,
            frontends: Vec::new(),
            handlers: Box::new(handlers),
        }
    }

    /// Also links to frontend `id` at `addr` (`host:port`, or
    /// `inproc://<id>` for one in this process).
    pub fn frontend(mut self, id: impl Into<String>, addr: impl Into<String>) -> Self {
        self.frontends.push((id.into(), addr.into()));
        self
    }
}

impl std::fmt::Debug for BackendRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendRole")
            .field("id", &self.config.node_id)
            .field("server_type", &self.config.server_type)
            .field("frontends", &self.frontends)
            .finish_non_exhaustive()
    }
}

/// A lifecycle hook: gets the node, returns the work to run (awaited
/// before the node goes on).
pub type LifecycleHook = Box<dyn FnOnce(&Node) -> HookFuture + Send>;

/// What runs after the drain, with its report.
pub type StoppedHook = Box<dyn FnOnce(&DrainReport) -> HookFuture + Send>;

/// The game's own start-up and shut-down steps.
#[derive(Default)]
struct Hooks {
    started: Vec<LifecycleHook>,
    before_drain: Vec<LifecycleHook>,
    stopped: Vec<StoppedHook>,
}

/// A node under construction: its roles and what they share. Nothing
/// reads the environment unless asked ([`secret_from_env`](Self::secret_from_env)).
#[must_use = "a node does nothing until started"]
pub struct NodeBuilder {
    frontend: Option<FrontendRole>,
    backends: Vec<BackendRole>,
    store: Option<(Arc<dyn SessionStore>, StoreOptions)>,
    registry: Option<(Arc<dyn Membership>, Duration)>,
    secret: Option<Secret>,
    #[cfg(feature = "admin")]
    admin: Option<(SocketAddr, Option<crate::admin::Metrics>)>,
    drain_limit: Duration,
    hooks: Hooks,
}

impl std::fmt::Debug for NodeBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeBuilder")
            .field("frontend", &self.frontend)
            .field("backends", &self.backends)
            .field("store", &self.store.is_some())
            .field("registry", &self.registry.is_some())
            .field("secret", &self.secret.is_some())
            .field("drain_limit", &self.drain_limit)
            .finish_non_exhaustive()
    }
}

impl NodeBuilder {
    /// The frontend role (at most one per node).
    pub fn frontend(mut self, role: FrontendRole) -> Self {
        self.frontend = Some(role);
        self
    }

    /// A backend role (any number, each with its own id and type).
    pub fn backend(mut self, role: BackendRole) -> Self {
        self.backends.push(role);
        self
    }

    /// Keeps the frontend's sessions in `store`, restored at start and
    /// handed over at a drain, so any frontend sharing it resumes them. The
    /// drain ends by closing it (its background tasks awaited), unless
    /// another node of this process still holds it.
    pub fn store(mut self, store: Arc<dyn SessionStore>, options: StoreOptions) -> Self {
        self.store = Some((store, options));
        self
    }

    /// Registers every role in `registry` under a lease of `lease`
    /// (renewed every third), marks them draining at a drain and removes
    /// them at its end; backends link to the frontends registered there.
    /// The drain ends by closing it, unless another node of this process
    /// still holds it.
    pub fn registry(mut self, registry: Arc<dyn Membership>, lease: Duration) -> Self {
        self.registry = Some((registry, lease));
        self
    }

    /// The cluster secret: backends prove it on every link, and admin
    /// actions need a token made from it. Without one, links are not
    /// authenticated (a frontend then refuses to listen beyond loopback
    /// unless `RpcConfig::insecure`) and admin actions are refused.
    pub fn secret(mut self, secret: Secret) -> Self {
        self.secret = Some(secret);
        self
    }

    /// The cluster secret from `SESSION_PROXY_SECRET`, if set (the one place
    /// the library reads it).
    pub fn secret_from_env(mut self) -> Self {
        if let Some(secret) = Secret::from_env(SECRET_VAR) {
            self.secret = Some(secret);
        }
        self
    }

    /// Serves `/healthz`, `/readyz` (false while draining, or while the
    /// store does not answer), the admin actions and, with `metrics`
    /// ([`admin::install_metrics`](crate::admin::install_metrics)),
    /// Prometheus `/metrics` on `addr`.
    #[cfg(feature = "admin")]
    pub fn admin(mut self, addr: SocketAddr, metrics: Option<crate::admin::Metrics>) -> Self {
        self.admin = Some((addr, metrics));
        self
    }

    /// How long a drain may take, all stages together, when
    /// [`run_until_signal`](Node::run_until_signal) runs it. Default: 10 s.
    pub fn drain_limit(mut self, limit: Duration) -> Self {
        self.drain_limit = limit;
        self
    }

    /// Runs `hook` once the node serves, before `start` returns.
    pub fn on_started<F, Fut>(mut self, hook: F) -> Self
    where
        F: FnOnce(&Node) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.hooks
            .started
            .push(Box::new(move |node| Box::pin(hook(node))));
        self
    }

    /// Runs `hook` when a drain starts: the node is marked draining (the
    /// registry and `/readyz` say so), and everything still serves.
    pub fn before_drain<F, Fut>(mut self, hook: F) -> Self
    where
        F: FnOnce(&Node) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.hooks
            .before_drain
            .push(Box::new(move |node| Box::pin(hook(node))));
        self
    }

    /// Runs `hook` after the drain, with its report.
    pub fn on_stopped<F, Fut>(mut self, hook: F) -> Self
    where
        F: FnOnce(&DrainReport) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.hooks
            .stopped
            .push(Box::new(move |report| Box::pin(hook(report))));
        self
    }
}

/// Asks a node to drain and tells whether it is draining; cheap to clone
/// (the admin address and a game's own code hold one).
#[derive(Clone, Debug, Default)]
pub struct NodeControl {
    draining: Arc<AtomicBool>,
    requested: Arc<Notify>,
}

impl NodeControl {
    /// Asks the node to drain, as a SIGTERM would (see
    /// [`Node::run_until_signal`]).
    pub fn request_drain(&self) {
        self.requested.notify_one();
    }

    /// Whether the node's drain has started.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Waits until a drain is asked for.
    pub async fn drain_requested(&self) {
        self.requested.notified().await;
    }

    fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }
}

/// A running frontend role.
struct FrontendPart {
    id: String,
    server_type: String,
    /// The client address for the registry record, if not the bound one.
    advertise: Option<String>,
    /// The RPC address for the registry record, if not the bound one.
    advertise_rpc: Option<String>,
    sessions: SessionService,
    /// The store, closed at the end of the drain.
    store: Option<Arc<dyn SessionStore>>,
    rpc: Option<RpcServer>,
    gateway: Option<GatewayServer>,
    rpc_addr: SocketAddr,
    client_addr: Option<SocketAddr>,
    registration: Option<Registration>,
}

/// A running backend role.
struct BackendPart {
    service: BackendSessionService,
    following: Option<Following>,
    registration: Option<Registration>,
}

/// A running node. Drain it with [`drain`](Node::drain) or
/// [`run_until_signal`](Node::run_until_signal); dropping it stops its
/// parts without a drain.
#[must_use = "dropping a node stops it without a drain"]
pub struct Node {
    frontend: Option<FrontendPart>,
    backends: Vec<BackendPart>,
    #[cfg(feature = "admin")]
    admin: Option<crate::admin::AdminServer>,
    control: NodeControl,
    /// The node's own tasks (readiness, client counts).
    tasks: TaskTracker,
    /// Stops them.
    cancel: CancellationToken,
    drain_limit: Duration,
    restored: usize,
    hooks: Hooks,
    drained: bool,
    /// The registry, closed at the end of the drain if the node alone
    /// holds it.
    registry: Option<Arc<dyn Membership>>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("frontend", &self.frontend.as_ref().map(|f| &f.id))
            .field("backends", &self.backends.len())
            .field("draining", &self.control.is_draining())
            .finish_non_exhaustive()
    }
}

impl Node {
    /// A node with no roles yet.
    pub fn builder() -> NodeBuilder {
        NodeBuilder {
            frontend: None,
            backends: Vec::new(),
            store: None,
            registry: None,
            secret: None,
            #[cfg(feature = "admin")]
            admin: None,
            drain_limit: DEFAULT_DRAIN,
            hooks: Hooks::default(),
        }
    }

    /// The frontend's sessions, if the node has the frontend role.
    pub fn sessions(&self) -> Option<&SessionService> {
        self.frontend.as_ref().map(|f| &f.sessions)
    }

    /// The frontend's id, if it has one.
    pub fn frontend_id(&self) -> Option<&str> {
        self.frontend.as_ref().map(|f| f.id.as_str())
    }

    /// The frontend's server type, if it has one.
    pub fn frontend_type(&self) -> Option<&str> {
        self.frontend.as_ref().map(|f| f.server_type.as_str())
    }

    /// The backends connected to the frontend (to wait for, or set a
    /// router on), if it has one.
    pub fn connected_backends(&self) -> Option<crate::BackendRegistry> {
        let frontend = self.frontend.as_ref()?;
        frontend.rpc.as_ref().map(RpcServer::backends)
    }

    /// Where backends connect to the frontend.
    pub fn rpc_addr(&self) -> Option<SocketAddr> {
        self.frontend.as_ref().map(|f| f.rpc_addr)
    }

    /// Where clients connect to the frontend, if it serves clients.
    pub fn client_addr(&self) -> Option<SocketAddr> {
        self.frontend.as_ref().and_then(|f| f.client_addr)
    }

    /// Where the admin address listens, if the node has one.
    #[cfg(feature = "admin")]
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
            .as_ref()
            .map(crate::admin::AdminServer::local_addr)
    }

    /// The backend services, in the order their roles were added (to push
    /// or kick from outside a handler).
    pub fn backends(&self) -> impl Iterator<Item = &BackendSessionService> {
        self.backends.iter().map(|b| &b.service)
    }

    /// How many sessions were restored from the store at start.
    pub fn restored(&self) -> usize {
        self.restored
    }

    /// Whether the node's roles are registered in a registry.
    pub fn is_registered(&self) -> bool {
        let frontend = self
            .frontend
            .as_ref()
            .is_some_and(|f| f.registration.is_some());
        frontend || self.backends.iter().any(|b| b.registration.is_some())
    }

    /// Asks for a drain and tells whether one started.
    pub fn control(&self) -> NodeControl {
        self.control.clone()
    }
}

/// What a drain did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DrainReport {
    /// Clients connected when the drain started, kicked with
    /// `"reconnect"` after their answers in flight (their sessions park).
    pub kicked: usize,
    /// Sessions written to the store with no owner, for any frontend to
    /// resume.
    pub handed_over: usize,
    /// Sessions ended for good because there was no store to hand them to
    /// (close hooks ran, reason [`EndReason::Shutdown`](crate::frontend::EndReason::Shutdown)).
    pub ended: usize,
    /// Backend requests still running at the limit.
    pub requests_running: usize,
    /// What did not finish within the limit, or failed, one line each.
    pub unfinished: Vec<String>,
    /// How long the drain took.
    pub took: Duration,
}

impl DrainReport {
    /// Whether every stage finished within the limit.
    pub fn complete(&self) -> bool {
        self.unfinished.is_empty() && self.requests_running == 0
    }
}
