//! A frontend as a real process, killed with SIGKILL mid-traffic.

use crate::common;

use common::nodes::{sigkill, spawn_session_proxy};
use common::*;
use session_proxy::protocol::{KeyWrite, Precondition, Push};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::process::Child;

/// Starts `session-proxy frontend` and returns it with its RPC address.
async fn spawn_frontend(addr: &str) -> (Child, std::net::SocketAddr) {
    let args = [
        "frontend",
        "--id",
        "f1",
        "--rpc-addr",
        addr,
        "--open-sessions",
        "20",
    ];
    let (child, lines) = spawn_session_proxy(&args, "listening on").await;
    let line = lines.last().expect("the listening line");
    let addr = line
        .rsplit(' ')
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("unexpected line {line:?}"));
    (child, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_frontend_fails_pending_calls_within_deadline_and_comes_back() {
    let (mut first, addr) = spawn_frontend("127.0.0.1:0").await;
    let deadline = Duration::from_millis(1000);
    let backend = start_backend_with(quick_client("b", deadline), "f1", addr);
    let sids: Vec<_> = {
        let mut v = Vec::new();
        for i in 0..4 {
            let s = backend
                .get_by_uid("f1", &format!("user-{i}"))
                .await
                .expect("call");
            v.push(s[0].id());
        }
        v
    };
    let client = backend.client("f1").expect("known");

    // Workers keep 32 pipelined pushes in flight each, recording outcomes.
    let stop_flag = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for sid in sids {
        let (client, stop_flag) = (client.clone(), stop_flag.clone());
        workers.push(tokio::spawn(async move {
            let mut outcomes = Vec::new();
            let mut i = 0u64;
            while !stop_flag.load(Ordering::Relaxed) {
                let t = Instant::now();
                let mut batch = Vec::new();
                let mut send_err = None;
                for _ in 0..32 {
                    let call = Push {
                        sid,
                        writes: vec![KeyWrite {
                            key: "n".into(),
                            value: Some(encode(&i)),
                            expect: Precondition::Any,
                        }],
                    };
                    i += 1;
                    match client.send(call).await {
                        Ok(p) => batch.push(p),
                        Err(e) => {
                            send_err = Some(e.code());
                            break;
                        }
                    }
                }
                for p in batch {
                    outcomes.push((
                        t.elapsed(),
                        p.response().await.map(|_| ()).map_err(|e| e.code()),
                    ));
                }
                if let Some(code) = send_err {
                    outcomes.push((t.elapsed(), Err(code)));
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            outcomes
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    sigkill(&mut first).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Restart on the same port; the backend service is the same object.
    let (mut second, addr2) = spawn_frontend(&addr.to_string()).await;
    assert_eq!(addr, addr2);
    let until = Instant::now() + Duration::from_secs(10);
    let mut recovered = false;
    while Instant::now() < until {
        if let Ok(sessions) = backend.get_by_uid("f1", "user-0").await {
            let mut s = sessions
                .into_iter()
                .next()
                .expect("the restarted frontend opened user-0");
            s.set("after", &1u8).expect("encode");
            s.push("after").await.expect("push after restart");
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    stop_flag.store(true, Ordering::Relaxed);

    let mut outcomes = Vec::new();
    for w in workers {
        outcomes.extend(w.await.expect("worker"));
    }
    let (ok, failed) = tally_outcomes(outcomes, deadline + Duration::from_millis(1000));
    sigkill(&mut second).await;
    assert!(
        recovered,
        "calls succeed again after the restart, without restarting the backend"
    );
    assert!(ok > 0 && failed > 0, "ok {ok}, failed {failed}");
}
