//! Helpers shared by the integration tests: real nodes on 127.0.0.1:0.
#![allow(dead_code)]

pub mod chat;
pub mod cluster;
pub mod etcd;
pub mod http;
pub mod logs;
pub mod node;
pub mod nodes;
pub mod proxy;
pub mod redis;
pub mod store;

use bytes::Bytes;
use session_proxy::{
    BackendConfig, BackendSessionService, RpcConfig, RpcServer, SessionConfig, SessionService,
};
use std::net::SocketAddr;
use std::time::Duration;

/// Whether `binary` runs (`binary --version`). A missing one says SKIPPED
/// outside CI and fails the test in CI (`CI` set), where `.ci/run`
/// installs Debian's `package`.
pub fn installed(binary: &str, package: &str) -> bool {
    if std::process::Command::new(binary)
        .arg("--version")
        .output()
        .is_ok()
    {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{binary} is required in CI (.ci/run installs {package})");
    }
    eprintln!("SKIPPED: {binary} is not installed; install {package} to run this test");
    false
}

/// An RPC server for `sessions` with `config`, on a free loopback port.
pub async fn rpc_on_loopback(sessions: &SessionService, config: RpcConfig) -> RpcServer {
    RpcServer::bind(
        "127.0.0.1:0".parse().expect("addr"),
        sessions.clone(),
        config,
    )
    .await
    .expect("the RPC server binds a loopback port")
}

/// A frontend: its sessions and its RPC server.
pub struct Frontend {
    pub sessions: SessionService,
    pub server: RpcServer,
    pub addr: SocketAddr,
    /// The address its backends dial: `addr`, or its `inproc://` address.
    pub dial: String,
}

/// How backends reach a frontend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    /// Over TCP on loopback.
    Tcp,
    /// Through an in-memory pipe, in this process (`RpcConfig::in_process`;
    /// a backend that serves requests turns `in_process_direct` off).
    InProcess,
    /// In this process, forwarded requests calling the backend directly on
    /// the client connection's task (`BackendConfig::in_process_direct`).
    Direct,
}

/// The RPC config of frontend `id` whose backends reach it over `link`: an
/// in-process name, unique in the test binary, unless over TCP.
pub fn rpc_config(id: &str, link: Link) -> RpcConfig {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let mut rpc = RpcConfig::default();
    if link != Link::Tcp {
        // Tests run side by side in one process.
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        rpc.in_process = Some(format!("{id}-{n}"));
    }
    rpc
}

pub async fn start_frontend(id: &str) -> Frontend {
    start_frontend_on(id, Link::Tcp).await
}

/// A frontend that its backends reach over `link`.
pub async fn start_frontend_on(id: &str, link: Link) -> Frontend {
    start_frontend_with_on(SessionConfig::new(id), link).await
}

pub async fn start_frontend_with(config: SessionConfig, addr: SocketAddr) -> Frontend {
    start_frontend_at(config, addr, Link::Tcp).await
}

pub async fn start_frontend_with_on(config: SessionConfig, link: Link) -> Frontend {
    start_frontend_at(config, "127.0.0.1:0".parse().expect("addr"), link).await
}

async fn start_frontend_at(config: SessionConfig, addr: SocketAddr, link: Link) -> Frontend {
    let rpc = rpc_config(&config.frontend_id, link);
    let sessions = SessionService::new(config);
    let server = RpcServer::bind(addr, sessions.clone(), rpc)
        .await
        .expect("frontend binds a loopback port");
    let addr = server.local_addr();
    let dial = match server.in_process_addr() {
        Some(inproc) => inproc.to_string(),
        None => addr.to_string(),
    };
    Frontend {
        sessions,
        server,
        addr,
        dial,
    }
}

/// A backend that knows one frontend, at `addr` (TCP or `inproc://`).
pub fn start_backend(
    name: &str,
    frontend_id: &str,
    addr: impl std::fmt::Display,
) -> BackendSessionService {
    start_backend_with(BackendConfig::new(name), frontend_id, addr)
}

pub fn start_backend_with(
    config: BackendConfig,
    frontend_id: &str,
    addr: impl std::fmt::Display,
) -> BackendSessionService {
    let backend = BackendSessionService::new(config).expect("valid config");
    backend.add_frontend(frontend_id, addr.to_string());
    backend
}

/// A client config with short deadlines and backoff, for failure tests.
pub fn quick_client(name: &str, deadline: Duration) -> BackendConfig {
    let mut c = BackendConfig::new(name);
    c.deadline = deadline;
    c.backoff_min = Duration::from_millis(20);
    c.backoff_max = Duration::from_millis(200);
    c.connect_timeout = Duration::from_millis(500);
    c.handshake_timeout = Duration::from_millis(500);
    c
}

pub fn encode<T: serde::Serialize + ?Sized>(v: &T) -> Bytes {
    Bytes::from(rmp_serde::to_vec_named(v).expect("test values encode"))
}

pub fn decode<T: serde::de::DeserializeOwned>(b: &Bytes) -> T {
    rmp_serde::from_slice(b).expect("test values decode")
}

/// The decoded value of `key` in the frontend's copy of a session.
pub fn frontend_value<T: serde::de::DeserializeOwned>(
    sessions: &SessionService,
    sid: session_proxy::SessionId,
    key: &str,
) -> Option<T> {
    sessions
        .get(sid)
        .expect("session open")
        .settings
        .get(key)
        .map(|s| decode(&s.value))
}

/// Checks how calls ended while a frontend died and came back: each ended
/// within `within`, and each failure is one a dead frontend explains
/// (connection lost, unreachable, deadline, or its sessions gone after the
/// restart). Returns (succeeded, failed).
pub fn tally_outcomes(
    outcomes: impl IntoIterator<Item = (Duration, Result<(), session_proxy::ErrorCode>)>,
    within: Duration,
) -> (usize, usize) {
    use session_proxy::ErrorCode;
    let (mut ok, mut failed) = (0, 0);
    for (took, r) in outcomes {
        assert!(took < within, "a call took {took:?}");
        match r {
            Ok(()) => ok += 1,
            Err(code) => {
                failed += 1;
                assert!(
                    matches!(
                        code,
                        ErrorCode::PeerClosed
                            | ErrorCode::Unavailable
                            | ErrorCode::DeadlineExceeded
                            | ErrorCode::SessionNotFound
                    ),
                    "unexpected error {code:?}"
                );
            }
        }
    }
    (ok, failed)
}

/// A frontend whose RPC server requires `secret` (none: no authentication).
pub async fn secured_frontend(
    secret: Option<&str>,
) -> (session_proxy::SessionService, session_proxy::RpcServer) {
    let sessions = session_proxy::SessionService::new(session_proxy::SessionConfig::new("f1"));
    let mut config = session_proxy::RpcConfig::default();
    config.secret = secret.map(session_proxy::protocol::Secret::new);
    let server = rpc_on_loopback(&sessions, config).await;
    (sessions, server)
}

/// A backend of frontend "f1" that authenticates with `secret`. Generous
/// handshake time: under a loaded test run a first attempt must fail on
/// authentication, not on a timeout.
pub fn secured_backend(secret: Option<&str>, addr: SocketAddr) -> BackendSessionService {
    let mut config = quick_client("b1", Duration::from_millis(800));
    config.handshake_timeout = Duration::from_secs(10);
    config.connect_timeout = Duration::from_secs(10);
    config.deadline = Duration::from_secs(10);
    config.secret = secret.map(session_proxy::protocol::Secret::new);
    start_backend_with(config, "f1", addr)
}

/// Appends a Pomelo client's handshake package (raw clients in tests).
pub fn encode_client_handshake(out: &mut bytes::BytesMut) {
    use session_proxy::protocol::client::{PackageCodec, PackageType, MAX_PACKAGE_BODY};
    PackageCodec::new(MAX_PACKAGE_BODY)
        .encode_to(
            PackageType::Handshake,
            br#"{"sys":{"type":"test","version":"1"},"user":{}}"#,
            out,
        )
        .expect("a handshake encodes");
}

/// What a frontend answers an accepted hello (fake frontends in tests).
pub fn accepted(
    node_id: &str,
) -> session_proxy::protocol::Message<session_proxy::protocol::BackendCall> {
    use session_proxy::protocol::{unix_ms, HelloReply, Message, PROTOCOL_VERSION};
    Message::HelloReply(HelloReply::Accepted {
        version: PROTOCOL_VERSION,
        node_id: node_id.into(),
        clock_ms: unix_ms(),
    })
}

/// Waits for the next session to be parked (its client left, resume on)
/// among `events`, for at most `within`.
pub async fn next_parked(
    events: &mut tokio::sync::broadcast::Receiver<session_proxy::frontend::SessionEvent>,
    within: Duration,
) -> session_proxy::SessionId {
    let wait = async {
        loop {
            match events.recv().await {
                Ok(session_proxy::frontend::SessionEvent::Parked { sid }) => return sid,
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(err) => panic!("session events ended: {err}"),
            }
        }
    };
    tokio::time::timeout(within, wait)
        .await
        .expect("a session was parked")
}

/// Checks `probe` until it answers `Ok`, for at most `within`, and returns
/// its value; panics with `what` and the probe's last `Err` otherwise. For
/// state that announces no event (another process's, the runtime's own
/// task count): each turn is a real check, not a guess at how long
/// something takes.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let until = tokio::time::Instant::now() + within;
    loop {
        match probe().await {
            Ok(value) => return value,
            Err(last) => assert!(
                tokio::time::Instant::now() < until,
                "{what} (not within {within:?}): {last}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The resume token `client` got in its handshake.
pub fn token_of(client: &session_proxy_client::PomeloClient) -> String {
    client
        .resume_token()
        .expect("a resume token in the handshake")
        .to_string()
}

/// The session a resume token names (its first 16 hex digits).
pub fn sid_of(token: &str) -> session_proxy::SessionId {
    session_proxy::SessionId::from_raw(
        u64::from_str_radix(&token[..16], 16).expect("the token starts with the sid"),
    )
}

/// Binds `uid` to session `sid` of frontend `frontend`, as a backend's
/// handler does; panics if the frontend does not answer or has no such
/// session.
pub async fn bind_via(
    backend: &session_proxy::BackendSessionService,
    frontend: &str,
    sid: session_proxy::SessionId,
    uid: &str,
) -> Result<(), session_proxy::backend::Error> {
    backend
        .get(frontend, sid)
        .await
        .expect("the frontend answers")
        .expect("the session is open")
        .bind(uid)
        .await
}

/// Waits until `backend` runs exactly `n` requests (handlers and remote
/// methods), for at most 5 s; `what` names the wait.
pub async fn running(backend: &session_proxy::BackendSessionService, n: usize, what: &str) {
    eventually(Duration::from_secs(5), what, || async {
        match backend.requests_running() {
            now if now == n => Ok(()),
            now => Err(format!("{now} running")),
        }
    })
    .await;
}
