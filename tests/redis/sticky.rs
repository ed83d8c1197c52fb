//! Players that stay on their stateful server: two frontends share sticky
//! bindings of the `room` type in a real Redis, over real TCP on loopback.
//! A player reconnecting through the other frontend lands on the same room
//! node, a room node that joins takes nobody, and a drained node's players
//! move to another that is told before their next request.

use crate::common;
use common::cluster::{client, start_frontend, Node, WAIT};
use common::redis::RedisServer;
use serde_json::{json, Value};
use session_proxy::backend::{BackendSession, Handlers, RemoteCx, Remotes};
use session_proxy::frontend::{pick_by_key, StickyOptions};
use session_proxy::protocol::{Adopt, Target};
use session_proxy::{BackendConfig, BackendSessionService};
use session_proxy_client::Transport;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the room nodes did, in order: `(node, "adopt" | "where", uid,
/// from)`.
type Log = Arc<Mutex<Vec<(String, &'static str, String, String)>>>;

/// A room node linked to `frontends`: `room.h.where` answers its id,
/// `room.sticky.adopt` and `room.roomRemote.whoami` are its remotes.
async fn room(id: &str, frontends: &[&Node], log: &Log) -> BackendSessionService {
    let mut config = BackendConfig::new(id);
    config.server_type = Some("room".into());
    let service = BackendSessionService::new(config).expect("valid config");
    let mut handlers = Handlers::new();
    let (node, seen) = (id.to_string(), log.clone());
    handlers.add("room.h.where", move |s: BackendSession, _b: Value| {
        let (node, seen) = (node.clone(), seen.clone());
        async move {
            let uid = s.uid().unwrap_or_default().to_string();
            seen.lock()
                .expect("log")
                .push((node.clone(), "where", uid, String::new()));
            Ok(json!({ "node": node }))
        }
    });
    service.serve(handlers);
    let mut remotes = Remotes::new();
    let (node, seen) = (id.to_string(), log.clone());
    remotes.add("room.sticky.adopt", move |_cx: RemoteCx, moved: Adopt| {
        let (node, seen) = (node.clone(), seen.clone());
        async move {
            seen.lock()
                .expect("log")
                .push((node, "adopt", moved.uid, moved.from));
            Ok(())
        }
    });
    let node = id.to_string();
    remotes.add("room.roomRemote.whoami", move |_cx: RemoteCx, (): ()| {
        let node = node.clone();
        async move { Ok(node) }
    });
    service.serve_remotes(remotes);
    for f in frontends {
        service.add_frontend_of_type(
            f.sessions.frontend_id(),
            "connector",
            f.rpc.local_addr().to_string(),
        );
    }
    service.ready(WAIT).await.expect("the room links up");
    service
}

/// Two frontends whose `room` players stay on their node, bindings in
/// `redis`.
async fn frontends(redis: &RedisServer) -> (Node, Node) {
    frontends_with(redis, StickyOptions::default(), Duration::from_secs(5)).await
}

/// [`frontends`] with these options and request deadline.
async fn frontends_with(
    redis: &RedisServer,
    options: StickyOptions,
    deadline: Duration,
) -> (Node, Node) {
    let store = Arc::new(common::store::store_on(redis.url()).await);
    let f1 = start_frontend("connector-1", |c| c.request_deadline = deadline).await;
    let f2 = start_frontend("connector-2", |c| c.request_deadline = deadline).await;
    for f in [&f1, &f2] {
        f.rpc
            .backends()
            .stick("room", store.clone(), options.clone());
    }
    (f1, f2)
}

/// Two frontends sharing bindings in `redis`, and room-1 and room-2
/// linked to both.
async fn two_rooms(redis: &RedisServer) -> (Node, Node, Log, [BackendSessionService; 2]) {
    let (f1, f2) = frontends(redis).await;
    let log = Log::default();
    let r1 = room("room-1", &[&f1, &f2], &log).await;
    let r2 = room("room-2", &[&f1, &f2], &log).await;
    wait_rooms(&[&f1, &f2], 2).await;
    (f1, f2, log, [r1, r2])
}

async fn wait_rooms(frontends: &[&Node], n: usize) {
    for f in frontends {
        assert!(
            f.rpc.backends().wait_for("room", n, WAIT).await,
            "{n} rooms did not link to {}",
            f.sessions.frontend_id()
        );
    }
}

/// Logs `uid` in through `f` and asks which room node serves it; the
/// client stays open.
async fn login_where(f: &Node, uid: &str) -> (session_proxy_client::PomeloClient, String) {
    let c = client(f.gateway.local_addr(), Transport::Tcp).await;
    let login = c
        .request("connector.entry.login", &json!({ "uid": uid }))
        .await
        .expect("login answered");
    assert_eq!(login["code"], 200, "{login}");
    let node = where_is(&c).await;
    (c, node)
}

async fn where_is(c: &session_proxy_client::PomeloClient) -> String {
    let answer = c
        .request("room.h.where", &json!({}))
        .await
        .expect("where answered");
    answer["node"]
        .as_str()
        .unwrap_or_else(|| panic!("no node in {answer}"))
        .to_string()
}

fn adopted(log: &Log) -> Vec<(String, String, String)> {
    log.lock()
        .expect("log")
        .iter()
        .filter(|e| e.1 == "adopt")
        .map(|(node, _, uid, from)| (node.clone(), uid.clone(), from.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_player_reconnecting_elsewhere_stays_on_their_room_and_a_new_room_takes_nobody() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let (f1, f2, log, _rooms) = two_rooms(&redis).await;

    let uids: Vec<String> = (0..24).map(|i| format!("player-{i}")).collect();
    let mut placed = HashMap::new();
    for uid in &uids {
        let (c, node) = login_where(&f1, uid).await;
        placed.insert(uid.clone(), node);
        c.close();
    }
    assert!(
        placed.values().any(|n| n == "room-2") && placed.values().any(|n| n == "room-1"),
        "the players spread over both rooms: {placed:?}"
    );

    let _r3 = room("room-3", &[&f1, &f2], &log).await;
    wait_rooms(&[&f1, &f2], 3).await;
    // By hash alone, some players would now move to room-3.
    let three = ["room-1", "room-2", "room-3"];
    let would_move = uids
        .iter()
        .filter(|u| pick_by_key(u.as_bytes(), &three) == Some(2))
        .count();
    assert!(
        would_move > 0,
        "no player would move: the test proves nothing"
    );

    for uid in &uids {
        let (c, node) = login_where(&f2, uid).await;
        assert_eq!(
            &node, &placed[uid],
            "{uid} reconnected through the other frontend"
        );
        // A remote call by the player's uid goes to the same node.
        let whoami: String = f2
            .rpc
            .backends()
            .remote(
                "room.roomRemote.whoami",
                Target::Uid(uid.clone()),
                None,
                &(),
                WAIT,
            )
            .await
            .expect("whoami answered");
        assert_eq!(&whoami, &placed[uid], "{uid} by remote");
        c.close();
    }
    assert_eq!(adopted(&log), vec![], "nobody moved");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_rooms_players_move_and_their_new_room_is_told_first() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let (f1, f2, log, [_r1, r2]) = two_rooms(&redis).await;

    let mut players = Vec::new();
    for i in 0..16 {
        let uid = format!("player-{i}");
        let (c, node) = login_where(&f1, &uid).await;
        players.push((uid, c, node));
    }
    let on_two: Vec<&String> = players
        .iter()
        .filter(|p| p.2 == "room-2")
        .map(|p| &p.0)
        .collect();
    assert!(!on_two.is_empty(), "nobody on room-2");

    assert!(r2.shutdown(Duration::from_secs(2)).await, "room-2 drained");
    wait_rooms(&[&f1, &f2], 1).await;
    for (uid, c, before) in &players {
        let now = where_is(c).await;
        assert_eq!(now, "room-1", "{uid} was on {before}");
    }
    let mut told = adopted(&log);
    told.sort();
    let mut expected: Vec<(String, String, String)> = on_two
        .iter()
        .map(|u| ("room-1".to_string(), u.to_string(), "room-2".to_string()))
        .collect();
    expected.sort();
    assert_eq!(told, expected, "exactly the moved players were adopted");
    // Each was adopted before its request reached the new room.
    let entries = log.lock().expect("log").clone();
    for uid in &on_two {
        let adopt = entries
            .iter()
            .position(|e| e.1 == "adopt" && &&e.2 == uid)
            .expect("adopted");
        let served = entries
            .iter()
            .rposition(|e| e.0 == "room-1" && e.1 == "where" && &&e.2 == uid)
            .expect("served");
        assert!(adopt < served, "{uid} was served before its room was told");
    }

    // The other frontend reads the moved binding: no second move.
    for (uid, _, _) in players.iter().take(6) {
        let (c, node) = login_where(&f2, uid).await;
        assert_eq!(node, "room-1", "{uid} through the other frontend");
        c.close();
    }
    assert_eq!(adopted(&log).len(), on_two.len(), "no player moved twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_room_keeps_its_players_for_a_while_then_they_move() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let mut options = StickyOptions::default();
    options.move_after = Duration::from_secs(2);
    let deadline = Duration::from_millis(400);
    let (f1, _f2) = frontends_with(&redis, options, deadline).await;
    let log = Log::default();
    let _r1 = room("room-1", &[&f1], &log).await;
    let r2 = room("room-2", &[&f1], &log).await;
    wait_rooms(&[&f1], 2).await;
    let mut on_two = None;
    for i in 0..16 {
        let uid = format!("player-{i}");
        let (c, node) = login_where(&f1, &uid).await;
        if node == "room-2" {
            on_two = Some((uid, c));
            break;
        }
    }
    let (uid, c) = on_two.expect("a player on room-2");

    // Its link breaks (no drain): the player's requests wait for it, and
    // fail past their deadline rather than land where its state is not.
    r2.close();
    common::eventually(WAIT, "room-2's link is gone", || async {
        match f1.rpc.backends().count("room") {
            1 => Ok(()),
            n => Err(format!("{n} rooms")),
        }
    })
    .await;
    let answer = c
        .request("room.h.where", &json!({}))
        .await
        .expect("answered");
    assert_ne!(answer["code"], 200, "{answer}");
    assert!(
        answer["msg"].as_str().unwrap_or_default().contains("away"),
        "{answer}"
    );
    assert_eq!(adopted(&log), vec![], "nobody moved yet");

    // Away for longer than move_after: the binding moves, with an adopt.
    let node = common::eventually(Duration::from_secs(10), "the player moves", || async {
        let answer = c
            .request("room.h.where", &json!({}))
            .await
            .map_err(|e| e.to_string())?;
        answer["node"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| answer.to_string())
    })
    .await;
    assert_eq!(node, "room-1");
    assert_eq!(
        adopted(&log),
        vec![("room-1".to_string(), uid.clone(), "room-2".to_string())]
    );
}
