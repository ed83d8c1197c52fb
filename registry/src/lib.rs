//! Cluster membership for session-proxy: which nodes exist right now, where
//! to reach them, and whether they take new work.
//!
//! Each node holds a [`NodeRecord`] under a lease: a record with a time to
//! live, renewed every third of it by a [`Registration`]. A node whose
//! lease lapses is gone for everyone within the TTL plus one renewal; a node
//! that cannot renew keeps serving and keeps retrying (it never stops
//! itself over a registry outage), logging each failure. Every node can
//! [`watch`](Membership::watch) the members; a backend node follows the
//! frontends in it (`session_proxy::node::follow_frontends`), dialling new
//! ones and dropping those that left.
//!
//! Three kinds of registry sit behind one trait, [`Membership`]:
//! - [`StaticMembership`]: a fixed list (the cluster file), the default;
//! - `RedisMembership` (feature `redis`): records under `PX` TTLs in the
//!   same Redis as the session store, changes announced on a channel, and a
//!   full re-read every few seconds for whatever a subscriber missed;
//! - `EtcdMembership` (feature `etcd`): each record a key on a lease of its
//!   own in etcd v3, a watch on the prefix, and the same periodic re-read.
//!
//! # Example
//! ```
//! use session_proxy_registry::{Membership, NodeRecord, NodeRole, StaticMembership};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let frontend = NodeRecord::new("connector-1", NodeRole::Frontend, "connector")
//!     .with_rpc_addr("127.0.0.1:4010");
//! let members = StaticMembership::new(vec![frontend]);
//! let now = members.watch().borrow().clone();
//! assert_eq!(now.frontends().count(), 1);
//! # }
//! ```

#[cfg(feature = "etcd")]
mod etcd;
mod lease;
mod record;
#[cfg(feature = "redis")]
mod redis;
#[cfg(any(feature = "redis", feature = "etcd"))]
mod view;

#[cfg(feature = "etcd")]
pub use etcd::{EtcdMembership, EtcdMembershipConfig};
pub use lease::{RecordHandle, Registration};
pub use record::{Members, NodeRecord, NodeRole, NodeState, MAX_RECORD_BYTES};
#[cfg(feature = "redis")]
pub use redis::{RedisMembership, RedisMembershipConfig};

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;
use tokio::sync::watch;

/// Lease renewals of this node's record, by result (`ok`, `failed`).
pub const RENEWALS: &str = "session_proxy_registry_renewals_total";

/// 1 while this node is draining, else 0.
pub const DRAINING: &str = "session_proxy_draining";

/// Every metric this crate exports, with its kind.
pub const EXPORTED: &[(&str, &str)] = &[(RENEWALS, "counter"), (DRAINING, "gauge")];

/// Describes this crate's metrics to the installed recorder.
pub fn describe() {
    metrics::describe_counter!(RENEWALS, "Lease renewals of this node's record, by result.");
    metrics::describe_gauge!(DRAINING, "1 while this node is draining, else 0.");
    for result in ["ok", "failed"] {
        metrics::counter!(RENEWALS, "result" => result).increment(0);
    }
    metrics::gauge!(DRAINING).set(0.0);
}

/// What failed in a registry.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// The registry's service failed or could not be reached.
    #[error("registry unavailable")]
    Unavailable {
        /// What its client said.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The registry did not answer within its deadline.
    #[error("registry did not answer within {after:?}")]
    TimedOut {
        /// The deadline.
        after: Duration,
    },
    /// A record could not be encoded or decoded.
    #[error("malformed node record")]
    Record(#[source] serde_json::Error),
}

/// The future a registry method returns.
pub type RegistryFuture<'a, T> =
    Pin<Box<dyn Future<Output = Result<T, RegistryError>> + Send + 'a>>;

/// Where the cluster's node records live.
pub trait Membership: Send + Sync + 'static {
    /// Writes (or replaces) a record that lives for `ttl` unless written
    /// again. A [`Registration`] calls this on a schedule.
    fn put(&self, record: &NodeRecord, ttl: Duration) -> RegistryFuture<'_, ()>;
    /// Removes a node's record at once (a clean exit).
    fn remove<'a>(&'a self, id: &'a str) -> RegistryFuture<'a, ()>;
    /// The members as they are now, kept current: a new value each time a
    /// node joins, changes or leaves.
    fn watch(&self) -> watch::Receiver<Members>;
    /// Stops the registry's background work (its watcher) and waits for it
    /// to end; the members stop changing. A node closes the registry it
    /// alone holds at the end of its drain. The default has nothing to
    /// stop.
    fn close(&self) -> CloseFuture<'_> {
        Box::pin(async {})
    }
}

/// What [`Membership::close`] returns.
pub type CloseFuture<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// A fixed list of nodes: a static cluster (the cluster file). Leases are
/// accepted and change nothing.
#[derive(Debug)]
pub struct StaticMembership {
    members: watch::Sender<Members>,
}

impl StaticMembership {
    /// These nodes, for good.
    pub fn new(nodes: Vec<NodeRecord>) -> Self {
        StaticMembership {
            members: watch::Sender::new(Members::from_records(nodes)),
        }
    }
}

impl Membership for StaticMembership {
    fn put(&self, _record: &NodeRecord, _ttl: Duration) -> RegistryFuture<'_, ()> {
        Box::pin(async { Ok(()) })
    }

    fn remove<'a>(&'a self, _id: &'a str) -> RegistryFuture<'a, ()> {
        Box::pin(async { Ok(()) })
    }

    fn watch(&self) -> watch::Receiver<Members> {
        self.members.subscribe()
    }
}
