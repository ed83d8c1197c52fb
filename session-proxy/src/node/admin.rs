//! What a node's admin address serves: `/readyz` (not draining, and the
//! store answers), the gauges read at scrape time, and the admin actions
//! (info, a user's sessions, kick, drain).

use super::{Node, NodeControl, NodeError};
use crate::admin::{self, ActionFuture, AdminActions};
use crate::protocol::Secret;
use crate::SessionService;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a readiness probe waits for the session store.
const STORE_PROBE: Duration = Duration::from_millis(500);

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
            "rss_bytes": crate::frontend::metrics::rss_kib(std::process::id()).unwrap_or(0) * 1024,
        })
    }
}

/// The admin actions of a node: a frontend's when it has one (its
/// sessions), else a backend's.
struct Actions {
    me: Identity,
    sessions: Option<SessionService>,
    control: NodeControl,
}

/// The answer of a session action on a node without sessions.
const NO_SESSIONS: &str = "a backend holds no sessions; ask a frontend";

impl AdminActions for Actions {
    fn info(&self) -> Value {
        match &self.sessions {
            Some(sessions) => {
                let (_, parked) = sessions.bound_and_parked();
                let open = sessions.count();
                self.me.info(open.saturating_sub(parked), open)
            }
            None => self.me.info(0, 0),
        }
    }

    fn sessions<'a>(&'a self, uid: &'a str) -> ActionFuture<'a> {
        Box::pin(async move {
            let sessions = self.sessions.as_ref().ok_or(NO_SESSIONS)?;
            let found = sessions
                .user_sessions(uid)
                .await
                .map_err(|e| e.to_string())?;
            serde_json::to_value(found).map_err(|e| e.to_string())
        })
    }

    fn kick<'a>(&'a self, uid: &'a str, reason: &'a str) -> ActionFuture<'a> {
        Box::pin(async move {
            let sessions = self.sessions.as_ref().ok_or(NO_SESSIONS)?;
            Ok(json!({ "kicked": sessions.kick_by_uid(uid, reason) }))
        })
    }

    fn drain(&self) {
        self.control.request_drain();
    }
}

/// Serves `node`'s admin address on `addr`.
pub(super) async fn serve(
    node: &Node,
    addr: SocketAddr,
    metrics: Option<admin::Metrics>,
    secret: Option<Secret>,
) -> Result<admin::AdminServer, NodeError> {
    let started = Instant::now();
    let (me, sessions, sample): (Identity, Option<SessionService>, admin::Sample) =
        match &node.frontend {
            Some(f) => {
                let (sampled, backends) = (f.sessions.clone(), node.connected_backends());
                let sample: admin::Sample = Arc::new(move || {
                    if let Some(backends) = &backends {
                        crate::frontend::metrics::sample(&sampled, backends);
                    }
                });
                let me = Identity {
                    id: f.id.clone(),
                    role: "frontend",
                    server_type: f.server_type.clone(),
                    started,
                };
                (me, Some(f.sessions.clone()), sample)
            }
            None => {
                let config = node.backends.first().map(|b| b.service.config());
                let me = Identity {
                    id: config.map(|c| c.node_id.clone()).unwrap_or_default(),
                    role: "backend",
                    server_type: config
                        .and_then(|c| c.server_type.clone())
                        .unwrap_or_default(),
                    started,
                };
                (me, None, Arc::new(|| {}))
            }
        };
    let (probed, control) = (sessions.clone(), node.control.clone());
    let ready: admin::Readiness = Arc::new(move || {
        let (sessions, draining) = (probed.clone(), control.is_draining());
        Box::pin(async move {
            if draining {
                return Err("draining".to_string());
            }
            if let Some(sessions) = sessions {
                if !sessions.store_answers(STORE_PROBE).await {
                    return Err("the session store does not answer".to_string());
                }
            }
            Ok(())
        })
    });
    let node_id = me.id.clone();
    let actions: Arc<dyn AdminActions> = Arc::new(Actions {
        me,
        sessions,
        control: node.control.clone(),
    });
    let served = admin::Admin {
        metrics,
        sample,
        ready,
        actions: secret.map(|s| (s, actions)),
        node_id,
    };
    admin::AdminServer::bind(addr, served)
        .await
        .map_err(|source| NodeError::Admin { addr, source })
}
