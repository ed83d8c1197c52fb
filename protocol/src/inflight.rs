//! Calls waiting for their responses, by request id.
//!
//! Shared by both ends of a cluster connection: the side that sends a
//! request registers it here *before* queueing it, the connection's reader
//! completes it when the response arrives, and when the connection dies
//! every waiting call is failed at once and later registrations are refused.

use crate::sync::LockUnpoisoned as _;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use tokio::sync::oneshot;

/// Why a call could not be registered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegisterError {
    /// The connection is dead.
    Closed,
    /// The in-flight limit is reached.
    Full,
}

/// Hashes request ids. They are handed out by a local counter, never chosen
/// by the peer, so no keyed hash is needed to resist flooding: one multiply
/// spreads consecutive ids over the table (SipHash cost more than the rest
/// of a register/complete pair).
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u64(&mut self, id: u64) {
        self.0 = id.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type Waiting<T> = HashMap<u64, oneshot::Sender<T>, BuildHasherDefault<IdHasher>>;

/// The pending calls of one connection.
#[derive(Debug)]
pub struct InFlight<T> {
    /// `id -> waiting caller`; `None` once closed.
    waiting: Mutex<Option<Waiting<T>>>,
    /// The next request id.
    next_id: AtomicU64,
    /// The most calls waiting at once.
    limit: usize,
}

impl<T> InFlight<T> {
    /// An empty table that holds at most `limit` calls.
    pub fn new(limit: usize) -> Self {
        InFlight {
            waiting: Mutex::new(Some(Waiting::default())),
            next_id: AtomicU64::new(1),
            limit: limit.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Waiting<T>>> {
        // Every critical section is one map operation, so a panic elsewhere
        // cannot leave the map half-changed: a poisoned lock is still sound.
        self.waiting.lock_unpoisoned()
    }

    /// Registers a new call; returns its id and where its outcome will arrive.
    pub fn register(&self) -> Result<(u64, oneshot::Receiver<T>), RegisterError> {
        let mut guard = self.lock();
        let map = guard.as_mut().ok_or(RegisterError::Closed)?;
        if map.len() >= self.limit {
            return Err(RegisterError::Full);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        map.insert(id, tx);
        Ok((id, rx))
    }

    /// Delivers the outcome of call `id`; false if nobody waits for it (it
    /// timed out, was abandoned, or never existed).
    pub fn complete(&self, id: u64, outcome: T) -> bool {
        let waiter = self.lock().as_mut().and_then(|m| m.remove(&id));
        match waiter {
            Some(tx) => tx.send(outcome).is_ok(),
            None => false,
        }
    }

    /// Forgets call `id` (its caller stopped waiting); true if it was still
    /// waiting for its outcome (so the peer may still be working on it).
    pub fn forget(&self, id: u64) -> bool {
        self.lock()
            .as_mut()
            .is_some_and(|map| map.remove(&id).is_some())
    }

    /// Fails every waiting call with `outcome()` and refuses new ones.
    pub fn close(&self, outcome: impl Fn() -> T) {
        let waiting = self.lock().take();
        for (_, tx) in waiting.into_iter().flatten() {
            let _ = tx.send(outcome());
        }
    }

    /// How many calls are waiting.
    pub fn len(&self) -> usize {
        self.lock().as_ref().map_or(0, HashMap::len)
    }

    /// Whether no call is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_complete_forget_close() {
        let table = InFlight::<u32>::new(2);
        let (a, mut rx_a) = table.register().expect("room");
        let (b, mut rx_b) = table.register().expect("room");
        assert_ne!(a, b);
        assert_eq!(table.register().err(), Some(RegisterError::Full));
        assert!(table.complete(a, 7));
        assert_eq!(rx_a.try_recv(), Ok(7));
        assert!(!table.complete(a, 8), "completed once");
        assert!(table.forget(b), "b was waiting");
        assert!(!table.forget(b), "forgotten once");
        assert!(!table.complete(b, 9));
        let (_c, mut rx_c) = table.register().expect("room again");
        table.close(|| 0);
        assert_eq!(rx_c.try_recv(), Ok(0));
        assert!(rx_b.try_recv().is_err());
        assert_eq!(table.register().err(), Some(RegisterError::Closed));
        assert!(table.is_empty());
    }
}
