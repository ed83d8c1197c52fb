//! Request/response load and channel fan-out.

use super::{histogram, progress, BenchResult};
use anyhow::{bail, Context};
use bytes::{Bytes, BytesMut};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use session_proxy_client::raw::{open, package, Io};
use session_proxy_client::Transport;
use session_proxy_protocol::client::{
    encode_parts, ClientMessage, MessageType, PackageCodec, PackageType, Route, MAX_PACKAGE_BODY,
};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::{sleep_until, Instant};
use tokio_util::codec::Decoder;

/// Options of a request/response run.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct LoadOptions {
    /// The server's client address.
    pub target: SocketAddr,
    /// TCP or WebSocket.
    pub transport: Transport,
    /// Connected clients.
    pub clients: usize,
    /// How long to measure.
    pub duration: Duration,
    /// Unmeasured warm-up before.
    pub warmup: Duration,
    /// Total requests per second for an open loop; `None`: closed loop.
    pub rate: Option<f64>,
    /// The route each request goes to.
    pub route: String,
    /// The request body; `{i}` in it (and in `setup`'s) is replaced by each
    /// client's number.
    pub body: Value,
    /// Requests sent per client before measuring (e.g. a login route).
    pub setup: Vec<(String, Value)>,
}

impl LoadOptions {
    /// A closed-loop echo run against `target`.
    pub fn new(target: SocketAddr) -> Self {
        LoadOptions {
            target,
            transport: Transport::Tcp,
            clients: 50,
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(1),
            rate: None,
            route: "chat.benchHandler.echo".into(),
            body: json!({ "msg": "hello" }),
            setup: Vec::new(),
        }
    }
}

/// One bench connection: a socket owned by one task, no other machinery.
pub(crate) struct Conn {
    io: Io,
    codec: PackageCodec,
    buf: BytesMut,
    next_id: u64,
    heartbeat: Option<Duration>,
    next_beat: Instant,
    /// The resume token of the handshake reply, if the server gave one.
    token: Option<String>,
}

impl Conn {
    pub(crate) async fn open(
        target: SocketAddr,
        transport: Transport,
        user: &Value,
    ) -> anyhow::Result<Conn> {
        let (io, codec, buf, handshake) = open(target, transport, user, None).await?;
        let heartbeat = handshake["sys"]["heartbeat"]
            .as_u64()
            .filter(|s| *s > 0)
            .map(Duration::from_secs);
        Ok(Conn {
            io,
            codec,
            buf,
            next_id: 1,
            heartbeat,
            next_beat: Instant::now() + heartbeat.unwrap_or(Duration::from_secs(3600)),
            token: handshake["user"]["resumeToken"]
                .as_str()
                .map(str::to_string),
        })
    }

    /// The token that resumes this connection's session elsewhere or later.
    pub(crate) fn resume_token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    fn encode(&mut self, route: &str, body: &[u8]) -> anyhow::Result<(u64, Bytes)> {
        let id = self.next_id;
        self.next_id += 1;
        let mut out = BytesMut::new();
        PackageCodec::new(MAX_PACKAGE_BODY).encode_with(PackageType::Data, &mut out, |b| {
            encode_parts(
                MessageType::Request,
                id,
                &Route::Name(route.to_string()),
                body,
                b,
            )
        })?;
        Ok((id, out.freeze()))
    }

    async fn beat_if_due(&mut self) -> anyhow::Result<()> {
        if let Some(hb) = self.heartbeat {
            if Instant::now() >= self.next_beat {
                self.io.write(package(PackageType::Heartbeat, &[])?).await?;
                self.next_beat = Instant::now() + hb;
            }
        }
        Ok(())
    }

    /// The next data message from the server.
    async fn next_message(&mut self) -> anyhow::Result<ClientMessage> {
        loop {
            while let Some(p) = self.codec.decode(&mut self.buf)? {
                match p.kind {
                    PackageType::Data => return Ok(ClientMessage::decode(p.body)?),
                    PackageType::Heartbeat => {}
                    PackageType::Kick => bail!("kicked: {}", String::from_utf8_lossy(&p.body)),
                    other => bail!("unexpected {other:?}"),
                }
            }
            if !self.io.read(&mut self.buf).await? {
                bail!("the server closed the connection");
            }
        }
    }

    /// Sends a request and waits for its response, skipping pushes.
    pub(crate) async fn request(&mut self, route: &str, body: &Value) -> anyhow::Result<Value> {
        self.beat_if_due().await?;
        let (id, bytes) = self.encode(route, body.to_string().as_bytes())?;
        self.io.write(bytes).await?;
        loop {
            let m = self.next_message().await?;
            if m.kind == MessageType::Response && m.id == id {
                return Ok(serde_json::from_slice(&m.body)?);
            }
        }
    }

    /// The next push's body, skipping anything else.
    pub(crate) async fn next_push(&mut self) -> anyhow::Result<Value> {
        loop {
            self.beat_if_due().await?;
            let m = self.next_message().await?;
            if m.kind == MessageType::Push {
                return Ok(serde_json::from_slice(&m.body)?);
            }
        }
    }
}

/// Runs request/response load; every client runs its own loop.
pub async fn load(o: LoadOptions) -> anyhow::Result<BenchResult> {
    let mut conns = Vec::with_capacity(o.clients);
    for i in 0..o.clients {
        let mut c = Conn::open(o.target, o.transport, &json!({}))
            .await
            .with_context(|| format!("client {i} could not connect to {}", o.target))?;
        for (route, body) in &o.setup {
            let body = serde_json::to_string(body)?.replace("{i}", &i.to_string());
            c.request(route, &serde_json::from_str(&body)?).await?;
        }
        conns.push(c);
    }
    // `{i}` in the body is each client's number (a uid of its own).
    let body = o.body.to_string();
    let start = Instant::now() + o.warmup;
    let end = start + o.duration;
    let ops = Arc::new(AtomicU64::new(0));
    // Open loop: one pacing thread says when each request is due, round
    // robin over the clients. Tokio's timers fire on a 1 ms grid, which
    // added up to a millisecond to every open-loop sample (latency counts
    // from when a request was due); a thread sleeping to each due time is
    // late by tens of microseconds.
    let mut pacers = Vec::new();
    let pacer = match o.rate {
        Some(rate) => {
            let (txs, rxs): (Vec<_>, Vec<_>) = (0..o.clients)
                .map(|_| tokio::sync::mpsc::unbounded_channel())
                .unzip();
            pacers = rxs;
            let period = Duration::from_secs_f64(1.0 / rate.max(0.001));
            let (first, end) = (Instant::now().into_std(), end.into_std());
            Some(
                std::thread::Builder::new()
                    .name("pacer".into())
                    .spawn(move || pace(txs, first, end, period))
                    .context("starting the pacing thread")?,
            )
        }
        None => None,
    };
    let mut pacers = pacers.into_iter();
    let mut tasks = Vec::new();
    for (i, c) in conns.into_iter().enumerate() {
        let body = Bytes::from(body.replace("{i}", &i.to_string()));
        let (route, ops) = (o.route.clone(), ops.clone());
        tasks.push(tokio::spawn(client_loop(
            c,
            route,
            body,
            start,
            end,
            pacers.next(),
            ops,
        )));
    }
    let total = o.warmup + o.duration;
    let t0 = Instant::now();
    let watcher = {
        let ops = ops.clone();
        tokio::spawn(async move {
            while Instant::now() < end {
                tokio::time::sleep(Duration::from_secs(1)).await;
                progress("rr", t0.elapsed(), total, ops.load(Ordering::Relaxed));
            }
        })
    };
    let mut h = histogram();
    let mut errors = 0;
    for t in tasks {
        let (ch, e) = t.await.context("a client task panicked")?;
        h.add(&ch)?;
        errors += e;
    }
    watcher.abort();
    if let Some(pacer) = pacer {
        pacer
            .join()
            .map_err(|_| anyhow::anyhow!("the pacing thread panicked"))?;
    }
    if o.duration >= Duration::from_secs(3) {
        eprintln!();
    }
    let seconds = o.duration.as_secs_f64();
    let mode = if o.rate.is_some() { "rr-open" } else { "rr" };
    let on = (o.target.to_string(), transport_name(o.transport));
    Ok(BenchResult::measured(mode, on, o.clients, seconds, (h.len(), errors)).with_latency(&h))
}

pub(crate) fn transport_name(t: Transport) -> String {
    match t {
        Transport::Tcp => "tcp".into(),
        Transport::WebSocket => "ws".into(),
    }
}

/// Hands out due times, `period` apart from `first` until `end`, to the
/// clients in turn; each client sends a request when told.
fn pace(
    clients: Vec<tokio::sync::mpsc::UnboundedSender<Instant>>,
    first: std::time::Instant,
    end: std::time::Instant,
    period: Duration,
) {
    if clients.is_empty() {
        return;
    }
    for k in 0u64.. {
        // From k, not by adding: no drift over a long run.
        let due = first + period.mul_f64(k as f64);
        if due >= end {
            return;
        }
        let now = std::time::Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let client = &clients[(k % clients.len() as u64) as usize];
        if client.send(Instant::from_std(due)).is_err() {
            return;
        }
    }
}

/// The next due time from the pacer, or never (closed loop, or the pacer
/// is done).
async fn next_due(pacer: &mut Option<tokio::sync::mpsc::UnboundedReceiver<Instant>>) -> Instant {
    match pacer {
        Some(rx) => match rx.recv().await {
            Some(due) => due,
            None => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

/// One client: closed loop (`pacer` is `None`: the next request leaves when
/// the answer arrives) or open loop (a request leaves whenever the pacer
/// says one is due, answered or not).
async fn client_loop(
    mut c: Conn,
    route: String,
    body: Bytes,
    start: Instant,
    end: Instant,
    mut pacer: Option<tokio::sync::mpsc::UnboundedReceiver<Instant>>,
    ops: Arc<AtomicU64>,
) -> (Histogram<u64>, u64) {
    let mut h = histogram();
    let mut errors = 0u64;
    let open_loop = pacer.is_some();
    // id -> when it was due (open loop) or sent (closed loop)
    let mut waiting: std::collections::HashMap<u64, Instant> = std::collections::HashMap::new();
    let result: anyhow::Result<()> = async {
        loop {
            let now = Instant::now();
            if now >= end && waiting.is_empty() {
                return Ok(());
            }
            if !open_loop && now < end && waiting.is_empty() {
                c.beat_if_due().await?;
                let (id, bytes) = c.encode(&route, &body)?;
                waiting.insert(id, now);
                c.io.write(bytes).await?;
                continue;
            }
            let wake = if now >= end {
                Some(end + Duration::from_secs(10))
            } else {
                None
            };
            let msg = tokio::select! {
                due = next_due(&mut pacer), if now < end => {
                    c.beat_if_due().await?;
                    let (id, bytes) = c.encode(&route, &body)?;
                    // Latency counts from when the request was due.
                    waiting.insert(id, due);
                    c.io.write(bytes).await?;
                    continue;
                }
                m = c.next_message() => m?,
                _ = sleep_until(wake.unwrap_or(end)) => {
                    if Instant::now() > end + Duration::from_secs(5) {
                        // Answers that never came count as errors.
                        errors += waiting.len() as u64;
                        return Ok(());
                    }
                    continue;
                }
            };
            if msg.kind != MessageType::Response {
                continue;
            }
            if let Some(sent) = waiting.remove(&msg.id) {
                if sent >= start && sent < end {
                    let us = sent.elapsed().as_micros() as u64;
                    h.saturating_record(us.max(1));
                    ops.fetch_add(1, Ordering::Relaxed);
                    if msg.body.first() == Some(&b'{')
                        && msg.body.windows(11).any(|w| w == b"\"code\":500,")
                    {
                        errors += 1;
                    }
                }
            }
        }
    }
    .await;
    if let Err(err) = result {
        tracing::debug!(cause = %err, "bench client ended");
        errors += 1 + waiting.len() as u64;
    }
    (h, errors)
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Channel fan-out: `clients` clients log in and join one channel; a
/// separate sender client asks for `pushes` channel pushes, one after the
/// other; every member measures how long each push took to reach it.
pub async fn fanout(
    target: SocketAddr,
    transport: Transport,
    clients: usize,
    pushes: usize,
    server_type: &str,
) -> anyhow::Result<BenchResult> {
    let route = |m: &str| format!("{server_type}.benchHandler.{m}");
    let channel = format!("fan-{}", now_us());
    let mut members = Vec::with_capacity(clients);
    for i in 0..clients {
        let mut c = Conn::open(target, transport, &json!({})).await?;
        c.request(&route("login"), &json!({ "uid": format!("fan{i}") }))
            .await?;
        c.request(&route("join"), &json!({ "channel": channel }))
            .await?;
        members.push(c);
    }
    let mut sender = Conn::open(target, transport, &json!({})).await?;
    sender
        .request(&route("login"), &json!({ "uid": "fan-sender" }))
        .await?;
    // Each member keeps its delays in a small vector, made before the
    // first push: a histogram per member (about 150 KiB each) was allocated
    // and zeroed while the first push arrived, and slowed the members down
    // in the very measurement.
    let receivers: Vec<_> = members
        .into_iter()
        .map(|mut c| {
            let mut delays = Vec::with_capacity(pushes);
            tokio::spawn(async move {
                for _ in 0..pushes {
                    let v = tokio::time::timeout(Duration::from_secs(30), c.next_push()).await??;
                    let sent = v["msg"].as_u64().unwrap_or(0);
                    delays.push(now_us().saturating_sub(sent).max(1));
                }
                anyhow::Ok(delays)
            })
        })
        .collect();
    let t0 = Instant::now();
    for _ in 0..pushes {
        let answer = sender
            .request(
                &route("fanout"),
                &json!({ "channel": channel, "msg": now_us() }),
            )
            .await?;
        if answer["code"] != 200 {
            bail!("fanout answered {answer}");
        }
    }
    let mut h = histogram();
    let mut errors = 0;
    for r in receivers {
        match r.await? {
            Ok(delays) => {
                for us in delays {
                    h.saturating_record(us);
                }
            }
            Err(_) => errors += 1,
        }
    }
    let seconds = t0.elapsed().as_secs_f64();
    let on = (target.to_string(), transport_name(transport));
    Ok(BenchResult::measured("fanout", on, clients, seconds, (h.len(), errors)).with_latency(&h))
}
