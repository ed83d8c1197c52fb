//! Serving until SIGINT or SIGTERM (or an admin drain), then draining; a
//! second signal ends the process at once.

use super::{DrainReport, Node, NodeControl, NodeError};
use tokio::signal::unix::{signal, SignalKind};
use tokio::task::JoinHandle;

/// Waits for SIGINT, SIGTERM or a drain asked for through `control` (the
/// admin address, or the game's code). From then on, until the returned
/// guard is dropped, a second SIGINT or SIGTERM ends the process at once
/// with exit status 130, skipping the rest of the drain.
///
/// Signals are what is counted: after a drain asked for through `control`,
/// the first signal lets the drain go on. Kubernetes sends SIGTERM when a
/// preStop hook that started the drain returns or runs out of time; that
/// must not cut the drain short.
pub async fn until_signal(control: &NodeControl) -> Result<SecondSignal, NodeError> {
    let mut term = signal(SignalKind::terminate()).map_err(NodeError::Signal)?;
    let signals_so_far = tokio::select! {
        _ = tokio::signal::ctrl_c() => 1,
        _ = term.recv() => 1,
        _ = control.drain_requested() => 0,
    };
    let watcher = tokio::spawn(async move {
        for seen in signals_so_far..2 {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            if seen == 0 {
                tracing::info!("a signal during a requested drain: the drain goes on (a second one ends it at once)");
            }
        }
        eprintln!("second signal: exiting without finishing the drain");
        std::process::exit(130);
    });
    Ok(SecondSignal { watcher })
}

/// Ends the process on a second signal while it lives (see
/// [`until_signal`]).
#[derive(Debug)]
#[must_use = "dropping it stops listening for a second signal"]
pub struct SecondSignal {
    watcher: JoinHandle<()>,
}

impl Drop for SecondSignal {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

impl Node {
    /// Serves until SIGINT, SIGTERM or a requested drain, then drains
    /// within the builder's [`drain_limit`](super::NodeBuilder::drain_limit)
    /// and returns what the drain did. A second signal during the drain
    /// exits the process at once (status 130).
    pub async fn run_until_signal(mut self) -> Result<DrainReport, NodeError> {
        let _second = until_signal(&self.control).await?;
        let limit = self.drain_limit;
        Ok(self.drain(limit).await)
    }
}
