//! The drain: one order, one deadline.
//!
//! 1. mark draining (registry records, `/readyz`), then the game's
//!    before-drain hooks;
//! 2. stop taking clients, answer the requests in flight, kick every client
//!    with `"reconnect"` (its session parks);
//! 3. flush every change to the store;
//! 4. without a store, end every session for good (close hooks run, reason
//!    `shutdown`), and wait for the work the close hooks started;
//! 5. backends: frontends forward nothing new, running handlers finish and
//!    are answered, links close;
//! 6. close the links of the backends connected to this frontend;
//! 7. hand every session over in the store, for any frontend to resume;
//! 8. remove the registry records;
//! 9. stop the node's own tasks, the admin address, the session service's
//!    background tasks, and the store and registry unless another node of
//!    the process shares them; then the game's stopped hooks.
//!
//! Each stage gets what the ones before it left of the deadline, and at
//! least a moment to try.

use super::{DrainReport, Node};
use crate::frontend::EndReason;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// The time left of a drain that must end by `until`.
fn left(until: Instant) -> Duration {
    until
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(100))
}

impl Node {
    /// Drains the node within `within` (see the stages above) and reports
    /// what it did. Calling it again does nothing and reports nothing.
    pub async fn drain(&mut self, within: Duration) -> DrainReport {
        let started = Instant::now();
        let until = started + within;
        let mut report = DrainReport::default();
        if std::mem::replace(&mut self.drained, true) {
            return report;
        }
        tracing::info!(limit = ?within, "draining");
        self.announce_draining();
        for hook in std::mem::take(&mut self.hooks.before_drain) {
            if tokio::time::timeout_at(until, hook(self)).await.is_err() {
                report
                    .unfinished
                    .push("a before-drain hook ran past the limit".into());
            }
        }
        self.drain_clients(until, &mut report).await;
        for b in &self.backends {
            if !b.service.shutdown(left(until)).await {
                report.requests_running += b.service.requests_running();
                report.unfinished.push(format!(
                    "backend {}: handlers still running at the limit",
                    b.service.config().node_id
                ));
            }
        }
        self.hand_over(until, &mut report).await;
        self.stop(until).await;
        report.took = started.elapsed();
        for line in &report.unfinished {
            tracing::warn!("drain: {line}");
        }
        tracing::info!(?report, "drained");
        for hook in std::mem::take(&mut self.hooks.stopped) {
            hook(&report).await;
        }
        report
    }

    /// Stage 1 of a drain on its own: the registry records and `/readyz`
    /// say draining, so gates and routers send the node nothing new, while
    /// it still serves everything it has. [`drain`](Self::drain) starts
    /// with it.
    pub fn announce_draining(&self) {
        self.control.start_draining();
        let frontend = self.frontend.as_ref().and_then(|f| f.registration.as_ref());
        let backends = self.backends.iter().filter_map(|b| b.registration.as_ref());
        for registration in frontend.into_iter().chain(backends) {
            registration.set_draining();
        }
    }

    /// Stages 2 to 4: clients answered and kicked, the store written, and
    /// without a store every session ended with its close hook's work done.
    async fn drain_clients(&mut self, until: Instant, report: &mut DrainReport) {
        let Some(f) = self.frontend.as_mut() else {
            return;
        };
        if let Some(gateway) = f.gateway.take() {
            let (_, parked) = f.sessions.bound_and_parked();
            report.kicked = f.sessions.count().saturating_sub(parked);
            if !gateway.shutdown(left(until)).await {
                report
                    .unfinished
                    .push("client connections still open at the limit".into());
            }
        }
        if let Err(err) = f.sessions.flush_within(left(until)).await {
            report
                .unfinished
                .push(format!("the last write to the session store failed: {err}"));
        }
        if !f.sessions.has_store() {
            // Nowhere to hand them over: they end here, hooks and all.
            report.ended = f.sessions.end_all(EndReason::Shutdown);
        }
        if !f.sessions.hooks_done(left(until)).await {
            report
                .unfinished
                .push("close hooks still running at the limit".into());
        }
    }

    /// Stages 6 and 7: backend links closed, sessions handed over.
    async fn hand_over(&mut self, until: Instant, report: &mut DrainReport) {
        let Some(f) = self.frontend.as_mut() else {
            return;
        };
        if let Some(rpc) = f.rpc.take() {
            if !rpc.shutdown(left(until)).await {
                report
                    .unfinished
                    .push("backend links still open at the limit".into());
            }
        }
        if f.sessions.has_store() {
            match f.sessions.hand_over(left(until)).await {
                Ok(n) => report.handed_over = n,
                Err(err) => report.unfinished.push(format!(
                    "handing sessions over failed ({err}); their clients resume once this node's sessions expire in the store"
                )),
            }
        }
    }

    /// Stages 8 and 9: records removed, the node's tasks and admin
    /// address stopped.
    async fn stop(&mut self, until: Instant) {
        let frontend = self.frontend.as_mut().and_then(|f| f.registration.take());
        let backends = self
            .backends
            .iter_mut()
            .filter_map(|b| b.registration.take());
        for registration in frontend.into_iter().chain(backends).collect::<Vec<_>>() {
            registration.deregister(left(until)).await;
        }
        for b in &mut self.backends {
            if let Some(following) = b.following.take() {
                following.stop().await;
            }
        }
        self.cancel.cancel();
        self.tasks.close();
        if tokio::time::timeout(left(until), self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("node tasks still running at the drain limit");
        }
        #[cfg(feature = "admin")]
        if let Some(admin) = self.admin.take() {
            admin.shutdown(left(until)).await;
        }
        if let Some(f) = &mut self.frontend {
            if !f.sessions.stop_tasks(left(until)).await {
                tracing::warn!("session tasks still running at the drain limit");
            }
            if let Some(store) = f.store.take() {
                // Held by this node and its session service only: its to
                // close. Shared with another node: that one's.
                if Arc::strong_count(&store) <= 2 {
                    close_within(store.close(), until, "the session store").await;
                }
            }
        }
        if let Some(registry) = self.registry.take() {
            // Shared with another node of this process: its to close.
            if Arc::strong_count(&registry) == 1 {
                close_within(registry.close(), until, "the registry").await;
            }
        }
    }
}

/// Waits for `closing` within the drain's deadline.
async fn close_within(closing: impl std::future::Future<Output = ()>, until: Instant, what: &str) {
    if tokio::time::timeout(left(until), closing).await.is_err() {
        tracing::warn!("{what}'s tasks still running at the drain limit");
    }
}
