//! Idle connected clients and what they cost the server.

use super::BenchResult;
use crate::load::transport_name;
use anyhow::Context;
use serde_json::{json, Value};
use session_proxy_client::{PomeloClient, PomeloOptions, Transport};
use std::net::SocketAddr;
use std::time::Duration;

pub use session_proxy_frontend::metrics::rss_kib;

/// Asks a chatofpomelo-style gate (`gate.gateHandler.queryEntry {uid}`)
/// for its connectors' addresses, trying `probes` uids.
pub async fn connectors_of_gate(
    gate: SocketAddr,
    probes: usize,
) -> anyhow::Result<Vec<SocketAddr>> {
    let g = PomeloClient::connect(gate).await?;
    let mut connectors = Vec::new();
    for i in 0..probes {
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
        .parse()
        .with_context(|| format!("the gate answered {e}"))?;
        if !connectors.contains(&addr) {
            connectors.push(addr);
        }
    }
    Ok(connectors)
}

/// What the idle clients do once connected: one request each, whose body's
/// strings have `{i}` replaced by the client's number and `{r}` by that
/// number modulo 100 (a room).
#[derive(Clone, Debug)]
pub struct Login {
    /// The route.
    pub route: String,
    /// The body template.
    pub body: Value,
}

/// Connects `clients` clients, spread over `targets` (optionally sending a
/// login request each), waits for the server to settle, and reports the RSS
/// growth of `pids`.
pub async fn idle(
    targets: &[SocketAddr],
    transport: Transport,
    clients: usize,
    pids: &[u32],
    login: Option<&Login>,
) -> anyhow::Result<BenchResult> {
    Ok(
        idle_held(targets, transport, clients, pids, login, Duration::ZERO)
            .await?
            .0,
    )
}

/// [`idle`], and the clients, still connected (heartbeating at the
/// server's interval) until they are dropped. With a `spread`, the clients
/// connect evenly over that time (in waves of 500) instead of at once, so
/// their heartbeats do not all fall due together.
pub async fn idle_held(
    targets: &[SocketAddr],
    transport: Transport,
    clients: usize,
    pids: &[u32],
    login: Option<&Login>,
    spread: Duration,
) -> anyhow::Result<(BenchResult, Vec<PomeloClient>)> {
    let Some(&first) = targets.first() else {
        anyhow::bail!("no server to connect to");
    };
    let body = login.map(|l| serde_json::to_string(&l.body)).transpose()?;
    let before: Vec<u64> = pids.iter().map(|p| rss_kib(*p).unwrap_or(0)).collect();
    let t0 = std::time::Instant::now();
    let mut held = Vec::with_capacity(clients);
    let mut errors = 0u64;
    let all: Vec<usize> = (0..clients).collect();
    let start = tokio::time::Instant::now();
    for (n, wave) in all.chunks(500).enumerate() {
        let due = spread.mul_f64((n * 500) as f64 / clients.max(1) as f64);
        tokio::time::sleep_until(start + due).await;
        let joins: Vec<_> = wave
            .iter()
            .map(|&i| {
                let target = targets[i % targets.len()];
                let request = login.zip(body.as_ref()).map(|(l, body)| {
                    let body = body
                        .replace("{i}", &i.to_string())
                        .replace("{r}", &(i % 100).to_string());
                    (l.route.clone(), body)
                });
                tokio::spawn(async move {
                    let mut options = PomeloOptions::default();
                    options.transport = transport;
                    let c = PomeloClient::connect_with(target, options).await?;
                    if let Some((route, body)) = request {
                        let body: Value = serde_json::from_str(&body)?;
                        c.request(&route, &body).await?;
                    }
                    anyhow::Ok(c)
                })
            })
            .collect();
        for j in joins {
            match j.await? {
                Ok(c) => held.push(c),
                Err(_) => errors += 1,
            }
        }
        super::progress(
            "idle",
            Duration::from_secs_f64(held.len() as f64),
            Duration::from_secs_f64(clients as f64),
            held.len() as u64,
        );
    }
    eprintln!();
    let seconds = t0.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after: Vec<u64> = pids.iter().map(|p| rss_kib(*p).unwrap_or(0)).collect();
    let growth: u64 = after
        .iter()
        .zip(&before)
        .map(|(a, b)| a.saturating_sub(*b))
        .sum();
    let per_client =
        (!pids.is_empty() && !held.is_empty()).then(|| growth as f64 * 1024.0 / held.len() as f64);
    let result = BenchResult {
        mode: "idle".into(),
        target: first.to_string(),
        transport: transport_name(transport),
        clients: held.len(),
        seconds,
        ops: held.len() as u64,
        errors,
        throughput: held.len() as f64 / seconds,
        rss_kib: pids
            .iter()
            .zip(before)
            .zip(after)
            .map(|((p, b), a)| (*p, b, a))
            .collect(),
        bytes_per_client: per_client,
        ..BenchResult::default()
    };
    Ok((result, held))
}
