//! A complete session-proxy app: one node with a frontend (sessions, a
//! gateway for Pomelo/Pinus clients) and a backend serving "area" routes.
//! `cargo run --example minimal`, then point any Pomelo client at 3010.
use serde::Deserialize;
use serde_json::json;
use session_proxy::node::{BackendRole, FrontendRole, Node, NodeError};
use session_proxy::{BackendSession, Handlers};
use std::net::SocketAddr;

#[derive(Deserialize)]
struct Move {
    x: i32,
    y: i32,
}

/// The backend's routes: client requests on "area.*" are forwarded here.
pub fn handlers() -> Handlers {
    let mut handlers = Handlers::new();
    handlers.add(
        "area.playerHandler.move",
        |mut session: BackendSession, to: Move| async move {
            session.set("pos", &(to.x, to.y))?; // the backend's snapshot
            session.push("pos").await?; // the frontend's session, last write wins
            Ok(json!({ "code": 200, "x": to.x, "y": to.y }))
        },
    );
    handlers
}

/// One process, both roles: the backend reaches the frontend in process.
pub async fn start(clients: SocketAddr) -> Result<Node, NodeError> {
    let connector = FrontendRole::new("connector-1", "connector");
    Node::builder()
        .frontend(connector.client_addr(clients))
        .backend(BackendRole::new("area-1", "area", handlers()))
        .start() // returns once the backend is linked
        .await
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let node = start("127.0.0.1:3010".parse()?).await?;
    println!("clients on {:?}; Ctrl-C drains", node.client_addr());
    let report = node.run_until_signal().await?; // the one drain, in order
    println!("drained: {report:?}");
    Ok(())
}
