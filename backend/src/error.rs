//! The backend's error type.

use session_proxy_protocol::{CodecError, ConfigError, ErrorCode, RpcError};
use std::sync::Arc;
use std::time::Duration;

/// What failed in a backend operation.
///
/// [`Error::code`] maps every variant onto the wire's [`ErrorCode`], so a
/// handler can match on one enum whether the frontend refused a call or the
/// connection failed on the way.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The frontend answered with an error (unknown session, conflict, …).
    #[error("frontend {frontend} refused the call")]
    Remote {
        /// The frontend that answered.
        frontend: String,
        /// Its answer.
        #[source]
        source: RpcError,
    },
    /// The frontend applied the change but could not make it durable yet
    /// (its session store is failing). Later reads see the change, and the
    /// frontend writes it once the store is back; a crash of that frontend
    /// before then loses it. Do not apply it again as if it had failed.
    #[error("frontend {frontend} applied the change, not yet durable: {message}")]
    NotDurable {
        /// The frontend that answered.
        frontend: String,
        /// What the frontend said about its store.
        message: String,
    },
    /// The session's client resumed on another frontend, which holds the
    /// session now; nothing was applied. Address `to` (read the session
    /// there again before a conditional write: this snapshot is stale).
    #[error("the session moved from frontend {frontend} to {to}")]
    SessionMoved {
        /// The frontend called (the session's old owner).
        frontend: String,
        /// The frontend that holds the session now.
        to: String,
    },
    /// No response within the call's deadline.
    #[error("call to frontend {frontend} got no response within {after:?}")]
    DeadlineExceeded {
        /// The frontend called.
        frontend: String,
        /// The deadline.
        after: Duration,
    },
    /// The link died while the call was pending; the call may or may not
    /// have been applied.
    #[error("connection to frontend {frontend} lost")]
    ConnectionLost {
        /// The frontend called.
        frontend: String,
        /// Why the link ended (shared by every call that was pending on it).
        #[source]
        source: Arc<LinkError>,
    },
    /// The frontend cannot be reached right now; the call was not sent.
    #[error("frontend {frontend} unavailable")]
    Unavailable {
        /// The frontend called.
        frontend: String,
        /// Why the last attempt to reach it failed.
        #[source]
        source: Arc<LinkError>,
    },
    /// Too many calls are pending on the connection; the call was not sent.
    #[error("too many calls in flight to frontend {frontend} (limit {limit})")]
    Overloaded {
        /// The frontend called.
        frontend: String,
        /// The configured limit.
        limit: usize,
    },
    /// No frontend with this id is known to the
    /// [`BackendSessionService`](crate::BackendSessionService).
    #[error("unknown frontend {0}")]
    UnknownFrontend(String),
    /// A value could not be encoded to MessagePack.
    #[error("cannot encode the value of key {key:?}")]
    Encode {
        /// The key being set.
        key: String,
        /// What the encoder said.
        #[source]
        source: rmp_serde::encode::Error,
    },
    /// A push body could not be encoded to JSON.
    #[error("cannot encode the push body as JSON")]
    EncodeJson(#[source] serde_json::Error),
    /// A stored value does not decode as the requested type.
    #[error("cannot decode the value of key {key:?} as the requested type")]
    Decode {
        /// The key being read.
        key: String,
        /// What the decoder said.
        #[source]
        source: rmp_serde::decode::Error,
    },
    /// A configuration field cannot work; nothing was started.
    #[error("invalid backend configuration")]
    Config(#[from] ConfigError),
    /// The frontend's reply does not decode as the reply of the call made
    /// (a peer of another build, or a corrupt stream). The call may have
    /// been applied.
    #[error("frontend {frontend} sent a reply to {call} that cannot be read")]
    BadReply {
        /// The frontend called.
        frontend: String,
        /// The call's kind name.
        call: &'static str,
        /// What the decoder said.
        #[source]
        source: CodecError,
    },
}

impl Error {
    /// The wire code that describes this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::Remote { source, .. } => source.code,
            Error::NotDurable { .. } => ErrorCode::NotDurable,
            Error::SessionMoved { .. } => ErrorCode::SessionMoved,
            Error::DeadlineExceeded { .. } => ErrorCode::DeadlineExceeded,
            Error::ConnectionLost { .. } => ErrorCode::PeerClosed,
            Error::Unavailable { .. } | Error::UnknownFrontend(_) => ErrorCode::Unavailable,
            Error::Overloaded { .. } => ErrorCode::Overloaded,
            Error::Encode { .. } | Error::Decode { .. } | Error::EncodeJson(_) => {
                ErrorCode::Malformed
            }
            Error::BadReply { source, .. } => source.code(),
            Error::Config(_) => ErrorCode::Internal,
        }
    }
}

/// Why a link to a frontend could not be opened, or ended.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// The TCP connect failed.
    #[error("connect to {addr}")]
    Connect {
        /// The address dialled.
        addr: String,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The TCP connect took longer than `connect_timeout`.
    #[error("connect to {addr} timed out")]
    ConnectTimeout {
        /// The address dialled.
        addr: String,
    },
    /// The TLS handshake failed (certificate, name, protocol).
    #[error("TLS handshake with {addr}")]
    Tls {
        /// The address dialled.
        addr: String,
        /// What rustls said.
        #[source]
        source: std::io::Error,
    },
    /// The frontend answered no handshake (TLS or hello) in time.
    #[error("no handshake reply in time")]
    HandshakeTimeout,
    /// The frontend asked for the cluster secret and this backend has none.
    #[error("the frontend requires the cluster secret; none is configured")]
    SecretRequired,
    /// The frontend's proof did not check out.
    #[error("the frontend failed authentication (another cluster secret?)")]
    FrontendUnauthenticated,
    /// This backend has a secret and the frontend proved nothing.
    #[error("the frontend did not authenticate itself; refusing it")]
    FrontendDidNotAuthenticate,
    /// The frontend refused the hello.
    #[error("handshake refused")]
    Refused(#[source] RpcError),
    /// The frontend speaks another protocol version.
    #[error("frontend speaks protocol version {0}")]
    Version(u16),
    /// Another node answers at the frontend's address.
    #[error("expected frontend {expected}, reached {reached}")]
    WrongFrontend {
        /// The frontend this link is for.
        expected: String,
        /// The node that answered.
        reached: String,
    },
    /// A frame that has no place at this point of the conversation.
    #[error("unexpected frame: {0}")]
    Protocol(&'static str),
    /// Sending a frame failed.
    #[error("sending {what}")]
    Send {
        /// What was being sent.
        what: &'static str,
        /// What the codec or socket said.
        #[source]
        source: CodecError,
    },
    /// The stream from the frontend could not be decoded (or read).
    #[error("corrupt stream from frontend")]
    Corrupt(#[source] CodecError),
    /// The frontend closed the connection.
    #[error("frontend closed the connection")]
    Closed,
    /// The frontend answered no ping in time: a half-open connection.
    #[error("frontend stopped answering (no ping reply within {0:?})")]
    Silent(Duration),
    /// The link was stopped on this side (shutdown, or the last handle dropped).
    #[error("link stopped")]
    Stopped,
}
