//! What the registry knows of one node, and of all of them.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The largest record a registry read accepts; a node's own is a few
/// hundred bytes.
pub const MAX_RECORD_BYTES: usize = 16 * 1024;

/// A record as read from the registry under the key of node `key_id`:
/// `None` (with a warning) for one too large, malformed, or naming
/// another node than its key does. Whoever can write one key cannot take
/// over another node's id that way.
#[cfg(any(feature = "redis", feature = "etcd"))]
pub(crate) fn parse_entry(key_id: &str, value: &[u8]) -> Option<NodeRecord> {
    let key = session_proxy_protocol::text::log_safe(key_id);
    if value.len() > MAX_RECORD_BYTES {
        tracing::warn!(%key, bytes = value.len(), "skipping an oversized node record");
        return None;
    }
    let record = match serde_json::from_slice::<NodeRecord>(value) {
        Ok(record) => record,
        Err(err) => {
            tracing::warn!(%key, cause = %session_proxy_protocol::chain(&err), "skipping a malformed node record");
            return None;
        }
    };
    if record.id != key_id {
        let id = session_proxy_protocol::text::log_safe(&record.id);
        tracing::warn!(%key, %id, "skipping a node record whose id is not its key's");
        return None;
    }
    Some(record)
}

/// A node's role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeRole {
    /// Owns client sessions; backends dial its RPC address.
    Frontend,
    /// Runs handlers; dials every frontend.
    Backend,
}

/// Whether a node takes new work.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// Registered so that its peers connect (backends dial it), not yet
    /// handed out to clients: a frontend whose backends have not connected
    /// would answer its first clients "no backend".
    Starting,
    /// Takes new clients and requests.
    #[default]
    Active,
    /// Finishing what it has; gates and routers send it nothing new.
    Draining,
}

/// One node, as every other node sees it. Stored as JSON, so an operator
/// can read it with `redis-cli GET`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Unique in the cluster, e.g. `connector-7`.
    pub id: String,
    /// Frontend or backend.
    pub role: NodeRole,
    /// Its server type, e.g. `connector` or `chat`.
    pub server_type: String,
    /// Where backends reach its RPC server (frontends).
    #[serde(default)]
    pub rpc_addr: Option<String>,
    /// Where clients should dial it, as they can reach it (frontends with a
    /// gateway; behind NAT or a load balancer this is the public address).
    #[serde(default)]
    pub client_addr: Option<String>,
    /// Active or draining.
    #[serde(default)]
    pub state: NodeState,
    /// Connected clients, refreshed with the lease.
    #[serde(default)]
    pub clients: u64,
    /// The node's build version.
    #[serde(default)]
    pub version: String,
    /// When it started, Unix milliseconds.
    #[serde(default)]
    pub started_unix_ms: u64,
    /// Its admin address (metrics, health, admin actions), if it serves one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_addr: Option<String>,
}

impl NodeRecord {
    /// An active node of this build, started now, with no addresses yet.
    pub fn new(id: impl Into<String>, role: NodeRole, server_type: impl Into<String>) -> Self {
        NodeRecord {
            id: id.into(),
            role,
            server_type: server_type.into(),
            rpc_addr: None,
            client_addr: None,
            state: NodeState::Active,
            clients: 0,
            version: env!("CARGO_PKG_VERSION").to_string(),
            started_unix_ms: session_proxy_protocol::unix_ms(),
            admin_addr: None,
        }
    }

    /// With its admin address.
    pub fn with_admin_addr(mut self, addr: impl Into<String>) -> Self {
        self.admin_addr = Some(addr.into());
        self
    }

    /// With the address backends dial.
    pub fn with_rpc_addr(mut self, addr: impl Into<String>) -> Self {
        self.rpc_addr = Some(addr.into());
        self
    }

    /// With the address clients dial.
    pub fn with_client_addr(mut self, addr: impl Into<String>) -> Self {
        self.client_addr = Some(addr.into());
        self
    }
}

/// Every node the registry knows, by id. Cheap to clone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Members(Arc<BTreeMap<String, NodeRecord>>);

impl Members {
    /// Replaces the members `watch` holds with `now`, waking its
    /// receivers only when something changed (a registry's re-read).
    #[cfg(any(feature = "redis", feature = "etcd"))]
    pub(crate) fn publish(watch: &tokio::sync::watch::Sender<Members>, now: Members) {
        watch.send_if_modified(|old| {
            let changed = *old != now;
            *old = now;
            changed
        });
    }

    /// From records; a later record with the same id wins.
    pub fn from_records(records: impl IntoIterator<Item = NodeRecord>) -> Self {
        Members(Arc::new(
            records.into_iter().map(|r| (r.id.clone(), r)).collect(),
        ))
    }

    /// One node.
    pub fn get(&self, id: &str) -> Option<&NodeRecord> {
        self.0.get(id)
    }

    /// Every node, by id.
    pub fn iter(&self) -> impl Iterator<Item = &NodeRecord> {
        self.0.values()
    }

    /// The frontends.
    pub fn frontends(&self) -> impl Iterator<Item = &NodeRecord> {
        self.iter().filter(|r| r.role == NodeRole::Frontend)
    }

    /// The backends.
    pub fn backends(&self) -> impl Iterator<Item = &NodeRecord> {
        self.iter().filter(|r| r.role == NodeRole::Backend)
    }

    /// The frontend a gate should hand a new client: an active frontend of
    /// `server_type` with a client address, the one with the fewest clients
    /// (then the smallest id). Draining frontends are never handed out.
    pub fn pick_frontend(&self, server_type: &str) -> Option<&NodeRecord> {
        self.frontends()
            .filter(|r| {
                r.server_type == server_type
                    && r.state == NodeState::Active
                    && r.client_addr.is_some()
            })
            .min_by(|a, b| a.clients.cmp(&b.clients).then_with(|| a.id.cmp(&b.id)))
    }

    /// How many nodes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connector(id: &str, clients: u64, state: NodeState) -> NodeRecord {
        let mut r = NodeRecord::new(id, NodeRole::Frontend, "connector")
            .with_client_addr(format!("{id}.example:3010"));
        r.clients = clients;
        r.state = state;
        r
    }

    #[test]
    fn a_gate_hands_out_the_least_loaded_active_connector() {
        let members = Members::from_records([
            connector("c1", 30, NodeState::Active),
            connector("c2", 10, NodeState::Draining),
            connector("c0", 0, NodeState::Starting),
            connector("c3", 20, NodeState::Active),
            connector("c4", 20, NodeState::Active),
            NodeRecord::new("chat-1", NodeRole::Backend, "chat"),
            NodeRecord::new("c5", NodeRole::Frontend, "connector"),
        ]);
        let picked = members.pick_frontend("connector").map(|r| r.id.as_str());
        assert_eq!(picked, Some("c3"), "fewest clients, then the smallest id");
        assert!(members.pick_frontend("gate").is_none());
        let all_draining = Members::from_records([connector("c2", 0, NodeState::Draining)]);
        assert!(all_draining.pick_frontend("connector").is_none());
    }
}
