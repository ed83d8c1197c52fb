//! Pomelo's chatofpomelo on session-proxy: a gate on port 3014, two
//! connectors on 3050 and 3051, two chat servers, and the chat page on
//! <http://127.0.0.1:3001/>, all on 127.0.0.1.
//!
//! ```sh
//! cargo run --release --example chat
//! ```
//! `chat <gate port>` moves the connectors to the next ports and the page to
//! a free port (printed). Any Pomelo/Pinus client can join: ask the gate
//! (`gate.gateHandler.queryEntry {uid}`) for a connector, then
//! `connector.entryHandler.enter {username, rid}` and
//! `chat.chatHandler.send {content, from, target}`. Stop with Ctrl-C.

use session_proxy_chat::{ChatCluster, ChatConfig};
use std::time::Duration;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let mut config = ChatConfig::default();
    if let Some(port) = std::env::args().nth(1) {
        // `chat <gate port>`: the connectors take the next ports.
        let port: u16 = port.parse()?;
        config.gate_port = port;
        config.connector_port = if port == 0 { 0 } else { port + 1 };
        config.web_port = Some(0);
    } else {
        config.web_port = Some(3001);
    }
    if let Some(n) = std::env::var("SESSION_PROXY_MAX_CONNECTIONS_PER_IP")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        // Load tests connect thousands of clients from one address.
        config.max_connections_per_ip = n;
    }
    let cluster = ChatCluster::start(config).await?;
    println!("gate        {}", cluster.gate_addr());
    for (i, addr) in cluster.connector_addrs().iter().enumerate() {
        println!("connector-{} {addr} (TCP and WebSocket)", i + 1);
    }
    println!("chat servers: {}", cluster.chat_servers().len());
    if let Some(page) = cluster.web_addr() {
        println!("chat page   http://{page}/");
    }
    println!("pid {}", std::process::id());
    tokio::signal::ctrl_c().await?;
    cluster.shutdown(Duration::from_secs(3)).await;
    Ok(())
}
