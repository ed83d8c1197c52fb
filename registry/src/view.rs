//! The members a registry shows, kept fresh by one task: re-read on every
//! change the registry's service announces, after this node's own writes,
//! and every `resync` (a lapsed lease announces nothing). Written once for
//! every registry behind [`Membership`](crate::Membership); each supplies
//! its [`Changes`].

use crate::{Members, RegistryError};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

/// What a registry's service offers the view: a feed of changes that can be
/// lost and opened again, and a full read of the members.
pub(crate) trait Changes: Send + 'static {
    /// Opens the feed; the error says why it is not open (the view re-reads
    /// on its timer meanwhile and tries again).
    fn open(&mut self) -> impl Future<Output = Result<(), RegistryError>> + Send;
    /// Waits for the next change on the open feed; false when the feed was
    /// lost.
    fn next(&mut self) -> impl Future<Output = bool> + Send;
    /// Every member now.
    fn list(&mut self) -> impl Future<Output = Result<Members, RegistryError>> + Send;
}

/// The published members and the task that keeps them fresh.
pub(crate) struct View {
    members: watch::Sender<Members>,
    /// Wakes the task for a re-read (after our own writes).
    reread: Arc<Notify>,
    stop: CancellationToken,
    /// The task, for [`close`](Self::close) to await.
    tasks: TaskTracker,
}

impl View {
    /// Shows `first` and keeps it fresh from `changes`, re-reading at least
    /// every `resync`. Must be called within a tokio runtime.
    pub(crate) fn start(first: Members, changes: impl Changes, resync: Duration) -> View {
        let view = View {
            members: watch::Sender::new(first),
            reread: Arc::new(Notify::new()),
            stop: CancellationToken::new(),
            tasks: TaskTracker::new(),
        };
        view.tasks.spawn(follow(
            changes,
            resync,
            view.members.clone(),
            view.reread.clone(),
            view.stop.clone(),
        ));
        view
    }

    /// Re-reads soon: this node just wrote.
    pub(crate) fn reread(&self) {
        self.reread.notify_one();
    }

    /// The members, now and as they change.
    pub(crate) fn watch(&self) -> watch::Receiver<Members> {
        self.members.subscribe()
    }

    /// Stops the task and waits for it.
    pub(crate) fn close(&self) -> crate::CloseFuture<'_> {
        self.stop.cancel();
        self.tasks.close();
        Box::pin(self.tasks.wait())
    }
}

impl Drop for View {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn follow(
    mut changes: impl Changes,
    resync: Duration,
    members: watch::Sender<Members>,
    reread: Arc<Notify>,
    stop: CancellationToken,
) {
    let mut open = false;
    loop {
        if !open {
            match changes.open().await {
                Ok(()) => open = true,
                Err(err) => {
                    debug!(cause = %session_proxy_protocol::chain(&err), "registry changes unavailable; re-reading on a timer")
                }
            }
        }
        let lost = tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(resync) => false,
            _ = reread.notified() => false,
            more = changes.next(), if open => !more,
        };
        if lost {
            open = false;
        }
        match changes.list().await {
            Ok(now) => Members::publish(&members, now),
            Err(err) => {
                debug!(cause = %session_proxy_protocol::chain(&err), "re-reading the members failed; keeping the last view")
            }
        }
    }
}
