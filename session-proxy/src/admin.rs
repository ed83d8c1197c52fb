//! A node's admin address: Prometheus metrics (`/metrics`), liveness
//! (`/healthz`), readiness (`/readyz`), and admin actions under `/admin/`
//! (node info, a uid's sessions, kick a uid, drain). Off unless a node is
//! given an address; meant for a private network or loopback. The probes
//! and metrics are open and reveal nothing beyond up or down and counts;
//! every admin action needs `Authorization: Bearer <token>`, a token for
//! this node's id that expires within minutes, minted with the cluster
//! secret ([`Secret::admin_token`](crate::protocol::Secret::admin_token)), and
//! a node without a secret refuses them all.
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
//!     session_proxy::admin::Admin {
//!         metrics: Some(metrics),
//!         sample: std::sync::Arc::new(|| {}),
//!         ready: std::sync::Arc::new(|| Box::pin(async { Ok(()) })),
//!         actions: None,
//!         node_id: "connector-1".into(),
//!     },
//! )
//! .await?;
//! println!("metrics on http://{}/metrics", admin.local_addr());
//! # Ok(()) }
//! ```

use crate::frontend::logs::Throttle;
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

    /// Drains the histograms' samples into their summaries; the admin
    /// server does it every [`UPKEEP`], so memory stays flat between
    /// scrapes.
    pub fn upkeep(&self) {
        self.handle.run_upkeep();
    }
}

/// How often the admin server drains the histograms ([`Metrics::upkeep`]).
pub const UPKEEP: Duration = Duration::from_secs(5);

/// Installs the process-wide Prometheus recorder and describes the metrics
/// of a node of `role` (a frontend's or a backend's, and the registry's),
/// exported from the start at zero. Call once, before building services,
/// and serve them with the admin server (which also drains the histograms
/// every [`UPKEEP`]), or call [`Metrics::upkeep`] as often yourself.
pub fn install_metrics(role: crate::registry::NodeRole) -> Result<Metrics, MetricsError> {
    let mut builder = PrometheusBuilder::new();
    for name in [
        crate::frontend::metrics::REQUEST_SECONDS,
        crate::frontend::metrics::STORE_FLUSH_SECONDS,
        crate::backend::metrics::HANDLER_SECONDS,
        crate::backend::metrics::CALL_SECONDS,
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
    crate::registry::describe();
    crate::filters::describe();
    let process = metrics_process::Collector::default();
    process.describe();
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
        .chain(crate::filters::EXPORTED)
        .copied()
}

/// Sets the gauges read off a node's state at scrape time.
pub type Sample = Arc<dyn Fn() + Send + Sync>;

/// Whether a node should get new work: `Err(why)` when not (draining, its
/// store does not answer). The reason is logged, never sent.
pub type Readiness =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// The future of an admin action: a JSON answer, or why it failed.
pub type ActionFuture<'a> =
    Pin<Box<dyn Future<Output = Result<serde_json::Value, String>> + Send + 'a>>;

/// What a node does for the admin actions.
pub trait AdminActions: Send + Sync + 'static {
    /// Id, role, type, version, uptime, clients, sessions, RSS.
    fn info(&self) -> serde_json::Value;
    /// Every session of `uid` (a frontend: on every frontend sharing its
    /// store).
    fn sessions<'a>(&'a self, uid: &'a str) -> ActionFuture<'a>;
    /// Ends this node's sessions of `uid`, kicking their clients with
    /// `reason`; answers how many.
    fn kick<'a>(&'a self, uid: &'a str, reason: &'a str) -> ActionFuture<'a>;
    /// Starts the node's drain, as a SIGTERM would.
    fn drain(&self);
}

/// What an admin address serves.
pub struct Admin {
    /// The recorder to render on `/metrics`; `None` answers 404 there.
    pub metrics: Option<Metrics>,
    /// Sets the gauges read at scrape time.
    pub sample: Sample,
    /// `/readyz`.
    pub ready: Readiness,
    /// The admin actions, with the cluster secret their token comes from;
    /// `None` refuses every action.
    pub actions: Option<(crate::protocol::Secret, Arc<dyn AdminActions>)>,
    /// This node's id: an admin token is minted for one node.
    pub node_id: String,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("metrics", &self.metrics.is_some())
            .field("actions", &self.actions.is_some())
            .finish_non_exhaustive()
    }
}

/// A running admin listener.
#[derive(Debug)]
pub struct AdminServer {
    local_addr: SocketAddr,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

impl AdminServer {
    /// Listens on `addr` and serves what `admin` holds.
    pub async fn bind(addr: SocketAddr, admin: Admin) -> std::io::Result<AdminServer> {
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        let cancel = CancellationToken::new();
        let tasks = TaskTracker::new();
        let state = Arc::new(admin);
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
    state: Arc<Admin>,
    cancel: CancellationToken,
    tasks: TaskTracker,
) {
    let mut upkeep = tokio::time::interval(UPKEEP);
    upkeep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stream = tokio::select! {
            _ = cancel.cancelled() => return,
            _ = upkeep.tick() => {
                if let Some(metrics) = &state.metrics {
                    metrics.upkeep();
                }
                continue;
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    tracing::debug!(cause = %crate::protocol::chain(&err), "admin accept failed");
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

fn json(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = text(status, format!("{body}\n"));
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

/// A query parameter, percent-decoded.
fn param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name).then(|| decode(v))
    })
}

fn decode(v: &str) -> String {
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = v
                    .get(i + 1..i + 3)
                    .filter(|h| h.bytes().all(|c| c.is_ascii_hexdigit()))
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Runs an admin action if the request carries the right token.
async fn action(admin: &Admin, req: &Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let Some((secret, actions)) = &admin.actions else {
        return text(
            StatusCode::FORBIDDEN,
            "admin actions need a cluster secret on this node\n",
        );
    };
    let presented = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let now_unix = crate::protocol::unix_ms() / 1000;
    if !presented.is_some_and(|t| secret.verify_admin_token(t, &admin.node_id, now_unix)) {
        // Anyone who reaches the port can ask as fast as it likes: one line
        // a second, with the count of the rest.
        static REFUSED: Throttle = Throttle::new(Duration::from_secs(1));
        if let Some(suppressed) = REFUSED.allow() {
            let path = crate::protocol::text::log_safe(req.uri().path());
            tracing::warn!(%path, suppressed, "admin action refused: no valid token");
        }
        return text(StatusCode::UNAUTHORIZED, "unauthorized\n");
    }
    let query = req.uri().query().unwrap_or("");
    let write = req.method() == Method::POST;
    let answer = match (req.uri().path(), write) {
        ("/admin/info", false) => Ok(actions.info()),
        ("/admin/sessions", false) => match param(query, "uid") {
            Some(uid) => actions.sessions(&uid).await,
            None => Err("uid is required".to_string()),
        },
        ("/admin/kick", true) => match param(query, "uid") {
            Some(uid) => {
                let reason = param(query, "reason").unwrap_or_else(|| "kicked".to_string());
                actions.kick(&uid, &reason).await
            }
            None => Err("uid is required".to_string()),
        },
        ("/admin/drain", true) => {
            tracing::info!("drain requested through the admin address");
            actions.drain();
            Ok(serde_json::json!({ "draining": true }))
        }
        _ => return text(StatusCode::NOT_FOUND, "no such admin action\n"),
    };
    match answer {
        Ok(body) => json(StatusCode::OK, &body),
        Err(why) => json(
            StatusCode::BAD_REQUEST,
            &serde_json::json!({ "error": why }),
        ),
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

async fn answer(state: &Admin, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    if req.uri().path().starts_with("/admin/") {
        return action(state, &req).await;
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_are_percent_decoded_and_bad_escapes_kept() {
        assert_eq!(
            param("uid=ann%3Aeu&reason=no+cheating", "uid").as_deref(),
            Some("ann:eu")
        );
        assert_eq!(
            param("uid=ann&reason=no+cheating", "reason").as_deref(),
            Some("no cheating")
        );
        assert_eq!(param("uid=a%+5b%", "uid").as_deref(), Some("a% 5b%"));
        assert_eq!(param("uid=a", "reason"), None);
    }

    #[test]
    fn an_admin_token_works_for_its_node_its_secret_and_its_time_only() {
        use crate::protocol::auth::ADMIN_TOKEN_LIFETIME;
        let secret = crate::protocol::Secret::new("cluster-secret");
        let now = 1_800_000_000;
        let token = secret.admin_token("connector-1", now + 60);
        assert!(secret.verify_admin_token(&token, "connector-1", now));
        assert!(
            !secret.verify_admin_token(&token, "connector-2", now),
            "another node's"
        );
        assert!(
            !crate::protocol::Secret::new("another").verify_admin_token(&token, "connector-1", now),
            "another secret's"
        );
        assert!(
            !secret.verify_admin_token(&token, "connector-1", now + 61),
            "expired"
        );
        let forever = secret.admin_token("connector-1", now + ADMIN_TOKEN_LIFETIME.as_secs() + 1);
        assert!(
            !secret.verify_admin_token(&forever, "connector-1", now),
            "lasts too long"
        );
        let forged = format!("{}.{}", now + 120, token.split_once('.').expect("dot").1);
        assert!(
            !secret.verify_admin_token(&forged, "connector-1", now),
            "its expiry is signed"
        );
        for junk in ["", "zz", "1.zz", "x.00"] {
            assert!(!secret.verify_admin_token(junk, "connector-1", now));
        }
    }
}
