//! Node processes without a cluster file: each registers in a real Redis
//! (or etcd), backends dial frontends as they register, and a frontend
//! started later serves clients through a backend that never heard of it by
//! config.

use crate::common;

use common::etcd::EtcdServer;
use common::nodes::{free_port, registered_frontend, sigkill, signal, spawn_session_proxy_env};
use common::redis::RedisServer;
use serde_json::json;
use session_proxy::registry::{
    EtcdMembership, EtcdMembershipConfig, Membership, RedisMembership, RedisMembershipConfig,
};
use session_proxy_client::PomeloClient;
use std::time::{Duration, Instant};
use tokio::process::Child;

/// Starts a frontend registered in `registry`; returns it and its client port.
async fn frontend(id: &str, registry: &str) -> (Child, u16) {
    let (child, addr) = registered_frontend(id, registry, &["--lease-secs", "3"]).await;
    (child, addr.port())
}

/// A chat backend process configured by environment variables alone,
/// registered in `registry`.
async fn backend(registry: &str) -> Child {
    let env = [
        ("SESSION_PROXY_ROLE", "backend"),
        ("SESSION_PROXY_ID", "chat-1"),
        ("SESSION_PROXY_TYPE", "chat"),
        ("SESSION_PROXY_REGISTRY", registry),
        ("SESSION_PROXY_LEASE_SECS", "3"),
    ];
    spawn_session_proxy_env(&["run"], &env, "ready chat-1")
        .await
        .0
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
async fn nodes_without_a_file_find_each_other_through_redis() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let mut config = RedisMembershipConfig::new(redis.url());
    config.resync = Duration::from_millis(200);
    let members = RedisMembership::connect(config).await.expect("registry");
    find_each_other(redis.url(), &members).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_without_a_file_find_each_other_through_etcd() {
    let Some(etcd) = EtcdServer::start() else {
        return;
    };
    let members = EtcdMembership::connect(EtcdMembershipConfig::new(etcd.url()))
        .await
        .expect("registry");
    find_each_other(etcd.url(), &members).await;
}

/// Two frontend processes and a backend process started with `--registry
/// url`; `members` reads the same registry.
async fn find_each_other(url: String, members: &dyn Membership) {
    let (mut c1, port1) = frontend("connector-1", &url).await;
    let mut chat = backend(&url).await;
    echo_within(port1, Duration::from_secs(5)).await;

    // A frontend that joins later is dialled by the running backend.
    let (mut c2, port2) = frontend("connector-2", &url).await;
    let took = echo_within(port2, Duration::from_secs(5)).await;
    assert!(took < Duration::from_secs(3), "served after {took:?}");

    let mut watch = members.watch();
    // Registered as starting, active once its backend connected.
    tokio::time::timeout(
        Duration::from_secs(3),
        watch.wait_for(|m| {
            m.get("connector-2").map(|r| r.state)
                == Some(session_proxy::registry::NodeState::Active)
        }),
    )
    .await
    .expect("the new frontend goes active")
    .expect("registry running");
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

/// A frontend registered in `registry`, in this process.
async fn frontend_in_process(
    id: &str,
    registry: &std::sync::Arc<RedisMembership>,
) -> (
    session_proxy::RpcServer,
    session_proxy::GatewayServer,
    session_proxy::registry::Registration,
) {
    use session_proxy::registry::{NodeRecord, NodeRole, Registration};
    use session_proxy::{Gateway, GatewayConfig, RpcConfig, SessionConfig, SessionService};
    let sessions = SessionService::new(SessionConfig::new(id));
    let rpc = common::rpc_on_loopback(&sessions, RpcConfig::default()).await;
    let gateway = Gateway::new(sessions, rpc.backends(), GatewayConfig::new("connector"))
        .bind("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("gateway");
    let record = NodeRecord::new(id, NodeRole::Frontend, "connector")
        .with_rpc_addr(rpc.local_addr().to_string())
        .with_client_addr(gateway.local_addr().to_string());
    let lease = Registration::register(registry.clone(), record, Duration::from_secs(3)).await;
    (rpc, gateway, lease)
}

/// A chat backend that says who answered, following `registry`.
fn backend_in_process(
    id: &'static str,
    registry: &std::sync::Arc<RedisMembership>,
) -> (
    session_proxy::BackendSessionService,
    session_proxy::node::Following,
) {
    use session_proxy::{BackendConfig, BackendSession, BackendSessionService, Handlers};
    let mut handlers = Handlers::new();
    handlers.add("chat.h.who", move |_s: BackendSession, _b: serde_json::Value| async move {
        Ok(json!({ "backend": id }))
    });
    let mut config = BackendConfig::new(id);
    config.server_type = Some("chat".into());
    let backend = BackendSessionService::serving(config, handlers).expect("config");
    let following = session_proxy::node::follow_frontends(registry.watch(), backend.clone());
    (backend, following)
}

/// Clients of `addr` asking who answers until `stop`; returns (answers by
/// backend, errors).
async fn players(
    addr: std::net::SocketAddr,
    n: usize,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> (std::collections::BTreeMap<String, u64>, u64) {
    use std::sync::atomic::Ordering;
    let mut tasks = Vec::new();
    for _ in 0..n {
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut seen = std::collections::BTreeMap::<String, u64>::new();
            let mut errors = 0u64;
            let client = PomeloClient::connect(addr).await.expect("connect");
            while !stop.load(Ordering::Relaxed) {
                match client.request("chat.h.who", &json!({})).await {
                    Ok(v) if v["backend"].is_string() => {
                        *seen
                            .entry(v["backend"].as_str().unwrap_or("").to_string())
                            .or_default() += 1;
                    }
                    _ => errors += 1,
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (seen, errors)
        }));
    }
    let mut all = std::collections::BTreeMap::new();
    let mut errors = 0;
    for t in tasks {
        let (seen, e) = t.await.expect("player");
        for (k, v) in seen {
            *all.entry(k).or_default() += v;
        }
        errors += e;
    }
    (all, errors)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_out_under_load_fails_nothing_and_the_new_nodes_take_work() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let mut config = RedisMembershipConfig::new(redis.url());
    config.prefix = format!("so{}:", free_port());
    config.resync = Duration::from_millis(300);
    let registry = std::sync::Arc::new(RedisMembership::connect(config).await.expect("registry"));
    let (_rpc1, gate1, _lease1) = frontend_in_process("connector-1", &registry).await;
    let (b1, _f1) = backend_in_process("chat-1", &registry);
    echo_who(gate1.local_addr()).await;

    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let on_first = tokio::spawn(players(gate1.local_addr(), 40, stop.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Scale out: a second frontend and a second backend join under load.
    let (rpc2, gate2, _lease2) = frontend_in_process("connector-2", &registry).await;
    let (b2, _f2) = backend_in_process("chat-2", &registry);
    // Both backends dial the new frontend within a second of its
    // registration; clients come once it serves (as a gate hands it out).
    let started = Instant::now();
    assert!(
        rpc2.backends()
            .wait_for("chat", 2, Duration::from_secs(3))
            .await,
        "the backends did not dial the new frontend"
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    let on_second = tokio::spawn(players(gate2.local_addr(), 20, stop.clone()));
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let (first, first_errors) = on_first.await.expect("players");
    let (second, second_errors) = on_second.await.expect("players");
    assert_eq!(
        first_errors, 0,
        "requests failed on the first frontend: {first:?}"
    );
    assert_eq!(
        second_errors, 0,
        "requests failed on the new frontend: {second:?}"
    );
    assert!(
        first.get("chat-2").copied().unwrap_or(0) > 0,
        "the new backend took none of the first frontend's requests: {first:?}"
    );
    assert!(
        second.get("chat-1").copied().unwrap_or(0) > 0,
        "the old backend never dialled the new frontend: {second:?}"
    );
    b1.shutdown(Duration::from_secs(1)).await;
    b2.shutdown(Duration::from_secs(1)).await;
}

/// Waits until a client of `addr` is answered by a backend.
async fn echo_who(addr: std::net::SocketAddr) {
    let client = PomeloClient::connect(addr).await.expect("connect");
    let started = Instant::now();
    while client
        .request("chat.h.who", &json!({}))
        .await
        .ok()
        .and_then(|v| v["backend"].as_str().map(str::to_string))
        .is_none()
    {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no backend reached {addr}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_restarted_empty_gets_every_node_back_and_nobody_exits() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let url = redis.url();
    let (mut c1, port1) = frontend("connector-1", &url).await;
    let mut chat = backend(&url).await;
    echo_within(port1, Duration::from_secs(5)).await;

    // Down: the nodes keep serving on what they know.
    redis.kill();
    tokio::time::sleep(Duration::from_secs(1)).await;
    echo_within(port1, Duration::from_secs(3)).await;
    // Back, empty: every node is registered again by its next renewal, and
    // traffic goes on.
    redis.start_again();
    let started = Instant::now();
    loop {
        let members = RedisMembership::connect(RedisMembershipConfig::new(url.clone()))
            .await
            .expect("registry")
            .watch()
            .borrow()
            .clone();
        if members.get("connector-1").is_some() && members.get("chat-1").is_some() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "not re-registered: {members:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    echo_within(port1, Duration::from_secs(5)).await;
    for node in [&mut c1, &mut chat] {
        assert!(node.try_wait().expect("wait").is_none(), "a node exited");
    }
    sigkill(&mut chat).await;
    sigkill(&mut c1).await;
}
