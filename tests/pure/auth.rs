//! Authenticated cluster links: HMAC challenge–response over the shared
//! cluster secret, both ways; a replayed handshake fails. (What refusals
//! log is checked in `auth_logs.rs`.)

use crate::common;

use common::*;
use futures::{SinkExt, StreamExt};
use session_proxy::protocol::{BackendCodec, Hello, HelloReply, Message, Role, Secret};
use session_proxy::{ConnectInfo, ErrorCode};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

const SECRET: &str = "the-cluster-secret-7f3a9c";

#[tokio::test]
async fn a_backend_with_a_secret_refuses_a_frontend_that_does_not_authenticate() {
    let (sessions, server) = secured_frontend(None).await;
    let owner = sessions.create(ConnectInfo::default());
    let b = secured_backend(Some(SECRET), server.local_addr());
    let err = b.get("f1", owner.sid()).await.expect_err("refused");
    let shown = session_proxy::protocol::chain(&err).to_string();
    assert!(shown.contains("did not authenticate"), "{shown}");
}

#[tokio::test]
async fn a_replayed_handshake_is_refused() {
    let (_sessions, server) = secured_frontend(Some(SECRET)).await;
    let secret = Secret::new(SECRET);

    // A legitimate handshake, recorded.
    let stream = TcpStream::connect(server.local_addr())
        .await
        .expect("connect");
    let mut framed = Framed::new(stream, BackendCodec::default());
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
    let mut replay = Framed::new(stream, BackendCodec::default());
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
