//! Membership in a real redis-server: frontends register under leases, a
//! backend dials each as it registers and stops when it leaves, a lapsed
//! lease disappears, and a registry restarted empty gets every live node
//! back.

mod common;

use common::nodes::free_port;
use common::redis::RedisServer;
use session_proxy::registry::{
    follow_frontends, Members, Membership, NodeRecord, NodeRole, NodeState, RedisMembership,
    RedisMembershipConfig, Registration,
};
use session_proxy::{
    BackendConfig, BackendSessionService, ConnectInfo, RpcConfig, RpcServer, SessionConfig,
    SessionService,
};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

async fn membership(redis: &RedisServer, prefix: &str) -> Arc<RedisMembership> {
    let mut config = RedisMembershipConfig::new(redis.url());
    config.prefix = prefix.to_string();
    config.resync = Duration::from_millis(300);
    Arc::new(RedisMembership::connect(config).await.expect("membership"))
}

struct Frontend {
    sessions: SessionService,
    _rpc: RpcServer,
    record: NodeRecord,
}

async fn frontend(id: &str) -> Frontend {
    let sessions = SessionService::new(SessionConfig::new(id));
    let rpc = common::rpc_on_loopback(&sessions, RpcConfig::default()).await;
    let record = NodeRecord::new(id, NodeRole::Frontend, "connector")
        .with_rpc_addr(rpc.local_addr().to_string());
    Frontend {
        sessions,
        _rpc: rpc,
        record,
    }
}

/// Waits until `members` satisfies `ok`; returns how long it took.
async fn until(
    members: &mut watch::Receiver<Members>,
    within: Duration,
    ok: impl Fn(&Members) -> bool,
) -> Duration {
    let started = Instant::now();
    tokio::time::timeout(within, members.wait_for(|m| ok(m)))
        .await
        .expect("the members changed in time")
        .expect("the registry is running");
    started.elapsed()
}

/// Waits until the backend reaches frontend `f` through the registry.
async fn reaches(backend: &BackendSessionService, f: &Frontend, within: Duration) -> Duration {
    let started = Instant::now();
    let owner = f.sessions.create(ConnectInfo::default());
    loop {
        if let Ok(Some(s)) = backend.get(&f.record.id, owner.sid()).await {
            assert_eq!(s.frontend_id(), f.record.id);
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "{} was never dialled",
            f.record.id
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_dial_frontends_as_they_register_and_forget_those_that_leave() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let prefix = format!("reg{}:", free_port());
    let registry = membership(&redis, &prefix).await;
    let ttl = Duration::from_secs(3);
    let a = frontend("connector-1").await;
    let _lease_a = Registration::register(registry.clone(), a.record.clone(), ttl).await;

    let mut config = BackendConfig::new("chat-1");
    config.deadline = Duration::from_millis(500);
    let backend = BackendSessionService::new(config).expect("config");
    let _following = follow_frontends(registry.watch(), backend.clone());
    reaches(&backend, &a, Duration::from_secs(3)).await;

    // A second frontend registers: dialled within a second.
    let b = frontend("connector-2").await;
    let lease_b = Registration::register(registry.clone(), b.record.clone(), ttl).await;
    let took = reaches(&backend, &b, Duration::from_secs(3)).await;
    assert!(took < Duration::from_secs(1), "dialled after {took:?}");

    // It drains: still followed (its sessions need backends), marked so.
    lease_b.set_draining();
    let mut members = registry.watch();
    until(&mut members, Duration::from_secs(3), |m| {
        m.get("connector-2").map(|r| r.state) == Some(NodeState::Draining)
    })
    .await;
    assert!(backend.frontends().contains(&"connector-2".to_string()));

    // It leaves: no longer dialled.
    lease_b.deregister(Duration::from_secs(1)).await;
    let started = Instant::now();
    while backend.frontends().contains(&"connector-2".to_string()) {
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "still dialling a frontend that left"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(backend.frontends(), vec!["connector-1".to_string()]);
    backend.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lapsed_lease_is_gone_and_a_registry_restarted_empty_gets_live_nodes_back() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let prefix = format!("reg{}:", free_port());
    let registry = membership(&redis, &prefix).await;
    let mut members = registry.watch();
    let ttl = Duration::from_secs(1);
    let live = Registration::register(
        registry.clone(),
        NodeRecord::new("connector-1", NodeRole::Frontend, "connector"),
        ttl,
    )
    .await;
    let dying = Registration::register(
        registry.clone(),
        NodeRecord::new("chat-1", NodeRole::Backend, "chat"),
        ttl,
    )
    .await;
    until(&mut members, Duration::from_secs(3), |m| m.len() == 2).await;

    // A node that stops renewing (SIGKILLed) is gone within TTL plus one
    // renewal (and one re-read).
    drop(dying);
    let gone = until(&mut members, Duration::from_secs(5), |m| {
        m.get("chat-1").is_none()
    })
    .await;
    assert!(
        gone < ttl + ttl / 3 + Duration::from_millis(700),
        "gone after {gone:?}"
    );
    assert!(
        members.borrow().get("connector-1").is_some(),
        "the live lease held"
    );

    // The registry restarts empty: the live node is back by its next renewal.
    // (A fresh reader, so the test sees what Redis holds, not a last view.)
    redis.kill();
    redis.start_again();
    let started = Instant::now();
    loop {
        let fresh = membership(&redis, &prefix).await.watch().borrow().clone();
        if fresh.get("connector-1").is_some() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the live node did not re-register"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    live.deregister(Duration::from_secs(1)).await;
    until(&mut members, Duration::from_secs(3), Members::is_empty).await;
}
