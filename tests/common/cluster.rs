//! A connector and "game" backends on loopback, for gateway tests.

use serde_json::{json, Value};
use session_proxy::backend::{BackendSession, ChannelService, HandlerError, Handlers};
use session_proxy::frontend::{Gateway, GatewayConfig, GatewayServer};
use session_proxy::{
    BackendConfig, BackendSessionService, RpcConfig, RpcServer, SessionConfig, SessionService,
};
use session_proxy_client::{PomeloClient, PomeloOptions, Transport};
use std::net::SocketAddr;
use std::time::Duration;

pub const WAIT: Duration = Duration::from_secs(5);

pub struct Node {
    pub sessions: SessionService,
    pub rpc: RpcServer,
    pub gateway: GatewayServer,
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
    let sessions = SessionService::new(SessionConfig::new(id));
    let rpc = super::rpc_on_loopback(&sessions, RpcConfig::default()).await;
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
    }
}

/// A backend of type "game" that knows the given frontends.
pub fn start_backend(name: &str, frontends: &[&Node]) -> (BackendSessionService, ChannelService) {
    let mut config = BackendConfig::new(name);
    config.server_type = Some("game".into());
    config.deadline = Duration::from_secs(2);
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
    service.serve(handlers);
    for (i, f) in frontends.iter().enumerate() {
        let _ = i;
        service.add_frontend_of_type(
            f.sessions.frontend_id(),
            "connector",
            f.rpc.local_addr().to_string(),
        );
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
