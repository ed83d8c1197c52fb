//! Which backends are connected, by server type, and what they serve:
//! links come and go (a drain, a closed connection, a newer link of the
//! same node), and each change replaces the type's candidates whole.

use super::link::{BackendLink, Candidates};
use super::BackendRegistry;
use session_proxy_link::inproc::DirectBackend;
use session_proxy_protocol::client::server_type_of;
use session_proxy_protocol::sync::RwLockUnpoisoned as _;
use session_proxy_protocol::{BackendCall, InFlight, Message};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

impl BackendRegistry {
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
        direct: Option<Arc<dyn DirectBackend>>,
    ) -> Arc<BackendLink> {
        let link = Arc::new(BackendLink {
            node_id: node_id.to_string(),
            conn_id: self.inner.next_conn.fetch_add(1, Ordering::Relaxed),
            tx,
            inflight: InFlight::new(max_in_flight),
            remotes: std::sync::Mutex::default(),
            direct: direct.map(super::link::Direct),
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
}
