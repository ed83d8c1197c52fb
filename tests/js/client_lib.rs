//! The TypeScript client library (`clients/js`) against the chat example,
//! with node's test runner: its connectors keep their sessions in a real
//! Redis and register there, so the client's resume is tested through a
//! dropped connection, a connector's drain and a stale token.
//!
//! The tests drive the cluster through a small control address of this
//! test (loopback HTTP): `GET /cluster` (where the gate and connectors
//! are), `POST /drain/<i>` (drains connector `i`, answers its report),
//! `GET /sessions` (each connector's uids), `POST /redis/pause` and
//! `POST /redis/resume` (SIGSTOP and SIGCONT of the Redis server).

use crate::common;

use common::node::{client_js_dir, npm_ready, run_node};
use common::redis::RedisServer;
use serde_json::{json, Value};
use session_proxy_chat::ChatCluster;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;

/// How long a drain through the control address may take.
const DRAIN: Duration = Duration::from_secs(8);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_typescript_client_resumes_after_a_drop_a_drain_and_a_stale_token() {
    if !npm_ready(&client_js_dir(), &["ws", "typescript"]).await {
        return;
    }
    let Some(redis) = RedisServer::start().map(Arc::new) else {
        return;
    };
    let cluster = common::chat::chat_on_redis(redis.url()).await;
    let info = json!({
        "host": "127.0.0.1",
        "gate": cluster.gate_addr().port(),
        "connectors": cluster.connector_addrs().iter().map(|a| a.port()).collect::<Vec<_>>(),
    });
    let cluster = Arc::new(Mutex::new(cluster));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("control");
    let control = format!("http://{}", listener.local_addr().expect("addr"));
    let serving = tokio::spawn(serve(listener, cluster.clone(), redis.clone(), info));

    let stdout = run_node(
        &client_js_dir(),
        &[
            "--test".into(),
            "--test-force-exit".into(),
            "--test-concurrency=1".into(),
        ],
        &[("CHAT_CONTROL", control)],
        Duration::from_secs(120),
    )
    .await;
    let count = |what: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(what)?.trim().parse::<u32>().ok())
    };
    assert_eq!(count("# fail "), Some(0), "{stdout}");
    assert!(count("# pass ").is_some_and(|n| n >= 5), "{stdout}");
    eprintln!("{stdout}");

    serving.abort();
    let _ = serving.await;
    let cluster = Arc::try_unwrap(cluster).expect("the control address let go");
    cluster.into_inner().shutdown(Duration::from_secs(2)).await;
}

async fn serve(
    listener: TcpListener,
    cluster: Arc<Mutex<ChatCluster>>,
    redis: Arc<RedisServer>,
    info: Value,
) {
    while let Ok((stream, _)) = listener.accept().await {
        let (cluster, info) = (cluster.clone(), info.clone());
        // One request at a time: the tests make them one after another.
        if let Err(err) = answer(stream, &cluster, &redis, &info).await {
            eprintln!("control: {err}");
        }
    }
}

async fn answer(
    mut stream: TcpStream,
    cluster: &Mutex<ChatCluster>,
    redis: &RedisServer,
    info: &Value,
) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .map_err(|_| std::io::Error::other("a request head too slow"))??;
        if n == 0 || head.len() > 8192 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&head);
    let mut words = head.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let (status, body) = match (method, path.split('/').collect::<Vec<_>>().as_slice()) {
        ("GET", ["", "cluster"]) => (200, info.clone()),
        ("POST", ["", "redis", "pause"]) => {
            redis.pause();
            (200, json!({ "redis": "paused" }))
        }
        ("POST", ["", "redis", "resume"]) => {
            redis.resume();
            (200, json!({ "redis": "running" }))
        }
        ("POST", ["", "drain", i]) => match i.parse() {
            Ok(i) => match cluster.lock().await.drain_connector(i, DRAIN).await {
                Some(report) => (
                    200,
                    json!({
                        "kicked": report.kicked,
                        "handed_over": report.handed_over,
                        "complete": report.complete(),
                        "unfinished": report.unfinished,
                    }),
                ),
                None => (404, json!({ "error": "no such connector" })),
            },
            Err(_) => (400, json!({ "error": "not a connector number" })),
        },
        ("GET", ["", "sessions"]) => {
            let cluster = cluster.lock().await;
            let per: Vec<Vec<String>> = (0..cluster.connector_addrs().len().max(2))
                .map(|i| {
                    let mut uids = Vec::new();
                    if let Some(sessions) = cluster.sessions(i) {
                        sessions.for_each(|s| uids.extend(s.uid.clone()));
                    }
                    uids
                })
                .collect();
            (200, json!(per))
        }
        _ => (404, json!({ "error": "no such control" })),
    };
    let body = body.to_string();
    let reply = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(reply.as_bytes()).await?;
    stream.shutdown().await
}
