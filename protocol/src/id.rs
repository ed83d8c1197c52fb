//! The cluster-wide session id.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A session id, unique across the cluster and across restarts.
///
/// Frontends draw ids at random from the full 64-bit space (and re-draw on the
/// rare local collision), so a persisted or resumed session never meets a new
/// session with the same id. A backend addresses a session by
/// `(frontend_id, SessionId)`.
///
/// `Display` prints the raw id in hex, for APIs and tests. Logs should use
/// [`SessionId::redacted`], which prints a short one-way hash instead.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SessionId(u64);

impl SessionId {
    /// Wraps a raw 64-bit id.
    pub const fn from_raw(raw: u64) -> Self {
        SessionId(raw)
    }

    /// The raw 64-bit id.
    pub const fn as_u64(self) -> u64 {
        self.0
    }

    /// A short, stable, one-way tag for logs: 8 hex digits of a hash of the
    /// id. Enough to correlate log lines, not enough to address the session.
    pub fn redacted(self) -> Redacted {
        // FNV-1a over the bytes, folded to 32 bits, then a final avalanche so
        // that neighbouring ids give unrelated tags.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in self.0.to_le_bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        Redacted((h >> 32) as u32)
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// The log form of a [`SessionId`]; see [`SessionId::redacted`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Redacted(u32);

impl fmt::Display for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s#{:08x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_fixed_width_hex() {
        assert_eq!(SessionId::from_raw(0xab).to_string(), "00000000000000ab");
    }

    #[test]
    fn redacted_is_stable_and_hides_the_id() {
        let id = SessionId::from_raw(0x1234_5678_9abc_def0);
        assert_eq!(id.redacted(), id.redacted());
        assert_ne!(
            id.redacted(),
            SessionId::from_raw(0x1234_5678_9abc_def1).redacted()
        );
        assert!(!id.redacted().to_string().contains("9abcdef0"));
    }
}
