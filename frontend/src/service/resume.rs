//! Parking a session when its client drops, and resuming it with a token
//! (the tokens themselves: `tokens`).

use super::tokens::{Minted, Presented, Tokens};
use super::{SessionEvent, SessionOwner, SessionService};
use crate::owner::{self, OwnerRx};
use crate::{Error, Outbound};
use session_proxy_protocol::SessionId;
use std::time::Duration;
use tokio::time::Instant;

/// A parked session: nobody reads its queue until a resume.
pub(crate) struct Parked {
    /// When the session closes unless resumed.
    pub(crate) until: Instant,
    /// The queue, with what arrived while parked.
    pub(crate) rx: OwnerRx,
}

/// Why a resume was refused. The messages are safe to send to the client.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ResumeError {
    /// Not a token of this format.
    #[error("malformed resume token")]
    Malformed,
    /// No such session (never existed, expired, or closed).
    #[error("the session is gone")]
    UnknownSession,
    /// The token does not match the session.
    #[error("invalid resume token")]
    Invalid,
    /// A previous token, presented after its overlap ended.
    #[error("resume token was rotated out")]
    RotatedOut,
    /// The token was issued to another kind of client: its metadata (client
    /// type, device) differs from what the resuming client says.
    #[error("resume token presented by a different client type or device")]
    OtherClient,
    /// The session lives in the shared store, which did not answer; the
    /// client may try again.
    #[error("session store unavailable; try again")]
    StoreUnavailable,
    /// Another frontend took the session over while this one was resuming
    /// it; the client may try again.
    #[error("the session moved while resuming; try again")]
    Raced,
    /// The stored session cannot be decoded (corrupt, or written by an
    /// incompatible version): it will never resume.
    #[error("the stored session cannot be read")]
    Unreadable,
}

impl ResumeError {
    /// Whether the token can never work again (the session is gone, or the
    /// token is not one of its current ones): the client is better off with
    /// a fresh session. Not for a store that did not answer or a race,
    /// where trying again may resume it.
    pub fn is_stale(&self) -> bool {
        !matches!(self, ResumeError::StoreUnavailable | ResumeError::Raced)
    }
}

/// Whether a session's metadata (`value_of` a key) names another client
/// than `client` says.
fn other_client<'a>(value_of: impl Fn(&str) -> Option<&'a str>, client: &[(&str, &str)]) -> bool {
    client
        .iter()
        .any(|(key, presented)| value_of(key).is_some_and(|v| v != *presented))
}

impl SessionService {
    /// Gives a session a fresh resume token (replacing any earlier one at
    /// once) and returns it. Only its hash is kept.
    pub fn issue_token(&self, sid: SessionId) -> Result<String, Error> {
        let token = Minted::new(sid);
        self.entry_mut(sid)?.tokens = Tokens::only(&token);
        // The token must survive a restart before the client can use it.
        self.mark_dirty(sid);
        Ok(token.text)
    }

    /// Detaches a session from its connection for `grace`: pushes queue up
    /// (at most `owner_queue` of them; later ones are reported undelivered)
    /// and are delivered on resume; without a resume it closes with reason
    /// `"expired"`. A zero grace closes it now. Returns whether the owner
    /// was still the session's current one.
    pub fn park(&self, owner: SessionOwner, grace: Duration) -> bool {
        let mut owner = owner;
        let sid = owner.sid;
        if grace.is_zero() {
            return self.close_if_owner(sid, owner.gen, super::EndReason::Disconnected);
        }
        let Some(rx) = owner.rx.take() else {
            return false;
        };
        let until = Instant::now() + grace;
        {
            let Some(mut entry) = self.inner.sessions.get_mut(&sid) else {
                return false;
            };
            if entry.owner_gen != owner.gen {
                return false;
            }
            entry.owner.set_parked(true);
            entry.parked = Some(Parked { until, rx });
        }
        self.mark_dirty(sid);
        tracing::debug!(sid = %sid.redacted(), ?grace, "session parked");
        self.emit(SessionEvent::Parked { sid });
        self.schedule(sid, until);
        true
    }

    /// Whether a session is parked.
    pub fn is_parked(&self, sid: SessionId) -> bool {
        self.inner
            .sessions
            .get(&sid)
            .is_some_and(|e| e.parked.is_some())
    }

    /// Takes a session over with its resume token: a parked session gets a
    /// connection again, with the pushes that waited for it; a session still
    /// attached (its old connection not yet known dead) is taken from that
    /// connection, which is told `"resumed elsewhere"`. Returns the new
    /// owner and the rotated token.
    pub fn resume(&self, token: &str) -> Result<(SessionOwner, String), ResumeError> {
        self.resume_as(token, &[])
    }

    /// Like [`resume`](Self::resume), refused with
    /// [`ResumeError::OtherClient`] when the session's metadata has one of
    /// the `client` keys (e.g. `clientType`, `device`) with another value
    /// than the resuming client presents: a token copied to another device
    /// does not work there.
    pub fn resume_as(
        &self,
        token: &str,
        client: &[(&str, &str)],
    ) -> Result<(SessionOwner, String), ResumeError> {
        let presented = Presented::parse(token)?;
        let sid = presented.sid;
        let now = Instant::now();
        let next = Minted::new(sid);
        let overlap = self.inner.config.token_overlap;
        let (rx, gen, old_owner) = {
            let mut entry = self
                .inner
                .sessions
                .get_mut(&sid)
                .ok_or(ResumeError::UnknownSession)?;
            entry.tokens.check(&presented, now)?;
            let info = &entry.info;
            let value_of = |key: &str| info.metadata().find(|(k, _)| *k == key).map(|(_, v)| v);
            if other_client(value_of, client) {
                return Err(ResumeError::OtherClient);
            }
            // Rotate: the token just used stays valid for the overlap.
            entry.tokens.rotate(&presented, &next, now + overlap);
            entry.owner_gen += 1;
            let gen = entry.owner_gen;
            match entry.parked.take() {
                Some(parked) => {
                    entry.owner.set_parked(false);
                    (parked.rx, gen, None)
                }
                None => {
                    // Still attached: a new queue for the new connection;
                    // the old one hears why it lost the session.
                    let (tx, rx) = owner::queue(self.inner.config.owner_queue);
                    let old = std::mem::replace(&mut entry.owner, tx);
                    (rx, gen, Some(old))
                }
            }
        };
        if let Some(old) = old_owner {
            let _ = old.try_send(Outbound::Kick {
                reason: super::close::MOVED_KICK.into(),
            });
            old.close();
        }
        self.mark_dirty(sid);
        tracing::debug!(sid = %sid.redacted(), "session resumed");
        self.emit(SessionEvent::Resumed { sid });
        Ok((
            SessionOwner {
                sid,
                gen,
                rx: Some(rx),
                service: self.clone(),
            },
            next.text,
        ))
    }
}

impl SessionService {
    /// Like [`resume_as`](Self::resume_as), for a session this frontend may
    /// not hold, or may hold a stale copy of. With a store, the store says
    /// who holds the session: a copy held here is resumed only once the
    /// store confirms this frontend still holds it under its epoch (one
    /// round trip); a copy another frontend claimed meanwhile is closed
    /// here, as its next write would have been fenced. A session this
    /// frontend does not hold (any more) is looked up in the store
    /// (another frontend's, drained, crashed, paused or partitioned). The
    /// token is checked against the stored record, then the session is
    /// claimed there atomically (its epoch goes up, so the frontend that
    /// held it has every later write refused and closes its copy), brought
    /// in with its settings, versions and the pushes that waited for it,
    /// and resumed. Returns once the new token is written to the store.
    /// A store that does not answer refuses the resume
    /// ([`ResumeError::StoreUnavailable`], try again): a copy it cannot
    /// confirm may be older than a write another frontend acknowledged.
    pub async fn resume_anywhere(
        &self,
        token: &str,
        client: &[(&str, &str)],
    ) -> Result<(SessionOwner, String), ResumeError> {
        let Some(link) = self.inner.store.get() else {
            return self.resume_as(token, client);
        };
        let presented = Presented::parse(token)?;
        let sid = presented.sid;
        if link.check_up().is_err() {
            return Err(ResumeError::StoreUnavailable);
        }
        let unavailable = |err: crate::StoreError| {
            tracing::debug!(cause = %session_proxy_protocol::chain(&err), "cannot resume from the store");
            ResumeError::StoreUnavailable
        };
        if let Some(epoch) = self.inner.sessions.get(&sid).map(|e| e.store_epoch) {
            // Moved (or ended) elsewhere, the copy here closes and the
            // session is claimed from the store below; lost by the store
            // (restarted empty), the copy here is the session.
            link.refresh_held(self, vec![(sid, epoch)])
                .await
                .map_err(unavailable)?;
            match self.resume_as(token, client) {
                Err(ResumeError::UnknownSession) => {}
                other => return other,
            }
        }
        let mut record = match link.call(link.store.get(sid)).await {
            Ok(found) => found.ok_or(ResumeError::UnknownSession)?,
            Err(crate::StoreError::Decode(err)) => {
                crate::metrics::CORRUPT_SKIPPED.increment(1);
                tracing::error!(sid = %sid.redacted(), cause = %session_proxy_protocol::chain(&err), "a stored session cannot be decoded; its resume is refused");
                return Err(ResumeError::Unreadable);
            }
            Err(err) => return Err(unavailable(err)),
        };
        let now_unix = session_proxy_protocol::unix_ms();
        let previous = record
            .previous_token
            .map(|(h, until)| (h, until > now_unix));
        presented.check(record.token, previous)?;
        let metadata = &record.info.metadata;
        if other_client(|key| metadata.get(key).map(String::as_str), client) {
            return Err(ResumeError::OtherClient);
        }
        let from = std::mem::take(&mut record.info.frontend_id);
        let epoch = link
            .call(link.store.claim(sid, record.epoch, self.frontend_id()))
            .await
            .map_err(unavailable)?
            .ok_or(ResumeError::Raced)?;
        record.epoch = epoch;
        record.info.frontend_id = self.frontend_id().to_string();
        if !self.inner.sessions.contains_key(&sid) {
            self.insert_restored(record, self.inner.config.token_overlap);
        }
        let resumed = self.resume_as(token, client)?;
        tracing::info!(
            sid = %sid.redacted(),
            from = %if from.is_empty() { "(handed over)" } else { from.as_str() },
            epoch,
            "session moved here from another frontend"
        );
        // The rotated token and the new owner must be in the store before
        // the client hears them: it may move again.
        if let Err(err) = self.flush().await {
            tracing::debug!(cause = %session_proxy_protocol::chain(&err), "the moved session is not written yet; retrying in the background");
        }
        Ok(resumed)
    }
}

impl SessionOwner {
    /// Parks the session for `grace` instead of closing it (see
    /// [`SessionService::park`]).
    pub fn park(self, grace: Duration) -> bool {
        let service = self.service.clone();
        service.park(self, grace)
    }
}
