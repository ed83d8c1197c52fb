//! The queue between the session table and the connection that owns a
//! session: kicks and pushes on their way to the client.
//!
//! A tokio mpsc channel allocates a block of 32 slots up front (about 2 KiB
//! here) for every session, busy or idle. This queue allocates nothing until
//! something is queued and gives its memory back once drained, so an idle
//! connected client costs a few dozen bytes here.

use crate::delivery::Ticket;
use crate::Outbound;
use futures::task::AtomicWaker;
use session_proxy_protocol::sync::LockUnpoisoned as _;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

/// Why an item was not queued.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum SendError {
    /// The queue holds its capacity: the client reads too slowly.
    Full,
    /// The session is over.
    Closed,
}

struct Queue {
    /// Queued items, oldest first, each with its delivery ticket (if the
    /// sender waits for the write).
    items: Mutex<VecDeque<(Outbound, Option<Ticket>)>>,
    /// Wakes the one receiver. It registers before its last look at the
    /// queue, so an item queued in between still wakes it.
    waker: AtomicWaker,
    /// Set once the session is removed.
    closed: AtomicBool,
    /// Set while no connection reads the queue (the session is parked):
    /// a full queue then drops pushes instead of closing the session.
    parked: AtomicBool,
    /// The most items queued at once.
    capacity: usize,
}

impl Queue {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<(Outbound, Option<Ticket>)>> {
        // Each critical section is one VecDeque operation: a poisoned lock
        // still guards a whole queue.
        self.items.lock_unpoisoned()
    }
}

/// The session table's end. Cloning it does not make another owner: the
/// queue closes only through [`OwnerTx::close`].
#[derive(Clone)]
pub(crate) struct OwnerTx(Arc<Queue>);

/// The connection's end.
pub(crate) struct OwnerRx(Arc<Queue>);

pub(crate) fn queue(capacity: usize) -> (OwnerTx, OwnerRx) {
    let q = Arc::new(Queue {
        items: Mutex::new(VecDeque::new()),
        waker: AtomicWaker::new(),
        closed: AtomicBool::new(false),
        parked: AtomicBool::new(false),
        capacity: capacity.max(1),
    });
    (OwnerTx(q.clone()), OwnerRx(q))
}

impl OwnerTx {
    pub(crate) fn try_send(&self, item: Outbound) -> Result<(), SendError> {
        self.try_send_ticketed(item, None)
    }

    /// Queues an item whose `ticket` is dropped once the connection wrote
    /// it (or could not).
    pub(crate) fn try_send_ticketed(
        &self,
        item: Outbound,
        ticket: Option<Ticket>,
    ) -> Result<(), SendError> {
        if self.0.closed.load(Ordering::Acquire) {
            return Err(SendError::Closed);
        }
        {
            let mut items = self.0.lock();
            if items.len() >= self.0.capacity {
                return Err(SendError::Full);
            }
            items.push_back((item, ticket));
        }
        self.0.waker.wake();
        Ok(())
    }

    /// Whether the session is parked (nobody reads the queue now).
    pub(crate) fn is_parked(&self) -> bool {
        self.0.parked.load(Ordering::Acquire)
    }

    /// Marks the session parked or attached.
    pub(crate) fn set_parked(&self, parked: bool) {
        self.0.parked.store(parked, Ordering::Release);
    }

    /// Ends the session: the receiver gets what is queued, then `None`.
    pub(crate) fn close(&self) {
        self.0.closed.store(true, Ordering::Release);
        self.0.waker.wake();
    }
}

impl OwnerRx {
    pub(crate) async fn recv(&mut self) -> Option<Outbound> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// The next item, `Ready(None)` once closed and drained, or `Pending`
    /// with the task registered to be woken by the next send or close.
    pub(crate) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Outbound>> {
        self.poll_recv_ticketed(cx).map(|r| r.map(|(item, _)| item))
    }

    /// [`poll_recv`](Self::poll_recv) with the item's delivery ticket.
    pub(crate) fn poll_recv_ticketed(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<(Outbound, Option<Ticket>)>> {
        match self.try_recv_ticketed() {
            Ok(Some(item)) => return Poll::Ready(Some(item)),
            Err(()) => return Poll::Ready(None),
            Ok(None) => {}
        }
        self.0.waker.register(cx.waker());
        match self.try_recv_ticketed() {
            Ok(Some(item)) => Poll::Ready(Some(item)),
            Err(()) => Poll::Ready(None),
            Ok(None) => Poll::Pending,
        }
    }

    /// `Ok(None)`: nothing queued yet; `Err(())`: closed and drained.
    pub(crate) fn try_recv(&mut self) -> Result<Option<Outbound>, ()> {
        self.try_recv_ticketed().map(|r| r.map(|(item, _)| item))
    }

    /// [`try_recv`](Self::try_recv) with the item's delivery ticket.
    pub(crate) fn try_recv_ticketed(&mut self) -> Result<Option<(Outbound, Option<Ticket>)>, ()> {
        let mut items = self.0.lock();
        if let Some(item) = items.pop_front() {
            if items.is_empty() && items.capacity() > 16 {
                // A burst is over: give its memory back.
                *items = VecDeque::new();
            }
            return Ok(Some(item));
        }
        if self.0.closed.load(Ordering::Acquire) {
            Err(())
        } else {
            Ok(None)
        }
    }
}

impl std::fmt::Debug for OwnerRx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnerRx")
            .field("queued", &self.0.lock().len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn push(n: u8) -> Outbound {
        Outbound::Push {
            route: "r".into(),
            body: Bytes::from(vec![n]),
        }
    }

    #[tokio::test]
    async fn items_then_close_then_none() {
        let (tx, mut rx) = queue(2);
        tx.try_send(push(1)).expect("room");
        tx.try_send(push(2)).expect("room");
        assert_eq!(tx.try_send(push(3)), Err(SendError::Full));
        tx.close();
        assert_eq!(tx.try_send(push(4)), Err(SendError::Closed));
        assert_eq!(rx.recv().await, Some(push(1)));
        assert_eq!(rx.recv().await, Some(push(2)));
        assert_eq!(rx.recv().await, None);
    }

    #[tokio::test]
    async fn a_waiting_receiver_is_woken() {
        let (tx, mut rx) = queue(8);
        let waiter = tokio::spawn(async move { (rx.recv().await, rx.recv().await) });
        tokio::task::yield_now().await;
        tx.try_send(push(7)).expect("room");
        tokio::task::yield_now().await;
        tx.close();
        assert_eq!(waiter.await.expect("task"), (Some(push(7)), None));
    }
}
