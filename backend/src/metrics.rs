//! The backend's metrics, recorded through the [`metrics`] facade (free
//! without a recorder). Handles are made once per registered route when the
//! handlers are served, so a request only bumps atomics: no lock beyond the
//! route lookup it already does, no allocation. Routes come from the
//! handler table, never from the request.

use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};
use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::Instant;

/// Forwarded requests handled, by route and status (`ok`, `app_error`,
/// `failed`: a panic or the deadline).
pub const HANDLED: &str = "session_proxy_backend_requests_total";
/// How long each handler ran, by route.
pub const HANDLER_SECONDS: &str = "session_proxy_backend_handler_duration_seconds";

/// Calls to frontends answered (or failed), by kind (`bind`, `push`, …).
pub const CALLS: &str = "session_proxy_backend_frontend_calls_total";
/// From sending a call to a frontend to its answer, by kind.
pub const CALL_SECONDS: &str = "session_proxy_backend_frontend_call_duration_seconds";
/// Calls to frontends waiting for their answer now.
pub const CALLS_IN_FLIGHT: &str = "session_proxy_backend_frontend_calls_in_flight";
/// Calls refused at once because too many were in flight on a link.
pub const OVERLOADS: &str = "session_proxy_backend_overloads_total";
/// Dials of a frontend after the first (lost links, unreachable nodes).
pub const REDIALS: &str = "session_proxy_backend_redials_total";

/// Every metric this crate exports, with its kind.
pub const EXPORTED: &[(&str, &str)] = &[
    (HANDLED, "counter"),
    (HANDLER_SECONDS, "histogram"),
    (CALLS, "counter"),
    (CALL_SECONDS, "histogram"),
    (CALLS_IN_FLIGHT, "gauge"),
    (OVERLOADS, "counter"),
    (REDIALS, "counter"),
];

/// Describes every metric to the installed recorder, and makes the fixed
/// handles so that each series is exported from the start.
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(HANDLED, "Forwarded requests handled, by route and status.");
    describe_histogram!(
        HANDLER_SECONDS,
        Unit::Seconds,
        "Handler run time, by route."
    );
    describe_counter!(CALLS, "Calls to frontends, by kind.");
    describe_histogram!(
        CALL_SECONDS,
        Unit::Seconds,
        "Call to frontend latency, by kind."
    );
    describe_gauge!(CALLS_IN_FLIGHT, "Calls to frontends waiting for an answer.");
    describe_counter!(OVERLOADS, "Calls refused: too many in flight on a link.");
    describe_counter!(REDIALS, "Dials of a frontend after the first.");
    LazyLock::force(&BY_KIND);
    LazyLock::force(&IN_FLIGHT);
    LazyLock::force(&OVERLOADED);
    LazyLock::force(&REDIALED);
}

/// Each call kind's counter and latency, by `Call::INDEX`.
pub(crate) static BY_KIND: LazyLock<Vec<(Counter, Histogram)>> = LazyLock::new(|| {
    session_proxy_protocol::FrontendCallKind::ALL
        .iter()
        .map(|k| {
            (
                counter!(CALLS, "kind" => k.as_str()),
                histogram!(CALL_SECONDS, "kind" => k.as_str()),
            )
        })
        .collect()
});
/// [`CALLS_IN_FLIGHT`].
pub(crate) static IN_FLIGHT: LazyLock<Gauge> = LazyLock::new(|| gauge!(CALLS_IN_FLIGHT));
/// [`OVERLOADS`].
pub(crate) static OVERLOADED: LazyLock<Counter> = LazyLock::new(|| counter!(OVERLOADS));
/// [`REDIALS`].
pub(crate) static REDIALED: LazyLock<Counter> = LazyLock::new(|| counter!(REDIALS));

/// Records one call to a frontend that ended.
pub(crate) fn call_ended(kind: usize, started: Instant) {
    if let Some((count, seconds)) = BY_KIND.get(kind) {
        count.increment(1);
        seconds.record(started.elapsed().as_secs_f64());
    }
}

/// One route's handles.
#[derive(Clone)]
pub(crate) struct HandlerMetrics {
    ok: Counter,
    app_error: Counter,
    failed: Counter,
    seconds: Histogram,
}

/// How a handler ended.
pub(crate) enum Outcome {
    Ok,
    AppError,
    Failed,
}

impl HandlerMetrics {
    fn new(route: &str) -> Self {
        let r = route.to_string();
        HandlerMetrics {
            ok: counter!(HANDLED, "route" => r.clone(), "status" => "ok"),
            app_error: counter!(HANDLED, "route" => r.clone(), "status" => "app_error"),
            failed: counter!(HANDLED, "route" => r.clone(), "status" => "failed"),
            seconds: histogram!(HANDLER_SECONDS, "route" => r),
        }
    }

    pub(crate) fn record(&self, started: Instant, outcome: Outcome) {
        match outcome {
            Outcome::Ok => self.ok.increment(1),
            Outcome::AppError => self.app_error.increment(1),
            Outcome::Failed => self.failed.increment(1),
        }
        self.seconds.record(started.elapsed().as_secs_f64());
    }
}

/// The handles of every route of a handler table.
pub(crate) fn for_routes<'a>(
    routes: impl Iterator<Item = &'a str>,
) -> HashMap<String, HandlerMetrics> {
    routes
        .map(|r| (r.to_string(), HandlerMetrics::new(r)))
        .collect()
}
