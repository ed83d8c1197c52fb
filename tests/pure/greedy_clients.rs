//! Clients that ask for a lot and do not read: each connection's outgoing
//! bytes are capped (`GatewayConfig::max_outgoing_bytes`), so the gateway
//! stops reading their requests instead of holding the answers in memory,
//! and every answer still arrives once the client reads.

use crate::common;

use bytes::BytesMut;
use serde_json::Value;
use session_proxy::protocol::client::{
    encode_parts, ClientMessage, MessageType, PackageCodec, PackageType, Route, MAX_PACKAGE_BODY,
};
use session_proxy::{
    Gateway, GatewayConfig, HandlerError, RpcConfig, SessionConfig, SessionService,
};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::Decoder;

const VALUE: usize = 60 * 1024;
const REQUESTS: u64 = 3000;
const CLIENTS: usize = 5;

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// Handshakes and writes every request at once; reads nothing after the
/// handshake reply.
async fn greedy(addr: std::net::SocketAddr) -> TcpStream {
    greedy_with(addr, REQUESTS).await
}

/// [`greedy`] with `requests` requests.
async fn greedy_with(addr: std::net::SocketAddr, requests: u64) -> TcpStream {
    let codec = PackageCodec::new(MAX_PACKAGE_BODY);
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let mut out = BytesMut::new();
    common::encode_client_handshake(&mut out);
    stream.write_all(&out.split()).await.expect("write");
    let mut reply = [0u8; 4];
    stream
        .read_exact(&mut reply)
        .await
        .expect("handshake reply");
    let len = usize::from(reply[1]) << 16 | usize::from(reply[2]) << 8 | usize::from(reply[3]);
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).await.expect("handshake body");
    codec
        .encode_to(PackageType::HandshakeAck, &[], &mut out)
        .expect("encode");
    for id in 1..=requests {
        codec
            .encode_with(PackageType::Data, &mut out, |b| {
                encode_parts(
                    MessageType::Request,
                    id,
                    &Route::Name("connector.entry.big".into()),
                    b"{}",
                    b,
                )
            })
            .expect("encode");
    }
    stream.write_all(&out).await.expect("write");
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_read_is_not_buffered_for() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let sessions = SessionService::new(SessionConfig::new("f1"));
    let rpc = common::rpc_on_loopback(&sessions, RpcConfig::default()).await;
    let mut config = GatewayConfig::new("connector");
    config.write_timeout = Duration::from_secs(30);
    let mut gateway = Gateway::new(sessions.clone(), rpc.backends(), config);
    let value = Arc::new("v".repeat(VALUE));
    gateway
        .handlers()
        .add("connector.entry.big", move |_ctx, _body: Value| {
            let (calls, value) = (counted.clone(), value.clone());
            async move {
                calls.fetch_add(1, Ordering::Relaxed);
                Ok::<_, HandlerError>(serde_json::json!({ "v": *value }))
            }
        });
    let gateway = gateway
        .bind("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("gateway");
    let addr = gateway.local_addr();
    let before = rss_kib();
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(greedy(addr).await);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let grown_mib = rss_kib().saturating_sub(before) / 1024;
    let handled = calls.load(Ordering::Relaxed);
    eprintln!("handled {handled} requests, RSS grew {grown_mib} MiB");
    assert!(
        handled < CLIENTS * REQUESTS as usize / 4,
        "{handled} requests handled for clients that read nothing"
    );
    // Five clients held 20 MiB of answers before the byte cap (4 MiB each).
    assert!(grown_mib < 12, "RSS grew {grown_mib} MiB");

    // Once the client reads, every answer arrives, whole and in order.
    let mut stream = clients.pop().expect("a client");
    let codec_max = MAX_PACKAGE_BODY;
    let mut codec = PackageCodec::new(codec_max);
    let mut buf = BytesMut::new();
    let mut next_id = 1;
    let read_all = async {
        while next_id <= REQUESTS {
            match codec.decode(&mut buf).expect("valid package") {
                Some(p) if p.kind == PackageType::Data => {
                    let msg = ClientMessage::decode(p.body).expect("message");
                    assert_eq!(msg.id, next_id);
                    let v: Value = serde_json::from_slice(&msg.body).expect("JSON");
                    assert_eq!(v["v"].as_str().map(str::len), Some(VALUE));
                    next_id += 1;
                }
                Some(_) => {}
                None => {
                    assert!(stream.read_buf(&mut buf).await.expect("read") > 0, "closed");
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), read_all)
        .await
        .expect("every answer arrives once the client reads");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_burst_of_big_answers_is_bounded_before_any_answer_is_seen() {
    // Handlers that start, then wait until the test lets them answer.
    let started = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let sessions = SessionService::new(SessionConfig::new("f1"));
    let rpc = common::rpc_on_loopback(&sessions, RpcConfig::default()).await;
    let config = GatewayConfig::new("connector");
    let cap = config.max_outgoing_bytes;
    let mut gateway = Gateway::new(sessions.clone(), rpc.backends(), config);
    let value = Arc::new("v".repeat(VALUE));
    let (counted, held) = (started.clone(), gate.clone());
    gateway
        .handlers()
        .add("connector.entry.big", move |_ctx, _body: Value| {
            let (started, gate, value) = (counted.clone(), held.clone(), value.clone());
            async move {
                started.fetch_add(1, Ordering::SeqCst);
                let _pass = gate.acquire().await;
                Ok::<_, HandlerError>(serde_json::json!({ "v": *value }))
            }
        });
    let gateway = gateway
        .bind("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("gateway");
    // 64 requests at once (the request cap), nothing read back.
    let _client = greedy_with(gateway.local_addr(), 64).await;
    common::eventually(
        Duration::from_secs(5),
        "the first requests start",
        || async {
            match started.load(Ordering::SeqCst) {
                0 => Err("none yet".to_string()),
                _ => Ok(()),
            }
        },
    )
    .await;
    // No event says that nothing more starts: watch for a moment. Before
    // any answer is seen a connection assumes an eighth of its byte cap per
    // answer, so 8 start; it used to start all 64 (3.8 MB of answers here).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let first = started.load(Ordering::SeqCst);
    assert_eq!(
        first, 8,
        "{first} requests started before any answer was seen"
    );
    assert!(first * VALUE <= 2 * cap, "{first} answers of {VALUE} bytes");
    gate.add_permits(64);
}
