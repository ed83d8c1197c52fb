//! Binding a session to a uid, unbinding it, and the single-session policy.
use super::SessionEvent;
use crate::{Error, SingleSessionPolicy};
use dashmap::mapref::entry::Entry;
use session_proxy_protocol::SessionId;

use super::SessionService;

impl SessionService {
    /// Binds a session to a uid. Binding to the uid it already has is a no-op.
    pub fn bind(&self, sid: SessionId, uid: &str) -> Result<(), Error> {
        let replaced = {
            let mut entry = self.entry_mut(sid)?;
            match &entry.uid {
                Some(current) if current == uid => return Ok(()),
                Some(_) => return Err(Error::AlreadyBound { sid }),
                None => {}
            }
            // Lock order: sessions guard first, then the uid index.
            let mut sids = self.inner.uids.entry(uid.to_string()).or_default();
            let replaced = match self.inner.config.single_session {
                SingleSessionPolicy::RejectNew if !sids.is_empty() => {
                    return Err(Error::SessionLimit);
                }
                SingleSessionPolicy::KickOld => std::mem::take(&mut *sids),
                _ => Vec::new(),
            };
            sids.push(sid);
            entry.uid = Some(uid.to_string());
            replaced
        };
        self.mark_dirty(sid);
        self.emit(SessionEvent::Bound {
            sid,
            uid: uid.to_string(),
        });
        for old in replaced {
            self.kick_by_sid(old, "replaced");
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
            self.unindex(uid, sid);
        }
        self.mark_dirty(sid);
        self.emit(SessionEvent::Unbound {
            sid,
            uid: uid.to_string(),
        });
        Ok(())
    }

    /// Removes `sid` from the uid index, and the uid when it has no session left.
    pub(super) fn unindex(&self, uid: &str, sid: SessionId) {
        if let Entry::Occupied(mut sids) = self.inner.uids.entry(uid.to_string()) {
            sids.get_mut().retain(|s| *s != sid);
            if sids.get().is_empty() {
                sids.remove();
            }
        }
    }
}
