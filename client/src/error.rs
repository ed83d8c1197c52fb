//! Why a connection or a request failed.

use crate::PomeloEvent;
use session_proxy_protocol::client::ClientProtocolError;
use std::net::SocketAddr;
use std::time::Duration;

/// Why a connection or a request failed. `Display` says what failed; the
/// cause, if any, is in `source()`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The TCP connect failed.
    #[error("cannot connect to {addr}")]
    Connect {
        /// The server's address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The TLS handshake failed.
    #[error("TLS handshake failed")]
    Tls(#[source] std::io::Error),
    /// The WebSocket upgrade, or a WebSocket read or write, failed.
    #[error("WebSocket failed")]
    WebSocket(#[source] Box<tokio_tungstenite::tungstenite::Error>),
    /// A read or write on the socket failed.
    #[error("connection read or write failed")]
    Io(#[source] std::io::Error),
    /// The server did not answer the handshake in time
    /// ([`raw::HANDSHAKE_TIMEOUT`](crate::raw::HANDSHAKE_TIMEOUT)).
    #[error("handshake timed out")]
    HandshakeTimeout,
    /// The server refused the handshake.
    #[error("handshake refused with code {code}: {error}")]
    Refused {
        /// The handshake reply's code (500: refused by the server's hook
        /// or checks; 501: client too old).
        code: u64,
        /// The server's reason.
        error: String,
        /// The server said the same handshake may work later (`"retry":
        /// true`: its session store did not answer); a resume token is
        /// still good.
        retry: bool,
    },
    /// The connection is closed.
    #[error("connection closed")]
    Closed,
    /// The connection closed before the response to this request came.
    #[error("connection closed before the response to {route}")]
    ClosedBefore {
        /// The request's route.
        route: String,
    },
    /// No response within the request timeout.
    #[error("no response to {route} within {after:?}")]
    Timeout {
        /// The request's route.
        route: String,
        /// The timeout.
        after: Duration,
    },
    /// A package or message that does not follow the protocol (or one too
    /// large to send).
    #[error("protocol error")]
    Protocol(#[source] ClientProtocolError),
    /// A handshake reply or a message body that is not JSON.
    #[error("a body that is not JSON")]
    Json(#[source] serde_json::Error),
    /// Something the server must not send where it came.
    #[error("unexpected from the server: {0}")]
    Unexpected(String),
    /// [`next_push`](crate::PomeloClient::next_push) found something else.
    #[error("expected a push, got {0:?}")]
    NotAPush(Box<PomeloEvent>),
    /// [`next_push`](crate::PomeloClient::next_push) waited in vain.
    #[error("no push within {0:?}")]
    NoPush(Duration),
    /// The server sent nothing, not even a heartbeat, for two heartbeat
    /// intervals: the connection is taken for dead.
    #[error("the server sent nothing for {0:?}")]
    Silent(Duration),
    /// A request made while a [`SessionClient`](crate::SessionClient)
    /// reconnects, with [`WhileReconnecting::Fail`](crate::WhileReconnecting::Fail).
    #[error("{route}: the client is reconnecting")]
    Reconnecting {
        /// The request's route.
        route: String,
    },
    /// A request that waited for its session, which did not come back (its
    /// token was stale: a new session started); it was not sent.
    #[error("{route}: the session did not come back (a new one started)")]
    SessionLost {
        /// The request's route.
        route: String,
    },
    /// The entry (a gate, or a picker) gave no connector: its answer.
    #[error("no connector to go to: {0}")]
    NoEntry(String),
    /// The connector's host name did not resolve.
    #[error("cannot resolve {host}")]
    Resolve {
        /// The host name.
        host: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}
