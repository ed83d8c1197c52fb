//! Binding a session to a uid, unbinding it, and the single-session policy.
use super::SessionEvent;
use super::SessionService;
use crate::store::Admission;
use crate::{Error, SingleSessionPolicy};
use session_proxy_protocol::SessionId;

/// The kick reason of a session the single-session policy replaced.
const REPLACED: &str = "replaced";

impl SessionService {
    /// Binds a session to a uid. Binding to the uid it already has is a no-op.
    /// The single-session policy counts this frontend's sessions only; see
    /// [`bind_everywhere`](Self::bind_everywhere) for every frontend's.
    pub fn bind(&self, sid: SessionId, uid: &str) -> Result<(), Error> {
        self.bind_under(sid, uid, self.inner.config.single_session)
    }

    /// Like [`bind`](Self::bind), with the single-session policy held
    /// across every frontend sharing the store: the store admits the
    /// session atomically (of two logins of one uid racing on two
    /// frontends, one is refused or kicks the other), and sessions it ends
    /// to make room are closed with reason `"replaced"` by the frontend
    /// that holds them. Without a store, or with the policy off, it is
    /// [`bind`](Self::bind). Fails with [`Error::Store`] when the store does
    /// not answer: nothing is bound then.
    pub async fn bind_everywhere(&self, sid: SessionId, uid: &str) -> Result<(), Error> {
        let policy = self.inner.config.single_session;
        let Some(link) = self.inner.store.get() else {
            return self.bind(sid, uid);
        };
        if policy == SingleSessionPolicy::Off {
            return self.bind(sid, uid);
        }
        match &self.entry_mut(sid)?.uid {
            Some(current) if current == uid => return Ok(()),
            Some(_) => return Err(Error::AlreadyBound { sid }),
            None => {}
        }
        link.check_up()?;
        let limit = self.inner.config.sessions_per_uid;
        let kick = policy == SingleSessionPolicy::KickOld;
        let admitted = link
            .call(link.store.admit(uid, sid, limit, kick, REPLACED))
            .await?;
        let Admission::Admitted { evicted } = admitted else {
            return Err(Error::SessionLimit);
        };
        for e in evicted {
            // Ended in the store already: only the local copy goes.
            let replaced = super::close::Ending::Ended(super::EndReason::Replaced);
            self.remove_as(e.sid, replaced, true, false);
        }
        // The store counted every frontend's sessions, this one's included.
        self.bind_under(sid, uid, SingleSessionPolicy::Off)
    }

    fn bind_under(
        &self,
        sid: SessionId,
        uid: &str,
        policy: SingleSessionPolicy,
    ) -> Result<(), Error> {
        let limit = self.inner.config.sessions_per_uid;
        let replaced = {
            let mut entry = self.entry_mut(sid)?;
            match &entry.uid {
                Some(current) if current == uid => return Ok(()),
                Some(_) => return Err(Error::AlreadyBound { sid }),
                None => {}
            }
            // Under the session's guard (the index's lock order allows it),
            // so the session and the index change together.
            let replaced = self.inner.uids.add(uid, sid, limit, policy)?;
            entry.uid = Some(uid.to_string());
            replaced
        };
        self.mark_dirty(sid);
        self.emit(SessionEvent::Bound {
            sid,
            uid: uid.to_string(),
        });
        for old in replaced {
            self.end(old, super::EndReason::Replaced, true);
        }
        Ok(())
    }

    /// Unbinds a session from `uid`, which must be the uid it is bound to.
    pub fn unbind(&self, sid: SessionId, uid: &str) -> Result<(), Error> {
        {
            let mut entry = self.entry_mut(sid)?;
            if entry.uid.as_deref() != Some(uid) {
                return Err(Error::UidMismatch { sid });
            }
            entry.uid = None;
            self.inner.uids.remove(uid, sid);
        }
        self.mark_dirty(sid);
        self.emit(SessionEvent::Unbound {
            sid,
            uid: uid.to_string(),
        });
        Ok(())
    }
}
