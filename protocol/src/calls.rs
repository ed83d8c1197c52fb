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
use std::collections::BTreeMap;
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

macro_rules! call_table {
    (
        $(#[$enum_meta:meta])*
        enum $Enum:ident, kinds $Kind:ident, serve $Serve:ident;
        $(
            $(#[$meta:meta])*
            $Name:ident $snake:ident
                [mutates: $mutates:literal, pushes: $pushes:literal, session: $sid:tt]
                { $( $(#[$fmeta:meta])* $field:ident : $fty:ty ),* $(,)? }
                -> $Reply:ty as $codec:ident;
        )*
    ) => {
        $(
            $(#[$meta])*
            #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
            pub struct $Name {
                $( $(#[$fmeta])* pub $field: $fty, )*
            }

            impl From<$Name> for $Enum {
                fn from(call: $Name) -> Self {
                    $Enum::$Name(call)
                }
            }

            impl Call for $Name {
                type Wire = $Enum;
                type Reply = $Reply;
                const NAME: &'static str = stringify!($snake);
                const INDEX: usize = $Kind::$Name as usize;
                fn encode_reply(reply: &$Reply) -> Result<Bytes, CodecError> {
                    reply::$codec::encode(reply)
                }
                fn decode_reply(bytes: Bytes) -> Result<$Reply, CodecError> {
                    reply::$codec::decode(bytes)
                }
            }
        )*

        $(#[$enum_meta])*
        #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
        pub enum $Enum {
            $(
                #[doc = concat!("A [`", stringify!($Name), "`] call.")]
                $Name($Name),
            )*
        }

        #[doc = concat!("The kind of a [`", stringify!($Enum), "`], a bounded metric label.")]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $Kind {
            $(
                #[doc = concat!("[`", stringify!($Name), "`].")]
                $Name,
            )*
        }

        impl $Kind {
            /// Every kind, in index order.
            pub const ALL: &'static [$Kind] = &[$($Kind::$Name),*];

            /// The kind's name (`"bind"`).
            pub fn as_str(self) -> &'static str {
                match self {
                    $($Kind::$Name => stringify!($snake),)*
                }
            }

            /// Whether a call of this kind changes session state (and so
            /// must be durable before it is acknowledged, when a store is
            /// attached).
            pub fn mutates(self) -> bool {
                match self {
                    $($Kind::$Name => $mutates,)*
                }
            }

            /// Whether a call of this kind pushes to clients (and is answered
            /// once the pushes are written).
            pub fn pushes_to_clients(self) -> bool {
                match self {
                    $($Kind::$Name => $pushes,)*
                }
            }
        }

        impl $Enum {
            /// The call's kind.
            pub fn kind(&self) -> $Kind {
                match self {
                    $($Enum::$Name(_) => $Kind::$Name,)*
                }
            }

            /// The one session the call addresses, for calls that address one.
            pub fn sid(&self) -> Option<SessionId> {
                match self {
                    $($Enum::$Name(call) => call_table!(@sid call $sid),)*
                }
            }

            /// Runs the call on `server` and encodes its reply.
            pub async fn serve<S: $Serve + ?Sized>(
                self,
                server: &S,
                cx: &S::Cx,
            ) -> Result<Bytes, RpcError> {
                match self {
                    $(
                        $Enum::$Name(call) => {
                            let reply = server.$snake(call, cx).await?;
                            <$Name as Call>::encode_reply(&reply).map_err(|err| {
                                RpcError::new(
                                    crate::ErrorCode::Internal,
                                    format!("cannot encode the reply: {err}"),
                                )
                            })
                        }
                    )*
                }
            }
        }

        #[doc = concat!(
            "The side that serves [`", stringify!($Enum), "`]s: one method per call. ",
            "`Cx` is what the server passes along with each call."
        )]
        pub trait $Serve: Sync {
            /// What comes with each call besides its arguments.
            type Cx: Sync;
            $(
                #[doc = concat!("Runs a [`", stringify!($Name), "`].")]
                fn $snake(
                    &self,
                    call: $Name,
                    cx: &Self::Cx,
                ) -> impl Future<Output = Result<$Reply, RpcError>> + Send;
            )*
        }
    };
    (@sid $call:ident none) => {{
        let _ = $call;
        None
    }};
    (@sid $call:ident $field:ident) => {
        Some($call.$field)
    };
}

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

/// Which node of a server type a relayed remote call goes to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Target {
    /// The node that owns this key: a rendezvous hash over the type's
    /// nodes, the same node for the same key while the nodes stay (as a
    /// client request routed by the same key).
    Key(String),
    /// The node with this id.
    Node(String),
    /// The player's node: for a server type whose players stay on their
    /// node (a sticky type), the node their binding names; for the others,
    /// the node that owns the uid as a key (as a client request of that
    /// player is routed).
    Uid(String),
}

/// The remote method, under a sticky server type (`"<type>.sticky.adopt"`),
/// that the node a player's binding moved to is called with before the
/// player's next request reaches it: its game loads the player's state.
/// Optional: when the node serves no such method, the request goes on.
pub const ADOPT_METHOD: &str = "sticky.adopt";

/// The arguments of [`ADOPT_METHOD`]: whose binding moved, and from which
/// node (drained, or away for too long).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Adopt {
    /// The player.
    pub uid: String,
    /// The node that held the player before.
    pub from: String,
}

/// What a remote method answered: its MessagePack answer, or the error it
/// returned (its code and message).
pub type RemoteReply = Result<Bytes, CalleeError>;

impl Remote {
    /// A call of `route` by node `caller`, about `session` if given, with
    /// `args` as MessagePack.
    pub fn new<A: Serialize + ?Sized>(
        route: &str,
        caller: &str,
        session: Option<SessionSnapshot>,
        args: &A,
    ) -> Result<Remote, CodecError> {
        Ok(Remote {
            route: route.to_string(),
            caller: caller.to_string(),
            session,
            args: Bytes::from(rmp_serde::to_vec_named(args).map_err(CodecError::Encode)?),
        })
    }

    /// The answer in a callee's reply bytes: the typed answer, or the
    /// error the method returned.
    pub fn answer<R: serde::de::DeserializeOwned>(
        reply: Bytes,
    ) -> Result<Result<R, CalleeError>, CodecError> {
        let outcome: RemoteReply = reply::msgpack::decode(reply)?;
        match outcome {
            Ok(answer) => reply::msgpack::decode(answer).map(Ok),
            Err(callee) => Ok(Err(callee)),
        }
    }
}

/// The error a remote method returned.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message} (code {code})")]
pub struct CalleeError {
    /// The method's code.
    pub code: u32,
    /// Its message.
    pub message: String,
}

/// One key of a [`Push`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyWrite {
    /// The setting's key.
    pub key: String,
    /// The new MessagePack-encoded value, or `None` to remove the key.
    pub value: Option<Bytes>,
    /// What the key must look like on the frontend for the write to apply.
    pub expect: Precondition,
}

/// The condition a [`KeyWrite`] puts on the frontend's current state of a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Precondition {
    /// Write unconditionally: last write wins.
    Any,
    /// The key must not exist.
    Absent,
    /// The key must exist with exactly this version.
    Version(u64),
}

/// One setting as the frontend stores it: opaque MessagePack bytes and the
/// version the frontend gave the last write of the key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Setting {
    /// The value, MessagePack-encoded by a backend; the frontend never decodes it.
    pub value: Bytes,
    /// Assigned by the frontend on every write; never reused within a session.
    pub version: u64,
}

/// A copy of a session's state at one moment, sent to backends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionSnapshot {
    /// The session id.
    pub sid: SessionId,
    /// The owning frontend.
    pub frontend_id: String,
    /// The bound user, if any.
    pub uid: Option<String>,
    /// The settings.
    pub settings: BTreeMap<String, Setting>,
}

/// What is known about a session beyond its settings: where and when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    /// The session id.
    pub sid: SessionId,
    /// The frontend that owns it.
    pub frontend_id: String,
    /// The bound user.
    pub uid: Option<String>,
    /// Created, in ms since the Unix epoch.
    pub created_unix_ms: u64,
    /// Last client activity, in ms since the Unix epoch.
    pub last_active_unix_ms: u64,
    /// The client's address.
    pub remote_addr: Option<String>,
    /// Client type, version, device … as the client reported them.
    pub metadata: BTreeMap<String, String>,
    /// Whether its client is away (parked, waiting for a resume).
    pub parked: bool,
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
