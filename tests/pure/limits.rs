//! Every limit, crossed: a clear error or a clean disconnect for the one
//! that crossed it, and everyone else unaffected.

use crate::common;

use common::*;
use futures::{SinkExt, StreamExt};
use serde_json::json;
use session_proxy::frontend::{Gateway, GatewayConfig, GatewayServer};
use session_proxy::protocol::{FrontendCodec, KeyWrite, Precondition, Push};
use session_proxy::{ConnectInfo, ErrorCode, RpcConfig, RpcServer, SessionConfig, SessionService};
use session_proxy_client::{PomeloClient, PomeloEvent, PomeloOptions};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::Framed;

async fn gateway(
    config: SessionConfig,
    tweak: impl FnOnce(&mut GatewayConfig),
) -> (SessionService, RpcServer, GatewayServer) {
    gateway_with(config, RpcConfig::default(), tweak).await
}

async fn gateway_with(
    config: SessionConfig,
    rpc_config: RpcConfig,
    tweak: impl FnOnce(&mut GatewayConfig),
) -> (SessionService, RpcServer, GatewayServer) {
    let sessions = SessionService::new(config);
    let rpc = common::rpc_on_loopback(&sessions, rpc_config).await;
    let mut gw = GatewayConfig::default();
    tweak(&mut gw);
    let server = Gateway::new(sessions.clone(), rpc.backends(), gw)
        .bind("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("gateway");
    (sessions, rpc, server)
}

#[tokio::test]
async fn settings_per_session_count_and_bytes() {
    let mut config = SessionConfig::new("f1");
    config.max_settings = 4;
    config.max_settings_bytes = 200;
    let f = start_frontend_with(config, "127.0.0.1:0".parse().expect("addr")).await;
    let a = f.sessions.create(ConnectInfo::default());
    let b = f.sessions.create(ConnectInfo::default());
    let backend = start_backend("b", "f1", f.addr);
    let mut s = backend
        .get("f1", a.sid())
        .await
        .expect("call")
        .expect("open");
    for k in 0..4 {
        s.set(&format!("k{k}"), &k).expect("encode");
    }
    s.push_all().await.expect("four keys fit");
    s.set("k4", &4).expect("encode");
    let err = s.push("k4").await.expect_err("a fifth key");
    assert_eq!(err.code(), ErrorCode::LimitExceeded, "{err}");
    assert_eq!(
        f.sessions.get(a.sid()).expect("open").settings.len(),
        4,
        "nothing applied"
    );
    // Replacing a key keeps the count; a value too large for the byte budget is refused.
    s.set("k0", &"x".repeat(300)).expect("encode");
    assert_eq!(
        s.push("k0").await.expect_err("too many bytes").code(),
        ErrorCode::LimitExceeded
    );
    // Removing makes room again.
    s.remove("k1");
    s.push("k1").await.expect("removal");
    s.push("k4").await.expect("fits now");
    // The other session is untouched by all this.
    let mut other = backend
        .get("f1", b.sid())
        .await
        .expect("call")
        .expect("open");
    other.set("fine", &1).expect("encode");
    other.push("fine").await.expect("other sessions unaffected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_per_frontend() {
    let mut config = SessionConfig::new("f1");
    config.max_sessions = 2;
    let (sessions, _rpc, gw) = gateway(config, |_| {}).await;
    let a = PomeloClient::connect(gw.local_addr()).await.expect("first");
    let _b = PomeloClient::connect(gw.local_addr())
        .await
        .expect("second");
    let err = PomeloClient::connect(gw.local_addr())
        .await
        .expect_err("third is refused");
    assert!(err.to_string().contains("500"), "{err:#}");
    assert_eq!(sessions.count(), 2);
    let mut events = sessions.subscribe();
    drop(a);
    // With resume on, the dropped session is parked, and still counts.
    let parked = next_parked(&mut events, Duration::from_secs(5)).await;
    assert!(sessions.is_parked(parked));
    assert_eq!(sessions.count(), 2);
    let err = PomeloClient::connect(gw.local_addr())
        .await
        .expect_err("a parked session holds its place");
    assert!(err.to_string().contains("500"), "{err:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_client_ip() {
    let (sessions, _rpc, gw) =
        gateway(SessionConfig::new("f1"), |c| c.max_connections_per_ip = 3).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(
            PomeloClient::connect(gw.local_addr())
                .await
                .expect("within the limit"),
        );
    }
    let mut fourth = TcpStream::connect(gw.local_addr())
        .await
        .expect("tcp accept");
    let mut buf = [0u8; 16];
    let closed = tokio::time::timeout(Duration::from_secs(5), fourth.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "the fourth connection is closed at once"
    );
    assert_eq!(sessions.count(), 3);
    // One leaves: there is room again.
    drop(held.pop());
    let addr = gw.local_addr();
    common::eventually(Duration::from_secs(5), "room again", || async move {
        PomeloClient::connect(addr)
            .await
            .map_err(|err| err.to_string())
    })
    .await;
}

#[tokio::test]
async fn in_flight_calls_per_cluster_connection() {
    // A frontend that accepts calls and never answers them.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let (s, _) = listener.accept().await.expect("accept");
        let mut framed = Framed::new(s, FrontendCodec::default());
        let _ = framed.next().await;
        let _ = framed.send(common::accepted("f1")).await;
        while let Some(Ok(_)) = framed.next().await {}
    });
    let mut config = quick_client("b", Duration::from_secs(2));
    config.max_in_flight = 4;
    let backend = start_backend_with(config, "f1", addr);
    let client = backend.client("f1").expect("known");
    let mut pending = Vec::new();
    let mut overloaded = 0;
    for i in 0..10u64 {
        let call = Push {
            sid: session_proxy::SessionId::from_raw(i),
            writes: vec![KeyWrite {
                key: "k".into(),
                value: None,
                expect: Precondition::Any,
            }],
        };
        match client.send(call).await {
            Ok(p) => pending.push(p),
            Err(e) => {
                assert_eq!(e.code(), ErrorCode::Overloaded, "{e}");
                overloaded += 1;
            }
        }
    }
    assert_eq!(
        (pending.len(), overloaded),
        (4, 6),
        "excess calls fail at once, none is dropped silently"
    );
    drop(pending);
}

#[tokio::test]
async fn cluster_handshake_deadline() {
    let sessions = SessionService::new(SessionConfig::new("f1"));
    let mut config = RpcConfig::default();
    config.handshake_timeout = Duration::from_millis(300);
    let server = common::rpc_on_loopback(&sessions, config).await;
    let mut silent = TcpStream::connect(server.local_addr())
        .await
        .expect("connect");
    let t = std::time::Instant::now();
    let mut buf = [0u8; 8];
    let r = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf)).await;
    assert!(matches!(r, Ok(Ok(0)) | Ok(Err(_))), "closed");
    assert!(
        t.elapsed() >= Duration::from_millis(250),
        "not before the deadline"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outgoing_queue_per_client() {
    let mut config = SessionConfig::new("f1");
    config.owner_queue = 16;
    // Push calls answered as soon as queued: a backend that does not wait
    // for the writes (the limit is there for it) floods the queue.
    let mut rpc_config = RpcConfig::default();
    rpc_config.push_write_wait = Duration::ZERO;
    let (sessions, rpc, gw) =
        gateway_with(config, rpc_config, |c| c.resume_grace = Duration::ZERO).await;
    // A client that never reads, and one that does.
    let mut stuck = TcpStream::connect(gw.local_addr()).await.expect("connect");
    {
        use tokio::io::AsyncWriteExt;
        let hs = br#"{"sys":{"type":"raw","version":"1"},"user":{}}"#;
        let mut pkg = vec![1u8, 0, 0, hs.len() as u8];
        pkg.extend_from_slice(hs);
        pkg.extend_from_slice(&[2, 0, 0, 0]);
        stuck.write_all(&pkg).await.expect("handshake");
    }
    let mut reader = PomeloClient::connect_with(gw.local_addr(), PomeloOptions::default())
        .await
        .expect("connect");
    eventually(Duration::from_secs(5), "both sessions open", || async {
        match sessions.count() {
            2 => Ok(()),
            n => Err(format!("{n} sessions")),
        }
    })
    .await;
    let backend = start_backend("b", "f1", rpc.local_addr());
    let big = json!({ "pad": "x".repeat(16 * 1024) });
    let all = sessions.sids();
    let mut stuck_missed = 0;
    for _ in 0..2_000 {
        let missed = backend
            .push_to_sids("f1", "onFlood", &big, all.clone())
            .await
            .expect("push call");
        stuck_missed += missed.len();
        if sessions.count() == 1 {
            break;
        }
    }
    assert!(
        stuck_missed > 0,
        "pushes to the stuck client were reported undelivered"
    );
    assert_eq!(
        sessions.count(),
        1,
        "the client that does not read was disconnected"
    );
    // The reading client got its pushes and is still connected.
    assert!(matches!(
        reader.next_event(Duration::from_secs(5)).await,
        Some(PomeloEvent::Push { .. })
    ));
    reader
        .notify("connector.x.y", &json!({}))
        .await
        .expect("still connected");
}
