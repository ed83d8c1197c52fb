//! The frontend's error type.

use session_proxy_protocol::{ErrorCode, RpcError, SessionId};

/// What failed in a frontend operation.
///
/// Messages name sessions by their redacted tag, never by the raw id.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No session with that id lives on this frontend.
    #[error("session {} not found", .0.redacted())]
    SessionNotFound(SessionId),
    /// The session is bound to another uid already; unbind it first.
    #[error("session {} is already bound to another uid", .sid.redacted())]
    AlreadyBound {
        /// The session.
        sid: SessionId,
    },
    /// `unbind` named a uid the session is not bound to.
    #[error("session {} is not bound to that uid", .sid.redacted())]
    UidMismatch {
        /// The session.
        sid: SessionId,
    },
    /// A conditional write found the key at another version.
    #[error("key {key:?} moved: expected {expected}, found {found}")]
    Conflict {
        /// The key whose precondition failed.
        key: String,
        /// What the writer expected, in words.
        expected: String,
        /// What the frontend has, in words.
        found: String,
    },
    /// The single-session policy (reject mode) refused a second session of a uid.
    #[error("uid already has a session on this frontend (single-session policy)")]
    SessionLimit,
    /// The session's owner (its client connection) stopped listening.
    #[error("the client connection of session {} is gone", .0.redacted())]
    OwnerGone(SessionId),
    /// The session's outgoing queue is full: its client reads too slowly.
    #[error("the outgoing queue of session {} is full", .0.redacted())]
    OwnerQueueFull(SessionId),
    /// A configured limit would be crossed; nothing was changed.
    #[error("limit exceeded: at most {limit} {what}")]
    LimitExceeded {
        /// What is limited.
        what: &'static str,
        /// The limit.
        limit: usize,
    },
    /// A listener (for backends or for clients) could not be set up.
    #[error("cannot listen on {addr}")]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The in-process listener could not be set up (its name is taken).
    #[error(transparent)]
    InProcess(#[from] session_proxy_link::inproc::InProcessError),
    /// A configuration field cannot work; nothing was started.
    #[error("invalid configuration")]
    Config(#[from] session_proxy_protocol::ConfigError),
    /// The session store failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

impl Error {
    /// The wire code for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::SessionNotFound(_) => ErrorCode::SessionNotFound,
            Error::AlreadyBound { .. } => ErrorCode::AlreadyBound,
            Error::UidMismatch { .. } => ErrorCode::UidMismatch,
            Error::Conflict { .. } => ErrorCode::Conflict,
            Error::SessionLimit => ErrorCode::SessionLimit,
            Error::OwnerGone(_) => ErrorCode::PeerClosed,
            Error::OwnerQueueFull(_) => ErrorCode::Overloaded,
            Error::LimitExceeded { .. } => ErrorCode::LimitExceeded,
            Error::Listen { .. } | Error::Config(_) | Error::InProcess(_) => ErrorCode::Internal,
            Error::Store(_) => ErrorCode::Unavailable,
        }
    }
}

impl From<Error> for RpcError {
    fn from(err: Error) -> RpcError {
        RpcError::new(err.code(), err.to_string())
    }
}
