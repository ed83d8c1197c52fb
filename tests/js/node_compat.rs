//! The gateway driven by the real npm client packages: `pinus-protocol`
//! for every byte and `ws` for WebSocket, over WebSocket and raw TCP; and
//! `pomelo-protobuf` for protobuf bodies on the chat example (and as the
//! reference for the TypeScript client's protobuf codec).

use crate::common;

use common::cluster::*;
use common::node::{node_ready, run_script};
use session_proxy_chat::{ChatCluster, ChatConfig};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinus_protocol_clients_over_websocket_and_tcp() {
    if !node_ready().await {
        return;
    }
    let f = start_frontend("f1", |_| {}).await;
    let (_backend, _) = start_backend("game-1", &[&f]);
    wait_for_backends(&f, 1).await;
    let addr = f.gateway.local_addr().to_string();
    let stdout = run_script("compat.js", &[addr], Duration::from_secs(60)).await;
    assert!(stdout.contains("node-compat ws: ok"), "{stdout}");
    assert!(stdout.contains("node-compat tcp: ok"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pomelo_protobuf_clients_chat_in_protobuf_byte_for_byte() {
    if !node_ready().await {
        return;
    }
    let cluster = ChatCluster::start(ChatConfig::ephemeral())
        .await
        .expect("chat cluster");
    let gate = cluster.gate_addr().to_string();
    let stdout = run_script("protobuf.js", &[gate], Duration::from_secs(60)).await;
    assert!(stdout.contains("node-protobuf: ok"), "{stdout}");
    cluster.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test]
async fn the_typescript_clients_protobuf_codec_matches_pomelo_protobuf_byte_for_byte() {
    if !node_ready().await {
        return;
    }
    let stdout = run_script("client_protobuf.js", &[], Duration::from_secs(60)).await;
    assert!(stdout.contains("client-protobuf: ok"), "{stdout}");
}
