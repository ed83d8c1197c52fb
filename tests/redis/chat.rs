//! The chat example end to end: gate, two connectors, two chat servers,
//! clients speaking the Pomelo protocol over TCP and WebSocket.

use crate::common;

use serde_json::{json, Value};
use session_proxy_chat::{ChatCluster, ChatConfig};
use session_proxy_client::{PomeloClient, PomeloEvent, PomeloOptions, Transport};
use std::net::SocketAddr;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(5);

async fn enter(
    cluster: &ChatCluster,
    name: &str,
    rid: &str,
    transport: Transport,
) -> (PomeloClient, Value) {
    let gate = PomeloClient::connect(cluster.gate_addr())
        .await
        .expect("gate");
    let entry = gate
        .request("gate.gateHandler.queryEntry", &json!({ "uid": name }))
        .await
        .expect("queryEntry");
    assert_eq!(entry["code"], 200, "{entry}");
    let addr: SocketAddr = format!(
        "{}:{}",
        entry["host"].as_str().expect("host"),
        entry["port"]
    )
    .parse()
    .expect("addr");
    assert!(cluster.connector_addrs().contains(&addr));
    let mut options = PomeloOptions::default();
    options.transport = transport;
    let client = PomeloClient::connect_with(addr, options)
        .await
        .expect("connector");
    let users = client
        .request(
            "connector.entryHandler.enter",
            &json!({ "username": name, "rid": rid }),
        )
        .await
        .expect("enter");
    (client, users)
}

/// Names that the gate sends to different connectors.
fn spread_names(cluster: &ChatCluster) -> Vec<String> {
    let addrs = cluster.connector_addrs();
    let mut by_connector: Vec<Vec<String>> = vec![Vec::new(); addrs.len()];
    for i in 0..200 {
        let name = format!("player{i}");
        let names: Vec<String> = (1..=addrs.len())
            .map(|i| format!("connector-{i}"))
            .collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let c = session_proxy::frontend::pick_by_key(name.as_bytes(), &refs).expect("a connector");
        by_connector[c].push(name);
    }
    vec![
        by_connector[0][0].clone(),
        by_connector[1][0].clone(),
        by_connector[0][1].clone(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_clients_on_two_connectors_chat_through_two_chat_servers() {
    // chatofpomelo's rule, checked at the end: a drop is a leave.
    let mut config = ChatConfig::ephemeral();
    config.resume_grace = Duration::ZERO;
    let cluster = ChatCluster::start(config).await.expect("cluster");
    let names = spread_names(&cluster);
    let (mut a, users) = enter(&cluster, &names[0], "lobby", Transport::Tcp).await;
    assert_eq!(users["users"], json!([names[0]]));
    let (mut b, users) = enter(&cluster, &names[1], "lobby", Transport::WebSocket).await;
    let mut got: Vec<String> = serde_json::from_value(users["users"].clone()).expect("list");
    got.sort();
    let mut want = vec![names[0].clone(), names[1].clone()];
    want.sort();
    assert_eq!(got, want);
    assert_eq!(
        a.next_push(WAIT).await.expect("onAdd"),
        ("onAdd".into(), json!({ "user": names[1] }))
    );
    let (mut c, _) = enter(&cluster, &names[2], "lobby", Transport::Tcp).await;
    assert_eq!(a.next_push(WAIT).await.expect("onAdd").1["user"], names[2]);
    assert_eq!(b.next_push(WAIT).await.expect("onAdd").1["user"], names[2]);
    // The sessions really live on two connectors.
    assert_eq!(
        cluster.sessions(0).expect("c1").count() + cluster.sessions(1).expect("c2").count(),
        3
    );
    assert!(
        cluster.sessions(0).expect("c1").count() >= 1
            && cluster.sessions(1).expect("c2").count() >= 1
    );

    // Broadcast in the room: everyone, the sender included, gets it once.
    let answer = b
        .request(
            "chat.chatHandler.send",
            &json!({ "content": "hello", "from": names[1], "target": "*" }),
        )
        .await
        .expect("send");
    assert_eq!(answer, json!({ "route": "chat.chatHandler.send" }));
    for client in [&mut a, &mut b, &mut c] {
        let (route, body) = client.next_push(WAIT).await.expect("onChat");
        assert_eq!(route, "onChat");
        assert_eq!(
            body,
            json!({ "msg": "hello", "from": names[1], "target": "*" })
        );
    }

    // A private message reaches only its target, across connectors.
    c.request(
        "chat.chatHandler.send",
        &json!({ "content": "psst", "from": names[2], "target": names[1] }),
    )
    .await
    .expect("send");
    assert_eq!(b.next_push(WAIT).await.expect("private").1["msg"], "psst");
    assert!(
        a.next_event(Duration::from_millis(200)).await.is_none(),
        "a got nothing"
    );
    assert!(
        c.next_event(Duration::from_millis(50)).await.is_none(),
        "c got nothing"
    );

    // The same user cannot enter twice.
    let (dup, answer) = enter(&cluster, &names[0], "lobby", Transport::Tcp).await;
    assert_eq!(answer, json!({ "code": 500, "error": true }));
    drop(dup);

    // Leaving tells the room.
    a.close();
    for client in [&mut b, &mut c] {
        assert_eq!(
            client.next_push(WAIT).await.expect("onLeave"),
            ("onLeave".into(), json!({ "user": names[0] }))
        );
    }
    cluster.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_cannot_fake_a_join_or_a_leave_nor_flood_the_room() {
    let cluster = ChatCluster::start(ChatConfig::ephemeral())
        .await
        .expect("cluster");
    let names = spread_names(&cluster);
    let (mut a, _) = enter(&cluster, &names[0], "lobby", Transport::Tcp).await;
    let (mut b, _) = enter(&cluster, &names[1], "lobby", Transport::WebSocket).await;
    assert_eq!(a.next_push(WAIT).await.expect("onAdd").0, "onAdd");
    // The connector's own calls are refused to clients, over TCP and
    // WebSocket, and nobody in the room hears a join or a leave.
    for client in [&a, &b] {
        for route in ["chat.chatRemote.add", "chat.chatRemote.kick"] {
            let answer = client.request(route, &json!({})).await.expect("answered");
            assert_eq!(
                answer["code"],
                session_proxy::filters::NOT_FOR_CLIENTS,
                "{answer}"
            );
        }
    }
    for client in [&mut a, &mut b] {
        assert_eq!(client.next_event(Duration::from_millis(300)).await, None);
    }
    // A flood of messages: the first ten (the burst) reach the room, the
    // rest are refused, and the room gets exactly what was accepted.
    let mut accepted = 0;
    for i in 0..20 {
        let answer = a
            .request(
                "chat.chatHandler.send",
                &json!({ "content": format!("m{i}"), "target": "*" }),
            )
            .await
            .expect("answered");
        if answer["code"] == session_proxy::filters::RATE_LIMITED {
            continue;
        }
        assert_eq!(answer, json!({ "route": "chat.chatHandler.send" }));
        accepted += 1;
    }
    assert!((10..=12).contains(&accepted), "{accepted} accepted");
    for _ in 0..accepted {
        assert_eq!(b.next_push(WAIT).await.expect("onChat").0, "onChat");
    }
    assert_eq!(b.next_event(Duration::from_millis(300)).await, None);
    cluster.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_come_back_as_responses_and_the_connection_stays_open() {
    let cluster = ChatCluster::start(ChatConfig::ephemeral())
        .await
        .expect("cluster");
    let addr = cluster.connector_addrs()[0];
    let client = PomeloClient::connect(addr).await.expect("connect");
    // Unknown local route, unknown backend route, unknown server type,
    // malformed route, a body of the wrong shape, a handler error.
    for (route, body, want) in [
        ("connector.entryHandler.nope", json!({}), "unknown route"),
        ("chat.chatHandler.nope", json!({}), "no handler"),
        ("area.playerHandler.move", json!({}), "no area server"),
        ("justone", json!({}), "invalid route"),
        (
            "connector.entryHandler.enter",
            json!({ "username": 5 }),
            "does not fit",
        ),
        (
            "chat.chatHandler.send",
            json!({ "content": "x" }),
            "enter a room first",
        ),
    ] {
        let answer = client
            .request(route, &body)
            .await
            .expect("an answer, not silence");
        let code = answer["code"].as_u64().expect("code");
        assert!([400, 401, 500].contains(&code), "{route}: {answer}");
        assert!(
            answer["msg"].as_str().expect("msg").contains(want),
            "{route}: {answer}"
        );
    }
    let users = client
        .request(
            "connector.entryHandler.enter",
            &json!({ "username": "ok", "rid": "r" }),
        )
        .await
        .expect("still open");
    assert_eq!(users["users"], json!(["ok"]));
    cluster.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kicks_arrive_as_kick_packages() {
    let cluster = ChatCluster::start(ChatConfig::ephemeral())
        .await
        .expect("cluster");
    let (mut a, _) = enter(&cluster, "kickme", "room", Transport::WebSocket).await;
    let backend = &cluster.chat_servers()[0];
    let mut kicked = 0;
    for i in 0..2 {
        kicked += backend
            .kick_by_uid(
                &format!("connector-{}", i + 1),
                "kickme*room",
                "maintenance",
            )
            .await
            .expect("kick");
    }
    assert_eq!(kicked, 1);
    assert_eq!(
        a.next_event(WAIT).await,
        Some(PomeloEvent::Kick {
            reason: "maintenance".into()
        })
    );
    assert_eq!(a.next_event(WAIT).await, Some(PomeloEvent::Closed));
    cluster.shutdown(Duration::from_secs(2)).await;
}

/// The connector the gate hands `uid`.
async fn query_entry(cluster: &ChatCluster, uid: &str) -> Value {
    let gate = PomeloClient::connect(cluster.gate_addr())
        .await
        .expect("gate");
    gate.request("gate.gateHandler.queryEntry", &json!({ "uid": uid }))
        .await
        .expect("queryEntry")
}

/// Waits until the gate hands out connector `want` (its client address).
async fn gate_hands_out(cluster: &ChatCluster, want: SocketAddr) {
    let started = std::time::Instant::now();
    loop {
        let entry = query_entry(cluster, "anyone").await;
        if entry["port"] == want.port() {
            return;
        }
        assert!(started.elapsed() < WAIT, "the gate still answers {entry}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_registry_the_gate_hands_out_the_least_loaded_connector_never_a_draining_one() {
    use session_proxy::registry::{RedisMembership, RedisMembershipConfig};
    let Some(redis) = common::redis::RedisServer::start() else {
        return;
    };
    let mut registry = RedisMembershipConfig::new(redis.url());
    registry.resync = Duration::from_millis(200);
    let registry = RedisMembership::connect(registry).await.expect("registry");
    let mut config = ChatConfig::ephemeral();
    config.registry = Some(std::sync::Arc::new(registry));
    let cluster = ChatCluster::start(config).await.expect("cluster");
    let [first, second] = [0, 1].map(|i| cluster.connector_addrs()[i]);
    // Both empty: the smallest id. One player there, and the other is
    // handed out.
    gate_hands_out(&cluster, first).await;
    let (_ann, _) = enter(&cluster, "ann", "lobby", Transport::Tcp).await;
    gate_hands_out(&cluster, second).await;
    let (_bob, _) = enter(&cluster, "bob", "lobby", Transport::Tcp).await;
    // One each: the smallest id again, once the counts are in.
    gate_hands_out(&cluster, first).await;
    let (_cat, _) = enter(&cluster, "cat", "lobby", Transport::Tcp).await;
    assert_eq!(cluster.sessions(0).expect("c1").count(), 2, "ann and cat");
    assert_eq!(cluster.sessions(1).expect("c2").count(), 1, "bob");
    // The less loaded one drains: the gate sends everyone to the other.
    gate_hands_out(&cluster, second).await;
    assert!(cluster.set_draining(1));
    gate_hands_out(&cluster, first).await;
    for uid in ["dan", "eve", "fay"] {
        assert_eq!(query_entry(&cluster, uid).await["port"], first.port());
    }
    cluster.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn the_chat_page_is_served_with_the_gates_port_its_client_modules_and_nothing_else() {
    let mut config = ChatConfig::ephemeral();
    config.web_port = Some(0);
    let cluster = ChatCluster::start(config).await.expect("cluster");
    let page = cluster.web_addr().expect("the page is served");
    let (status, body) = common::http::get(page, "/").await.expect("GET /");
    assert_eq!(status, 200);
    assert!(body.contains("<title>session-proxy chat</title>"), "{body}");
    let gate_port = cluster.gate_addr().port();
    assert!(
        body.contains(&format!("const GATE_PORT = {gate_port};")),
        "the gate's port is filled in"
    );
    // The client library's modules, each one the page reaches by import.
    for module in ["index", "client", "connection", "protobuf", "protocol"] {
        let (status, js) = common::http::get(page, &format!("/client/{module}.js"))
            .await
            .expect("GET a module");
        assert_eq!(status, 200, "{module}");
        assert!(js.contains("export "), "{module} is an ES module");
    }
    assert_eq!(common::http::get(page, "/nope").await.expect("GET").0, 404);
    assert_eq!(
        common::http::get(page, "/client/../Cargo.toml")
            .await
            .expect("GET")
            .0,
        404
    );
    // A peer that never finishes its request head holds up no one else.
    let mut idle = tokio::net::TcpStream::connect(page).await.expect("connect");
    use tokio::io::AsyncWriteExt;
    idle.write_all(b"GET / HTTP/1.1\r\n").await.expect("write");
    assert_eq!(common::http::get(page, "/").await.expect("GET /").0, 200);
    cluster.shutdown(Duration::from_secs(2)).await;
}
