//! A session store that fails: a real redis-server SIGKILLed, SIGSTOPped
//! and restarted empty under a frontend that serves a backend over real
//! TCP. Acknowledged means durable; everything else answers at once,
//! nothing hangs, and the frontend writes what waited once Redis is back.

use crate::common;

use common::cluster;
use common::nodes::{free_port, signal, spawn_session_proxy};
use common::redis::RedisServer;
use common::{frontend_value, quick_client, rpc_on_loopback, start_backend_with};
use serde_json::json;
use session_proxy::frontend::{RedisStore, RedisStoreConfig, StoreOptions, StoredSession};
use session_proxy::protocol::{Bind, GetSession};
use session_proxy::{
    BackendSession, BackendSessionService, ConnectInfo, ErrorCode, RpcConfig, RpcServer,
    SessionConfig, SessionId, SessionService,
};
use session_proxy_client::{PomeloClient, PomeloEvent, Transport};
use std::sync::Arc;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(15);

struct Setup {
    sessions: SessionService,
    _rpc: RpcServer,
    backend: BackendSessionService,
    prefix: String,
}

/// A frontend on `redis` with short store deadlines, and a backend on it.
async fn setup(redis: &RedisServer, ttl: Duration, call_timeout: Duration) -> Setup {
    setup_with(redis, ttl, call_timeout, SessionConfig::new("f1"), false).await
}

async fn setup_with(
    redis: &RedisServer,
    ttl: Duration,
    call_timeout: Duration,
    session_config: SessionConfig,
    write_behind: bool,
) -> Setup {
    let prefix = format!("t{}:", free_port());
    let mut config = RedisStoreConfig::new(redis.url());
    config.prefix = prefix.clone();
    config.connect_timeout = Duration::from_millis(300);
    config.response_timeout = call_timeout;
    let store = RedisStore::connect(config).await.expect("redis store");
    let sessions = SessionService::new(session_config);
    let mut options = StoreOptions::default();
    options.ttl = ttl;
    options.flush_interval = Duration::from_millis(20);
    options.call_timeout = call_timeout;
    options.retry_max = Duration::from_millis(200);
    options.restart_check = Duration::from_millis(200);
    options.write_behind = write_behind;
    sessions
        .attach_store(Arc::new(store), options)
        .await
        .expect("attach");
    let rpc = rpc_on_loopback(&sessions, RpcConfig::default()).await;
    let backend = start_backend_with(
        quick_client("b1", Duration::from_secs(5)),
        "f1",
        rpc.local_addr(),
    );
    Setup {
        sessions,
        _rpc: rpc,
        backend,
        prefix,
    }
}

async fn raw(redis: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis.url())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("raw connection")
}

/// The value of `key` in the session as Redis holds it, if it holds it.
async fn stored_value(redis: &RedisServer, prefix: &str, sid: SessionId, key: &str) -> Option<u32> {
    let mut conn = raw(redis).await;
    // A session is a hash: its record under `d`, next to its epoch and owner.
    let blob: Option<Vec<u8>> = redis::cmd("HGET")
        .arg(format!("{prefix}s:{{{:016x}}}", sid.as_u64()))
        .arg("d")
        .query_async(&mut conn)
        .await
        .expect("HGET");
    let record: StoredSession = rmp_serde::from_slice(&blob?).expect("a stored session");
    let setting = record.settings.get(key)?;
    Some(rmp_serde::from_slice(&setting.value).expect("a u32"))
}

/// Waits until Redis holds `want` for `key`.
async fn wait_stored(redis: &RedisServer, prefix: &str, sid: SessionId, key: &str, want: u32) {
    let until = Instant::now() + WAIT;
    while stored_value(redis, prefix, sid, key).await != Some(want) {
        assert!(
            Instant::now() < until,
            "Redis never got {key} = {want} back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A new session on the frontend, its backend proxy, and `n` pushed to it
/// durably (Redis is up).
async fn durable_session(t: &Setup, n: u32) -> (session_proxy::SessionOwner, BackendSession) {
    let owner = t.sessions.create(ConnectInfo::default());
    let mut s = t
        .backend
        .get("f1", owner.sid())
        .await
        .expect("call")
        .expect("open");
    set_and_push(&mut s, n)
        .await
        .expect("durable while Redis is up");
    (owner, s)
}

async fn set_and_push(s: &mut BackendSession, n: u32) -> Result<(), session_proxy::backend::Error> {
    s.set("n", &n).expect("encode");
    s.push("n").await
}

/// Pushes `n` until it is acknowledged (the frontend notices the store is
/// back within its retry pause).
async fn push_until_durable(s: &mut BackendSession, n: u32) {
    let until = Instant::now() + WAIT;
    loop {
        match set_and_push(s, n).await {
            Ok(()) => return,
            Err(err) => {
                assert_eq!(err.code(), ErrorCode::NotDurable, "{err}");
                assert!(Instant::now() < until, "the store never came back: {err}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_redis_fails_changes_fast_as_not_durable_and_gets_them_when_back() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let t = setup(&redis, Duration::from_secs(600), Duration::from_millis(300)).await;
    let (owner, mut s) = durable_session(&t, 1).await;
    let sid = owner.sid();

    redis.kill();
    for n in 2..=6 {
        let started = Instant::now();
        let err = set_and_push(&mut s, n).await.expect_err("Redis is gone");
        assert_eq!(err.code(), ErrorCode::NotDurable, "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "a change waited {:?} on a dead store",
            started.elapsed()
        );
        // Applied, as the error says: the frontend and later reads see it.
        assert_eq!(frontend_value::<u32>(&t.sessions, sid, "n"), Some(n));
    }
    // Calls that need no store are answered as usual.
    let fresh = t.backend.get("f1", sid).await.expect("call").expect("open");
    assert_eq!(fresh.get::<u32>("n").expect("decode"), Some(6));

    redis.start_again();
    wait_stored(&redis, &t.prefix, sid, "n", 6).await;
    push_until_durable(&mut s, 7).await;
    assert_eq!(stored_value(&redis, &t.prefix, sid, "n").await, Some(7));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_redis_holds_up_no_other_call_and_is_written_after_sigcont() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let t = setup(&redis, Duration::from_secs(600), Duration::from_secs(1)).await;
    let (owner, mut s) = durable_session(&t, 1).await;
    let sid = owner.sid();

    redis.pause();
    let mut stalled = s.clone();
    let push = tokio::spawn(async move { set_and_push(&mut stalled, 2).await });
    // Applied in memory, its answer waits for the store.
    common::eventually(WAIT, "the push is applied", || async {
        match frontend_value::<u32>(&t.sessions, sid, "n") {
            Some(2) => Ok(()),
            other => Err(format!("n is {other:?}")),
        }
    })
    .await;
    // The push waits on the store; reads on the same link do not.
    let read = tokio::time::timeout(Duration::from_millis(700), t.backend.get("f1", sid))
        .await
        .expect("a read is not held up by the stalled store")
        .expect("call")
        .expect("open");
    assert_eq!(read.get::<u32>("n").expect("decode"), Some(2));
    assert!(
        !push.is_finished(),
        "the push should still wait for the store"
    );
    let err = tokio::time::timeout(Duration::from_secs(3), push)
        .await
        .expect("the push is answered within the store deadline")
        .expect("task")
        .expect_err("not durable while Redis is stopped");
    assert_eq!(err.code(), ErrorCode::NotDurable, "{err}");
    // The store is now known to be down: the next change fails at once.
    let started = Instant::now();
    let err = set_and_push(&mut s, 3).await.expect_err("still stopped");
    assert_eq!(err.code(), ErrorCode::NotDurable, "{err}");
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );

    redis.resume();
    wait_stored(&redis, &t.prefix, sid, "n", 3).await;
    push_until_durable(&mut s, 4).await;
    assert_eq!(stored_value(&redis, &t.prefix, sid, "n").await, Some(4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writing_behind_acknowledges_before_the_store_and_writes_within_the_flush_interval() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let call_timeout = Duration::from_secs(1);
    let t = setup_with(
        &redis,
        Duration::from_secs(600),
        call_timeout,
        SessionConfig::new("f1"),
        true,
    )
    .await;
    let (owner, mut s) = durable_session(&t, 1).await;
    let sid = owner.sid();
    // Redis up: acknowledged first, in Redis within the flush interval.
    wait_stored(&redis, &t.prefix, sid, "n", 1).await;

    redis.pause();
    for n in 2..=4 {
        // Acknowledged without the store: no wait on it, no NotDurable.
        let started = Instant::now();
        set_and_push(&mut s, n)
            .await
            .expect("acknowledged while Redis is stopped");
        assert!(
            started.elapsed() < call_timeout,
            "a change waited {:?} on a stopped store",
            started.elapsed()
        );
        assert_eq!(frontend_value::<u32>(&t.sessions, sid, "n"), Some(n));
    }
    // Written once Redis answers again, by the writer's retry.
    redis.resume();
    wait_stored(&redis, &t.prefix, sid, "n", 4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_waiting_on_a_stopped_redis_holds_up_no_forwarded_request_on_its_link() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let node = cluster::start_frontend("f1", |_| {}).await;
    let mut config = RedisStoreConfig::new(redis.url());
    config.prefix = format!("t{}:", free_port());
    let store = RedisStore::connect(config).await.expect("redis store");
    let mut options = StoreOptions::default();
    options.call_timeout = Duration::from_secs(5);
    node.sessions
        .attach_store(Arc::new(store), options)
        .await
        .expect("attach");
    // One backend, one link: its revoke and the requests forwarded to it.
    let (backend, _channels) = cluster::start_backend("g1", &[&node]);
    cluster::wait_for_backends(&node, 1).await;
    let player = cluster::client(node.gateway.local_addr(), Transport::Tcp).await;
    let mut banned = cluster::client(node.gateway.local_addr(), Transport::Tcp).await;
    banned
        .request("connector.entry.login", &json!({ "uid": "cheater" }))
        .await
        .expect("login");

    redis.pause();
    let revoke = tokio::spawn({
        let backend = backend.clone();
        async move { backend.revoke_user("cheater", "banned").await }
    });
    // The frontend runs the revoke: it kicks the connected session, then
    // waits on the stopped store.
    match banned.next_event(cluster::WAIT).await {
        Some(PomeloEvent::Kick { reason }) => assert_eq!(reason, "banned"),
        other => panic!("expected the kick, got {other:?}"),
    }
    // A request forwarded to the same backend over the same link.
    let echo = player
        .request("game.h.echo", &json!({ "n": 1 }))
        .await
        .expect("answered while the store is stopped");
    assert_eq!(echo, json!({ "n": 1 }));
    assert!(
        !revoke.is_finished(),
        "the revoke still waits for the store"
    );
    redis.resume();
    let ended = tokio::time::timeout(WAIT, revoke)
        .await
        .expect("the revoke ends once Redis is back")
        .expect("task")
        .expect("revoked");
    assert_eq!(ended.len(), 1, "{ended:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_on_a_session_whose_bind_waits_on_the_store_runs_after_it() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    // Cluster-wide single-session binds ask the store first.
    let mut config = SessionConfig::new("f1");
    config.single_session = session_proxy::SingleSessionPolicy::KickOld;
    let t = setup_with(
        &redis,
        Duration::from_secs(600),
        Duration::from_secs(5),
        config,
        false,
    )
    .await;
    let owner = t.sessions.create(ConnectInfo::default());
    let client = t.backend.client("f1").expect("known");
    client
        .connected(WAIT)
        .await
        .expect("the link is up before Redis stops");

    redis.pause();
    // Pipelined: the read is sent after the bind, before its answer.
    let bind = client
        .send(Bind {
            sid: owner.sid(),
            uid: "alice".into(),
        })
        .await
        .expect("queued");
    let read = client
        .send(GetSession { sid: owner.sid() })
        .await
        .expect("queued");
    // Another session's read is not held up by the waiting bind.
    let other = t.sessions.create(ConnectInfo::default());
    let seen = client
        .call(GetSession { sid: other.sid() })
        .await
        .expect("answered while the bind waits");
    assert!(seen.is_some());
    redis.resume();
    bind.response().await.expect("bound once Redis is back");
    let snapshot = read.response().await.expect("read").expect("open");
    assert_eq!(
        snapshot.uid.as_deref(),
        Some("alice"),
        "the read ran after the bind before it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restarted_empty_gets_every_live_session_again() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    // A 3 s TTL refreshes every second.
    let t = setup(&redis, Duration::from_secs(3), Duration::from_millis(300)).await;
    let mut owners = Vec::new();
    for i in 0..3 {
        owners.push(durable_session(&t, 10 + i).await.0);
    }
    // Nothing changes while Redis is away: only the refresh can notice.
    redis.kill();
    redis.start_again();
    for (i, owner) in owners.iter().enumerate() {
        wait_stored(&redis, &t.prefix, owner.sid(), "n", 10 + i as u32).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restarted_empty_is_noticed_by_its_run_id_long_before_the_ttl_refresh() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    // A 10 min TTL refreshes every 200 s: only the run id can tell in time.
    let t = setup(&redis, Duration::from_secs(600), Duration::from_millis(300)).await;
    let (owner, _s) = durable_session(&t, 7).await;
    // The frontend read the server's run id when it attached the store;
    // nothing of its own fails while Redis is away and back.
    redis.kill();
    redis.start_again();
    wait_stored(&redis, &t.prefix, owner.sid(), "n", 7).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_stopped_redis_exits_in_time_and_frees_its_ports() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let (rpc, clients) = (free_port(), free_port());
    let (rpc_addr, client_addr) = (format!("127.0.0.1:{rpc}"), format!("127.0.0.1:{clients}"));
    let args = [
        "frontend",
        "--id",
        "f1",
        "--rpc-addr",
        &rpc_addr,
        "--client-addr",
        &client_addr,
        "--redis",
        &redis.url(),
    ];
    let (mut frontend, _) = spawn_session_proxy(&args, "listening on").await;
    // A connected client leaves a session to write at shutdown.
    let _client = PomeloClient::connect(client_addr.parse().expect("addr"))
        .await
        .expect("client connects");
    redis.pause();
    let started = Instant::now();
    signal(frontend.id().expect("pid"), "TERM");
    let status = tokio::time::timeout(Duration::from_secs(15), frontend.wait())
        .await
        .expect("SIGTERM completes while Redis is stopped")
        .expect("wait");
    assert!(status.success(), "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(12),
        "{:?}",
        started.elapsed()
    );
    std::net::TcpListener::bind(&rpc_addr).expect("the RPC port is free again");
    std::net::TcpListener::bind(&client_addr).expect("the client port is free again");
    redis.resume();
}
