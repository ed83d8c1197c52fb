//! The Pomelo/Pinus "hybrid" client protocol, byte-compatible with the npm
//! package `pinus-protocol`: the package layer ([`package`]), the message
//! layer inside data packages ([`message`]) and the JSON handshake
//! ([`handshake`]). No I/O, like the rest of this crate.

pub mod handshake;
pub mod message;
pub mod package;
pub mod protobuf;
pub mod routes;

pub use handshake::{HandshakeRequest, HandshakeSys};
pub use message::{encode_parts, ClientMessage, MessageType, Route};
pub use package::{Package, PackageCodec, PackageType, MAX_PACKAGE_BODY};
pub use routes::{RouteFuture, RouteHandler, RouteTable};

/// Why client bytes could not be decoded (or a package encoded).
///
/// Every variant means the client broke the protocol; the connector closes
/// that one connection.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientProtocolError {
    /// A package type other than 1–5.
    #[error("unknown package type {0}")]
    UnknownPackageType(u8),
    /// A package body over the configured maximum.
    #[error("package body of {len} bytes exceeds the maximum of {max}")]
    PackageTooLarge {
        /// The announced or produced length.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// A data package with no message in it.
    #[error("empty message")]
    EmptyMessage,
    /// A message type other than request, notify, response or push.
    #[error("unknown message type {0}")]
    UnknownMessageType(u8),
    /// A message id longer than 5 bytes, or cut short.
    #[error("bad message id")]
    BadMessageId,
    /// A route cut short.
    #[error("truncated route")]
    TruncatedRoute,
    /// A route that is not UTF-8.
    #[error("route is not UTF-8")]
    RouteNotUtf8,
    /// A route longer than 255 bytes (cannot be encoded uncompressed).
    #[error("route longer than 255 bytes")]
    RouteTooLong,
    /// A message of a type that carries a route, without one.
    #[error("message without a route")]
    MissingRoute,
    /// The stream ended inside a package.
    #[error("stream ended inside a package")]
    Truncated,
    /// The transport failed underneath the codec.
    #[error("transport error: {0}")]
    Io(String),
}

impl From<std::io::Error> for ClientProtocolError {
    fn from(err: std::io::Error) -> Self {
        ClientProtocolError::Io(err.to_string())
    }
}

/// An application error from a request handler, as the client sees it:
/// the response body `{"code": code, "msg": message}`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("handler error {code}: {message}")]
pub struct HandlerError {
    /// The code the client sees (500 unless the handler chose another).
    pub code: u32,
    /// A message for the client.
    pub message: String,
}

impl HandlerError {
    /// A code-500 error with a message.
    pub fn new(message: impl Into<String>) -> Self {
        HandlerError {
            code: 500,
            message: message.into(),
        }
    }

    /// An error with its own code.
    pub fn with_code(code: u32, message: impl Into<String>) -> Self {
        HandlerError {
            code,
            message: message.into(),
        }
    }

    /// The JSON response body for the client.
    pub fn to_body(&self) -> bytes::Bytes {
        bytes::Bytes::from(
            serde_json::json!({ "code": self.code, "msg": self.message }).to_string(),
        )
    }
}

/// The server type of a route `serverType.handler.method` (three non-empty
/// parts), or `None` when the route does not have that shape.
///
/// ```
/// use session_proxy_protocol::client::server_type_of;
/// assert_eq!(server_type_of("chat.chatHandler.send"), Some("chat"));
/// assert_eq!(server_type_of("chat.send"), None);
/// assert_eq!(server_type_of("chat..send"), None);
/// ```
pub fn server_type_of(route: &str) -> Option<&str> {
    let mut parts = route.split('.');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(t), Some(h), Some(m), None) if !t.is_empty() && !h.is_empty() && !m.is_empty() => {
            Some(t)
        }
        _ => None,
    }
}

/// Decodes a client's JSON body into `T` (an empty body reads as `null`);
/// a body that does not fit is a code-400 [`HandlerError`].
pub fn decode_json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, HandlerError> {
    let raw: &[u8] = if body.is_empty() { b"null" } else { body };
    serde_json::from_slice(raw)
        .map_err(|e| HandlerError::with_code(400, format!("request body does not fit: {e}")))
}

/// Encodes a handler's answer as a JSON body.
pub fn encode_json_body<T: serde::Serialize + ?Sized>(
    value: &T,
) -> Result<bytes::Bytes, HandlerError> {
    serde_json::to_vec(value)
        .map(bytes::Bytes::from)
        .map_err(|e| HandlerError::new(format!("response does not encode: {e}")))
}
