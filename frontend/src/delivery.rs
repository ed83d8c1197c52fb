//! Knowing when a push has been written to its clients' sockets.
//!
//! A backend's push to sids, uids or everyone is answered once every
//! connection it was queued for has written it (or can no longer: closed,
//! kicked), up to [`RpcConfig::push_write_wait`](crate::RpcConfig). A
//! backend that waits for its answers is then paced by delivery instead of
//! filling client queues faster than sockets drain them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::Notify;

/// How many queued copies of one push are still unwritten.
#[derive(Debug)]
pub(crate) struct Receipt {
    left: AtomicUsize,
    done: Notify,
}

/// One unwritten copy. Dropping it (the connection wrote the push, or gave
/// up on it) counts the copy as done.
#[derive(Debug)]
pub(crate) struct Ticket(Arc<Receipt>);

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.0.left.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.done.notify_waiters();
        }
    }
}

impl Receipt {
    /// A receipt and the issuer's own ticket, which keeps it open while
    /// copies are still being queued.
    pub(crate) fn new() -> (Arc<Receipt>, Ticket) {
        let receipt = Arc::new(Receipt {
            left: AtomicUsize::new(1),
            done: Notify::new(),
        });
        (receipt.clone(), Ticket(receipt))
    }

    /// Whether a copy is still unwritten (the issuer's ticket aside).
    pub(crate) fn is_pending(&self) -> bool {
        self.left.load(Ordering::Acquire) > 1
    }

    /// A ticket for one more queued copy.
    pub(crate) fn ticket(self: &Arc<Self>) -> Ticket {
        self.left.fetch_add(1, Ordering::AcqRel);
        Ticket(self.clone())
    }

    /// Gives up the issuer's ticket and waits until every copy is done.
    pub(crate) async fn written(self: Arc<Self>, issuer: Ticket) {
        let notified = self.done.notified();
        tokio::pin!(notified);
        // Registered before the last look, so the final drop cannot be missed.
        notified.as_mut().enable();
        drop(issuer);
        if self.left.load(Ordering::Acquire) == 0 {
            return;
        }
        notified.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn done_when_every_ticket_is_gone() {
        let (receipt, issuer) = Receipt::new();
        let a = receipt.ticket();
        let b = receipt.ticket();
        let wait = tokio::spawn(receipt.clone().written(issuer));
        drop(a);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!wait.is_finished(), "one copy is still unwritten");
        drop(b);
        tokio::time::timeout(Duration::from_secs(5), wait)
            .await
            .expect("done once the last copy is written")
            .expect("task");
        // Nothing queued at all: done at once.
        let (receipt, issuer) = Receipt::new();
        tokio::time::timeout(Duration::from_secs(5), receipt.written(issuer))
            .await
            .expect("done");
    }
}
