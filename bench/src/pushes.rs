//! Pipelined backend → frontend pushes on one RPC connection, the way a
//! backend handler's `session.push` reaches the frontend that owns the
//! session.
//!
//! The frontend (an [`RpcServer`] over a [`SessionService`] holding
//! `sessions` open sessions) and the backend ([`FrontendClient`]) each run
//! on their own thread with a single-threaded runtime, like two processes
//! with a core each, and talk over real loopback TCP. The backend keeps
//! `window` pushes in flight and writes one key per push, cycling through
//! the sessions.

use super::BenchResult;
use anyhow::Context as _;
use session_proxy_backend::{BackendConfig, FrontendClient, PendingCall};
use session_proxy_frontend::{ConnectInfo, RpcConfig, RpcServer, SessionConfig, SessionService};
use session_proxy_protocol::{GetSession, KeyWrite, Precondition, Push, SessionId};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// What to run.
#[derive(Clone, Debug)]
pub struct PushOptions {
    /// Open sessions on the frontend.
    pub sessions: usize,
    /// Pushes to send.
    pub count: usize,
    /// Pushes in flight at once.
    pub window: usize,
}

impl Default for PushOptions {
    fn default() -> Self {
        PushOptions {
            sessions: 10_000,
            count: 1_000_000,
            window: 4096,
        }
    }
}

/// Runs the benchmark; blocks the calling thread until it is done.
pub fn pushes(o: PushOptions) -> anyhow::Result<BenchResult> {
    anyhow::ensure!(
        o.sessions > 0 && o.window > 0,
        "sessions and window must be > 0"
    );
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<(SocketAddr, Vec<SessionId>)>();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let sessions = o.sessions;
    let frontend = std::thread::Builder::new()
        .name("frontend".into())
        .spawn(move || -> anyhow::Result<()> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let service = SessionService::new(SessionConfig::new("connector-1"));
                let server = RpcServer::bind(
                    "127.0.0.1:0".parse()?,
                    service.clone(),
                    RpcConfig::default(),
                )
                .await?;
                let owners: Vec<_> = (0..sessions)
                    .map(|_| service.create(ConnectInfo::default()))
                    .collect();
                let sids = owners.iter().map(|o| o.sid()).collect();
                ready_tx
                    .send((server.local_addr(), sids))
                    .context("the backend side went away")?;
                let _ = stop_rx.await;
                server.shutdown(Duration::from_secs(1)).await;
                drop(owners);
                Ok(())
            })
        })
        .context("starting the frontend thread")?;
    let (addr, sids) = ready_rx
        .recv()
        .context("the frontend thread failed to start")?;
    let backend = std::thread::Builder::new()
        .name("backend".into())
        .spawn(move || -> anyhow::Result<(Duration, u64)> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(run_backend(addr, sids, o.count, o.window))
        })
        .context("starting the backend thread")?;
    let outcome = backend
        .join()
        .map_err(|_| anyhow::anyhow!("the backend thread panicked"));
    let _ = stop_tx.send(());
    let front = frontend
        .join()
        .map_err(|_| anyhow::anyhow!("the frontend thread panicked"));
    let (elapsed, errors) = outcome??;
    front??;
    let seconds = elapsed.as_secs_f64();
    let on = (addr.to_string(), "rpc".to_string());
    let done = o.count as u64 - errors;
    Ok(BenchResult::measured(
        "pushes",
        on,
        1,
        seconds,
        (done, errors),
    ))
}

async fn run_backend(
    addr: SocketAddr,
    sids: Vec<SessionId>,
    count: usize,
    window: usize,
) -> anyhow::Result<(Duration, u64)> {
    let client =
        FrontendClient::connect("connector-1", addr.to_string(), BackendConfig::new("bench"))?;
    // One call first: the connection is up before the clock starts.
    client
        .call(GetSession { sid: sids[0] })
        .await
        .context("first call to the frontend")?;
    let value = rmp_serde::to_vec(&"lobby-042").context("encoding the value")?;
    let value = bytes::Bytes::from(value);
    let mut inflight: VecDeque<PendingCall<Push>> = VecDeque::with_capacity(window);
    let mut errors = 0u64;
    let mut settle = |reply: Result<Vec<Option<u64>>, session_proxy_backend::Error>| {
        if reply.is_err() {
            errors += 1
        }
    };
    let started = Instant::now();
    for k in 0..count {
        if inflight.len() == window {
            if let Some(p) = inflight.pop_front() {
                settle(p.response().await);
            }
        }
        let call = Push {
            sid: sids[k % sids.len()],
            writes: vec![KeyWrite {
                key: "room".into(),
                value: Some(value.clone()),
                expect: Precondition::Any,
            }],
        };
        inflight.push_back(client.send(call).await.context("queueing a push")?);
    }
    for p in inflight {
        settle(p.response().await);
    }
    Ok((started.elapsed(), errors))
}
