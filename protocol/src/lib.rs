//! Wire types, framing and error codes of the session-proxy cluster RPC.
//!
//! This crate does no I/O: it turns [`Message`]s into bytes and back over a
//! [`bytes::BytesMut`], so the same code serves the frontend's RPC server, the
//! backend's RPC client, tests and fuzzers.
//!
//! # Layout
//! - [`message`]: the frames — the version handshake ([`Hello`],
//!   [`HelloReply`]), multiplexed [`Request`]/[`Response`] pairs with a `u64` id
//!   and a relative deadline, one-way notifies, cancels and pings.
//! - [`calls`]: every cluster call, defined once in a table: its arguments,
//!   its typed reply, its direction ([`FrontendCall`], [`BackendCall`]) and
//!   its metadata; and the [`SessionSnapshot`] a backend works on.
//! - [`auth`]: [`Secret`] and the HMAC challenge–response that
//!   authenticates both ends of a cluster link.
//! - [`codec`]: [`MessageCodec`] ([`FrontendCodec`], [`BackendCodec`]), a
//!   length-delimited frame (`u32` big-endian
//!   length, then a MessagePack body) with an enforced maximum size, checked
//!   *before* anything is allocated.
//! - [`error`]: [`ErrorCode`] and [`RpcError`], the typed errors that travel on
//!   the wire, and [`CodecError`], what a decoder reports when a stream is corrupt.
//! - [`id`]: [`SessionId`], the cluster-wide session id.
//! - [`inflight`]: [`InFlight`], calls waiting for responses by id, used by
//!   both ends of a connection.
//! - [`client`]: the Pomelo/Pinus client protocol (packages, messages,
//!   handshake) that client connectors speak.
//! - [`text`]: [`text::log_safe`], peer-chosen strings made safe to log.
//! - [`config`]: [`ConfigError`], how every configuration is checked.
//! - [`sync`]: locks that stay usable after a panic elsewhere.
//! - `tls` (feature `tls`): PEM reading and the TLS error both ends share.
//!
//! # Example
//! ```
//! use bytes::BytesMut;
//! use session_proxy_protocol::{
//!     BackendCodec, Bind, Call, FrontendCodec, Message, Request, SessionId,
//! };
//! use std::time::Duration;
//! use tokio_util::codec::Decoder;
//!
//! // A backend asks the frontend that owns session 42 to bind it.
//! let backend = BackendCodec::new(64 * 1024);
//! let msg = Message::Request(Request::new(
//!     7,
//!     Duration::from_secs(5),
//!     Bind { sid: SessionId::from_raw(42), uid: "alice".into() },
//! ));
//! let mut buf = BytesMut::new();
//! backend.encode_to(&msg, &mut buf).expect("a small message encodes");
//! // Half a frame is not an error: the frontend's decoder asks for more.
//! let mut frontend = FrontendCodec::new(64 * 1024);
//! let mut half = buf.split_to(buf.len() / 2);
//! assert!(frontend.decode(&mut half).expect("a prefix is not corrupt").is_none());
//! half.unsplit(buf);
//! assert_eq!(frontend.decode(&mut half).expect("whole frame").as_ref(), Some(&msg));
//! // The reply travels as the bytes of the call's own reply type.
//! let reply = Bind::encode_reply(&()).expect("encodes");
//! assert_eq!(Bind::decode_reply(reply).expect("decodes"), ());
//! ```

pub mod auth;
pub mod calls;
pub mod client;
pub mod codec;
pub mod config;
pub mod error;
pub mod id;
pub mod inflight;
pub mod message;
pub mod sync;
pub mod text;
#[cfg(feature = "tls")]
pub mod tls;

pub use auth::Secret;
pub use calls::ADOPT_METHOD;
pub use calls::{
    Adopt, BackendCall, BackendCallKind, Bind, Broadcast, Call, CalleeError, Drain, FrontendCall,
    FrontendCallKind, GetByUid, GetSession, Handle, KeyWrite, KickBySid, KickByUid, Precondition,
    Push, PushToSids, PushToUids, Relay, RelayAll, Remote, RemoteReply, RevokeUid, ServeBackend,
    ServeFrontend, ServedRemotes, SessionInfo, SessionSnapshot, Setting, Target, Unbind,
    UserSessions,
};
pub use codec::{BackendCodec, FrontendCodec, MessageCodec, DEFAULT_MAX_FRAME, FRAME_HEADER_LEN};
pub use config::ConfigError;
pub use error::{chain, CodecError, ErrorCode, RpcError};
pub use id::SessionId;
pub use inflight::{InFlight, RegisterError};
pub use message::{
    unix_ms, ClockOffset, Hello, HelloReply, Message, Request, Response, Role, MAGIC,
    PROTOCOL_VERSION,
};
