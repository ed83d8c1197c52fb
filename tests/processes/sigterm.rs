//! SIGTERM to real node processes: what is in flight is answered within a
//! bound, clients are kicked with a reason, and a frontend without a
//! cluster secret will not listen beyond loopback unless told to.

use crate::common;

use common::nodes::{run_node, sigkill, signal, write_cluster};
use serde_json::json;
use session_proxy_client::{PomeloClient, PomeloEvent};
use std::time::{Duration, Instant};
use tokio::process::Child;

async fn serving(port: u16) -> PomeloClient {
    let client = PomeloClient::connect(format!("127.0.0.1:{port}").parse().expect("addr"))
        .await
        .expect("connect");
    let until = Instant::now() + Duration::from_secs(10);
    while client
        .request("chat.benchHandler.echo", &json!({ "x": 1 }))
        .await
        .ok()
        != Some(json!({ "x": 1 }))
    {
        assert!(Instant::now() < until, "the backend never served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    client
}

/// SIGTERM by PID; the process must exit cleanly within `within`.
async fn sigterm(child: &mut Child, within: Duration) {
    signal(child.id().expect("pid"), "TERM");
    let status = tokio::time::timeout(within, child.wait())
        .await
        .expect("exits after SIGTERM")
        .expect("wait");
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frontend_answers_what_is_in_flight_then_kicks_with_a_reason() {
    let (config, port) = write_cluster("sigterm-frontend");
    let mut front = run_node(&config, "connector-1").await;
    let mut back = run_node(&config, "chat-1").await;
    let client = std::sync::Arc::new(serving(port).await);
    let slow = client.clone();
    let in_flight = tokio::spawn(async move {
        slow.request("chat.benchHandler.sleep", &json!({ "ms": 300 }))
            .await
    });
    common::nodes::sleeping(&client, 1).await;
    sigterm(&mut front, Duration::from_secs(10)).await;
    let answer = in_flight
        .await
        .expect("task")
        .expect("answered, not dropped");
    assert_eq!(answer, json!({ "slept": 300 }));
    let Ok(mut client) = std::sync::Arc::try_unwrap(client) else {
        panic!("one owner left");
    };
    let mut kicked = None;
    while let Some(event) = client.next_event(Duration::from_secs(5)).await {
        match event {
            PomeloEvent::Kick { reason } => kicked = Some(reason),
            PomeloEvent::Closed => break,
            PomeloEvent::Push { .. } => {}
        }
    }
    assert_eq!(
        kicked.as_deref(),
        Some("reconnect"),
        "a reason a client can act on"
    );
    sigkill(&mut back).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_finishes_its_running_requests_before_it_exits() {
    let (config, port) = write_cluster("sigterm-backend");
    let mut front = run_node(&config, "connector-1").await;
    let mut back = run_node(&config, "chat-1").await;
    let client = std::sync::Arc::new(serving(port).await);
    let mut waiting = Vec::new();
    for _ in 0..5 {
        let c = client.clone();
        waiting.push(tokio::spawn(async move {
            c.request("chat.benchHandler.sleep", &json!({ "ms": 200 }))
                .await
        }));
    }
    common::nodes::sleeping(&client, 5).await;
    sigterm(&mut back, Duration::from_secs(10)).await;
    for w in waiting {
        let answer = w.await.expect("task").expect("answered");
        assert_eq!(answer, json!({ "slept": 200 }), "not \"peer closed\"");
    }
    sigkill(&mut front).await;
}

#[tokio::test]
async fn no_secret_beyond_loopback_is_refused_without_insecure() {
    let port = common::nodes::free_port();
    let rpc = format!("0.0.0.0:{port}");
    let out = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_session-proxy"))
            // The bench app's routes, asked for by name.
            .env("SESSION_PROXY_APP", "bench")
            .args(["frontend", "--rpc-addr", &rpc])
            .env_remove("SESSION_PROXY_SECRET")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("exits at once")
    .expect("runs");
    assert!(!out.status.success(), "it must refuse to start");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("RpcConfig.secret") && stderr.contains("insecure"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_backend_gets_no_new_requests_and_finishes_its_own() {
    use common::cluster::{client, start_backend, start_frontend, wait_for_backends};
    use session_proxy_client::Transport;
    let f = start_frontend("f1", |_| {}).await;
    let (a, _) = start_backend("game-a", &[&f]);
    let (b, _) = start_backend("game-b", &[&f]);
    wait_for_backends(&f, 2).await;
    let c = std::sync::Arc::new(client(f.gateway.local_addr(), Transport::Tcp).await);
    // Requests of this session are routed to one backend; find which.
    let slow = {
        let c = c.clone();
        tokio::spawn(async move { c.request("game.h.slow", &json!({ "ms": 400 })).await })
    };
    common::eventually(Duration::from_secs(5), "the slow request runs", || async {
        match a.requests_running() + b.requests_running() {
            1 => Ok(()),
            n => Err(format!("{n} running")),
        }
    })
    .await;
    let (draining, other) = if a.requests_running() > 0 {
        (&a, &b)
    } else {
        (&b, &a)
    };
    assert_eq!(
        draining.requests_running(),
        1,
        "the slow request runs somewhere"
    );
    let drain = {
        let draining = draining.clone();
        tokio::spawn(async move { draining.shutdown(Duration::from_secs(3)).await })
    };
    // The frontend heard of the drain: it picks only the other one now.
    common::eventually(
        Duration::from_secs(5),
        "the frontend stops picking it",
        || async {
            match f.rpc.backends().count("game") {
                1 => Ok(()),
                n => Err(format!("{n} backends picked")),
            }
        },
    )
    .await;
    // New requests, on the same session, go to the other backend: none fails.
    for i in 0..50 {
        let answer = c
            .request("game.h.echo", &json!({ "i": i }))
            .await
            .expect("answered");
        assert_eq!(
            answer,
            json!({ "i": i }),
            "request {i} while a backend drains"
        );
    }
    assert_eq!(
        slow.await.expect("task").expect("answered"),
        json!({ "slept": 400 }),
        "the running request completed on the draining backend"
    );
    assert!(drain.await.expect("task"), "the drain finished in time");
    assert_eq!(
        f.rpc.backends().count("game"),
        1,
        "only the other backend is picked"
    );
    other.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_ends_the_drain_at_once() {
    let (config, port) = write_cluster("sigterm-twice");
    let mut front = run_node(&config, "connector-1").await;
    let mut back = run_node(&config, "chat-1").await;
    let client = std::sync::Arc::new(serving(port).await);
    // A request the drain would wait for (up to 3 s).
    let slow = client.clone();
    let _waiting = tokio::spawn(async move {
        slow.request("chat.benchHandler.sleep", &json!({ "ms": 5_000 }))
            .await
    });
    common::nodes::sleeping(&client, 1).await;
    let pid = back.id().expect("pid");
    signal(pid, "TERM");
    // Two signals sent at once would be one: let the first be taken.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    signal(pid, "TERM");
    let status = tokio::time::timeout(Duration::from_secs(10), back.wait())
        .await
        .expect("exits")
        .expect("wait");
    assert_eq!(status.code(), Some(130), "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    sigkill(&mut front).await;
}
