//! The backend side of session-proxy: session proxies and the RPC client pool
//! to frontends.
//!
//! Backend handler code never touches a frontend's session map. It gets a
//! [`BackendSession`] — a snapshot plus a handle to the owning frontend —
//! reads and writes the snapshot locally, and sends changes back with
//! [`bind`](BackendSession::bind), [`unbind`](BackendSession::unbind),
//! [`push`](BackendSession::push) and [`push_all`](BackendSession::push_all).
//!
//! # Layout
//! - [`service`]: [`BackendSessionService`], frontends by id, `get`,
//!   `get_by_uid`, `kick_by_sid`, `kick_by_uid`.
//! - [`session`]: [`BackendSession`], typed `get`/`set`/`remove` on the
//!   snapshot, plain and conditional pushes, `export`.
//! - [`handler`]: [`Handlers`], typed handlers for the client requests
//!   frontends forward here (`chat.chatHandler.send` …).
//! - [`channel`]: [`ChannelService`], named groups of users pushed to with
//!   one RPC per frontend.
//! - [`client`]: [`FrontendClient`], one multiplexed connection per frontend
//!   with deadlines, reconnection with backoff, and pipelining.
//! - [`error`]: [`Error`], with [`Error::code`] mapping onto the wire codes.
//!
//! # Example
//! A backend handler that moves a player to another room:
//! ```
//! use session_proxy_backend::{BackendSession, Error};
//!
//! async fn join_room(session: &mut BackendSession, room: &str) -> Result<(), Error> {
//!     session.set("room", room)?;
//!     session.push("room").await // last write wins on the frontend
//! }
//! ```
//! Every call has a deadline and fails with a typed error; here the frontend
//! is not running at all:
//! ```
//! use session_proxy_backend::{BackendSessionService, ClientConfig};
//! use session_proxy_protocol::{ErrorCode, SessionId};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let backends = BackendSessionService::new(ClientConfig::new("area-1"));
//! backends.add_frontend("connector-1", "127.0.0.1:9"); // nothing listens there
//! let err = backends
//!     .get("connector-1", SessionId::from_raw(1))
//!     .await
//!     .expect_err("no frontend");
//! assert_eq!(err.code(), ErrorCode::Unavailable);
//! println!("{err}"); // "frontend connector-1 unavailable: connect to 127.0.0.1:9: ..."
//! # }
//! ```
//! A complete, runnable cluster (frontend and backends on loopback) is the
//! `session-proxy demo` command of the root crate.

pub mod channel;
pub mod client;
pub mod error;
pub mod handler;
pub mod service;
pub mod session;
pub mod tls;

pub use channel::ChannelService;
pub use client::{ClientConfig, FrontendClient, PendingCall};
pub use error::Error;
pub use handler::{HandlerError, Handlers};
pub use service::BackendSessionService;
pub use session::BackendSession;
pub use tls::ClientTls;
