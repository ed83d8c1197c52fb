//! Error codes that travel on the wire, the codec's own errors, and how
//! every error of session-proxy is shown.
//!
//! One rule holds for the error types of every crate here: `Display` says
//! what failed, in this layer's words, and the cause is only in
//! `source()`. Printing an error alone never repeats its cause; printing
//! its [`chain`] shows each cause once. Logs print chains
//! (`cause = %chain(&err)`), and so does the command line.

use serde::{Deserialize, Serialize};
use std::fmt;

/// What went wrong, as a stable number on the wire.
///
/// Codes are encoded as `u16`. A code this build does not know (sent by a
/// newer peer) decodes as [`ErrorCode::Unknown`] instead of failing the frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "u16", from = "u16")]
#[non_exhaustive]
pub enum ErrorCode {
    /// No session with that id lives on the addressed frontend.
    SessionNotFound,
    /// `bind` of a session that is already bound to another uid.
    AlreadyBound,
    /// `unbind` naming a uid the session is not bound to.
    UidMismatch,
    /// A conditional push found that a key moved since the backend's snapshot.
    Conflict,
    /// The single-session policy (reject mode) refused a second session of a uid.
    SessionLimit,
    /// The call reached a frontend other than the one it was addressed to.
    WrongFrontend,
    /// The session moved to another frontend (its client resumed there);
    /// the message is the id of the frontend that holds it now. Nothing
    /// was applied here: address the new owner.
    SessionMoved,
    /// A frame was larger than the receiver's maximum.
    FrameTooLarge,
    /// Bytes that are not a valid frame or message.
    Malformed,
    /// The peers speak different protocol versions (or not this protocol).
    VersionMismatch,
    /// The call's deadline passed before a response arrived.
    DeadlineExceeded,
    /// The connection closed while the call was pending.
    PeerClosed,
    /// The peer could not be reached at all.
    Unavailable,
    /// Too many calls in flight on one connection.
    Overloaded,
    /// A configured limit would be crossed (settings per session, sessions
    /// per frontend, …); nothing was changed.
    LimitExceeded,
    /// The peer could not prove it knows the cluster secret.
    Unauthorized,
    /// The change was applied on the frontend (later reads see it) but
    /// could not be written to the session store yet; the frontend keeps
    /// retrying and writes it once the store answers again. Until then a
    /// crash of that frontend would lose it.
    NotDurable,
    /// The peer does not handle this kind of call.
    Unsupported,
    /// No handler is registered for a forwarded route.
    UnknownRoute,
    /// No backend of the route's server type is connected.
    NoBackend,
    /// A bug or an unexpected state on the peer.
    Internal,
    /// A code this build does not know.
    Unknown(u16),
}

impl ErrorCode {
    /// The stable wire number of this code.
    pub fn as_u16(self) -> u16 {
        match self {
            ErrorCode::SessionNotFound => 1,
            ErrorCode::AlreadyBound => 2,
            ErrorCode::UidMismatch => 3,
            ErrorCode::Conflict => 4,
            ErrorCode::SessionLimit => 5,
            ErrorCode::WrongFrontend => 6,
            ErrorCode::SessionMoved => 7,
            ErrorCode::FrameTooLarge => 10,
            ErrorCode::Malformed => 11,
            ErrorCode::VersionMismatch => 12,
            ErrorCode::DeadlineExceeded => 20,
            ErrorCode::PeerClosed => 21,
            ErrorCode::Unavailable => 22,
            ErrorCode::Overloaded => 23,
            ErrorCode::LimitExceeded => 24,
            ErrorCode::Unauthorized => 25,
            ErrorCode::NotDurable => 26,
            ErrorCode::Unsupported => 30,
            ErrorCode::UnknownRoute => 31,
            ErrorCode::NoBackend => 32,
            ErrorCode::Internal => 99,
            ErrorCode::Unknown(n) => n,
        }
    }
}

impl From<ErrorCode> for u16 {
    fn from(code: ErrorCode) -> u16 {
        code.as_u16()
    }
}

impl From<u16> for ErrorCode {
    fn from(n: u16) -> ErrorCode {
        match n {
            1 => ErrorCode::SessionNotFound,
            2 => ErrorCode::AlreadyBound,
            3 => ErrorCode::UidMismatch,
            4 => ErrorCode::Conflict,
            5 => ErrorCode::SessionLimit,
            6 => ErrorCode::WrongFrontend,
            7 => ErrorCode::SessionMoved,
            10 => ErrorCode::FrameTooLarge,
            11 => ErrorCode::Malformed,
            12 => ErrorCode::VersionMismatch,
            20 => ErrorCode::DeadlineExceeded,
            21 => ErrorCode::PeerClosed,
            22 => ErrorCode::Unavailable,
            23 => ErrorCode::Overloaded,
            24 => ErrorCode::LimitExceeded,
            25 => ErrorCode::Unauthorized,
            26 => ErrorCode::NotDurable,
            30 => ErrorCode::Unsupported,
            31 => ErrorCode::UnknownRoute,
            32 => ErrorCode::NoBackend,
            99 => ErrorCode::Internal,
            other => ErrorCode::Unknown(other),
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            ErrorCode::SessionNotFound => "session not found",
            ErrorCode::AlreadyBound => "already bound",
            ErrorCode::UidMismatch => "uid mismatch",
            ErrorCode::Conflict => "conflict",
            ErrorCode::SessionLimit => "session limit",
            ErrorCode::WrongFrontend => "wrong frontend",
            ErrorCode::SessionMoved => "session moved",
            ErrorCode::FrameTooLarge => "frame too large",
            ErrorCode::Malformed => "malformed",
            ErrorCode::VersionMismatch => "version mismatch",
            ErrorCode::DeadlineExceeded => "deadline exceeded",
            ErrorCode::PeerClosed => "peer closed",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::LimitExceeded => "limit exceeded",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::NotDurable => "applied, not yet durable",
            ErrorCode::Unsupported => "unsupported",
            ErrorCode::UnknownRoute => "unknown route",
            ErrorCode::NoBackend => "no backend",
            ErrorCode::Internal => "internal error",
            ErrorCode::Unknown(n) => return write!(f, "unknown error code {n}"),
        };
        f.write_str(name)
    }
}

/// A typed error as it travels in a [`Response`](crate::Response): a code a
/// program can match on and a message a person can read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct RpcError {
    /// What went wrong, for programs.
    pub code: ErrorCode,
    /// What went wrong, for people (never contains raw session ids or tokens).
    pub message: String,
}

impl RpcError {
    /// Builds an error from a code and a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        RpcError {
            code,
            message: message.into(),
        }
    }
}

/// Why a byte stream could not be decoded (or a message encoded).
///
/// Following tokio-util's decoder contract, any of these means the stream is
/// corrupt and its connection should be closed; "need more bytes" is not an
/// error but `Ok(None)`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// A frame header announced (or an encoder produced) more bytes than allowed.
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    FrameTooLarge {
        /// The announced or produced body length.
        len: usize,
        /// The configured maximum.
        max: usize,
    },
    /// A frame with an empty body.
    #[error("empty frame")]
    EmptyFrame,
    /// A message followed by bytes that belong to no message.
    #[error("trailing bytes after the message")]
    TrailingBytes,
    /// A complete frame whose body is not a valid message.
    #[error("malformed message body")]
    Malformed(#[source] rmp_serde::decode::Error),
    /// A message that could not be encoded.
    #[error("cannot encode message")]
    Encode(#[source] rmp_serde::encode::Error),
    /// The transport failed underneath the codec.
    #[error("transport error")]
    Io(#[from] std::io::Error),
}

impl CodecError {
    /// The wire code that describes this error to a peer.
    pub fn code(&self) -> ErrorCode {
        match self {
            CodecError::FrameTooLarge { .. } => ErrorCode::FrameTooLarge,
            CodecError::EmptyFrame | CodecError::TrailingBytes | CodecError::Malformed(_) => {
                ErrorCode::Malformed
            }
            CodecError::Encode(_) => ErrorCode::Internal,
            CodecError::Io(_) => ErrorCode::PeerClosed,
        }
    }
}

/// An error and its causes, shown as `what failed: why: why`, each once.
pub fn chain<'a>(err: &'a (dyn std::error::Error + 'static)) -> Chain<'a> {
    Chain(err)
}

/// See [`chain`].
#[derive(Clone, Copy, Debug)]
pub struct Chain<'a>(&'a (dyn std::error::Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(err) = cause {
            write!(f, ": {err}")?;
            cause = err.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_through_u16() {
        for n in 0..200u16 {
            let code = ErrorCode::from(n);
            assert_eq!(code.as_u16(), n);
        }
        assert_eq!(ErrorCode::from(4), ErrorCode::Conflict);
        assert_eq!(ErrorCode::from(1234), ErrorCode::Unknown(1234));
    }

    #[test]
    fn a_chain_shows_each_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::BrokenPipe, "broken pipe");
        let err = CodecError::Io(io);
        assert_eq!(err.to_string(), "transport error");
        assert_eq!(chain(&err).to_string(), "transport error: broken pipe");
    }
}
