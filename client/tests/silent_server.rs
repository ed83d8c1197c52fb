//! A server that shakes hands and then goes silent (a paused process, a
//! half-open connection): the client takes the connection for dead after
//! two heartbeat intervals, and a `SessionClient` reconnects.

use serde_json::json;
use session_proxy_client::{
    ClientError, Entry, PomeloClient, PomeloEvent, ResumeEvent, ResumeOptions, SessionClient,
};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Accepts connections, answers each handshake (heartbeat 1 s, a resume
/// token) and then reads and never writes again.
async fn silent_server() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut s, _)) = listener.accept().await {
            let reply = json!({ "code": 200, "sys": { "heartbeat": 1 }, "user": { "resumeToken": "t", "resumed": false } })
                .to_string();
            let mut package = vec![1u8, 0, 0, 0];
            package[1..4].copy_from_slice(&(reply.len() as u32).to_be_bytes()[1..4]);
            package.extend_from_slice(reply.as_bytes());
            let mut hello = [0u8; 4];
            if s.read_exact(&mut hello).await.is_err() {
                continue;
            }
            let len = u32::from_be_bytes([0, hello[1], hello[2], hello[3]]) as usize;
            let mut body = vec![0u8; len];
            if s.read_exact(&mut body).await.is_err() || s.write_all(&package).await.is_err() {
                continue;
            }
            // Silent from here on; the socket stays open.
            held.push(s);
        }
    });
    (addr, task)
}

#[tokio::test]
async fn a_silent_server_is_taken_for_dead_after_two_heartbeats() {
    let (addr, server) = silent_server().await;
    let mut client = PomeloClient::connect(addr).await.expect("connect");
    let started = Instant::now();
    assert_eq!(
        client.next_event(Duration::from_secs(10)).await,
        Some(PomeloEvent::Closed)
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(2),
        "not before two heartbeats: {took:?}"
    );
    assert!(
        matches!(
            client.request("a.b.c", &json!({})).await,
            Err(ClientError::Closed)
        ),
        "a request on a dead connection fails at once"
    );
    server.abort();
}

#[tokio::test]
async fn a_session_client_reconnects_from_a_silent_server() {
    let (addr, server) = silent_server().await;
    let mut o = ResumeOptions::default();
    o.min_delay = Duration::from_millis(10);
    let client = SessionClient::connect(Entry::Direct(addr), o)
        .await
        .expect("connect");
    assert!(matches!(
        client.next_event(Duration::from_secs(1)).await,
        Some(ResumeEvent::Session { resumed: false, .. })
    ));
    match client.next_event(Duration::from_secs(10)).await {
        Some(ResumeEvent::Reconnecting {
            attempt: 1, cause, ..
        }) => {
            assert_eq!(cause, "the connection was lost");
        }
        other => panic!("expected a reconnect, got {other:?}"),
    }
    // The resume token went into the next handshake; this server gives a
    // fresh session each time, and the client says so.
    assert!(matches!(
        client.next_event(Duration::from_secs(10)).await,
        Some(ResumeEvent::Session { resumed: false, .. })
    ));
    server.abort();
}
