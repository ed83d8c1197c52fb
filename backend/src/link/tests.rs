//! The link against a scripted frontend on a real loopback socket: redial,
//! pings both ways, silence detection, pending calls failed on a dead link,
//! abandoned calls cancelled, and dial errors that keep their cause.

use super::*;
use futures::{SinkExt, StreamExt};
use session_proxy_protocol::{
    ErrorCode, FrontendCodec, GetSession, HelloReply, Response, SessionId, PROTOCOL_VERSION,
};
use std::error::Error as _;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::Framed;

type Peer = Framed<TcpStream, FrontendCodec>;

async fn listener() -> (TcpListener, String) {
    let l = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = l.local_addr().expect("addr").to_string();
    (l, addr)
}

/// Accepts one connection and answers its hello as frontend `me`.
async fn accept(l: &TcpListener, me: &str) -> Peer {
    let (stream, _) = l.accept().await.expect("accept");
    let mut peer = Framed::new(stream, FrontendCodec::new(1 << 20));
    match peer.next().await {
        Some(Ok(Message::Hello(_))) => {}
        other => panic!("expected a hello, got {other:?}"),
    }
    peer.send(Message::HelloReply(HelloReply::Accepted {
        version: PROTOCOL_VERSION,
        node_id: me.to_string(),
        clock_ms: session_proxy_protocol::unix_ms(),
    }))
    .await
    .expect("answer the hello");
    peer
}

/// The next request the backend sent.
async fn next_request(peer: &mut Peer) -> Request<FrontendCall> {
    loop {
        match peer.next().await {
            Some(Ok(Message::Request(r))) => return r,
            Some(Ok(_)) => continue,
            other => panic!("expected a request, got {other:?}"),
        }
    }
}

/// The next frame that is not a request or a response, skipping those.
async fn next_link_frame(peer: &mut Peer) -> Message<FrontendCall> {
    loop {
        match peer.next().await {
            Some(Ok(Message::Request(_) | Message::Response(_))) => continue,
            Some(Ok(frame)) => return frame,
            other => panic!("expected a frame, got {other:?}"),
        }
    }
}

fn config() -> BackendConfig {
    let mut c = BackendConfig::new("backend-test");
    c.deadline = Duration::from_secs(30);
    c.backoff_min = Duration::from_millis(20);
    c.backoff_max = Duration::from_millis(100);
    c
}

fn get(n: u64) -> GetSession {
    GetSession {
        sid: SessionId::from_raw(n),
    }
}

#[tokio::test]
async fn every_pending_call_fails_at_once_when_the_link_dies() {
    let (l, addr) = listener().await;
    let client = FrontendClient::connect("f-1", addr, config()).expect("valid");
    let frontend = async {
        let mut peer = accept(&l, "f-1").await;
        for _ in 0..3 {
            next_request(&mut peer).await;
        }
        drop(peer); // the frontend dies with three calls unanswered
    };
    let started = Instant::now();
    let calls = async {
        let mut pending = Vec::new();
        for n in 0..3 {
            pending.push(client.send(get(n)).await.expect("queued"));
        }
        futures::future::join_all(pending.into_iter().map(PendingCall::response)).await
    };
    let ((), outcomes) = tokio::join!(frontend, calls);
    for outcome in outcomes {
        match outcome {
            Err(Error::ConnectionLost { source, .. }) => {
                assert!(matches!(*source, LinkError::Closed), "{source}")
            }
            other => panic!("expected ConnectionLost, got {other:?}"),
        }
    }
    // Failed by the link's end, not by their 30 s deadline.
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn a_silent_frontend_is_found_by_ping_and_the_link_redials() {
    let (l, addr) = listener().await;
    let mut c = config();
    c.ping_interval = Duration::from_millis(100);
    let client = FrontendClient::connect("f-1", addr, c).expect("valid");
    let call = tokio::spawn({
        let client = client.clone();
        async move { client.call(get(1)).await }
    });
    let mut first = accept(&l, "f-1").await;
    // The call arrives and is never answered; after a quiet ping interval
    // the backend pings, which is never answered either.
    assert!(matches!(
        next_request(&mut first).await.call,
        FrontendCall::GetSession(_)
    ));
    assert!(matches!(
        next_link_frame(&mut first).await,
        Message::Ping(_)
    ));
    match call.await.expect("no panic") {
        Err(Error::ConnectionLost { source, .. }) => {
            assert!(matches!(*source, LinkError::Silent(_)), "{source}")
        }
        other => panic!("expected ConnectionLost(Silent), got {other:?}"),
    }
    // The link redials; the new connection works, and the backend answers
    // the frontend's own pings.
    let mut second = accept(&l, "f-1").await;
    client
        .connected(Duration::from_secs(5))
        .await
        .expect("reconnected");
    second
        .send(Message::Ping(7))
        .await
        .expect("ping the backend");
    assert_eq!(next_link_frame(&mut second).await, Message::Pong(7));
    let answered = tokio::spawn({
        let client = client.clone();
        async move { client.call(get(2)).await }
    });
    let req = next_request(&mut second).await;
    second
        .send(Message::Response(Response {
            id: req.id,
            result: GetSession::encode_reply(&None).map_err(|e| RpcError::new(e.code(), "")),
        }))
        .await
        .expect("answer");
    assert!(matches!(answered.await.expect("no panic"), Ok(None)));
}

#[tokio::test]
async fn an_abandoned_call_is_cancelled_on_the_frontend_and_an_unreadable_reply_is_typed() {
    let (l, addr) = listener().await;
    let client = FrontendClient::connect("f-1", addr, config()).expect("valid");
    let (mut peer, pending) = tokio::join!(accept(&l, "f-1"), async {
        client.send(get(1)).await.expect("queued")
    });
    let req = next_request(&mut peer).await;
    // The caller gives up before the answer: the frontend hears of it.
    drop(pending);
    assert_eq!(next_link_frame(&mut peer).await, Message::Cancel(req.id));
    // A reply that is not the call's reply type is an error of its own
    // kind, never another call's answer.
    let call = tokio::spawn({
        let client = client.clone();
        async move { client.call(get(2)).await }
    });
    let req = next_request(&mut peer).await;
    peer.send(Message::Response(Response {
        id: req.id,
        result: Ok(bytes::Bytes::from_static(&[0x92, 0x01, 0x02])),
    }))
    .await
    .expect("answer");
    match call.await.expect("no panic") {
        Err(
            err @ Error::BadReply {
                call: "get_session",
                ..
            },
        ) => {
            assert_eq!(err.code(), ErrorCode::Malformed)
        }
        other => panic!("expected BadReply, got {other:?}"),
    }
}

#[tokio::test]
async fn an_unreachable_frontend_fails_fast_and_keeps_the_io_cause() {
    // A port that was just free: nothing listens there.
    let addr = {
        let (l, addr) = listener().await;
        drop(l);
        addr
    };
    let client = FrontendClient::connect("f-1", addr, config()).expect("valid");
    let err = client
        .connected(Duration::from_millis(300))
        .await
        .expect_err("nobody listens");
    let Error::Unavailable { source, .. } = &err else {
        panic!("expected Unavailable, got {err:?}");
    };
    let LinkError::Connect { source: io, .. } = &**source else {
        panic!("expected a connect error, got {source}");
    };
    assert_eq!(io.kind(), std::io::ErrorKind::ConnectionRefused);
    // The chain is walkable: Error -> LinkError -> io::Error.
    let link = err.source().expect("a source");
    assert!(link.source().is_some(), "the I/O cause is kept");
    // A call made now fails at once, not at its 30 s deadline.
    let started = Instant::now();
    assert!(matches!(
        client.call(get(1)).await,
        Err(Error::Unavailable { .. })
    ));
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn another_node_at_the_address_is_refused_by_name() {
    let (l, addr) = listener().await;
    let client = FrontendClient::connect("f-1", addr, config()).expect("valid");
    let _impostor = tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            held.push(accept(&l, "f-2").await);
        }
    });
    let err = client
        .connected(Duration::from_secs(2))
        .await
        .expect_err("wrong node");
    let Error::Unavailable { source, .. } = err else {
        panic!("expected Unavailable, got {err:?}");
    };
    assert!(
        matches!(&*source, LinkError::WrongFrontend { expected, reached } if expected == "f-1" && reached == "f-2"),
        "{source}"
    );
}

#[tokio::test]
async fn a_bad_config_is_refused_with_the_field_named() {
    let mut c = config();
    c.queue = 0;
    match FrontendClient::connect("f-1", "127.0.0.1:1".into(), c) {
        Err(Error::Config(e)) => assert_eq!(e.field, "queue"),
        other => panic!("expected a config error, got {other:?}"),
    }
}
