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
//! - `service`: [`BackendSessionService`], frontends by id, `get`,
//!   `get_by_uid`, kicks, pushes, `ready`, `shutdown`.
//! - `session`: [`BackendSession`], typed `get`/`set`/`remove` on the
//!   snapshot, plain and conditional pushes, `export`.
//! - `handler`: [`Handlers`], typed handlers for the client requests
//!   frontends forward here (`chat.chatHandler.send` …).
//! - `serve`: runs those requests, each on a task of the service's tracker.
//! - `channel`: [`ChannelService`], named groups of users pushed to with
//!   one RPC per frontend.
//! - `link`: [`FrontendClient`], one multiplexed link per frontend with
//!   deadlines, redial with backoff, pings, and pipelining. It carries calls
//!   out and hands incoming requests to `serve`; it never runs handlers.
//! - `config`: [`BackendConfig`], checked once when the service starts.
//! - `error`: [`Error`], with [`Error::code`] mapping onto the wire codes;
//!   [`LinkError`] says why a link failed, `session_proxy_protocol::ConfigError` which field is bad.
//! - TLS (feature `tls`): [`BackendConfig::tls`] takes a
//!   `session_proxy_link::LinkTls`, the authorities frontends are checked
//!   against.
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
//! use session_proxy_backend::{BackendConfig, BackendSessionService};
//! use session_proxy_protocol::{ErrorCode, SessionId};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), session_proxy_backend::Error> {
//! let backends = BackendSessionService::new(BackendConfig::new("area-1"))?;
//! backends.add_frontend("connector-1", "127.0.0.1:9"); // nothing listens there
//! let err = backends
//!     .get("connector-1", SessionId::from_raw(1))
//!     .await
//!     .expect_err("no frontend");
//! assert_eq!(err.code(), ErrorCode::Unavailable);
//! println!("{err}"); // "frontend connector-1 unavailable: connect to 127.0.0.1:9: ..."
//! # Ok(())
//! # }
//! ```
//! A complete, runnable cluster (frontend and backends on loopback) is the
//! `session-proxy demo` command of the root crate.

mod channel;
mod config;
mod error;
mod everywhere;
mod handler;
mod link;
pub mod metrics;
mod remote;
mod serve;
mod service;
mod session;

pub use channel::ChannelService;
pub use config::BackendConfig;
pub use error::{Error, LinkError};
pub use handler::{HandlerError, Handlers};
pub use link::{FrontendClient, PendingCall};
pub use remote::{RemoteCall, RemoteCx, RemoteError, Remotes};
pub use service::BackendSessionService;
pub use session::BackendSession;
