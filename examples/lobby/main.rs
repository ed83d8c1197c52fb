//! A small game on session-proxy, as a studio would write it: its own
//! binary, built on the library's command line. Three server types:
//!
//! - `connector` (frontends): players log in (`connector.entryHandler.login
//!   {uid}`); when a player's session ends for good, the room hears it.
//! - `lobby` (backends): `lobby.lobbyHandler.enter` gives a player coins
//!   and asks the player's room server to let them in (a remote call).
//! - `room` (backends): `room.roomHandler.join`, `score {score}` (written
//!   to the player's session), `whoami`, `members` (who is in the room and
//!   how often each was told to leave), `say {text}` (to everyone in the
//!   room, a channel, at most 2 a second); remotes `room.roomRemote.join`
//!   for the lobby and `room.roomRemote.leave` for the connectors, which no
//!   client can call.
//!
//! The connector lets only logged-in players reach the lobby and the rooms,
//! and limits every player to the public defaults (`RateLimit::public`).
//!
//! Every process runs the same binary with the same flags as
//! `session-proxy run`:
//!
//! ```sh
//! lobby-game run --role frontend --id connector-1 --type connector \
//!   --rpc-addr 127.0.0.1:4011 --client-addr 127.0.0.1:3011 \
//!   --registry redis://127.0.0.1/0 --redis redis://127.0.0.1/0
//! lobby-game run --role backend --id room-1 --type room --registry redis://127.0.0.1/0
//! lobby-game run --role backend --id lobby-1 --type lobby --registry redis://127.0.0.1/0
//! ```

use serde_json::{json, Value};
use session_proxy::backend::{RemoteCx, Remotes};
use session_proxy::cli::App;
use session_proxy::filters::{check, Bucket, RateLimit};
use session_proxy::frontend::Gateway;
use session_proxy::protocol::sync::LockUnpoisoned as _;
use session_proxy::protocol::Target;
use session_proxy::{
    BackendSession, BackendSessionService, ChannelService, HandlerError, Handlers,
};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a connector waits for the room to take a player's leave.
const LEAVE_DEADLINE: Duration = Duration::from_secs(2);

fn main() -> std::process::ExitCode {
    App::new()
        .gateway("connector", connector)
        .backend("lobby", |service| lobby(service.clone()))
        .backend("room", |service| {
            room(service, ChannelService::new(service.clone()))
        })
        .main()
}

fn fail(err: impl std::fmt::Display) -> HandlerError {
    HandlerError::new(err.to_string())
}

/// The connector's own route, its filters and its leave hook.
fn connector(gateway: &mut Gateway) {
    gateway.filter("", RateLimit::public()).filter(
        "room.roomHandler.say",
        RateLimit::new().per_session(Bucket::new(2.0, 4.0)),
    );
    for server in ["lobby.", "room."] {
        gateway.filter(
            server,
            check("logged_in", |call| match call.uid {
                Some(_) => Ok(()),
                None => Err(HandlerError::with_code(401, "log in first")),
            }),
        );
    }
    gateway.handlers().add(
        "connector.entryHandler.login",
        |ctx, body: Value| async move {
            let uid = body["uid"].as_str().unwrap_or_default().to_string();
            ctx.sessions.bind(ctx.sid, &uid).map_err(fail)?;
            Ok(json!({ "code": 200 }))
        },
    );
    gateway.on_close(|ctx| async move {
        let Some(uid) = ctx.session.uid.clone() else {
            return;
        };
        // The player's room server: the one its requests go to (by uid).
        let left: Result<(), _> = ctx
            .backends
            .remote(
                "room.roomRemote.leave",
                Target::Uid(uid),
                Some(ctx.session),
                &(),
                LEAVE_DEADLINE,
            )
            .await;
        if let Err(err) = left {
            tracing::warn!(code = err.code, cause = %err.message, "the room did not hear that a player left");
        }
    });
}

fn lobby(service: BackendSessionService) -> Handlers {
    let mut handlers = Handlers::new();
    handlers.add(
        "lobby.lobbyHandler.enter",
        move |mut s: BackendSession, _: Value| {
            let lobby = service.clone();
            async move {
                s.set("coins", &100u32)?;
                s.push("coins").await?;
                // The player's room server lets them in (by uid, as their
                // requests are routed).
                let members: usize = lobby
                    .remote("room.roomRemote.join")
                    .with_session(&s)
                    .call(&())
                    .await?;
                Ok(json!({ "code": 200, "coins": 100, "members": members }))
            }
        },
    );
    handlers
}

/// Who is in the room, and how often each player was told to leave.
#[derive(Default)]
struct Roster {
    members: BTreeSet<String>,
    leaves: BTreeMap<String, u32>,
}

fn uid_of(s: &BackendSession) -> Result<String, HandlerError> {
    s.uid()
        .map(str::to_string)
        .ok_or_else(|| HandlerError::new("log in first"))
}

/// Puts the player of `s` in the room; how many are in it now.
fn enter(
    s: &BackendSession,
    roster: &Mutex<Roster>,
    room: &ChannelService,
) -> Result<usize, HandlerError> {
    let uid = uid_of(s)?;
    room.add("room", &uid, s.frontend_id());
    let mut r = roster.lock_unpoisoned();
    r.members.insert(uid);
    Ok(r.members.len())
}

fn room(service: &BackendSessionService, channel: ChannelService) -> Handlers {
    let roster = Arc::new(Mutex::new(Roster::default()));
    let mut handlers = Handlers::new();
    let (joined, room) = (roster.clone(), channel.clone());
    handlers.add(
        "room.roomHandler.join",
        move |s: BackendSession, _: Value| {
            let (roster, room) = (joined.clone(), room.clone());
            async move {
                let members = enter(&s, &roster, &room)?;
                Ok(json!({ "code": 200, "members": members }))
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
            let (score, coins) = (s.get::<u64>("score")?, s.get::<u32>("coins")?);
            Ok(json!({ "uid": s.uid(), "score": score, "coins": coins }))
        },
    );
    let listed = roster.clone();
    handlers.add(
        "room.roomHandler.members",
        move |_s: BackendSession, _: Value| {
            let roster = listed.clone();
            async move {
                let r = roster.lock_unpoisoned();
                Ok(json!({ "members": r.members, "leaves": r.leaves, "count": r.members.len() }))
            }
        },
    );
    let said = channel.clone();
    handlers.add(
        "room.roomHandler.say",
        move |s: BackendSession, body: Value| {
            let room = said.clone();
            async move {
                let from = uid_of(&s)?;
                let missed = room
                    .push(
                        "room",
                        "onSay",
                        &json!({ "from": from, "text": body["text"] }),
                    )
                    .await?;
                Ok(json!({ "code": 200, "missed": missed }))
            }
        },
    );
    let mut remotes = Remotes::new();
    let (joined, room) = (roster.clone(), channel.clone());
    remotes.add("room.roomRemote.join", move |cx: RemoteCx, _: ()| {
        let (roster, room) = (joined.clone(), room.clone());
        async move {
            let s = cx.session.ok_or_else(|| HandlerError::new("no player"))?;
            enter(&s, &roster, &room)
        }
    });
    let (left, room) = (roster, channel);
    remotes.add("room.roomRemote.leave", move |cx: RemoteCx, _: ()| {
        let (roster, room) = (left.clone(), room.clone());
        async move {
            let s = cx.session.ok_or_else(|| HandlerError::new("no player"))?;
            let uid = uid_of(&s)?;
            room.leave("room", &uid);
            let mut r = roster.lock_unpoisoned();
            r.members.remove(&uid);
            *r.leaves.entry(uid).or_default() += 1;
            Ok(())
        }
    });
    service.serve_remotes(remotes);
    handlers
}
