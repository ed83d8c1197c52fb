//! Why a session ended for good.

use std::fmt;

/// Why a session ended for good: its close hook and
/// [`SessionEvent::Closed`](crate::SessionEvent::Closed) carry one, once
/// per session.
///
/// A session that moved to another frontend (its client resumed there, or
/// this frontend handed it over at a drain) has not ended: it is reported as
/// [`SessionEvent::Moved`](crate::SessionEvent::Moved), never with an end
/// reason. [`as_str`](EndReason::as_str) is the text a client reads in a
/// kick, and the `reason` label of the kick metric.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EndReason {
    /// The client left (closed its connection, or stopped answering
    /// heartbeats) and did not come back: resume is off, or the client had
    /// not finished its handshake. `"disconnected"`.
    Disconnected,
    /// A timeout ended it: the resume grace of a parked session ran out, or
    /// the session's idle or absolute timeout passed. `"expired"`.
    Expired,
    /// A newer session of the same uid replaced it (the single-session
    /// policy, on this frontend or, with a store, on any). `"replaced"`.
    Replaced,
    /// Its client could not keep up with its pushes. `"slow client"`.
    SlowClient,
    /// Its frontend shut down with nowhere to hand it over (no session
    /// store), so nobody can resume it. `"shutdown"`.
    Shutdown,
    /// Game code, a backend or an operator kicked it, with this reason (sent
    /// to the client as it is).
    Kicked(String),
    /// The connection ended on something the client did wrong or a broken
    /// transport (a malformed package, a refused handshake, a write that
    /// timed out), before its session could be parked. The text says what.
    ConnectionError(String),
}

impl EndReason {
    /// The reason as text: what a kicked client reads, and what logs and
    /// metrics say.
    pub fn as_str(&self) -> &str {
        match self {
            EndReason::Disconnected => "disconnected",
            EndReason::Expired => "expired",
            EndReason::Replaced => "replaced",
            EndReason::SlowClient => "slow client",
            EndReason::Shutdown => "shutdown",
            EndReason::Kicked(reason) | EndReason::ConnectionError(reason) => reason,
        }
    }

    /// The reason a session evicted by another frontend's login is stored
    /// with: [`Replaced`](EndReason::Replaced) for the policy's own text,
    /// else a kick with that text.
    pub(crate) fn from_stored(reason: &str) -> EndReason {
        match reason {
            "replaced" => EndReason::Replaced,
            other => EndReason::Kicked(other.to_string()),
        }
    }
}

impl fmt::Display for EndReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
