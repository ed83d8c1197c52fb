//! Authenticated cluster links: HMAC challenge–response over the shared
//! cluster secret, both ways; refusals are logged with the peer's address,
//! never the secret; a replayed handshake fails.

mod common;

use common::*;
use futures::{SinkExt, StreamExt};
use session_proxy::protocol::{Hello, HelloReply, Message, MessageCodec, Role, Secret};
use session_proxy::{
    BackendSessionService, ConnectInfo, ErrorCode, RpcConfig, RpcServer, SessionConfig,
    SessionService,
};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

const SECRET: &str = "the-cluster-secret-7f3a9c";

async fn frontend(secret: Option<&str>) -> (SessionService, RpcServer) {
    let sessions = SessionService::new(SessionConfig::new("f1"));
    let mut config = RpcConfig::default();
    config.secret = secret.map(Secret::new);
    let server = RpcServer::bind(
        "127.0.0.1:0".parse().expect("addr"),
        sessions.clone(),
        config,
    )
    .await
    .expect("bind");
    (sessions, server)
}

fn backend(secret: Option<&str>, addr: std::net::SocketAddr) -> BackendSessionService {
    let mut config = quick_client("b1", Duration::from_millis(800));
    // Generous handshake time: under a loaded test run the first attempt
    // must fail on authentication, not on a timeout.
    config.handshake_timeout = Duration::from_secs(10);
    config.connect_timeout = Duration::from_secs(10);
    config.deadline = Duration::from_secs(10);
    config.secret = secret.map(Secret::new);
    start_backend_with(config, "f1", addr)
}

/// Log lines written while a test runs (current-thread runtime: every
/// task logs on this thread).
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn only_peers_with_the_secret_get_in_and_refusals_are_logged_without_it() {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let (sessions, server) = frontend(Some(SECRET)).await;
    let owner = sessions.create(ConnectInfo::default());
    let sid = owner.sid();

    // The right secret: calls work.
    let good = backend(Some(SECRET), server.local_addr());
    let mut s = good
        .get("f1", sid)
        .await
        .expect("authenticated")
        .expect("open");
    s.bind("alice").await.expect("bind");

    // A wrong secret, and none at all: refused before any session call.
    for secret in [Some("not-the-secret"), None] {
        let bad = backend(secret, server.local_addr());
        let err = bad.get("f1", sid).await.expect_err("refused");
        assert_eq!(err.code(), ErrorCode::Unavailable, "{err}");
        assert!(
            err.to_string().contains("unauthorized") || err.to_string().contains("secret"),
            "{err}"
        );
        let err = bad
            .client("f1")
            .expect("known")
            .call(session_proxy::protocol::Call::KickBySid {
                sid,
                reason: "x".into(),
            })
            .await
            .expect_err("refused");
        assert_eq!(err.code(), ErrorCode::Unavailable);
    }
    // Nothing the refused peers tried changed anything.
    let now = sessions.get(sid).expect("still open");
    assert_eq!(now.uid.as_deref(), Some("alice"));

    let text = String::from_utf8(logs.0.lock().expect("logs").clone()).expect("utf8");
    assert!(text.contains("failed authentication"), "{text}");
    assert!(text.contains("did not authenticate"), "{text}");
    assert!(
        text.contains("127.0.0.1:"),
        "the peer address is logged: {text}"
    );
    assert!(!text.contains(SECRET), "the secret must never be logged");
    assert!(!text.contains("not-the-secret"));
}

#[tokio::test]
async fn a_backend_with_a_secret_refuses_a_frontend_that_does_not_authenticate() {
    let (sessions, server) = frontend(None).await;
    let owner = sessions.create(ConnectInfo::default());
    let b = backend(Some(SECRET), server.local_addr());
    let err = b.get("f1", owner.sid()).await.expect_err("refused");
    assert!(err.to_string().contains("did not authenticate"), "{err}");
}

#[tokio::test]
async fn a_replayed_handshake_is_refused() {
    let (_sessions, server) = frontend(Some(SECRET)).await;
    let secret = Secret::new(SECRET);

    // A legitimate handshake, recorded.
    let stream = TcpStream::connect(server.local_addr())
        .await
        .expect("connect");
    let mut framed = Framed::new(stream, MessageCodec::default());
    let mut hello = Hello::new("b1", Role::Backend, Some("f1".into()));
    hello.nonce = vec![9u8; 16];
    framed
        .send(Message::Hello(hello.clone()))
        .await
        .expect("hello");
    let Some(Ok(Message::HelloReply(HelloReply::Challenge { nonce, proof }))) = framed.next().await
    else {
        panic!("expected a challenge");
    };
    assert!(
        secret.verify_server(&proof, &hello.nonce, &nonce, "f1"),
        "the frontend proves itself"
    );
    let recorded_proof = secret.client_proof(&nonce, &hello.nonce, "b1");
    framed
        .send(Message::Proof(recorded_proof.clone()))
        .await
        .expect("proof");
    assert!(matches!(
        framed.next().await,
        Some(Ok(Message::HelloReply(HelloReply::Accepted { .. })))
    ));

    // The same bytes again on a new connection: the frontend's nonce is new,
    // so the recorded proof no longer fits.
    let stream = TcpStream::connect(server.local_addr())
        .await
        .expect("connect");
    let mut replay = Framed::new(stream, MessageCodec::default());
    replay.send(Message::Hello(hello)).await.expect("hello");
    let Some(Ok(Message::HelloReply(HelloReply::Challenge { nonce: fresh, .. }))) =
        replay.next().await
    else {
        panic!("expected a challenge");
    };
    assert_ne!(fresh, nonce, "every connection gets a fresh nonce");
    replay
        .send(Message::Proof(recorded_proof))
        .await
        .expect("proof");
    match replay.next().await {
        Some(Ok(Message::HelloReply(HelloReply::Refused(err)))) => {
            assert_eq!(err.code, ErrorCode::Unauthorized)
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(
        replay.next().await.is_none(),
        "and the connection is closed"
    );
}
