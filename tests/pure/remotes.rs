//! Calls between servers over real TCP on loopback: a lobby backend calls
//! the room server that owns a room, about a player whose session lives on
//! a frontend; targets by key, by node and all nodes; the typed errors.

use crate::common;
use common::cluster::*;
use serde_json::{json, Value};
use session_proxy::backend::{
    BackendSession, HandlerError, Handlers, RemoteCx, RemoteError, Remotes,
};
use session_proxy::frontend::pick_by_key;
use session_proxy::{BackendConfig, BackendSessionService};
use session_proxy_client::Transport;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Who ran `room.roomRemote.add`, for which room.
type Calls = Arc<Mutex<Vec<(String, String)>>>;

/// A room server: `room.roomRemote.add {room}` records the call, pushes
/// `onJoined` to the player when the call is about one, and answers
/// `"<node>:<room>"`; `room.roomRemote.slow {ms}` sleeps; `room.roomRemote.full`
/// answers an error.
fn room(id: &str, f: &Node, calls: Calls) -> BackendSessionService {
    let mut config = BackendConfig::new(id);
    config.server_type = Some("room".into());
    let service = BackendSessionService::new(config).expect("valid config");
    let mut remotes = Remotes::new();
    let node = id.to_string();
    remotes.add("room.roomRemote.add", move |cx: RemoteCx, room: String| {
        let (node, calls) = (node.clone(), calls.clone());
        async move {
            calls
                .lock()
                .expect("calls")
                .push((node.clone(), room.clone()));
            if let Some(player) = &cx.session {
                player
                    .send("onJoined", &json!({ "room": room, "node": node }))
                    .await
                    .map_err(|e| HandlerError::new(e.to_string()))?;
            }
            Ok(format!("{node}:{room}"))
        }
    });
    remotes.add(
        "room.roomRemote.slow",
        |_cx: RemoteCx, ms: u64| async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(ms)
        },
    );
    remotes.add(
        "room.roomRemote.full",
        |_cx: RemoteCx, _room: String| async move {
            Err::<(), _>(HandlerError::with_code(4001, "the room is full"))
        },
    );
    service.serve_remotes(remotes);
    service.add_frontend_of_type(
        f.sessions.frontend_id(),
        "connector",
        f.rpc.local_addr().to_string(),
    );
    service
}

/// The lobby: `lobby.h.join {room}` asks the room's owner to add the
/// player, and answers what it said.
fn lobby(f: &Node) -> BackendSessionService {
    let mut config = BackendConfig::new("lobby-1");
    config.server_type = Some("lobby".into());
    let service = BackendSessionService::new(config).expect("valid config");
    let mut handlers = Handlers::new();
    let me = service.clone();
    handlers.add(
        "lobby.h.join",
        move |player: BackendSession, body: Value| {
            let me = me.clone();
            async move {
                let room = body["room"].as_str().unwrap_or("").to_string();
                let joined: String = me
                    .remote("room.roomRemote.add")
                    .by_key(room.as_str())
                    .with_session(&player)
                    .call(&room)
                    .await?;
                Ok(json!({ "joined": joined }))
            }
        },
    );
    service.serve(handlers);
    service.add_frontend_of_type(
        f.sessions.frontend_id(),
        "connector",
        f.rpc.local_addr().to_string(),
    );
    service
}

struct Cluster {
    f: Node,
    lobby: BackendSessionService,
    rooms: Vec<BackendSessionService>,
    calls: Calls,
}

async fn cluster() -> Cluster {
    let f = start_frontend("f1", |_| {}).await;
    let calls = Calls::default();
    let rooms = vec![
        room("room-1", &f, calls.clone()),
        room("room-2", &f, calls.clone()),
    ];
    let lobby = lobby(&f);
    assert!(f.rpc.backends().wait_for("room", 2, WAIT).await, "rooms");
    assert!(f.rpc.backends().wait_for("lobby", 1, WAIT).await, "lobby");
    Cluster {
        f,
        lobby,
        rooms,
        calls,
    }
}

fn owner_of(room: &str) -> String {
    let nodes = ["room-1", "room-2"];
    nodes[pick_by_key(room.as_bytes(), &nodes).expect("a node")].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lobby_reaches_the_rooms_owner_which_pushes_to_the_player_through_its_frontend() {
    let c = cluster().await;
    let mut player = client(c.f.gateway.local_addr(), Transport::Tcp).await;
    // Two rooms of each node.
    let mut rooms: Vec<String> = Vec::new();
    for owner in ["room-1", "room-2"] {
        let theirs = (0..100)
            .map(|i| i.to_string())
            .filter(|r| owner_of(r) == owner);
        rooms.extend(theirs.take(2));
    }
    for room in &rooms {
        let room = room.as_str();
        let owner = owner_of(room);
        let answer = player
            .request("lobby.h.join", &json!({ "room": room }))
            .await
            .expect("answered");
        assert_eq!(answer, json!({ "joined": format!("{owner}:{room}") }));
        // The push went out before the lobby's answer.
        assert_eq!(
            player.next_push(WAIT).await.expect("onJoined"),
            ("onJoined".into(), json!({ "room": room, "node": owner }))
        );
    }
    let calls = c.calls.lock().expect("calls").clone();
    assert_eq!(calls.len(), 4);
    assert!(calls.iter().all(|(node, room)| *node == owner_of(room)));
    let owners: std::collections::BTreeSet<_> = calls.iter().map(|(n, _)| n.clone()).collect();
    assert_eq!(owners.len(), 2, "the rooms are spread over both nodes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_node_and_every_node_of_the_type() {
    let c = cluster().await;
    let answer: String = c
        .lobby
        .remote("room.roomRemote.add")
        .to_node("room-2")
        .call(&"x")
        .await
        .expect("called");
    assert_eq!(answer, "room-2:x");
    let mut all: Vec<(String, String)> = c
        .lobby
        .remote("room.roomRemote.add")
        .call_all::<_, String>(&"y")
        .await
        .expect("relayed")
        .into_iter()
        .map(|(node, answer)| (node, answer.expect("answered")))
        .collect();
    all.sort();
    assert_eq!(
        all,
        [
            ("room-1".to_string(), "room-1:y".to_string()),
            ("room-2".to_string(), "room-2:y".to_string())
        ]
    );
    // Notify: no answer waited for; the call still runs.
    c.lobby
        .remote("room.roomRemote.add")
        .to_node("room-1")
        .notify(&"z")
        .await
        .expect("handed over");
    common::eventually(WAIT, "the notify ran", || async {
        let calls = c.calls.lock().expect("calls").clone();
        match calls.contains(&("room-1".into(), "z".into())) {
            true => Ok(()),
            false => Err(format!("{calls:?}")),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_failure_is_a_typed_error() {
    let c = cluster().await;
    let no_type = c
        .lobby
        .remote("shop.shopRemote.buy")
        .call::<_, ()>(&1)
        .await;
    assert!(
        matches!(no_type, Err(RemoteError::NoServer { .. })),
        "{no_type:?}"
    );
    let no_node = c
        .lobby
        .remote("room.roomRemote.add")
        .to_node("room-9")
        .call::<_, String>(&"x")
        .await;
    assert!(
        matches!(no_node, Err(RemoteError::NoServer { .. })),
        "{no_node:?}"
    );
    let no_method = c
        .lobby
        .remote("room.roomRemote.nope")
        .call::<_, ()>(&1)
        .await;
    assert!(
        matches!(no_method, Err(RemoteError::NoServer { .. })),
        "{no_method:?}"
    );
    match c
        .lobby
        .remote("room.roomRemote.full")
        .call::<_, ()>(&"r")
        .await
    {
        Err(RemoteError::Callee { source, .. }) => {
            assert_eq!(
                (source.code, source.message.as_str()),
                (4001, "the room is full")
            )
        }
        other => panic!("{other:?}"),
    }
    let wrong_type = c
        .lobby
        .remote("room.roomRemote.slow")
        .call::<_, ()>(&"ten")
        .await;
    assert!(
        matches!(&wrong_type, Err(RemoteError::Callee { source, .. }) if source.code == 400),
        "{wrong_type:?}"
    );
    let started = Instant::now();
    let late = c
        .lobby
        .remote("room.roomRemote.slow")
        .within(Duration::from_millis(200))
        .call::<_, u64>(&5_000u64)
        .await;
    assert!(
        matches!(late, Err(RemoteError::DeadlineExceeded { .. })),
        "{late:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    common::eventually(WAIT, "the late call is stopped on its node", || async {
        match c.rooms.iter().map(|r| r.requests_running()).sum::<usize>() {
            0 => Ok(()),
            n => Err(format!("{n} running")),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cannot_call_a_remote() {
    let c = cluster().await;
    // The rooms tell the frontend what they serve as remotes when they link.
    let backends = c.f.rpc.backends();
    common::eventually(WAIT, "the frontend knows the rooms' remotes", || async {
        match backends.serves_remote("room.roomRemote.add") {
            true => Ok(()),
            false => Err("not yet".to_string()),
        }
    })
    .await;
    assert!(!backends.serves_remote("lobby.h.join"), "a client route");
    for transport in [Transport::Tcp, Transport::WebSocket] {
        let player = client(c.f.gateway.local_addr(), transport).await;
        let answer = player
            .request("room.roomRemote.add", &json!("7"))
            .await
            .expect("answered");
        // Refused by the frontend itself (a backend's refusal words it
        // otherwise): the request never reached a room.
        let refusal = "room.roomRemote.add is a remote method, not a client route";
        assert_eq!(
            answer,
            json!({ "code": 403, "msg": refusal }),
            "over {transport:?}"
        );
    }
    // Remotes served later are refused too.
    let mut more = Remotes::new();
    more.add("room.roomRemote.late", |_cx: RemoteCx, (): ()| async {
        Ok(())
    });
    c.rooms[0].serve_remotes(more);
    common::eventually(WAIT, "the frontend hears of the new remote", || async {
        match backends.serves_remote("room.roomRemote.late") {
            true => Ok(()),
            false => Err("not yet".to_string()),
        }
    })
    .await;
    assert!(
        c.calls.lock().expect("calls").is_empty(),
        "the remote never ran"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_room_fails_the_call_in_time_and_its_keys_move() {
    let c = cluster().await;
    let owner = owner_of("7");
    let (dying, other) = if owner == "room-1" {
        (&c.rooms[0], &c.rooms[1])
    } else {
        (&c.rooms[1], &c.rooms[0])
    };
    let lobby = c.lobby.clone();
    let call = tokio::spawn(async move {
        let started = Instant::now();
        let result = lobby
            .remote("room.roomRemote.slow")
            .by_key("7")
            .within(Duration::from_secs(3))
            .call::<_, u64>(&10_000u64)
            .await;
        (started.elapsed(), result)
    });
    common::running(dying, 1, "the slow call runs").await;
    dying.close(); // its links drop with the call on them
    let (took, result) = call.await.expect("task");
    assert!(result.is_err(), "{result:?}");
    assert!(
        took < Duration::from_secs(3),
        "failed within its deadline: {took:?}"
    );
    // The owner of room 7 is gone: the key moves to the other node.
    common::eventually(WAIT, "room 7 has a new owner", || async {
        c.lobby
            .remote("room.roomRemote.add")
            .by_key("7")
            .call::<_, String>(&"7")
            .await
            .map_err(|e| e.to_string())
    })
    .await;
    let answer: String = c
        .lobby
        .remote("room.roomRemote.add")
        .by_key("7")
        .call(&"7")
        .await
        .expect("called");
    assert_eq!(answer, format!("{}:7", other.config().node_id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_room_finishes_its_calls_while_new_ones_go_to_the_other() {
    let c = cluster().await;
    let owner = owner_of("7");
    let (draining, other) = if owner == "room-1" {
        (c.rooms[0].clone(), &c.rooms[1])
    } else {
        (c.rooms[1].clone(), &c.rooms[0])
    };
    let lobby = c.lobby.clone();
    let running = tokio::spawn(async move {
        lobby
            .remote("room.roomRemote.slow")
            .by_key("7")
            .call::<_, u64>(&600u64)
            .await
    });
    common::running(&draining, 1, "the slow call runs").await;
    let drain = tokio::spawn({
        let draining = draining.clone();
        async move { draining.shutdown(Duration::from_secs(5)).await }
    });
    common::eventually(WAIT, "room 7's calls go to the other node", || async {
        let answer = c
            .lobby
            .remote("room.roomRemote.add")
            .by_key("7")
            .call::<_, String>(&"7")
            .await
            .map_err(|e| e.to_string())?;
        match answer == format!("{}:7", other.config().node_id) {
            true => Ok(()),
            false => Err(answer),
        }
    })
    .await;
    assert_eq!(running.await.expect("task").expect("finished"), 600);
    assert!(drain.await.expect("task"), "drained with nothing cut short");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_gives_up_stops_the_callee() {
    let c = cluster().await;
    let lobby = c.lobby.clone();
    let call = tokio::spawn(async move {
        lobby
            .remote("room.roomRemote.slow")
            .to_node("room-1")
            .within(Duration::from_secs(30))
            .call::<_, u64>(&30_000u64)
            .await
    });
    common::running(&c.rooms[0], 1, "the slow call runs").await;
    call.abort(); // the caller gives up long before the deadline
    common::running(&c.rooms[0], 0, "the callee stops").await;
}
