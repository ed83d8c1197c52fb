//! The chat phase: the chat example cluster, driven by simulated players.

use anyhow::{bail, ensure, Context};
use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::json;
use session_proxy_chat::{ChatCluster, ChatConfig};
use session_proxy_client::{PomeloClient, PomeloEvent, PomeloOptions, Transport};
use std::time::{Duration, Instant};

use super::DemoConfig;

/// What the chat phase measured.
#[derive(Debug, Default, Serialize)]
#[non_exhaustive]
pub struct ChatReport {
    /// Players that joined (through the gate, then a connector).
    pub players: usize,
    /// Rooms.
    pub rooms: usize,
    /// Chat requests answered.
    pub requests: u64,
    /// `onChat` pushes received, all exactly as expected.
    pub pushes: u64,
    /// Wall time of the chat traffic.
    pub elapsed: Duration,
    /// Request round trip (client -> connector -> chat server -> client),
    /// percentiles (p50, p99), microseconds.
    pub request_latency_us: (u64, u64),
}

/// Starts the chat example cluster and drives it with simulated players.
pub(super) async fn run(config: &DemoConfig) -> anyhow::Result<ChatReport> {
    let mut chat_config = ChatConfig::ephemeral();
    // Every simulated player connects from 127.0.0.1.
    chat_config.max_connections_per_ip = config.players.max(2) + 16;
    let cluster = ChatCluster::start(chat_config).await?;
    let gate = cluster.gate_addr();
    let players = config.players.max(2);
    let rooms = (players / 20).max(1);
    let mut joined = Vec::with_capacity(players);
    for i in 0..players {
        let g = PomeloClient::connect(gate).await?;
        let name = format!("player{i}");
        let entry = g
            .request("gate.gateHandler.queryEntry", &json!({ "uid": name }))
            .await?;
        ensure!(entry["code"] == 200, "gate answered {entry}");
        let addr: std::net::SocketAddr = format!(
            "{}:{}",
            entry["host"].as_str().unwrap_or_default(),
            entry["port"]
        )
        .parse()?;
        let mut options = PomeloOptions::default();
        options.transport = if i % 2 == 0 {
            Transport::Tcp
        } else {
            Transport::WebSocket
        };
        let c = PomeloClient::connect_with(addr, options).await?;
        let answer = c
            .request(
                "connector.entryHandler.enter",
                &json!({ "username": name, "rid": format!("room{}", i % rooms) }),
            )
            .await?;
        ensure!(answer["users"].is_array(), "enter answered {answer}");
        joined.push((i % rooms, c));
    }
    // Let the last onAdd pushes arrive, then forget them.
    tokio::time::sleep(Duration::from_millis(100)).await;
    for (_, c) in joined.iter_mut() {
        while c.next_event(Duration::ZERO).await.is_some() {}
    }
    let mut room_size = vec![0usize; rooms];
    for (r, _) in &joined {
        room_size[*r] += 1;
    }
    let messages = config.messages;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (room, mut c) in joined {
        let expected = room_size[room] * messages;
        tasks.spawn(async move {
            let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            let mut received = 0usize;
            for m in 0..messages {
                let t = Instant::now();
                let answer = c
                    .request(
                        "chat.chatHandler.send",
                        &json!({ "content": format!("m{m}"), "target": "*" }),
                    )
                    .await?;
                h.saturating_record(t.elapsed().as_micros() as u64);
                ensure!(
                    answer["route"] == "chat.chatHandler.send",
                    "send answered {answer}"
                );
            }
            while received < expected {
                match c.next_event(Duration::from_secs(10)).await {
                    Some(PomeloEvent::Push { route, .. }) if route == "onChat" => received += 1,
                    Some(PomeloEvent::Push { .. }) => {}
                    other => {
                        bail!("a player got {other:?} after {received} of {expected} messages")
                    }
                }
            }
            if let Some(extra) = c.next_event(Duration::from_millis(50)).await {
                bail!("a player got {extra:?} after all {expected} messages of its room");
            }
            // Keep the connection: a player leaving would push onLeave to
            // the others while they are still counting.
            anyhow::Ok((h, received as u64, c))
        });
    }
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut pushes = 0;
    let mut done = Vec::with_capacity(players);
    while let Some(res) = tasks.join_next().await {
        let (h, n, c) = res.context("a player task panicked")??;
        all.add(&h)?;
        pushes += n;
        done.push(c);
    }
    drop(done);
    let elapsed = started.elapsed();
    cluster.shutdown(Duration::from_secs(2)).await;
    Ok(ChatReport {
        players,
        rooms,
        requests: (players * messages) as u64,
        pushes,
        elapsed,
        request_latency_us: (all.value_at_quantile(0.5), all.value_at_quantile(0.99)),
    })
}
