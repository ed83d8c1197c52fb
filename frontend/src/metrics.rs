//! The frontend's metrics, recorded through the [`metrics`] facade: free
//! when no recorder is installed, and cheap when one is. Every handle is
//! made once (a static, or one per known route) and then only bumped: an
//! atomic add, no lock, no allocation on the request path.
//!
//! Labels stay bounded: a route label comes from the handler table (local
//! routes) or is the server type of a forwarded route; kick reasons are
//! folded into a fixed set; no uid or sid is ever a label.
//!
//! Install a recorder (the `session-proxy` binary does, with `--admin-addr`)
//! before building the services: a handle made before that records nothing.

use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};
use std::sync::LazyLock;
use std::time::Instant;

/// Client connections open now, by transport.
pub const CLIENTS_CONNECTED: &str = "session_proxy_clients_connected";
/// Handshakes answered, by result (`new`, `resumed`, `refused`).
pub const HANDSHAKES: &str = "session_proxy_handshakes_total";
/// Sessions closed with a kick, by reason.
pub const KICKS: &str = "session_proxy_kicks_total";
/// Sessions held now, by state (`open`, `bound`, `parked`), set at scrape.
pub const SESSIONS: &str = "session_proxy_sessions";
/// Resumes, by result (`ok`, `refused`).
pub const RESUMES: &str = "session_proxy_resumes_total";
/// Client requests answered, by route and status (`ok`, `error`).
pub const REQUESTS: &str = "session_proxy_requests_total";
/// From a client request's package in to its response out, by route.
pub const REQUEST_SECONDS: &str = "session_proxy_request_duration_seconds";
/// Forwarded requests waiting on each backend now, set at scrape.
pub const FORWARDED_IN_FLIGHT: &str = "session_proxy_forwarded_in_flight";
/// Pushes to clients, by result (`delivered`, `queue_full`, `client_gone`).
pub const PUSHES: &str = "session_proxy_pushes_total";
/// How long each write of a batch of sessions to the store took.
pub const STORE_FLUSH_SECONDS: &str = "session_proxy_store_flush_duration_seconds";
/// How many sessions each store write carried.
pub const STORE_FLUSH_SESSIONS: &str = "session_proxy_store_flush_sessions";
/// Store calls that failed (unavailable, timed out).
pub const STORE_ERRORS: &str = "session_proxy_store_errors_total";
/// Stored sessions that could not be decoded, skipped at restore or
/// refused at a resume.
pub const STORE_CORRUPT: &str = "session_proxy_store_corrupt_total";
/// Bytes read from and written to clients, by direction (`in`, `out`).
pub const CLIENT_BYTES: &str = "session_proxy_client_bytes_total";

/// Every metric this crate exports, with its kind (for docs and tests).
pub const EXPORTED: &[(&str, &str)] = &[
    (CLIENTS_CONNECTED, "gauge"),
    (HANDSHAKES, "counter"),
    (KICKS, "counter"),
    (SESSIONS, "gauge"),
    (RESUMES, "counter"),
    (REQUESTS, "counter"),
    (REQUEST_SECONDS, "histogram"),
    (FORWARDED_IN_FLIGHT, "gauge"),
    (PUSHES, "counter"),
    (STORE_FLUSH_SECONDS, "histogram"),
    (STORE_FLUSH_SESSIONS, "histogram"),
    (STORE_ERRORS, "counter"),
    (STORE_CORRUPT, "counter"),
    (CLIENT_BYTES, "counter"),
];

/// Describes every metric to the installed recorder (help texts, units),
/// and makes the fixed handles, so that each series is exported (at zero)
/// from the start, not from its first event.
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    for c in [
        &HANDSHAKE_NEW,
        &HANDSHAKE_RESUMED,
        &HANDSHAKE_REFUSED,
        &RESUME_OK,
        &RESUME_REFUSED,
        &PUSH_DELIVERED,
        &PUSH_QUEUE_FULL,
        &PUSH_CLIENT_GONE,
        &STORE_FAILED,
        &CORRUPT_SKIPPED,
        &BYTES_IN,
        &BYTES_OUT,
    ] {
        LazyLock::force(c);
    }
    LazyLock::force(&FLUSH_SECONDS);
    LazyLock::force(&FLUSH_SESSIONS);
    LazyLock::force(&CONNECTED);
    LazyLock::force(&KICK_COUNTERS);
    LazyLock::force(&UNROUTED);
    describe_gauge!(
        CLIENTS_CONNECTED,
        "Client connections open now, by transport."
    );
    describe_counter!(HANDSHAKES, "Handshakes answered, by result.");
    describe_counter!(KICKS, "Sessions closed with a kick, by reason.");
    describe_gauge!(SESSIONS, "Sessions held now, by state.");
    describe_counter!(RESUMES, "Session resumes, by result.");
    describe_counter!(REQUESTS, "Client requests answered, by route and status.");
    describe_histogram!(
        REQUEST_SECONDS,
        Unit::Seconds,
        "From a request's package in to its response out, by route."
    );
    describe_gauge!(
        FORWARDED_IN_FLIGHT,
        "Forwarded requests waiting on each backend."
    );
    describe_counter!(PUSHES, "Pushes to clients, by result.");
    describe_histogram!(STORE_FLUSH_SECONDS, Unit::Seconds, "Store write latency.");
    describe_histogram!(STORE_FLUSH_SESSIONS, "Sessions per store write.");
    describe_counter!(STORE_ERRORS, "Store calls that failed.");
    describe_counter!(
        STORE_CORRUPT,
        "Stored sessions that could not be decoded, skipped."
    );
    describe_counter!(CLIENT_BYTES, Unit::Bytes, "Bytes to and from clients.");
}

/// Sets the gauges that are read off the state at scrape time: sessions by
/// state and forwarded requests in flight per backend.
pub fn sample(sessions: &crate::SessionService, backends: &crate::BackendRegistry) {
    let (bound, parked) = sessions.bound_and_parked();
    gauge!(SESSIONS, "state" => "open").set(sessions.count() as f64);
    gauge!(SESSIONS, "state" => "bound").set(bound as f64);
    gauge!(SESSIONS, "state" => "parked").set(parked as f64);
    for (backend, n) in backends.in_flight() {
        gauge!(FORWARDED_IN_FLIGHT, "backend" => backend).set(n as f64);
    }
}

/// A request's counters and latency under one route label.
#[derive(Clone)]
pub(crate) struct RouteMetrics {
    ok: Counter,
    error: Counter,
    seconds: Histogram,
}

impl RouteMetrics {
    /// The handles of `route` (made once per route, at start).
    pub(crate) fn new(route: &str) -> Self {
        let route = route.to_string();
        RouteMetrics {
            ok: counter!(REQUESTS, "route" => route.clone(), "status" => "ok"),
            error: counter!(REQUESTS, "route" => route.clone(), "status" => "error"),
            seconds: histogram!(REQUEST_SECONDS, "route" => route),
        }
    }

    /// Records one answered request that started at `started`.
    pub(crate) fn record(&self, started: Instant, ok: bool) {
        if ok {
            self.ok.increment(1);
        } else {
            self.error.increment(1);
        }
        self.seconds.record(started.elapsed().as_secs_f64());
    }
}

macro_rules! handle {
    ($name:ident: $kind:ty = $make:expr) => {
        pub(crate) static $name: LazyLock<$kind> = LazyLock::new(|| $make);
    };
}

/// Requests for a server type no backend serves (the type is the
/// client's word, so it is not a label).
pub(crate) static UNROUTED: LazyLock<RouteMetrics> =
    LazyLock::new(|| RouteMetrics::new("(no backend)"));
handle!(HANDSHAKE_NEW: Counter = counter!(HANDSHAKES, "result" => "new"));
handle!(HANDSHAKE_RESUMED: Counter = counter!(HANDSHAKES, "result" => "resumed"));
handle!(HANDSHAKE_REFUSED: Counter = counter!(HANDSHAKES, "result" => "refused"));
handle!(RESUME_OK: Counter = counter!(RESUMES, "result" => "ok"));
handle!(RESUME_REFUSED: Counter = counter!(RESUMES, "result" => "refused"));
handle!(PUSH_DELIVERED: Counter = counter!(PUSHES, "result" => "delivered"));
handle!(PUSH_QUEUE_FULL: Counter = counter!(PUSHES, "result" => "queue_full"));
handle!(PUSH_CLIENT_GONE: Counter = counter!(PUSHES, "result" => "client_gone"));
handle!(FLUSH_SECONDS: Histogram = histogram!(STORE_FLUSH_SECONDS));
handle!(FLUSH_SESSIONS: Histogram = histogram!(STORE_FLUSH_SESSIONS));
handle!(STORE_FAILED: Counter = counter!(STORE_ERRORS));
handle!(CORRUPT_SKIPPED: Counter = counter!(STORE_CORRUPT));
handle!(BYTES_IN: Counter = counter!(CLIENT_BYTES, "direction" => "in"));
handle!(BYTES_OUT: Counter = counter!(CLIENT_BYTES, "direction" => "out"));

/// The transports, as [`Transport::kind`](crate::gateway) names them.
const TRANSPORTS: [&str; 4] = ["tcp", "ws", "tls", "wss"];

static CONNECTED: LazyLock<Vec<Gauge>> = LazyLock::new(|| {
    TRANSPORTS
        .iter()
        .map(|t| gauge!(CLIENTS_CONNECTED, "transport" => *t))
        .collect()
});

/// The connected-clients gauge of a transport.
pub(crate) fn connected(transport: &str) -> Option<&'static Gauge> {
    let i = TRANSPORTS.iter().position(|t| *t == transport)?;
    CONNECTED.get(i)
}

/// The kick reasons with a label of their own; any other is `other`.
const KICK_REASONS: &[&str] = &[
    "replaced",
    "expired",
    "reconnect",
    "resumed elsewhere",
    "slow client",
    "kicked",
];

static KICK_COUNTERS: LazyLock<Vec<Counter>> = LazyLock::new(|| {
    KICK_REASONS
        .iter()
        .chain(std::iter::once(&"other"))
        .map(|r| counter!(KICKS, "reason" => r.replace(' ', "_")))
        .collect()
});

/// Counts a kick under its reason (folded into the fixed set).
pub(crate) fn kicked(reason: &str) {
    let i = KICK_REASONS
        .iter()
        .position(|r| *r == reason)
        .unwrap_or(KICK_REASONS.len());
    if let Some(c) = KICK_COUNTERS.get(i) {
        c.increment(1);
    }
}

/// A process's resident memory in KiB, from `/proc/<pid>/status` (Linux;
/// `None` elsewhere or for a process that is gone).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}
