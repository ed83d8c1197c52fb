//! `session-proxy admin …`: the cluster as the registry lists it, through
//! each node's admin address. Each admin action carries a bearer token
//! minted from `SESSION_PROXY_SECRET` for the one node it goes to, valid for
//! 30 s; the metrics fetch carries none.

use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};
use session_proxy::node::SECRET_VAR;
use session_proxy::protocol::Secret;
use session_proxy::registry::{NodeRecord, NodeRole};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// What to do.
#[derive(clap::Subcommand, Clone, Debug)]
pub enum AdminAction {
    /// Every node: id, role, type, state, clients, sessions, req/s, p99,
    /// RSS, uptime.
    Status,
    /// Every session of a uid, on every frontend.
    Sessions {
        /// The uid.
        #[arg(long)]
        uid: String,
    },
    /// Ends every session of a uid, on every frontend.
    Kick {
        /// The uid.
        #[arg(long)]
        uid: String,
        /// The reason its clients are told.
        #[arg(long, default_value = "kicked")]
        reason: String,
    },
    /// Drains one node, as a SIGTERM would. In a Kubernetes preStop hook,
    /// `session-proxy admin drain --wait-secs N` drains the pod's own node
    /// (its id from SESSION_PROXY_ID) and returns once it has left.
    Drain {
        /// The node's id.
        #[arg(env = "SESSION_PROXY_ID")]
        node: String,
        /// Wait up to this many seconds for the node to finish its drain and
        /// leave the registry (0: return once the drain has started).
        #[arg(long, default_value_t = 0)]
        wait_secs: u64,
    },
}

/// How long the admin token sent to a node lasts, in seconds.
const TOKEN_SECS: u64 = 30;

type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

/// One call to a node's admin address: the status and the body.
async fn call(
    client: &Client,
    node: &NodeRecord,
    method: hyper::Method,
    path: &str,
    secret: Option<&Secret>,
) -> anyhow::Result<(u16, String)> {
    let addr = node
        .admin_addr
        .as_deref()
        .with_context(|| format!("{} has no admin address", node.id))?;
    let mut request = hyper::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    if let Some(secret) = secret {
        // This node's token, for the next half minute: the address a
        // registry record names gets nothing it could use on another node,
        // or for long.
        let expires = session_proxy::protocol::unix_ms() / 1000 + TOKEN_SECS;
        let token = secret.admin_token(&node.id, expires);
        request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = request.body(Full::new(Bytes::new()))?;
    let exchange = async {
        let response = client.request(request).await?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes();
        anyhow::Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .with_context(|| format!("{} did not answer within 5 s", node.id))?
        .with_context(|| format!("calling {} at {addr}", node.id))
}

/// An admin action's JSON answer, or an error naming the node.
async fn action(
    client: &Client,
    node: &NodeRecord,
    method: hyper::Method,
    path: &str,
    secret: &Secret,
) -> anyhow::Result<Value> {
    let (status, body) = call(client, node, method, path, Some(secret)).await?;
    match status {
        200 => Ok(serde_json::from_str(&body)?),
        401 => bail!(
            "{} refused the admin token: is SESSION_PROXY_SECRET the cluster's?",
            node.id
        ),
        403 => bail!(
            "{} has no cluster secret, so it refuses admin actions",
            node.id
        ),
        _ => bail!("{} answered {status}: {}", node.id, body.trim()),
    }
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Requests answered so far and the latency histogram's cumulative
/// buckets, from one scrape.
#[derive(Default)]
struct Load {
    requests: f64,
    buckets: BTreeMap<String, f64>,
}

async fn load(client: &Client, node: &NodeRecord) -> Option<Load> {
    use prometheus_parse::Value as P;
    let (counter, histogram) = match node.role {
        NodeRole::Frontend => (
            "session_proxy_requests_total",
            "session_proxy_request_duration_seconds",
        ),
        NodeRole::Backend => (
            "session_proxy_backend_requests_total",
            "session_proxy_backend_handler_duration_seconds",
        ),
    };
    let (status, body) = call(client, node, hyper::Method::GET, "/metrics", None)
        .await
        .ok()?;
    if status != 200 {
        return None;
    }
    let scrape = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).ok()?;
    let mut load = Load::default();
    for s in &scrape.samples {
        match &s.value {
            P::Counter(v) if s.metric == counter => load.requests += v,
            P::Histogram(buckets) if s.metric == histogram => {
                for b in buckets {
                    *load.buckets.entry(format!("{}", b.less_than)).or_default() += b.count;
                }
            }
            _ => {}
        }
    }
    Some(load)
}

/// The p99 (seconds, a bucket bound) of what happened between two scrapes.
fn p99(before: &Load, after: &Load) -> Option<f64> {
    let mut deltas: Vec<(f64, f64)> = after
        .buckets
        .iter()
        .filter_map(|(le, n)| {
            let bound: f64 = le.parse().ok()?;
            Some((bound, n - before.buckets.get(le).copied().unwrap_or(0.0)))
        })
        .collect();
    deltas.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = deltas.last()?.1;
    if total <= 0.0 {
        return None;
    }
    deltas
        .iter()
        .find(|(_, n)| *n >= total * 0.99)
        .map(|(le, _)| *le)
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Runs one admin action against the cluster in `registry`.
pub async fn run(registry: &str, json_out: bool, what: AdminAction) -> anyhow::Result<()> {
    let membership = session_proxy::cli::connect_registry(registry).await?;
    let mut watch = membership.watch();
    let members = watch.borrow_and_update().clone();
    let secret = Secret::from_env(SECRET_VAR)
        .context("set SESSION_PROXY_SECRET to the cluster secret: admin actions need it")?;
    let client: Client =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let nodes: Vec<NodeRecord> = members.iter().cloned().collect();
    let frontends: Vec<&NodeRecord> = nodes
        .iter()
        .filter(|n| n.role == NodeRole::Frontend)
        .collect();
    let out = match what {
        AdminAction::Status => {
            let started = Instant::now();
            let before = futures::future::join_all(nodes.iter().map(|n| load(&client, n))).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            let after = futures::future::join_all(nodes.iter().map(|n| load(&client, n))).await;
            let elapsed = started.elapsed().as_secs_f64().max(0.001);
            let mut rows = Vec::new();
            for (i, node) in nodes.iter().enumerate() {
                let info = match node.admin_addr {
                    Some(_) => action(&client, node, hyper::Method::GET, "/admin/info", &secret)
                        .await
                        .unwrap_or_else(|e| json!({ "error": e.to_string() })),
                    None => json!({}),
                };
                let (rate, p99_ms) = match (&before[i], &after[i]) {
                    (Some(b), Some(a)) => (
                        json!(((a.requests - b.requests) / elapsed).round()),
                        p99(b, a).map_or(Value::Null, |s| json!(s * 1000.0)),
                    ),
                    _ => (Value::Null, Value::Null),
                };
                rows.push(json!({
                    "id": node.id,
                    "role": node.role,
                    "type": node.server_type,
                    "state": node.state,
                    "clients": info.get("clients").cloned().unwrap_or(json!(node.clients)),
                    "sessions": info.get("sessions").cloned().unwrap_or(Value::Null),
                    "req_per_sec": rate,
                    "p99_ms": p99_ms,
                    "rss_mib": info.get("rss_bytes").and_then(Value::as_u64).map(|b| b / (1 << 20)),
                    "uptime_secs": info.get("uptime_secs").cloned().unwrap_or(Value::Null),
                    "admin_addr": node.admin_addr,
                }));
            }
            if !json_out {
                let columns = [
                    ("ID", "id"),
                    ("ROLE", "role"),
                    ("TYPE", "type"),
                    ("STATE", "state"),
                    ("CLIENTS", "clients"),
                    ("SESSIONS", "sessions"),
                    ("REQ/S", "req_per_sec"),
                    ("P99 MS", "p99_ms"),
                    ("RSS MIB", "rss_mib"),
                    ("UPTIME S", "uptime_secs"),
                ];
                let cells: Vec<Vec<String>> = rows
                    .iter()
                    .map(|r| columns.iter().map(|(_, k)| cell(&r[*k])).collect())
                    .collect();
                let widths: Vec<usize> = columns
                    .iter()
                    .enumerate()
                    .map(|(i, (h, _))| {
                        cells
                            .iter()
                            .map(|c| c[i].len())
                            .chain([h.len()])
                            .max()
                            .unwrap_or(0)
                    })
                    .collect();
                let line = |items: Vec<String>| {
                    items
                        .iter()
                        .zip(&widths)
                        .map(|(s, w)| format!("{s:<w$}"))
                        .collect::<Vec<_>>()
                        .join("  ")
                };
                println!(
                    "{}",
                    line(columns.iter().map(|(h, _)| h.to_string()).collect())
                );
                for c in cells {
                    println!("{}", line(c));
                }
                return Ok(());
            }
            json!(rows)
        }
        AdminAction::Sessions { uid } => {
            let path = format!("/admin/sessions?uid={}", encode(&uid));
            let mut found = BTreeMap::new();
            for node in &frontends {
                let list = action(&client, node, hyper::Method::GET, &path, &secret).await?;
                for s in list.as_array().cloned().unwrap_or_default() {
                    let key = format!("{}/{}", cell(&s["frontend_id"]), cell(&s["sid"]));
                    found.insert(key, s);
                }
            }
            let list: Vec<Value> = found.into_values().collect();
            if !json_out {
                println!("{} session(s) of {uid}", list.len());
                for s in &list {
                    println!(
                        "  frontend {}  parked {}  from {}",
                        cell(&s["frontend_id"]),
                        cell(&s["parked"]),
                        cell(&s["remote_addr"]),
                    );
                }
                return Ok(());
            }
            json!(list)
        }
        AdminAction::Kick { uid, reason } => {
            let path = format!(
                "/admin/kick?uid={}&reason={}",
                encode(&uid),
                encode(&reason)
            );
            let mut by_node = BTreeMap::new();
            for node in &frontends {
                let answer = action(&client, node, hyper::Method::POST, &path, &secret).await?;
                by_node.insert(node.id.clone(), answer["kicked"].clone());
            }
            let total: u64 = by_node.values().filter_map(Value::as_u64).sum();
            if !json_out {
                println!("kicked {total} session(s) of {uid}");
                return Ok(());
            }
            json!({ "kicked": total, "by_node": by_node })
        }
        AdminAction::Drain { node, wait_secs } => {
            let target = nodes
                .iter()
                .find(|n| n.id == node)
                .with_context(|| format!("no node {node} in the registry"))?;
            let mut answer = action(
                &client,
                target,
                hyper::Method::POST,
                "/admin/drain",
                &secret,
            )
            .await?;
            if wait_secs > 0 {
                let within = Duration::from_secs(wait_secs);
                let left = tokio::time::timeout(within, async {
                    while watch.borrow_and_update().iter().any(|n| n.id == node) {
                        if watch.changed().await.is_err() {
                            return false;
                        }
                    }
                    true
                })
                .await;
                if left != Ok(true) {
                    bail!("{node} is draining, but still registered after {wait_secs} s");
                }
                answer["left"] = json!(true);
            }
            if !json_out {
                match wait_secs {
                    0 => println!("{node} is draining"),
                    _ => println!("{node} drained and left"),
                }
                return Ok(());
            }
            answer
        }
    };
    println!("{out}");
    Ok(())
}
