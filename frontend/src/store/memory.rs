//! The embedded default store: a map in this process.

use super::{SessionStore, StoreError, StoreFuture, StoredSession};
use session_proxy_protocol::SessionId;
use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

#[derive(Default)]
struct Maps {
    sessions: HashMap<SessionId, (StoredSession, Instant)>,
    uids: HashMap<String, BTreeSet<SessionId>>,
}

impl Maps {
    fn unindex(&mut self, sid: SessionId, uid: Option<&str>) {
        if let Some(uid) = uid {
            if let Some(set) = self.uids.get_mut(uid) {
                set.remove(&sid);
                if set.is_empty() {
                    self.uids.remove(uid);
                }
            }
        }
    }

    fn remove(&mut self, sid: SessionId) -> bool {
        match self.sessions.remove(&sid) {
            Some((s, _)) => {
                self.unindex(sid, s.info.uid.as_deref());
                true
            }
            None => false,
        }
    }

    fn live(&mut self, sid: SessionId) -> Option<&StoredSession> {
        let expired = self
            .sessions
            .get(&sid)
            .is_some_and(|(_, t)| *t <= Instant::now());
        if expired {
            self.remove(sid);
        }
        self.sessions.get(&sid).map(|(s, _)| s)
    }
}

/// Sessions kept in this process: survives nothing, needs nothing. The
/// default, and the reference the Redis store is tested against.
#[derive(Default)]
pub struct MemoryStore {
    maps: Mutex<Maps>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore").finish_non_exhaustive()
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        MemoryStore::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut Maps) -> T) -> T {
        // Each critical section leaves the maps consistent before it can
        // panic, so a poisoned lock still guards whole maps.
        let mut maps = self.maps.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut maps)
    }
}

fn ready<'a, T: Send + 'a>(value: T) -> StoreFuture<'a, T> {
    Box::pin(async move { Ok::<T, StoreError>(value) })
}

impl SessionStore for MemoryStore {
    fn put(&self, sessions: Vec<StoredSession>, ttl: Duration) -> StoreFuture<'_, ()> {
        self.with(|m| {
            let until = Instant::now() + ttl;
            for s in sessions {
                let sid = s.info.sid;
                let old_uid = m.sessions.get(&sid).and_then(|(o, _)| o.info.uid.clone());
                if old_uid != s.info.uid {
                    m.unindex(sid, old_uid.as_deref());
                }
                if let Some(uid) = &s.info.uid {
                    m.uids.entry(uid.clone()).or_default().insert(sid);
                }
                m.sessions.insert(sid, (s, until));
            }
        });
        ready(())
    }

    fn get(&self, sid: SessionId) -> StoreFuture<'_, Option<StoredSession>> {
        ready(self.with(|m| m.live(sid).cloned()))
    }

    fn by_uid<'a>(&'a self, uid: &'a str) -> StoreFuture<'a, Vec<StoredSession>> {
        ready(self.with(|m| {
            let sids: Vec<SessionId> = m
                .uids
                .get(uid)
                .map(|s| s.iter().copied().collect())
                .unwrap_or_default();
            sids.into_iter()
                .filter_map(|sid| m.live(sid).cloned())
                .collect()
        }))
    }

    fn delete(&self, sids: Vec<SessionId>) -> StoreFuture<'_, usize> {
        ready(self.with(|m| sids.into_iter().filter(|sid| m.remove(*sid)).count()))
    }

    fn delete_uid<'a>(&'a self, uid: &'a str) -> StoreFuture<'a, usize> {
        ready(self.with(|m| {
            let sids: Vec<SessionId> = m
                .uids
                .get(uid)
                .map(|s| s.iter().copied().collect())
                .unwrap_or_default();
            sids.into_iter().filter(|sid| m.remove(*sid)).count()
        }))
    }

    fn list(&self) -> StoreFuture<'_, Vec<SessionId>> {
        ready(self.with(|m| {
            let sids: Vec<SessionId> = m.sessions.keys().copied().collect();
            sids.into_iter()
                .filter(|sid| m.live(*sid).is_some())
                .collect()
        }))
    }

    fn clear(&self) -> StoreFuture<'_, ()> {
        self.with(|m| *m = Maps::default());
        ready(())
    }

    fn refresh(&self, sids: Vec<SessionId>, ttl: Duration) -> StoreFuture<'_, Vec<SessionId>> {
        let missing = self.with(|m| {
            let now = Instant::now();
            let until = now + ttl;
            sids.into_iter()
                .filter(|sid| match m.sessions.get_mut(sid) {
                    Some((_, t)) if *t > now => {
                        *t = until;
                        false
                    }
                    _ => true,
                })
                .collect()
        });
        ready(missing)
    }
}
