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
//!
//! The files: `link` (one backend's link and one call's exchange on it),
//! `members` (which backends are connected, and what they serve),
//! `router` and `sticky` (which node a request goes to), `remote` (calls
//! between servers relayed here); this one forwards client requests.

mod link;
mod members;
mod remote;
pub mod router;
mod sticky;

pub(crate) use link::BackendLink;
pub use router::{pick_by_key, HashRouter, Router};
pub use sticky::StickyOptions;

use link::{closed, direct_call, exchange_call, Candidates, Unqueued};

use bytes::Bytes;
use session_proxy_protocol::client::server_type_of;
use session_proxy_protocol::sync::RwLockUnpoisoned as _;
use session_proxy_protocol::{
    BackendCall, Call, ErrorCode, Handle, Message, RpcError, SessionSnapshot,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

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

    /// The backend for a session's request: by its binding for a sticky
    /// type (telling a node a moved player came to it), else by the
    /// type's router; and the candidates it was picked from.
    async fn route_session(
        &self,
        route: &str,
        session: &SessionSnapshot,
        deadline: Duration,
    ) -> Result<(Arc<BackendLink>, Arc<Candidates>), RpcError> {
        let server_type = server_type_of(route).ok_or_else(|| {
            RpcError::new(ErrorCode::UnknownRoute, format!("invalid route {route:?}"))
        })?;
        let router = self.router_of(server_type);
        let choose = |ids: &[String]| match &router {
            Some(r) => r.route(session, route, ids),
            None => HashRouter.route(session, route, ids),
        };
        if let (Some(uid), Some(sticky)) = (&session.uid, self.sticky(server_type)) {
            // Boxed: a placement may wait on the store, and every forwarded
            // request's future would carry its room, sticky or not.
            let placed =
                Box::pin(self.place(&sticky, server_type, uid, choose, Some(session), deadline))
                    .await?;
            return Ok((placed.link, placed.candidates));
        }
        let candidates = self.candidates(server_type)?;
        let link = choose(&candidates.ids)
            .and_then(|i| candidates.links.get(i).cloned())
            .ok_or_else(|| RpcError::new(ErrorCode::NoBackend, "the router chose no server"))?;
        Ok((link, candidates))
    }

    /// The router set for `server_type` (`None`: the [`HashRouter`]).
    fn router_of(&self, server_type: &str) -> Option<Arc<dyn Router>> {
        self.inner
            .routers
            .read_unpoisoned()
            .get(server_type)
            .cloned()
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
        if let Some(direct) = &link.direct {
            return direct_call(link, direct, handle, deadline).await;
        }
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

    /// Forwards a client notify: no answer, no slot among the requests in
    /// flight; fails only if it cannot be queued for the backend within
    /// `deadline`. A backend of this process called directly runs it here,
    /// to its end (the caller runs notifies on a task of their own).
    pub async fn notify(
        &self,
        route: &str,
        session: SessionSnapshot,
        body: Bytes,
        deadline: Duration,
    ) -> Result<(), RpcError> {
        let (link, _) = self.route_session(route, &session, deadline).await?;
        let handle = Handle {
            route: route.to_string(),
            session,
            body,
        };
        if let Some(direct) = &link.direct {
            // Run here, as a request whose answer nobody reads.
            return direct_call(&link, direct, handle, deadline).await.map(drop);
        }
        let notify = Message::Notify(BackendCall::from(handle));
        let until = tokio::time::Instant::now() + deadline;
        match link.queue(notify, until).await {
            Ok(()) => Ok(()),
            Err(Unqueued::Closed) => Err(closed()),
            Err(Unqueued::TimedOut) => Err(RpcError::new(
                ErrorCode::DeadlineExceeded,
                format!("{} took no notify within {deadline:?}", link.node_id),
            )),
        }
    }
}
