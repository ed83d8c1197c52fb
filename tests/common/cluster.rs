//! A connector and "game" backends on loopback, for gateway tests.

use super::Link;
use serde_json::{json, Value};
use session_proxy::backend::{BackendSession, ChannelService, HandlerError, Handlers};
use session_proxy::frontend::{Gateway, GatewayConfig, GatewayServer};
use session_proxy::protocol::PushToSids;
use session_proxy::{
    BackendConfig, BackendSessionService, RpcServer, SessionConfig, SessionService,
};
use session_proxy_client::{PomeloClient, PomeloOptions, Transport};
use std::net::SocketAddr;
use std::time::Duration;

pub const WAIT: Duration = Duration::from_secs(5);

pub struct Node {
    pub sessions: SessionService,
    pub rpc: RpcServer,
    pub gateway: GatewayServer,
    /// How `start_backend`'s backends reach it.
    pub link: Link,
}

pub async fn start_frontend(id: &str, tweak: impl FnOnce(&mut GatewayConfig)) -> Node {
    start_frontend_then(id, tweak, |_| {}).await
}

/// [`start_frontend`], with `more` done to the gateway before it binds
/// (filters, hooks).
pub async fn start_frontend_then(
    id: &str,
    tweak: impl FnOnce(&mut GatewayConfig),
    more: impl FnOnce(&mut Gateway),
) -> Node {
    start_frontend_over(id, Link::Tcp, tweak, more).await
}

/// [`start_frontend_then`], its backends reaching it over `link`.
pub async fn start_frontend_over(
    id: &str,
    link: Link,
    tweak: impl FnOnce(&mut GatewayConfig),
    more: impl FnOnce(&mut Gateway),
) -> Node {
    let sessions = SessionService::new(SessionConfig::new(id));
    let rpc = super::rpc_on_loopback(&sessions, super::rpc_config(id, link)).await;
    let mut config = GatewayConfig::new("connector");
    tweak(&mut config);
    let mut gateway = Gateway::new(sessions.clone(), rpc.backends(), config);
    gateway
        .handlers()
        .add("connector.entry.login", |ctx, body: Value| async move {
            let uid = body["uid"]
                .as_str()
                .ok_or_else(|| HandlerError::new("uid"))?
                .to_string();
            ctx.sessions
                .bind(ctx.sid, &uid)
                .map_err(|e| HandlerError::new(e.to_string()))?;
            Ok(json!({ "code": 200, "frontend": ctx.sessions.frontend_id() }))
        });
    gateway
        .handlers()
        .add("connector.entry.echo", |_ctx, body: Value| async move {
            Ok(body)
        });
    gateway
        .handlers()
        .add("connector.entry.kickme", |ctx, _body: Value| async move {
            ctx.sessions.kick_by_sid(ctx.sid, "bye");
            Ok(json!({}))
        });
    more(&mut gateway);
    let gateway = gateway
        .bind("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("gateway");
    Node {
        sessions,
        rpc,
        gateway,
        link,
    }
}

/// A backend of type "game" that knows the given frontends, reaching each
/// over its link (the first one's says whether in-process calls are direct).
pub fn start_backend(name: &str, frontends: &[&Node]) -> (BackendSessionService, ChannelService) {
    let mut config = BackendConfig::new(name);
    config.server_type = Some("game".into());
    config.deadline = Duration::from_secs(2);
    config.in_process_direct = frontends.first().is_some_and(|f| f.link == Link::Direct);
    let service = BackendSessionService::new(config).expect("valid config");
    let channels = ChannelService::new(service.clone());
    let mut handlers = Handlers::new();
    handlers.add(
        "game.h.echo",
        |_s: BackendSession, body: Value| async move { Ok(body) },
    );
    handlers.add(
        "game.h.steps",
        |s: BackendSession, body: Value| async move {
            let n = body["n"].as_u64().unwrap_or(0);
            for i in 0..n {
                s.send("onStep", &json!({ "i": i }))
                    .await
                    .map_err(|e| HandlerError::new(e.to_string()))?;
            }
            Ok(json!({ "done": n }))
        },
    );
    // The same pushes as one-way calls: nothing waits for them.
    let this = service.clone();
    handlers.add("game.h.oneway", move |s: BackendSession, body: Value| {
        let this = this.clone();
        async move {
            let n = body["n"].as_u64().unwrap_or(0);
            let link = this
                .client(s.frontend_id())
                .map_err(|e| HandlerError::new(e.to_string()))?;
            for i in 0..n {
                let push = PushToSids {
                    route: "onStep".into(),
                    body: json!({ "i": i }).to_string().into(),
                    sids: vec![s.id()],
                };
                link.notify(push)
                    .await
                    .map_err(|e| HandlerError::new(e.to_string()))?;
            }
            Ok(json!({ "done": n }))
        }
    });
    handlers.add(
        "game.h.slow",
        |_s: BackendSession, body: Value| async move {
            tokio::time::sleep(Duration::from_millis(body["ms"].as_u64().unwrap_or(0))).await;
            Ok(json!({ "slept": body["ms"] }))
        },
    );
    handlers.add("game.h.fail", |_s: BackendSession, _b: Value| async move {
        Err::<Value, _>(HandlerError::with_code(1001, "not enough gold"))
    });
    handlers.add("game.h.panic", |_s: BackendSession, _b: Value| async move {
        if true {
            panic!("a handler bug");
        }
        Ok(json!({}))
    });
    // Which task ran the handler.
    handlers.add("game.h.task", |_s: BackendSession, _b: Value| async move {
        Ok(json!({ "task": tokio::task::try_id().map(|id| id.to_string()) }))
    });
    service.serve(handlers);
    for f in frontends {
        let addr = match f.rpc.in_process_addr() {
            Some(inproc) => inproc.to_string(),
            None => f.rpc.local_addr().to_string(),
        };
        service.add_frontend_of_type(f.sessions.frontend_id(), "connector", addr);
    }
    (service, channels)
}

pub async fn wait_for_backends(node: &Node, n: usize) {
    assert!(
        node.rpc.backends().wait_for("game", n, WAIT).await,
        "backends did not connect"
    );
}

pub async fn client(addr: SocketAddr, transport: Transport) -> PomeloClient {
    let mut options = PomeloOptions::default();
    options.transport = transport;
    PomeloClient::connect_with(addr, options)
        .await
        .expect("client connects")
}
