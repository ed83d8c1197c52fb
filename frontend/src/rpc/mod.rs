//! The RPC server that backends connect to: the inbound side of the
//! cluster links.
//!
//! One task per backend connection owns its socket. It reads frames, applies
//! each session call as it arrives, in order (most are short map operations;
//! one that waits on the session store waits beside the reader, `lanes`),
//! and writes the response. Responses are buffered and flushed
//! only when no further frame is already waiting, so a busy connection sends
//! many responses per syscall and an idle one pays no added latency.
//!
//! - this file: [`RpcServer`], the listener and its accept loop;
//! - `handshake`: the hello, its checks and the cluster secret's
//!   challenge–response;
//! - `link`: one backend connection's loop: batching, group commit, and the
//!   forwarded requests going out on the same socket
//!   ([`forward`](crate::forward) owns those);
//! - `lanes`: the calls that wait on the session store, run beside the
//!   link's reader, in order per session;
//! - `apply`: one session call applied to the [`SessionService`].

mod apply;
mod handshake;
mod lanes;
mod link;

use crate::listener::{accept, bind_reusable, IpSlot, PerIp, Running};
use crate::logs::warn_throttled;
use crate::{BackendRegistry, RpcConfig, SessionService};
use session_proxy_link::inproc::{self, InProcessListener};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, Instrument};

/// One backend connection.
pub(super) struct BackendConn {
    /// The sessions this frontend owns.
    pub(super) service: SessionService,
    /// Where a backend that serves a server type is registered.
    pub(super) backends: BackendRegistry,
    /// One per authenticated backend connection.
    pub(super) slots: Arc<tokio::sync::Semaphore>,
    /// Server settings.
    pub(super) config: Arc<RpcConfig>,
    /// Cancelled when the server shuts down.
    pub(super) cancel: CancellationToken,
    /// The server's tasks: late push answers run here, so shutdown waits
    /// for them.
    pub(super) tasks: TaskTracker,
    /// The backend's address, for logs.
    pub(super) peer: SocketAddr,
}

/// A running RPC server. Stop it with [`RpcServer::shutdown`]; dropping it
/// stops it too, without waiting.
#[derive(Debug)]
#[must_use = "dropping the server stops it"]
pub struct RpcServer {
    /// Address, stop signal and tasks.
    running: Running,
    /// The backends connected through this server that serve a server type.
    backends: BackendRegistry,
    /// `inproc://<name>`, when backends of this process may dial it there.
    in_process: Option<String>,
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
        let in_process = listen_in_process(&config)?;
        let listener =
            bind_reusable(addr, 1024).map_err(|source| crate::Error::Listen { addr, source })?;
        Ok(Self::start(listener, in_process, service, config))
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
        let in_process = listen_in_process(&config)?;
        Ok(Self::start(listener, in_process, service, config))
    }

    /// Serves on `listener` (and in process, if asked) with configs already
    /// checked.
    fn start(
        listener: TcpListener,
        in_process: Option<InProcessListener>,
        service: SessionService,
        config: RpcConfig,
    ) -> RpcServer {
        let running = Running::new(&listener);
        let in_process_addr = in_process.as_ref().map(InProcessListener::addr);
        let backends = BackendRegistry::new();
        let shared = ServerContext {
            service,
            backends: backends.clone(),
            slots: Arc::new(Semaphore::new(config.max_connections)),
            config: Arc::new(config),
        };
        let accept = accept_loop(
            listener,
            in_process,
            shared,
            running.cancel.clone(),
            running.tracker.clone(),
        );
        let local_addr = running.local_addr;
        running
            .tracker
            .spawn(accept.instrument(tracing::info_span!("rpc_server", %local_addr)));
        RpcServer {
            running,
            backends,
            in_process: in_process_addr,
        }
    }

    /// Where backends of this process reach it without TCP
    /// (`inproc://<name>`, from [`RpcConfig::in_process`]); `None` unless
    /// configured.
    pub fn in_process_addr(&self) -> Option<&str> {
        self.in_process.as_deref()
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
        return Err(session_proxy_protocol::ConfigError::new(
            "RpcConfig",
            "secret",
            "no cluster secret on an address that is not loopback: any peer that \
             reaches it could read sessions and push to every client (set a secret, \
             or `insecure`)",
        )
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

/// The in-process listener `config` asks for, if any.
fn listen_in_process(config: &RpcConfig) -> Result<Option<InProcessListener>, crate::Error> {
    match &config.in_process {
        Some(name) => Ok(Some(inproc::listen(name)?)),
        None => Ok(None),
    }
}

/// What the accept loop takes next.
enum Accepted {
    Tcp(tokio::net::TcpStream, SocketAddr),
    InProcess(inproc::Pipe),
}

/// The next connection, over TCP or in process; `None` on shutdown.
async fn next_connection(
    listener: &TcpListener,
    in_process: &mut Option<InProcessListener>,
    cancel: &CancellationToken,
) -> Option<Accepted> {
    let pipe = async {
        match in_process.as_mut() {
            Some(l) => l.accept().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        accepted = accept(listener, cancel) => accepted.map(|(s, peer)| Accepted::Tcp(s, peer)),
        Some(pipe) = pipe => Some(Accepted::InProcess(pipe)),
    }
}

async fn accept_loop(
    listener: TcpListener,
    mut in_process: Option<InProcessListener>,
    shared: ServerContext,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    info!(
        frontend = shared.service.frontend_id(),
        in_process = in_process.as_ref().map(InProcessListener::addr),
        "listening for backends"
    );
    let handshakes = Arc::new(Semaphore::new(shared.config.max_unauthenticated));
    let per_ip = Arc::new(PerIp::new(shared.config.max_unauthenticated_per_ip));
    let conn = |peer| BackendConn {
        service: shared.service.clone(),
        backends: shared.backends.clone(),
        slots: shared.slots.clone(),
        config: shared.config.clone(),
        cancel: cancel.child_token(),
        tasks: tracker.clone(),
        peer,
    };
    while let Some(accepted) = next_connection(&listener, &mut in_process, &cancel).await {
        let (stream, peer) = match accepted {
            Accepted::Tcp(stream, peer) => (stream, peer),
            Accepted::InProcess(pipe) => {
                // A backend of this process: the peer address is a stand-in.
                let peer = SocketAddr::from(([127, 0, 0, 1], 0));
                tracker.spawn(
                    conn(peer)
                        .run_in_process(pipe)
                        .instrument(tracing::info_span!("backend_conn", in_process = true)),
                );
                continue;
            }
        };
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
        let pre_auth = Unauthenticated {
            _place: place,
            _ip: ip,
        };
        tracker.spawn(
            conn(peer)
                .run(stream, pre_auth)
                .instrument(tracing::info_span!("backend_conn", %peer)),
        );
    }
}
