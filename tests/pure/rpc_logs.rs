//! What a peer sends before authentication cannot forge log lines or fill
//! the log: its strings are escaped and cut, each refusal is one line, and
//! a flood of refusals is rate-limited.
//!
//! Alone in its own test binary: `tracing` caches per call site whether
//! anyone listens (see tests/pure/auth_logs.rs).

use crate::common;

use bytes::BytesMut;
use common::rpc_on_loopback;
use session_proxy::protocol::{BackendCodec, Hello, Message, Role};
use session_proxy::{RpcConfig, SessionConfig, SessionService};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const FORGED: &str = "2026-12-02T03:00:00.000000Z ERROR forged: fake line";

/// Sends one hello from a peer that claims to be a frontend (refused
/// before any secret is checked) and waits for the frontend to close.
async fn refused_hello(addr: std::net::SocketAddr, node_id: &str) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let mut frame = BytesMut::new();
    BackendCodec::new(4096)
        .encode_to(
            &Message::Hello(Hello::new(node_id, Role::Frontend, None)),
            &mut frame,
        )
        .expect("encode");
    stream.write_all(&frame).await.expect("write");
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut rest)).await;
}

#[tokio::test]
async fn a_hostile_node_id_is_logged_once_escaped_and_cut() {
    let (logs, _guard) = common::logs::Captured::install();

    let sessions = SessionService::new(SessionConfig::new("f1"));
    let rpc = rpc_on_loopback(&sessions, RpcConfig::default()).await;
    let evil = format!("evil\n{FORGED}\u{1b}[2J{}", "A".repeat(3000));
    refused_hello(rpc.local_addr(), &evil).await;

    let text = logs.text();
    let refusals: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("backend refused"))
        .collect();
    assert_eq!(refusals.len(), 1, "logged once: {text}");
    assert!(refusals[0].contains("evil\\n2026"), "escaped: {text}");
    assert!(
        !text.lines().any(|l| l.starts_with(FORGED)),
        "a forged line: {text}"
    );
    assert!(!text.contains('\u{1b}'), "a raw ESC byte reached the log");
    assert!(
        refusals[0].len() < 600,
        "the node id is cut: {} bytes",
        refusals[0].len()
    );

    // A burst of refusals is one line a second, with the count of the rest.
    for i in 0..20 {
        refused_hello(rpc.local_addr(), &format!("flood-{i}")).await;
    }
    let text = logs.text();
    let refusals = text
        .lines()
        .filter(|l| l.contains("backend refused"))
        .count();
    assert!(refusals <= 4, "{refusals} lines for 21 refusals: {text}");
    let _ = rpc.shutdown(Duration::from_secs(1)).await;
}
