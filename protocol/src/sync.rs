//! Locks that stay usable after a panic elsewhere.
//!
//! A std lock is poisoned when a thread panics while holding it. Every lock
//! session-proxy takes guards a critical section that leaves its data whole
//! at each point a panic could happen (one map insert or remove, one
//! replacement of a value), so a poisoned lock still holds sound data, and
//! failing every later caller would turn one panicking handler into a dead
//! node. These traits say that once instead of at every lock.

use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// [`Mutex::lock`] that takes the data of a poisoned lock as it is.
pub trait LockUnpoisoned<T: ?Sized> {
    /// Locks, recovering the guard of a poisoned lock.
    fn lock_unpoisoned(&self) -> MutexGuard<'_, T>;
}

impl<T: ?Sized> LockUnpoisoned<T> for Mutex<T> {
    fn lock_unpoisoned(&self) -> MutexGuard<'_, T> {
        self.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// [`RwLock::read`] and [`RwLock::write`] that take the data of a poisoned
/// lock as it is.
pub trait RwLockUnpoisoned<T: ?Sized> {
    /// Locks for reading, recovering the guard of a poisoned lock.
    fn read_unpoisoned(&self) -> RwLockReadGuard<'_, T>;
    /// Locks for writing, recovering the guard of a poisoned lock.
    fn write_unpoisoned(&self) -> RwLockWriteGuard<'_, T>;
}

impl<T: ?Sized> RwLockUnpoisoned<T> for RwLock<T> {
    fn read_unpoisoned(&self) -> RwLockReadGuard<'_, T> {
        self.read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write_unpoisoned(&self) -> RwLockWriteGuard<'_, T> {
        self.write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_poisoned_by_a_panic_still_gives_its_data() {
        let shared = std::sync::Arc::new((Mutex::new(1), RwLock::new(2)));
        let held = shared.clone();
        let _ = std::thread::spawn(move || {
            let _m = held.0.lock_unpoisoned();
            let _w = held.1.write_unpoisoned();
            panic!("a handler panics while holding both");
        })
        .join();
        assert!(shared.0.is_poisoned() && shared.1.is_poisoned());
        assert_eq!(*shared.0.lock_unpoisoned(), 1);
        assert_eq!(*shared.1.read_unpoisoned(), 2);
    }
}
