//! Every setting of the frontend, in one place: sessions, the RPC server
//! backends call, the client gateway, the session store. Each config is
//! checked once when the node starts ([`RpcServer::bind`](crate::RpcServer::bind),
//! [`Gateway::bind`](crate::Gateway::bind)); a field that cannot work is
//! refused with a [`ConfigError`] that names it.

mod store;

#[cfg(feature = "redis")]
pub use store::RedisStoreConfig;
pub use store::StoreOptions;

use session_proxy_protocol::config::{check, ConfigError, AT_LEAST_ONE, POSITIVE};
use session_proxy_protocol::{Secret, DEFAULT_MAX_FRAME};
use std::time::Duration;

/// What happens when a uid that already holds its limit of sessions
/// ([`SessionConfig::sessions_per_uid`], one by default) binds another one.
/// With a shared store the limit holds across every frontend sharing it,
/// made atomic in the store (`SessionService::bind_everywhere`, which the
/// RPC server uses for backends' binds).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum SingleSessionPolicy {
    /// A uid may have any number of sessions (the default, as in Pinus).
    #[default]
    Off,
    /// The new bind wins: the uid's oldest sessions are kicked with reason
    /// `"replaced"`, wherever they are.
    KickOld,
    /// The old session wins: the new bind fails with
    /// [`Error::SessionLimit`](crate::Error::SessionLimit).
    RejectNew,
}

/// Settings of a [`SessionService`](crate::SessionService).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SessionConfig {
    /// This frontend's id, unique in the cluster. Default: `"frontend-1"`.
    pub frontend_id: String,
    /// The single-session policy. Default: [`SingleSessionPolicy::Off`].
    pub single_session: SingleSessionPolicy,
    /// How many sessions one uid may have under the policy (cluster-wide
    /// with a shared store). Default: 1.
    pub sessions_per_uid: usize,
    /// Capacity of each session's owner queue (kicks and pushes on their way
    /// to the client connection); a client that lets it fill up is closed as
    /// too slow. Default: 1024.
    pub owner_queue: usize,
    /// The most sessions this frontend holds; `try_create` (and so the
    /// gateway's handshake) refuses more. Default: 1 000 000.
    pub max_sessions: usize,
    /// The most settings (keys) one session may hold. Default: 256.
    pub max_settings: usize,
    /// The most bytes (keys plus values) one session's settings may hold.
    /// Default: 64 KiB.
    pub max_settings_bytes: usize,
    /// Default idle timeout: a session whose client sends no request or
    /// notify for this long is closed with reason `"expired"` (heartbeats
    /// do not count). Per session: `SessionService::set_timeouts`.
    /// Default: `None` (never).
    pub idle_timeout: Option<Duration>,
    /// Default absolute lifetime: a session older than this is closed with
    /// reason `"expired"`, however active. Default: `None` (unlimited).
    pub lifetime: Option<Duration>,
    /// After a resume rotates a session's token, how long the previous token
    /// still works (a client that missed the reply retries with it).
    /// Default: 5 s.
    pub token_overlap: Duration,
    /// Capacity of the session event channel; a subscriber that falls further
    /// behind skips events (and is told how many). Default: 4096.
    pub event_capacity: usize,
}

impl SessionConfig {
    /// Defaults, with the given frontend id.
    pub fn new(frontend_id: impl Into<String>) -> Self {
        SessionConfig {
            frontend_id: frontend_id.into(),
            ..SessionConfig::default()
        }
    }
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            frontend_id: "frontend-1".into(),
            single_session: SingleSessionPolicy::Off,
            sessions_per_uid: 1,
            owner_queue: 1024,
            max_sessions: 1_000_000,
            max_settings: 256,
            max_settings_bytes: 64 * 1024,
            idle_timeout: None,
            lifetime: None,
            token_overlap: Duration::from_secs(5),
            event_capacity: 4096,
        }
    }
}

/// Settings of the [`RpcServer`](crate::RpcServer) that backends call.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RpcConfig {
    /// The largest frame accepted from or sent to a backend, in bytes.
    /// Default: 1 MiB.
    pub max_frame: usize,
    /// How long a new connection may take to authenticate: TLS, hello and
    /// proof together. Default: 2 s.
    pub handshake_timeout: Duration,
    /// The most authenticated backend connections served at once; a backend
    /// past it is refused with `Overloaded`. Strangers never take these
    /// slots: they only count once a peer has passed the handshake.
    /// Default: 1024.
    pub max_connections: usize,
    /// The most connections still in their handshake at once; more are
    /// closed as soon as they are accepted. Default: 128.
    pub max_unauthenticated: usize,
    /// The most connections in their handshake from one IP address; more
    /// from it are closed as soon as they are accepted. Default: 16.
    pub max_unauthenticated_per_ip: usize,
    /// The largest frame a peer may send before it is authenticated (the
    /// hello and the proof are well under 1 KiB). Default: 4 KiB.
    pub hello_max_frame: usize,
    /// The most forwarded requests waiting on one backend connection; more
    /// get an `Overloaded` error at once. Default: 65 536.
    pub max_in_flight: usize,
    /// Frames queued for one backend connection before senders wait.
    /// Default: 4096.
    pub queue: usize,
    /// The cluster secret: when set, a backend must prove it knows it (HMAC
    /// challenge–response) before any call. Default: `None`. (The
    /// `session-proxy` command reads it from `SESSION_PROXY_SECRET`; the
    /// library never reads the environment.)
    pub secret: Option<Secret>,
    /// Serve without a cluster secret on an address other than loopback.
    /// Without a secret any peer that reaches the port acts as a backend: it
    /// reads sessions, and pushes and broadcasts to every client. Off by
    /// default: [`RpcServer::bind`](crate::RpcServer::bind) refuses such an
    /// address (and warns on loopback). Default: `false`.
    pub insecure: bool,
    /// A backend connection with no traffic for this long is closed as
    /// dead (backends ping every `BackendConfig::ping_interval`, 10 s by
    /// default, when they have nothing else to send). Default: 45 s.
    pub idle_timeout: Duration,
    /// Serve backends over TLS with this certificate. Default: `None`.
    #[cfg(feature = "tls")]
    pub tls: Option<crate::ServerTls>,
    /// A push to clients (by sid, by uid, or broadcast) is answered once
    /// every connection it reached has written it to its socket, or after
    /// this long (or half the call's deadline, if that is shorter), whichever
    /// comes first. A backend that waits for its answers is then paced by
    /// delivery instead of filling client queues. Zero answers as soon as
    /// the pushes are queued. Default: 1 s.
    pub push_write_wait: Duration,
    /// Also take backends of this process without TCP, at
    /// `inproc://<name>` ([`RpcServer::in_process_addr`]): a backend given
    /// that address as its frontend's (`BackendSessionService::add_frontend`)
    /// links through an in-memory pipe, with the same frames, hello, secret,
    /// deadlines and ordering as over TCP. One binary can so hold a frontend
    /// and its backends, and move a backend into a process of its own by
    /// giving it the TCP address instead. Names are unique per process.
    /// Default: `None`.
    ///
    /// [`RpcServer::in_process_addr`]: crate::RpcServer::in_process_addr
    pub in_process: Option<String>,
}

impl Default for RpcConfig {
    fn default() -> Self {
        RpcConfig {
            max_frame: DEFAULT_MAX_FRAME,
            handshake_timeout: Duration::from_secs(2),
            max_connections: 1024,
            max_unauthenticated: 128,
            max_unauthenticated_per_ip: 16,
            hello_max_frame: 4096,
            max_in_flight: 65_536,
            queue: 4096,
            secret: None,
            insecure: false,
            idle_timeout: Duration::from_secs(45),
            #[cfg(feature = "tls")]
            tls: None,
            push_write_wait: Duration::from_secs(1),
            in_process: None,
        }
    }
}

impl SessionConfig {
    /// Checks every field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check(
            "SessionConfig",
            &[
                (
                    "frontend_id",
                    !self.frontend_id.is_empty(),
                    "must not be empty",
                ),
                ("owner_queue", self.owner_queue > 0, AT_LEAST_ONE),
                ("sessions_per_uid", self.sessions_per_uid > 0, AT_LEAST_ONE),
                ("max_sessions", self.max_sessions > 0, AT_LEAST_ONE),
                ("max_settings", self.max_settings > 0, AT_LEAST_ONE),
                (
                    "max_settings_bytes",
                    self.max_settings_bytes > 0,
                    AT_LEAST_ONE,
                ),
                (
                    "idle_timeout",
                    self.idle_timeout != Some(Duration::ZERO),
                    POSITIVE,
                ),
                ("lifetime", self.lifetime != Some(Duration::ZERO), POSITIVE),
                ("event_capacity", self.event_capacity > 0, AT_LEAST_ONE),
            ],
        )
    }
}

/// The smallest frame limit that still fits a hello and a snapshot header.
const MIN_FRAME: usize = 1024;

impl RpcConfig {
    /// Checks every field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check(
            "RpcConfig",
            &[
                (
                    "max_frame",
                    self.max_frame >= MIN_FRAME,
                    "must be at least 1024 bytes",
                ),
                (
                    "handshake_timeout",
                    !self.handshake_timeout.is_zero(),
                    POSITIVE,
                ),
                ("max_connections", self.max_connections > 0, AT_LEAST_ONE),
                (
                    "max_unauthenticated",
                    self.max_unauthenticated > 0,
                    AT_LEAST_ONE,
                ),
                (
                    "max_unauthenticated_per_ip",
                    self.max_unauthenticated_per_ip > 0,
                    AT_LEAST_ONE,
                ),
                (
                    "hello_max_frame",
                    (256..=self.max_frame).contains(&self.hello_max_frame),
                    "must be between 256 bytes and max_frame",
                ),
                ("max_in_flight", self.max_in_flight > 0, AT_LEAST_ONE),
                ("queue", self.queue > 0, AT_LEAST_ONE),
                ("idle_timeout", !self.idle_timeout.is_zero(), POSITIVE),
            ],
        )
    }
}

/// Settings of a [`Gateway`](crate::Gateway).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct GatewayConfig {
    /// This frontend's server type: routes starting with it run here, all
    /// others are forwarded. Default: `"connector"`.
    pub server_type: String,
    /// The heartbeat interval told to clients (whole seconds, at least 1).
    /// Default: 10 s.
    pub heartbeat: Duration,
    /// A client silent for this long (no package at all, heartbeats
    /// included) is closed. Default: `None`, twice `heartbeat`, as Pomelo
    /// clients expect.
    pub heartbeat_timeout: Option<Duration>,
    /// How long a client may take from connecting to its handshake ack.
    /// Default: 5 s.
    pub handshake_timeout: Duration,
    /// How long the handshake hooks ([`Gateway::check_client`] and
    /// [`Gateway::on_handshake`]) may take, together, for one client; past
    /// it the client is refused with code 500. Default: 3 s.
    ///
    /// [`Gateway::check_client`]: crate::Gateway::check_client
    /// [`Gateway::on_handshake`]: crate::Gateway::on_handshake
    pub hook_timeout: Duration,
    /// The largest package body accepted from a client. Default: 64 KiB.
    pub max_package: usize,
    /// Requests of one client being handled at once. A client that sends
    /// more (pipelining) is not refused: its connection stops reading until
    /// answers go out, so TCP slows it down. Default: 64.
    pub max_pending_requests: usize,
    /// The most bytes waiting to be written to one client. Past it the
    /// connection takes no more answers or pushes into its buffer and reads
    /// no more requests until the client has taken what is written; the
    /// requests it may have in flight also shrink as its answers grow (at
    /// most this many bytes' worth, by the running average answer size).
    /// A connection's memory is then about this plus one answer per
    /// request still in flight. Default: 256 KiB.
    pub max_outgoing_bytes: usize,
    /// The deadline of a forwarded request. Default: 5 s.
    pub request_deadline: Duration,
    /// How long one write to a client may block before the client is
    /// dropped as dead. Default: 10 s.
    pub write_timeout: Duration,
    /// The most client connections at once; more wait in the backlog.
    /// Default: 100 000.
    pub max_connections: usize,
    /// The most connections from one client IP address at once; more are
    /// closed on accept (players behind one NAT share an address, so keep
    /// this generous). Default: 256.
    pub max_connections_per_ip: usize,
    /// How long a session waits for its client to come back with its resume
    /// token after the connection drops (the token is sent in the handshake
    /// reply's `user.resumeToken`). Zero: no resume, a drop closes the
    /// session at once. Default: 30 s.
    pub resume_grace: Duration,
    /// Refuse a resume token presented by a client whose type
    /// (`sys.type`) or device (`user.device`) differs from the client the
    /// session was created for. Default: `false`.
    pub resume_same_client: bool,
    /// Refuse a handshake whose resume token is stale (its session is gone,
    /// or the token is malformed, rotated out or another client's) with code
    /// 500, as before 0.1's node API. Off by default: such a client gets a
    /// fresh session (code 200, `user.resumed: false`, and
    /// `user.resumeRefused` saying why), which stock Pomelo clients handle,
    /// where they take a 500 as fatal. A store that does not answer is
    /// refused either way ("try again"): the session may still exist.
    /// Default: `false`.
    pub strict_resume: bool,
    /// On shutdown, how long a connection waits for the answers to its
    /// requests in flight (they are written to it) before it is kicked with
    /// [`shutdown_kick_reason`](Self::shutdown_kick_reason) and closed. Keep
    /// it under the drain given to
    /// [`GatewayServer::shutdown`](crate::GatewayServer::shutdown).
    /// Default: 1 s.
    pub shutdown_grace: Duration,
    /// The reason of the kick a client gets when its frontend shuts down or
    /// drains: a word its code can act on. Its session stays parked, so the
    /// client reconnects (through the gate) and resumes with its token.
    /// Default: `"reconnect"`.
    pub shutdown_kick_reason: String,
    /// Serve TLS (raw packages over TLS, and `wss`) on the same port, told
    /// apart from plain connections by their first byte. Default: `None`.
    #[cfg(feature = "tls")]
    pub tls: Option<crate::ServerTls>,
    /// The route dictionary: when not empty, routes are numbered from 1 in
    /// this order, sent in the handshake, and compressed on the wire.
    /// Default: empty.
    pub dictionary: Vec<String>,
    /// Protobuf bodies (Pomelo's `useProtobuf`): the server's and the
    /// clients' protos, loaded with
    /// [`Protos::from_json_text`](session_proxy_protocol::client::protobuf::Protos::from_json_text)
    /// from `serverProtos.json` and `clientProtos.json`.
    ///
    /// A client that announces `sys.protoVersion` in its handshake (every
    /// Pomelo protobuf client does, `0` when it holds none) gets the protos
    /// in its handshake reply unless it holds the current version, and
    /// then speaks protobuf on every route that has a proto: its requests
    /// are decoded here and reach handlers and backends as JSON; answers
    /// (by the request's route) and pushes are encoded here. Routes
    /// without a proto stay JSON, and so does every route for clients that
    /// do not announce `protoVersion`. Default: `None`.
    pub protos: Option<std::sync::Arc<session_proxy_protocol::client::protobuf::Protos>>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            server_type: "connector".into(),
            heartbeat: Duration::from_secs(10),
            heartbeat_timeout: None,
            handshake_timeout: Duration::from_secs(5),
            hook_timeout: Duration::from_secs(3),
            max_package: 64 * 1024,
            max_pending_requests: 64,
            max_outgoing_bytes: 256 * 1024,
            request_deadline: Duration::from_secs(5),
            write_timeout: Duration::from_secs(10),
            max_connections: 100_000,
            max_connections_per_ip: 256,
            resume_grace: Duration::from_secs(30),
            resume_same_client: false,
            strict_resume: false,
            shutdown_grace: Duration::from_secs(1),
            shutdown_kick_reason: "reconnect".into(),
            #[cfg(feature = "tls")]
            tls: None,
            dictionary: Vec::new(),
            protos: None,
        }
    }
}

impl GatewayConfig {
    /// Defaults, with the given server type.
    pub fn new(server_type: impl Into<String>) -> Self {
        GatewayConfig {
            server_type: server_type.into(),
            ..GatewayConfig::default()
        }
    }
}

impl GatewayConfig {
    /// Checks every field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check(
            "GatewayConfig",
            &[
                (
                    "server_type",
                    !self.server_type.is_empty(),
                    "must not be empty",
                ),
                (
                    "heartbeat",
                    self.heartbeat >= Duration::from_secs(1),
                    "must be at least 1 s",
                ),
                (
                    "heartbeat_timeout",
                    self.heartbeat_timeout.is_none_or(|t| t > self.heartbeat),
                    "must be longer than heartbeat",
                ),
                (
                    "handshake_timeout",
                    !self.handshake_timeout.is_zero(),
                    POSITIVE,
                ),
                ("hook_timeout", !self.hook_timeout.is_zero(), POSITIVE),
                (
                    "max_package",
                    self.max_package >= 64,
                    "must be at least 64 bytes",
                ),
                (
                    "max_outgoing_bytes",
                    self.max_outgoing_bytes >= 1024,
                    "must be at least 1024 bytes",
                ),
                (
                    "max_pending_requests",
                    self.max_pending_requests > 0,
                    AT_LEAST_ONE,
                ),
                (
                    "request_deadline",
                    !self.request_deadline.is_zero(),
                    POSITIVE,
                ),
                ("write_timeout", !self.write_timeout.is_zero(), POSITIVE),
                ("max_connections", self.max_connections > 0, AT_LEAST_ONE),
                (
                    "max_connections_per_ip",
                    self.max_connections_per_ip > 0,
                    AT_LEAST_ONE,
                ),
            ],
        )
    }

    /// How long a client may stay silent: `heartbeat_timeout`, else twice
    /// the heartbeat (in the whole seconds clients are told).
    pub(crate) fn silence_limit(&self) -> Duration {
        self.heartbeat_timeout
            .unwrap_or_else(|| self.heartbeat_whole_secs() * 2)
    }

    /// The heartbeat in the whole seconds the handshake tells clients.
    pub(crate) fn heartbeat_whole_secs(&self) -> Duration {
        Duration::from_secs(self.heartbeat.as_secs_f64().round().max(1.0) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        SessionConfig::default()
            .validate()
            .expect("session defaults");
        RpcConfig::default().validate().expect("rpc defaults");
        GatewayConfig::default()
            .validate()
            .expect("gateway defaults");
        StoreOptions::default().validate().expect("store defaults");
    }

    #[test]
    fn a_bad_field_is_named() {
        let s = SessionConfig {
            owner_queue: 0,
            ..SessionConfig::default()
        };
        let err = s.validate().expect_err("zero queue");
        assert_eq!((err.config, err.field), ("SessionConfig", "owner_queue"));
        assert_eq!(
            err.to_string(),
            "SessionConfig.owner_queue: must be at least 1"
        );

        let r = RpcConfig {
            queue: 0,
            ..RpcConfig::default()
        };
        assert_eq!(r.validate().expect_err("zero").field, "queue");

        let mut g = GatewayConfig {
            heartbeat_timeout: Some(Duration::from_secs(5)),
            ..GatewayConfig::default()
        };
        assert_eq!(
            g.validate().expect_err("shorter than heartbeat").field,
            "heartbeat_timeout"
        );
        g.heartbeat_timeout = None;
        assert_eq!(g.silence_limit(), Duration::from_secs(20));
        g.max_pending_requests = 0;
        assert_eq!(
            g.validate().expect_err("zero").field,
            "max_pending_requests"
        );
    }
}
