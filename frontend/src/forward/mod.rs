//! The outgoing side of the cluster links: the backends connected to this
//! frontend, and forwarding client requests to them.
//!
//! Backends dial frontends (they need the connection anyway, for session
//! calls); a backend that announces a server type in its hello is
//! registered here, and client requests for that type are forwarded over the
//! same connection, so one TCP connection carries calls both ways. The
//! [`rpc`](crate::rpc) module serves the calls that come in on it; this one
//! owns the calls that go out (`BackendLink`: its outbox and its
//! in-flight table). [`router`] picks the node.

pub mod router;
mod sticky;

pub use router::{pick_by_key, HashRouter, Router};
pub use sticky::StickyOptions;

use bytes::Bytes;
use session_proxy_protocol::client::{server_type_of, HandlerError};
use session_proxy_protocol::sync::RwLockUnpoisoned as _;
use session_proxy_protocol::text::log_safe;
use session_proxy_protocol::{
    Adopt, BackendCall, Call, ErrorCode, Handle, InFlight, Message, RegisterError, Remote, Request,
    Response, RpcError, SessionSnapshot, Target, ADOPT_METHOD,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::debug;

/// One connected backend that serves a server type.
#[derive(Debug)]
pub(crate) struct BackendLink {
    /// The backend's node id.
    pub(crate) node_id: String,
    /// Tells this connection apart from an older one of the same node.
    pub(crate) conn_id: u64,
    /// The connection task's outbox.
    pub(crate) tx: mpsc::Sender<Message<BackendCall>>,
    /// Forwarded calls awaiting responses: the encoded reply, or why not.
    pub(crate) inflight: InFlight<Result<Bytes, RpcError>>,
    /// The remote methods the backend said it serves.
    remotes: std::sync::Mutex<Vec<String>>,
}

impl BackendLink {
    /// Hands a backend's answer to the forwarded request waiting for it.
    pub(crate) fn complete(&self, resp: Response) {
        if !self.inflight.complete(resp.id, resp.result) {
            debug!(
                id = resp.id,
                "response to a forwarded request nobody waits for"
            );
        }
    }

    /// Fails every forwarded request still waiting: the link is gone.
    pub(crate) fn close(&self) {
        self.inflight.close(|| {
            Err(RpcError::new(
                ErrorCode::PeerClosed,
                "backend connection closed",
            ))
        });
    }
}

/// The connected backends of one server type, sorted by node id, with their
/// ids ready for the router. Replaced whole on (rare) membership changes, so
/// a request takes it with one reference-count increment, no allocation.
#[derive(Default)]
struct Candidates {
    links: Vec<Arc<BackendLink>>,
    ids: Vec<String>,
    /// Request metrics of the server type (its forwarded routes).
    metrics: Option<crate::metrics::RouteMetrics>,
    /// The remote methods any of them serves: never forwarded for a client.
    remotes: std::collections::HashSet<String>,
}

impl Candidates {
    fn from_links(server_type: &str, mut links: Vec<Arc<BackendLink>>) -> Self {
        use session_proxy_protocol::sync::LockUnpoisoned as _;
        links.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        let ids = links.iter().map(|l| l.node_id.clone()).collect();
        let remotes = links
            .iter()
            .flat_map(|l| l.remotes.lock_unpoisoned().clone())
            .collect();
        Candidates {
            links,
            ids,
            metrics: Some(crate::metrics::RouteMetrics::new(server_type)),
            remotes,
        }
    }
}

struct Inner {
    /// `server type -> connected backends`.
    links: RwLock<HashMap<String, Arc<Candidates>>>,
    /// Routers by server type; the rest use [`HashRouter`].
    routers: RwLock<HashMap<String, Arc<dyn Router>>>,
    /// The bindings of the sticky server types.
    sticky: RwLock<HashMap<String, Arc<sticky::Sticky>>>,
    /// Whether any type is sticky: requests skip the lookup while none is.
    any_sticky: std::sync::atomic::AtomicBool,
    /// The backends that left, and how.
    departed: sticky::Departures,
    /// When this registry started (links come up after it).
    born: std::time::Instant,
    /// Connection ids.
    next_conn: AtomicU64,
    /// Woken on every membership change.
    changed: tokio::sync::Notify,
}

impl Default for Inner {
    fn default() -> Self {
        Inner {
            links: RwLock::default(),
            routers: RwLock::default(),
            sticky: RwLock::default(),
            any_sticky: std::sync::atomic::AtomicBool::new(false),
            departed: sticky::Departures::default(),
            born: std::time::Instant::now(),
            next_conn: AtomicU64::new(0),
            changed: tokio::sync::Notify::new(),
        }
    }
}

/// The backends connected to this frontend, by server type. Cheap to clone.
#[derive(Clone, Default)]
pub struct BackendRegistry {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for BackendRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.nodes()).finish()
    }
}

/// Removes a forwarded call's id when its caller stops waiting, and tells
/// the backend to stop running it if it gave up before the answer and the
/// deadline (at the deadline the backend stops by itself).
struct Forget<'a> {
    link: &'a BackendLink,
    id: u64,
    deadline_at: std::time::Instant,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        if self.link.inflight.forget(self.id) && std::time::Instant::now() < self.deadline_at {
            // Best effort: a full queue or a dead link means the backend
            // learns nothing, and its handler runs to its own deadline.
            let _ = self.link.tx.try_send(Message::Cancel(self.id));
        }
    }
}

impl BackendRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        BackendRegistry::default()
    }

    /// Routes requests of `server_type` with `router` instead of [`HashRouter`].
    pub fn set_router(&self, server_type: &str, router: impl Router) {
        self.inner
            .routers
            .write_unpoisoned()
            .insert(server_type.to_string(), Arc::new(router));
    }

    /// Keeps each player of `server_type` on one node (a sticky type, for
    /// servers that hold game state): a binding uid → node in `store`, the
    /// session store the frontends share, so that a reconnect, a resume on
    /// another frontend or a node that joins does not move the player. A
    /// binding moves only when its node drains or stays away for
    /// [`StickyOptions::move_after`], to the node the type's router picks;
    /// that node is then called with
    /// [`ADOPT_METHOD`](session_proxy_protocol::ADOPT_METHOD) first. Requests
    /// of sessions with no uid are routed as for any type. See
    /// [`StickyOptions`] for the rest.
    pub fn stick(
        &self,
        server_type: &str,
        store: Arc<dyn crate::store::SessionStore>,
        options: StickyOptions,
    ) {
        self.inner.sticky.write_unpoisoned().insert(
            server_type.to_string(),
            Arc::new(sticky::Sticky::new(store, options)),
        );
        self.inner.any_sticky.store(true, Ordering::Release);
    }

    /// `(server type, node ids)` of every connected backend.
    pub fn nodes(&self) -> Vec<(String, Vec<String>)> {
        let links = self.inner.links.read_unpoisoned();
        let mut out: Vec<_> = links
            .iter()
            .map(|(t, c)| (t.clone(), c.ids.clone()))
            .collect();
        out.sort();
        out
    }

    /// Requests waiting on each connected backend now, by node id.
    pub fn in_flight(&self) -> Vec<(String, usize)> {
        let links = self.inner.links.read_unpoisoned();
        links
            .values()
            .flat_map(|c| c.links.iter())
            .map(|l| (l.node_id.clone(), l.inflight.len()))
            .collect()
    }

    /// How many backends of `server_type` are connected now.
    pub fn count(&self, server_type: &str) -> usize {
        let links = self.inner.links.read_unpoisoned();
        links.get(server_type).map_or(0, |c| c.links.len())
    }

    /// Waits until at least `count` backends of `server_type` are connected,
    /// for at most `within`; returns whether they are. Await it before
    /// serving clients, so the first requests do not get "no backend".
    pub async fn wait_for(&self, server_type: &str, count: usize, within: Duration) -> bool {
        let until = tokio::time::Instant::now() + within;
        loop {
            let changed = self.inner.changed.notified();
            tokio::pin!(changed);
            // Registered before the check, so no change is missed between.
            changed.as_mut().enable();
            if self.count(server_type) >= count {
                return true;
            }
            if tokio::time::timeout_at(until, changed).await.is_err() {
                return false;
            }
        }
    }

    pub(crate) fn register(
        &self,
        server_type: &str,
        node_id: &str,
        tx: mpsc::Sender<Message<BackendCall>>,
        max_in_flight: usize,
    ) -> Arc<BackendLink> {
        let link = Arc::new(BackendLink {
            node_id: node_id.to_string(),
            conn_id: self.inner.next_conn.fetch_add(1, Ordering::Relaxed),
            tx,
            inflight: InFlight::new(max_in_flight),
            remotes: std::sync::Mutex::default(),
        });
        let mut links = self.inner.links.write_unpoisoned();
        let entry = links.entry(server_type.to_string()).or_default();
        // A reconnecting node replaces its older connection.
        let mut list: Vec<Arc<BackendLink>> = entry
            .links
            .iter()
            .filter(|l| l.node_id != node_id)
            .cloned()
            .collect();
        list.push(link.clone());
        *entry = Arc::new(Candidates::from_links(server_type, list));
        drop(links);
        self.inner.departed.came_back(node_id);
        self.inner.changed.notify_waiters();
        link
    }

    /// Records the remote methods `link` (of `server_type`) serves.
    pub(crate) fn set_remotes(&self, server_type: &str, link: &BackendLink, routes: Vec<String>) {
        use session_proxy_protocol::sync::LockUnpoisoned as _;
        let mut links = self.inner.links.write_unpoisoned();
        *link.remotes.lock_unpoisoned() = routes;
        if let Some(entry) = links.get_mut(server_type) {
            if entry.links.iter().any(|l| l.conn_id == link.conn_id) {
                *entry = Arc::new(Candidates::from_links(server_type, entry.links.clone()));
            }
        }
    }

    /// Whether a connected backend serves `route` as a remote method (a
    /// client's request for it is refused at the gateway).
    pub fn serves_remote(&self, route: &str) -> bool {
        let Some(server_type) = server_type_of(route) else {
            return false;
        };
        let links = self.inner.links.read_unpoisoned();
        links
            .get(server_type)
            .is_some_and(|c| c.remotes.contains(route))
    }

    /// Takes `link` out of the picks: it closed, or its node is draining.
    pub(crate) fn unregister(&self, server_type: &str, link: &BackendLink, draining: bool) {
        let mut links = self.inner.links.write_unpoisoned();
        if let Some(entry) = links.get_mut(server_type) {
            // Its node left unless it was gone already (a drained node's
            // link closes later) or a newer link of it replaced it.
            let present = entry.links.iter().any(|l| l.conn_id == link.conn_id);
            let replaced = entry
                .links
                .iter()
                .any(|l| l.node_id == link.node_id && l.conn_id != link.conn_id);
            if present && !replaced {
                self.inner.departed.left(&link.node_id, draining);
            }
            let list: Vec<Arc<BackendLink>> = entry
                .links
                .iter()
                .filter(|l| l.conn_id != link.conn_id)
                .cloned()
                .collect();
            if list.is_empty() {
                links.remove(server_type);
            } else {
                *entry = Arc::new(Candidates::from_links(server_type, list));
            }
        }
        drop(links);
        self.inner.changed.notify_waiters();
    }

    /// The backend for a route, and the candidates it was picked from.
    fn pick_with(
        &self,
        route: &str,
        session: &SessionSnapshot,
    ) -> Result<(Arc<BackendLink>, Arc<Candidates>), RpcError> {
        let server_type = server_type_of(route).ok_or_else(|| {
            RpcError::new(ErrorCode::UnknownRoute, format!("invalid route {route:?}"))
        })?;
        let candidates = self.candidates(server_type)?;
        let router = self
            .inner
            .routers
            .read_unpoisoned()
            .get(server_type)
            .cloned();
        let index = match router {
            Some(r) => r.route(session, route, &candidates.ids),
            None => HashRouter.route(session, route, &candidates.ids),
        };
        let link = index
            .and_then(|i| candidates.links.get(i).cloned())
            .ok_or_else(|| RpcError::new(ErrorCode::NoBackend, "the router chose no server"))?;
        Ok((link, candidates))
    }

    /// The backend for a session's request: by its binding for a sticky
    /// type (telling a node a moved player came to it), else by the
    /// router.
    async fn route_session(
        &self,
        route: &str,
        session: &SessionSnapshot,
        deadline: Duration,
    ) -> Result<(Arc<BackendLink>, Arc<Candidates>), RpcError> {
        let sticky = server_type_of(route).and_then(|t| Some((t, self.sticky(t)?)));
        let (Some(uid), Some((server_type, sticky))) = (&session.uid, sticky) else {
            return self.pick_with(route, session);
        };
        let router = self.router_of(server_type);
        let choose = |ids: &[String]| router.route(session, route, ids);
        let placed = self
            .place(&sticky, server_type, uid, choose, Some(session), deadline)
            .await?;
        Ok((placed.link, placed.candidates))
    }

    /// The router of `server_type`.
    fn router_of(&self, server_type: &str) -> Arc<dyn Router> {
        self.inner
            .routers
            .read_unpoisoned()
            .get(server_type)
            .cloned()
            .unwrap_or_else(|| Arc::new(HashRouter))
    }

    /// Forwards a client request to a backend of the route's server type and
    /// returns the handler's JSON answer. Fails with a typed error when no
    /// backend is connected, the backend dies, or the deadline passes.
    pub async fn forward(
        &self,
        route: &str,
        session: SessionSnapshot,
        body: Bytes,
        deadline: Duration,
    ) -> Result<Bytes, RpcError> {
        let started = std::time::Instant::now();
        let (link, candidates) = self
            .route_session(route, &session, deadline)
            .await
            .inspect_err(|_| {
                crate::metrics::UNROUTED.record(started, false);
            })?;
        // What routing took (a sticky lookup, an adopt) comes off the
        // request's deadline.
        let left = deadline.saturating_sub(started.elapsed());
        let result = self.exchange(&link, route, session, body, left).await;
        if let Some(m) = &candidates.metrics {
            m.record(started, result.is_ok());
        }
        result
    }

    async fn exchange(
        &self,
        link: &Arc<BackendLink>,
        route: &str,
        session: SessionSnapshot,
        body: Bytes,
        deadline: Duration,
    ) -> Result<Bytes, RpcError> {
        let handle = Handle {
            route: route.to_string(),
            session,
            body,
        };
        let reply = exchange_call(link, handle.into(), deadline).await?;
        Handle::decode_reply(reply)
            .map_err(|err| RpcError::new(err.code(), format!("undecodable reply: {err}")))
    }

    /// The links of `server_type`'s backends, sorted by node id.
    fn candidates(&self, server_type: &str) -> Result<Arc<Candidates>, RpcError> {
        let candidates = {
            let links = self.inner.links.read_unpoisoned();
            links.get(server_type).cloned().unwrap_or_default()
        };
        if candidates.links.is_empty() {
            return Err(RpcError::new(
                ErrorCode::NoBackend,
                format!("no {server_type} server is connected"),
            ));
        }
        Ok(candidates)
    }

    /// Calls the remote method `route` (`serverType.remoteName.method`) on
    /// the backend of its type that `target` picks, about `session` if
    /// given (the callee gets it, and its changes and pushes come back
    /// here), within `deadline`. A failure is the error to answer a client
    /// with: 404 no such server or method, 504 past the deadline, 503 the
    /// callee draining, or the method's own code and message.
    pub async fn remote<A: serde::Serialize + ?Sized, R: serde::de::DeserializeOwned>(
        &self,
        route: &str,
        target: Target,
        session: Option<SessionSnapshot>,
        args: &A,
        deadline: Duration,
    ) -> Result<R, HandlerError> {
        let server_type = server_type_of(route)
            .ok_or_else(|| HandlerError::with_code(404, format!("{route:?} is not a route")))?;
        let caller = session
            .as_ref()
            .map_or_else(String::new, |s| s.frontend_id.clone());
        let call = Remote::new(route, &caller, session, args)
            .map_err(|e| HandlerError::new(format!("arguments of {route}: {e}")))?;
        let reply = self
            .relay(server_type, &target, call, deadline)
            .await
            .map_err(|err| {
                let code = match err.code {
                    ErrorCode::NoBackend | ErrorCode::UnknownRoute => 404,
                    ErrorCode::DeadlineExceeded => 504,
                    ErrorCode::Unavailable => 503,
                    _ => 500,
                };
                HandlerError::with_code(code, format!("{route}: {err}"))
            })?;
        match Remote::answer(reply) {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(callee)) => Err(HandlerError::with_code(callee.code, callee.message)),
            Err(err) => Err(HandlerError::new(format!("answer of {route}: {err}"))),
        }
    }

    /// Relays a backend's remote call to the backend of `server_type` that
    /// `target` picks (a key's owner by rendezvous hash, a named node, or
    /// the player's node), within `deadline`; returns the callee's reply
    /// bytes untouched.
    pub(crate) async fn relay(
        &self,
        server_type: &str,
        target: &Target,
        call: Remote,
        deadline: Duration,
    ) -> Result<Bytes, RpcError> {
        if let (Target::Uid(uid), Some(sticky)) = (target, self.sticky(server_type)) {
            let started = std::time::Instant::now();
            let choose = |ids: &[String]| pick_by_key(uid.as_bytes(), ids);
            let session = call.session.as_ref();
            let placed = self
                .place(&sticky, server_type, uid, choose, session, deadline)
                .await?;
            let left = deadline.saturating_sub(started.elapsed());
            return exchange_call(&placed.link, call.into(), left).await;
        }
        let candidates = self.candidates(server_type)?;
        let index = match target {
            Target::Key(key) | Target::Uid(key) => pick_by_key(key.as_bytes(), &candidates.ids),
            Target::Node(id) => candidates.ids.iter().position(|n| n == id),
        };
        let link = index
            .and_then(|i| candidates.links.get(i))
            .ok_or_else(|| match target {
                Target::Node(id) => RpcError::new(
                    ErrorCode::NoBackend,
                    format!("no {server_type} server {} is connected", log_safe(id)),
                ),
                Target::Key(_) | Target::Uid(_) => {
                    RpcError::new(ErrorCode::NoBackend, "no server picked")
                }
            })?;
        exchange_call(link, call.into(), deadline).await
    }

    /// Relays a remote call to every backend of `server_type` at once; each
    /// node's id and outcome.
    pub(crate) async fn relay_all(
        &self,
        server_type: &str,
        call: Remote,
        deadline: Duration,
    ) -> Result<Vec<(String, Result<Bytes, RpcError>)>, RpcError> {
        let candidates = self.candidates(server_type)?;
        let calls = candidates.links.iter().map(|link| {
            let call = call.clone();
            async move {
                let outcome = exchange_call(link, call.into(), deadline).await;
                (link.node_id.clone(), outcome)
            }
        });
        Ok(futures::future::join_all(calls).await)
    }

    /// Forwards a client notify: no answer, no slot among the requests in
    /// flight; fails only if it cannot be queued for the backend within
    /// `deadline`.
    pub async fn notify(
        &self,
        route: &str,
        session: SessionSnapshot,
        body: Bytes,
        deadline: Duration,
    ) -> Result<(), RpcError> {
        let (link, _) = self.route_session(route, &session, deadline).await?;
        let notify = Message::Notify(BackendCall::from(Handle {
            route: route.to_string(),
            session,
            body,
        }));
        match tokio::time::timeout(deadline, link.tx.send(notify)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(RpcError::new(
                ErrorCode::PeerClosed,
                "backend connection closed",
            )),
            Err(_) => Err(RpcError::new(
                ErrorCode::DeadlineExceeded,
                format!("{} took no notify within {deadline:?}", link.node_id),
            )),
        }
    }
}

/// Tells the node a player's binding moved to (`link`) that it holds the
/// player now ([`ADOPT_METHOD`]), before the player's request; a node that
/// serves no such method is fine, one that fails is logged.
async fn adopt(
    link: &Arc<BackendLink>,
    server_type: &str,
    uid: &str,
    from: String,
    session: Option<SessionSnapshot>,
    deadline: Duration,
) {
    let route = format!("{server_type}.{ADOPT_METHOD}");
    let caller = session
        .as_ref()
        .map_or_else(String::new, |s| s.frontend_id.clone());
    let args = Adopt {
        uid: uid.to_string(),
        from,
    };
    let call = match Remote::new(&route, &caller, session, &args) {
        Ok(call) => call,
        Err(err) => {
            tracing::warn!(cause = %err, "cannot encode the adopt call");
            return;
        }
    };
    let told = exchange_call(link, call.into(), deadline).await;
    match told
        .as_ref()
        .map(|reply| Remote::answer::<()>(reply.clone()))
    {
        Ok(Ok(Ok(()))) => {}
        Err(err) if err.code == ErrorCode::UnknownRoute => {}
        Ok(Ok(Err(callee))) => {
            tracing::warn!(node = %log_safe(&link.node_id), code = callee.code, cause = %callee.message, "the node a player moved to failed to adopt them")
        }
        Ok(Err(err)) => {
            tracing::warn!(node = %log_safe(&link.node_id), cause = %err, "undecodable answer to adopt")
        }
        Err(err) => {
            tracing::warn!(node = %log_safe(&link.node_id), cause = %err, "the node a player moved to was not told")
        }
    }
}

/// Sends `call` on `link` and waits for its reply bytes within `deadline`;
/// a call given up on before its deadline is cancelled on the backend.
async fn exchange_call(
    link: &Arc<BackendLink>,
    call: BackendCall,
    deadline: Duration,
) -> Result<Bytes, RpcError> {
    let (id, rx) = link.inflight.register().map_err(|e| match e {
        RegisterError::Full => RpcError::new(
            ErrorCode::Overloaded,
            "too many requests in flight to the backend",
        ),
        RegisterError::Closed => RpcError::new(ErrorCode::PeerClosed, "backend connection closed"),
    })?;
    let _forget = Forget {
        link,
        id,
        deadline_at: std::time::Instant::now() + deadline,
    };
    let request = Message::Request(Request::new(id, deadline, call));
    let exchange = async {
        link.tx
            .send(request)
            .await
            .map_err(|_| RpcError::new(ErrorCode::PeerClosed, "backend connection closed"))?;
        match rx.await {
            Ok(result) => result,
            Err(_) => Err(RpcError::new(
                ErrorCode::PeerClosed,
                "backend connection closed",
            )),
        }
    };
    match tokio::time::timeout(deadline, exchange).await {
        Ok(result) => result,
        Err(_) => Err(RpcError::new(
            ErrorCode::DeadlineExceeded,
            format!("{} did not answer within {deadline:?}", link.node_id),
        )),
    }
}
