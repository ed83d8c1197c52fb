//! The admin address of real node processes: every documented metric is
//! exported with its type (read with a Prometheus text parser), a real
//! Prometheus scrapes two nodes and sees the clients and requests the test
//! made, and `/readyz` turns unready on a lost store and on a drain.

use crate::common;

use common::http::get;
use common::nodes::{free_port, sigkill, signal, spawn_session_proxy_env};
use common::redis::RedisServer;
use serde_json::{json, Value};
use session_proxy_client::PomeloClient;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::process::Child;

const WAIT: Duration = Duration::from_secs(10);

struct Node {
    child: Child,
    admin: SocketAddr,
    clients: Option<SocketAddr>,
}

/// `session-proxy run` with an admin address, registered in `redis`.
async fn node(role: &str, id: &str, redis: &str) -> Node {
    node_env(role, id, redis, &[]).await
}

/// Like [`node`], with environment variables set.
async fn node_env(role: &str, id: &str, redis: &str, env: &[(&str, &str)]) -> Node {
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let admin_arg = admin.to_string();
    let mut args = vec![
        "run".to_string(),
        "--role".into(),
        role.into(),
        "--id".into(),
        id.into(),
        "--registry".into(),
        redis.into(),
        "--admin-addr".into(),
        admin_arg,
        "--lease-secs".into(),
        "3".into(),
    ];
    let mut clients = None;
    if role == "frontend" {
        let client_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        clients = Some(client_addr);
        args.extend(
            [
                "--type",
                "connector",
                "--rpc-addr",
                &format!("127.0.0.1:{}", free_port()),
                "--client-addr",
                &client_addr.to_string(),
                "--redis",
                redis,
            ]
            .map(str::to_string),
        );
    } else {
        args.extend(["--type", "chat"].map(str::to_string));
    }
    let (child, _) = spawn_session_proxy_env(&args, env, &format!("ready {id}")).await;
    Node {
        child,
        admin,
        clients,
    }
}

/// The bench app's `sleep` request for `ms`, sent on a task of its own.
fn sleep_in_flight(
    client: &std::sync::Arc<PomeloClient>,
    ms: u64,
) -> tokio::task::JoinHandle<Result<Value, session_proxy_client::ClientError>> {
    let client = client.clone();
    tokio::spawn(async move {
        client
            .request("chat.benchHandler.sleep", &json!({ "ms": ms }))
            .await
    })
}

/// A frontend and a backend registered in a fresh Redis.
async fn cluster() -> Option<(RedisServer, Node, Node)> {
    let redis = RedisServer::start()?;
    let front = node("frontend", "connector-1", &redis.url()).await;
    let back = node("backend", "chat-1", &redis.url()).await;
    Some((redis, front, back))
}

/// A client of the frontend that has had `n` echoes answered.
async fn client_with_echoes(front: &Node, n: usize) -> PomeloClient {
    let client = PomeloClient::connect(front.clients.expect("a frontend"))
        .await
        .expect("connect");
    let started = Instant::now();
    let mut answered = 0;
    while answered < n {
        let answer = client
            .request("chat.benchHandler.echo", &json!({ "n": answered }))
            .await;
        if answer.ok() == Some(json!({ "n": answered })) {
            answered += 1;
        } else {
            assert!(started.elapsed() < WAIT, "no backend serves the frontend");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    client
}

/// The metrics a node exports, parsed.
async fn scrape(node: &Node) -> prometheus_parse::Scrape {
    let (status, body) = get(node.admin, "/metrics").await.expect("scrape");
    assert_eq!(status, 200);
    prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).expect("parses")
}

/// The kind prometheus-parse read for each metric name.
fn kinds(scrape: &prometheus_parse::Scrape) -> HashMap<String, &'static str> {
    use prometheus_parse::Value;
    scrape
        .samples
        .iter()
        .map(|s| {
            let kind = match s.value {
                Value::Counter(_) => "counter",
                Value::Gauge(_) => "gauge",
                Value::Histogram(_) => "histogram",
                Value::Summary(_) => "summary",
                Value::Untyped(_) => "untyped",
            };
            (s.metric.clone(), kind)
        })
        .collect()
}

fn value(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    use prometheus_parse::Value;
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .and_then(|s| match s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => Some(v),
            _ => None,
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_metric_is_exported_with_its_type() {
    let Some((_redis, mut front, mut back)) = cluster().await else {
        return;
    };
    let _client = client_with_echoes(&front, 5).await;
    let front_scrape = scrape(&front).await;
    let back_scrape = scrape(&back).await;
    let (front_kinds, back_kinds) = (kinds(&front_scrape), kinds(&back_scrape));
    use session_proxy::{backend, filters, frontend, registry};
    let common = || registry::EXPORTED.iter().chain(filters::EXPORTED);
    for (name, kind) in frontend::metrics::EXPORTED.iter().chain(common()) {
        assert_eq!(front_kinds.get(*name), Some(kind), "frontend {name}");
    }
    for (name, kind) in backend::metrics::EXPORTED.iter().chain(common()) {
        assert_eq!(back_kinds.get(*name), Some(kind), "backend {name}");
    }
    for kinds in [&front_kinds, &back_kinds] {
        assert_eq!(kinds.get("process_resident_memory_bytes"), Some(&"gauge"));
        assert_eq!(kinds.get("process_open_fds"), Some(&"gauge"));
    }
    // The values say what happened.
    let connected = value(
        &front_scrape,
        frontend::metrics::CLIENTS_CONNECTED,
        &[("transport", "tcp")],
    );
    assert_eq!(connected, Some(1.0));
    let ok = value(
        &front_scrape,
        frontend::metrics::REQUESTS,
        &[("route", "chat"), ("status", "ok")],
    );
    assert!(ok.is_some_and(|n| n >= 5.0), "{ok:?}");
    let handled = value(
        &back_scrape,
        backend::metrics::HANDLED,
        &[("route", "chat.benchHandler.echo"), ("status", "ok")],
    );
    assert!(handled.is_some_and(|n| n >= 5.0), "{handled:?}");
    // The backend's calls to the frontend, by kind: the echo backend only
    // pings (its link is idle), so at least the series exist.
    assert!(
        value(&back_scrape, backend::metrics::CALLS, &[("kind", "bind")]).is_some(),
        "no per-kind call series"
    );
    // No uid or sid ever becomes a label.
    for s in front_scrape.samples.iter().chain(&back_scrape.samples) {
        for (k, _) in s.labels.iter() {
            assert!(
                [
                    "route",
                    "status",
                    "result",
                    "reason",
                    "state",
                    "transport",
                    "direction",
                    "backend",
                    "kind",
                    "filter",
                    "rule"
                ]
                .contains(&k.as_str()),
                "{} has label {k}",
                s.metric
            );
        }
    }
    sigkill(&mut back.child).await;
    sigkill(&mut front.child).await;
}

#[test]
fn the_readme_documents_exactly_the_exported_metrics() {
    let readme = include_str!("../../README.md");
    // Metric names, not crate paths (`session_proxy_client::…`).
    let documented: std::collections::BTreeSet<&str> = readme
        .match_indices("session_proxy_")
        .map(|(at, _)| {
            let rest = &readme[at..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            (&rest[..end], rest[end..].starts_with("::"))
        })
        .filter(|(w, path)| !path && w.len() > "session_proxy_".len())
        .map(|(w, _)| w)
        .collect();
    let exported: std::collections::BTreeSet<&str> = session_proxy::admin::exported()
        .map(|(name, _)| name)
        .collect();
    assert_eq!(documented, exported);
}

/// Every query of the Grafana dashboard.
fn dashboard_queries() -> Vec<String> {
    let dashboard: serde_json::Value =
        serde_json::from_str(include_str!("../../deploy/grafana/session-proxy.json"))
            .expect("the dashboard is JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 10, "{} panels", panels.len());
    panels
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn the_dashboard_queries_only_metrics_the_nodes_export() {
    let exported: std::collections::BTreeSet<&str> = session_proxy::admin::exported()
        .map(|(name, _)| name)
        .collect();
    for expr in dashboard_queries() {
        let names = expr
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("session_proxy_"));
        for name in names {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            assert!(exported.contains(base), "{expr}: no node exports {name}");
        }
    }
}

/// Waits until `/readyz` of `node` answers `want`.
async fn readyz_becomes(node: &Node, want: u16, why: &str) {
    let started = Instant::now();
    loop {
        if let Ok((status, _)) = get(node.admin, "/readyz").await {
            if status == want {
                return;
            }
        }
        assert!(
            started.elapsed() < WAIT,
            "/readyz never answered {want} ({why})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_turns_unready_on_a_lost_store_and_on_a_drain() {
    let Some((mut redis, mut front, mut back)) = cluster().await else {
        return;
    };
    let client = client_with_echoes(&front, 1).await;
    assert_eq!(get(front.admin, "/healthz").await.expect("healthz").0, 200);
    readyz_becomes(&front, 200, "serving").await;
    redis.kill();
    readyz_becomes(&front, 503, "the store is gone").await;
    assert_eq!(get(front.admin, "/healthz").await.expect("healthz").0, 200);
    redis.start_again();
    readyz_becomes(&front, 200, "the store is back").await;

    // A request in flight keeps the drain going for a while: unready all
    // through it, and alive. (The backend dials the frontend again once
    // the frontend's record is back in the restarted registry.)
    common::eventually(WAIT, "the backend serves again", || async {
        match client.request("chat.benchHandler.echo", &json!({})).await {
            Ok(answer) if answer == json!({}) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    // The echo above may have taken the backend's link from before the
    // restart: the backend's record came back with the registry, and the
    // frontend may drop that link and take the new one a moment later, so
    // a request meanwhile finds no backend. The sleep is sent again until
    // one runs.
    let client = std::sync::Arc::new(client);
    let slow = common::eventually(WAIT, "a sleep request runs on the backend", || {
        let client = client.clone();
        async move {
            let mut slow = sleep_in_flight(&client, 2500);
            tokio::select! {
                () = common::nodes::sleeping(&client, 1) => {}
                ended = &mut slow => return Err(format!("ended before it ran: {ended:?}")),
            }
            Ok(slow)
        }
    })
    .await;
    signal(front.child.id().expect("pid"), "TERM");
    readyz_becomes(&front, 503, "draining").await;
    assert!(
        front.child.try_wait().expect("wait").is_none(),
        "still draining"
    );
    let _ = slow.await;
    let status = tokio::time::timeout(WAIT, front.child.wait())
        .await
        .expect("exits")
        .expect("wait");
    assert!(status.success(), "{status:?}");
    // The backend is ready while it serves.
    readyz_becomes(&back, 200, "backend serving").await;
    sigkill(&mut back.child).await;
}

/// A real Prometheus on a free loopback port scraping `targets` every
/// second, stopped by its PID on drop.
struct Prometheus {
    child: std::process::Child,
    addr: SocketAddr,
    dir: std::path::PathBuf,
}

impl Prometheus {
    fn start(targets: &[SocketAddr]) -> Option<Prometheus> {
        let binary = std::env::var("PROMETHEUS").unwrap_or_else(|_| "prometheus".into());
        if std::process::Command::new(&binary)
            .arg("--version")
            .output()
            .is_err()
        {
            if std::env::var_os("CI").is_some() {
                panic!("prometheus is required in CI (.ci/run installs it)");
            }
            eprintln!("SKIPPED: {binary} is not installed; install prometheus to run this test");
            return None;
        }
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("sp-prom-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: session-proxy\n    \
             static_configs:\n      - targets: [{}]\n",
            targets.join(", ")
        );
        let config_path = dir.join("prometheus.yml");
        std::fs::write(&config_path, config).expect("config");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let child = std::process::Command::new(&binary)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("prometheus starts");
        Some(Prometheus { child, addr, dir })
    }

    /// An instant query's answer, if Prometheus accepted it.
    async fn answer(&self, promql: &str) -> Option<serde_json::Value> {
        let encoded: String = promql
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect();
        let (status, body) = get(self.addr, &format!("/api/v1/query?query={encoded}"))
            .await
            .ok()?;
        if status != 200 {
            return None;
        }
        let answer: serde_json::Value = serde_json::from_str(&body).ok()?;
        (answer["status"] == "success").then_some(answer)
    }

    /// The value of an instant query's single result, if it has one.
    async fn query(&self, promql: &str) -> Option<f64> {
        let answer = self.answer(promql).await?;
        answer["data"]["result"][0]["value"][1]
            .as_str()?
            .parse()
            .ok()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_both_nodes_and_sees_clients_and_requests() {
    let Some((_redis, mut front, mut back)) = cluster().await else {
        return;
    };
    let Some(prometheus) = Prometheus::start(&[front.admin, back.admin]) else {
        sigkill(&mut back.child).await;
        sigkill(&mut front.child).await;
        return;
    };
    let _a = client_with_echoes(&front, 10).await;
    let _b = client_with_echoes(&front, 10).await;
    let started = Instant::now();
    let wanted = [
        ("count(up == 1)", 2.0),
        ("sum(session_proxy_clients_connected)", 2.0),
        (
            "sum(session_proxy_requests_total{route=\"chat\",status=\"ok\"})",
            20.0,
        ),
        (
            "sum(session_proxy_backend_requests_total{route=\"chat.benchHandler.echo\",status=\"ok\"})",
            20.0,
        ),
    ];
    for (promql, want) in wanted {
        loop {
            let got = prometheus.query(promql).await;
            if got.is_some_and(|v| v >= want) {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{promql}: {got:?}, want {want}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    // Every dashboard query runs, and finds series.
    for expr in dashboard_queries() {
        let answer = prometheus.answer(&expr).await;
        assert!(answer.is_some(), "Prometheus refused {expr}");
    }
    let found = prometheus
        .answer("sum by (instance) (session_proxy_clients_connected)")
        .await
        .expect("answered");
    assert_eq!(found["data"]["result"].as_array().map(Vec::len), Some(1));
    drop(prometheus);
    sigkill(&mut back.child).await;
    sigkill(&mut front.child).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_a_line_with_the_same_fields_and_hashed_sids() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let (rpc, clients) = (free_port(), free_port());
    let client_addr: SocketAddr = format!("127.0.0.1:{clients}").parse().expect("addr");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_session-proxy"))
        // The bench app's routes, asked for by name.
        .env("SESSION_PROXY_APP", "bench")
        .args(["--log-format", "json", "frontend", "--id", "f-json"])
        .args(["--rpc-addr", &format!("127.0.0.1:{rpc}")])
        .args(["--client-addr", &client_addr.to_string()])
        .env("RUST_LOG", "session_proxy_frontend=debug")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("starts");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    // A client comes and goes: its session is logged by tag, not by id.
    let started = Instant::now();
    let client = loop {
        match PomeloClient::connect(client_addr).await {
            Ok(c) => break c,
            Err(_) if started.elapsed() < WAIT => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(err) => panic!("the frontend never served: {err}"),
        }
    };
    let token = client.handshake()["user"]["resumeToken"]
        .as_str()
        .expect("a token")
        .to_string();
    let raw_sid = token[..16].to_string();
    client.close();
    let mut seen = Vec::new();
    while let Ok(Ok(Some(line))) =
        tokio::time::timeout(Duration::from_millis(1500), lines.next_line()).await
    {
        let object: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            object["level"].is_string() && object["target"].is_string(),
            "{line}"
        );
        assert!(
            !line.contains(&raw_sid),
            "a raw session id was logged: {line}"
        );
        assert!(!line.contains(&token[16..]), "a token was logged: {line}");
        seen.push(object);
    }
    let parked = seen
        .iter()
        .find(|o| o["fields"]["message"] == "session parked")
        .expect("the park was logged");
    assert!(parked["fields"]["sid"].is_string(), "{parked}");
    sigkill(&mut child).await;
}

const SECRET: &str = "an-admin-test-secret";

/// `session-proxy admin --registry … --json <args>` with `secret`: its
/// exit status and what it printed.
async fn admin_cli(redis: &str, secret: Option<&str>, args: &[&str]) -> (bool, Value) {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_session-proxy"));
    command
        .args(["admin", "--registry", redis, "--json"])
        .args(args)
        .env_remove("SESSION_PROXY_SECRET")
        .kill_on_drop(true);
    if let Some(s) = secret {
        command.env("SESSION_PROXY_SECRET", s);
    }
    let out = tokio::time::timeout(WAIT, command.output())
        .await
        .expect("the admin command ends")
        .expect("runs");
    let printed = String::from_utf8_lossy(&out.stdout);
    (
        out.status.success(),
        serde_json::from_str(printed.trim()).unwrap_or(Value::Null),
    )
}

async fn login(front: &Node, uid: &str) -> PomeloClient {
    let client = client_with_echoes(front, 1).await;
    let answer = client
        .request("chat.benchHandler.login", &json!({ "uid": uid }))
        .await
        .expect("login");
    assert_eq!(answer["code"], 200);
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_cli_lists_kicks_and_drains_and_refuses_callers_without_the_secret() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let url = redis.url();
    let env = [("SESSION_PROXY_SECRET", SECRET)];
    let a = node_env("frontend", "connector-a", &url, &env).await;
    let mut b = node_env("frontend", "connector-b", &url, &env).await;
    let mut back = node_env("backend", "chat-1", &url, &env).await;
    let mut ann_a = login(&a, "ann").await;
    let mut ann_b = login(&b, "ann").await;
    let _bob = login(&a, "bob").await;

    // status: every node, with its clients.
    let (ok, status) = admin_cli(&url, Some(SECRET), &["status"]).await;
    assert!(ok, "{status}");
    let rows = status.as_array().expect("rows");
    assert_eq!(rows.len(), 3, "{status}");
    let clients = |id: &str| {
        rows.iter()
            .find(|r| r["id"] == id)
            .map(|r| r["clients"].clone())
            .unwrap_or(Value::Null)
    };
    assert_eq!(clients("connector-a"), json!(2), "{status}");
    assert_eq!(clients("connector-b"), json!(1), "{status}");
    assert!(rows.iter().all(|r| r["uptime_secs"].is_u64()), "{status}");

    // sessions and kick, across both frontends.
    let (ok, sessions) = admin_cli(&url, Some(SECRET), &["sessions", "--uid", "ann"]).await;
    assert!(ok);
    assert_eq!(sessions.as_array().map(Vec::len), Some(2), "{sessions}");
    let (ok, kicked) = admin_cli(
        &url,
        Some(SECRET),
        &["kick", "--uid", "ann", "--reason", "banned"],
    )
    .await;
    assert!(ok);
    assert_eq!(kicked["kicked"], json!(2), "{kicked}");
    for client in [&mut ann_a, &mut ann_b] {
        let event = client.next_event(WAIT).await;
        assert!(
            matches!(&event, Some(session_proxy_client::PomeloEvent::Kick { reason }) if reason == "banned"),
            "{event:?}"
        );
    }
    let (_, left) = admin_cli(&url, Some(SECRET), &["sessions", "--uid", "bob"]).await;
    assert_eq!(left.as_array().map(Vec::len), Some(1), "bob stays: {left}");

    // Without the secret, or with another, nothing is done.
    let (ok, _) = admin_cli(&url, None, &["kick", "--uid", "bob"]).await;
    assert!(!ok, "ran without a secret");
    let (ok, _) = admin_cli(&url, Some("not-the-secret"), &["kick", "--uid", "bob"]).await;
    assert!(!ok, "ran with a wrong secret");
    let (status, _) = get(a.admin, "/admin/info").await.expect("answers");
    assert_eq!(status, 401);
    let (_, left) = admin_cli(&url, Some(SECRET), &["sessions", "--uid", "bob"]).await;
    assert_eq!(
        left.as_array().map(Vec::len),
        Some(1),
        "bob still there: {left}"
    );

    // drain: the node drains as on SIGTERM and exits 0.
    let (ok, drained) = admin_cli(&url, Some(SECRET), &["drain", "connector-b"]).await;
    assert!(ok, "{drained}");
    let exit = tokio::time::timeout(WAIT + WAIT, b.child.wait())
        .await
        .expect("the drained node exits")
        .expect("wait");
    assert!(exit.success(), "{exit:?}");
    sigkill(&mut back.child).await;
    let mut a = a;
    sigkill(&mut a.child).await;
}

/// Kubernetes' order at a pod's end: the preStop hook
/// (`session-proxy admin drain --wait-secs N`, the node's id from
/// SESSION_PROXY_ID) drains the node, then SIGTERM comes, at the latest
/// when the hook's time is up. The SIGTERM must not cut the drain short.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prestop_drain_waits_for_the_node_and_a_sigterm_after_it_does_not_cut_the_drain() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let url = redis.url();
    let env = [("SESSION_PROXY_SECRET", SECRET)];
    let mut front = node_env("frontend", "connector-p", &url, &env).await;
    let mut back = node_env("backend", "chat-1", &url, &env).await;
    let client = std::sync::Arc::new(client_with_echoes(&front, 1).await);
    // A request in flight keeps the drain going for a while (within the
    // gateway's shutdown grace, 1 s, so it is answered).
    let slow = sleep_in_flight(&client, 800);
    common::nodes::sleeping(&client, 1).await;

    let hook = tokio::spawn({
        let url = url.clone();
        async move {
            tokio::process::Command::new(env!("CARGO_BIN_EXE_session-proxy"))
                .args(["admin", "--registry", &url, "drain", "--wait-secs", "15"])
                .env("SESSION_PROXY_SECRET", SECRET)
                .env("SESSION_PROXY_ID", "connector-p")
                .kill_on_drop(true)
                .output()
                .await
        }
    });
    readyz_becomes(&front, 503, "draining").await;
    // The kubelet's SIGTERM, while the drain still runs.
    signal(front.child.id().expect("pid"), "TERM");
    let answer = slow.await.expect("the slow request");
    let status = tokio::time::timeout(WAIT, front.child.wait())
        .await
        .expect("exits")
        .expect("wait");
    assert_eq!(
        status.code(),
        Some(0),
        "a full drain, not a second signal's 130"
    );
    assert_eq!(
        answer.expect("answered").get("code"),
        None,
        "the request in flight was answered, not cut"
    );
    let hook = tokio::time::timeout(WAIT + WAIT, hook)
        .await
        .expect("the hook returns")
        .expect("joined")
        .expect("ran");
    let printed = String::from_utf8_lossy(&hook.stdout);
    assert!(
        hook.status.success(),
        "{printed} {}",
        String::from_utf8_lossy(&hook.stderr)
    );
    assert!(
        printed.contains("connector-p drained and left"),
        "{printed}"
    );
    sigkill(&mut back.child).await;
}
