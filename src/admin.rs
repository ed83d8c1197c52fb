//! A node's admin address: Prometheus metrics (`/metrics`), liveness
//! (`/healthz`) and readiness (`/readyz`). Off unless a node is given an
//! address; meant for a private network or loopback.
//!
//! Metrics are recorded by the libraries through the `metrics` facade and
//! exported by `metrics-exporter-prometheus`: counters and gauges are
//! atomics behind handles the libraries keep, histograms record into
//! lock-free buckets, so the request path takes no lock and allocates
//! nothing for them. Install the recorder with [`install_metrics`] before
//! building the services.
//!
//! ```no_run
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! use session_proxy::admin::{install_metrics, AdminServer};
//! use session_proxy::registry::NodeRole;
//! let metrics = install_metrics(NodeRole::Frontend)?;
//! let admin = AdminServer::bind(
//!     "127.0.0.1:9100".parse()?,
//!     Some(metrics),
//!     std::sync::Arc::new(|| {}),
//!     std::sync::Arc::new(|| Box::pin(async { Ok(()) })),
//! )
//! .await?;
//! println!("metrics on http://{}/metrics", admin.local_addr());
//! # Ok(()) }
//! ```

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Latency buckets (seconds): 0.5 ms to 10 s.
const SECONDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Batch-size buckets (sessions per store write).
const BATCH: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 5000.0,
];

/// Why the metrics recorder could not be installed.
#[derive(Debug, thiserror::Error)]
#[error("cannot install the metrics recorder: {0}")]
pub struct MetricsError(String);

/// The installed Prometheus recorder, with the process collector.
#[derive(Clone)]
pub struct Metrics {
    handle: PrometheusHandle,
    process: Arc<metrics_process::Collector>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Every metric in the Prometheus text format, the process's (RSS,
    /// open fds, CPU) read now.
    pub fn render(&self) -> String {
        self.process.collect();
        self.handle.render()
    }
}

/// Installs the process-wide Prometheus recorder and describes the metrics
/// of a node of `role` (a frontend's or a backend's, and the registry's),
/// exported from the start at zero. Call once, before building services.
/// Must be called within a tokio runtime (a task drains the histograms
/// every 5 s).
pub fn install_metrics(role: crate::registry::NodeRole) -> Result<Metrics, MetricsError> {
    let mut builder = PrometheusBuilder::new();
    for name in [
        crate::frontend::metrics::REQUEST_SECONDS,
        crate::frontend::metrics::STORE_FLUSH_SECONDS,
        crate::backend::metrics::HANDLER_SECONDS,
    ] {
        builder = builder
            .set_buckets_for_metric(Matcher::Full(name.to_string()), SECONDS)
            .map_err(|e| MetricsError(e.to_string()))?;
    }
    builder = builder
        .set_buckets_for_metric(
            Matcher::Full(crate::frontend::metrics::STORE_FLUSH_SESSIONS.to_string()),
            BATCH,
        )
        .map_err(|e| MetricsError(e.to_string()))?;
    let handle = builder
        .install_recorder()
        .map_err(|e| MetricsError(e.to_string()))?;
    match role {
        crate::registry::NodeRole::Frontend => crate::frontend::metrics::describe(),
        crate::registry::NodeRole::Backend => crate::backend::metrics::describe(),
    }
    crate::registry::describe_metrics();
    let process = metrics_process::Collector::default();
    process.describe();
    let upkeep = handle.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });
    Ok(Metrics {
        handle,
        process: Arc::new(process),
    })
}

/// Every metric the libraries export, with its Prometheus type.
pub fn exported() -> impl Iterator<Item = (&'static str, &'static str)> {
    crate::frontend::metrics::EXPORTED
        .iter()
        .chain(crate::backend::metrics::EXPORTED)
        .chain(crate::registry::EXPORTED)
        .copied()
}

/// Sets the gauges read off a node's state at scrape time.
pub type Sample = Arc<dyn Fn() + Send + Sync>;

/// Whether a node should get new work: `Err(why)` when not (draining, its
/// store does not answer). The reason is logged, never sent.
pub type Readiness =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// A running admin listener.
#[derive(Debug)]
pub struct AdminServer {
    local_addr: SocketAddr,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

struct State {
    metrics: Option<Metrics>,
    sample: Sample,
    ready: Readiness,
}

impl AdminServer {
    /// Listens on `addr` and serves `/metrics` (when `metrics` is given),
    /// `/healthz` and `/readyz`.
    pub async fn bind(
        addr: SocketAddr,
        metrics: Option<Metrics>,
        sample: Sample,
        ready: Readiness,
    ) -> std::io::Result<AdminServer> {
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        let cancel = CancellationToken::new();
        let tasks = TaskTracker::new();
        let state = Arc::new(State {
            metrics,
            sample,
            ready,
        });
        tasks.spawn(accept(listener, state, cancel.clone(), tasks.clone()));
        Ok(AdminServer {
            local_addr,
            cancel,
            tasks,
        })
    }

    /// Where it listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops listening and ends open connections, within `within`.
    pub async fn shutdown(self, within: Duration) {
        self.cancel.cancel();
        self.tasks.close();
        let _ = tokio::time::timeout(within, self.tasks.wait()).await;
    }
}

async fn accept(
    listener: TcpListener,
    state: Arc<State>,
    cancel: CancellationToken,
    tasks: TaskTracker,
) {
    loop {
        let stream = tokio::select! {
            _ = cancel.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    tracing::debug!(cause = %err, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let state = state.clone();
        let cancel = cancel.clone();
        tasks.spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, std::convert::Infallible>(answer(&state, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(5))
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            // A scrape is one short request; nothing stays open for long.
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = tokio::time::timeout(Duration::from_secs(30), conn) => {}
            }
        });
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

async fn answer(state: &State, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
    }
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => match (state.ready)().await {
            Ok(()) => text(StatusCode::OK, "ready\n"),
            Err(why) => {
                tracing::debug!(why, "not ready");
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
            }
        },
        "/metrics" => match &state.metrics {
            Some(metrics) => {
                (state.sample)();
                text(StatusCode::OK, metrics.render())
            }
            None => text(StatusCode::NOT_FOUND, "metrics are off\n"),
        },
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}
