//! A small game (examples/lobby: a connector, a lobby and a room server)
//! run as processes of its own binary, through the library's command line
//! with a Redis registry: SIGTERM one frontend under load, with and without
//! the Redis store; SIGSTOP a frontend while its players resume on the
//! other, then SIGCONT it. Also: the shipped binary serves no game code
//! unless asked for the bench app by name.

use crate::common;
use common::token_of;

use common::nodes::{free_port, signal, spawn_binary};
use serde_json::{json, Value};
use session_proxy_client::{PomeloClient, PomeloEvent, PomeloOptions};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::process::Child;
use tokio::sync::watch;

const WAIT: Duration = Duration::from_secs(10);
const PLAYERS: usize = 16;
/// Score writes each player makes.
const ROUNDS: u64 = 40;
/// The frontends' drain limit, seconds.
const DRAIN_SECS: u64 = 8;

/// Starts one node of the game; returns it once it serves.
async fn node(args: &[String]) -> Child {
    let id = args[args.iter().position(|a| a == "--id").expect("an id") + 1].clone();
    let (child, _) = spawn_binary(
        env!("CARGO_BIN_EXE_lobby-game"),
        args,
        &[],
        &format!("ready {id}"),
    )
    .await;
    child
}

/// The `run` flags every node of the game takes.
fn run_args(role: &str, server_type: &str, id: &str, registry: &str) -> Vec<String> {
    let flags = [
        "run",
        "--role",
        role,
        "--type",
        server_type,
        "--id",
        id,
        "--registry",
        registry,
        "--lease-secs",
        "3",
    ];
    flags.map(String::from).to_vec()
}

/// `run` flags of a frontend; returns them with its client address.
fn frontend(id: &str, registry: &str, store: Option<&str>) -> (Vec<String>, SocketAddr) {
    let client: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let mut args = run_args("frontend", "connector", id, registry);
    args.extend(["--rpc-addr".into(), format!("127.0.0.1:{}", free_port())]);
    args.extend(["--client-addr".into(), client.to_string()]);
    args.extend(["--drain-secs".into(), DRAIN_SECS.to_string()]);
    if let Some(url) = store {
        args.extend(["--redis".into(), url.to_string()]);
    }
    (args, client)
}

fn backend(id: &str, server_type: &str, registry: &str) -> Vec<String> {
    run_args("backend", server_type, id, registry)
}

async fn ok(client: &PomeloClient, route: &str, body: Value) -> anyhow::Result<Value> {
    let answer = client.request(route, &body).await?;
    anyhow::ensure!(
        answer.get("code").is_none_or(|c| c == 200),
        "{route}: {answer}"
    );
    Ok(answer)
}

/// A player logged in as `uid`, in the lobby and the room, once both
/// backend types serve the frontend (they find it through the registry).
async fn player(addr: SocketAddr, uid: &str) -> PomeloClient {
    common::eventually(WAIT, &format!("{uid} gets in"), || async {
        let client = PomeloClient::connect(addr).await.expect("connect");
        let entered = async {
            ok(
                &client,
                "connector.entryHandler.login",
                json!({ "uid": uid }),
            )
            .await?;
            ok(&client, "lobby.lobbyHandler.enter", json!({})).await?;
            ok(&client, "room.roomHandler.join", json!({})).await
        };
        entered
            .await
            .map(|_| client)
            .map_err(|err| format!("{err:#}"))
    })
    .await
}

async fn resume(addr: SocketAddr, token: &str) -> PomeloClient {
    let mut options = PomeloOptions::default();
    options.user = json!({ "resumeToken": token });
    PomeloClient::connect_with(addr, options)
        .await
        .expect("reconnect")
}

/// What one player saw.
struct Played {
    client: PomeloClient,
    acked: u64,
    resumed: bool,
    unanswered: usize,
}

/// Writes scores 1..=ROUNDS one after the other. When its frontend kicks
/// it with "reconnect", it comes back on `other` with its token and sends
/// again the write that was not answered. A request that fails without
/// that kick is unanswered.
async fn play(
    mut client: PomeloClient,
    other: SocketAddr,
    progress: watch::Sender<usize>,
) -> Played {
    let (mut acked, mut resumed, mut unanswered) = (0, false, 0);
    let mut n = 1;
    while n <= ROUNDS {
        match client
            .request("room.roomHandler.score", &json!({ "score": n }))
            .await
        {
            Ok(answer) if answer["code"] == 200 => {
                acked = n;
                n += 1;
                progress.send_modify(|n| *n += 1);
            }
            Ok(answer) => panic!("score {n}: {answer}"),
            Err(_) => {
                let kicked = client.next_event(WAIT).await;
                if kicked
                    != Some(PomeloEvent::Kick {
                        reason: "reconnect".into(),
                    })
                    || resumed
                {
                    unanswered += 1;
                    break;
                }
                let token = token_of(&client);
                client = resume(other, &token).await;
                resumed = client.handshake()["user"]["resumed"] == true;
                if !resumed {
                    // No store: a fresh session, not logged in.
                    break;
                }
            }
        }
    }
    Played {
        client,
        acked,
        resumed,
        unanswered,
    }
}

/// The game's processes, stopped by PID on drop.
struct Game {
    a: Child,
    _b: Child,
    _backends: Vec<Child>,
    a_addr: SocketAddr,
    b_addr: SocketAddr,
}

async fn start_game(redis: &common::redis::RedisServer, with_store: bool) -> Game {
    let url = redis.url();
    let store = with_store.then_some(url.as_str());
    let (a_args, a_addr) = frontend("connector-a", &url, store);
    let (b_args, b_addr) = frontend("connector-b", &url, store);
    let a = node(&a_args).await;
    let b = node(&b_args).await;
    let backends = vec![
        node(&backend("lobby-1", "lobby", &url)).await,
        node(&backend("room-1", "room", &url)).await,
    ];
    Game {
        a,
        _b: b,
        _backends: backends,
        a_addr,
        b_addr,
    }
}

/// SIGTERM to frontend a once the players are busy; returns a's exit once
/// it drained, and the players' runs.
async fn drain_a_under_load(game: &mut Game, players: Vec<PomeloClient>) -> Vec<Played> {
    // Every acknowledged write counts here; the SIGTERM waits for the
    // count, not for a time.
    let (progress, mut acked) = watch::channel(0usize);
    let runs: Vec<_> = players
        .into_iter()
        .map(|c| tokio::spawn(play(c, game.b_addr, progress.clone())))
        .collect();
    tokio::time::timeout(WAIT, acked.wait_for(|n| *n >= PLAYERS * 5))
        .await
        .expect("the players got going")
        .expect("the players run");
    signal(game.a.id().expect("a pid"), "TERM");
    let status = tokio::time::timeout(Duration::from_secs(DRAIN_SECS + 2), game.a.wait())
        .await
        .expect("a exits within its drain limit")
        .expect("wait");
    assert!(status.success(), "a drained and exited 0: {status:?}");
    let mut played = Vec::new();
    for run in runs {
        played.push(run.await.expect("a player's run"));
    }
    played
}

/// The room as its server sees it, asked through `client`.
async fn room(client: &PomeloClient) -> Value {
    client
        .request("room.roomHandler.members", &json!({}))
        .await
        .expect("members")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_of_a_frontend_under_load_moves_every_player_and_loses_nothing() {
    let Some(redis) = common::redis::RedisServer::start() else {
        return;
    };
    let mut game = start_game(&redis, true).await;
    let mut players = Vec::new();
    for i in 0..PLAYERS {
        players.push(player(game.a_addr, &format!("p{i}")).await);
    }
    let played = drain_a_under_load(&mut game, players).await;
    for (i, p) in played.iter().enumerate() {
        assert_eq!(p.unanswered, 0, "p{i}: every request was answered");
        assert!(p.resumed, "p{i} resumed on b");
        assert_eq!(p.acked, ROUNDS, "p{i} finished its writes");
        // Nothing acknowledged was lost, and the lobby's write came along.
        let me = p
            .client
            .request("room.roomHandler.whoami", &json!({}))
            .await
            .expect("whoami");
        assert_eq!(
            me,
            json!({ "uid": format!("p{i}"), "score": ROUNDS, "coins": 100 })
        );
    }
    // No close hook ran for a player who moved: nobody left the room.
    let seen = room(&played[0].client).await;
    assert_eq!(seen["count"], PLAYERS, "{seen}");
    assert_eq!(seen["leaves"], json!({}), "{seen}");
    let said = played[0]
        .client
        .request("room.roomHandler.say", &json!({ "text": "still here" }))
        .await
        .expect("say");
    assert_eq!(
        said["missed"],
        json!([]),
        "the room's channel followed them: {said}"
    );
    drop(game);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_store_a_drained_frontends_players_leave_their_room_once() {
    let Some(redis) = common::redis::RedisServer::start() else {
        return;
    };
    let mut game = start_game(&redis, false).await;
    let observer = player(game.b_addr, "observer").await;
    let mut players = Vec::new();
    for i in 0..PLAYERS {
        players.push(player(game.a_addr, &format!("p{i}")).await);
    }
    assert_eq!(room(&observer).await["count"], PLAYERS + 1);
    let played = drain_a_under_load(&mut game, players).await;
    for (i, p) in played.iter().enumerate() {
        assert_eq!(p.unanswered, 0, "p{i}: every request was answered");
        assert!(!p.resumed, "no store: p{i} starts afresh on b");
        assert_eq!(
            p.client.handshake()["user"]["resumeRefused"],
            "the session is gone"
        );
    }
    // Each drained player's close hook ran once: the room keeps no ghost.
    let seen = room(&observer).await;
    assert_eq!(seen["members"], json!(["observer"]), "{seen}");
    let leaves = seen["leaves"].as_object().expect("leaves").clone();
    assert_eq!(leaves.len(), PLAYERS, "{seen}");
    assert!(leaves.values().all(|n| n == 1), "{seen}");
    drop(game);
}

#[tokio::test]
async fn the_shipped_binary_serves_the_bench_app_only_when_asked_by_name() {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_session-proxy"))
        .args([
            "run", "--role", "backend", "--id", "chat-1", "--type", "chat",
        ])
        .args(["--registry", "redis://127.0.0.1:1/0"])
        .env_remove("SESSION_PROXY_APP")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(WAIT, out)
        .await
        .expect("it exits")
        .expect("it runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Refused before it dials anything: no handlers for "chat".
    assert!(stderr.contains("--app bench"), "{stderr}");
}

/// The `session_proxy_sessions{state="open"}` gauge of a node's `/metrics`.
async fn open_sessions(admin: SocketAddr) -> Option<f64> {
    let (status, body) = common::http::get(admin, "/metrics").await.ok()?;
    if status != 200 {
        return None;
    }
    body.lines()
        .find(|l| l.starts_with("session_proxy_sessions{state=\"open\"}"))?
        .rsplit(' ')
        .next()?
        .parse()
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_owner_reports_its_players_moved_and_fires_no_close_hook() {
    let Some(redis) = common::redis::RedisServer::start() else {
        return;
    };
    let url = redis.url();
    let (mut a_args, a_addr) = frontend("connector-a", &url, Some(&url));
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    a_args.extend(["--admin-addr".into(), admin.to_string()]);
    // Its parked copies expire a second after it comes back.
    a_args.extend(["--resume-grace-secs".into(), "1".into()]);
    let (b_args, b_addr) = frontend("connector-b", &url, Some(&url));
    let a = node(&a_args).await;
    let _b = node(&b_args).await;
    let _backends = [
        node(&backend("lobby-1", "lobby", &url)).await,
        node(&backend("room-1", "room", &url)).await,
    ];
    // A player who stays on a, to tell when a's older ends have settled.
    let sentinel = player(a_addr, "s0").await;
    let mut tokens = Vec::new();
    for i in 0..PLAYERS {
        let client = player(a_addr, &format!("p{i}")).await;
        tokens.push(token_of(&client));
        client.close();
    }
    // The players dropped; a parks their sessions. Then a stops dead.
    let pid = a.id().expect("a pid");
    signal(pid, "STOP");
    let mut moved = Vec::new();
    for (i, token) in tokens.iter().enumerate() {
        let back = resume(b_addr, token).await;
        assert_eq!(back.handshake()["user"]["resumed"], true, "p{i}");
        moved.push(back);
    }
    // a comes back; its parked copies expire, and the store refuses to
    // delete them (b holds them now): they moved, no close hook runs.
    signal(pid, "CONT");
    common::eventually(WAIT, "a lets its stale copies go", || async {
        match open_sessions(admin).await {
            Some(1.0) => Ok(()),
            other => Err(format!("open sessions on a: {other:?}")),
        }
    })
    .await;
    // The sentinel leaves for good after them: once the room hears that,
    // a has settled every end before it.
    sentinel.close();
    let seen = common::eventually(WAIT, "the sentinel leaves the room", || async {
        let seen = room(&moved[0]).await;
        match seen["leaves"]["s0"] == 1 {
            true => Ok(seen),
            false => Err(seen.to_string()),
        }
    })
    .await;
    assert_eq!(seen["count"], PLAYERS, "{seen}");
    assert_eq!(
        seen["leaves"],
        json!({ "s0": 1 }),
        "no close hook ran on a for the players who moved: {seen}"
    );
    for (i, client) in moved.iter().enumerate() {
        let me = client
            .request("room.roomHandler.whoami", &json!({}))
            .await
            .expect("whoami");
        assert_eq!(me["uid"], format!("p{i}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn players_reach_neither_the_remotes_nor_the_rooms_before_logging_in() {
    let Some(redis) = common::redis::RedisServer::start() else {
        return;
    };
    let game = start_game(&redis, false).await;
    // The lobby's enter asks the room server to let the player in (a
    // remote call): the room counts the player once.
    let ann = player(game.a_addr, "ann").await;
    assert_eq!(room(&ann).await["members"], json!(["ann"]));
    // A logged-in player cannot fake a leave through the room's remote.
    let answer = ann
        .request("room.roomRemote.leave", &json!({}))
        .await
        .expect("answered");
    assert_eq!(answer["code"], 403, "{answer}");
    let roster = room(&ann).await;
    assert_eq!(roster["members"], json!(["ann"]), "{roster}");
    assert_eq!(roster["leaves"], json!({}), "{roster}");
    // Before logging in, neither the lobby nor a room takes a request.
    let stranger = PomeloClient::connect(game.b_addr).await.expect("connect");
    for route in ["lobby.lobbyHandler.enter", "room.roomHandler.members"] {
        let answer = stranger.request(route, &json!({})).await.expect("answered");
        assert_eq!(
            answer,
            json!({ "code": 401, "msg": "log in first" }),
            "{route}"
        );
    }
}
