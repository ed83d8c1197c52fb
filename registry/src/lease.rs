//! Keeping one node's record alive: written at once, renewed every third
//! of its TTL, updated on demand (state, client count), removed on a clean
//! exit.

use crate::{Membership, NodeRecord, NodeState};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

/// A node's lease on its record. Renewals run until [`deregister`] (or a
/// drop, which stops renewing and lets the lease lapse).
///
/// A renewal that fails is logged and retried at the next turn; the node
/// keeps serving. Its record stays visible to others until its TTL runs
/// out, so a registry outage shorter than the TTL goes unnoticed.
///
/// [`deregister`]: Registration::deregister
pub struct Registration {
    record: Arc<watch::Sender<NodeRecord>>,
    registry: Arc<dyn Membership>,
    renewer: JoinHandle<()>,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("record", &*self.record.borrow())
            .finish_non_exhaustive()
    }
}

impl Registration {
    /// Writes `record` under a lease of `ttl` and keeps renewing it.
    /// Returns once the first write is done or has failed (then it is
    /// retried in the background, and the failure logged): a node starts
    /// serving either way.
    pub async fn register(
        registry: Arc<dyn Membership>,
        record: NodeRecord,
        ttl: Duration,
    ) -> Self {
        let ttl = ttl.max(Duration::from_millis(300));
        let written = registry.put(&record, ttl).await;
        count(&written);
        match written {
            Ok(()) => info!(node = %record.id, ?ttl, "registered"),
            Err(err) => {
                warn!(node = %record.id, cause = %session_proxy_protocol::chain(&err), "cannot register yet; retrying")
            }
        }
        let (tx, mut rx) = watch::channel(record);
        let renewing = registry.clone();
        let renewer = tokio::spawn(async move {
            let every = ttl / 3;
            let mut failures = 0u32;
            loop {
                tokio::select! {
                    changed = rx.changed() => {
                        if changed.is_err() {
                            return;
                        }
                    }
                    _ = tokio::time::sleep(every) => {}
                }
                let record = rx.borrow_and_update().clone();
                let renewed = renewing.put(&record, ttl).await;
                count(&renewed);
                match renewed {
                    Ok(()) if failures > 0 => {
                        info!(node = %record.id, after_failures = failures, "lease renewed again");
                        failures = 0;
                    }
                    Ok(()) => {}
                    Err(err) => {
                        failures += 1;
                        warn!(node = %record.id, cause = %session_proxy_protocol::chain(&err), failures, "lease renewal failed; still serving, retrying");
                    }
                }
            }
        });
        Registration {
            record: Arc::new(tx),
            registry,
            renewer,
        }
    }

    /// The record as last written.
    pub fn record(&self) -> NodeRecord {
        self.record.borrow().clone()
    }

    /// Changes the record (and writes it at once).
    pub fn update(&self, change: impl FnOnce(&mut NodeRecord)) {
        self.record.send_modify(change);
    }

    /// A handle that updates the record from a task of its own (client
    /// counts, readiness); it stops working when the registration ends.
    pub fn handle(&self) -> RecordHandle {
        RecordHandle {
            record: Arc::downgrade(&self.record),
        }
    }

    /// Marks the node draining: gates and routers send it nothing new.
    pub fn set_draining(&self) {
        metrics::gauge!(crate::DRAINING).set(1.0);
        self.update(|r| r.state = NodeState::Draining);
    }

    /// Stops renewing and removes the record, within `within`.
    pub async fn deregister(mut self, within: Duration) {
        self.renewer.abort();
        // Ended (aborted, or done) before the record goes: no renewal
        // writes it again after the removal.
        let _ = (&mut self.renewer).await;
        let id = self.record.borrow().id.clone();
        match tokio::time::timeout(within, self.registry.remove(&id)).await {
            Ok(Ok(())) => info!(node = %id, "deregistered"),
            Ok(Err(err)) => {
                warn!(node = %id, cause = %session_proxy_protocol::chain(&err), "deregistering failed; the lease will lapse")
            }
            Err(_) => warn!(node = %id, "deregistering timed out; the lease will lapse"),
        }
    }
}

/// Counts a write of the record under [`RENEWALS`](crate::RENEWALS).
fn count<E>(written: &Result<(), E>) {
    let result = if written.is_ok() { "ok" } else { "failed" };
    metrics::counter!(crate::RENEWALS, "result" => result).increment(1);
}

/// Updates a [`Registration`]'s record (see [`Registration::handle`]).
#[derive(Clone, Debug)]
pub struct RecordHandle {
    record: std::sync::Weak<watch::Sender<NodeRecord>>,
}

impl RecordHandle {
    /// Changes the record (written at once). Returns `false` once the
    /// registration has ended.
    pub fn update(&self, change: impl FnOnce(&mut NodeRecord)) -> bool {
        let Some(record) = self.record.upgrade() else {
            return false;
        };
        record.send_modify(change);
        true
    }

    /// Sets the count (written with the next renewal, or at once when it
    /// changed). Returns `false` once the registration has ended.
    pub fn set_clients(&self, clients: u64) -> bool {
        let Some(record) = self.record.upgrade() else {
            return false;
        };
        record.send_if_modified(|r| {
            let changed = r.clients != clients;
            r.clients = clients;
            changed
        });
        true
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.renewer.abort();
    }
}
