//! Closing sessions: by the owner, by a kick (by sid or uid), on expiry.
use super::{Outbound, SessionEvent};
use session_proxy_protocol::SessionId;

use super::SessionService;

impl SessionService {
    /// Closes a session: removes it, unindexes its uid, fires
    /// [`SessionEvent::Closed`]. Returns whether it existed.
    pub fn close(&self, sid: SessionId, reason: &str) -> bool {
        self.remove(sid, reason, false)
    }

    /// Closes a session if `gen` is still its current owner (see
    /// [`SessionOwner::generation`](crate::SessionOwner::generation)).
    pub fn close_if_owner(&self, sid: SessionId, gen: u64, reason: &str) -> bool {
        let current = self.inner.sessions.get(&sid).map(|e| e.owner_gen);
        current == Some(gen) && self.close(sid, reason)
    }

    /// Closes a session and sends its client a kick with `reason`. Returns
    /// whether it existed.
    pub fn kick_by_sid(&self, sid: SessionId, reason: &str) -> bool {
        self.remove(sid, reason, true)
    }

    /// Kicks every session of a uid; returns how many there were.
    pub fn kick_by_uid(&self, uid: &str, reason: &str) -> usize {
        self.sids_of_uid(uid)
            .into_iter()
            .filter(|sid| self.kick_by_sid(*sid, reason))
            .count()
    }

    pub(super) fn remove(&self, sid: SessionId, reason: &str, kick: bool) -> bool {
        self.remove_as(sid, reason, kick, true)
    }

    /// Removes a session; `from_store` deletes it from the store too (not
    /// for a session the store says another frontend holds now).
    pub(super) fn remove_as(
        &self,
        sid: SessionId,
        reason: &str,
        kick: bool,
        from_store: bool,
    ) -> bool {
        let Some((_, entry)) = self.inner.sessions.remove(&sid) else {
            return false;
        };
        if let Some(uid) = &entry.uid {
            self.unindex(uid, sid);
        }
        if from_store {
            self.mark_deleted(sid, entry.store_epoch);
        }
        if kick {
            crate::metrics::kicked(reason);
            // Best effort: if the queue is full, closing it below still
            // ends the connection's session.
            let _ = entry.owner.try_send(Outbound::Kick {
                reason: reason.to_string(),
            });
        }
        entry.owner.close();
        tracing::debug!(sid = %sid.redacted(), reason, "session closed");
        let hook = self.inner.on_closed.get().cloned();
        if let Some(hook) = hook {
            hook(&entry.snapshot(sid, self.frontend_id()), reason);
        }
        self.emit(SessionEvent::Closed {
            sid,
            uid: entry.uid,
            reason: reason.to_string(),
        });
        true
    }
}
