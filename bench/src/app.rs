//! The bench app: the routes the benchmarks drive, identical on Pinus
//! (`bench/pinus`) so both sides do the same work per request.
//!
//! Backend routes (server type `chat`, reached through a connector):
//! - `chat.benchHandler.echo`: answers its body.
//! - `chat.benchHandler.sleep {ms}`: answers after `ms` (fault tests).
//! - `chat.benchHandler.sleeping`: answers `{code: 200, sleeping}`, how
//!   many `sleep` requests this backend is in (tests wait for theirs to
//!   arrive before they stop a process).
//! - `chat.benchHandler.get {key}`: answers the session's value of `key`.
//! - `chat.benchHandler.set {key, value}`: sets the key on the session
//!   proxy and pushes it to the frontend, then answers `{code: 200}`.
//! - `chat.benchHandler.login {uid}`: binds the uid, sets two keys, pushes
//!   all, answers `{code: 200}`.
//! - `chat.benchHandler.join {channel}`: joins a channel (after login).
//! - `chat.benchHandler.fanout {channel, msg}`: pushes `onFanout {msg}` to
//!   every member of the channel, answers `{code: 200, missed}`.
//! - `chat.benchHandler.remote`: calls the remote method
//!   `chat.benchRemote.echo` with its body (on the chat node that owns the
//!   session's id, relayed by the session's frontend) and answers what it
//!   answered: the cost of a call between servers.
//!
//! Frontend route: `connector.entryHandler.ping` answers `{code: 200}`
//! without leaving the connector.

use serde_json::{json, Value};
use session_proxy_backend::BackendSessionService;
use session_proxy_backend::{BackendSession, ChannelService, HandlerError, Handlers};
use session_proxy_backend::{RemoteCx, Remotes};
use session_proxy_frontend::LocalHandlers;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

fn fail(e: impl std::fmt::Display) -> HandlerError {
    HandlerError::new(e.to_string())
}

/// One `sleep` request counted from its start until it answers or is
/// cancelled.
struct Asleep(Arc<AtomicUsize>);

impl Asleep {
    fn enter(count: &Arc<AtomicUsize>) -> Asleep {
        count.fetch_add(1, Ordering::SeqCst);
        Asleep(count.clone())
    }
}

impl Drop for Asleep {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The frontend routes of the bench app.
pub fn frontend_handlers(server_type: &str, handlers: &mut LocalHandlers) {
    handlers.add(
        &format!("{server_type}.entryHandler.ping"),
        |_ctx, _b: Value| async { Ok(json!({ "code": 200 })) },
    );
}

/// The backend routes of the bench app.
pub fn backend_handlers(server_type: &str, service: &BackendSessionService) -> Handlers {
    let channels = ChannelService::new(service.clone());
    let mut h = Handlers::new();
    let route = |m: &str| format!("{server_type}.benchHandler.{m}");
    h.add(
        &route("echo"),
        |_s: BackendSession, body: Value| async move { Ok(body) },
    );
    h.add(&route("get"), |s: BackendSession, body: Value| async move {
        let key = body["key"].as_str().unwrap_or("k");
        let value: Option<Value> = s.get(key).map_err(fail)?;
        Ok(json!({ "code": 200, "value": value }))
    });
    let sleeping = Arc::new(AtomicUsize::new(0));
    let count = sleeping.clone();
    h.add(&route("sleep"), move |_s: BackendSession, body: Value| {
        let asleep = Asleep::enter(&count);
        async move {
            let ms = body["ms"].as_u64().unwrap_or(0).min(60_000);
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
            drop(asleep);
            Ok(json!({ "slept": ms }))
        }
    });
    h.add(&route("sleeping"), move |_s: BackendSession, _b: Value| {
        let n = sleeping.load(Ordering::SeqCst);
        async move { Ok(json!({ "code": 200, "sleeping": n })) }
    });
    h.add(
        &route("set"),
        |mut s: BackendSession, body: Value| async move {
            let key = body["key"].as_str().unwrap_or("k").to_string();
            s.set(&key, &body["value"]).map_err(fail)?;
            s.push(&key).await.map_err(fail)?;
            Ok(json!({ "code": 200 }))
        },
    );
    h.add(
        &route("login"),
        |mut s: BackendSession, body: Value| async move {
            let uid = body["uid"]
                .as_str()
                .ok_or_else(|| HandlerError::with_code(400, "uid"))?
                .to_string();
            if s.uid() != Some(uid.as_str()) {
                s.bind(&uid).await.map_err(fail)?;
            }
            s.set("level", &1u32).map_err(fail)?;
            s.set("name", &uid).map_err(fail)?;
            s.push_all().await.map_err(fail)?;
            Ok(json!({ "code": 200 }))
        },
    );
    let ch = channels.clone();
    h.add(&route("join"), move |s: BackendSession, body: Value| {
        let ch = ch.clone();
        async move {
            let uid = s.uid().ok_or_else(|| HandlerError::new("login first"))?;
            let channel = body["channel"].as_str().unwrap_or("all");
            ch.add(channel, uid, s.frontend_id());
            Ok(json!({ "code": 200, "members": ch.members(channel).len() }))
        }
    });
    let mut remotes = Remotes::new();
    remotes.add(
        &format!("{server_type}.benchRemote.echo"),
        |_cx: RemoteCx, body: Value| async move { Ok(body) },
    );
    service.serve_remotes(remotes);
    let (me, echo) = (service.clone(), format!("{server_type}.benchRemote.echo"));
    h.add(&route("remote"), move |s: BackendSession, body: Value| {
        let (me, echo) = (me.clone(), echo.clone());
        async move {
            let answer: Value = me
                .remote(&echo)
                .by_key(s.id().to_string())
                .with_session(&s)
                .call(&body)
                .await?;
            Ok(answer)
        }
    });
    let ch = channels;
    h.add(&route("fanout"), move |_s: BackendSession, body: Value| {
        let ch = ch.clone();
        async move {
            let channel = body["channel"].as_str().unwrap_or("all");
            let missed = ch
                .push(channel, "onFanout", &json!({ "msg": body["msg"] }))
                .await
                .map_err(fail)?;
            Ok(json!({ "code": 200, "missed": missed.len() }))
        }
    });
    h
}
