//! Filters on a real gateway and a real backend over loopback TCP: rate
//! limits, one request at a time per session, a logged-in check, time
//! limits and overload.

use crate::common;
use common::cluster::*;
use futures::future::join_all;
use serde_json::{json, Value};
use session_proxy::backend::{BackendSession, Handlers};
use session_proxy::filters::{
    check, Bucket, Overload, RateLimit, Serial, Timeout, OVERLOADED, RATE_LIMITED, TIMED_OUT,
};
use session_proxy::protocol::client::HandlerError;
use session_proxy::{BackendConfig, BackendSessionService};
use session_proxy_client::{PomeloClient, PomeloEvent, Transport};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Sends `route` every `every` for `total`, one at a time; how many of the
/// answers had `code`, of how many.
async fn paced(c: &PomeloClient, every: Duration, total: Duration, code: u32) -> (usize, usize) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let until = Instant::now() + total;
    let (mut hit, mut sent) = (0, 0);
    while Instant::now() < until {
        tick.tick().await;
        let answer = c
            .request("game.h.echo", &json!({ "x": 1 }))
            .await
            .expect("answered");
        sent += 1;
        if answer["code"] == code {
            hit += 1;
        } else {
            assert_eq!(answer, json!({ "x": 1 }), "served or refused, nothing else");
        }
    }
    (hit, sent)
}

/// A connector that runs every request through `limit`, and the game
/// backend behind it (it serves while its handle is kept).
async fn limited_gateway(limit: RateLimit) -> (Node, BackendSessionService) {
    let f = start_frontend_then(
        "f1",
        |_| {},
        |gw| {
            gw.filter("", limit);
        },
    )
    .await;
    let (backend, _) = start_backend("game-1", &[&f]);
    wait_for_backends(&f, 1).await;
    (f, backend)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_at_twice_its_rate_is_refused_about_half_the_time_and_others_are_not() {
    let limit = RateLimit::new().per_session(Bucket::new(20.0, 1.0));
    let (f, _backend) = limited_gateway(limit).await;
    let greedy = client(f.gateway.local_addr(), Transport::Tcp).await;
    let calm = client(f.gateway.local_addr(), Transport::WebSocket).await;
    let second = Duration::from_secs(2);
    let (greedy, calm) = tokio::join!(
        paced(&greedy, Duration::from_millis(25), second, RATE_LIMITED),
        paced(&calm, Duration::from_millis(100), second, RATE_LIMITED),
    );
    let share = greedy.0 as f64 / greedy.1 as f64;
    assert!(
        (0.3..=0.7).contains(&share),
        "{} of {} refused at twice the rate",
        greedy.0,
        greedy.1
    );
    assert_eq!(calm.0, 0, "a client within its rate is never refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_keeps_at_it_is_disconnected() {
    let limit = RateLimit::new()
        .per_session(Bucket::new(5.0, 5.0))
        .disconnect_after(10, Duration::from_secs(10));
    let (f, _backend) = limited_gateway(limit).await;
    let mut flood = client(f.gateway.local_addr(), Transport::Tcp).await;
    let other = client(f.gateway.local_addr(), Transport::Tcp).await;
    let mut refused = 0;
    for _ in 0..40 {
        match flood.request("game.h.echo", &json!({})).await {
            Ok(answer) if answer["code"] == RATE_LIMITED => refused += 1,
            Ok(answer) => assert_eq!(answer, json!({})),
            Err(_) => break,
        }
    }
    assert!(
        (5..=10).contains(&refused),
        "{refused} refusals before the kick"
    );
    match flood.next_event(WAIT).await {
        Some(PomeloEvent::Kick { reason }) => {
            assert!(reason.contains("too many requests"), "{reason}")
        }
        other => panic!("expected a kick, got {other:?}"),
    }
    assert_eq!(flood.next_event(WAIT).await, Some(PomeloEvent::Closed));
    common::eventually(WAIT, "the session is gone", || async {
        match f.sessions.count() {
            1 => Ok(()),
            n => Err(format!("{n} sessions")),
        }
    })
    .await;
    let answer = other.request("game.h.echo", &json!({ "y": 2 })).await;
    assert_eq!(
        answer.expect("answered"),
        json!({ "y": 2 }),
        "the other is served"
    );
}

/// A backend of type "game" whose `game.h.track` handler records how many
/// run at once (the most), and the order they finish in.
fn tracking_backend(
    f: &Node,
) -> (
    BackendSessionService,
    Arc<AtomicUsize>,
    Arc<Mutex<Vec<u64>>>,
) {
    let mut config = BackendConfig::new("game-1");
    config.server_type = Some("game".into());
    let service = BackendSessionService::new(config).expect("valid config");
    let running = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut handlers = Handlers::new();
    let (r, m, o) = (running.clone(), most.clone(), order.clone());
    handlers.add("game.h.track", move |_s: BackendSession, body: Value| {
        let (running, most, order) = (r.clone(), m.clone(), o.clone());
        async move {
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now, Ordering::SeqCst);
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(1)).await;
            order
                .lock()
                .expect("order")
                .push(body["i"].as_u64().unwrap_or(u64::MAX));
            running.fetch_sub(1, Ordering::SeqCst);
            Ok(body)
        }
    });
    service.serve(handlers);
    service.add_frontend_of_type(
        f.sessions.frontend_id(),
        "connector",
        f.rpc.local_addr().to_string(),
    );
    (service, most, order)
}

/// 100 `game.h.track {i}` requests on one connection, sent without waiting
/// for answers; their answers in order.
async fn pipelined(c: &PomeloClient) -> Vec<Result<Value, session_proxy_client::ClientError>> {
    join_all(
        (0..100u64).map(|i| async move { c.request("game.h.track", &json!({ "i": i })).await }),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_serial_a_sessions_pipelined_requests_run_one_at_a_time_in_order() {
    let f = start_frontend_then(
        "f1",
        |_| {},
        |gw| {
            gw.filter("game.", Serial::new());
        },
    )
    .await;
    let (_backend, most, order) = tracking_backend(&f);
    wait_for_backends(&f, 1).await;
    let c = client(f.gateway.local_addr(), Transport::Tcp).await;
    // 100 requests pipelined on one connection, without waiting for answers.
    let answers = pipelined(&c).await;
    for (i, answer) in answers.into_iter().enumerate() {
        assert_eq!(answer.expect("answered"), json!({ "i": i }));
    }
    assert_eq!(most.load(Ordering::SeqCst), 1, "never two at once");
    assert_eq!(*order.lock().expect("order"), (0..100).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_serial_pipelined_requests_overlap() {
    // The control of the test above: the same load runs concurrently.
    let f = start_frontend("f1", |_| {}).await;
    let (_backend, most, _) = tracking_backend(&f);
    wait_for_backends(&f, 1).await;
    let c = client(f.gateway.local_addr(), Transport::Tcp).await;
    let answers = pipelined(&c).await;
    assert!(answers.iter().all(Result::is_ok));
    assert!(
        most.load(Ordering::SeqCst) > 1,
        "pipelined requests overlap"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_refuses_unbound_sessions_before_anything_runs() {
    let f = start_frontend_then(
        "f1",
        |_| {},
        |gw| {
            gw.filter(
                "game.",
                check("logged_in", |call| match call.uid {
                    Some(_) => Ok(()),
                    None => Err(HandlerError::with_code(401, "log in first")),
                }),
            );
        },
    )
    .await;
    let (backend, _) = start_backend("game-1", &[&f]);
    wait_for_backends(&f, 1).await;
    let c = client(f.gateway.local_addr(), Transport::Tcp).await;
    let refused = c
        .request("game.h.slow", &json!({ "ms": 0 }))
        .await
        .expect("answered");
    assert_eq!(refused, json!({ "code": 401, "msg": "log in first" }));
    assert_eq!(backend.requests_running(), 0);
    c.request("connector.entry.login", &json!({ "uid": "ann" }))
        .await
        .expect("login is not under the rule");
    let served = c
        .request("game.h.echo", &json!({ "hi": 1 }))
        .await
        .expect("answered");
    assert_eq!(served, json!({ "hi": 1 }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_time_limit_answers_in_time_and_stops_the_handler() {
    let f = start_frontend("f1", |_| {}).await;
    let (backend, _) = start_backend("game-1", &[&f]);
    backend.filter("game.h.slow", Timeout(Duration::from_millis(200)));
    wait_for_backends(&f, 1).await;
    let c = client(f.gateway.local_addr(), Transport::Tcp).await;
    let started = Instant::now();
    let answer = c
        .request("game.h.slow", &json!({ "ms": 1_500 }))
        .await
        .expect("answered");
    assert_eq!(answer["code"], TIMED_OUT, "{answer}");
    assert!(started.elapsed() < Duration::from_millis(1_200));
    assert_eq!(backend.requests_running(), 0, "the handler was dropped");
    let fast = c.request("game.h.slow", &json!({ "ms": 10 })).await;
    assert_eq!(fast.expect("answered"), json!({ "slept": 10 }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overloaded_backend_refuses_new_work_and_takes_it_again() {
    let f = start_frontend("f1", |_| {}).await;
    let (backend, _) = start_backend("game-1", &[&f]);
    backend.filter("game.", Overload::new(1));
    wait_for_backends(&f, 1).await;
    let a = Arc::new(client(f.gateway.local_addr(), Transport::Tcp).await);
    let b = client(f.gateway.local_addr(), Transport::Tcp).await;
    let busy = tokio::spawn({
        let a = a.clone();
        async move { a.request("game.h.slow", &json!({ "ms": 800 })).await }
    });
    common::running(&backend, 1, "the first request runs").await;
    let refused = b
        .request("game.h.echo", &json!({}))
        .await
        .expect("answered");
    assert_eq!(refused["code"], OVERLOADED, "{refused}");
    let first = busy.await.expect("task").expect("answered");
    assert_eq!(first, json!({ "slept": 800 }));
    let again = b.request("game.h.echo", &json!({ "z": 3 })).await;
    assert_eq!(again.expect("answered"), json!({ "z": 3 }));
}
