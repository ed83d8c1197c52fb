//! Closing sessions: by the owner, by a kick (by sid or uid), on expiry,
//! at a shutdown; and reporting the ones that moved to another frontend.
use super::{EndReason, Outbound, SessionEvent};
use session_proxy_protocol::SessionId;

use super::SessionService;

impl SessionService {
    /// Ends a session for good: removes it, unindexes its uid, runs the
    /// close hook and fires [`SessionEvent::Closed`] with `reason`. Returns
    /// whether it existed.
    pub fn close(&self, sid: SessionId, reason: EndReason) -> bool {
        self.end(sid, reason, false)
    }

    /// Closes a session if `gen` is still its current owner (see
    /// [`SessionOwner::generation`](crate::SessionOwner::generation)).
    pub fn close_if_owner(&self, sid: SessionId, gen: u64, reason: EndReason) -> bool {
        let current = self.inner.sessions.get(&sid).map(|e| e.owner_gen);
        current == Some(gen) && self.close(sid, reason)
    }

    /// Ends a session and sends its client a kick with `reason`
    /// ([`EndReason::Kicked`]). Returns whether it existed.
    pub fn kick_by_sid(&self, sid: SessionId, reason: &str) -> bool {
        self.end(sid, EndReason::Kicked(reason.to_string()), true)
    }

    /// Kicks every session of a uid; returns how many there were.
    pub fn kick_by_uid(&self, uid: &str, reason: &str) -> usize {
        self.sids_of_uid(uid)
            .into_iter()
            .filter(|sid| self.kick_by_sid(*sid, reason))
            .count()
    }

    /// Ends every session of this frontend with `reason` (their clients,
    /// if still connected, get a kick), running each close hook once.
    /// The last step of a drain with no store to hand sessions over to:
    /// without it, the sessions parked at the drain would end with the
    /// process and no hook would ever run for them. Returns how many ended.
    pub fn end_all(&self, reason: EndReason) -> usize {
        self.sids()
            .into_iter()
            .filter(|sid| self.end(*sid, reason.clone(), true))
            .count()
    }

    /// Ends a session for good, kicking its client with the reason's text
    /// if `kick`, and deletes it from the store.
    pub(super) fn end(&self, sid: SessionId, reason: EndReason, kick: bool) -> bool {
        self.remove_as(sid, Ending::Ended(reason), kick, true)
    }

    /// Removes a session; `from_store` deletes it from the store too (not
    /// for a session the store says another frontend holds now).
    pub(super) fn remove_as(
        &self,
        sid: SessionId,
        ending: Ending,
        kick: bool,
        from_store: bool,
    ) -> bool {
        let Some((_, entry)) = self.inner.sessions.remove(&sid) else {
            return false;
        };
        if let Some(uid) = &entry.uid {
            self.inner.uids.remove(uid, sid);
        }
        let text = match &ending {
            Ending::Ended(reason) => reason.as_str(),
            Ending::Moved { .. } => MOVED_KICK,
        };
        if kick {
            crate::metrics::kicked(text);
            // Best effort: if the queue is full, closing it below still
            // ends the connection's session.
            let _ = entry.owner.try_send(Outbound::Kick {
                reason: text.to_string(),
            });
        }
        entry.owner.close();
        match ending {
            Ending::Ended(reason) => {
                tracing::debug!(sid = %sid.redacted(), %reason, "session closed");
                // The final state is copied for a close hook only (its
                // settings are a copy of every value).
                let hooked = self.inner.hooks.is_set();
                let end = Ended {
                    session: hooked.then(|| entry.snapshot(sid, self.frontend_id())),
                    sid,
                    uid: entry.uid,
                    reason,
                };
                // With a store, it has ended for good once the store agrees
                // (the session may have moved meanwhile): the hook waits.
                let end = match from_store {
                    true => self.mark_deleted(sid, entry.store_epoch, end),
                    false => Some(end),
                };
                if let Some(end) = end {
                    self.ended(end);
                }
            }
            Ending::Moved { to } => self.moved_away(sid, entry.uid, to),
        }
        true
    }
}

impl SessionService {
    /// A session ended for good: its close hook runs (its work as a task)
    /// and [`SessionEvent::Closed`] is sent.
    pub(super) fn ended(&self, end: Ended) {
        let Ended {
            sid,
            uid,
            session,
            reason,
        } = end;
        if let Some(session) = &session {
            self.inner.hooks.run(session, &reason);
        }
        self.emit(SessionEvent::Closed { sid, uid, reason });
    }

    /// A session another frontend holds now: reported moved, no hook.
    pub(super) fn moved_away(&self, sid: SessionId, uid: Option<String>, to: String) {
        tracing::debug!(sid = %sid.redacted(), to = %to, "session moved");
        self.emit(SessionEvent::Moved { sid, uid, to });
    }
}

/// A session that ended here, as its close hook and event will see it.
pub(super) struct Ended {
    /// The session.
    pub(super) sid: SessionId,
    /// The uid it was bound to, if any.
    pub(super) uid: Option<String>,
    /// Its last state, copied only when a close hook is set.
    pub(super) session: Option<session_proxy_protocol::SessionSnapshot>,
    /// Why.
    pub(super) reason: EndReason,
}

/// What a connection whose session another frontend took over reads in
/// its kick.
pub(super) const MOVED_KICK: &str = "resumed elsewhere";

/// How a session leaves this frontend.
pub(super) enum Ending {
    /// For good: the close hook runs.
    Ended(EndReason),
    /// To another frontend (its id; empty when the store did not say):
    /// the session lives on, no close hook.
    Moved {
        /// The frontend that holds it now.
        to: String,
    },
}
