//! Frontend configuration.

use session_proxy_protocol::{Secret, DEFAULT_MAX_FRAME};
use std::time::Duration;

/// What happens when a uid that already has a session on this frontend binds
/// another one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum SingleSessionPolicy {
    /// A uid may have any number of sessions (the default, as in Pinus).
    #[default]
    Off,
    /// The new bind wins: older sessions of the uid are kicked with reason
    /// `"replaced"`.
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
    /// How long a new connection may take to send its hello. Default: 5 s.
    pub handshake_timeout: Duration,
    /// The most backend connections served at once; more wait to be accepted.
    /// Default: 1024.
    pub max_connections: usize,
    /// The most forwarded requests waiting on one backend connection; more
    /// get an `Overloaded` error at once. Default: 65 536.
    pub max_in_flight: usize,
    /// Frames queued for one backend connection before senders wait.
    /// Default: 4096.
    pub queue: usize,
    /// The cluster secret: when set, a backend must prove it knows it (HMAC
    /// challenge–response) before any call. Default: `None`, or the
    /// `SESSION_PROXY_SECRET` environment variable when set.
    pub secret: Option<Secret>,
    /// A backend connection with no traffic for this long is closed as
    /// dead (backends ping every `BackendConfig::ping_interval`, 10 s by
    /// default, when they have nothing else to send). Default: 45 s.
    pub idle_timeout: Duration,
    /// Serve backends over TLS with this certificate. Default: `None`.
    pub tls: Option<crate::ServerTls>,
    /// A push to clients (by sid, by uid, or broadcast) is answered once
    /// every connection it reached has written it to its socket, or after
    /// this long (or half the call's deadline, if that is shorter), whichever
    /// comes first. A backend that waits for its answers is then paced by
    /// delivery instead of filling client queues. Zero answers as soon as
    /// the pushes are queued. Default: 1 s.
    pub push_write_wait: Duration,
}

impl Default for RpcConfig {
    fn default() -> Self {
        RpcConfig {
            max_frame: DEFAULT_MAX_FRAME,
            handshake_timeout: Duration::from_secs(5),
            max_connections: 1024,
            max_in_flight: 65_536,
            queue: 4096,
            secret: Secret::from_env("SESSION_PROXY_SECRET"),
            idle_timeout: Duration::from_secs(45),
            tls: None,
            push_write_wait: Duration::from_secs(1),
        }
    }
}
