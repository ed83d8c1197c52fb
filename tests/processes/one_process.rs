//! A frontend and its backend in one process (`session-proxy run --node
//! connector-1,chat-1`): the backend links to the frontend in process, not
//! over TCP; clients see the same routes; SIGTERM drains both.

use crate::common;

use common::nodes::{signal, spawn_session_proxy, write_cluster};
use serde_json::json;
use session_proxy_client::PomeloClient;
use std::time::{Duration, Instant};

/// Established TCP connections with local port `port` on this machine
/// (from /proc/net/tcp and tcp6; state 01).
fn established_on(port: u16) -> usize {
    let hex = format!(":{port:04X}");
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .flat_map(|t| t.lines().skip(1).map(str::to_string).collect::<Vec<_>>())
        .filter(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            cols.len() > 3 && cols[1].ends_with(&hex) && cols[3] == "01"
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frontend_and_its_backend_in_one_process_serve_and_drain_together() {
    let (config, port) = write_cluster("one-process");
    let text = std::fs::read_to_string(&config).expect("cluster file");
    let rpc_port: u16 = text
        .split("rpc = \"127.0.0.1:")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .and_then(|p| p.parse().ok())
        .expect("the connector's rpc port");
    let args = [
        "run".as_ref(),
        "--config".as_ref(),
        config.as_os_str(),
        "--node".as_ref(),
        "connector-1,chat-1".as_ref(),
    ];
    let (mut child, lines) = spawn_session_proxy(&args, "ready chat-1").await;
    assert!(lines.iter().any(|l| l == "ready connector-1"), "{lines:?}");
    let target = format!("127.0.0.1:{port}").parse().expect("addr");
    let client = PomeloClient::connect(target).await.expect("connect");
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        match client
            .request("chat.benchHandler.echo", &json!({ "x": 1 }))
            .await
        {
            Ok(answer) if answer == json!({ "x": 1 }) => break,
            _ => assert!(Instant::now() < until, "the backend never served"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        established_on(rpc_port),
        0,
        "the backend reached its frontend without TCP"
    );
    // A request in flight when SIGTERM comes is still answered.
    let slow = {
        let c = PomeloClient::connect(target).await.expect("connect");
        tokio::spawn(async move {
            c.request("chat.benchHandler.sleep", &json!({ "ms": 300 }))
                .await
        })
    };
    common::nodes::sleeping(&client, 1).await;
    signal(child.id().expect("pid"), "TERM");
    let answer = slow.await.expect("task").expect("answered");
    assert_ne!(answer["code"], 500, "{answer}");
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("both nodes drain and the process exits")
        .expect("wait");
    assert!(status.success(), "{status}");
}
