//! session-proxy: the session layer of a clustered realtime or game server.
//!
//! Frontend nodes own the authoritative client sessions; backend nodes work
//! on them through [`BackendSession`] proxies that send changes back over a
//! MessagePack TCP RPC, last write wins per key. This crate is a facade: it
//! re-exports the member crates, the cluster file's types and the
//! [`node`] that runs a process. The `session-proxy` command (crate
//! `session-proxy-cli`) runs demos, nodes and benchmarks; depending on this
//! crate compiles none of it.
//!
//! # Layout
//! - [`protocol`]: wire types, framing and error codes (no I/O).
//! - [`link`]: the I/O both ends of a cluster link share (the batching
//!   writer, the in-process transport).
//! - [`frontend`]: [`SessionService`], the [`RpcServer`] backends call, and
//!   the [`Gateway`] that serves Pomelo/Pinus clients.
//! - [`backend`]: [`BackendSessionService`], [`BackendSession`],
//!   [`Handlers`] for forwarded client requests, and the RPC link to each
//!   frontend.
//! - [`registry`]: cluster membership: node records under leases (a static
//!   list, or Redis), and backends that follow the frontends in it.
//! - [`node`] (feature `node`): a [`Node`](node::Node) starts a process's
//!   roles (frontend, backends or both), owns their tasks, and drains them in
//!   the one correct order ([`Node::run_until_signal`](node::Node::run_until_signal)).
//! - [`cluster`] (feature `cluster`): a cluster described in one TOML file,
//!   one node per process.
//! - `cli` (feature `cli`, off by default): the command line of a node
//!   binary, for a game's own `main` (`App::new().backend(..).main()`).
//!
//! # Features
//! All on by default: `node` (the [`node`] module), `redis` (the Redis
//! session store and membership), `etcd` (etcd membership), `websocket`
//! (WebSocket clients on the gateway), `tls` (rustls on cluster links and
//! client connections), `admin` (metrics and health probes), `cluster` (the
//! cluster file).
//!
//! # Example
//! One frontend and one backend on loopback; the backend binds a session
//! and pushes a setting, and the frontend sees it:
//! ```
//! use session_proxy::{BackendSessionService, BackendConfig, ConnectInfo, RpcConfig, RpcServer,
//!     SessionConfig, SessionService};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let sessions = SessionService::new(SessionConfig::new("connector-1"));
//! let server = RpcServer::bind("127.0.0.1:0".parse()?, sessions.clone(), RpcConfig::default()).await?;
//! let client = sessions.create(ConnectInfo::default()); // a client connected
//!
//! let backend = BackendSessionService::new(BackendConfig::new("area-1"))?;
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

#[cfg(feature = "admin")]
pub mod admin;
#[cfg(feature = "cli")]
pub mod cli;
#[cfg(feature = "cluster")]
pub mod cluster;
#[cfg(feature = "node")]
pub mod node;

pub use session_proxy_backend as backend;
pub use session_proxy_filters as filters;
pub use session_proxy_frontend as frontend;
pub use session_proxy_link as link;
pub use session_proxy_protocol as protocol;
pub use session_proxy_registry as registry;

pub use session_proxy_backend::{
    BackendConfig, BackendSession, BackendSessionService, ChannelService, FrontendClient,
    HandlerError, Handlers,
};
pub use session_proxy_frontend::{
    BackendRegistry, ConnectInfo, Gateway, GatewayConfig, GatewayServer, Outbound, RpcConfig,
    RpcServer, SessionConfig, SessionEvent, SessionOwner, SessionService, SingleSessionPolicy,
};
pub use session_proxy_protocol::client::protobuf::Protos;
pub use session_proxy_protocol::{ErrorCode, SessionId};

/// The README's snippets, compiled and run as doc-tests.
#[cfg(all(doctest, feature = "cli", feature = "websocket"))]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
