//! The RPC port before authentication: strangers that connect and say
//! nothing, or send a huge hello, cost little and never keep a real
//! backend out.

use crate::common;

use bytes::BytesMut;
use common::{quick_client, rpc_on_loopback, start_backend_with};
use session_proxy::protocol::{BackendCodec, Hello, Message, Role, Secret};
use session_proxy::{ConnectInfo, RpcConfig, SessionConfig, SessionService};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const SECRET: &str = "admission-test-secret";

/// A TCP connection to `to` from the loopback address `from`.
async fn connect_from(from: [u8; 4], to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((from, 0)))?;
    socket.connect(to).await
}

/// Whether the server closed `stream` within `within` (EOF or reset).
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(within, stream.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_strangers_never_keep_a_real_backend_out() {
    let sessions = SessionService::new(SessionConfig::new("f1"));
    let mut config = RpcConfig::default();
    config.secret = Some(Secret::new(SECRET));
    // Small pools, so a few hundred sockets are a flood; a stranger holds a
    // place for at most the 2 s deadline.
    config.max_connections = 16;
    config.max_unauthenticated = 32;
    config.max_unauthenticated_per_ip = 8;
    let rpc = rpc_on_loopback(&sessions, config).await;
    let addr = rpc.local_addr();
    let owner = sessions.create(ConnectInfo::default());

    // Two attacking addresses open 150 connections each and say nothing.
    let mut strangers = Vec::new();
    for from in [[127, 0, 0, 2], [127, 0, 0, 3]] {
        for _ in 0..150 {
            strangers.push(connect_from(from, addr).await.expect("connect"));
        }
    }
    // Past its address's cap, a stranger is closed as soon as it is
    // accepted (well before the 2 s handshake deadline).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut closed = 0;
    for s in strangers.iter_mut() {
        if closed_within(s, Duration::from_millis(5)).await {
            closed += 1;
        }
    }
    assert!(
        closed >= 300 - 2 * 8 - 4,
        "only {closed} of 300 silent connections were closed at once"
    );

    // While the strangers hold what they may, a real backend gets in.
    let mut backend_config = quick_client("b1", Duration::from_secs(3));
    backend_config.secret = Some(Secret::new(SECRET));
    let backend = start_backend_with(backend_config, "f1", addr);
    let started = Instant::now();
    let s = backend
        .get("f1", owner.sid())
        .await
        .expect("the real backend is served")
        .expect("open");
    assert_eq!(s.id(), owner.sid());
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    // The strangers that were let in are closed at the handshake deadline.
    let mut held = 0;
    for s in strangers.iter_mut() {
        if !closed_within(s, Duration::from_millis(1)).await {
            held += 1;
            assert!(
                closed_within(s, Duration::from_secs(4)).await,
                "a silent connection outlived the handshake deadline"
            );
        }
    }
    assert!(held <= 16, "{held} strangers held a place");
    drop(backend);
    let _ = rpc.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_huge_hello_is_refused_from_its_header() {
    let sessions = SessionService::new(SessionConfig::new("f1"));
    let rpc = rpc_on_loopback(&sessions, RpcConfig::default()).await;
    let mut stream = TcpStream::connect(rpc.local_addr()).await.expect("connect");
    // A 500 KB hello: under max_frame (1 MiB), far over the hello limit.
    let hello = Hello::new("x".repeat(500_000), Role::Backend, None);
    let mut frame = BytesMut::new();
    BackendCodec::new(1 << 20)
        .encode_to(&Message::Hello(hello), &mut frame)
        .expect("encode");
    stream.write_all(&frame[..8192]).await.expect("write");
    assert!(
        closed_within(&mut stream, Duration::from_secs(1)).await,
        "the frontend waited for the rest of a huge hello"
    );
    let _ = rpc.shutdown(Duration::from_secs(1)).await;
}
