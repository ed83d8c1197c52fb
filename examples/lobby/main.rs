//! A small game on session-proxy, as a studio would write it: its own
//! binary, built on the library's command line. Three server types:
//!
//! - `connector` (frontends): players log in (`connector.entryHandler.login
//!   {uid}`); when a player's session ends for good, the room hears it.
//! - `lobby` (backends): `lobby.lobbyHandler.enter` gives a player coins.
//! - `room` (backends): `room.roomHandler.join`, `score {score}` (written
//!   to the player's session), `whoami`, `members` (who is in the room and
//!   how often each was told to leave), `say {text}` (to everyone in the
//!   room, a channel), and `room.roomRemote.leave` for the connectors.
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
use session_proxy::cli::App;
use session_proxy::frontend::Gateway;
use session_proxy::protocol::sync::LockUnpoisoned as _;
use session_proxy::{BackendSession, ChannelService, HandlerError, Handlers};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a connector waits for the room to take a player's leave.
const LEAVE_DEADLINE: Duration = Duration::from_secs(2);

fn main() -> std::process::ExitCode {
    App::new()
        .gateway("connector", connector)
        .backend("lobby", |_service| lobby())
        .backend("room", |service| room(ChannelService::new(service.clone())))
        .main()
}

fn fail(err: impl std::fmt::Display) -> HandlerError {
    HandlerError::new(err.to_string())
}

/// The connector's own route and its leave hook.
fn connector(gateway: &mut Gateway) {
    gateway.handlers().add(
        "connector.entryHandler.login",
        |ctx, body: Value| async move {
            let uid = body["uid"].as_str().unwrap_or_default().to_string();
            ctx.sessions.bind(ctx.sid, &uid).map_err(fail)?;
            Ok(json!({ "code": 200 }))
        },
    );
    gateway.on_close(|ctx| async move {
        if ctx.session.uid.is_none() {
            return;
        }
        let body = bytes::Bytes::from_static(b"{}");
        let left = ctx
            .backends
            .forward("room.roomRemote.leave", ctx.session, body, LEAVE_DEADLINE)
            .await;
        if let Err(err) = left {
            tracing::warn!(cause = %session_proxy::protocol::chain(&err), "the room did not hear that a player left");
        }
    });
}

fn lobby() -> Handlers {
    let mut handlers = Handlers::new();
    handlers.add(
        "lobby.lobbyHandler.enter",
        |mut s: BackendSession, _: Value| async move {
            s.set("coins", &100u32)?;
            s.push("coins").await?;
            Ok(json!({ "code": 200, "coins": 100 }))
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

fn room(channel: ChannelService) -> Handlers {
    let roster = Arc::new(Mutex::new(Roster::default()));
    let mut handlers = Handlers::new();
    let (joined, room) = (roster.clone(), channel.clone());
    handlers.add(
        "room.roomHandler.join",
        move |s: BackendSession, _: Value| {
            let (roster, room) = (joined.clone(), room.clone());
            async move {
                let uid = uid_of(&s)?;
                room.add("room", &uid, s.frontend_id());
                let mut r = roster.lock_unpoisoned();
                r.members.insert(uid);
                Ok(json!({ "code": 200, "members": r.members.len() }))
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
    let (left, room) = (roster.clone(), channel);
    handlers.add(
        "room.roomRemote.leave",
        move |s: BackendSession, _: Value| {
            let (roster, room) = (left.clone(), room.clone());
            async move {
                let uid = uid_of(&s)?;
                room.leave("room", &uid);
                let mut r = roster.lock_unpoisoned();
                r.members.remove(&uid);
                *r.leaves.entry(uid).or_default() += 1;
                Ok(json!({}))
            }
        },
    );
    handlers
}
