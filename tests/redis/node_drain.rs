//! The node's drain, with and without a store: players resumed elsewhere
//! with every acknowledged write and no close hook for a moved player; no
//! ghost (a close hook once per player) without a store; a parked session
//! that expires; no task of the node left running after its drain; and
//! channels whose members follow their sessions.

use crate::common;
use common::token_of;

use serde_json::{json, Value};
use session_proxy::frontend::{EndReason, RedisStore, RedisStoreConfig, StoreOptions};
use session_proxy::node::{BackendRole, FrontendRole, Node};
use session_proxy::registry::{RedisMembership, RedisMembershipConfig};
use session_proxy::{BackendSession, ChannelService, HandlerError, Handlers, SessionEvent};
use session_proxy_client::{PomeloClient, PomeloEvent, PomeloOptions};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(5);
const PLAYERS: usize = 12;

/// What the room server knows: who is in the room, how often each player
/// was told to leave, and its channel `lobby`, which every player joins.
#[derive(Clone, Default)]
struct Room {
    members: Arc<Mutex<HashSet<String>>>,
    leaves: Arc<Mutex<HashMap<String, usize>>>,
    channels: Arc<std::sync::OnceLock<ChannelService>>,
}

impl Room {
    fn members(&self) -> usize {
        self.members.lock().expect("room").len()
    }

    fn leaves(&self) -> HashMap<String, usize> {
        self.leaves.lock().expect("room").clone()
    }

    fn lobby(&self) -> &ChannelService {
        self.channels.get().expect("the room server started")
    }
}

/// The close hooks a frontend ran: (uid, reason).
type Closes = Arc<Mutex<Vec<(String, EndReason)>>>;

fn uid_of(session: &BackendSession) -> Result<String, HandlerError> {
    session
        .uid()
        .map(str::to_string)
        .ok_or_else(|| HandlerError::new("log in first"))
}

/// The room server: join, a score written to the player's session, who am
/// I, and the leave notice the connectors send.
fn room_server(id: &str, room: &Room) -> BackendRole {
    let room = room.clone();
    BackendRole::with_service(id, "room", move |service| {
        let _ = room.channels.set(ChannelService::new(service.clone()));
        room_handlers(&room)
    })
}

fn room_handlers(room: &Room) -> Handlers {
    let mut handlers = Handlers::new();
    let joined = room.clone();
    handlers.add(
        "room.roomHandler.join",
        move |s: BackendSession, _: Value| {
            let room = joined.clone();
            async move {
                let uid = uid_of(&s)?;
                room.lobby().add("lobby", &uid, s.frontend_id());
                room.members.lock().expect("room").insert(uid);
                Ok(json!({ "code": 200 }))
            }
        },
    );
    handlers.add(
        "room.roomHandler.score",
        |mut s: BackendSession, body: Value| async move {
            s.set("score", &body["score"].as_u64().unwrap_or_default())?;
            s.push("score").await?;
            Ok(json!({ "code": 200 }))
        },
    );
    handlers.add(
        "room.roomHandler.whoami",
        |s: BackendSession, _: Value| async move {
            Ok(json!({ "uid": s.uid(), "score": s.get::<u64>("score")? }))
        },
    );
    let left = room.clone();
    handlers.add(
        "room.roomRemote.leave",
        move |s: BackendSession, _: Value| {
            let room = left.clone();
            async move {
                let uid = uid_of(&s)?;
                room.members.lock().expect("room").remove(&uid);
                *room.leaves.lock().expect("room").entry(uid).or_default() += 1;
                Ok(json!({}))
            }
        },
    );
    handlers
}

/// A connector: players log in on it, and leave their room when their
/// session ends for good.
fn connector(id: &str, closes: &Closes) -> FrontendRole {
    let closes = closes.clone();
    let mut role = FrontendRole::new(id, "connector").client_addr(loopback());
    role.gateway.shutdown_grace = Duration::from_millis(500);
    role.gateway(move |gateway| {
        gateway.handlers().add(
            "connector.entryHandler.login",
            |ctx, body: Value| async move {
                let uid = body["uid"].as_str().unwrap_or_default().to_string();
                ctx.sessions
                    .bind(ctx.sid, &uid)
                    .map_err(|e| HandlerError::new(e.to_string()))?;
                Ok(json!({ "code": 200 }))
            },
        );
        gateway.on_close(move |ctx| {
            let closes = closes.clone();
            async move {
                let uid = ctx.session.uid.clone().unwrap_or_default();
                closes
                    .lock()
                    .expect("closes")
                    .push((uid, ctx.reason.clone()));
                let body = bytes::Bytes::from_static(b"{}");
                let left = ctx
                    .backends
                    .forward("room.roomRemote.leave", ctx.session, body, WAIT);
                if let Err(err) = left.await {
                    panic!("the leave notice did not reach the room: {err}");
                }
            }
        });
    })
}

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().expect("addr")
}

/// A player: connects (resuming with `token` if given), logs in as `uid`
/// unless resumed, and joins the room.
async fn player(addr: SocketAddr, uid: &str, token: Option<&str>) -> PomeloClient {
    let mut options = PomeloOptions::default();
    if let Some(token) = token {
        options.user = json!({ "resumeToken": token });
    }
    let client = PomeloClient::connect_with(addr, options)
        .await
        .expect("connect");
    if token.is_none() {
        let login = client
            .request("connector.entryHandler.login", &json!({ "uid": uid }))
            .await
            .expect("login");
        assert_eq!(login["code"], 200, "{login}");
        let joined = client
            .request("room.roomHandler.join", &json!({}))
            .await
            .expect("join");
        assert_eq!(joined["code"], 200, "{joined}");
    }
    client
}

async fn store(url: &str) -> Arc<RedisStore> {
    Arc::new(
        RedisStore::connect(RedisStoreConfig::new(url))
            .await
            .expect("store"),
    )
}

async fn frontend_node(id: &str, closes: &Closes, store: Option<Arc<RedisStore>>) -> Node {
    let mut node = Node::builder().frontend(connector(id, closes));
    if let Some(store) = store {
        node = node.store(store, StoreOptions::default());
    }
    node.start().await.expect("frontend")
}

async fn room_node(room: &Room, frontends: &[&Node]) -> Node {
    let mut role = room_server("room-1", room);
    for f in frontends {
        let (id, addr) = (f.frontend_id().expect("id"), f.rpc_addr().expect("rpc"));
        role = role.frontend(id, addr.to_string());
    }
    let node = Node::builder().backend(role).start().await.expect("room");
    for f in frontends {
        let linked = f.connected_backends().expect("rpc");
        assert!(linked.wait_for("room", 1, WAIT).await, "the room linked");
    }
    node
}

/// Two frontends sharing a Redis store, and a room server linked to both.
struct Stored {
    a: Node,
    b: Node,
    closes_a: Closes,
    closes_b: Closes,
    room: Room,
    room_node: Node,
}

async fn two_stored_frontends(redis: &common::redis::RedisServer) -> Stored {
    let (closes_a, closes_b) = (Closes::default(), Closes::default());
    let a = frontend_node("connector-a", &closes_a, Some(store(&redis.url()).await)).await;
    let b = frontend_node("connector-b", &closes_b, Some(store(&redis.url()).await)).await;
    let room = Room::default();
    let room_node = room_node(&room, &[&a, &b]).await;
    Stored {
        a,
        b,
        closes_a,
        closes_b,
        room,
        room_node,
    }
}

/// A frontend whose dropped players are parked for 300 ms only, and its
/// room server.
async fn short_grace_frontend(closes: &Closes) -> (Node, Room, Node) {
    let mut role = connector("connector-a", closes);
    role.gateway.resume_grace = Duration::from_millis(300);
    let a = Node::builder()
        .frontend(role)
        .start()
        .await
        .expect("frontend");
    let room = Room::default();
    let room_node = room_node(&room, &[&a]).await;
    (a, room, room_node)
}

/// Waits for the event that `uid`'s session ended; returns why.
async fn closed(
    events: &mut tokio::sync::broadcast::Receiver<SessionEvent>,
    uid: &str,
) -> EndReason {
    tokio::time::timeout(WAIT, async {
        loop {
            if let Ok(SessionEvent::Closed {
                uid: Some(u),
                reason,
                ..
            }) = events.recv().await
            {
                if u == uid {
                    return reason;
                }
            }
        }
    })
    .await
    .expect("the session ended")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_with_a_store_moves_every_player_with_their_writes_and_no_close_hook() {
    let Some(redis) = common::redis::RedisServer::start() else {
        return;
    };
    let Stored {
        mut a,
        mut b,
        closes_a,
        closes_b,
        room,
        mut room_node,
    } = two_stored_frontends(&redis).await;

    let mut players = Vec::new();
    for i in 0..PLAYERS {
        let client = player(a.client_addr().expect("clients"), &format!("p{i}"), None).await;
        let scored = client
            .request("room.roomHandler.score", &json!({ "score": i }))
            .await
            .expect("score");
        assert_eq!(scored["code"], 200, "acknowledged");
        players.push(client);
    }
    assert_eq!(room.members(), PLAYERS);

    let report = a.drain(WAIT).await;
    assert!(report.complete(), "{report:?}");
    assert_eq!(report.kicked, PLAYERS, "{report:?}");
    assert_eq!(report.handed_over, PLAYERS, "{report:?}");
    assert_eq!(report.ended, 0, "{report:?}");
    assert!(
        closes_a.lock().expect("closes").is_empty(),
        "no close hook for a moved player"
    );
    assert_eq!(room.members(), PLAYERS, "nobody left the room");

    // Every player comes back on b with its token, as it was.
    for (i, mut client) in players.into_iter().enumerate() {
        assert_eq!(
            client.next_event(WAIT).await,
            Some(PomeloEvent::Kick {
                reason: "reconnect".into()
            })
        );
        let token = token_of(&client);
        drop(client);
        let back = player(b.client_addr().expect("clients"), "", Some(&token)).await;
        assert_eq!(back.handshake()["user"]["resumed"], true);
        let me = back
            .request("room.roomHandler.whoami", &json!({}))
            .await
            .expect("whoami");
        assert_eq!(me, json!({ "uid": format!("p{i}"), "score": i }));
    }
    assert_eq!(room.members(), PLAYERS);
    assert!(room.leaves().is_empty(), "{:?}", room.leaves());
    assert!(closes_b.lock().expect("closes").is_empty());

    let report = b.drain(WAIT).await;
    assert_eq!(report.handed_over, PLAYERS, "{report:?}");
    assert!(room_node.drain(WAIT).await.complete());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_without_a_store_ends_each_player_once_and_leaves_no_ghost() {
    let closes = Closes::default();
    let mut a = frontend_node("connector-a", &closes, None).await;
    let room = Room::default();
    let mut room_node = room_node(&room, &[&a]).await;
    let mut players = Vec::new();
    for i in 0..PLAYERS {
        players.push(player(a.client_addr().expect("clients"), &format!("p{i}"), None).await);
    }
    assert_eq!(room.members(), PLAYERS);

    let report = a.drain(WAIT).await;
    assert!(report.complete(), "{report:?}");
    assert_eq!(report.kicked, PLAYERS, "{report:?}");
    assert_eq!(report.ended, PLAYERS, "{report:?}");
    assert_eq!(report.handed_over, 0, "{report:?}");
    // The leave notices reached the room before the drain returned.
    assert_eq!(room.members(), 0, "no ghost in the room");
    let leaves = room.leaves();
    assert_eq!(leaves.len(), PLAYERS);
    assert!(leaves.values().all(|n| *n == 1), "{leaves:?}");
    let closes = closes.lock().expect("closes").clone();
    assert_eq!(closes.len(), PLAYERS, "one close hook per player");
    assert!(
        closes
            .iter()
            .all(|(_, reason)| *reason == EndReason::Shutdown),
        "{closes:?}"
    );
    drop(players);
    assert!(room_node.drain(WAIT).await.complete());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_session_that_expires_runs_its_close_hook_once() {
    let closes = Closes::default();
    let (mut a, room, mut room_node) = short_grace_frontend(&closes).await;
    let sessions = a.sessions().expect("sessions").clone();
    let mut events = sessions.subscribe();
    let client = player(a.client_addr().expect("clients"), "p0", None).await;
    drop(client);
    // Parked, then expired: the events say when.
    assert_eq!(closed(&mut events, "p0").await, EndReason::Expired);
    assert!(sessions.hooks_done(WAIT).await, "the leave notice went out");
    assert_eq!(room.members(), 0);
    assert_eq!(room.leaves().get("p0"), Some(&1));
    // Nothing is left to end at the drain.
    let report = a.drain(WAIT).await;
    assert_eq!(report.ended, 0, "{report:?}");
    assert_eq!(closes.lock().expect("closes").len(), 1);
    assert!(room_node.drain(WAIT).await.complete());
}

/// Tasks alive on this test's runtime.
fn alive() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_node_leaves_no_task_running() {
    let Some(redis) = common::redis::RedisServer::start() else {
        return;
    };
    let before = alive();
    let mut config = RedisMembershipConfig::new(redis.url());
    config.resync = Duration::from_millis(200);
    let registry = Arc::new(RedisMembership::connect(config).await.expect("registry"));
    let closes = Closes::default();
    let room = Room::default();
    let mut node = Node::builder()
        .frontend(connector("connector-a", &closes))
        .backend(room_server("room-1", &room))
        .store(store(&redis.url()).await, StoreOptions::default())
        .registry(registry, Duration::from_secs(3))
        .admin(loopback(), None)
        .start()
        .await
        .expect("node");
    let linked = node.connected_backends().expect("rpc");
    assert!(
        linked.wait_for("room", 1, WAIT).await,
        "the room followed the registry"
    );
    let client = player(node.client_addr().expect("clients"), "p0", None).await;
    assert!(alive() > before);

    let report = node.drain(WAIT).await;
    assert!(report.complete(), "{report:?}");
    drop(client);
    drop(node);
    // What is left ends as its last handle goes (the redis client's
    // connection drivers among them); nothing keeps running.
    common::eventually(WAIT, "every task of the node ends", || async {
        match alive().checked_sub(before) {
            Some(0) | None => Ok(()),
            Some(left) => Err(format!("{left} tasks still alive")),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_reaches_its_members_on_the_frontend_they_moved_to() {
    let Some(redis) = common::redis::RedisServer::start() else {
        return;
    };
    let Stored {
        mut a,
        mut b,
        closes_a,
        closes_b,
        room,
        mut room_node,
    } = two_stored_frontends(&redis).await;
    let half = PLAYERS / 2;
    let (mut on_a, mut on_b) = (Vec::new(), Vec::new());
    for i in 0..half {
        on_a.push(player(a.client_addr().expect("clients"), &format!("p{i}"), None).await);
        on_b.push(player(b.client_addr().expect("clients"), &format!("q{i}"), None).await);
    }
    assert_eq!(room.lobby().members("lobby").len(), PLAYERS);

    assert!(a.drain(WAIT).await.complete());
    let mut moved = Vec::new();
    for client in on_a {
        let token = token_of(&client);
        drop(client);
        let back = player(b.client_addr().expect("clients"), "", Some(&token)).await;
        assert_eq!(back.handshake()["user"]["resumed"], true);
        moved.push(back);
    }
    // The channel still names connector-a for them; the push finds them.
    assert_eq!(
        room.lobby().frontend_of("lobby", "p0").as_deref(),
        Some("connector-a")
    );
    let missed = room
        .lobby()
        .push("lobby", "onChat", &json!({ "n": 1 }))
        .await
        .expect("push");
    assert!(missed.is_empty(), "{missed:?}");
    for client in moved.iter_mut().chain(on_b.iter_mut()) {
        assert_eq!(
            client.next_push(WAIT).await.expect("the push"),
            ("onChat".into(), json!({ "n": 1 }))
        );
    }
    assert_eq!(
        room.lobby().frontend_of("lobby", "p0").as_deref(),
        Some("connector-b")
    );
    assert_eq!(room.lobby().members("lobby").len(), PLAYERS, "nobody left");
    assert!(closes_a.lock().expect("closes").is_empty());
    assert!(closes_b.lock().expect("closes").is_empty());
    assert!(b.drain(WAIT).await.complete());
    assert!(room_node.drain(WAIT).await.complete());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_whose_session_expired_leaves_the_channel() {
    let closes = Closes::default();
    let (mut a, room, mut room_node) = short_grace_frontend(&closes).await;
    let mut events = a.sessions().expect("sessions").subscribe();
    let gone = player(a.client_addr().expect("clients"), "p0", None).await;
    let mut stays = player(a.client_addr().expect("clients"), "p1", None).await;
    drop(gone);
    assert_eq!(closed(&mut events, "p0").await, EndReason::Expired);
    let missed = room
        .lobby()
        .push("lobby", "onChat", &json!({ "n": 2 }))
        .await
        .expect("push");
    assert_eq!(missed, vec!["p0".to_string()]);
    assert_eq!(
        room.lobby().members("lobby"),
        vec!["p1".to_string()],
        "p0 left"
    );
    assert_eq!(
        stays.next_push(WAIT).await.expect("the push"),
        ("onChat".into(), json!({ "n": 2 }))
    );
    assert!(a.drain(WAIT).await.complete());
    assert!(room_node.drain(WAIT).await.complete());
}
