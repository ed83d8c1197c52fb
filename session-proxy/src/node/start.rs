//! Bringing a node up: the store, the frontend's listeners, the backends'
//! links, the admin address, the registry records and the node's own
//! tasks, then the game's start-up hooks.

use super::{
    BackendPart, BackendRole, FrontendPart, FrontendRole, Node, NodeBuilder, NodeControl, NodeError,
};
use crate::backend::BackendSessionService;
use crate::frontend::{Gateway, SessionStore, StoreOptions};
use crate::protocol::Secret;
use crate::registry::{Membership, NodeRecord, NodeRole, NodeState, Registration};
use crate::{RpcServer, SessionService};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long a new frontend stays `starting` in the registry waiting for a
/// backend before it is handed out anyway.
const READY_WAIT: Duration = Duration::from_secs(5);

/// How often a frontend's client count is checked; the record is written
/// only when it changed (gates pick the least loaded frontend by it).
const COUNT_EVERY: Duration = Duration::from_millis(200);

impl NodeBuilder {
    /// Starts every role: restores the store's sessions, binds the RPC
    /// server and the gateway, starts the backends and links them to their
    /// frontends, serves the admin address, registers each role, and runs
    /// the start-up hooks. A node that fails to start drops what it had
    /// started (its listeners close, its links end).
    pub async fn start(self) -> Result<Node, NodeError> {
        let NodeBuilder {
            frontend,
            backends,
            store,
            registry,
            secret,
            #[cfg(feature = "admin")]
            admin,
            drain_limit,
            mut hooks,
        } = self;
        if frontend.is_none() && backends.is_empty() {
            return Err(NodeError::Invalid(
                "a node needs a frontend role, a backend role or both".into(),
            ));
        }
        if store.is_some() && frontend.is_none() {
            return Err(NodeError::Invalid(
                "a session store needs the frontend role".into(),
            ));
        }
        if secret.is_none() {
            tracing::warn!(
                "no cluster secret: links between nodes are not authenticated, admin actions are refused"
            );
        }
        let in_process = !backends.is_empty() && registry.is_none();
        let (frontend, restored) = match frontend {
            Some(role) => {
                let (part, restored) =
                    start_frontend(role, store, secret.as_ref(), in_process).await?;
                (Some(part), restored)
            }
            None => (None, 0),
        };
        let mut parts = Vec::with_capacity(backends.len());
        for role in backends {
            parts.push(start_backend(
                role,
                secret.as_ref(),
                frontend.as_ref(),
                registry.as_ref().map(|(r, _)| r),
            )?);
        }
        if let (Some(f), None) = (&frontend, &registry) {
            wait_for_own_backends(f, &parts).await;
        }
        let control = NodeControl::default();
        let mut node = Node {
            frontend,
            backends: parts,
            #[cfg(feature = "admin")]
            admin: None,
            control,
            tasks: TaskTracker::new(),
            cancel: CancellationToken::new(),
            drain_limit,
            restored,
            hooks: super::Hooks::default(),
            drained: false,
            registry: registry.as_ref().map(|(r, _)| r.clone()),
        };
        #[cfg(feature = "admin")]
        if let Some((addr, metrics)) = admin {
            node.admin = Some(super::admin::serve(&node, addr, metrics, secret).await?);
        }
        if let Some((registry, lease)) = registry {
            node.register(registry, lease).await;
        }
        for hook in std::mem::take(&mut hooks.started) {
            hook(&node).await;
        }
        node.hooks = hooks;
        Ok(node)
    }
}

/// Waits until the frontend forwards to the node's own backends (linked in
/// process, so at once), so that `start` returns a node that serves.
async fn wait_for_own_backends(frontend: &FrontendPart, backends: &[BackendPart]) {
    let Some(connected) = frontend.rpc.as_ref().map(RpcServer::backends) else {
        return;
    };
    let mut types: std::collections::HashMap<String, usize> = Default::default();
    for b in backends {
        let server_type = b.service.config().server_type.clone().unwrap_or_default();
        *types.entry(server_type).or_default() += 1;
    }
    for (server_type, count) in types {
        if !connected.wait_for(&server_type, count, READY_WAIT).await {
            tracing::warn!(%server_type, within = ?READY_WAIT, "the node's own backends did not link in time");
        }
    }
}

/// Restores the store's sessions, binds the RPC server and the gateway.
async fn start_frontend(
    role: FrontendRole,
    store: Option<(Arc<dyn SessionStore>, StoreOptions)>,
    secret: Option<&Secret>,
    in_process: bool,
) -> Result<(FrontendPart, usize), NodeError> {
    let FrontendRole {
        id,
        server_type,
        rpc_addr,
        client_addr,
        advertise,
        advertise_rpc,
        sessions: session_config,
        gateway: gateway_config,
        mut rpc,
        sticky,
        sticky_options,
        setup,
    } = role;
    let sessions = SessionService::new(session_config);
    let restored = match &store {
        Some((store, options)) => sessions
            .attach_store(store.clone(), options.clone())
            .await
            .map_err(NodeError::Store)?,
        None => 0,
    };
    let store = store.map(|(store, _)| store);
    if let Some(secret) = secret {
        rpc.secret = Some(secret.clone());
    }
    if in_process && rpc.in_process.is_none() {
        // Its own backends reach it without a TCP hop.
        rpc.in_process = Some(id.clone());
    }
    let rpc = RpcServer::bind(rpc_addr, sessions.clone(), rpc)
        .await
        .map_err(NodeError::Frontend)?;
    if !sticky.is_empty() {
        // Without a store, the bindings hold for this frontend alone.
        let bindings = store
            .clone()
            .unwrap_or_else(|| Arc::new(crate::frontend::MemoryStore::new()));
        for server_type in &sticky {
            rpc.backends()
                .stick(server_type, bindings.clone(), sticky_options.clone());
        }
    }
    let gateway = match client_addr {
        Some(addr) => {
            let mut gateway = Gateway::new(sessions.clone(), rpc.backends(), gateway_config);
            if let Some(setup) = setup {
                setup(&mut gateway);
            }
            Some(gateway.bind(addr).await.map_err(NodeError::Frontend)?)
        }
        None => {
            if setup.is_some() {
                tracing::warn!(frontend = %id, "gateway handlers given, but no client address: no gateway runs");
            }
            None
        }
    };
    tracing::info!(frontend = %id, rpc = %rpc.local_addr(), clients = ?gateway.as_ref().map(crate::GatewayServer::local_addr), restored, "frontend serving");
    Ok((
        FrontendPart {
            rpc_addr: rpc.local_addr(),
            client_addr: gateway.as_ref().map(crate::GatewayServer::local_addr),
            id,
            server_type,
            advertise,
            advertise_rpc,
            sessions,
            store,
            rpc: Some(rpc),
            gateway,
            registration: None,
        },
        restored,
    ))
}

/// Starts a backend and links it to its frontends: the ones it was given,
/// the registry's, and without a registry the node's own (in process).
fn start_backend(
    role: BackendRole,
    secret: Option<&Secret>,
    frontend: Option<&FrontendPart>,
    registry: Option<&Arc<dyn Membership>>,
) -> Result<BackendPart, NodeError> {
    let BackendRole {
        mut config,
        frontends,
        handlers,
    } = role;
    if let Some(secret) = secret {
        config.secret = Some(secret.clone());
    }
    let service = BackendSessionService::new(config).map_err(NodeError::Backend)?;
    service.serve(handlers(&service));
    for (id, addr) in &frontends {
        service.add_frontend(id, addr.clone());
    }
    let own = frontend.and_then(|f| {
        let addr = f.rpc.as_ref()?.in_process_addr()?.to_string();
        Some((f, addr))
    });
    if let (Some((f, addr)), None) = (own, registry) {
        if !frontends.iter().any(|(id, _)| *id == f.id) {
            service.add_frontend_of_type(&f.id, &f.server_type, addr);
        }
    }
    let following = registry.map(|r| super::follow_frontends(r.watch(), service.clone()));
    Ok(BackendPart {
        service,
        following,
        registration: None,
    })
}

impl Node {
    /// Registers every role; a frontend is `starting` until a backend
    /// links to it (or [`READY_WAIT`]), and its client count is kept
    /// current ([`COUNT_EVERY`]).
    async fn register(&mut self, registry: Arc<dyn Membership>, lease: Duration) {
        #[cfg(feature = "admin")]
        let admin = self.admin_addr().map(|a| a.to_string());
        #[cfg(not(feature = "admin"))]
        let admin: Option<String> = None;
        if let Some(f) = self.frontend.as_mut() {
            let mut record = NodeRecord::new(&f.id, NodeRole::Frontend, &f.server_type)
                .with_rpc_addr(
                    f.advertise_rpc
                        .clone()
                        .unwrap_or_else(|| f.rpc_addr.to_string()),
                );
            if let Some(addr) = f.advertise.clone().or(f.client_addr.map(|a| a.to_string())) {
                record = record.with_client_addr(addr);
            }
            if let Some(addr) = &admin {
                record = record.with_admin_addr(addr.clone());
            }
            record.state = NodeState::Starting;
            let registration = Registration::register(registry.clone(), record, lease).await;
            let readiness = registration.handle();
            let (backends, cancel) = (f.rpc.as_ref().map(RpcServer::backends), self.cancel.clone());
            self.tasks.spawn(async move {
                let until = tokio::time::Instant::now() + READY_WAIT;
                while backends.as_ref().is_some_and(|b| b.nodes().is_empty())
                    && tokio::time::Instant::now() < until
                {
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                    }
                }
                if backends.as_ref().is_some_and(|b| b.nodes().is_empty()) {
                    tracing::warn!(within = ?READY_WAIT, "no backend connected yet; handed out anyway");
                }
                readiness.update(|r| {
                    // (A drain meanwhile made it draining: it stays so.)
                    if r.state == NodeState::Starting {
                        r.state = NodeState::Active;
                    }
                });
            });
            let (counting, sessions, cancel) = (
                registration.handle(),
                f.sessions.clone(),
                self.cancel.clone(),
            );
            self.tasks.spawn(async move {
                while counting.set_clients(sessions.count() as u64) {
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(COUNT_EVERY.min(lease / 3)) => {}
                    }
                }
            });
            f.registration = Some(registration);
        }
        for b in &mut self.backends {
            let config = b.service.config();
            let server_type = config.server_type.clone().unwrap_or_default();
            let mut record = NodeRecord::new(&config.node_id, NodeRole::Backend, &server_type);
            if let Some(addr) = &admin {
                record = record.with_admin_addr(addr.clone());
            }
            b.registration = Some(Registration::register(registry.clone(), record, lease).await);
        }
    }
}
