//! The frontend side of session-proxy: the authoritative sessions and the RPC
//! server that backends call.
//!
//! # Layout
//! - `service`: [`SessionService`], every session of this frontend in a
//!   `DashMap` keyed by [`SessionId`], a `uid -> sids` index, per-key
//!   versioned settings stored as opaque MessagePack bytes, the
//!   single-session policy, [`SessionEvent`]s, and the [`SessionOwner`]
//!   handle through which a client connection learns of kicks and pushes.
//! - `rpc`: [`RpcServer`], the inbound side of the cluster links: it
//!   accepts backend connections, checks the version handshake, and applies
//!   each connection's calls in arrival order.
//! - `forward`: the outbound side: [`BackendRegistry`], the backends
//!   connected to this frontend by server type, the [`Router`] that picks
//!   one per request, and forwarding over the backend's own connection.
//! - `gateway`: [`Gateway`], the Pomelo/Pinus client connector (raw TCP
//!   and WebSocket on one port): handshake, heartbeats, forwarding, pushes,
//!   kicks.
//! - `config`: every setting in one place: [`SessionConfig`],
//!   [`RpcConfig`], [`GatewayConfig`], [`StoreOptions`], checked once at
//!   start (`session_proxy_protocol::ConfigError` names the bad field).
//! - `error`: [`Error`], one variant per thing that can fail.
//!
//! # Example
//! A frontend that serves backends on a loopback port:
//! ```
//! use session_proxy_frontend::{ConnectInfo, RpcConfig, RpcServer, SessionConfig, SessionService};
//! use std::time::Duration;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let sessions = SessionService::new(SessionConfig::new("connector-1"));
//! let server = RpcServer::bind("127.0.0.1:0".parse()?, sessions.clone(), RpcConfig::default()).await?;
//! println!("backends connect to {}", server.local_addr());
//!
//! // A client connection opens a session and keeps its owner handle.
//! let owner = sessions.create(ConnectInfo::default());
//! assert!(sessions.get(owner.sid()).is_some());
//!
//! assert!(server.shutdown(Duration::from_secs(1)).await);
//! # Ok(())
//! # }
//! ```
//!
//! [`SessionId`]: session_proxy_protocol::SessionId

mod config;
mod delivery;
mod error;
mod forward;
mod gateway;
mod listener;
pub mod logs;
pub mod metrics;
mod owner;
mod rpc;
mod service;
mod store;
#[cfg(feature = "tls")]
mod tls;

#[cfg(feature = "redis")]
pub use config::RedisStoreConfig;
pub use config::{GatewayConfig, RpcConfig, SessionConfig, SingleSessionPolicy, StoreOptions};
pub use error::Error;
pub use forward::{pick_by_key, BackendRegistry, HashRouter, Router, StickyOptions};
pub use gateway::{
    ClientCheck, CloseContext, Gateway, GatewayServer, HandshakeHook, HookFuture, LocalContext,
    LocalHandlers,
};
pub use rpc::RpcServer;
pub use service::{
    ClosedHook, ConnectInfo, EndReason, HookWork, Outbound, ResumeError, SessionEvent,
    SessionOwner, SessionService,
};
pub use session_proxy_protocol::client::protobuf::{ProtoError, Protos};
#[cfg(feature = "redis")]
pub use store::RedisStore;
pub use store::{
    Admission, Evicted, Fenced, MemoryStore, QueuedPush, Rebound, Refreshed, SessionStore,
    StoreError, StoreFuture, StoredSession,
};
#[cfg(feature = "tls")]
pub use tls::{ServerTls, TlsError};
