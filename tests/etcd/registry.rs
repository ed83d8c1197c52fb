//! Membership in a real redis-server and a real etcd, through one trait:
//! frontends register under leases, a backend dials each as it registers
//! and stops when it leaves, a lapsed lease disappears, and a registry
//! restarted (empty, for Redis) has every live node back.

use crate::common;

use common::etcd::EtcdServer;
use common::nodes::free_port;
use common::redis::RedisServer;
use session_proxy::registry::{
    EtcdMembership, EtcdMembershipConfig, Members, Membership, NodeRecord, NodeRole, NodeState,
    RedisMembership, RedisMembershipConfig, Registration,
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

/// An etcd registry; the resync is slow, so what the tests see in time
/// came through the watch.
async fn etcd_membership(etcd: &EtcdServer) -> Arc<EtcdMembership> {
    let mut config = EtcdMembershipConfig::new(etcd.url());
    config.resync = Duration::from_secs(30);
    Arc::new(EtcdMembership::connect(config).await.expect("membership"))
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
async fn backends_dial_frontends_as_they_register_in_redis_and_forget_those_that_leave() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let prefix = format!("reg{}:", free_port());
    joins_and_leaves(membership(&redis, &prefix).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_dial_frontends_as_they_register_in_etcd_and_forget_those_that_leave() {
    let Some(etcd) = EtcdServer::start() else {
        return;
    };
    joins_and_leaves(etcd_membership(&etcd).await).await;
}

async fn joins_and_leaves(registry: Arc<dyn Membership>) {
    let ttl = Duration::from_secs(3);
    let a = frontend("connector-1").await;
    let _lease_a = Registration::register(registry.clone(), a.record.clone(), ttl).await;

    let mut config = BackendConfig::new("chat-1");
    config.deadline = Duration::from_millis(500);
    let backend = BackendSessionService::new(config).expect("config");
    let _following = session_proxy::node::follow_frontends(registry.watch(), backend.clone());
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

/// A node that stops renewing (SIGKILLed) is gone within TTL plus one
/// renewal (and one re-read); a live one stays. Returns the live one.
async fn a_lapsed_lease_goes(
    registry: Arc<dyn Membership>,
    members: &mut watch::Receiver<Members>,
) -> Registration {
    // 2 s: etcd's shortest lease.
    let ttl = Duration::from_secs(2);
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
    until(members, Duration::from_secs(3), |m| m.len() == 2).await;
    drop(dying);
    let gone = until(members, Duration::from_secs(5), |m| {
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
    live
}

/// Waits until a fresh reader of the registry (made by `fresh`) sees the
/// live node: the test sees what the registry holds, not a last view.
async fn back_within<F, Fut>(within: Duration, fresh: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Members>,
{
    let started = Instant::now();
    while fresh().await.get("connector-1").is_none() {
        assert!(
            started.elapsed() < within,
            "the live node did not re-register"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lapsed_redis_lease_is_gone_and_a_redis_restarted_empty_gets_live_nodes_back() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let prefix = format!("reg{}:", free_port());
    let registry = membership(&redis, &prefix).await;
    let mut members = registry.watch();
    let live = a_lapsed_lease_goes(registry.clone(), &mut members).await;

    // The registry restarts empty: the live node is back by its next renewal.
    redis.kill();
    redis.start_again();
    back_within(Duration::from_secs(5), || async {
        membership(&redis, &prefix).await.watch().borrow().clone()
    })
    .await;
    live.deregister(Duration::from_secs(1)).await;
    until(&mut members, Duration::from_secs(3), Members::is_empty).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lapsed_etcd_lease_is_gone_and_nodes_ride_out_an_etcd_restart() {
    let Some(mut etcd) = EtcdServer::start() else {
        return;
    };
    let registry = etcd_membership(&etcd).await;
    let mut members = registry.watch();
    let live = a_lapsed_lease_goes(registry.clone(), &mut members).await;

    // etcd restarts (killed, its data kept): the live node renews on, and
    // the watch is opened again and sees it leave.
    etcd.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    etcd.start_again();
    back_within(Duration::from_secs(8), || async {
        etcd_membership(&etcd).await.watch().borrow().clone()
    })
    .await;
    live.deregister(Duration::from_secs(1)).await;
    until(&mut members, Duration::from_secs(5), Members::is_empty).await;
}

/// A record under another node's key (an impostor taking a live node's
/// id), or one too large, is skipped: the members are the real nodes only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_that_name_another_key_or_are_too_large_are_skipped() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let registry = membership(&redis, "sp:").await;
    let mut members = registry.watch();
    let real = NodeRecord::new("connector-1", NodeRole::Frontend, "connector")
        .with_rpc_addr("127.0.0.1:4011");
    registry
        .put(&real, Duration::from_secs(10))
        .await
        .expect("put");
    // Written behind the registry's back: one key claims connector-1 and a
    // new id, another is 100 KB.
    let client = redis::Client::open(redis.url()).expect("client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    for (key, id) in [("sp:n:evil", "connector-1"), ("sp:n:evil-2", "connector-9")] {
        let impostor =
            NodeRecord::new(id, NodeRole::Frontend, "connector").with_rpc_addr("127.0.0.1:1");
        let json = serde_json::to_string(&impostor).expect("json");
        let _: () = redis::cmd("SET")
            .arg(key)
            .arg(json)
            .query_async(&mut conn)
            .await
            .expect("SET");
    }
    let mut huge = NodeRecord::new("connector-8", NodeRole::Frontend, "connector");
    huge.server_type = "x".repeat(100_000);
    let json = serde_json::to_string(&huge).expect("json");
    let _: () = redis::cmd("SET")
        .arg("sp:n:connector-8")
        .arg(json)
        .query_async(&mut conn)
        .await
        .expect("SET");
    // A legitimate node joins after them: the read that shows it (every
    // key under the prefix) read the bad ones too.
    let late = NodeRecord::new("connector-2", NodeRole::Frontend, "connector")
        .with_rpc_addr("127.0.0.1:4012");
    registry
        .put(&late, Duration::from_secs(10))
        .await
        .expect("put");
    until(&mut members, Duration::from_secs(5), |m| {
        m.get("connector-2").is_some()
    })
    .await;
    let now = members.borrow().clone();
    let ids: Vec<&str> = now.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, vec!["connector-1", "connector-2"], "{ids:?}");
    assert_eq!(
        now.get("connector-1").and_then(|r| r.rpc_addr.as_deref()),
        Some("127.0.0.1:4011"),
        "the live node keeps its record"
    );
}
