//! A complete session-proxy app: a frontend (sessions, the RPC server,
//! a gateway for Pomelo/Pinus clients) and a backend serving "area" routes.
//! `cargo run --example minimal`, then point any Pomelo client at 3010.
use serde::Deserialize;
use serde_json::json;
use session_proxy::{
    BackendConfig, BackendSession, BackendSessionService, Gateway, GatewayConfig, Handlers,
    RpcConfig, RpcServer, SessionConfig, SessionService,
};
use std::time::Duration;

#[derive(Deserialize)]
struct Move {
    x: i32,
    y: i32,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The frontend owns the sessions; backends dial its RPC server.
    let sessions = SessionService::new(SessionConfig::new("connector-1"));
    let rpc = RpcServer::bind(
        "127.0.0.1:0".parse()?,
        sessions.clone(),
        RpcConfig::default(),
    )
    .await?;
    let gateway = Gateway::new(
        sessions.clone(),
        rpc.backends(),
        GatewayConfig::new("connector"),
    )
    .bind("127.0.0.1:3010".parse()?)
    .await?;

    // The backend: client requests on "area.*" routes are forwarded here.
    let mut handlers = Handlers::new();
    handlers.add(
        "area.playerHandler.move",
        |mut session: BackendSession, to: Move| async move {
            session.set("pos", &(to.x, to.y))?; // the backend's snapshot
            session.push("pos").await?; // the frontend's session, last write wins
            Ok(json!({ "code": 200, "x": to.x, "y": to.y }))
        },
    );
    let mut config = BackendConfig::new("area-1");
    config.server_type = Some("area".into());
    let backend = BackendSessionService::serving(config, handlers)?;
    backend.add_frontend("connector-1", rpc.local_addr().to_string());
    backend.ready(Duration::from_secs(5)).await?; // forwarded to from now on

    println!("clients connect to {}; Ctrl-C stops", gateway.local_addr());
    tokio::signal::ctrl_c().await?;
    let drain = Duration::from_secs(1);
    gateway.shutdown(drain).await; // clients first, then the backend, then links
    backend.shutdown(drain).await;
    rpc.shutdown(drain).await;
    Ok(())
}
