//! `session-proxy demo`: one frontend and two backends in one process, on
//! loopback ports, working the same sessions at once; then the chat example
//! cluster driven by simulated Pomelo players.
//!
//! - [`sessions`]: binds, pushes, `push_all`s, provokes a real
//!   conditional-push conflict and kicks, all concurrently from both
//!   backends, then checks the frontend's final state key by key.
//! - [`chat`]: the chat cluster, players through the gate, every `onChat`
//!   push counted.

mod chat;
mod sessions;

pub use chat::ChatReport;
use clap::builder::TypedValueParser as _;
use serde::Serialize;
use std::time::Duration;

/// Demo settings: the `session-proxy demo` flags, with their defaults.
#[derive(Clone, Debug, clap::Args)]
pub struct DemoConfig {
    /// Sessions to create.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(20..).map(|n| n as usize))]
    pub sessions: usize,
    /// Concurrent workers per backend in the latency phase.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..).map(|n| n as usize))]
    pub workers: usize,
    /// Pushes sent pipelined on one connection in the throughput phase.
    #[arg(long, default_value_t = 200_000)]
    pub pipelined: usize,
    /// Simulated players in the chat phase (Pomelo protocol, half TCP, half
    /// WebSocket).
    #[arg(long, default_value_t = 200)]
    pub players: usize,
    /// Chat messages each player sends.
    #[arg(long, default_value_t = 20)]
    pub messages: usize,
}

/// What the demo measured.
#[derive(Debug, Serialize)]
#[non_exhaustive]
pub struct DemoReport {
    /// Sessions created.
    pub sessions: usize,
    /// Sessions still open at the end (the rest were kicked).
    pub open_at_end: usize,
    /// Successful backend operations, all phases.
    pub operations: u64,
    /// Conditional pushes refused with a conflict, as provoked.
    pub conflicts: u64,
    /// Sessions kicked.
    pub kicked: usize,
    /// Wall time of the concurrent phase.
    pub concurrent_elapsed: Duration,
    /// Pipelined pushes per second on one connection.
    pub pipelined_per_sec: f64,
    /// Push round-trip latency percentiles (p50, p99, max), microseconds.
    pub push_latency_us: (u64, u64, u64),
    /// The chat phase.
    pub chat: ChatReport,
}

impl std::fmt::Display for DemoReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.concurrent_elapsed.as_secs_f64();
        writeln!(
            f,
            "session-proxy demo: 1 frontend, 2 backends, loopback TCP"
        )?;
        writeln!(
            f,
            "  sessions          {} created, {} kicked, {} open at the end",
            self.sessions, self.kicked, self.open_at_end
        )?;
        writeln!(
            f,
            "  operations        {} (bind, push, push_all, conditional push, get, kick)",
            self.operations
        )?;
        writeln!(
            f,
            "  concurrent phase  {:.2} s, {:.0} ops/s",
            secs,
            self.operations as f64 / secs.max(1e-9)
        )?;
        writeln!(
            f,
            "  push latency      p50 {} µs, p99 {} µs, max {} µs (one call at a time per worker)",
            self.push_latency_us.0, self.push_latency_us.1, self.push_latency_us.2
        )?;
        writeln!(
            f,
            "  pipelined pushes  {:.0} ops/s on one connection",
            self.pipelined_per_sec
        )?;
        writeln!(
            f,
            "  conflicts         {} conditional pushes refused, as provoked",
            self.conflicts
        )?;
        writeln!(
            f,
            "  final state       checked: every key, uid and kick as expected"
        )?;
        let c = &self.chat;
        writeln!(
            f,
            "chat phase: gate + 2 connectors + 2 chat servers, Pomelo protocol clients"
        )?;
        writeln!(
            f,
            "  players           {} in {} rooms (half TCP, half WebSocket)",
            c.players, c.rooms
        )?;
        writeln!(
            f,
            "  chat requests     {} in {:.2} s, {:.0} req/s",
            c.requests,
            c.elapsed.as_secs_f64(),
            c.requests as f64 / c.elapsed.as_secs_f64().max(1e-9)
        )?;
        writeln!(
            f,
            "  request latency   p50 {} µs, p99 {} µs",
            c.request_latency_us.0, c.request_latency_us.1
        )?;
        write!(
            f,
            "  onChat pushes     {} delivered, each player got every message of its room once",
            c.pushes
        )
    }
}

/// Runs both phases and checks them. Errors name the first check that failed.
pub async fn run(config: DemoConfig) -> anyhow::Result<DemoReport> {
    let mut report = sessions::run(&config).await?;
    report.chat = chat::run(&config).await?;
    Ok(report)
}
