//! Resume tokens: minted, checked and rotated, with nothing else of the
//! session in reach.
//!
//! A token is the session id (16 hex digits) followed by 128 random bits
//! (32 hex digits). Only its SHA-256 is kept; a presented token is hashed and
//! compared in constant time. Every resume rotates the token; the previous
//! one keeps working for `SessionConfig::token_overlap` (for a client that
//! missed the reply), then is refused.

use super::ResumeError;
use rand::RngCore;
use session_proxy_protocol::SessionId;
use sha2::{Digest, Sha256};
use std::fmt::Write;
use subtle::ConstantTimeEq;
use tokio::time::Instant;

/// A token's SHA-256: all that is kept of it.
pub(crate) type TokenHash = [u8; 32];

/// A token a client presented: the session it names, and its hash.
pub(super) struct Presented {
    pub(super) sid: SessionId,
    hash: TokenHash,
}

impl Presented {
    /// Reads a presented token; only its format is checked here.
    pub(super) fn parse(token: &str) -> Result<Presented, ResumeError> {
        if token.len() != 48 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ResumeError::Malformed);
        }
        let sid = u64::from_str_radix(&token[..16], 16)
            .map(SessionId::from_raw)
            .map_err(|_| ResumeError::Malformed)?;
        Ok(Presented {
            sid,
            hash: hash(token),
        })
    }

    /// Checks it against a session's `current` token and its `previous`
    /// one (`Some(still valid)` when there is one).
    pub(super) fn check(
        &self,
        current: Option<TokenHash>,
        previous: Option<(TokenHash, bool)>,
    ) -> Result<(), ResumeError> {
        if current.is_some_and(|h| bool::from(h.ct_eq(&self.hash))) {
            return Ok(());
        }
        match previous.filter(|(h, _)| bool::from(h.ct_eq(&self.hash))) {
            Some((_, true)) => Ok(()),
            Some((_, false)) => Err(ResumeError::RotatedOut),
            None => Err(ResumeError::Invalid),
        }
    }
}

/// A new token for a session: the text for the client, the hash to keep.
pub(super) struct Minted {
    pub(super) text: String,
    hash: TokenHash,
}

impl Minted {
    /// A fresh random token of session `sid`.
    pub(super) fn new(sid: SessionId) -> Minted {
        let mut random = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut random);
        let mut text = format!("{:016x}", sid.as_u64());
        for b in random {
            let _ = write!(text, "{b:02x}");
        }
        Minted {
            hash: hash(&text),
            text,
        }
    }
}

fn hash(token: &str) -> TokenHash {
    Sha256::digest(token.as_bytes()).into()
}

/// The resume token hashes of one session.
#[derive(Default)]
pub(crate) struct Tokens {
    /// The current token.
    current: Option<TokenHash>,
    /// The token before the last rotation, and until when it still works.
    /// Boxed: only sessions that resumed have one.
    previous: Option<Box<(TokenHash, Instant)>>,
}

impl Tokens {
    /// Only `minted` works from now on.
    pub(super) fn only(minted: &Minted) -> Tokens {
        Tokens {
            current: Some(minted.hash),
            previous: None,
        }
    }

    /// As they were stored.
    pub(crate) fn restored(
        current: Option<TokenHash>,
        previous: Option<(TokenHash, Instant)>,
    ) -> Tokens {
        Tokens {
            current,
            previous: previous.map(Box::new),
        }
    }

    /// The current token, and the previous one with the end of its overlap.
    pub(crate) fn stored(&self) -> (Option<TokenHash>, Option<(TokenHash, Instant)>) {
        (self.current, self.previous.as_deref().copied())
    }

    /// Checks `presented` at `now`.
    pub(super) fn check(&self, presented: &Presented, now: Instant) -> Result<(), ResumeError> {
        let previous = self.previous.as_deref().map(|&(h, until)| (h, until > now));
        presented.check(self.current, previous)
    }

    /// After a resume with `presented`: `next` is the current token, and
    /// the one presented keeps working until `overlap_until`.
    pub(super) fn rotate(&mut self, presented: &Presented, next: &Minted, overlap_until: Instant) {
        *self = Tokens {
            current: Some(next.hash),
            previous: Some(Box::new((presented.hash, overlap_until))),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_rotated_token_works_for_its_overlap_then_is_refused() {
        let sid = SessionId::from_raw(7);
        let first = Minted::new(sid);
        let mut tokens = Tokens::only(&first);
        let presented = Presented::parse(&first.text).expect("well formed");
        assert_eq!(presented.sid, sid);
        let now = Instant::now();
        assert_eq!(tokens.check(&presented, now), Ok(()));
        let next = Minted::new(sid);
        tokens.rotate(&presented, &next, now + Duration::from_secs(5));
        let next_presented = Presented::parse(&next.text).expect("well formed");
        assert_eq!(tokens.check(&next_presented, now), Ok(()));
        assert_eq!(tokens.check(&presented, now), Ok(()), "within the overlap");
        assert_eq!(
            tokens.check(&presented, now + Duration::from_secs(5)),
            Err(ResumeError::RotatedOut)
        );
        let other = Presented::parse(&Minted::new(sid).text).expect("well formed");
        assert_eq!(tokens.check(&other, now), Err(ResumeError::Invalid));
    }

    #[test]
    fn only_the_format_is_parsed() {
        for bad in ["", "zz", &"g".repeat(48), &"0".repeat(47)] {
            assert!(
                matches!(Presented::parse(bad), Err(ResumeError::Malformed)),
                "{bad:?}"
            );
        }
    }
}
