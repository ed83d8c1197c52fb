//! Parking a session when its client drops, and resuming it with a token.
//!
//! A token is the session id (16 hex digits) followed by 128 random bits
//! (32 hex digits). Only its SHA-256 is kept; a presented token is hashed and
//! compared in constant time. Every resume rotates the token; the previous
//! one keeps working for `SessionConfig::token_overlap` (for a client that
//! missed the reply), then is refused.

use super::{SessionEvent, SessionOwner, SessionService};
use crate::owner::{self, OwnerRx};
use crate::{Error, Outbound};
use rand::RngCore;
use session_proxy_protocol::SessionId;
use sha2::{Digest, Sha256};
use std::fmt::Write;
use std::time::Duration;
use subtle::ConstantTimeEq;
use tokio::time::Instant;

/// A parked session: nobody reads its queue until a resume.
pub(crate) struct Parked {
    /// When the session closes unless resumed.
    pub(crate) until: Instant,
    /// The queue, with what arrived while parked.
    pub(crate) rx: OwnerRx,
}

/// The resume token hashes of one session.
#[derive(Default)]
pub(crate) struct Tokens {
    /// The current token.
    pub(crate) current: Option<[u8; 32]>,
    /// The token before the last rotation, and until when it still works.
    /// Boxed: only sessions that resumed have one.
    pub(crate) previous: Option<Box<([u8; 32], Instant)>>,
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
}

fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn parse_sid(token: &str) -> Result<SessionId, ResumeError> {
    if token.len() != 48 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ResumeError::Malformed);
    }
    u64::from_str_radix(&token[..16], 16)
        .map(SessionId::from_raw)
        .map_err(|_| ResumeError::Malformed)
}

fn new_token(sid: SessionId) -> String {
    let mut random = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut random);
    let mut token = format!("{:016x}", sid.as_u64());
    for b in random {
        let _ = write!(token, "{b:02x}");
    }
    token
}

impl SessionService {
    /// Gives a session a fresh resume token (replacing any earlier one at
    /// once) and returns it. Only its hash is kept.
    pub fn issue_token(&self, sid: SessionId) -> Result<String, Error> {
        let token = new_token(sid);
        let mut entry = self.entry_mut(sid)?;
        entry.tokens = Tokens {
            current: Some(hash(&token)),
            previous: None,
        };
        drop(entry);
        // The token must survive a restart before the client can use it.
        self.mark_dirty(sid);
        Ok(token)
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
            return self.close_if_owner(sid, owner.gen, "disconnected");
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
        let sid = parse_sid(token)?;
        let presented = hash(token);
        let now = Instant::now();
        let next = new_token(sid);
        let overlap = self.inner.config.token_overlap;
        let (rx, gen, old_owner) = {
            let mut entry = self
                .inner
                .sessions
                .get_mut(&sid)
                .ok_or(ResumeError::UnknownSession)?;
            let current_ok = entry
                .tokens
                .current
                .is_some_and(|h| bool::from(h.ct_eq(&presented)));
            let previous = entry
                .tokens
                .previous
                .as_deref()
                .copied()
                .filter(|(h, _)| bool::from(h.ct_eq(&presented)));
            match (current_ok, previous) {
                (true, _) => {}
                (false, Some((_, until))) if until > now => {}
                (false, Some(_)) => return Err(ResumeError::RotatedOut),
                (false, None) => return Err(ResumeError::Invalid),
            }
            let other_client = client.iter().any(|(key, presented)| {
                entry
                    .info
                    .metadata()
                    .any(|(k, v)| k == *key && v != *presented)
            });
            if other_client {
                return Err(ResumeError::OtherClient);
            }
            // Rotate: the token just used stays valid for the overlap.
            entry.tokens = Tokens {
                current: Some(hash(&next)),
                previous: Some(Box::new((presented, now + overlap))),
            };
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
                reason: "resumed elsewhere".into(),
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
            next,
        ))
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
