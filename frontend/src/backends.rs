//! The backends connected to this frontend, and forwarding to them.
//!
//! Backends dial frontends (they need the connection anyway, for session
//! calls); a backend that announces a server type in its hello is
//! registered here, and client requests for that type are forwarded over the
//! same connection, so one TCP connection carries calls both ways.

use bytes::Bytes;
use session_proxy_protocol::{
    Call, ErrorCode, InFlight, Message, RegisterError, Reply, Request, RpcError, SessionSnapshot,
};
use std::collections::HashMap;
use std::hash::Hasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::mpsc;

/// Picks the backend node for a forwarded request.
pub trait Router: Send + Sync + 'static {
    /// Returns the index into `backends` (the node ids of the route's server
    /// type, sorted) of the node to use, or `None` to refuse the request.
    fn route(&self, session: &SessionSnapshot, route: &str, backends: &[String]) -> Option<usize>;
}

impl<F> Router for F
where
    F: Fn(&SessionSnapshot, &str, &[String]) -> Option<usize> + Send + Sync + 'static,
{
    fn route(&self, session: &SessionSnapshot, route: &str, backends: &[String]) -> Option<usize> {
        self(session, route, backends)
    }
}

/// The default router: rendezvous hashing of the uid, or of the session id
/// when the session is unbound. A user sticks to one node while the set of
/// nodes is stable, adding a node moves only the users it wins, and unbound
/// sessions spread evenly (Pinus hashes the empty string for them and piles
/// them all on one node).
#[derive(Clone, Copy, Debug, Default)]
pub struct HashRouter;

impl Router for HashRouter {
    fn route(&self, session: &SessionSnapshot, _route: &str, backends: &[String]) -> Option<usize> {
        let key = match &session.uid {
            Some(uid) => uid.clone(),
            None => session.sid.as_u64().to_string(),
        };
        pick_by_key(key.as_bytes(), backends)
    }
}

/// Rendezvous (highest-random-weight) choice of one of `nodes` for `key`.
pub fn pick_by_key<S: AsRef<str>>(key: &[u8], nodes: &[S]) -> Option<usize> {
    nodes
        .iter()
        .enumerate()
        .max_by_key(|(_, node)| {
            let mut h = Fnv64::default();
            h.write(key);
            h.write(&[0xff]);
            h.write(node.as_ref().as_bytes());
            mix(h.finish())
        })
        .map(|(i, _)| i)
}

/// FNV-1a: stable across processes and builds, unlike std's `DefaultHasher`.
struct Fnv64(u64);

impl Default for Fnv64 {
    fn default() -> Self {
        Fnv64(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv64 {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

fn mix(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// One connected backend that serves a server type.
#[derive(Debug)]
pub(crate) struct BackendLink {
    /// The backend's node id.
    pub(crate) node_id: String,
    /// Tells this connection apart from an older one of the same node.
    pub(crate) conn_id: u64,
    /// The connection task's outbox.
    pub(crate) tx: mpsc::Sender<Message>,
    /// Forwarded calls awaiting responses.
    pub(crate) inflight: InFlight<Result<Reply, RpcError>>,
}

/// The connected backends of one server type, sorted by node id, with their
/// ids ready for the router. Replaced whole on (rare) membership changes, so
/// a request takes it with one reference-count increment, no allocation.
#[derive(Default)]
struct Candidates {
    links: Vec<Arc<BackendLink>>,
    ids: Vec<String>,
}

impl Candidates {
    fn from_links(mut links: Vec<Arc<BackendLink>>) -> Self {
        links.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        let ids = links.iter().map(|l| l.node_id.clone()).collect();
        Candidates { links, ids }
    }
}

#[derive(Default)]
struct Inner {
    /// `server type -> connected backends`.
    links: RwLock<HashMap<String, Arc<Candidates>>>,
    /// Routers by server type; the rest use [`HashRouter`].
    routers: RwLock<HashMap<String, Arc<dyn Router>>>,
    /// Connection ids.
    next_conn: AtomicU64,
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

/// Removes a forwarded call's id when its caller stops waiting.
struct Forget<'a>(&'a BackendLink, u64);

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.0.inflight.forget(self.1);
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
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(server_type.to_string(), Arc::new(router));
    }

    /// `(server type, node ids)` of every connected backend.
    pub fn nodes(&self) -> Vec<(String, Vec<String>)> {
        let links = self.inner.links.read().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<_> = links
            .iter()
            .map(|(t, c)| (t.clone(), c.ids.clone()))
            .collect();
        out.sort();
        out
    }

    pub(crate) fn register(
        &self,
        server_type: &str,
        node_id: &str,
        tx: mpsc::Sender<Message>,
        max_in_flight: usize,
    ) -> Arc<BackendLink> {
        let link = Arc::new(BackendLink {
            node_id: node_id.to_string(),
            conn_id: self.inner.next_conn.fetch_add(1, Ordering::Relaxed),
            tx,
            inflight: InFlight::new(max_in_flight),
        });
        let mut links = self.inner.links.write().unwrap_or_else(|e| e.into_inner());
        let entry = links.entry(server_type.to_string()).or_default();
        // A reconnecting node replaces its older connection.
        let mut list: Vec<Arc<BackendLink>> = entry
            .links
            .iter()
            .filter(|l| l.node_id != node_id)
            .cloned()
            .collect();
        list.push(link.clone());
        *entry = Arc::new(Candidates::from_links(list));
        link
    }

    pub(crate) fn unregister(&self, server_type: &str, link: &BackendLink) {
        let mut links = self.inner.links.write().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = links.get_mut(server_type) {
            let list: Vec<Arc<BackendLink>> = entry
                .links
                .iter()
                .filter(|l| l.conn_id != link.conn_id)
                .cloned()
                .collect();
            if list.is_empty() {
                links.remove(server_type);
            } else {
                *entry = Arc::new(Candidates::from_links(list));
            }
        }
    }

    fn pick(&self, route: &str, session: &SessionSnapshot) -> Result<Arc<BackendLink>, RpcError> {
        let server_type = route.split('.').next().unwrap_or_default();
        let candidates = {
            let links = self.inner.links.read().unwrap_or_else(|e| e.into_inner());
            links.get(server_type).cloned().unwrap_or_default()
        };
        if candidates.links.is_empty() {
            return Err(RpcError::new(
                ErrorCode::NoBackend,
                format!("no {server_type} server is connected"),
            ));
        }
        let router = self
            .inner
            .routers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(server_type)
            .cloned();
        let index = match router {
            Some(r) => r.route(session, route, &candidates.ids),
            None => HashRouter.route(session, route, &candidates.ids),
        };
        index
            .and_then(|i| candidates.links.get(i).cloned())
            .ok_or_else(|| RpcError::new(ErrorCode::NoBackend, "the router chose no server"))
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
        let link = self.pick(route, &session)?;
        let (id, rx) = link.inflight.register().map_err(|e| match e {
            RegisterError::Full => RpcError::new(
                ErrorCode::Overloaded,
                "too many requests in flight to the backend",
            ),
            RegisterError::Closed => {
                RpcError::new(ErrorCode::PeerClosed, "backend connection closed")
            }
        })?;
        let _forget = Forget(&link, id);
        let request = Message::Request(Request {
            id,
            deadline_ms: u32::try_from(deadline.as_millis()).unwrap_or(u32::MAX),
            call: Call::Handle {
                route: route.to_string(),
                session,
                body,
            },
        });
        let exchange = async {
            link.tx
                .send(request)
                .await
                .map_err(|_| RpcError::new(ErrorCode::PeerClosed, "backend connection closed"))?;
            match rx.await {
                Ok(Ok(Reply::Handled(body))) => Ok(body),
                Ok(Ok(_)) => Err(RpcError::new(
                    ErrorCode::Internal,
                    "backend sent an unexpected reply",
                )),
                Ok(Err(err)) => Err(err),
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

    /// Forwards a client notify: no answer; fails only if it cannot be sent.
    pub async fn notify(
        &self,
        route: &str,
        session: SessionSnapshot,
        body: Bytes,
    ) -> Result<(), RpcError> {
        let link = self.pick(route, &session)?;
        link.tx
            .send(Message::Notify(Call::Handle {
                route: route.to_string(),
                session,
                body,
            }))
            .await
            .map_err(|_| RpcError::new(ErrorCode::PeerClosed, "backend connection closed"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use session_proxy_protocol::SessionId;

    fn session(uid: Option<&str>, sid: u64) -> SessionSnapshot {
        SessionSnapshot {
            sid: SessionId::from_raw(sid),
            frontend_id: "f".into(),
            uid: uid.map(str::to_string),
            settings: Default::default(),
        }
    }

    #[test]
    fn hash_router_is_stable_and_spreads_unbound_sessions() {
        let nodes: Vec<String> = ["chat-1", "chat-2", "chat-3"].map(String::from).to_vec();
        let a = HashRouter.route(&session(Some("alice"), 1), "chat.x.y", &nodes);
        assert_eq!(
            a,
            HashRouter.route(&session(Some("alice"), 2), "chat.x.y", &nodes)
        );
        let mut counts = [0; 3];
        for sid in 0..3000 {
            counts[HashRouter
                .route(&session(None, sid), "chat.x.y", &nodes)
                .expect("a node")] += 1;
        }
        for c in counts {
            assert!((700..1300).contains(&c), "uneven spread {counts:?}");
        }
    }

    #[test]
    fn adding_a_node_moves_only_the_keys_it_wins() {
        let three = ["a", "b", "c"];
        let four = ["a", "b", "c", "d"];
        for k in 0..500u32 {
            let key = k.to_string();
            let before = pick_by_key(key.as_bytes(), &three).expect("node");
            let after = pick_by_key(key.as_bytes(), &four).expect("node");
            assert!(
                after == before || after == 3,
                "key {k} moved between old nodes"
            );
        }
    }
}
