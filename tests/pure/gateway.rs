//! The client gateway over real sockets: pushes, broadcasts, channels,
//! heartbeats, bad clients, dead backends (forwarding itself, over each
//! path to a backend, is `forwarding`).

use crate::common;

use common::cluster::*;
use serde_json::json;
use session_proxy_client::{PomeloClient, PomeloEvent, PomeloOptions, Transport};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_by_uid_broadcast_and_channels_reach_each_session_once() {
    let f1 = start_frontend("f1", |_| {}).await;
    let f2 = start_frontend("f2", |_| {}).await;
    let (backend, channels) = start_backend("game-1", &[&f1, &f2]);
    wait_for_backends(&f1, 1).await;
    wait_for_backends(&f2, 1).await;

    // alice has two sessions on f1; bob one on f2; an anonymous one on f2.
    let mut alice1 = client(f1.gateway.local_addr(), Transport::Tcp).await;
    let mut alice2 = client(f1.gateway.local_addr(), Transport::WebSocket).await;
    let mut bob = client(f2.gateway.local_addr(), Transport::Tcp).await;
    let mut anon = client(f2.gateway.local_addr(), Transport::Tcp).await;
    for (c, uid) in [(&alice1, "alice"), (&alice2, "alice"), (&bob, "bob")] {
        c.request("connector.entry.login", &json!({ "uid": uid }))
            .await
            .expect("login");
    }

    let missed = backend
        .push_to_uids(
            "f1",
            "onMail",
            &json!({ "n": 1 }),
            vec!["alice".into(), "ghost".into()],
        )
        .await
        .expect("push");
    assert_eq!(missed, vec!["ghost".to_string()]);
    for c in [&mut alice1, &mut alice2] {
        assert_eq!(
            c.next_push(WAIT).await.expect("mail"),
            ("onMail".into(), json!({ "n": 1 }))
        );
        assert!(
            c.next_event(Duration::from_millis(100)).await.is_none(),
            "exactly once"
        );
    }

    let reached = backend
        .broadcast(Some("connector"), "onNews", &json!("all"), false)
        .await
        .expect("broadcast");
    assert_eq!(reached, 4);
    let none = json!("none");
    let to_gates = backend
        .broadcast(Some("gate"), "onNews", &none, false)
        .await;
    assert_eq!(to_gates.expect("broadcast"), 0, "no frontend of that type");
    for c in [&mut alice1, &mut alice2, &mut bob, &mut anon] {
        assert_eq!(c.next_push(WAIT).await.expect("news").0, "onNews");
        assert!(
            c.next_event(Duration::from_millis(50)).await.is_none(),
            "exactly once"
        );
    }
    assert_eq!(
        backend
            .broadcast(None, "onNews", &json!("bound"), true)
            .await
            .expect("broadcast"),
        3
    );
    assert!(
        anon.next_event(Duration::from_millis(100)).await.is_none(),
        "unbound skipped"
    );
    for c in [&mut alice1, &mut alice2, &mut bob] {
        assert_eq!(c.next_push(WAIT).await.expect("news").1, json!("bound"));
    }

    // A channel across both frontends; carol never logged in (her frontend
    // says so: she leaves), dave's frontend is unknown to this backend (it
    // cannot say: he stays).
    channels.add("room", "alice", "f1");
    channels.add("room", "bob", "f2");
    channels.add("room", "carol", "f2");
    channels.add("room", "dave", "f9");
    let missed = channels
        .push("room", "onChat", &json!({ "msg": "hi" }))
        .await
        .expect("push");
    assert_eq!(missed, vec!["carol".to_string(), "dave".to_string()]);
    for c in [&mut alice1, &mut alice2, &mut bob] {
        assert_eq!(
            c.next_push(WAIT).await.expect("chat").1,
            json!({ "msg": "hi" })
        );
    }
    assert!(anon.next_event(Duration::from_millis(100)).await.is_none());
    assert_eq!(channels.members("room"), vec!["alice", "bob", "dave"]);
    assert!(channels.leave("room", "dave"));
    assert_eq!(channels.members("room"), vec!["alice", "bob"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_is_closed_at_the_heartbeat_timeout() {
    let f = start_frontend("f1", |c| c.heartbeat = Duration::from_secs(1)).await;
    let mut options = PomeloOptions::default();
    options.heartbeats = false;
    let mut silent = PomeloClient::connect_with(f.gateway.local_addr(), options)
        .await
        .expect("connect");
    let mut talking = client(f.gateway.local_addr(), Transport::Tcp).await;
    assert_eq!(f.sessions.count(), 2);
    let t = Instant::now();
    loop {
        match silent.next_event(Duration::from_secs(5)).await {
            Some(PomeloEvent::Closed) => break,
            Some(_) => continue,
            None => panic!("the silent client was not closed"),
        }
    }
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(4),
        "closed after {took:?}"
    );
    assert!(
        talking
            .next_event(Duration::from_millis(1500))
            .await
            .is_none(),
        "the live client stays"
    );
    talking
        .request("connector.entry.login", &json!({ "uid": "u" }))
        .await
        .expect("alive");
    // The silent client's session waits for a resume (default grace 30 s).
    let parked: Vec<_> = f
        .sessions
        .sids()
        .into_iter()
        .filter(|s| f.sessions.is_parked(*s))
        .collect();
    assert_eq!((f.sessions.count(), parked.len()), (2, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_clients_are_disconnected_alone() {
    let f = start_frontend("f1", |c| {
        c.max_package = 1024;
        c.handshake_timeout = Duration::from_millis(500);
    })
    .await;
    let (_b, _) = start_backend("game-1", &[&f]);
    wait_for_backends(&f, 1).await;
    let good = client(f.gateway.local_addr(), Transport::WebSocket).await;
    let keep_going = tokio::spawn(async move {
        for i in 0..200 {
            let v = good
                .request("game.h.echo", &json!({ "i": i }))
                .await
                .expect("good client unaffected");
            assert_eq!(v["i"], i);
        }
    });

    async fn assert_dropped(mut s: TcpStream, what: &str) {
        let mut buf = [0u8; 1024];
        let r = tokio::time::timeout(WAIT, async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => continue,
                }
            }
        })
        .await;
        assert!(r.is_ok(), "{what}: still connected");
    }
    let addr = f.gateway.local_addr();
    // Unknown package type.
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(&[9, 0, 0, 0]).await.expect("write");
    assert_dropped(s, "unknown package type").await;
    // Oversized package.
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(&[1, 0x10, 0, 0]).await.expect("write");
    assert_dropped(s, "oversized").await;
    // Never handshakes.
    let s = TcpStream::connect(addr).await.expect("connect");
    assert_dropped(s, "no handshake").await;
    // Handshake that is not JSON: refused with code 500, then closed.
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(&[1, 0, 0, 3, b'x', b'y', b'z'])
        .await
        .expect("write");
    let mut reply = vec![0u8; 64];
    let n = s.read(&mut reply).await.expect("reply");
    assert_eq!(reply[0], 1);
    let refusal: serde_json::Value = serde_json::from_slice(&reply[4..n]).expect("JSON");
    assert_eq!(refusal["code"], 500);
    assert_eq!(refusal["error"], "handshake is not JSON");
    assert_dropped(s, "bad handshake").await;
    // A malformed message after a proper handshake.
    let bad = client(addr, Transport::Tcp).await;
    bad.send_raw(bytes::Bytes::from_static(&[4, 0, 0, 1, 0x0e]))
        .await
        .expect("send");
    let mut bad = bad;
    loop {
        match bad.next_event(WAIT).await {
            Some(PomeloEvent::Closed) => break,
            Some(_) => continue,
            None => panic!("malformed message: still connected"),
        }
    }
    keep_going.await.expect("the good client finished");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_dying_mid_request_gives_waiting_clients_an_error() {
    let f = start_frontend("f1", |c| c.request_deadline = Duration::from_secs(3)).await;
    let (backend, _) = start_backend("game-1", &[&f]);
    wait_for_backends(&f, 1).await;
    let c = client(f.gateway.local_addr(), Transport::Tcp).await;
    let waiting = tokio::spawn(async move {
        let t = Instant::now();
        let answer = c.request("game.h.slow", &json!({ "ms": 10_000 })).await;
        (t.elapsed(), answer, c)
    });
    common::running(&backend, 1, "the slow request reaches the backend").await;
    backend.close(); // the backend goes away with the request in flight
    let (took, answer, c) = waiting.await.expect("task");
    let answer = answer.expect("an error response, not silence");
    assert_eq!(answer["code"], 500, "{answer}");
    assert!(took < Duration::from_secs(3), "took {took:?}");
    // No backend now: a clear error, and the connection stays usable.
    let answer = c.request("game.h.echo", &json!({})).await.expect("answer");
    assert!(
        answer["msg"]
            .as_str()
            .expect("msg")
            .contains("no game server"),
        "{answer}"
    );
    assert_eq!(f.sessions.count(), 1);
}

/// A raw TCP client that handshakes and logs in as `uid`, then is left
/// alone: nothing reads its socket any more.
async fn logged_in_raw_client(addr: std::net::SocketAddr, uid: &str) -> TcpStream {
    use bytes::BytesMut;
    use session_proxy::protocol::client::{
        encode_parts, MessageType, PackageCodec, PackageType, Route, MAX_PACKAGE_BODY,
    };
    use tokio_util::codec::Decoder;
    let mut codec = PackageCodec::new(MAX_PACKAGE_BODY);
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let mut out = BytesMut::new();
    common::encode_client_handshake(&mut out);
    s.write_all(&out).await.expect("write");
    let mut buf = BytesMut::new();
    // Handshake reply, then (after the ack and the login) the login answer.
    for want in [PackageType::Handshake, PackageType::Data] {
        loop {
            if let Some(p) = codec.decode(&mut buf).expect("valid package") {
                if p.kind == want {
                    break;
                }
                continue;
            }
            assert!(s.read_buf(&mut buf).await.expect("read") > 0, "closed");
        }
        if want == PackageType::Handshake {
            out.clear();
            codec
                .encode_to(PackageType::HandshakeAck, &[], &mut out)
                .expect("encode");
            let login = format!(r#"{{"uid":"{uid}"}}"#);
            codec
                .encode_with(PackageType::Data, &mut out, |b| {
                    encode_parts(
                        MessageType::Request,
                        1,
                        &Route::Name("connector.entry.login".into()),
                        login.as_bytes(),
                        b,
                    )
                })
                .expect("encode");
            s.write_all(&out).await.expect("write");
        }
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_are_answered_once_written_or_after_the_wait() {
    let f1 = start_frontend("f1", |_| {}).await;
    let (backend, _channels) = start_backend("game-1", &[&f1]);
    wait_for_backends(&f1, 1).await;
    let mut fast = client(f1.gateway.local_addr(), Transport::Tcp).await;
    fast.request("connector.entry.login", &json!({ "uid": "fast" }))
        .await
        .expect("login");
    let _slow = logged_in_raw_client(f1.gateway.local_addr(), "slow").await;

    // Big pushes to a client that does not read: each is answered as soon
    // as it is written, until the socket buffers are full; then the answer
    // waits for the write, up to RpcConfig::push_write_wait (1 s).
    let big = json!("x".repeat(256 * 1024));
    let mut blocked = None;
    for n in 0..64 {
        let t = Instant::now();
        let missed = backend
            .push_to_uids("f1", "onBig", &big, vec!["slow".into()])
            .await
            .expect("push");
        assert!(missed.is_empty(), "the slow client is still connected");
        if t.elapsed() >= Duration::from_millis(800) {
            blocked = Some(n);
            break;
        }
    }
    assert!(
        blocked.is_some_and(|n| n > 0),
        "the first pushes were written at once, a later one waited: {blocked:?}"
    );

    // A client that reads is answered at once, whatever the other does.
    let t = Instant::now();
    backend
        .push_to_uids("f1", "onHi", &json!(1), vec!["fast".into()])
        .await
        .expect("push");
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(fast.next_push(WAIT).await.expect("push").0, "onHi");

    // Both: the answer waits for the slow one, up to the wait.
    let t = Instant::now();
    let missed = backend
        .push_to_uids("f1", "onHi", &json!(2), vec!["fast".into(), "slow".into()])
        .await
        .expect("push");
    assert!(missed.is_empty());
    assert!(
        t.elapsed() >= Duration::from_millis(800),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(fast.next_push(WAIT).await.expect("push").1, json!(2));
}
