//! The RPC server that backends connect to: the inbound side of the
//! cluster links.
//!
//! One task per backend connection owns its socket. It reads frames, applies
//! each session call *inline*, in arrival order (they are short map
//! operations), and writes the response. Responses are buffered and flushed
//! only when no further frame is already waiting, so a busy connection sends
//! many responses per syscall and an idle one pays no added latency.
//!
//! - this file: [`RpcServer`], the listener and its accept loop;
//! - `handshake`: the hello, its checks and the cluster secret's
//!   challenge–response;
//! - `link`: one backend connection's loop: batching, group commit, and the
//!   forwarded requests going out on the same socket
//!   ([`forward`](crate::forward) owns those);
//! - `apply`: one session call applied to the [`SessionService`].

mod apply;
mod handshake;
mod link;

use link::BackendConn;

use crate::listener::{accept, bind_reusable, IpSlot, PerIp, Running};
use crate::logs::warn_throttled;
use crate::{BackendRegistry, RpcConfig, SessionService};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, Instrument};

/// A running RPC server. Stop it with [`RpcServer::shutdown`]; dropping it
/// stops it too, without waiting.
#[derive(Debug)]
#[must_use = "dropping the server stops it"]
pub struct RpcServer {
    /// Address, stop signal and tasks.
    running: Running,
    /// The backends connected through this server that serve a server type.
    backends: BackendRegistry,
}

impl RpcServer {
    /// Listens on `addr` and serves backends until shut down.
    ///
    /// The socket is bound with `SO_REUSEADDR`, so a restarted frontend can
    /// take its port back at once.
    pub async fn bind(
        addr: SocketAddr,
        service: SessionService,
        config: RpcConfig,
    ) -> Result<RpcServer, crate::Error> {
        config.validate()?;
        service.config().validate()?;
        check_secret(&config, addr)?;
        let listener =
            bind_reusable(addr, 1024).map_err(|source| crate::Error::Listen { addr, source })?;
        Ok(Self::start(listener, service, config))
    }

    /// Serves backends on an already bound listener. Fails only on a
    /// configuration field that cannot work.
    pub fn serve(
        listener: TcpListener,
        service: SessionService,
        config: RpcConfig,
    ) -> Result<RpcServer, crate::Error> {
        config.validate()?;
        service.config().validate()?;
        if let Ok(addr) = listener.local_addr() {
            check_secret(&config, addr)?;
        }
        Ok(Self::start(listener, service, config))
    }

    /// Serves on `listener` with configs already checked.
    fn start(listener: TcpListener, service: SessionService, config: RpcConfig) -> RpcServer {
        let running = Running::new(&listener);
        let backends = BackendRegistry::new();
        let shared = ServerContext {
            service,
            backends: backends.clone(),
            slots: Arc::new(Semaphore::new(config.max_connections)),
            config: Arc::new(config),
        };
        let accept = accept_loop(
            listener,
            shared,
            running.cancel.clone(),
            running.tracker.clone(),
        );
        let local_addr = running.local_addr;
        running
            .tracker
            .spawn(accept.instrument(tracing::info_span!("rpc_server", %local_addr)));
        RpcServer { running, backends }
    }

    /// The backends connected to this server that serve client requests;
    /// hand it to a [`Gateway`](crate::Gateway) to forward requests to them.
    pub fn backends(&self) -> BackendRegistry {
        self.backends.clone()
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.running.local_addr
    }

    /// Stops accepting, closes every connection after the frame it is
    /// handling, and waits up to `drain` for the tasks to finish. Returns
    /// whether they all finished in time.
    pub async fn shutdown(self, drain: Duration) -> bool {
        self.running.shutdown(drain).await
    }
}

/// Refuses to serve without a secret beyond loopback (unless `insecure`),
/// and says loudly what serving without one means.
fn check_secret(config: &RpcConfig, addr: SocketAddr) -> Result<(), crate::Error> {
    if config.secret.is_some() {
        return Ok(());
    }
    if !addr.ip().is_loopback() && !config.insecure {
        return Err(crate::config::ConfigError {
            config: "RpcConfig",
            field: "secret",
            problem: "no cluster secret on an address that is not loopback: any peer that \
                      reaches it could read sessions and push to every client (set a secret, \
                      or `insecure`)",
        }
        .into());
    }
    tracing::warn!(
        %addr,
        "NO CLUSTER SECRET: any peer that reaches this RPC port can act as a backend \
         (read sessions, push and broadcast to every client); set one in production"
    );
    Ok(())
}

/// What every connection task of a server shares.
#[derive(Clone)]
struct ServerContext {
    /// The sessions this frontend owns.
    service: SessionService,
    /// Backends that serve forwarded requests.
    backends: BackendRegistry,
    /// One per authenticated backend connection.
    slots: Arc<Semaphore>,
    /// Server settings.
    config: Arc<RpcConfig>,
}

/// What a connection holds until it has authenticated: one of the few
/// handshake places, and one of its address's. A stranger can take no more.
pub(super) struct Unauthenticated {
    _place: OwnedSemaphorePermit,
    _ip: IpSlot,
}

async fn accept_loop(
    listener: TcpListener,
    shared: ServerContext,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    info!(
        frontend = shared.service.frontend_id(),
        "listening for backends"
    );
    let handshakes = Arc::new(Semaphore::new(shared.config.max_unauthenticated));
    let per_ip = Arc::new(PerIp::new(shared.config.max_unauthenticated_per_ip));
    while let Some((stream, peer)) = accept(&listener, &cancel).await {
        // Admission before authentication is cheap to refuse: the socket
        // is closed at once, and no place an authenticated backend needs
        // is taken.
        let Some(ip) = per_ip.enter(peer.ip()) else {
            warn_throttled!(%peer, limit = shared.config.max_unauthenticated_per_ip, "too many handshakes from one address; closing the new connection");
            continue;
        };
        let Ok(place) = handshakes.clone().try_acquire_owned() else {
            warn_throttled!(%peer, limit = shared.config.max_unauthenticated, "too many connections in their handshake; closing the new one");
            continue;
        };
        let conn = BackendConn {
            service: shared.service.clone(),
            backends: shared.backends.clone(),
            slots: shared.slots.clone(),
            config: shared.config.clone(),
            cancel: cancel.child_token(),
            tasks: tracker.clone(),
            peer,
        };
        let pre_auth = Unauthenticated {
            _place: place,
            _ip: ip,
        };
        tracker.spawn(
            conn.run(stream, pre_auth)
                .instrument(tracing::info_span!("backend_conn", %peer)),
        );
    }
}
