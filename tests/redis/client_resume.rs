//! `session_proxy_client::SessionClient` keeps its session against the
//! chat example on a real Redis: after a dropped connection, through a
//! connector's drain (back through the gate), and with a stale token.

use crate::common;

use common::chat::chat_on_redis;
use common::proxy::CutProxy;
use common::redis::RedisServer;
use serde_json::{json, Value};
use session_proxy_chat::ChatCluster;
use session_proxy_client::{
    ClientError, Entry, PomeloClient, PomeloEvent, ResumeEvent, ResumeOptions, Saved,
    SessionClient, WhileReconnecting,
};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(10);
const SEND: &str = "chat.chatHandler.send";

fn options() -> ResumeOptions {
    let mut o = ResumeOptions::default();
    o.attempts = 20;
    o.min_delay = Duration::from_millis(50);
    o.max_delay = Duration::from_millis(500);
    o
}

fn say(rid: &str, from: &str, msg: &str) -> Value {
    json!({ "rid": rid, "content": msg, "from": from, "target": "*" })
}

async fn enter(client: &SessionClient, name: &str, rid: &str) -> Value {
    let users = client
        .request(
            "connector.entryHandler.enter",
            &json!({ "username": name, "rid": rid }),
        )
        .await
        .expect("enter")["users"]
        .clone();
    assert!(users.is_array(), "{name} entered {rid}: {users}");
    users
}

/// The next session event, skipping pushes and reconnect notices.
async fn next_session(client: &SessionClient) -> (bool, Option<String>, SocketAddr) {
    let until = Instant::now() + WAIT;
    loop {
        match client.next_event(until - Instant::now()).await {
            Some(ResumeEvent::Session {
                resumed,
                refused,
                addr,
            }) => return (resumed, refused, addr),
            Some(ResumeEvent::Push { .. } | ResumeEvent::Reconnecting { .. }) => {}
            other => panic!("expected a session, got {other:?}"),
        }
    }
}

/// A plain client in the room, to listen.
async fn listener(addr: SocketAddr, name: &str, rid: &str) -> PomeloClient {
    let client = PomeloClient::connect(addr).await.expect("connect");
    let entered = client
        .request(
            "connector.entryHandler.enter",
            &json!({ "username": name, "rid": rid }),
        )
        .await
        .expect("enter");
    assert!(entered["users"].is_array(), "{entered}");
    client
}

/// Waits for `from`'s chat `msg`; fails on an `onLeave` first.
async fn hears(client: &mut PomeloClient, from: &str, msg: &str) {
    let until = Instant::now() + WAIT;
    loop {
        match client.next_event(until - Instant::now()).await {
            Some(PomeloEvent::Push { route, body }) if route == "onChat" => {
                if body["from"] == from && body["msg"] == msg {
                    return;
                }
            }
            Some(PomeloEvent::Push { route, body }) => {
                assert_ne!(route, "onLeave", "{body}");
            }
            other => panic!("waiting for {from}'s {msg:?}: {other:?}"),
        }
    }
}

async fn start() -> Option<(RedisServer, ChatCluster)> {
    let redis = RedisServer::start()?;
    let cluster = chat_on_redis(redis.url()).await;
    Some((redis, cluster))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_comes_back_as_the_same_session_still_in_its_room() {
    let Some((_redis, cluster)) = start().await else {
        return;
    };
    let connector = cluster.connector_addrs()[0];
    let proxy = CutProxy::start(connector).await;
    let ann = SessionClient::connect(Entry::Direct(proxy.addr()), options())
        .await
        .expect("connect");
    assert!(!next_session(&ann).await.0, "a new session");
    enter(&ann, "ann", "drop").await;
    let mut bob = listener(connector, "bob", "drop").await;
    let before = ann.saved().expect("a token");

    proxy.cut();
    let (resumed, refused, addr) = next_session(&ann).await;
    assert!(resumed, "the same session came back: {refused:?}");
    assert_eq!(addr, proxy.addr());
    let after = ann.saved().expect("a token");
    assert_ne!(after.token, before.token, "a fresh token for next time");

    let answer = ann.request(SEND, &say("drop", "ann", "back")).await;
    assert_eq!(answer.expect("answered"), json!({ "route": SEND }));
    hears(&mut bob, "ann", "back").await;
    cluster.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_connectors_players_go_back_through_the_gate_and_resume_on_the_other() {
    let Some((_redis, mut cluster)) = start().await else {
        return;
    };
    let entry = Entry::Gate {
        addr: cluster.gate_addr(),
        route: "gate.gateHandler.queryEntry".into(),
        body: json!({ "uid": "dan" }),
    };
    let dan = SessionClient::connect(entry, options())
        .await
        .expect("connect");
    let (_, _, first) = next_session(&dan).await;
    let connectors = cluster.connector_addrs();
    let drained = connectors
        .iter()
        .position(|a| *a == first)
        .expect("the gate handed out a connector");
    let other = connectors[1 - drained];
    enter(&dan, "dan", "drain").await;
    let mut eve = listener(other, "eve", "drain").await;

    // Requests under the chat's rate limit (5 a second), through the drain.
    let writer = {
        let dan = dan.clone();
        tokio::spawn(async move {
            let mut outcomes = Vec::new();
            for i in 0..20 {
                // The workload's pace: under the chat's rate limit.
                tokio::time::sleep(Duration::from_millis(220)).await;
                let answer = dan
                    .request(SEND, &say("drain", "dan", &format!("m{i}")))
                    .await;
                outcomes.push(answer);
            }
            outcomes
        })
    };
    // The drain starts once the requests run: the room has heard the first.
    hears(&mut eve, "dan", "m0").await;
    let report = cluster
        .drain_connector(drained, Duration::from_secs(8))
        .await
        .expect("a connector");
    assert!(report.complete(), "{report:?}");
    assert!(report.kicked >= 1, "{report:?}");
    let outcomes = writer.await.expect("writer");
    let (resumed, _, addr) = next_session(&dan).await;
    assert!(resumed, "the session came back");
    assert_eq!(addr, other, "on the other connector");

    // Every request answered, but for at most the one in flight at the cut.
    let failed: Vec<_> = outcomes.iter().filter(|o| o.is_err()).collect();
    assert!(failed.len() <= 1, "{failed:?}");
    for f in &failed {
        assert!(matches!(f, Err(ClientError::ClosedBefore { .. })), "{f:?}");
    }
    for o in outcomes.iter().filter_map(|o| o.as_ref().ok()) {
        assert_eq!(o, &json!({ "route": SEND }));
    }
    let on_other = cluster.sessions(1 - drained).expect("sessions");
    let mut uids = Vec::new();
    on_other.for_each(|s| uids.extend(s.uid.clone()));
    assert!(uids.contains(&"dan*drain".to_string()), "{uids:?}");
    // Still in the room.
    dan.request(SEND, &say("drain", "dan", "moved"))
        .await
        .expect("answered");
    hears(&mut eve, "dan", "moved").await;
    cluster.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_token_starts_a_fresh_session_and_says_why() {
    let Some((_redis, cluster)) = start().await else {
        return;
    };
    let connector = cluster.connector_addrs()[1];
    let mut o = options();
    o.saved = Some(Saved {
        addr: connector,
        token: "not-a-token".into(),
    });
    let cat = SessionClient::connect(Entry::Direct(connector), o)
        .await
        .expect("connect");
    let (resumed, refused, _) = next_session(&cat).await;
    assert!(!resumed);
    assert!(refused.is_some(), "the server says why");
    let saved = cat.saved().expect("the new session's token");
    assert_ne!(saved.token, "not-a-token");
    assert_eq!(enter(&cat, "cat", "stale").await, json!(["cat"]));
    cluster.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_while_reconnecting_fail_at_once_when_asked_and_a_kick_ends_the_client() {
    let Some((_redis, cluster)) = start().await else {
        return;
    };
    let connector = cluster.connector_addrs()[0];
    let proxy = CutProxy::start(connector).await;
    let mut o = options();
    o.while_reconnecting = WhileReconnecting::Fail;
    o.min_delay = Duration::from_secs(2);
    o.max_delay = Duration::from_secs(2);
    let fay = SessionClient::connect(Entry::Direct(proxy.addr()), o)
        .await
        .expect("connect");
    next_session(&fay).await;
    enter(&fay, "fay", "kick").await;
    proxy.cut();
    match fay.next_event(WAIT).await {
        Some(ResumeEvent::Reconnecting { attempt: 1, .. }) => {}
        other => panic!("expected a reconnect, got {other:?}"),
    }
    let refused = fay.request(SEND, &say("kick", "fay", "x")).await;
    assert!(
        matches!(refused, Err(ClientError::Reconnecting { .. })),
        "{refused:?}"
    );
    let (resumed, _, _) = next_session(&fay).await;
    assert!(resumed);
    // Kicked for good (another login of the same session): the client
    // closes and forgets its token.
    let kicked = cluster
        .sessions(0)
        .expect("sessions")
        .kick_by_uid("fay*kick", "kicked by an admin");
    assert_eq!(kicked, 1);
    let until = Instant::now() + WAIT;
    loop {
        match fay.next_event(until - Instant::now()).await {
            Some(ResumeEvent::Kicked { reason }) => {
                assert_eq!(reason, "kicked by an admin");
                break;
            }
            Some(ResumeEvent::Push { .. }) => {}
            other => panic!("expected the kick, got {other:?}"),
        }
    }
    assert!(fay.is_closed());
    assert_eq!(fay.saved(), None);
    assert!(matches!(
        fay.request(SEND, &say("kick", "fay", "y")).await,
        Err(ClientError::Closed)
    ));
    cluster.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_the_store_cannot_confirm_is_refused_for_now_and_the_token_kept() {
    let Some((redis, cluster)) = start().await else {
        return;
    };
    let connector = cluster.connector_addrs()[0];
    let proxy = CutProxy::start(connector).await;
    let mut o = options();
    o.attempts = 60;
    let dee = SessionClient::connect(Entry::Direct(proxy.addr()), o)
        .await
        .expect("connect");
    assert!(!next_session(&dee).await.0, "a new session");
    enter(&dee, "dee", "hold").await;
    let before = dee.saved().expect("a token");

    // The store stops answering: the connector cannot tell whether another
    // one claimed the session, so it refuses the resume for now, saying so.
    redis.pause();
    let mut resume = session_proxy_client::PomeloOptions::default();
    resume.user = json!({ "resumeToken": before.token });
    match PomeloClient::connect_with(connector, resume).await {
        Err(ClientError::Refused { retry, error, .. }) => {
            assert!(retry, "a refusal for now: {error}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }

    // The client keeps its token through such refusals, and resumes the
    // same session once the store is back.
    proxy.cut();
    let until = Instant::now() + WAIT;
    loop {
        match dee.next_event(until - Instant::now()).await {
            Some(ResumeEvent::Reconnecting { attempt, .. }) if attempt >= 2 => break,
            Some(ResumeEvent::Reconnecting { .. } | ResumeEvent::Push { .. }) => {}
            other => panic!("expected it to retry, got {other:?}"),
        }
    }
    assert_eq!(dee.saved().map(|s| s.token), Some(before.token.clone()));
    redis.resume();
    let (resumed, refused, _) = next_session(&dee).await;
    assert!(resumed, "the same session came back: {refused:?}");
    let answer = dee.request(SEND, &say("hold", "dee", "back")).await;
    assert_eq!(answer.expect("answered"), json!({ "route": SEND }));
    cluster.shutdown(Duration::from_secs(2)).await;
}
