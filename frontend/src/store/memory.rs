//! The embedded default store: a map in this process.

use super::{
    Admission, Evicted, Fenced, Rebound, Refreshed, SessionStore, StoreError, StoreFuture,
    StoredSession, ADMISSION_GRACE,
};
use session_proxy_protocol::sync::LockUnpoisoned as _;
use session_proxy_protocol::SessionId;
use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// One stored session, or what is left of a deleted one: its epoch, so a
/// stale holder cannot write it back, until the TTL runs out.
struct Slot {
    epoch: u64,
    /// `None` once deleted.
    record: Option<StoredSession>,
    until: Instant,
}

#[derive(Default)]
struct Maps {
    sessions: HashMap<SessionId, Slot>,
    uids: HashMap<String, BTreeSet<SessionId>>,
    /// The sessions admitted per uid, oldest first, with when.
    admitted: HashMap<String, Vec<(SessionId, Instant)>>,
    /// Sticky bindings: `(server type, uid) -> (node, until when)`.
    bindings: HashMap<(String, String), (String, Instant)>,
    /// How many bindings there were after the last sweep of expired ones.
    bindings_swept: usize,
}

impl Maps {
    /// The sessions the uid index holds for `uid`.
    fn sids_of(&self, uid: &str) -> Vec<SessionId> {
        self.uids
            .get(uid)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default()
    }

    fn unindex(&mut self, sid: SessionId, uid: Option<&str>) {
        if let Some(uid) = uid {
            if let Some(list) = self.admitted.get_mut(uid) {
                list.retain(|(s, _)| *s != sid);
                if list.is_empty() {
                    self.admitted.remove(uid);
                }
            }
            if let Some(set) = self.uids.get_mut(uid) {
                set.remove(&sid);
                if set.is_empty() {
                    self.uids.remove(uid);
                }
            }
        }
    }

    /// The slot of `sid`, if its TTL has not run out.
    fn slot(&mut self, sid: SessionId) -> Option<&mut Slot> {
        let expired = self
            .sessions
            .get(&sid)
            .is_some_and(|s| s.until <= Instant::now());
        if expired {
            if let Some(slot) = self.sessions.remove(&sid) {
                let uid = slot.record.and_then(|r| r.info.uid);
                self.unindex(sid, uid.as_deref());
            }
        }
        self.sessions.get_mut(&sid)
    }

    fn live(&mut self, sid: SessionId) -> Option<StoredSession> {
        let slot = self.slot(sid)?;
        let mut record = slot.record.clone()?;
        record.epoch = slot.epoch;
        Some(record)
    }

    /// The owner that fences a writer at `epoch`, if one does.
    fn fence(&mut self, sid: SessionId, epoch: u64) -> Option<Fenced> {
        let slot = self.slot(sid)?;
        (slot.epoch > epoch).then(|| Fenced {
            sid,
            owner: slot
                .record
                .as_ref()
                .map(|r| r.info.frontend_id.clone())
                .unwrap_or_default(),
        })
    }

    /// Deletes a session, leaving its epoch one up; whether it existed.
    fn end(&mut self, sid: SessionId) -> bool {
        let Some(slot) = self.slot(sid) else {
            return false;
        };
        let Some(record) = slot.record.take() else {
            return false;
        };
        slot.epoch += 1;
        self.unindex(sid, record.info.uid.as_deref());
        true
    }
}

/// Sessions kept in this process: survives nothing, needs nothing. The
/// default, and the reference the Redis store is tested against.
pub struct MemoryStore {
    maps: Mutex<Maps>,
    evictions: tokio::sync::broadcast::Sender<Evicted>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore {
            maps: Mutex::default(),
            evictions: tokio::sync::broadcast::Sender::new(1024),
        }
    }
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
        let mut maps = self.maps.lock_unpoisoned();
        f(&mut maps)
    }
}

fn ready<'a, T: Send + 'a>(value: T) -> StoreFuture<'a, T> {
    Box::pin(async move { Ok::<T, StoreError>(value) })
}

impl SessionStore for MemoryStore {
    fn put(&self, sessions: Vec<StoredSession>, ttl: Duration) -> StoreFuture<'_, Vec<Fenced>> {
        ready(self.with(|m| {
            let until = Instant::now() + ttl;
            let mut fenced = Vec::new();
            for s in sessions {
                let sid = s.info.sid;
                if let Some(f) = m.fence(sid, s.epoch) {
                    fenced.push(f);
                    continue;
                }
                let old_uid = m
                    .slot(sid)
                    .and_then(|o| o.record.as_ref())
                    .and_then(|o| o.info.uid.clone());
                if old_uid.is_some() && old_uid != s.info.uid {
                    m.unindex(sid, old_uid.as_deref());
                }
                if let Some(uid) = &s.info.uid {
                    m.uids.entry(uid.clone()).or_default().insert(sid);
                }
                let epoch = s.epoch;
                m.sessions.insert(
                    sid,
                    Slot {
                        epoch,
                        record: Some(s),
                        until,
                    },
                );
            }
            fenced
        }))
    }

    fn get(&self, sid: SessionId) -> StoreFuture<'_, Option<StoredSession>> {
        ready(self.with(|m| m.live(sid)))
    }

    fn by_uid<'a>(&'a self, uid: &'a str) -> StoreFuture<'a, Vec<StoredSession>> {
        ready(self.with(|m| {
            let sids = m.sids_of(uid);
            sids.into_iter().filter_map(|sid| m.live(sid)).collect()
        }))
    }

    fn binding<'a>(
        &'a self,
        server_type: &'a str,
        uid: &'a str,
        ttl: Duration,
    ) -> StoreFuture<'a, Option<String>> {
        ready(self.with(|m| {
            let key = (server_type.to_string(), uid.to_string());
            let now = Instant::now();
            match m.bindings.get_mut(&key) {
                Some((node, until)) if *until > now => {
                    *until = now + ttl;
                    Some(node.clone())
                }
                Some(_) => {
                    m.bindings.remove(&key);
                    None
                }
                None => None,
            }
        }))
    }

    fn rebind<'a>(
        &'a self,
        server_type: &'a str,
        uid: &'a str,
        expected: Option<&'a str>,
        node: &'a str,
        ttl: Duration,
    ) -> StoreFuture<'a, Rebound> {
        ready(self.with(|m| {
            let now = Instant::now();
            if m.bindings.len() > 2 * m.bindings_swept.max(512) {
                m.bindings.retain(|_, (_, until)| *until > now);
                m.bindings_swept = m.bindings.len();
            }
            let key = (server_type.to_string(), uid.to_string());
            let held = m
                .bindings
                .get(&key)
                .filter(|(_, until)| *until > now)
                .map(|(n, _)| n.as_str());
            if held != expected {
                return Rebound {
                    node: held.unwrap_or_default().to_string(),
                    written: false,
                };
            }
            m.bindings.insert(key, (node.to_string(), now + ttl));
            Rebound {
                node: node.to_string(),
                written: true,
            }
        }))
    }

    fn delete(&self, sids: Vec<SessionId>) -> StoreFuture<'_, usize> {
        ready(self.with(|m| sids.into_iter().filter(|sid| m.end(*sid)).count()))
    }

    fn release(&self, sessions: Vec<(SessionId, u64)>) -> StoreFuture<'_, Vec<Fenced>> {
        ready(self.with(|m| {
            let mut fenced = Vec::new();
            for (sid, epoch) in sessions {
                match m.fence(sid, epoch) {
                    Some(f) => fenced.push(f),
                    None => {
                        m.end(sid);
                    }
                }
            }
            fenced
        }))
    }

    fn claim<'a>(
        &'a self,
        sid: SessionId,
        seen: u64,
        frontend: &'a str,
    ) -> StoreFuture<'a, Option<u64>> {
        ready(self.with(|m| {
            let slot = m.slot(sid)?;
            let record = slot.record.as_mut().filter(|_| slot.epoch == seen)?;
            record.info.frontend_id = frontend.to_string();
            slot.epoch += 1;
            Some(slot.epoch)
        }))
    }

    fn delete_uid<'a>(&'a self, uid: &'a str) -> StoreFuture<'a, usize> {
        ready(self.with(|m| {
            let sids = m.sids_of(uid);
            sids.into_iter().filter(|sid| m.end(*sid)).count()
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

    fn refresh(
        &self,
        sessions: Vec<(SessionId, u64)>,
        ttl: Duration,
    ) -> StoreFuture<'_, Refreshed> {
        ready(self.with(|m| {
            let until = Instant::now() + ttl;
            let mut report = Refreshed::default();
            for (sid, epoch) in sessions {
                if let Some(f) = m.fence(sid, epoch) {
                    report.fenced.push(f);
                    continue;
                }
                match m.slot(sid) {
                    Some(slot) if slot.record.is_some() => slot.until = until,
                    _ => report.missing.push(sid),
                }
            }
            report
        }))
    }

    fn admit<'a>(
        &'a self,
        uid: &'a str,
        sid: SessionId,
        limit: usize,
        evict_oldest: bool,
        reason: &'a str,
    ) -> StoreFuture<'a, Admission> {
        let admission = self.with(|m| {
            let mut list = m.admitted.remove(uid).unwrap_or_default();
            // Gone: ended, expired, or never written within the grace.
            list.retain(|(s, at)| match m.slot(*s) {
                Some(slot) => slot.record.is_some(),
                None => at.elapsed() < ADMISSION_GRACE,
            });
            let admission = if list.iter().any(|(s, _)| *s == sid) {
                Admission::Admitted {
                    evicted: Vec::new(),
                }
            } else if list.len() < limit.max(1) {
                list.push((sid, Instant::now()));
                Admission::Admitted {
                    evicted: Vec::new(),
                }
            } else if !evict_oldest {
                Admission::Refused
            } else {
                let excess = list.len() + 1 - limit.max(1);
                let oldest: Vec<SessionId> = list.drain(..excess).map(|(s, _)| s).collect();
                list.push((sid, Instant::now()));
                let evicted = oldest
                    .into_iter()
                    .map(|s| {
                        let owner = m
                            .slot(s)
                            .and_then(|slot| slot.record.as_ref())
                            .map(|r| r.info.frontend_id.clone())
                            .unwrap_or_default();
                        if !m.end(s) && m.slot(s).is_none() {
                            // Not written yet: a tombstone fences its
                            // first write.
                            m.sessions.insert(
                                s,
                                Slot {
                                    epoch: 1,
                                    record: None,
                                    until: Instant::now() + ADMISSION_GRACE,
                                },
                            );
                        }
                        Fenced { sid: s, owner }
                    })
                    .collect();
                Admission::Admitted { evicted }
            };
            if !list.is_empty() {
                m.admitted.insert(uid.to_string(), list);
            }
            admission
        });
        if let Admission::Admitted { evicted } = &admission {
            for e in evicted {
                // Nobody listening is fine: the holder's writes are fenced.
                let _ = self.evictions.send(Evicted {
                    sid: e.sid,
                    reason: reason.to_string(),
                });
            }
        }
        ready(admission)
    }

    fn evictions(&self) -> tokio::sync::broadcast::Receiver<Evicted> {
        self.evictions.subscribe()
    }
}
