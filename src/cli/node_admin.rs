//! A node runner's admin address: what `/readyz` checks, the gauges read
//! at scrape time, and the admin actions of a frontend and of a backend.

use anyhow::Context;
use serde_json::{json, Value};
use session_proxy::admin::{self, ActionFuture, AdminActions};
use session_proxy::protocol::Secret;
use session_proxy::{BackendRegistry, SessionService};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// How long a readiness probe waits for the session store.
const STORE_PROBE: Duration = Duration::from_millis(500);

/// A node's drain, shared by its runner and its admin address: asked for
/// (an admin call, like a SIGTERM), then under way.
#[derive(Clone, Debug, Default)]
pub struct Control {
    draining: Arc<AtomicBool>,
    requested: Arc<Notify>,
}

impl Control {
    /// Marks the drain under way (`/readyz` answers 503 from now on).
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Whether the drain is under way.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Asks the runner to drain.
    pub fn request_drain(&self) {
        self.requested.notify_one();
    }

    /// Waits until a drain is asked for.
    pub async fn drain_requested(&self) {
        self.requested.notified().await;
    }
}

/// What a node says of itself.
struct Identity {
    id: String,
    role: &'static str,
    server_type: String,
    started: Instant,
}

impl Identity {
    fn info(&self, clients: usize, sessions: usize) -> Value {
        json!({
            "id": self.id,
            "role": self.role,
            "type": self.server_type,
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_secs": self.started.elapsed().as_secs(),
            "clients": clients,
            "sessions": sessions,
            "rss_bytes": session_proxy_bench::idle::rss_kib(std::process::id()).unwrap_or(0) * 1024,
        })
    }
}

struct FrontendActions {
    me: Identity,
    sessions: SessionService,
    control: Control,
}

impl AdminActions for FrontendActions {
    fn info(&self) -> Value {
        let (_, parked) = self.sessions.bound_and_parked();
        let open = self.sessions.count();
        self.me.info(open.saturating_sub(parked), open)
    }

    fn sessions<'a>(&'a self, uid: &'a str) -> ActionFuture<'a> {
        Box::pin(async move {
            let found = self
                .sessions
                .user_sessions(uid)
                .await
                .map_err(|e| e.to_string())?;
            serde_json::to_value(found).map_err(|e| e.to_string())
        })
    }

    fn kick<'a>(&'a self, uid: &'a str, reason: &'a str) -> ActionFuture<'a> {
        Box::pin(async move { Ok(json!({ "kicked": self.sessions.kick_by_uid(uid, reason) })) })
    }

    fn drain(&self) {
        self.control.request_drain();
    }
}

struct BackendActions {
    me: Identity,
    control: Control,
}

impl AdminActions for BackendActions {
    fn info(&self) -> Value {
        self.me.info(0, 0)
    }

    fn sessions<'a>(&'a self, _uid: &'a str) -> ActionFuture<'a> {
        Box::pin(async { Err("a backend holds no sessions; ask a frontend".to_string()) })
    }

    fn kick<'a>(&'a self, _uid: &'a str, _reason: &'a str) -> ActionFuture<'a> {
        Box::pin(async { Err("a backend holds no sessions; ask a frontend".to_string()) })
    }

    fn drain(&self) {
        self.control.request_drain();
    }
}

fn not_draining(control: &Control) -> Result<(), String> {
    match control.is_draining() {
        true => Err("draining".to_string()),
        false => Ok(()),
    }
}

/// A frontend's admin address: ready while not draining and its store (if
/// any) answers; the admin actions when the cluster has a secret.
pub async fn frontend(
    addr: SocketAddr,
    metrics: Option<admin::Metrics>,
    (id, server_type): (&str, &str),
    (sessions, backends): (&SessionService, BackendRegistry),
    control: &Control,
    secret: Option<Secret>,
) -> anyhow::Result<admin::AdminServer> {
    let sampled = sessions.clone();
    let sample: admin::Sample =
        Arc::new(move || session_proxy::frontend::metrics::sample(&sampled, &backends));
    let (probed, ready_control) = (sessions.clone(), control.clone());
    let ready: admin::Readiness = Arc::new(move || {
        let (sessions, control) = (probed.clone(), ready_control.clone());
        Box::pin(async move {
            not_draining(&control)?;
            if !sessions.store_answers(STORE_PROBE).await {
                return Err("the session store does not answer".to_string());
            }
            Ok(())
        })
    });
    let actions: Arc<dyn AdminActions> = Arc::new(FrontendActions {
        me: Identity {
            id: id.to_string(),
            role: "frontend",
            server_type: server_type.to_string(),
            started: Instant::now(),
        },
        sessions: sessions.clone(),
        control: control.clone(),
    });
    bind(addr, metrics, sample, ready, secret.map(|s| (s, actions))).await
}

/// A backend's admin address: ready while not draining.
pub async fn backend(
    addr: SocketAddr,
    metrics: Option<admin::Metrics>,
    (id, server_type): (&str, &str),
    control: &Control,
    secret: Option<Secret>,
) -> anyhow::Result<admin::AdminServer> {
    let ready_control = control.clone();
    let ready: admin::Readiness = Arc::new(move || {
        let result = not_draining(&ready_control);
        Box::pin(async move { result })
    });
    let actions: Arc<dyn AdminActions> = Arc::new(BackendActions {
        me: Identity {
            id: id.to_string(),
            role: "backend",
            server_type: server_type.to_string(),
            started: Instant::now(),
        },
        control: control.clone(),
    });
    bind(
        addr,
        metrics,
        Arc::new(|| {}),
        ready,
        secret.map(|s| (s, actions)),
    )
    .await
}

async fn bind(
    addr: SocketAddr,
    metrics: Option<admin::Metrics>,
    sample: admin::Sample,
    ready: admin::Readiness,
    actions: Option<(Secret, Arc<dyn AdminActions>)>,
) -> anyhow::Result<admin::AdminServer> {
    if actions.is_none() {
        tracing::warn!("no cluster secret (SESSION_PROXY_SECRET): admin actions are refused");
    }
    let served = admin::Admin {
        metrics,
        sample,
        ready,
        actions,
    };
    admin::AdminServer::bind(addr, served)
        .await
        .with_context(|| format!("admin listener on {addr}"))
}
