//! session-proxy's measuring tools, kept out of the published crates (like
//! quinn's `bench/` and `perf/`): the scripts in this folder and the
//! `session-proxy bench` command run them.
//!
//! # Layout
//! - The Pomelo/Pinus protocol client it drives servers with is the
//!   published `session-proxy-client` crate.
//! - [`app`]: the bench app's routes, identical on Pinus (`bench/pinus`).
//! - [`load`](mod@load): request/response with N clients, closed loop (each client
//!   sends its next request when the answer arrives) or open loop (requests
//!   leave on a schedule at a target rate; latency counts from the
//!   scheduled time, so a stalled server cannot hide its queueing).
//! - [`idle`](mod@idle): N connected clients held open, the server's RSS read from
//!   `/proc` before and after.
//! - [`fanout`]: N clients in one channel; one channel push reaches them
//!   all; delivery latency per client.
//! - [`pushes`](mod@pushes): pipelined backend → frontend pushes on one RPC
//!   connection (not the client protocol: the cluster's own).
//! - [`floor`]: the raw floor: a minimal Rust server that answers the
//!   protocol's handshake and echoes requests, to compare against.
//! - [`report`]: the comparison section of `docs/BENCHMARKS.md`.
//! - [`soak`]: load plus backend kills (and store kills), checking every
//!   acknowledged write.
//! - [`ccu`]: players at a fixed per-player rate, ramped in steps: the
//!   largest step within a p99 target.
//!
//! Every mode prints a human summary and, with `--json`, one JSON object.

pub mod app;
pub mod ccu;
pub mod elastic;
pub mod faults;
pub mod floor;
pub mod idle;
pub mod load;
pub mod pushes;
pub mod report;
pub mod soak;
pub mod store;

pub use idle::{connectors_of_gate, idle, idle_held, Login};
pub use load::{fanout, load, LoadOptions};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// What a run measured.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct BenchResult {
    /// `rr`, `idle` or `fanout`.
    pub mode: String,
    /// The server.
    pub target: String,
    /// `tcp` or `ws`.
    pub transport: String,
    /// Connected clients.
    pub clients: usize,
    /// Measured wall time, seconds.
    pub seconds: f64,
    /// Requests answered (or pushes delivered, for fanout).
    pub ops: u64,
    /// Operations that failed.
    pub errors: u64,
    /// Operations per second.
    pub throughput: f64,
    /// Latency percentiles, microseconds.
    pub p50_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Maximum.
    pub max_us: u64,
    /// The latency distribution: (percentile, µs) pairs for plotting.
    pub distribution: Vec<(f64, u64)>,
    /// Server RSS per watched PID, KiB, before and after (idle mode).
    pub rss_kib: Vec<(u32, u64, u64)>,
    /// Server RSS growth per connected client, bytes (idle mode).
    pub bytes_per_client: Option<f64>,
    /// Players per node (ccu mode): the largest step within its target.
    pub ccu: Option<usize>,
    /// The ccu mode's steps.
    pub steps: Vec<ccu::CcuStep>,
}

impl BenchResult {
    /// The result of `ops` operations (and `errors` failures) of `mode` by
    /// `clients` against `target` over `transport` in `seconds`.
    pub(crate) fn measured(
        mode: &str,
        (target, transport): (String, String),
        clients: usize,
        seconds: f64,
        (ops, errors): (u64, u64),
    ) -> Self {
        BenchResult {
            mode: mode.into(),
            target,
            transport,
            clients,
            seconds,
            ops,
            errors,
            throughput: ops as f64 / seconds,
            ..BenchResult::default()
        }
    }

    pub(crate) fn with_latency(mut self, h: &Histogram<u64>) -> Self {
        self.p50_us = h.value_at_quantile(0.5);
        self.p99_us = h.value_at_quantile(0.99);
        self.p999_us = h.value_at_quantile(0.999);
        self.max_us = h.max();
        self.distribution = [
            0.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.99, 100.0,
        ]
        .iter()
        .map(|p| (*p, h.value_at_percentile(*p)))
        .collect();
        self
    }
}

impl std::fmt::Display for BenchResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} over {}: {} clients, {} ops in {:.1} s = {:.0}/s, {} errors",
            self.mode,
            self.target,
            self.transport,
            self.clients,
            self.ops,
            self.seconds,
            self.throughput,
            self.errors
        )?;
        if self.ops > 0 && self.max_us > 0 {
            write!(
                f,
                "; latency p50 {} µs, p99 {} µs, p99.9 {} µs, max {} µs",
                self.p50_us, self.p99_us, self.p999_us, self.max_us
            )?;
        }
        for (pid, before, after) in &self.rss_kib {
            write!(f, "; pid {pid} RSS {before} -> {after} KiB")?;
        }
        if let Some(b) = self.bytes_per_client {
            write!(f, " ({b:.0} bytes per client)")?;
        }
        Ok(())
    }
}

pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("static histogram bounds are valid")
}

/// Prints a one-line progress report to stderr, rewritten in place, every
/// second of a run longer than a few seconds.
pub(crate) fn progress(label: &str, elapsed: Duration, total: Duration, ops: u64) {
    if total >= Duration::from_secs(3) {
        let pct = (elapsed.as_secs_f64() / total.as_secs_f64() * 100.0).min(100.0);
        let filled = (pct / 5.0) as usize;
        eprint!(
            "\r{label} [{}{}] {pct:3.0}% {ops} ops   ",
            "#".repeat(filled),
            " ".repeat(20 - filled.min(20))
        );
    }
}
