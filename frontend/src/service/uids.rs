//! The uid index: `uid -> sids`, kept in step with each session's `uid`.
//!
//! Lock order: the session table first, then this index. A caller may hold
//! a session's guard while it calls in here (that is how a bind stays
//! atomic); nothing in here touches the session table, and no caller takes
//! a session guard while it holds a guard of this index (every method
//! returns owned values, never a guard).

use crate::{Error, SingleSessionPolicy};
use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use session_proxy_protocol::SessionId;

/// `uid -> sids`, oldest binding first.
#[derive(Default)]
pub(super) struct UidIndex {
    sids: DashMap<String, Vec<SessionId>>,
}

impl UidIndex {
    /// Adds `sid` under `uid`, within `limit` sessions per uid by `policy`:
    /// refuses it ([`Error::SessionLimit`]) or returns the oldest sessions
    /// it replaced (already out of the index; the caller ends them).
    pub(super) fn add(
        &self,
        uid: &str,
        sid: SessionId,
        limit: usize,
        policy: SingleSessionPolicy,
    ) -> Result<Vec<SessionId>, Error> {
        let mut sids = self.sids.entry(uid.to_string()).or_default();
        let excess = (sids.len() + 1).saturating_sub(limit.max(1));
        let replaced = match policy {
            SingleSessionPolicy::RejectNew if excess > 0 => return Err(Error::SessionLimit),
            // Oldest first: the index keeps binding order.
            SingleSessionPolicy::KickOld => sids.drain(..excess).collect(),
            _ => Vec::new(),
        };
        sids.push(sid);
        Ok(replaced)
    }

    /// Puts back a session read from the store, with no policy (the store
    /// admitted it when it was bound).
    pub(super) fn restore(&self, uid: String, sid: SessionId) {
        self.sids.entry(uid).or_default().push(sid);
    }

    /// Removes `sid` from `uid`, and the uid when it has no session left.
    pub(super) fn remove(&self, uid: &str, sid: SessionId) {
        if let Entry::Occupied(mut sids) = self.sids.entry(uid.to_string()) {
            sids.get_mut().retain(|s| *s != sid);
            if sids.get().is_empty() {
                sids.remove();
            }
        }
    }

    /// The sessions of `uid`, oldest binding first.
    pub(super) fn of(&self, uid: &str) -> Vec<SessionId> {
        self.sids
            .get(uid)
            .map(|sids| sids.clone())
            .unwrap_or_default()
    }

    /// How many uids have a session.
    pub(super) fn len(&self) -> usize {
        self.sids.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sid(n: u64) -> SessionId {
        SessionId::from_raw(n)
    }

    #[test]
    fn the_policy_decides_who_goes_past_the_limit() {
        let index = UidIndex::default();
        let off = SingleSessionPolicy::Off;
        assert_eq!(index.add("a", sid(1), 1, off).expect("off"), vec![]);
        assert_eq!(index.add("a", sid(2), 1, off).expect("off"), vec![]);
        let kick = SingleSessionPolicy::KickOld;
        assert_eq!(
            index.add("a", sid(3), 2, kick).expect("kicks"),
            vec![sid(1)]
        );
        assert!(matches!(
            index.add("a", sid(4), 2, SingleSessionPolicy::RejectNew),
            Err(Error::SessionLimit)
        ));
        assert_eq!(index.of("a"), vec![sid(2), sid(3)]);
        index.remove("a", sid(2));
        index.remove("a", sid(3));
        assert!(index.of("a").is_empty());
        assert_eq!(index.len(), 0, "a uid without sessions leaves the index");
    }
}
