//! The cluster file and the load generator: a connector and a chat backend
//! as separate processes started from a TOML file, driven by
//! `session-proxy bench`'s workloads; and the raw floor.

mod common;

use common::nodes::{free_port, run_node};
use session_proxy_bench::pomelo::Transport;
use session_proxy_bench::{self as bench, LoadOptions};
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
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut o = LoadOptions::new(target);
        o.clients = 1;
        o.duration = Duration::from_millis(200);
        o.warmup = Duration::ZERO;
        let r = bench::load(o).await.expect("load");
        if r.ops > 0 && r.errors == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "the chat backend never answered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

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
    ] {
        let mut o = LoadOptions::new(target);
        o.clients = 8;
        o.duration = Duration::from_millis(500);
        o.warmup = Duration::from_millis(100);
        o.route = route.into();
        o.body = body;
        if login {
            o.setup = vec![(
                "chat.benchHandler.login".into(),
                serde_json::json!({ "uid": "u{i}" }),
            )];
        }
        let r = bench::load(o).await.expect("load");
        assert!(r.ops > 10, "{route}: {r}");
        assert_eq!(r.errors, 0, "{route}: {r}");
        assert!(r.p50_us > 0 && r.p99_us >= r.p50_us);
    }
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
async fn the_floor_answers_the_protocol() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}").parse().expect("addr");
    let server = tokio::spawn(bench::floor::serve(addr));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut o = LoadOptions::new(addr);
    o.clients = 4;
    o.duration = Duration::from_millis(300);
    o.warmup = Duration::ZERO;
    let r = bench::load(o).await.expect("load");
    assert!(r.ops > 100 && r.errors == 0, "{r}");
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
