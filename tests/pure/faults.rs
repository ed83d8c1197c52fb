//! Bad peers, dead peers and stalled peers, over real TCP on loopback.

use crate::common;

use bytes::{BufMut, BytesMut};
use common::*;
use futures::{SinkExt, StreamExt};
use session_proxy::protocol::{
    BackendCodec, FrontendCodec, Hello, HelloReply, KeyWrite, Message, Precondition, Push, Role,
    PROTOCOL_VERSION,
};
use session_proxy::{ConnectInfo, ErrorCode, SessionConfig};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::Framed;

/// Waits until the server closes `stream` (EOF or reset); panics after 5 s.
async fn assert_closed_by_server(mut stream: TcpStream, what: &str) {
    let mut buf = [0u8; 4096];
    let outcome = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue, // a hello reply, then the close
            }
        }
    })
    .await;
    assert!(
        outcome.is_ok(),
        "{what}: the frontend kept the connection open"
    );
}

async fn handshaken(addr: std::net::SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let mut framed = Framed::new(stream, BackendCodec::default());
    framed
        .send(Message::Hello(Hello::new("rogue", Role::Backend, None)))
        .await
        .expect("send hello");
    match framed.next().await {
        Some(Ok(Message::HelloReply(HelloReply::Accepted { .. }))) => {}
        other => panic!("handshake: {other:?}"),
    }
    let parts = framed.into_parts();
    assert!(parts.read_buf.is_empty());
    parts.io
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_oversized_and_truncated_peers_are_dropped_alone() {
    let f = start_frontend("f1").await;
    let owner = f.sessions.create(ConnectInfo::default());
    let sid = owner.sid();
    let backend = start_backend("good", "f1", f.addr);
    let mut s = backend.get("f1", sid).await.expect("call").expect("open");

    // A well-behaved backend pushes all along.
    let stop = Arc::new(AtomicBool::new(false));
    let pushes = Arc::new(AtomicU64::new(0));
    let worker = {
        let (stop, pushes) = (stop.clone(), pushes.clone());
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                s.set("n", &i).expect("encode");
                s.push("n")
                    .await
                    .expect("the good backend is never disturbed");
                pushes.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
            i
        })
    };

    // Another protocol altogether (its first bytes read as a huge length).
    let mut http = TcpStream::connect(f.addr).await.expect("connect");
    http.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    assert_closed_by_server(http, "http request").await;

    // Random garbage inside a well-sized frame, before the hello.
    let mut garbage = TcpStream::connect(f.addr).await.expect("connect");
    garbage
        .write_all(&[0, 0, 0, 8, 0xc1, 0xc1, 0xff, 0, 1, 2, 3, 4])
        .await
        .expect("write");
    assert_closed_by_server(garbage, "garbage before hello").await;

    // After a valid handshake: an oversized length.
    let mut big = handshaken(f.addr).await;
    big.write_all(&u32::MAX.to_be_bytes()).await.expect("write");
    assert_closed_by_server(big, "oversized length").await;

    // After a valid handshake: garbage in a frame.
    let mut junk = handshaken(f.addr).await;
    junk.write_all(&[0, 0, 0, 3, 0x93, 0xc1, 0xc1])
        .await
        .expect("write");
    assert_closed_by_server(junk, "garbage body").await;

    // After a valid handshake: a truncated frame, then the writer gives up.
    let mut cut = handshaken(f.addr).await;
    let mut frame = BytesMut::new();
    frame.put_u32(100);
    frame.put_slice(&[0x92; 10]);
    cut.write_all(&frame).await.expect("write");
    cut.shutdown().await.expect("half-close");
    assert_closed_by_server(cut, "truncated frame").await;

    // A second hello mid-stream is a protocol violation.
    let stream = handshaken(f.addr).await;
    let mut framed = Framed::new(stream, BackendCodec::default());
    framed
        .send(Message::Hello(Hello::new("again", Role::Backend, None)))
        .await
        .expect("send");
    assert_closed_by_server(framed.into_parts().io, "second hello").await;

    let before = pushes.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.store(true, Ordering::Relaxed);
    let total = worker.await.expect("good backend finished without error");
    assert!(
        total > before,
        "the good backend kept going after the bad peers"
    );
    assert_eq!(
        frontend_value::<u64>(&f.sessions, sid, "n"),
        Some(total - 1)
    );
    assert_eq!(f.sessions.count(), 1);
}

#[tokio::test]
async fn wrong_version_or_role_is_refused_in_the_handshake() {
    let f = start_frontend("f1").await;
    let owner = f.sessions.create(ConnectInfo::default());

    for (hello, want) in [
        (
            Hello {
                version: PROTOCOL_VERSION + 1,
                ..Hello::new("future", Role::Backend, None)
            },
            ErrorCode::VersionMismatch,
        ),
        (
            Hello {
                magic: 0,
                ..Hello::new("stranger", Role::Backend, None)
            },
            ErrorCode::VersionMismatch,
        ),
        (
            Hello::new("peer-frontend", Role::Frontend, None),
            ErrorCode::Unsupported,
        ),
        (
            Hello::new("lost", Role::Backend, Some("f2".into())),
            ErrorCode::WrongFrontend,
        ),
    ] {
        let stream = TcpStream::connect(f.addr).await.expect("connect");
        let mut framed = Framed::new(stream, BackendCodec::default());
        framed.send(Message::Hello(hello)).await.expect("send");
        match framed.next().await {
            Some(Ok(Message::HelloReply(HelloReply::Refused(err)))) => assert_eq!(err.code, want),
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert!(framed.next().await.is_none(), "closed after the refusal");
    }
    // A peer that never says hello is dropped at the handshake deadline;
    // not testing the 5 s default here, only that the node still serves.
    let backend = start_backend("b", "f1", f.addr);
    assert!(backend
        .get("f1", owner.sid())
        .await
        .expect("call")
        .is_some());
}

#[tokio::test]
async fn a_stalled_frontend_fails_calls_at_their_deadline() {
    // A peer that completes the handshake, reads requests, never answers.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let stall = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.expect("accept");
        let mut framed = Framed::new(stream, FrontendCodec::default());
        let _hello = framed.next().await;
        framed.send(common::accepted("f1")).await.expect("reply");
        let mut requests = 0;
        while let Some(Ok(frame)) = framed.next().await {
            // Not the backend's announcement of its remotes (a notify).
            if matches!(frame, Message::Request(_)) {
                requests += 1;
            }
        }
        requests
    });

    let deadline = Duration::from_millis(300);
    let backend = start_backend_with(quick_client("b", deadline), "f1", addr);
    let client = backend.client("f1").expect("known");
    let mut calls = Vec::new();
    for i in 0..20u64 {
        let client = client.clone();
        calls.push(tokio::spawn(async move {
            let t = Instant::now();
            let r = client
                .call(Push {
                    sid: session_proxy::SessionId::from_raw(i),
                    writes: vec![KeyWrite {
                        key: "k".into(),
                        value: None,
                        expect: Precondition::Any,
                    }],
                })
                .await;
            (t.elapsed(), r)
        }));
    }
    for c in calls {
        let (took, r) = c.await.expect("task");
        let err = r.expect_err("nobody answers");
        assert_eq!(err.code(), ErrorCode::DeadlineExceeded, "{err}");
        assert!(
            took >= deadline && took < deadline + Duration::from_millis(700),
            "failed after {took:?}"
        );
    }
    drop((client, backend));
    assert_eq!(
        stall.await.expect("stall peer"),
        20,
        "every request was sent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frontend_death_fails_pending_calls_and_the_backend_recovers() {
    let f = start_frontend("f1").await;
    let addr = f.addr;
    let owner = f.sessions.create(ConnectInfo::default());
    let sid = owner.sid();
    f.sessions.bind(sid, "alice").expect("bind");
    let deadline = Duration::from_millis(800);
    let backend = start_backend_with(quick_client("b", deadline), "f1", addr);
    let client = backend.client("f1").expect("known");

    // Four workers pipeline pushes and record how each call ended and when.
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..4u64 {
        let (client, stop) = (client.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let mut outcomes = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let r = client
                    .call(Push {
                        sid,
                        writes: vec![KeyWrite {
                            key: format!("w{w}"),
                            value: Some(encode(&i)),
                            expect: Precondition::Any,
                        }],
                    })
                    .await;
                outcomes.push((t.elapsed(), r.map(|_| ()).map_err(|e| e.code())));
                i += 1;
                if outcomes.last().is_some_and(|(_, r)| r.is_err()) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            outcomes
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The frontend dies with calls in flight.
    drop(owner);
    drop(f.server);
    tokio::time::sleep(Duration::from_millis(400)).await;

    // It comes back on the same port (a restarted process has new sessions).
    let f2 = start_frontend_with(SessionConfig::new("f1"), addr).await;
    let owner2 = f2.sessions.create(ConnectInfo::default());
    let mut recovered = false;
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        if let Ok(Some(mut s)) = backend.get("f1", owner2.sid()).await {
            s.set("back", &true).expect("encode");
            s.push("back").await.expect("push after recovery");
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    assert!(
        recovered,
        "the same backend service reconnected without a restart"
    );
    assert_eq!(
        frontend_value::<bool>(&f2.sessions, owner2.sid(), "back"),
        Some(true)
    );

    let mut outcomes = Vec::new();
    for w in workers {
        outcomes.extend(w.await.expect("worker"));
    }
    let (ok, failed) = tally_outcomes(outcomes, deadline + Duration::from_millis(500));
    assert!(ok > 0, "calls went through before the death");
    assert!(failed > 0, "calls failed while the frontend was down");
}

#[tokio::test]
async fn shutdown_drains_connections_within_its_bound() {
    let f = start_frontend("f1").await;
    let owner = f.sessions.create(ConnectInfo::default());
    let backends: Vec<_> = (0..3)
        .map(|i| {
            start_backend_with(
                quick_client(&format!("b{i}"), Duration::from_millis(500)),
                "f1",
                f.addr,
            )
        })
        .collect();
    for b in &backends {
        assert!(b.get("f1", owner.sid()).await.expect("connected").is_some());
    }
    let t = Instant::now();
    assert!(
        f.server.shutdown(Duration::from_secs(2)).await,
        "every connection task finished"
    );
    assert!(t.elapsed() < Duration::from_secs(2));
    for b in &backends {
        let err = b
            .get("f1", owner.sid())
            .await
            .expect_err("the frontend is gone");
        assert!(
            matches!(
                err.code(),
                ErrorCode::Unavailable | ErrorCode::PeerClosed | ErrorCode::DeadlineExceeded
            ),
            "{err}"
        );
    }
}

#[tokio::test]
async fn a_backend_redials_a_frontend_that_went_silent_without_closing() {
    // A "frontend" that completes the handshake, then never answers and
    // never closes: a half-open link.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepts = Arc::new(AtomicU64::new(0));
    let counted = accepts.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let Ok((s, _)) = listener.accept().await else {
                return;
            };
            counted.fetch_add(1, Ordering::SeqCst);
            let mut framed = Framed::new(s, FrontendCodec::default());
            let _ = framed.next().await;
            let _ = framed.send(common::accepted("f1")).await;
            held.push(framed); // silent from now on, never closed
        }
    });
    let mut config = quick_client("b", Duration::from_secs(1));
    config.ping_interval = Duration::from_millis(150);
    let backend = start_backend_with(config, "f1", addr);
    let client = backend.client("f1").expect("known");
    eventually(
        Duration::from_secs(5),
        "the silent link is given up",
        || async {
            match accepts.load(Ordering::SeqCst) {
                n if n >= 2 => Ok(()),
                n => Err(format!("{n} connections")),
            }
        },
    )
    .await;
    drop(client);
}

#[tokio::test]
async fn a_frontend_closes_a_backend_link_that_went_silent_and_keeps_live_ones() {
    let sessions = session_proxy::SessionService::new(SessionConfig::new("f1"));
    let mut config = session_proxy::RpcConfig::default();
    config.idle_timeout = Duration::from_millis(400);
    let server = common::rpc_on_loopback(&sessions, config).await;
    let owner = sessions.create(ConnectInfo::default());
    // A backend that says hello and then nothing.
    let silent = handshaken(server.local_addr()).await;
    // A live backend that pings when idle.
    let mut live = quick_client("live", Duration::from_secs(1));
    live.ping_interval = Duration::from_millis(100);
    let live = start_backend_with(live, "f1", server.local_addr());
    assert!(live.get("f1", owner.sid()).await.expect("call").is_some());
    assert_closed_by_server(silent, "silent backend").await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let client = live.client("f1").expect("known");
    assert!(client.is_connected(), "pings kept the live link open");
    assert!(live.get("f1", owner.sid()).await.expect("call").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_for_a_frontend_that_does_not_read_are_bounded_in_bytes() {
    use session_proxy::protocol::{Handle, Request, SessionId, SessionSnapshot};
    const N: u64 = 200;
    const ANSWER: usize = 256 * 1024;
    // A frontend that forwards requests, then reads nothing.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let mut config = quick_client("b", Duration::from_secs(30));
    config.server_type = Some("game".into());
    config.max_queued_answer_bytes = 1024 * 1024;
    let backend = session_proxy::BackendSessionService::new(config).expect("config");
    let handled = Arc::new(AtomicU64::new(0));
    let counted = handled.clone();
    let mut handlers = session_proxy::Handlers::new();
    handlers.add(
        "game.h.big",
        move |_s: session_proxy::BackendSession, _b: serde_json::Value| {
            let counted = counted.clone();
            async move {
                counted.fetch_add(1, Ordering::SeqCst);
                Ok(serde_json::json!("x".repeat(ANSWER)))
            }
        },
    );
    backend.serve(handlers);
    backend.add_frontend("f1", addr.to_string());
    let (stream, _) = listener.accept().await.expect("accept");
    let mut framed = Framed::new(stream, FrontendCodec::default());
    let _hello = framed.next().await;
    framed.send(common::accepted("f1")).await.expect("reply");
    let session = SessionSnapshot {
        sid: SessionId::from_raw(1),
        frontend_id: "f1".into(),
        uid: None,
        settings: Default::default(),
    };
    for id in 1..=N {
        let call = Handle {
            route: "game.h.big".into(),
            session: session.clone(),
            body: bytes::Bytes::from_static(b"{}"),
        };
        let request = Request::new(id, Duration::from_secs(30), call);
        framed.feed(Message::Request(request)).await.expect("send");
    }
    framed.flush().await.expect("flush");
    eventually(Duration::from_secs(10), "every handler runs", || async {
        match handled.load(Ordering::SeqCst) {
            N => Ok(()),
            n => Err(format!("{n} handled")),
        }
    })
    .await;
    // No event says answers stopped being queued: watch a moment. The
    // kernel's socket buffers take some 10 MB; past them and the 1 MiB
    // allowed, the handlers wait with their answers. Without the bound all
    // 200 (50 MiB) went to the writer's queue at once.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let waiting = backend.requests_running() as u64;
    assert!(waiting > N / 2, "{waiting} answers wait for room");
    // Once the frontend reads, every answer arrives, whole.
    let mut answered = 0;
    while answered < N {
        match tokio::time::timeout(Duration::from_secs(10), framed.next()).await {
            Ok(Some(Ok(Message::Response(r)))) => {
                let body = r.result.expect("an answer");
                assert!(body.len() > ANSWER, "{} bytes", body.len());
                answered += 1;
            }
            Ok(Some(Ok(_))) => {}
            other => panic!("answer {answered} never came: {other:?}"),
        }
    }
    eventually(Duration::from_secs(5), "every handler ends", || async {
        match backend.requests_running() {
            0 => Ok(()),
            n => Err(format!("{n} running")),
        }
    })
    .await;
}
