//! The cluster file and the load generator: a connector and a chat backend
//! as separate processes started from a TOML file, driven by
//! `session-proxy bench`'s workloads; and the raw floor.

use crate::common;

use common::nodes::{bench_route, free_port, run_node, until_echo_answers};
use session_proxy_bench::{self as bench, LoadOptions};
use session_proxy_client::Transport;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_from_a_file_serves_the_bench_workloads() {
    let (rpc, client) = (free_port(), free_port());
    let dir = std::env::temp_dir().join(format!("session-proxy-bench-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let config = dir.join("cluster.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[cluster]
app = "bench"

[[node]]
id = "connector-1"
type = "connector"
role = "frontend"
rpc = "127.0.0.1:{rpc}"
client = "127.0.0.1:{client}"

[[node]]
id = "chat-1"
type = "chat"
role = "backend"
"#
        ),
    )
    .expect("write config");
    let mut front = run_node(&config, "connector-1").await;
    let mut back = run_node(&config, "chat-1").await;
    let target = format!("127.0.0.1:{client}").parse().expect("addr");

    // Wait until the backend is connected: the echo route answers.
    until_echo_answers(target).await;

    for (route, body, login) in [
        (
            "chat.benchHandler.echo",
            serde_json::json!({ "msg": "x" }),
            false,
        ),
        (
            "chat.benchHandler.set",
            serde_json::json!({ "key": "k", "value": 1 }),
            true,
        ),
        ("connector.entryHandler.ping", serde_json::json!({}), false),
        (
            "chat.benchHandler.remote",
            serde_json::json!({ "msg": "x" }),
            false,
        ),
    ] {
        let r = bench_route(target, 8, route, body, login)
            .await
            .expect("load");
        assert!(r.ops > 10, "{route}: {r}");
        assert_eq!(r.errors, 0, "{route}: {r}");
        assert!(r.p50_us > 0 && r.p99_us >= r.p50_us);
    }
    // The remote route answers what the remote method echoed.
    let c = session_proxy_client::PomeloClient::connect(target)
        .await
        .expect("connect");
    let answer = c
        .request(
            "chat.benchHandler.remote",
            &serde_json::json!({ "x": [1, 2] }),
        )
        .await
        .expect("answered");
    assert_eq!(answer, serde_json::json!({ "x": [1, 2] }));
    // Open loop at a fixed rate delivers about that rate.
    let mut o = LoadOptions::new(target);
    o.clients = 4;
    o.rate = Some(400.0);
    o.duration = Duration::from_secs(1);
    o.warmup = Duration::ZERO;
    let r = bench::load(o).await.expect("open loop");
    assert!((300..=500).contains(&r.ops), "{r}");

    let r = bench::fanout(target, Transport::WebSocket, 20, 5, "chat")
        .await
        .expect("fanout");
    assert_eq!((r.ops, r.errors), (100, 0), "{r}");
    let pid = front.id().expect("pid");
    let r = bench::idle(&[target], Transport::Tcp, 200, &[pid], None)
        .await
        .expect("idle");
    assert_eq!(r.clients, 200);
    assert!(r.bytes_per_client.is_some_and(|b| b > 0.0), "{r}");

    for child in [&mut front, &mut back] {
        child.start_kill().expect("kill");
        let _ = child.wait().await;
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_floor_answers_the_protocol_and_fans_out() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(bench::floor::serve_on(listener));
    let mut o = LoadOptions::new(addr);
    o.clients = 4;
    o.duration = Duration::from_millis(300);
    o.warmup = Duration::ZERO;
    let r = bench::load(o).await.expect("load");
    assert!(r.ops > 100 && r.errors == 0, "{r}");
    // The fan-out floor: every member gets every push.
    let r = bench::fanout(addr, Transport::Tcp, 50, 5, "chat")
        .await
        .expect("fanout");
    assert_eq!((r.ops, r.errors), (250, 0), "{r}");
    server.abort();
}

#[test]
fn pipelined_pushes_all_apply() {
    let o = bench::pushes::PushOptions {
        sessions: 100,
        count: 20_000,
        window: 256,
    };
    let r = bench::pushes::pushes(o).expect("pushes");
    assert_eq!((r.ops, r.errors), (20_000, 0), "{r}");
    assert!(r.throughput > 0.0, "{r}");
}

#[test]
fn a_bad_cluster_file_is_refused_with_a_reason() {
    let dir = std::env::temp_dir().join(format!("session-proxy-bad-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("c.toml");
    for (text, want) in [
        ("[[node]]\nid = \"a\"\ntype = \"t\"\nrole = \"frontend\"\n", "needs an rpc address"),
        ("[[node]]\nid = \"a\"\ntype = \"t\"\nrole = \"backend\"\n[[node]]\nid = \"a\"\ntype = \"t\"\nrole = \"backend\"\n", "appears twice"),
        ("[cluster]\napp = \"mmo\"\n[[node]]\nid = \"a\"\ntype = \"t\"\nrole = \"backend\"\n", "unknown app"),
        ("[[node]]\nid = \"a\"\ntype = \"t\"\nrole = \"sideways\"\n", "parsing"),
        ("[[node]]\nid = \"a\"\ntype = \"t\"\nrole = \"backend\"\nworker_threads = 0\n", "at least 1"),
    ] {
        std::fs::write(&path, text).expect("write");
        let err = session_proxy::cluster::ClusterConfig::load(&path).expect_err("refused");
        assert!(format!("{err:#}").contains(want), "{err:#}");
    }
    // A node's own worker_threads wins over the cluster's.
    std::fs::write(
        &path,
        "[cluster]\nworker_threads = 2\n[[node]]\nid = \"a\"\ntype = \"t\"\nrole = \"backend\"\nworker_threads = 1\n[[node]]\nid = \"b\"\ntype = \"t\"\nrole = \"backend\"\n",
    )
    .expect("write");
    let config = session_proxy::cluster::ClusterConfig::load(&path).expect("valid");
    assert_eq!(config.worker_threads("a"), Some(1));
    assert_eq!(config.worker_threads("b"), Some(2));
    let _ = std::fs::remove_dir_all(&dir);
}

/// `bench store` against a real server and a real 3-master cluster: every
/// put lands, and the store is left empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_bench_writes_to_one_server_and_to_a_cluster() {
    let (Some(one), Some(cluster)) = (
        common::redis::RedisServer::start(),
        common::redis::RedisCluster::start(),
    ) else {
        return;
    };
    for url in [one.url(), cluster.url()] {
        let options = bench::store::StoreOptions {
            url: url.clone(),
            writers: 2,
            batch: 18,
            sessions: 100,
            duration: Duration::from_millis(500),
        };
        let r = bench::store::store(&options).await.expect("store bench");
        assert!(
            r.ops >= 18 && r.ops % 18 == 0 && r.errors == 0,
            "{url}: {r}"
        );
        let store = session_proxy::frontend::RedisStore::connect(
            session_proxy::frontend::RedisStoreConfig::new(url.clone()),
        )
        .await
        .expect("connect");
        use session_proxy::frontend::SessionStore;
        assert!(store.list().await.expect("list").is_empty(), "{url}");
    }
}

/// The report writes the rows `bench/compare` gathers beyond the two
/// systems' workloads: players per node (with its plot), one process, the
/// Redis store, the Go peers' ratios, and their targets.
#[test]
fn the_report_writes_players_per_node_one_process_and_durable_rows() {
    let dir = std::env::temp_dir().join(format!("session-proxy-report-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let rr = |tput: f64, p99: u64| serde_json::json!({"mode": "rr", "throughput": tput, "p50_us": p99 / 2, "p99_us": p99});
    // Each step's system CPU grows by `per_step` cores per 1,000 players.
    let ccu = |held: usize, p99s: &[f64], per_step: f64| {
        let steps: Vec<_> = p99s
            .iter()
            .enumerate()
            .map(|(i, p99)| {
                let cpu = per_step * (i + 1) as f64;
                serde_json::json!({"clients": 1000 * (i + 1), "p99_ms": p99, "server_cpu": cpu})
            })
            .collect();
        serde_json::json!({"steps": steps, "ccu": held})
    };
    let rows = [
        ("session-proxy", "echo-50", rr(50_000.0, 2_000)),
        ("session-proxy one process", "echo-50", rr(60_000.0, 1_500)),
        ("floor", "echo-50", rr(150_000.0, 600)),
        ("session-proxy", "set-push-50", rr(40_000.0, 2_000)),
        (
            "session-proxy + Redis AOF",
            "set-push-50",
            rr(20_000.0, 4_000),
        ),
        ("pinus", "echo-50", rr(10_000.0, 8_000)),
        ("pitaya", "echo-50", rr(25_000.0, 4_000)),
        ("nano", "echo-50", rr(100_000.0, 1_000)),
        ("pinus", "ccu-1rps", ccu(2000, &[3.0, 9.0, 400.0], 0.1)),
        (
            "session-proxy",
            "ccu-1rps",
            ccu(3000, &[2.0, 2.5, 3.0], 0.025),
        ),
    ];
    let lines: Vec<String> = rows
        .iter()
        .map(|(system, workload, result)| {
            serde_json::json!({"system": system, "workload": workload, "round": 1, "result": result})
                .to_string()
        })
        .collect();
    let input = dir.join("results.jsonl");
    std::fs::write(&input, lines.join("\n")).expect("write");
    let (out, plot) = (dir.join("BENCHMARKS.md"), dir.join("bench-latency.svg"));
    bench::report::report(&input, &out, &plot, "bench/compare 1").expect("report");
    let md = std::fs::read_to_string(&out).expect("report written");
    for want in [
        "| session-proxy | 1 | 3000 | 3.0 ms | 40000 |",
        "| pinus | 1 | 2000 | 9.0 ms | 10000 |",
        "session-proxy has 4.0× Pinus's.",
        "| ccu-1rps: ≥ 5× Pinus's players per core | 4.0× | no |",
        "session-proxy holds 1.5× Pinus's",
        "| ccu-1rps: ≥ 5× Pinus's players per frontend process | 1.5× | no |",
        "One process: throughput 0.40× the floor, 1.20× two processes.",
        "| echo-50, one process: ≥ 0.85× the floor | 0.40× | no |",
        "With the Redis store: throughput 0.50× no store, p99 2.00×.",
        "![p99 by players](bench-ccu.svg)",
        "Ratios: throughput 5.00× Pinus, 2.00× Pitaya, 0.50× nano; p99 0.25× Pinus's, 0.50× Pitaya's, 2.00× nano's",
        "| pitaya | 1 | 25000 (25000–25000) |",
        "| echo-50: ahead of Pitaya (throughput) | 2.00× ahead | yes |",
        "| echo-50: ahead of nano (throughput) | 0.50× ahead | no |",
    ] {
        assert!(md.contains(want), "missing {want:?} in:\n{md}");
    }
    let svg = std::fs::read_to_string(dir.join("bench-ccu.svg")).expect("plot written");
    assert_eq!(svg.matches("<polyline").count(), 2, "one line per system");
    let _ = std::fs::remove_dir_all(&dir);
}
