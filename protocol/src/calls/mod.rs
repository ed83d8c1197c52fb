//! The cluster calls, each defined once.
//!
//! Every call is a struct with its arguments, and one line of the table
//! below says everything else about it: the enum of the direction it travels
//! in ([`FrontendCall`]: a backend asks a frontend; [`BackendCall`]: a
//! frontend asks a backend), its reply type, how that reply is encoded, its
//! kind name for metrics, whether it changes session state, whether it pushes
//! to clients and which one session it addresses. From the table come:
//!
//! - the [`Call`] impl of each struct, so `client.call(Bind { .. })` returns
//!   the typed reply, `()` here;
//! - the direction's wire enum with its metadata (`kind`, `sid`);
//! - the direction's serving trait ([`ServeFrontend`], [`ServeBackend`]),
//!   one method per call, and the enum's `serve`, which dispatches to it and
//!   encodes the reply.
//!
//! A reply travels as the bytes of its own type, and the caller decodes them
//! as the reply type of the call it made: a reply can be undecodable, like
//! any frame, but never "of another call". Adding a call is a table line, its
//! struct's fields and a method of the serving trait; the compiler names
//! every serving side that lacks the method.

use crate::{CodecError, RpcError, SessionId};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::future::Future;

/// One cluster call: its arguments, and through the table everything else.
pub trait Call: Into<Self::Wire> + Send + 'static {
    /// The enum of the direction the call travels in.
    type Wire;
    /// What a successful call returns.
    type Reply: Send + 'static;
    /// The call's kind name, a bounded metric label (`"bind"`).
    const NAME: &'static str;
    /// Its index in the direction's `KINDS`.
    const INDEX: usize;
    /// The reply as it travels.
    fn encode_reply(reply: &Self::Reply) -> Result<Bytes, CodecError>;
    /// The reply from the bytes the peer sent.
    fn decode_reply(bytes: Bytes) -> Result<Self::Reply, CodecError>;
}

/// How replies travel: MessagePack of the reply type, or raw bytes (a
/// handler's JSON answer, passed through untouched).
#[doc(hidden)]
pub mod reply {
    /// MessagePack of the reply type.
    pub mod msgpack {
        use crate::CodecError;
        use bytes::Bytes;

        /// Encodes a reply.
        pub fn encode<T: serde::Serialize>(reply: &T) -> Result<Bytes, CodecError> {
            rmp_serde::to_vec(reply)
                .map(Bytes::from)
                .map_err(CodecError::Encode)
        }

        /// Decodes a reply; bytes after it are an error.
        pub fn decode<T: serde::de::DeserializeOwned>(bytes: Bytes) -> Result<T, CodecError> {
            let mut rest: &[u8] = &bytes;
            let value = rmp_serde::decode::from_read(&mut rest).map_err(CodecError::Malformed)?;
            if rest.is_empty() {
                Ok(value)
            } else {
                Err(CodecError::TrailingBytes)
            }
        }
    }

    /// Raw bytes, untouched.
    pub mod raw {
        use crate::CodecError;
        use bytes::Bytes;

        /// The reply itself.
        pub fn encode(reply: &Bytes) -> Result<Bytes, CodecError> {
            Ok(reply.clone())
        }

        /// The bytes themselves.
        pub fn decode(bytes: Bytes) -> Result<Bytes, CodecError> {
            Ok(bytes)
        }
    }
}

#[macro_use]
mod table;
mod remote;
mod session;

pub use remote::{Adopt, CalleeError, RemoteReply, Target, ADOPT_METHOD};
pub use session::{KeyWrite, Precondition, SessionInfo, SessionSnapshot, Setting};

call_table! {
    /// A call a backend makes on the frontend that owns the sessions: session
    /// operations, pushes, and the link's own `Drain`.
    enum FrontendCall, kinds FrontendCallKind, serve ServeFrontend;

    /// Read one session: `None` when the frontend has no such session.
    GetSession get_session [mutates: false, pushes: false, session: sid] {
        /// The session.
        sid: SessionId,
    } -> Option<SessionSnapshot> as msgpack;

    /// Read every session bound to a uid.
    GetByUid get_by_uid [mutates: false, pushes: false, session: none] {
        /// The user.
        uid: String,
    } -> Vec<SessionSnapshot> as msgpack;

    /// Bind a session to a uid.
    Bind bind [mutates: true, pushes: false, session: sid] {
        /// The session.
        sid: SessionId,
        /// The user.
        uid: String,
    } -> () as msgpack;

    /// Unbind a session from the uid it is bound to.
    Unbind unbind [mutates: true, pushes: false, session: sid] {
        /// The session.
        sid: SessionId,
        /// The uid the caller believes is bound; must match.
        uid: String,
    } -> () as msgpack;

    /// Write (or remove) the named keys, all or nothing. Replies the version
    /// each write now has, in the order of the writes (`None` for a removed
    /// key).
    Push push [mutates: true, pushes: false, session: sid] {
        /// The session.
        sid: SessionId,
        /// The keys to write, in order.
        writes: Vec<KeyWrite>,
    } -> Vec<Option<u64>> as msgpack;

    /// Close one session and tell its client why. Replies how many sessions
    /// were kicked (0 or 1).
    KickBySid kick_by_sid [mutates: true, pushes: false, session: sid] {
        /// The session.
        sid: SessionId,
        /// Sent to the client.
        reason: String,
    } -> u32 as msgpack;

    /// Close every session of a uid. Replies how many were kicked.
    KickByUid kick_by_uid [mutates: true, pushes: false, session: none] {
        /// The user.
        uid: String,
        /// Sent to the clients.
        reason: String,
    } -> u32 as msgpack;

    /// Send a server push to sessions by id. Replies the sessions it could
    /// not reach (closed, or their client too slow).
    PushToSids push_to_sids [mutates: false, pushes: true, session: none] {
        /// The push route, e.g. `onChat`.
        route: String,
        /// The body, JSON for Pomelo clients; opaque to the frontend.
        body: Bytes,
        /// The sessions.
        sids: Vec<SessionId>,
    } -> Vec<SessionId> as msgpack;

    /// Send a server push to every session of each uid, once per session.
    /// Replies the uids it reached no session of.
    PushToUids push_to_uids [mutates: false, pushes: true, session: none] {
        /// The push route.
        route: String,
        /// The body.
        body: Bytes,
        /// The users.
        uids: Vec<String>,
    } -> Vec<String> as msgpack;

    /// Send a server push to every session of the frontend (or only the
    /// bound ones). Replies how many sessions it reached.
    Broadcast broadcast [mutates: false, pushes: true, session: none] {
        /// The push route.
        route: String,
        /// The body.
        body: Bytes,
        /// Skip sessions that are not bound to a uid.
        bound_only: bool,
    } -> u32 as msgpack;

    /// Every session of a uid, on every frontend that shares the session
    /// store, with metadata.
    UserSessions user_sessions [mutates: false, pushes: false, session: none] {
        /// The user.
        uid: String,
    } -> Vec<SessionInfo> as msgpack;

    /// Ends every session of a uid: kicks the connected ones on this
    /// frontend, closes the parked ones, and deletes all of them from the
    /// shared store. Replies the sessions that were ended.
    RevokeUid revoke_uid [mutates: true, pushes: false, session: none] {
        /// The user.
        uid: String,
        /// Sent to connected clients.
        reason: String,
    } -> Vec<SessionId> as msgpack;

    /// The calling backend is draining: forward it no new client requests
    /// (route them to its peers); its connection stays open for the requests
    /// already running and its own session calls. Answered once the
    /// frontend has stopped picking it.
    Drain drain [mutates: false, pushes: false, session: none] {} -> () as msgpack;

    /// A remote call of the calling backend, for a backend of `server_type`
    /// that this frontend picks by `target` and calls with [`Remote`] on its
    /// link, within what is left of this call's deadline. Replies what the
    /// callee replied ([`RemoteReply`] bytes), untouched.
    Relay relay [mutates: false, pushes: false, session: none] {
        /// The callee's server type.
        server_type: String,
        /// Which of its nodes.
        target: Target,
        /// What the callee runs.
        call: Remote,
    } -> Bytes as raw;

    /// [`Relay`] to every backend of `server_type` at once; replies each
    /// node's id and outcome.
    RelayAll relay_all [mutates: false, pushes: false, session: none] {
        /// The callees' server type.
        server_type: String,
        /// What each runs.
        call: Remote,
    } -> Vec<(String, Result<Bytes, RpcError>)> as msgpack;

    /// The remote methods the calling backend serves (all of them, replacing
    /// what it said before): this frontend refuses client requests for them
    /// itself. Sent as a notify when the link starts and whenever they change.
    ServedRemotes served_remotes [mutates: false, pushes: false, session: none] {
        /// Their routes, `serverType.remoteName.method`.
        routes: Vec<String>,
    } -> () as msgpack;
}

call_table! {
    /// A call a frontend makes on a backend.
    enum BackendCall, kinds BackendCallKind, serve ServeBackend;

    /// A client request (or notify) forwarded to a backend: run the handler
    /// of `route` on this session. Replies the handler's answer for the
    /// client, JSON, including application errors (`{"code": …}`), which are
    /// not RPC failures; it travels as it is.
    Handle handle [mutates: false, pushes: false, session: none] {
        /// The full route, `serverType.handler.method`.
        route: String,
        /// The session as the frontend had it when the request arrived.
        session: SessionSnapshot,
        /// The client's body (JSON), untouched.
        body: Bytes,
    } -> Bytes as raw;

    /// A remote call from another backend, relayed by this link's frontend:
    /// run the remote method `route` (never a client handler). Replies
    /// [`RemoteReply`] bytes: the method's MessagePack answer, or its error.
    Remote remote [mutates: false, pushes: false, session: none] {
        /// The method, `serverType.remoteName.method`.
        route: String,
        /// The caller's node id.
        caller: String,
        /// The player's session the call is about, as its frontend has it
        /// (the relaying frontend is its owner).
        session: Option<SessionSnapshot>,
        /// The arguments, MessagePack.
        args: Bytes,
    } -> Bytes as raw;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_gives_each_call_its_kind_flags_and_session() {
        let sid = SessionId::from_raw(7);
        let bind: FrontendCall = Bind {
            sid,
            uid: "a".into(),
        }
        .into();
        assert_eq!(bind.kind(), FrontendCallKind::Bind);
        assert_eq!(bind.kind().as_str(), "bind");
        assert_eq!(Bind::NAME, "bind");
        assert_eq!(Bind::INDEX, FrontendCallKind::Bind as usize);
        assert!(bind.kind().mutates() && !bind.kind().pushes_to_clients());
        assert_eq!(bind.sid(), Some(sid));
        let push: FrontendCall = PushToSids {
            route: "onChat".into(),
            body: Bytes::new(),
            sids: vec![sid],
        }
        .into();
        assert!(push.kind().pushes_to_clients() && !push.kind().mutates());
        assert_eq!(push.sid(), None);
        let names: Vec<&str> = FrontendCallKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(names.len(), 16);
        let distinct: std::collections::HashSet<&str> = names.iter().copied().collect();
        assert_eq!(distinct.len(), names.len(), "each kind has its own name");
        assert!(FrontendCallKind::ALL
            .iter()
            .enumerate()
            .all(|(i, k)| *k as usize == i));
    }

    #[test]
    fn replies_round_trip_as_their_own_type_and_nothing_else() {
        let versions = vec![Some(3), None];
        let bytes = Push::encode_reply(&versions).expect("encodes");
        assert_eq!(
            Push::decode_reply(bytes.clone()).expect("decodes"),
            versions
        );
        // The bytes of one call's reply are not another's.
        assert!(GetSession::decode_reply(bytes).is_err());
        let mut long = Bind::encode_reply(&()).expect("encodes").to_vec();
        long.push(0xc0);
        assert!(matches!(
            Bind::decode_reply(Bytes::from(long)),
            Err(CodecError::TrailingBytes)
        ));
        // A handler's JSON travels untouched.
        let json = Bytes::from_static(br#"{"code":200}"#);
        assert_eq!(Handle::encode_reply(&json).expect("raw"), json);
    }
}
