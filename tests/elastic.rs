//! Node processes without a cluster file: each registers in a real Redis,
//! backends dial frontends as they register, and a frontend started later
//! serves clients through a backend that never heard of it by config.

mod common;

use common::nodes::{free_port, sigkill, signal, spawn_session_proxy_env};
use common::redis::RedisServer;
use serde_json::json;
use session_proxy::registry::{Membership, RedisMembership, RedisMembershipConfig};
use session_proxy_bench::pomelo::PomeloClient;
use std::time::{Duration, Instant};
use tokio::process::Child;

/// Starts a frontend registered in `registry`; returns it and its client port.
async fn frontend(id: &str, registry: &str) -> (Child, u16) {
    let (rpc, clients) = (free_port(), free_port());
    let (rpc, client_addr) = (format!("127.0.0.1:{rpc}"), format!("127.0.0.1:{clients}"));
    let args = [
        "run",
        "--role",
        "frontend",
        "--id",
        id,
        "--type",
        "connector",
        "--rpc-addr",
        &rpc,
        "--client-addr",
        &client_addr,
        "--registry",
        registry,
        "--lease-secs",
        "3",
    ];
    let (child, _) = spawn_session_proxy_env(&args, &[], &format!("ready {id}")).await;
    (child, clients)
}

/// Waits until a client of the frontend on `port` is served by a backend.
async fn echo_within(port: u16, within: Duration) -> Duration {
    let started = Instant::now();
    let client = PomeloClient::connect(format!("127.0.0.1:{port}").parse().expect("addr"))
        .await
        .expect("connect");
    loop {
        let answer = client
            .request("chat.benchHandler.echo", &json!({ "x": 1 }))
            .await;
        if answer.ok() == Some(json!({ "x": 1 })) {
            return started.elapsed();
        }
        assert!(started.elapsed() < within, "no backend served port {port}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_without_a_file_find_each_other_through_the_registry() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let url = redis.url();
    let (mut c1, port1) = frontend("connector-1", &url).await;
    // The backend, configured by environment variables alone.
    let env = [
        ("SESSION_PROXY_ROLE", "backend"),
        ("SESSION_PROXY_ID", "chat-1"),
        ("SESSION_PROXY_TYPE", "chat"),
        ("SESSION_PROXY_REGISTRY", url.as_str()),
        ("SESSION_PROXY_LEASE_SECS", "3"),
    ];
    let (mut chat, _) = spawn_session_proxy_env(&["run"], &env, "ready chat-1").await;
    echo_within(port1, Duration::from_secs(5)).await;

    // A frontend that joins later is dialled by the running backend.
    let (mut c2, port2) = frontend("connector-2", &url).await;
    let took = echo_within(port2, Duration::from_secs(5)).await;
    assert!(took < Duration::from_secs(3), "served after {took:?}");

    let mut config = RedisMembershipConfig::new(url.clone());
    config.resync = Duration::from_millis(200);
    let members = RedisMembership::connect(config).await.expect("registry");
    let mut watch = members.watch();
    let seen = watch.borrow().clone();
    assert_eq!(seen.frontends().count(), 2, "{seen:?}");
    assert_eq!(seen.backends().count(), 1, "{seen:?}");
    let c2_record = seen.get("connector-2").expect("registered");
    assert_eq!(c2_record.client_addr, Some(format!("127.0.0.1:{port2}")));

    // SIGTERM: it exits 0 and its record is gone at once (not at lease end).
    signal(c2.id().expect("pid"), "TERM");
    let status = tokio::time::timeout(Duration::from_secs(15), c2.wait())
        .await
        .expect("exits")
        .expect("wait");
    assert!(status.success(), "{status:?}");
    tokio::time::timeout(
        Duration::from_secs(2),
        watch.wait_for(|m| m.get("connector-2").is_none()),
    )
    .await
    .expect("deregistered on exit")
    .expect("registry running");
    // The first frontend serves on.
    echo_within(port1, Duration::from_secs(3)).await;
    sigkill(&mut chat).await;
    sigkill(&mut c1).await;
}
