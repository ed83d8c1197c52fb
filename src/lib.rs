//! session-proxy: the session layer of a clustered realtime or game server.
//!
//! Frontend nodes own the authoritative client sessions; backend nodes work
//! on them through [`BackendSession`] proxies that send changes back over a
//! MessagePack TCP RPC, last write wins per key. This crate re-exports the
//! three member crates and holds the `session-proxy` command.
//!
//! # Layout
//! - [`protocol`]: wire types, framing and error codes (no I/O).
//! - [`frontend`]: [`SessionService`] and the [`RpcServer`] backends call.
//! - [`backend`]: [`BackendSessionService`], [`BackendSession`] and the
//!   RPC client.
//! - [`client`]: [`client::PomeloClient`], a Pomelo/Pinus protocol client
//!   (TCP or WebSocket) for simulated players and tests.
//! - [`chat`]: Pomelo's chatofpomelo on session-proxy: gate, connectors,
//!   chat servers (`cargo run --example chat`).
//! - [`cluster`]: a cluster from one TOML file, one node per process
//!   (`session-proxy run --config … --node …`).
//! - [`bench`](mod@bench): the load generator behind `session-proxy bench`.
//! - [`bench_app`]: the routes the benchmarks drive (also on Pinus).
//! - [`demo`]: the in-process demo cluster behind `session-proxy demo`.
//!
//! # Example
//! One frontend and one backend on loopback; the backend binds a session
//! and pushes a setting, and the frontend sees it:
//! ```
//! use session_proxy::{BackendSessionService, ClientConfig, ConnectInfo, RpcConfig, RpcServer,
//!     SessionConfig, SessionService};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let sessions = SessionService::new(SessionConfig::new("connector-1"));
//! let server = RpcServer::bind("127.0.0.1:0".parse()?, sessions.clone(), RpcConfig::default()).await?;
//! let client = sessions.create(ConnectInfo::default()); // a client connected
//!
//! let backend = BackendSessionService::new(ClientConfig::new("area-1"));
//! backend.add_frontend("connector-1", server.local_addr().to_string());
//! let mut session = backend.get("connector-1", client.sid()).await?.expect("open");
//! session.bind("alice").await?;
//! session.set("room", "lobby")?;
//! session.push("room").await?;
//!
//! let seen = sessions.get(client.sid()).expect("open");
//! assert_eq!(seen.uid.as_deref(), Some("alice"));
//! assert_eq!(rmp_serde::from_slice::<String>(&seen.settings["room"].value)?, "lobby");
//! # Ok(())
//! # }
//! ```

pub mod bench;
pub mod bench_app;
pub mod chat;
pub mod client;
pub mod cluster;
pub mod demo;

pub use session_proxy_backend as backend;
pub use session_proxy_frontend as frontend;
pub use session_proxy_protocol as protocol;

pub use session_proxy_backend::{
    BackendSession, BackendSessionService, ClientConfig, FrontendClient,
};
pub use session_proxy_frontend::{
    ConnectInfo, Outbound, RpcConfig, RpcServer, SessionConfig, SessionEvent, SessionOwner,
    SessionService, SingleSessionPolicy,
};
pub use session_proxy_protocol::{ErrorCode, SessionId};
