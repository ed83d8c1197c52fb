//! Fault injection with real processes and real sockets: a backend killed
//! mid-request, a backend that stalls without reading.

use crate::common;

use common::nodes::*;
use futures::{SinkExt, StreamExt};
use serde_json::json;
use session_proxy::frontend::{Gateway, GatewayConfig};
use session_proxy::protocol::{BackendCodec, Hello, HelloReply, Message, Role};
use session_proxy::{RpcConfig, SessionConfig, SessionService};
use session_proxy_client::PomeloClient;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

async fn echo_works(client: &PomeloClient) -> bool {
    matches!(client.request("chat.benchHandler.echo", &json!({ "x": 1 })).await, Ok(v) if v == json!({ "x": 1 }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_killed_mid_request_answers_clients_with_errors_and_comes_back() {
    let (config, port) = write_cluster("kill-backend");
    let mut front = run_node(&config, "connector-1").await;
    let mut back = run_node(&config, "chat-1").await;
    let target = format!("127.0.0.1:{port}").parse().expect("addr");
    let client = PomeloClient::connect(target).await.expect("connect");
    let until = Instant::now() + Duration::from_secs(10);
    while !echo_works(&client).await {
        assert!(Instant::now() < until, "the backend never connected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Ten clients wait on slow requests; the backend dies under them.
    let mut waiting = Vec::new();
    for _ in 0..10 {
        let c = PomeloClient::connect(target).await.expect("connect");
        waiting.push(tokio::spawn(async move {
            let t = Instant::now();
            let answer = c
                .request("chat.benchHandler.sleep", &json!({ "ms": 20_000 }))
                .await;
            (t.elapsed(), answer)
        }));
    }
    common::nodes::sleeping(&client, 10).await;
    sigkill(&mut back).await;
    for w in waiting {
        let (took, answer) = w.await.expect("task");
        let answer = answer.expect("an error response, not silence");
        assert_eq!(answer["code"], 500, "{answer}");
        assert!(
            took < Duration::from_secs(5),
            "the error came within the deadline: {took:?}"
        );
    }
    // The connector is fine, and serves again when the backend is back.
    let answer = client
        .request("chat.benchHandler.echo", &json!({}))
        .await
        .expect("answered");
    assert_eq!(answer["code"], 500, "no backend: {answer}");
    let mut back = run_node(&config, "chat-1").await;
    let until = Instant::now() + Duration::from_secs(10);
    while !echo_works(&client).await {
        assert!(Instant::now() < until, "the restarted backend never served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sigkill(&mut back).await;
    sigkill(&mut front).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_stops_reading_costs_deadlines_not_memory() {
    let sessions = SessionService::new(SessionConfig::new("f1"));
    let mut rpc_config = RpcConfig::default();
    rpc_config.queue = 64;
    let rpc = common::rpc_on_loopback(&sessions, rpc_config).await;
    let mut gw = GatewayConfig::default();
    gw.request_deadline = Duration::from_millis(500);
    gw.max_pending_requests = 1024;
    let mut gateway = Gateway::new(sessions.clone(), rpc.backends(), gw);
    gateway
        .handlers()
        .add("connector.h.ping", |_c, _b: serde_json::Value| async {
            Ok(json!({ "pong": true }))
        });
    let gateway = gateway
        .bind("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("gateway");

    // A "chat" backend that completes the handshake and never reads again.
    let stream = TcpStream::connect(rpc.local_addr()).await.expect("connect");
    let mut framed = Framed::new(stream, BackendCodec::default());
    let mut hello = Hello::new("stalled", Role::Backend, Some("f1".into()));
    hello.server_type = Some("chat".into());
    framed.send(Message::Hello(hello)).await.expect("hello");
    assert!(matches!(
        framed.next().await,
        Some(Ok(Message::HelloReply(HelloReply::Accepted { .. })))
    ));

    let client = PomeloClient::connect(gateway.local_addr())
        .await
        .expect("connect");
    let big = json!({ "pad": "y".repeat(32 * 1024) });
    let t = Instant::now();
    let mut answers = Vec::new();
    for _ in 0..5 {
        // 40 concurrent 32 KiB requests per wave: more than the peer's socket
        // buffers and our bounded queue hold.
        let wave: Vec<_> = (0..40)
            .map(|_| client.request("chat.benchHandler.echo", &big))
            .collect();
        answers.extend(futures::future::join_all(wave).await);
    }
    for a in &answers {
        let a = a.as_ref().expect("an answer, never silence");
        assert_eq!(a["code"], 500, "{a}");
    }
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "each wave ended at its deadline"
    );
    // Everything else goes on: frontend routes, and session calls.
    assert_eq!(
        client
            .request("connector.h.ping", &json!({}))
            .await
            .expect("ping"),
        json!({ "pong": true })
    );
    assert_eq!(sessions.count(), 1);
    drop(framed);
}
