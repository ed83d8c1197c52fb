//! Connects many simulated chat players to the chat example and holds them,
//! to measure what an idle connected player costs the server.
//!
//! ```sh
//! cargo run --release --example chat 4000 &          # gate 4000, connectors 4001+
//! cargo run --release --example load -- 127.0.0.1:4000 10000 <chat pid> [tcp|ws] [chat|idle]
//! ```
//! Prints the server's resident memory before and after, per client. The
//! machine's open-files limit must allow both ends' sockets (`ulimit -n`).

use serde_json::json;
use session_proxy::client::{ClientOptions, PomeloClient, Transport};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

fn rss_kib(pid: &str) -> Option<u64> {
    session_proxy::bench::idle::rss_kib(pid.parse().ok()?)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let gate: SocketAddr = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:3014".into())
        .parse()?;
    let clients: usize = args.next().unwrap_or_else(|| "1000".into()).parse()?;
    let server_pid = args.next();
    let transport = match args.next().as_deref() {
        Some("ws") => Transport::WebSocket,
        _ => Transport::Tcp,
    };
    // "idle": connect and handshake only; "chat" (default): also enter a room.
    let enter_rooms = args.next().as_deref() != Some("idle");

    // Ask the gate once per connector for its address.
    let g = PomeloClient::connect(gate).await?;
    let mut connectors = Vec::new();
    for i in 0..64 {
        let e = g
            .request(
                "gate.gateHandler.queryEntry",
                &json!({ "uid": format!("p{i}") }),
            )
            .await?;
        let addr: SocketAddr = format!(
            "{}:{}",
            e["host"].as_str().unwrap_or("127.0.0.1"),
            e["port"]
        )
        .parse()?;
        if !connectors.contains(&addr) {
            connectors.push(addr);
        }
    }
    drop(g);
    let before = server_pid.as_deref().and_then(rss_kib);
    let started = Instant::now();
    let mut held = Vec::with_capacity(clients);
    let mut failed = 0usize;
    // Connect in waves of 500 so the accept backlog never overflows.
    for wave in (0..clients).collect::<Vec<_>>().chunks(500) {
        let joins: Vec<_> = wave
            .iter()
            .map(|&i| {
                let addr = connectors[i % connectors.len()];
                tokio::spawn(async move {
                    let mut options = ClientOptions::default();
                    options.transport = transport;
                    let c = PomeloClient::connect_with(addr, options).await?;
                    if !enter_rooms {
                        return anyhow::Ok(c);
                    }
                    c.request(
                        "connector.entryHandler.enter",
                        &json!({ "username": format!("load{i}"), "rid": format!("room{}", i % 100) }),
                    )
                    .await?;
                    anyhow::Ok(c)
                })
            })
            .collect();
        for j in joins {
            match j.await? {
                Ok(c) => held.push(c),
                Err(err) => {
                    failed += 1;
                    if failed <= 3 {
                        eprintln!("client failed: {err:#}");
                    }
                }
            }
        }
    }
    let connect_time = started.elapsed();
    // Let the room pushes (onAdd) settle.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = server_pid.as_deref().and_then(rss_kib);
    println!(
        "clients {}: {} ({failed} failed) in {:.1} s",
        if enter_rooms {
            "connected and in a room"
        } else {
            "connected and handshaken"
        },
        held.len(),
        connect_time.as_secs_f64()
    );
    if let (Some(b), Some(a)) = (before, after) {
        let per = (a.saturating_sub(b) as f64 * 1024.0) / held.len().max(1) as f64;
        println!("server RSS: {b} KiB before, {a} KiB after: {per:.0} bytes per connected client ({transport:?})");
    }
    Ok(())
}
