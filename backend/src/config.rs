//! The backend's configuration, checked once when the service starts.

use session_proxy_protocol::ConfigError;
use session_proxy_protocol::{Secret, DEFAULT_MAX_FRAME};
use std::time::Duration;

/// Settings of a backend: its identity, and the links it keeps to frontends.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct BackendConfig {
    /// This backend's node id, sent in the hello. Default: `"backend-1"`.
    pub node_id: String,
    /// The server type this backend serves forwarded requests for (e.g.
    /// `"chat"`), announced in the hello. Default: `None` (serves none).
    pub server_type: Option<String>,
    /// The deadline of a call that names none, and of a forwarded request
    /// sent as a notify. Default: 5 s.
    pub deadline: Duration,
    /// How long one dial may take. Default: 2 s.
    pub connect_timeout: Duration,
    /// How long the frontend may take to answer the hello (and the TLS
    /// handshake). Default: 2 s.
    pub handshake_timeout: Duration,
    /// The first redial delay after a failed attempt; doubles up to
    /// `backoff_max`, with ±25 % jitter. Default: 50 ms.
    pub backoff_min: Duration,
    /// The longest redial delay. Default: 2 s.
    pub backoff_max: Duration,
    /// The most calls pending on one link; more fail at once with
    /// [`Error::Overloaded`](crate::Error::Overloaded). Default: 65 536.
    pub max_in_flight: usize,
    /// Frames queued for a link's writer before callers wait. Default: 4096.
    pub queue: usize,
    /// Bytes of answers to forwarded requests queued for a link's writer
    /// before handlers that finish wait to answer (an answer larger than
    /// this waits for the queue to be empty of answers). A frontend that
    /// reads slowly then holds up handlers, not this backend's memory; an
    /// answer that cannot be queued before its request's deadline is
    /// dropped (its caller has been told). Default: 8 MiB.
    pub max_queued_answer_bytes: usize,
    /// The largest frame sent or accepted, in bytes. Default: 1 MiB.
    pub max_frame: usize,
    /// The cluster secret: when set, this backend proves it knows it and
    /// requires the frontend to prove it too. Default: `None`. (The
    /// `session-proxy` command reads it from `SESSION_PROXY_SECRET`; the
    /// library never reads the environment.)
    pub secret: Option<Secret>,
    /// When nothing arrives from a frontend for this long, ping it; no
    /// answer within the same time ends the link (a half-open connection)
    /// and redials. Default: 10 s.
    pub ping_interval: Duration,
    /// A frontend of this process (an `inproc://` address) runs the client
    /// requests it forwards here by calling this backend directly: the
    /// handler runs on the client connection's task, with no frame encoded
    /// and no task crossed unless it waits. Its session calls still take
    /// the link, and its pushes and one-way calls still reach the frontend
    /// before its answer. `false` forwards through the in-process link as
    /// over TCP, each request on a task of its own, so a handler that
    /// computes long before its first await holds up no client's
    /// connection. No effect over TCP. Default: `true`.
    pub in_process_direct: bool,
    /// Dial frontends over TLS, trusting these authorities. Default: `None`.
    #[cfg(feature = "tls")]
    pub tls: Option<session_proxy_link::LinkTls>,
}

impl Default for BackendConfig {
    fn default() -> Self {
        BackendConfig {
            node_id: "backend-1".into(),
            server_type: None,
            deadline: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            handshake_timeout: Duration::from_secs(2),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(2),
            max_in_flight: 65_536,
            queue: 4096,
            max_queued_answer_bytes: 8 * 1024 * 1024,
            max_frame: DEFAULT_MAX_FRAME,
            secret: None,
            ping_interval: Duration::from_secs(10),
            in_process_direct: true,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }
}

/// The smallest frame limit that still fits a hello and a snapshot header.
const MIN_FRAME: usize = 1024;

impl BackendConfig {
    /// Defaults, with the given node id.
    pub fn new(node_id: impl Into<String>) -> Self {
        BackendConfig {
            node_id: node_id.into(),
            ..BackendConfig::default()
        }
    }

    /// Checks every field; the error names the first one that cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |field: &'static str, problem: &'static str| {
            Err(ConfigError::new("BackendConfig", field, problem))
        };
        let positive = [
            ("deadline", self.deadline),
            ("connect_timeout", self.connect_timeout),
            ("handshake_timeout", self.handshake_timeout),
            ("backoff_min", self.backoff_min),
            ("ping_interval", self.ping_interval),
        ];
        if self.node_id.is_empty() {
            return bad("node_id", "must not be empty");
        }
        if self.server_type.as_deref() == Some("") {
            return bad("server_type", "must not be empty (use None to serve none)");
        }
        for (field, value) in positive {
            if value.is_zero() {
                return bad(field, "must be more than zero");
            }
        }
        if self.backoff_max < self.backoff_min {
            return bad("backoff_max", "must be at least backoff_min");
        }
        if self.max_in_flight == 0 {
            return bad("max_in_flight", "must be at least 1");
        }
        if self.queue == 0 {
            return bad("queue", "must be at least 1");
        }
        if self.max_queued_answer_bytes == 0 {
            return bad("max_queued_answer_bytes", "must be at least 1");
        }
        if self.max_frame < MIN_FRAME {
            return Err(ConfigError::new(
                "BackendConfig",
                "max_frame",
                format!("must be at least {MIN_FRAME} bytes"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_each_bad_field_is_named() {
        assert!(BackendConfig::default().validate().is_ok());
        type Spoil = fn(&mut BackendConfig);
        let cases: [(&str, Spoil); 6] = [
            ("node_id", |c| c.node_id.clear()),
            ("deadline", |c| c.deadline = Duration::ZERO),
            ("ping_interval", |c| c.ping_interval = Duration::ZERO),
            ("backoff_max", |c| c.backoff_max = Duration::from_millis(1)),
            ("queue", |c| c.queue = 0),
            ("max_frame", |c| c.max_frame = 10),
        ];
        for (field, spoil) in cases {
            let mut config = BackendConfig::default();
            spoil(&mut config);
            let err = config.validate().expect_err(field);
            assert_eq!(err.field, field);
            assert!(
                err.to_string()
                    .starts_with(&format!("BackendConfig.{field}:")),
                "{err}"
            );
        }
    }
}
