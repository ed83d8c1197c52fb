//! Sessions move between frontend processes that share a real Redis: a
//! drained (SIGTERM), crashed (SIGKILL) or paused (SIGSTOP) frontend's
//! clients resume on another one with their tokens, and a frontend that
//! lost a session cannot change it any more.

use crate::common;
use common::{sid_of, token_of};

use common::nodes::{registered_frontend, sigkill, signal};
use common::redis::RedisServer;
use serde_json::{json, Value};
use session_proxy::node::{follow_frontends, Following};
use session_proxy::registry::{Membership, RedisMembership, RedisMembershipConfig};
use session_proxy::{BackendConfig, BackendSessionService, ErrorCode};
use session_proxy_client::{PomeloClient, PomeloEvent, PomeloOptions};
use session_proxy_faults::{check, Kind, Outcome, Recorder};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::process::Child;

const WAIT: Duration = Duration::from_secs(10);

/// A frontend process keeping its sessions in `redis`, registered there.
async fn frontend(id: &str, redis: &str, lease_secs: u64) -> (Child, SocketAddr) {
    let lease = lease_secs.to_string();
    let extra = [
        "--redis",
        redis,
        "--lease-secs",
        &lease,
        "--drain-secs",
        "8",
    ];
    registered_frontend(id, redis, &extra).await
}

/// The bench app's chat backend, in this process, following the registry.
async fn backend(redis: &str) -> (BackendSessionService, (Following, RedisMembership)) {
    let members = RedisMembership::connect(RedisMembershipConfig::new(redis))
        .await
        .expect("registry");
    let mut config = BackendConfig::new("chat-1");
    config.server_type = Some("chat".into());
    let service = BackendSessionService::new(config).expect("config");
    service.serve(session_proxy_bench::app::backend_handlers("chat", &service));
    let following = follow_frontends(members.watch(), service.clone());
    (service, (following, members))
}

/// Connects to `addr`, resuming with `token` when given; retried until the
/// node serves or `WAIT` passes.
async fn connect(addr: SocketAddr, token: Option<&str>) -> PomeloClient {
    let started = Instant::now();
    loop {
        let mut options = PomeloOptions::default();
        if let Some(t) = token {
            options.user = json!({ "resumeToken": t });
        }
        match PomeloClient::connect_with(addr, options).await {
            Ok(client) => return client,
            Err(err) => assert!(started.elapsed() < WAIT, "cannot connect to {addr}: {err}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A request answered `{code: 200}` (with the answer), retried while no
/// backend serves the frontend yet.
async fn ok(client: &PomeloClient, route: &str, body: Value) -> Value {
    let started = Instant::now();
    loop {
        match client.request(route, &body).await {
            Ok(answer) if answer["code"] == 200 => return answer,
            other => assert!(started.elapsed() < WAIT, "{route} failed: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn get(client: &PomeloClient, key: &str) -> Value {
    ok(client, "chat.benchHandler.get", json!({ "key": key })).await["value"].clone()
}

/// Waits for a kick (its reason), skipping pushes.
async fn kicked(client: &mut PomeloClient) -> Option<String> {
    let until = Instant::now() + WAIT;
    while let Some(event) = client.next_event(until - Instant::now()).await {
        match event {
            PomeloEvent::Kick { reason } => return Some(reason),
            PomeloEvent::Closed => return None,
            PomeloEvent::Push { .. } => {}
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_frontends_clients_resume_on_the_other_with_every_acknowledged_write() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let url = redis.url();
    let (mut a, addr_a) = frontend("connector-a", &url, 3).await;
    let (mut b, addr_b) = frontend("connector-b", &url, 3).await;
    let (chat, _following) = backend(&url).await;

    // Players on A, each writing a counter until A drains under them; every
    // write and the reads after the move go into one history.
    let history = Recorder::new();
    let mut players = Vec::new();
    for i in 0..20 {
        let history = history.clone();
        players.push(tokio::spawn(async move {
            let uid = format!("player-{i}");
            let mut client = connect(addr_a, None).await;
            ok(&client, "chat.benchHandler.login", json!({ "uid": uid })).await;
            let sid = sid_of(&token_of(&client));
            let mut acked = 0u64;
            loop {
                let set = json!({ "key": "n", "value": acked + 1 });
                let op = history.invoke(i, &uid, Kind::write("n", acked + 1), WAIT);
                let answer = client.request("chat.benchHandler.set", &set).await;
                history.complete(op, Outcome::of_answer(&answer));
                match answer {
                    Ok(answer) if answer["code"] == 200 => acked += 1,
                    _ => break,
                }
                if acked > 10_000 {
                    panic!("the drain never came");
                }
            }
            // Told to come back elsewhere, with the token it holds.
            let reason = kicked(&mut client).await;
            let token = token_of(&client);
            (uid, sid, token, acked, reason)
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let terminated = Instant::now();
    signal(a.id().expect("pid"), "TERM");

    let mut moved = Vec::new();
    for p in players {
        let (uid, sid, token, acked, reason) = p.await.expect("player");
        assert!(acked > 0, "{uid} never wrote");
        assert_eq!(reason.as_deref(), Some("reconnect"), "{uid}");
        let client = connect(addr_b, Some(&token)).await;
        assert_eq!(client.handshake()["code"], 200, "{uid}");
        assert_eq!(sid_of(&token_of(&client)), sid, "{uid} got another session");
        moved.push((uid, client, acked));
    }
    for (uid, client, acked) in &moved {
        assert_eq!(get(client, "name").await, json!(uid));
        let read = history.invoke(99, uid, Kind::read("n"), WAIT);
        let n = get(client, "n").await.as_u64().expect("n is a number");
        history.complete(read, Outcome::Value(Some(n)));
        // Every acknowledged write is there; one more may have been applied
        // while its answer was lost with the connection.
        assert!(
            n == *acked || n == acked + 1,
            "{uid}: n = {n}, acked {acked}"
        );
    }
    // The same, as the fault harness's checker states it.
    let violations = check(&history.events(), Duration::from_secs(2));
    assert!(violations.is_empty(), "{violations:#?}");
    let status = tokio::time::timeout(Duration::from_secs(12), a.wait())
        .await
        .expect("the drained frontend exits within its limit")
        .expect("wait");
    assert!(status.success(), "{status:?}");
    assert!(terminated.elapsed() < Duration::from_secs(10));
    chat.shutdown(Duration::from_secs(1)).await;
    sigkill(&mut b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_frontends_clients_resume_on_the_other_from_the_store() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let url = redis.url();
    let (mut a, addr_a) = frontend("connector-a", &url, 3).await;
    let (mut b, addr_b) = frontend("connector-b", &url, 3).await;
    let (chat, _following) = backend(&url).await;

    let client = connect(addr_a, None).await;
    ok(&client, "chat.benchHandler.login", json!({ "uid": "ann" })).await;
    ok(
        &client,
        "chat.benchHandler.set",
        json!({ "key": "gold", "value": 7 }),
    )
    .await;
    let token = token_of(&client);
    sigkill(&mut a).await;

    // Nobody handed it over: B claims it from the dead owner.
    let moved = connect(addr_b, Some(&token)).await;
    assert_eq!(moved.handshake()["code"], 200);
    assert_eq!(sid_of(&token_of(&moved)), sid_of(&token));
    assert_eq!(get(&moved, "name").await, json!("ann"));
    assert_eq!(get(&moved, "gold").await, json!(7));
    // The token rotated on the way; the new one works on B again.
    let rotated = token_of(&moved);
    assert_ne!(rotated, token);
    moved.close();
    let again = connect(addr_b, Some(&rotated)).await;
    assert_eq!(get(&again, "gold").await, json!(7));
    chat.shutdown(Duration::from_secs(1)).await;
    sigkill(&mut b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_frontend_that_lost_a_session_cannot_change_it_and_closes_its_copy() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let url = redis.url();
    // A long lease: the pause must not make A leave the registry.
    let (mut a, addr_a) = frontend("connector-a", &url, 30).await;
    let (mut b, addr_b) = frontend("connector-b", &url, 30).await;
    let (chat, _following) = backend(&url).await;

    let mut old = connect(addr_a, None).await;
    ok(&old, "chat.benchHandler.login", json!({ "uid": "bob" })).await;
    ok(
        &old,
        "chat.benchHandler.set",
        json!({ "key": "k", "value": 1 }),
    )
    .await;
    let token = token_of(&old);
    let sid = sid_of(&token);

    // A stops answering (paused, or partitioned); the client moves to B.
    signal(a.id().expect("pid"), "STOP");
    let moved = connect(addr_b, Some(&token)).await;
    assert_eq!(sid_of(&token_of(&moved)), sid);
    ok(
        &moved,
        "chat.benchHandler.set",
        json!({ "key": "k", "value": 2 }),
    )
    .await;
    signal(a.id().expect("pid"), "CONT");

    // A still holds its stale copy and takes a backend's change: the store
    // refuses A's write, A closes its copy, and the backend hears where the
    // session went. Nothing of it is applied.
    let started = Instant::now();
    let refused = loop {
        let attempt = async {
            let mut session = chat.get("connector-a", sid).await?.ok_or_else(|| {
                session_proxy::backend::Error::UnknownFrontend("no session".into())
            })?;
            session.set("k", &99)?;
            session.push("k").await
        };
        match attempt.await {
            Err(err) if err.code() == ErrorCode::SessionMoved => break err,
            other => assert!(
                started.elapsed() < WAIT,
                "A went on taking changes: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        matches!(&refused, session_proxy::backend::Error::SessionMoved { frontend, to }
            if frontend == "connector-a" && to == "connector-b"),
        "{refused:?}"
    );
    // A's copy is gone: its old connection was told why, and A answers
    // every later call on the session with where it went.
    assert_eq!(kicked(&mut old).await.as_deref(), Some("resumed elsewhere"));
    let again = chat.get("connector-a", sid).await.map(|s| s.is_some());
    assert!(
        matches!(&again, Err(e) if e.code() == ErrorCode::SessionMoved),
        "{again:?}"
    );
    // The session's one owner kept the client's write.
    assert_eq!(get(&moved, "k").await, json!(2));
    let on_b = chat.get("connector-b", sid).await.expect("B answers");
    let value: Option<u32> = on_b.expect("B holds it").get("k").expect("decodes");
    assert_eq!(value, Some(2));
    chat.shutdown(Duration::from_secs(1)).await;
    sigkill(&mut a).await;
    sigkill(&mut b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_moves_back_resumes_from_the_store_not_a_stale_copy() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let url = redis.url();
    let (mut a, addr_a) = frontend("connector-a", &url, 30).await;
    let (mut b, addr_b) = frontend("connector-b", &url, 30).await;
    let (chat, _following) = backend(&url).await;
    let set = |value: u32| json!({ "key": "n", "value": value });
    let resumed = |c: &PomeloClient| c.handshake()["user"]["resumed"] == true;

    // Written on A (1); the client drops, A parks the session.
    let on_a = connect(addr_a, None).await;
    ok(&on_a, "chat.benchHandler.login", json!({ "uid": "cy" })).await;
    ok(&on_a, "chat.benchHandler.set", set(1)).await;
    let first = token_of(&on_a);
    on_a.close();

    // It resumes on B and is written there (2); A made no write since, so
    // nothing told A. The client drops again.
    let on_b = connect(addr_b, Some(&first)).await;
    assert!(resumed(&on_b));
    ok(&on_b, "chat.benchHandler.set", set(2)).await;
    assert_ne!(token_of(&on_b), first, "rotated on B");
    on_b.close();

    // Back on A with the token it had there (a reply from B it never
    // read): still good in the store for the overlap, and A's parked copy
    // would accept it. A asks the store and claims the session back.
    let back = connect(addr_a, Some(&first)).await;
    assert!(resumed(&back), "{}", back.handshake());
    assert_eq!(get(&back, "n").await, json!(2), "a stale read on A");
    ok(&back, "chat.benchHandler.set", set(3)).await;
    let third = token_of(&back);
    back.close();

    // And on B with the newest token, which B's parked copy never saw: B
    // claims it from the store instead of opening a fresh session.
    let again = connect(addr_b, Some(&third)).await;
    assert!(resumed(&again), "{}", again.handshake());
    assert_eq!(sid_of(&token_of(&again)), sid_of(&first));
    assert_eq!(get(&again, "n").await, json!(3));
    chat.shutdown(Duration::from_secs(1)).await;
    sigkill(&mut a).await;
    sigkill(&mut b).await;
}
