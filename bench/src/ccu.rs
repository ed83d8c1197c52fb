//! How many players one node carries: clients that each send one request
//! per second (`rate_per_client`), each on its own jittered schedule (an
//! open loop per client: latency counts from the scheduled time), ramped up
//! in steps. Each step is held for a while and measured; the result is the
//! largest step whose p99 stayed within the target with no errors.
//!
//! The generator is built to stay cheap, so the figures are the server's:
//! one small task per client (a socket, a reused read buffer, its schedule),
//! no per-client histogram — every latency goes to one lock-free histogram
//! shared by all. Its own CPU and RSS are measured and reported per step.
//! Clients can spread over several loopback source addresses (127.0.0.1,
//! 127.0.0.2, …) so that ephemeral ports never run out; generators side by
//! side take addresses of their own (`first_source`). Past 127.0.0.1 a
//! client binds its own source port too (10000 + its number on that
//! address): left to the kernel, a connect()'s port is searched among those
//! the same source and destination already use, one after the other, and at
//! 100,000 clients that search (`__inet_check_established`) took 70 % of the
//! machine's CPU. Should that port be taken, the kernel picks one at connect
//! (`IP_BIND_ADDRESS_NO_PORT`).

use anyhow::{bail, Context};
use bytes::{Buf, BytesMut};
use serde::{Deserialize, Serialize};
use session_proxy_client::raw::package;
use session_proxy_protocol::client::{
    encode_parts, ClientMessage, MessageType, PackageCodec, PackageType, Route, MAX_PACKAGE_BODY,
};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::{sleep_until, timeout, Instant};
use tokio_util::codec::Decoder;

/// What to run.
#[derive(Clone, Debug)]
pub struct CcuOptions {
    /// The server's client address (raw TCP).
    pub target: SocketAddr,
    /// Connected clients at each step, ascending.
    pub steps: Vec<usize>,
    /// Requests per second of each client.
    pub rate_per_client: f64,
    /// How long each step is measured, once all its clients are connected.
    pub hold: Duration,
    /// New connections per second while ramping up.
    pub ramp_per_sec: usize,
    /// The route of each request, and its JSON body.
    pub route: String,
    /// The JSON body of each request.
    pub body: String,
    /// The p99 a step must stay within.
    pub p99_target: Duration,
    /// Spread clients over this many loopback source addresses
    /// (from 127.0.0.`first_source` on).
    pub sources: u8,
    /// The first source address's last byte (1: 127.0.0.1).
    pub first_source: u8,
    /// The server's PID, to read its RSS at each step.
    pub server_pid: Option<u32>,
    /// Every process of the system under test (frontends, backends, the
    /// broker a peer needs): their CPU over each hold is the step's
    /// `server_cpu`.
    pub cpu_pids: Vec<u32>,
}

/// One measured step.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct CcuStep {
    /// Connected clients.
    pub clients: usize,
    /// Requests answered per second during the hold.
    pub req_per_sec: f64,
    /// Latency percentiles, from the scheduled send time, in ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// The slowest answer, ms.
    pub max_ms: f64,
    /// Requests that failed or got no answer within 5 s, and clients that
    /// could not connect.
    pub errors: u64,
    /// The generator's CPU during the hold, in cores.
    pub generator_cpu: f64,
    /// The generator's RSS per connected client, bytes.
    pub generator_bytes_per_client: f64,
    /// The server's RSS, KiB, if its PID was given.
    pub server_rss_kib: Option<u64>,
    /// The CPU of the system's processes during the hold, in cores, if
    /// their PIDs were given.
    pub server_cpu: Option<f64>,
}

/// The system's CPU per player (cores), from the steps up to `held`
/// players: the slope of a least-squares line through (players,
/// `server_cpu`). `None` with fewer than two such steps.
pub fn cores_per_player(steps: &[CcuStep], held: usize) -> Option<f64> {
    let points: Vec<(f64, f64)> = steps
        .iter()
        .filter(|s| s.clients <= held)
        .filter_map(|s| s.server_cpu.map(|cpu| (s.clients as f64, cpu)))
        .collect();
    if points.len() < 2 {
        return None;
    }
    let n = points.len() as f64;
    let (mx, my) = points
        .iter()
        .fold((0.0, 0.0), |(x, y), (a, b)| (x + a / n, y + b / n));
    let (sxy, sxx) = points.iter().fold((0.0, 0.0), |(xy, xx), (x, y)| {
        (xy + (x - mx) * (y - my), xx + (x - mx) * (x - mx))
    });
    (sxx > 0.0).then(|| sxy / sxx)
}

/// The whole run.
#[derive(Clone, Debug, Serialize)]
pub struct CcuReport {
    /// Every step run, in order (the last may be the one that failed).
    pub steps: Vec<CcuStep>,
    /// The largest step within the p99 target with no errors (0: none).
    pub ccu: usize,
}

/// Latencies in µs, log-linear buckets (16 per power of two: within 6 %),
/// recorded with one relaxed atomic add each.
struct AtomicHistogram {
    buckets: Vec<AtomicU64>,
}

const LINEAR: u64 = 32;
const SUB: u64 = 16;

impl AtomicHistogram {
    fn new() -> Self {
        AtomicHistogram {
            buckets: (0..(LINEAR + 40 * SUB))
                .map(|_| AtomicU64::new(0))
                .collect(),
        }
    }

    fn index(us: u64) -> usize {
        if us < LINEAR {
            return us as usize;
        }
        let power = 63 - u64::from(us.leading_zeros()); // >= 5
        let mantissa = us >> (power - 4); // 16..32
        let i = LINEAR + (power - 5) * SUB + (mantissa - SUB);
        (i as usize).min((LINEAR + 40 * SUB) as usize - 1)
    }

    fn upper_us(index: usize) -> u64 {
        let i = index as u64;
        if i < LINEAR {
            return i + 1;
        }
        let power = (i - LINEAR) / SUB + 5;
        let mantissa = (i - LINEAR) % SUB + SUB;
        (mantissa + 1) << (power - 4)
    }

    fn record(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.buckets[Self::index(us)].fetch_add(1, Ordering::Relaxed);
    }

    /// The counts now, and zero from here on.
    fn take(&self) -> Vec<u64> {
        self.buckets
            .iter()
            .map(|b| b.swap(0, Ordering::Relaxed))
            .collect()
    }
}

/// (count, p50, p99, max) in ms of taken counts.
fn summarize(counts: &[u64]) -> (u64, f64, f64, f64) {
    let total: u64 = counts.iter().sum();
    let at = |q: f64| {
        let want = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= want {
                return AtomicHistogram::upper_us(i) as f64 / 1000.0;
            }
        }
        0.0
    };
    let max = counts
        .iter()
        .rposition(|c| *c > 0)
        .map_or(0.0, |i| AtomicHistogram::upper_us(i) as f64 / 1000.0);
    (total, at(0.5), at(0.99), max)
}

struct Shared {
    histogram: AtomicHistogram,
    errors: AtomicU64,
    stop: AtomicBool,
    route: String,
    body: Vec<u8>,
    period: Duration,
}

/// The first source port a client binds (past 127.0.0.1); clients on one
/// address count up from it.
const FIRST_PORT: u16 = 10_000;
/// Clients per source address with a port of their own.
const PORTS: usize = 50_000;

async fn connect(target: SocketAddr, source: u8, port: u16) -> anyhow::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    if source > 1 {
        let ip = Ipv4Addr::new(127, 0, 0, source);
        if socket
            .bind(SocketAddr::V4(SocketAddrV4::new(ip, port)))
            .is_err()
        {
            #[cfg(target_os = "linux")]
            nix::sys::socket::setsockopt(
                &socket,
                nix::sys::socket::sockopt::IpBindAddressNoPort,
                &true,
            )?;
            socket.bind(SocketAddr::V4(SocketAddrV4::new(ip, 0)))?;
        }
    }
    let stream = socket.connect(target).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Reads the next package; `None` at EOF.
async fn next_package(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
) -> anyhow::Result<Option<session_proxy_protocol::client::Package>> {
    let mut codec = PackageCodec::new(MAX_PACKAGE_BODY);
    loop {
        if let Some(p) = codec.decode(buf)? {
            return Ok(Some(p));
        }
        // Into the buffer itself: no chunk on the task's stack.
        buf.reserve(128);
        if stream.read_buf(buf).await? == 0 {
            return Ok(None);
        }
    }
}

/// One player: handshake, then one request per period on its own
/// schedule, heartbeats as the server asks, until told to stop.
async fn player(
    target: SocketAddr,
    (source, port): (u8, u16),
    shared: Arc<Shared>,
    offset: Duration,
) {
    if let Err(err) = play(target, (source, port), &shared, offset).await {
        shared.errors.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(cause = %err, "a player failed");
    }
}

async fn play(
    target: SocketAddr,
    (source, port): (u8, u16),
    shared: &Shared,
    offset: Duration,
) -> anyhow::Result<()> {
    let mut stream = connect(target, source, port).await.context("connect")?;
    let handshake = br#"{"sys":{"type":"ccu","version":"1"},"user":{}}"#;
    stream
        .write_all(&package(PackageType::Handshake, handshake)?)
        .await?;
    let mut buf = BytesMut::new();
    // Only the heartbeat outlives the handshake: the parsed reply is
    // dropped here, not held for the life of the task.
    let heartbeat = {
        let reply = next_package(&mut stream, &mut buf)
            .await?
            .context("closed before the handshake reply")?;
        let reply: serde_json::Value = serde_json::from_slice(&reply.body)?;
        if reply["code"] != 200 {
            bail!("handshake refused: {reply}");
        }
        Duration::from_secs(reply["sys"]["heartbeat"].as_u64().unwrap_or(30).max(1))
    };
    if !buf.has_remaining() {
        buf = BytesMut::new();
    }
    stream
        .write_all(&package(PackageType::HandshakeAck, &[])?)
        .await?;
    let mut next = Instant::now() + offset;
    let mut next_beat = Instant::now() + heartbeat;
    let mut id: u64 = 0;
    while !shared.stop.load(Ordering::Relaxed) {
        sleep_until(next.min(next_beat)).await;
        if Instant::now() >= next_beat {
            stream
                .write_all(&package(PackageType::Heartbeat, &[])?)
                .await?;
            next_beat += heartbeat;
        }
        if Instant::now() < next {
            continue;
        }
        id += 1;
        let scheduled = next;
        let mut out = BytesMut::new();
        PackageCodec::new(MAX_PACKAGE_BODY).encode_with(PackageType::Data, &mut out, |b| {
            encode_parts(
                MessageType::Request,
                id,
                &Route::Name(shared.route.clone()),
                &shared.body,
                b,
            )
        })?;
        stream.write_all(&out).await?;
        let answered = timeout(Duration::from_secs(5), async {
            loop {
                let Some(p) = next_package(&mut stream, &mut buf).await? else {
                    bail!("the server closed the connection");
                };
                if p.kind == PackageType::Data {
                    let m = ClientMessage::decode(p.body)?;
                    if m.kind == MessageType::Response && m.id == id {
                        return Ok(());
                    }
                }
            }
        })
        .await;
        match answered {
            Ok(Ok(())) => shared.histogram.record(scheduled.elapsed()),
            Ok(Err(err)) => return Err(err),
            Err(_) => {
                shared.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        if !buf.has_remaining() {
            buf = BytesMut::new();
        }
        next += shared.period;
        // Behind schedule (a slow answer): the next one leaves at once, and
        // its latency counts from when it should have left.
    }
    Ok(())
}

/// (utime + stime) of this process in seconds.
fn cpu_seconds() -> f64 {
    cpu_seconds_of("self")
}

/// (utime + stime) of the processes `pids` in seconds, together.
fn cpu_seconds_of_all(pids: &[u32]) -> f64 {
    pids.iter().map(|p| cpu_seconds_of(&p.to_string())).sum()
}

/// (utime + stime) of process `pid` ("self", or a number) in seconds; 0
/// for one that is gone.
fn cpu_seconds_of(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces) end with ')'.
    let Some(rest) = stat.rsplit(')').next() else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 here.
    (ticks(11) + ticks(12)) / 100.0
}

/// Runs the steps; stops after the first that misses the target.
pub async fn ccu(o: CcuOptions) -> anyhow::Result<CcuReport> {
    if o.rate_per_client <= 0.0 {
        bail!("--rate-per-client must be positive");
    }
    let shared = Arc::new(Shared {
        histogram: AtomicHistogram::new(),
        errors: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        route: o.route.clone(),
        body: o.body.clone().into_bytes(),
        period: Duration::from_secs_f64(1.0 / o.rate_per_client),
    });
    let mut tasks = Vec::new();
    let mut report = CcuReport {
        steps: Vec::new(),
        ccu: 0,
    };
    let sources = o.sources.max(1);
    for &step in &o.steps {
        // Ramp up to this step, a batch of connections at a time.
        let batch = (o.ramp_per_sec / 10).max(1);
        while tasks.len() < step {
            for _ in 0..batch.min(step - tasks.len()) {
                let i = tasks.len();
                let source = o
                    .first_source
                    .max(1)
                    .saturating_add((i % usize::from(sources)) as u8);
                let port = FIRST_PORT + ((i / usize::from(sources)) % PORTS) as u16;
                let offset = shared.period.mul_f64((i as f64 * 0.618_034) % 1.0);
                tasks.push(tokio::spawn(player(
                    o.target,
                    (source, port),
                    shared.clone(),
                    offset,
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Settle, then measure.
        tokio::time::sleep(Duration::from_secs(2)).await;
        shared.histogram.take();
        let errors_before = shared.errors.load(Ordering::Relaxed);
        let cpu_before = cpu_seconds();
        let server_before = cpu_seconds_of_all(&o.cpu_pids);
        let started = std::time::Instant::now();
        tokio::time::sleep(o.hold).await;
        let held = started.elapsed().as_secs_f64();
        let (count, p50, p99, max) = summarize(&shared.histogram.take());
        let errors = shared.errors.load(Ordering::Relaxed) - errors_before;
        let rss = crate::idle::rss_kib(std::process::id()).unwrap_or(0);
        let measured = CcuStep {
            clients: step,
            req_per_sec: count as f64 / held,
            p50_ms: p50,
            p99_ms: p99,
            max_ms: max,
            errors,
            generator_cpu: (cpu_seconds() - cpu_before) / held,
            generator_bytes_per_client: (rss * 1024) as f64 / step.max(1) as f64,
            server_rss_kib: o.server_pid.and_then(crate::idle::rss_kib),
            server_cpu: (!o.cpu_pids.is_empty())
                .then(|| (cpu_seconds_of_all(&o.cpu_pids) - server_before) / held),
        };
        eprintln!(
            "ccu {step:>6} clients: {:>8.0} req/s  p50 {:>7.2} ms  p99 {:>8.2} ms  max {:>8.1} ms  errors {errors}  generator {:.2} cores, {:.0} B/client",
            measured.req_per_sec, p50, p99, max, measured.generator_cpu, measured.generator_bytes_per_client
        );
        let ok = errors == 0 && p99 <= o.p99_target.as_secs_f64() * 1000.0;
        report.steps.push(measured);
        if !ok {
            break;
        }
        report.ccu = step;
    }
    shared.stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.abort();
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_values_within_six_percent() {
        for us in [0u64, 1, 31, 32, 33, 100, 999, 50_000, 1_234_567, 60_000_000] {
            let i = AtomicHistogram::index(us);
            let upper = AtomicHistogram::upper_us(i);
            assert!(upper > us, "{us} -> bucket {i} ends at {upper}");
            assert!(
                (upper - us) as f64 <= (us as f64 / 16.0).max(1.0) + 1.0,
                "{us} -> {upper}"
            );
        }
        let h = AtomicHistogram::new();
        for ms in 1..=100u64 {
            h.record(Duration::from_millis(ms));
        }
        let (n, p50, p99, max) = summarize(&h.take());
        assert_eq!(n, 100);
        assert!((48.0..=54.0).contains(&p50), "{p50}");
        assert!((97.0..=106.0).contains(&p99), "{p99}");
        assert!((100.0..=106.0).contains(&max), "{max}");
        assert_eq!(summarize(&h.take()).0, 0, "taking empties it");
    }
}

#[cfg(test)]
mod size_probe {
    /// Every byte of a player's task is paid per simulated client.
    #[test]
    fn a_player_task_stays_small() {
        let shared = std::sync::Arc::new(super::Shared {
            histogram: super::AtomicHistogram::new(),
            errors: Default::default(),
            stop: Default::default(),
            route: String::new(),
            body: Vec::new(),
            period: std::time::Duration::from_secs(1),
        });
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 1));
        let f = super::player(addr, (1, 0), shared, std::time::Duration::ZERO);
        let size = std::mem::size_of_val(&f);
        eprintln!("player future: {size} bytes");
        assert!(size <= 1024, "a player's task grew to {size} bytes");
    }
}
