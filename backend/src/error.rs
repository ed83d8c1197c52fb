//! The backend's error type.

use session_proxy_protocol::{ErrorCode, RpcError};
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
    /// No response within the call's deadline.
    #[error("call to frontend {frontend} got no response within {after:?}")]
    DeadlineExceeded {
        /// The frontend called.
        frontend: String,
        /// The deadline.
        after: Duration,
    },
    /// The connection died while the call was pending; the call may or may
    /// not have been applied.
    #[error("connection to frontend {frontend} lost: {cause}")]
    ConnectionLost {
        /// The frontend called.
        frontend: String,
        /// Why the connection ended.
        cause: String,
    },
    /// The frontend cannot be reached right now; the call was not sent.
    #[error("frontend {frontend} unavailable: {cause}")]
    Unavailable {
        /// The frontend called.
        frontend: String,
        /// The last connection error.
        cause: String,
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
    /// The frontend answered with a reply of the wrong kind (a bug on one side).
    #[error("frontend {frontend} sent an unexpected reply to {call}")]
    UnexpectedReply {
        /// The frontend called.
        frontend: String,
        /// The call it answered.
        call: &'static str,
    },
}

impl Error {
    /// The wire code that describes this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::Remote { source, .. } => source.code,
            Error::DeadlineExceeded { .. } => ErrorCode::DeadlineExceeded,
            Error::ConnectionLost { .. } => ErrorCode::PeerClosed,
            Error::Unavailable { .. } | Error::UnknownFrontend(_) => ErrorCode::Unavailable,
            Error::Overloaded { .. } => ErrorCode::Overloaded,
            Error::Encode { .. } | Error::Decode { .. } | Error::EncodeJson(_) => {
                ErrorCode::Malformed
            }
            Error::UnexpectedReply { .. } => ErrorCode::Internal,
        }
    }
}
