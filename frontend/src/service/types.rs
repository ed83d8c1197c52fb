//! What embedding code exchanges with the session service.

use bytes::Bytes;
use session_proxy_protocol::SessionId;
use std::collections::HashMap;
use std::net::SocketAddr;

/// What a client connection tells the frontend when it opens a session.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectInfo {
    /// The client's address, when the transport has one. Default: `None`.
    pub remote_addr: Option<SocketAddr>,
    /// Free-form metadata (client type, version, device …). Default: empty.
    pub metadata: HashMap<String, String>,
}

impl ConnectInfo {
    /// Info with a client address and no metadata.
    pub fn from_addr(addr: SocketAddr) -> Self {
        ConnectInfo {
            remote_addr: Some(addr),
            metadata: HashMap::new(),
        }
    }
}

/// Something the frontend wants the connection that owns a session to do.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outbound {
    /// Send a kick with this reason to the client, then close. The session
    /// is already closed when this arrives.
    Kick {
        /// Why, as the client will read it.
        reason: String,
    },
    /// Send a server push to the client.
    Push {
        /// The push route, e.g. `onChat`.
        route: String,
        /// The encoded body.
        body: Bytes,
    },
}

/// A change to the session table that embedding code may want to follow.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SessionEvent {
    /// A session was bound to a uid.
    Bound {
        /// The session.
        sid: SessionId,
        /// The uid.
        uid: String,
    },
    /// A session was unbound from a uid.
    Unbound {
        /// The session.
        sid: SessionId,
        /// The uid it was bound to.
        uid: String,
    },
    /// A session's client dropped; the session waits for a resume.
    Parked {
        /// The session.
        sid: SessionId,
    },
    /// A new connection took a session over with its resume token.
    Resumed {
        /// The session.
        sid: SessionId,
    },
    /// A session moved to another frontend: its client resumed there (this
    /// frontend's copy was fenced in the store), so this frontend let it go.
    /// The session lives on; its close hook does not run here. A session
    /// handed over at a drain stays in the table until the process ends
    /// and is not reported one by one.
    Moved {
        /// The session.
        sid: SessionId,
        /// The uid it was bound to, if any.
        uid: Option<String>,
        /// The frontend that holds it now (empty when the store named none).
        to: String,
    },
    /// A session ended for good and was removed (exactly once per session;
    /// the close hook ran with the same reason).
    Closed {
        /// The session.
        sid: SessionId,
        /// The uid it was bound to, if any.
        uid: Option<String>,
        /// Why it ended.
        reason: crate::EndReason,
    },
}
