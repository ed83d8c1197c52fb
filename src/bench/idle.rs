//! Idle connected clients and what they cost the server.

use super::BenchResult;
use crate::bench::load::transport_name;
use crate::client::{ClientOptions, PomeloClient, Transport};
use serde_json::json;
use std::net::SocketAddr;
use std::time::Duration;

/// A process's resident memory, KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Connects `clients` clients (optionally sending a login request each),
/// waits for the server to settle, and reports the RSS growth of `pids`.
pub async fn idle(
    target: SocketAddr,
    transport: Transport,
    clients: usize,
    pids: &[u32],
    login_route: Option<&str>,
) -> anyhow::Result<BenchResult> {
    let before: Vec<u64> = pids.iter().map(|p| rss_kib(*p).unwrap_or(0)).collect();
    let t0 = std::time::Instant::now();
    let mut held = Vec::with_capacity(clients);
    let mut errors = 0u64;
    let all: Vec<usize> = (0..clients).collect();
    for wave in all.chunks(500) {
        let joins: Vec<_> = wave
            .iter()
            .map(|&i| {
                let route = login_route.map(str::to_string);
                tokio::spawn(async move {
                    let options = ClientOptions {
                        transport,
                        ..ClientOptions::default()
                    };
                    let c = PomeloClient::connect_with(target, options).await?;
                    if let Some(route) = route {
                        c.request(&route, &json!({ "uid": format!("idle{i}") }))
                            .await?;
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
    Ok(BenchResult {
        mode: "idle".into(),
        target: target.to_string(),
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
    })
}
