//! The backend's metrics, recorded through the [`metrics`] facade (free
//! without a recorder). Handles are made once per registered route when the
//! handlers are served, so a request only bumps atomics: no lock beyond the
//! route lookup it already does, no allocation. Routes come from the
//! handler table, never from the request.

use metrics::{counter, histogram, Counter, Histogram};
use std::collections::HashMap;
use std::time::Instant;

/// Forwarded requests handled, by route and status (`ok`, `app_error`,
/// `failed`: a panic or the deadline).
pub const HANDLED: &str = "session_proxy_backend_requests_total";
/// How long each handler ran, by route.
pub const HANDLER_SECONDS: &str = "session_proxy_backend_handler_duration_seconds";

/// Every metric this crate exports, with its kind.
pub const EXPORTED: &[(&str, &str)] = &[(HANDLED, "counter"), (HANDLER_SECONDS, "histogram")];

/// Describes every metric to the installed recorder.
pub fn describe() {
    use metrics::{describe_counter, describe_histogram, Unit};
    describe_counter!(HANDLED, "Forwarded requests handled, by route and status.");
    describe_histogram!(
        HANDLER_SECONDS,
        Unit::Seconds,
        "Handler run time, by route."
    );
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
