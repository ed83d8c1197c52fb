//! The close hook of a session service and the work it started.

use super::{ClosedHook, EndReason};
use session_proxy_protocol::SessionSnapshot;
use std::sync::OnceLock;
use std::time::Duration;
use tokio_util::task::TaskTracker;

/// The hook that sees every session that ends for good, and its work.
#[derive(Default)]
pub(super) struct CloseHooks {
    hook: OnceLock<ClosedHook>,
    /// The work the hook started (a game telling its servers a player
    /// left), so that a drain can wait for it before closing the links.
    work: TaskTracker,
}

impl CloseHooks {
    /// Sets the hook; false if one was set already.
    pub(super) fn set(&self, hook: ClosedHook) -> bool {
        self.hook.set(hook).is_ok()
    }

    /// Whether a hook is set (so the final state is worth copying).
    pub(super) fn is_set(&self) -> bool {
        self.hook.get().is_some()
    }

    /// Runs the hook on a session that ended, and tracks the work it starts.
    pub(super) fn run(&self, session: &SessionSnapshot, reason: &EndReason) {
        let Some(hook) = self.hook.get() else { return };
        if let Some(work) = hook(session, reason) {
            // Outside a runtime (a test dropping the service) it cannot run.
            if tokio::runtime::Handle::try_current().is_ok() {
                self.work.spawn(work);
            }
        }
    }

    /// Waits up to `within` for the work started so far; whether it all
    /// ended. Work started later is tracked as before.
    pub(super) async fn done(&self, within: Duration) -> bool {
        self.work.close();
        let done = tokio::time::timeout(within, self.work.wait()).await.is_ok();
        self.work.reopen();
        done
    }
}
