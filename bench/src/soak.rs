//! A bounded soak: steady load on a connector and a chat backend (real
//! processes from a cluster file) while the backend is SIGKILLed and
//! restarted every few seconds; samples the connector's memory, counts
//! errors, and checks at the end that every acknowledged write is there.

use super::idle::rss_kib;
use super::load::Conn;
use crate::pomelo::Transport;
use anyhow::{bail, Context};
use serde_json::json;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn spawn(binary: &Path, config: &Path, node: &str) -> anyhow::Result<Child> {
    Command::new(binary)
        .args(["run", "--config"])
        .arg(config)
        .args(["--node", node])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {node}"))
}

fn stop(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// What the soak saw.
#[derive(Debug, Default)]
pub struct SoakReport {
    /// (seconds since start, connector RSS KiB).
    pub memory: Vec<(u64, u64)>,
    /// Requests answered with a result.
    pub ok: u64,
    /// Requests answered with an error response (backend down, deadline).
    pub error_responses: u64,
    /// Connections lost by the load clients (then reconnected).
    pub reconnects: u64,
    /// Backend kills.
    pub kills: u64,
    /// Writes acknowledged and later read back intact.
    pub acknowledged_writes_checked: u64,
}

/// Runs the soak for `duration`, killing the backend every `kill_every`.
pub async fn soak(
    binary: &Path,
    config: &Path,
    target: SocketAddr,
    clients: usize,
    duration: Duration,
    kill_every: Duration,
) -> anyhow::Result<SoakReport> {
    let mut front = spawn(binary, config, "connector-1")?;
    let mut back = spawn(binary, config, "chat-1")?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let front_pid = front.id();
    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let reconnects = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + duration;
    let mut workers = Vec::new();
    for i in 0..clients {
        let (ok, errors, reconnects) = (ok.clone(), errors.clone(), reconnects.clone());
        workers.push(tokio::spawn(async move {
            // Each worker writes its own counter; the last acknowledged
            // value must be what it reads back at the end.
            let mut acked: Option<u64> = None;
            let mut n = 0u64;
            let mut conn: Option<Conn> = None;
            while Instant::now() < end {
                let c = match conn.as_mut() {
                    Some(c) => c,
                    None => match Conn::open(target, Transport::Tcp, &json!({})).await {
                        Ok(c) => conn.insert(c),
                        Err(_) => {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    },
                };
                n += 1;
                let answer = c
                    .request(
                        "chat.benchHandler.set",
                        &json!({ "key": format!("w{i}"), "value": n }),
                    )
                    .await;
                match answer {
                    Ok(v) if v["code"] == 200 => {
                        acked = Some(n);
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(_) => {
                        // A new connection is a new session: what the old
                        // one acknowledged is not expected there.
                        reconnects.fetch_add(1, Ordering::Relaxed);
                        conn = None;
                        acked = None;
                    }
                }
            }
            (i, acked, conn)
        }));
    }
    let started = Instant::now();
    let mut report = SoakReport::default();
    let mut next_kill = Instant::now() + kill_every;
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if let Some(kib) = rss_kib(front_pid) {
            report.memory.push((started.elapsed().as_secs(), kib));
        }
        if Instant::now() >= next_kill && Instant::now() + Duration::from_secs(3) < end {
            stop(&mut back);
            report.kills += 1;
            tokio::time::sleep(Duration::from_millis(500)).await;
            back = spawn(binary, config, "chat-1")?;
            next_kill = Instant::now() + kill_every;
        }
        eprint!(
            "\rsoak {:>4}/{} s  ok {}  error responses {}  reconnects {}  kills {}   ",
            started.elapsed().as_secs(),
            duration.as_secs(),
            ok.load(Ordering::Relaxed),
            errors.load(Ordering::Relaxed),
            reconnects.load(Ordering::Relaxed),
            report.kills
        );
    }
    eprintln!();
    // Let the last backend come up, then read every worker's value back.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for w in workers {
        let (i, acked, conn) = w.await?;
        let (Some(acked), Some(mut c)) = (acked, conn) else {
            continue;
        };
        let mut value = None;
        for _ in 0..50 {
            match c
                .request("chat.benchHandler.get", &json!({ "key": format!("w{i}") }))
                .await
            {
                Ok(v) if v["code"] == 200 => {
                    value = v["value"].as_u64();
                    break;
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        if value.is_none_or(|v| v < acked) {
            stop(&mut back);
            stop(&mut front);
            bail!("worker {i}: acknowledged {acked}, read back {value:?}");
        }
        report.acknowledged_writes_checked += 1;
    }
    report.ok = ok.load(Ordering::Relaxed);
    report.error_responses = errors.load(Ordering::Relaxed);
    report.reconnects = reconnects.load(Ordering::Relaxed);
    stop(&mut back);
    stop(&mut front);
    Ok(report)
}
