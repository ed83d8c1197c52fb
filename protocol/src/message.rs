//! The typed messages of the cluster RPC.
//!
//! A connection opens with [`Message::Hello`] from the side that dialled and
//! [`Message::HelloReply`] from the side that accepted. After that either side
//! may send [`Message::Request`]s (answered by exactly one
//! [`Message::Response`] with the same id, in any order), one-way
//! [`Message::Notify`]s, [`Message::Cancel`]s of its own requests, and
//! [`Message::Ping`]s. A message is generic over the calls of the direction
//! it travels in ([`crate::calls`]).

use crate::RpcError;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// The version of this protocol; peers with another version are refused.
/// Version 2: calls typed per direction, replies as their own type, and
/// the link's ping and cancel frames.
pub const PROTOCOL_VERSION: u16 = 2;

/// The first field of every [`Hello`]: "SPRX", so a stray client of another
/// protocol is told apart from a peer of another version.
pub const MAGIC: u32 = u32::from_be_bytes(*b"SPRX");

/// One frame of the cluster RPC, carrying calls of type `C` (see
/// [`FrontendCall`](crate::FrontendCall), [`BackendCall`](crate::BackendCall)).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Message<C> {
    /// Opens a connection (dialling side).
    Hello(Hello),
    /// Accepts or refuses a [`Hello`] (accepting side).
    HelloReply(HelloReply),
    /// The dialler's answer to [`HelloReply::Challenge`]: its HMAC proof.
    Proof(Vec<u8>),
    /// A call that wants exactly one response.
    Request(Request<C>),
    /// The answer to the request with the same id.
    Response(Response),
    /// A call that wants no response; errors are logged by the receiver.
    Notify(C),
    /// The sender's request with this id lost its caller (it gave up or hit
    /// its deadline): stop running it. No response follows.
    Cancel(u64),
    /// Are you there? Answered by [`Message::Pong`] with the same id. Sent
    /// on an idle connection to find a peer that vanished without closing
    /// it (half-open).
    Ping(u64),
    /// The answer to [`Message::Ping`].
    Pong(u64),
}

/// What kind of node a peer is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// Owns client sessions.
    Frontend,
    /// Runs game logic on session proxies.
    Backend,
}

/// The first frame on a connection, from the side that dialled.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Always [`MAGIC`].
    pub magic: u32,
    /// The sender's [`PROTOCOL_VERSION`].
    pub version: u16,
    /// The sender's node id (for logs and routing).
    pub node_id: String,
    /// The sender's role.
    pub role: Role,
    /// The sender's server type (e.g. `"chat"`), for backends that serve
    /// forwarded client requests; `None` for a backend that only calls.
    pub server_type: Option<String>,
    /// A fresh random nonce when the sender authenticates with the cluster
    /// secret (see [`crate::auth`]); empty otherwise.
    #[serde(default)]
    pub nonce: Vec<u8>,
    /// The node id the sender believes it dialled; the receiver refuses the
    /// connection with [`ErrorCode::WrongFrontend`](crate::ErrorCode) when it
    /// is someone else (a stale address in a config, a restarted node on a
    /// reused port).
    pub expect_peer: Option<String>,
    /// The sender's clock ([`unix_ms`]) when it sent the hello.
    #[serde(default)]
    pub clock_ms: u64,
}

impl Hello {
    /// A hello of this build's version.
    pub fn new(node_id: impl Into<String>, role: Role, expect_peer: Option<String>) -> Self {
        Hello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            node_id: node_id.into(),
            role,
            server_type: None,
            nonce: Vec::new(),
            expect_peer,
            clock_ms: unix_ms(),
        }
    }

    /// Why a frontend named `me` refuses this hello before any secret is
    /// checked, if it does: another protocol, another version, a peer that
    /// is not a backend, or a backend that meant to reach another frontend.
    pub fn refusal(&self, me: &str) -> Option<RpcError> {
        use crate::ErrorCode;
        if self.magic != MAGIC {
            return Some(RpcError::new(
                ErrorCode::VersionMismatch,
                "not a session-proxy peer",
            ));
        }
        if self.version != PROTOCOL_VERSION {
            return Some(RpcError::new(
                ErrorCode::VersionMismatch,
                format!(
                    "protocol version {} is not supported (this frontend speaks {PROTOCOL_VERSION})",
                    self.version
                ),
            ));
        }
        if self.role != Role::Backend {
            return Some(RpcError::new(
                ErrorCode::Unsupported,
                "only backends may connect here",
            ));
        }
        match self.expect_peer.as_deref() {
            Some(expected) if expected != me => Some(RpcError::new(
                ErrorCode::WrongFrontend,
                format!("this is frontend {me:?}, not {expected:?}"),
            )),
            _ => None,
        }
    }
}

/// The answer to a [`Hello`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HelloReply {
    /// The connection is open.
    Accepted {
        /// The accepting side's protocol version.
        version: u16,
        /// The accepting side's node id.
        node_id: String,
        /// The accepting side's clock ([`unix_ms`]) when it answered.
        #[serde(default)]
        clock_ms: u64,
    },
    /// The connection is refused and will be closed.
    Refused(RpcError),
    /// Prove you know the cluster secret: the acceptor's nonce, and its own
    /// proof over both nonces (so the dialler authenticates it too).
    Challenge {
        /// The acceptor's fresh nonce.
        nonce: Vec<u8>,
        /// `HMAC(secret, "sp-server" | dialler nonce | this nonce | acceptor id)`.
        proof: Vec<u8>,
    },
}

/// A call that wants one response.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Request<C> {
    /// Chosen by the caller, unique among its pending calls on this connection.
    pub id: u64,
    /// How long the caller will wait, relative to when it sent the request.
    pub deadline_ms: u32,
    /// What to do.
    pub call: C,
    /// The sender's clock ([`unix_ms`]) when it sent the request; 0 when
    /// unknown. With the clock offset both ends measured at the handshake
    /// ([`ClockOffset`]), the receiver tells how long the request waited on
    /// the way (a stopped process, a full socket) and drops one whose
    /// deadline passed before it could start: its caller has been told it
    /// failed, so it must not take effect.
    #[serde(default)]
    pub sent_ms: u64,
}

impl<C> Request<C> {
    /// A request sent now.
    pub fn new(id: u64, deadline: std::time::Duration, call: impl Into<C>) -> Self {
        Request {
            id,
            deadline_ms: u32::try_from(deadline.as_millis()).unwrap_or(u32::MAX),
            call: call.into(),
            sent_ms: unix_ms(),
        }
    }

    /// How much of the deadline is left, as seen through `offset` (the
    /// sender's clock against ours); the whole deadline when the sending
    /// time or the offset is unknown.
    pub fn remaining(&self, offset: ClockOffset) -> std::time::Duration {
        let deadline = std::time::Duration::from_millis(u64::from(self.deadline_ms));
        match offset.age_of(self.sent_ms) {
            Some(age) => deadline.saturating_sub(age),
            None => deadline,
        }
    }
}

/// Milliseconds since the Unix epoch on this machine's clock.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// How far a peer's clock is ahead of ours, measured once at the handshake
/// from the clock it sent (an error of at most the round trip): clocks of
/// different machines never need to agree.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClockOffset(Option<i64>);

impl ClockOffset {
    /// From the peer's clock reading `peer_ms` received just now (0: the
    /// peer did not send one, and ages stay unknown).
    pub fn measure(peer_ms: u64) -> Self {
        if peer_ms == 0 {
            return ClockOffset(None);
        }
        let ours = i64::try_from(unix_ms()).unwrap_or(i64::MAX);
        ClockOffset(Some(i64::try_from(peer_ms).unwrap_or(i64::MAX) - ours))
    }

    /// From the peer's clock reading `peer_ms` in its answer to a message
    /// we sent when our clock read `asked_ms`. The peer read its clock
    /// somewhere between `asked_ms` and now, so the offset is taken at the
    /// largest it can be: ages read through it are never too young (too
    /// old by at most the round trip), and a request whose caller has
    /// given up is never taken for one that still has time.
    pub fn answered(peer_ms: u64, asked_ms: u64) -> Self {
        if peer_ms == 0 || asked_ms == 0 {
            return ClockOffset(None);
        }
        let asked = i64::try_from(asked_ms).unwrap_or(i64::MAX);
        ClockOffset(Some(i64::try_from(peer_ms).unwrap_or(i64::MAX) - asked))
    }

    /// How long ago the peer's clock read `sent_ms`; `None` when unknown.
    pub fn age_of(self, sent_ms: u64) -> Option<std::time::Duration> {
        let offset = self.0?;
        if sent_ms == 0 {
            return None;
        }
        let peer_now = i64::try_from(unix_ms()).unwrap_or(i64::MAX) + offset;
        let age = peer_now - i64::try_from(sent_ms).unwrap_or(i64::MAX);
        Some(std::time::Duration::from_millis(
            u64::try_from(age).unwrap_or(0),
        ))
    }
}

/// The one answer to a [`Request`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// The id of the request this answers.
    pub id: u64,
    /// The outcome: the reply encoded as the reply type of the call
    /// ([`Call::encode_reply`](crate::Call::encode_reply)), or why it
    /// failed.
    pub result: Result<Bytes, RpcError>,
}

#[cfg(test)]
mod hello_tests {
    use super::*;
    use crate::ErrorCode;

    #[test]
    fn a_frontend_refuses_what_is_not_a_backend_of_its_version_meant_for_it() {
        let ok = Hello::new("b1", Role::Backend, Some("f1".into()));
        assert_eq!(ok.refusal("f1"), None);
        assert_eq!(Hello::new("b1", Role::Backend, None).refusal("f1"), None);
        let code = |h: &Hello| h.refusal("f1").map(|e| e.code);
        assert_eq!(
            code(&Hello {
                magic: 1,
                ..ok.clone()
            }),
            Some(ErrorCode::VersionMismatch)
        );
        assert_eq!(
            code(&Hello {
                version: 99,
                ..ok.clone()
            }),
            Some(ErrorCode::VersionMismatch)
        );
        assert_eq!(
            code(&Hello {
                role: Role::Frontend,
                ..ok.clone()
            }),
            Some(ErrorCode::Unsupported)
        );
        let elsewhere = Hello {
            expect_peer: Some("f2".into()),
            ..ok
        };
        assert_eq!(code(&elsewhere), Some(ErrorCode::WrongFrontend));
    }

    #[test]
    fn an_answered_offset_never_makes_a_request_younger_than_it_is() {
        // We asked at 1_000 (our clock) and got the answer at 1_300; the
        // peer, an hour ahead, read its clock somewhere in between.
        let hour = 3_600_000;
        for peer_read in [1_000, 1_150, 1_300] {
            let offset = ClockOffset::answered(hour + peer_read, 1_000);
            let true_offset = hour as i64;
            let taken = offset.0.expect("known");
            assert!(taken >= true_offset, "{taken} < {true_offset}");
            assert!(
                taken - true_offset <= 300,
                "too old by at most the round trip"
            );
        }
        assert_eq!(ClockOffset::answered(0, 1_000), ClockOffset(None));
    }

    #[test]
    fn ages_are_read_through_the_peers_clock_offset() {
        // A peer whose clock is an hour ahead of ours.
        let hour = 3_600_000;
        let offset = ClockOffset::measure(unix_ms() + hour);
        let call = |sent_ms| Request {
            id: 1,
            deadline_ms: 5_000,
            call: crate::Drain {},
            sent_ms,
        };
        let fresh = call(unix_ms() + hour).remaining(offset);
        assert!(fresh > std::time::Duration::from_millis(4_000), "{fresh:?}");
        assert!(call(unix_ms() + hour - 6_000).remaining(offset).is_zero());
        // Unknown sending time or unknown clock: the whole deadline.
        assert_eq!(call(0).remaining(offset).as_millis(), 5_000);
        let unknown = ClockOffset::measure(0);
        assert_eq!(
            call(unix_ms() - 60_000).remaining(unknown).as_millis(),
            5_000
        );
    }
}
