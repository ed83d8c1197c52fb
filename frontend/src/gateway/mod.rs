//! Client connectors: the Pomelo/Pinus hybrid protocol over raw TCP and
//! WebSocket on one port, with request forwarding, pushes and kicks.
//!
//! One task per client connection owns its socket. It sniffs the first byte
//! (an HTTP method means a WebSocket upgrade; a package type means raw
//! TCP), runs the handshake and heartbeats, opens the client's session,
//! forwards requests (concurrently, answers in the order handlers finish),
//! and writes the pushes and kicks that reach the session's owner queue.

mod conn;
mod local;
mod transport;

pub use local::{LocalContext, LocalHandlers};

use crate::listener::{bind_reusable, Acceptor, PerIp, Running};
use crate::{BackendRegistry, GatewayConfig, SessionService};
use serde_json::Value;
use session_proxy_protocol::client::HandshakeRequest;
use session_proxy_protocol::SessionSnapshot;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, Instrument};

/// What a close hook learns about a session that ended for good: its client
/// left (and did not resume in time), was kicked, replaced or expired, or
/// its frontend shut down with no store to hand it over to. Never a session
/// that moved to another frontend (see [`SessionEvent::Moved`](crate::SessionEvent::Moved)).
#[derive(Clone, Debug)]
pub struct CloseContext {
    /// The session as it was just before it closed.
    pub session: SessionSnapshot,
    /// Why it ended.
    pub reason: crate::EndReason,
    /// The connected backends, e.g. to tell a game server the player left.
    pub backends: BackendRegistry,
}

/// A boxed future, as the handshake hooks return it.
pub type HookFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

/// Decides on a client's handshake: `Ok(user part of the reply)` accepts
/// (code 200), `Err` refuses (code 500 with that reason). It may await (a
/// token check against an auth service); past
/// [`GatewayConfig::hook_timeout`] the client is refused (500). A hook that
/// panics refuses that client (500), and only that one. Set it with
/// [`Gateway::on_handshake`].
pub type HandshakeHook = Arc<
    dyn Fn(HandshakeRequest, SocketAddr) -> HookFuture<Result<Option<Value>, String>> + Send + Sync,
>;

/// Decides whether a client type and version may connect (else code 501,
/// Pomelo's `checkClient`). It may await, within
/// [`GatewayConfig::hook_timeout`]; a check that panics or times out
/// refuses that client (500). Set it with [`Gateway::check_client`].
pub type ClientCheck = Arc<dyn Fn(String, String) -> HookFuture<bool> + Send + Sync>;

/// Runs once when a session ends for good, with its final state; the future
/// it returns (telling a game server that the player left, say) runs as a
/// task that a drain waits for before it closes the backend links. Set it
/// with [`Gateway::on_close`].
pub type CloseHook = Arc<dyn Fn(CloseContext) -> HookFuture<()> + Send + Sync>;

/// The route dictionary, both ways.
#[derive(Debug, Default)]
pub(crate) struct Dictionary {
    pub(crate) code_of: HashMap<String, u16>,
    pub(crate) route_of: HashMap<u16, String>,
    /// A hash of the routes: clients that hold this version get no dict.
    pub(crate) version: String,
}

impl Dictionary {
    fn new(routes: &[String]) -> Option<Dictionary> {
        if routes.is_empty() {
            return None;
        }
        let mut d = Dictionary::default();
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for (i, route) in routes.iter().take(usize::from(u16::MAX)).enumerate() {
            let code = u16::try_from(i + 1).expect("at most u16::MAX routes are taken");
            d.code_of.insert(route.clone(), code);
            d.route_of.insert(code, route.clone());
            for b in route.bytes().chain([0]) {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        }
        d.version = format!("{h:016x}");
        Some(d)
    }
}

/// Everything a client connection task needs, shared.
pub(crate) struct GatewayContext {
    pub(crate) config: GatewayConfig,
    pub(crate) sessions: SessionService,
    pub(crate) backends: BackendRegistry,
    pub(crate) handlers: LocalHandlers,
    /// Request metrics of each local route, made once at bind.
    pub(crate) route_metrics: std::collections::HashMap<String, Arc<crate::metrics::RouteMetrics>>,
    pub(crate) dictionary: Option<Dictionary>,
    pub(crate) on_handshake: Option<HandshakeHook>,
    pub(crate) check_client: Option<ClientCheck>,
    pub(crate) cancel: CancellationToken,
    /// The gateway's tasks (connections, forwarded notifies); shutdown
    /// waits for them.
    pub(crate) tasks: TaskTracker,
    /// Open connections per client IP.
    pub(crate) per_ip: PerIp,
    /// The config's rules for each connection's protocol state.
    pub(crate) limits: conn::Limits,
    /// What every client request passes first.
    pub(crate) filters: session_proxy_filters::Filters,
    /// When the gateway started: connections keep times as `u32`
    /// milliseconds since then, which is smaller than an `Instant`.
    pub(crate) started: tokio::time::Instant,
}

impl GatewayContext {
    /// Milliseconds since the gateway started at `at`, wrapping after 49
    /// days (compare with `wrapping_sub`).
    pub(crate) fn ms_at(&self, at: tokio::time::Instant) -> u32 {
        at.saturating_duration_since(self.started).as_millis() as u32
    }

    /// The instant of `ms` (gateway milliseconds no more than 24 days on
    /// from `now`; one that passed is `now`).
    pub(crate) fn instant_of(&self, ms: u32, now: tokio::time::Instant) -> tokio::time::Instant {
        let ahead = ms.wrapping_sub(self.ms_at(now));
        if ahead >= 1 << 31 {
            return now;
        }
        // `now` is at or past its whole ms, so this is never before `ms`.
        now + std::time::Duration::from_millis(u64::from(ahead))
    }
}

/// A client gateway under construction: register frontend handlers and
/// hooks, then [`bind`](Gateway::bind).
///
/// ```
/// use session_proxy_frontend::{Gateway, GatewayConfig, RpcConfig, RpcServer, SessionConfig, SessionService};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let sessions = SessionService::new(SessionConfig::new("connector-1"));
/// let rpc = RpcServer::bind("127.0.0.1:0".parse()?, sessions.clone(), RpcConfig::default()).await?;
/// let mut gateway = Gateway::new(sessions, rpc.backends(), GatewayConfig::new("connector"));
/// gateway.handlers().add("connector.entryHandler.ping", |_ctx, _body: serde_json::Value| async {
///     Ok(serde_json::json!({ "code": 200 }))
/// });
/// let server = gateway.bind("127.0.0.1:0".parse()?).await?;
/// println!("clients connect to {} (TCP or WebSocket)", server.local_addr());
/// server.shutdown(std::time::Duration::from_secs(1)).await;
/// # Ok(())
/// # }
/// ```
pub struct Gateway {
    config: GatewayConfig,
    sessions: SessionService,
    backends: BackendRegistry,
    handlers: LocalHandlers,
    on_handshake: Option<HandshakeHook>,
    check_client: Option<ClientCheck>,
    on_close: Option<CloseHook>,
    filters: session_proxy_filters::Filters,
}

impl Gateway {
    /// A gateway for `sessions`, forwarding to `backends`.
    pub fn new(sessions: SessionService, backends: BackendRegistry, config: GatewayConfig) -> Self {
        Gateway {
            config,
            sessions,
            backends,
            handlers: LocalHandlers::default(),
            on_handshake: None,
            check_client: None,
            on_close: None,
            filters: Default::default(),
        }
    }

    /// Runs `filter` on every client request whose route starts with
    /// `prefix` (`""`: all), before the request is handled here or
    /// forwarded, in the order filters are added: rate limits, a
    /// logged-in check, one request at a time per session, time limits.
    /// A refused request is answered with the filter's code and message,
    /// and a refusal that says so disconnects the client (see
    /// [`session_proxy_filters`]).
    ///
    /// ```
    /// use session_proxy_filters::{check, RateLimit};
    /// use session_proxy_frontend::{BackendRegistry, Gateway, GatewayConfig, SessionConfig, SessionService};
    /// use session_proxy_protocol::client::HandlerError;
    ///
    /// let sessions = SessionService::new(SessionConfig::new("connector-1"));
    /// let mut gateway = Gateway::new(sessions, BackendRegistry::default(), GatewayConfig::new("connector"));
    /// gateway
    ///     .filter("", RateLimit::public())
    ///     .filter("chat.", check("logged_in", |call| match call.uid {
    ///         Some(_) => Ok(()),
    ///         None => Err(HandlerError::with_code(401, "log in first")),
    ///     }));
    /// ```
    pub fn filter(
        &mut self,
        prefix: &str,
        filter: impl session_proxy_filters::Filter,
    ) -> &mut Self {
        self.filters.add(prefix, filter);
        self
    }

    /// Makes the routes under `prefix` unreachable by clients: a client's
    /// request for one is refused with
    /// [`NOT_FOR_CLIENTS`](session_proxy_filters::NOT_FOR_CLIENTS) (403)
    /// before any other filter or handler, over every transport, whether it
    /// names the route or its dictionary code. This frontend's own code
    /// still calls them ([`LocalContext::forward`], a close hook's
    /// [`BackendRegistry::forward`]): for the calls between servers that a
    /// client must not fake, such as "add this player to the room".
    pub fn internal(&mut self, prefix: &str) -> &mut Self {
        self.filters
            .add_first(prefix, session_proxy_filters::Internal);
        self
    }

    /// The handlers of the frontend's own routes, to add to.
    pub fn handlers(&mut self) -> &mut LocalHandlers {
        &mut self.handlers
    }

    /// Sets the user handshake hook, which sees the client's whole
    /// handshake (its `user` part: an auth token, say) and its address. See
    /// [`HandshakeHook`] for its answers.
    ///
    /// ```
    /// # use session_proxy_frontend::{Gateway, GatewayConfig, BackendRegistry, SessionConfig, SessionService};
    /// # let mut gateway = Gateway::new(SessionService::new(SessionConfig::new("c-1")), BackendRegistry::default(), GatewayConfig::default());
    /// gateway.on_handshake(|request, _peer| async move {
    ///     match request.user.get("token").and_then(|t| t.as_str()) {
    ///         Some(token) if token.len() == 32 => Ok(Some(serde_json::json!({ "welcome": true }))),
    ///         _ => Err("invalid auth token".to_string()),
    ///     }
    /// });
    /// ```
    pub fn on_handshake<F, Fut>(&mut self, hook: F) -> &mut Self
    where
        F: Fn(HandshakeRequest, SocketAddr) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<Option<Value>, String>> + Send + 'static,
    {
        self.on_handshake = Some(Arc::new(move |request, peer| Box::pin(hook(request, peer))));
        self
    }

    /// Sets the client type/version check (Pomelo's `checkClient`): `false`
    /// refuses the client with code 501, which Pomelo clients take as "update
    /// the game".
    ///
    /// ```
    /// # use session_proxy_frontend::{Gateway, GatewayConfig, BackendRegistry, SessionConfig, SessionService};
    /// # let mut gateway = Gateway::new(SessionService::new(SessionConfig::new("c-1")), BackendRegistry::default(), GatewayConfig::default());
    /// gateway.check_client(|_client_type, version| async move { version.as_str() >= "1.2.0" });
    /// ```
    pub fn check_client<F, Fut>(&mut self, check: F) -> &mut Self
    where
        F: Fn(String, String) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = bool> + Send + 'static,
    {
        self.check_client = Some(Arc::new(move |client_type, version| {
            Box::pin(check(client_type, version))
        }));
        self
    }

    /// Sets the hook that runs once for every session of this frontend
    /// that ends for good (see [`CloseContext`]): not for a parked session
    /// that is resumed, nor for one that moved to another frontend. It is
    /// installed on the session service when the gateway starts. The future
    /// it returns runs as a task of the session service, which a drain
    /// waits for ([`SessionService::hooks_done`]) before it closes the
    /// backend links, so a "player left" call still reaches its server.
    ///
    /// ```
    /// # use session_proxy_frontend::{Gateway, GatewayConfig, BackendRegistry, SessionConfig, SessionService};
    /// # let mut gateway = Gateway::new(SessionService::new(SessionConfig::new("c-1")), BackendRegistry::default(), GatewayConfig::default());
    /// gateway.on_close(|ctx| async move {
    ///     if ctx.session.uid.is_some() {
    ///         // Answered (not a notify): a drain waits until the room has it.
    ///         let body = bytes::Bytes::from_static(b"{}");
    ///         let deadline = std::time::Duration::from_secs(2);
    ///         let _ = ctx.backends.forward("room.roomRemote.leave", ctx.session, body, deadline).await;
    ///     }
    /// });
    /// ```
    pub fn on_close<F, Fut>(&mut self, hook: F) -> &mut Self
    where
        F: Fn(CloseContext) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        self.on_close = Some(Arc::new(move |ctx| Box::pin(hook(ctx))));
        self
    }

    /// The sessions this gateway's clients open.
    pub fn sessions(&self) -> &SessionService {
        &self.sessions
    }

    /// The backends it forwards to (to set a router on, say).
    pub fn backends(&self) -> &BackendRegistry {
        &self.backends
    }

    /// Listens on `addr` (with `SO_REUSEADDR`) and serves clients.
    pub async fn bind(self, addr: SocketAddr) -> Result<GatewayServer, crate::Error> {
        self.config.validate()?;
        self.sessions.config().validate()?;
        let listener =
            bind_reusable(addr, 4096).map_err(|source| crate::Error::Listen { addr, source })?;
        Ok(self.start(listener))
    }

    /// Serves clients on an already bound listener. Fails only on a
    /// configuration field that cannot work.
    pub fn serve(self, listener: TcpListener) -> Result<GatewayServer, crate::Error> {
        self.config.validate()?;
        self.sessions.config().validate()?;
        Ok(self.start(listener))
    }

    /// Serves on `listener` with configs already checked.
    fn start(self, listener: TcpListener) -> GatewayServer {
        if let Some(hook) = self.on_close {
            let backends = self.backends.clone();
            let registered = self.sessions.on_closed(Arc::new(
                move |session: &SessionSnapshot, reason: &crate::EndReason| {
                    Some(hook(CloseContext {
                        session: session.clone(),
                        reason: reason.clone(),
                        backends: backends.clone(),
                    }))
                },
            ));
            if !registered {
                tracing::warn!(
                    "the session service already has a close hook; this gateway's is not used"
                );
            }
        }
        let running = Running::new(&listener);
        let acceptor = Acceptor::new(
            listener,
            self.config.max_connections,
            running.cancel.clone(),
        );
        let per_ip = PerIp::new(self.config.max_connections_per_ip);
        let limits = conn::Limits::of(&self.config);
        let shared = Arc::new(GatewayContext {
            dictionary: Dictionary::new(&self.config.dictionary),
            config: self.config,
            sessions: self.sessions,
            backends: self.backends,
            route_metrics: self
                .handlers
                .routes()
                .map(|r| {
                    (
                        r.to_string(),
                        Arc::new(crate::metrics::RouteMetrics::new(r)),
                    )
                })
                .collect(),
            handlers: self.handlers,
            on_handshake: self.on_handshake,
            check_client: self.check_client,
            cancel: running.cancel.clone(),
            tasks: running.tracker.clone(),
            per_ip,
            limits,
            filters: self.filters,
            started: tokio::time::Instant::now(),
        });
        let local_addr = running.local_addr;
        running.tracker.spawn(
            accept_loop(acceptor, shared, running.tracker.clone())
                .instrument(tracing::info_span!("gateway", %local_addr)),
        );
        GatewayServer { running }
    }
}

/// A running gateway. Dropping it stops it without waiting.
#[derive(Debug)]
#[must_use = "dropping the gateway stops it"]
pub struct GatewayServer {
    /// Address, stop signal and tasks.
    running: Running,
}

impl GatewayServer {
    /// The address clients connect to (TCP and WebSocket alike).
    pub fn local_addr(&self) -> SocketAddr {
        self.running.local_addr
    }

    /// Stops accepting, closes every client connection, and waits up to
    /// `drain` for them; returns whether all finished in time.
    pub async fn shutdown(self, drain: Duration) -> bool {
        self.running.shutdown(drain).await
    }
}

async fn accept_loop(acceptor: Acceptor, shared: Arc<GatewayContext>, tracker: TaskTracker) {
    info!(server_type = %shared.config.server_type, "accepting clients");
    while let Some((stream, peer, permit)) = acceptor.next().await {
        let ip = peer.ip();
        // Counted here, uncounted when the connection's task ends.
        if !shared.per_ip.try_enter(ip) {
            crate::logs::warn_throttled!(%ip, limit = shared.config.max_connections_per_ip, "too many connections from one address; closing the new one");
            drop(stream);
            continue;
        }
        tracker.spawn(conn::ClientTask::new(stream, peer, shared.clone(), permit));
    }
}
