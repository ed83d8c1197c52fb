//! Client requests forwarded to a backend, over each link a connector has
//! to one: a TCP link, the in-process link (frames through a pipe), and a
//! backend of the same process called directly on the client's connection
//! task (`BackendConfig::in_process_direct`). Each test runs over all three
//! (`<name>::tcp`, `::pipe`, `::direct`): the contract is one.

use crate::common;

use common::cluster::*;
use common::Link;
use serde_json::json;
use session_proxy_client::{PomeloClient, PomeloEvent, Transport};
use std::time::{Duration, Instant};

/// A test three times, once per link; `$link` names it in the body.
macro_rules! over_every_link {
    ($(async fn $name:ident($link:ident) $body:block)*) => {$(
        mod $name {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn tcp() {
                let $link = Link::Tcp;
                $body
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn pipe() {
                let $link = Link::InProcess;
                $body
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn direct() {
                let $link = Link::Direct;
                $body
            }
        }
    )*};
}

/// A connector (request deadline `deadline`) and a "game" backend over `link`.
async fn connector(link: Link, deadline: Duration) -> (Node, session_proxy::BackendSessionService) {
    let f = start_frontend_over("f1", link, |c| c.request_deadline = deadline, |_| {}).await;
    let (b, _) = start_backend("game-1", &[&f]);
    wait_for_backends(&f, 1).await;
    (f, b)
}

/// Requests `route`, whose handler pushes `onStep` 0..n and then answers,
/// and checks that every push was already received when the answer was.
async fn steps_arrive_before_the_answer(c: &mut PomeloClient, route: &str, n: u64) {
    let answer = c.request(route, &json!({ "n": n })).await.expect(route);
    assert_eq!(answer["done"], n);
    for i in 0..n {
        match c.next_event(Duration::ZERO).await {
            Some(PomeloEvent::Push { route, body }) => {
                assert_eq!(route, "onStep");
                assert_eq!(body["i"], i);
            }
            other => panic!("push {i} was not in before the response: {other:?}"),
        }
    }
}

over_every_link! {
async fn forwarded_requests_notifies_and_application_errors(link) {
    let (f, _b) = connector(link, Duration::from_secs(5)).await;
    for transport in [Transport::Tcp, Transport::WebSocket] {
        let c = client(f.gateway.local_addr(), transport).await;
        assert_eq!(c.handshake()["sys"]["heartbeat"], 10);
        let echoed = c
            .request("game.h.echo", &json!({ "a": [1, 2, 3], "s": "ü" }))
            .await
            .expect("echo");
        assert_eq!(echoed, json!({ "a": [1, 2, 3], "s": "ü" }));
        let err = c
            .request("game.h.fail", &json!({}))
            .await
            .expect("answered");
        assert_eq!(err, json!({ "code": 1001, "msg": "not enough gold" }));
        c.notify("game.h.echo", &json!({})).await.expect("notify");
        // Concurrent requests: answers come back in the order handlers finish.
        let (slow_body, fast_body) = (json!({ "ms": 300 }), json!({ "ms": 1 }));
        let timed = |body| {
            let c = &c;
            async move { (c.request("game.h.slow", body).await, Instant::now()) }
        };
        let ((slow, slow_at), (fast, fast_at)) = tokio::join!(timed(&slow_body), timed(&fast_body));
        assert!(
            fast_at < slow_at,
            "the fast answer did not wait for the slow one"
        );
        assert_eq!(slow.expect("slow")["slept"], 300);
        assert_eq!(fast.expect("fast")["slept"], 1);
    }
}

async fn a_client_notify_runs_its_backend_handler_one_way(link) {
    let (f, _b) = connector(link, Duration::from_secs(5)).await;
    let mut c = client(f.gateway.local_addr(), Transport::Tcp).await;
    c.notify("game.h.steps", &json!({ "n": 3 }))
        .await
        .expect("notify");
    for i in 0..3 {
        let (route, body) = c.next_push(WAIT).await.expect("a push of the handler");
        assert_eq!((route.as_str(), &body["i"]), ("onStep", &json!(i)));
    }
    // It never held a slot of the requests in flight to the backend.
    assert!(
        f.rpc.backends().in_flight().iter().all(|(_, n)| *n == 0),
        "{:?}",
        f.rpc.backends().in_flight()
    );
}

async fn a_request_whose_client_left_stops_on_the_backend(link) {
    // A deadline far past the test's waits: only a cancel stops it early.
    let (f, b) = connector(link, Duration::from_secs(120)).await;
    let c = client(f.gateway.local_addr(), Transport::Tcp).await;
    let slow = tokio::spawn({
        let body = json!({ "ms": 60_000 });
        async move { c.request("game.h.slow", &body).await }
    });
    common::running(&b, 1, "the slow handler runs").await;
    // The client leaves: its connection drops the forwarded request, the
    // frontend cancels it, and the handler stops long before its minute.
    slow.abort();
    common::running(&b, 0, "the handler is cancelled").await;
}

async fn pushes_before_the_response_arrive_before_it(link) {
    let (f, _b) = connector(link, Duration::from_secs(5)).await;
    let mut c = client(f.gateway.local_addr(), Transport::Tcp).await;
    for _ in 0..5 {
        steps_arrive_before_the_answer(&mut c, "game.h.steps", 20).await;
    }
}

async fn one_way_pushes_sent_before_the_answer_arrive_before_it(link) {
    // The handler's pushes are notifies nobody waits for: on a link they
    // share the answer's queue; called directly, the answer waits until
    // the frontend has read them.
    let (f, _b) = connector(link, Duration::from_secs(5)).await;
    let mut c = client(f.gateway.local_addr(), Transport::Tcp).await;
    for _ in 0..20 {
        steps_arrive_before_the_answer(&mut c, "game.h.oneway", 5).await;
    }
}

async fn a_handler_past_its_deadline_or_panicking_is_answered_and_the_client_goes_on(link) {
    let (f, b) = connector(link, Duration::from_millis(300)).await;
    let c = client(f.gateway.local_addr(), Transport::Tcp).await;
    let late = c
        .request("game.h.slow", &json!({ "ms": 30_000 }))
        .await
        .expect("answered");
    assert_eq!(late["code"], 500, "{late}");
    common::running(&b, 0, "the late handler is stopped").await;
    let bug = c.request("game.h.panic", &json!({})).await.expect("answered");
    assert_eq!(bug["code"], 500, "{bug}");
    let echoed = c
        .request("game.h.echo", &json!({ "after": true }))
        .await
        .expect("the connection goes on");
    assert_eq!(echoed, json!({ "after": true }));
}

async fn a_draining_backend_finishes_the_requests_it_runs(link) {
    let (f, b) = connector(link, Duration::from_secs(5)).await;
    let c = client(f.gateway.local_addr(), Transport::Tcp).await;
    let slow = tokio::spawn(async move {
        let answer = c.request("game.h.slow", &json!({ "ms": 300 })).await;
        (c, answer)
    });
    common::running(&b, 1, "the slow handler runs").await;
    assert!(b.shutdown(Duration::from_secs(5)).await, "drained in time");
    let (c, answer) = slow.await.expect("the client task");
    assert_eq!(answer.expect("answered")["slept"], 300);
    // Nothing reaches a backend that drained.
    let after = c.request("game.h.echo", &json!({})).await.expect("answered");
    assert_eq!(after["code"], 500, "{after}");
}

async fn only_a_direct_call_runs_the_handler_on_the_connection_task(link) {
    let (f, _b) = connector(link, Duration::from_secs(5)).await;
    let c = client(f.gateway.local_addr(), Transport::Tcp).await;
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let answer = c.request("game.h.task", &json!({})).await.expect("answered");
        tasks.push(answer["task"].as_str().expect("a task id").to_string());
    }
    tasks.dedup();
    match link {
        // One connection, one task, every request.
        Link::Direct => assert_eq!(tasks.len(), 1, "{tasks:?}"),
        // A task per request on the backend's side.
        Link::Tcp | Link::InProcess => assert_eq!(tasks.len(), 3, "{tasks:?}"),
    }
}
}

/// A backend filter with a bug: it panics before or after every request
/// it sees.
struct Panics {
    before: bool,
}

impl session_proxy::filters::Filter for Panics {
    fn name(&self) -> &'static str {
        "panics"
    }

    fn before(&self, _call: &session_proxy::filters::Call) -> session_proxy::filters::Verdict {
        if self.before {
            panic!("a filter bug");
        }
        session_proxy::filters::Verdict::go()
    }

    fn after(
        &self,
        _call: &session_proxy::filters::Call,
        _answered: &session_proxy::filters::Answered<'_>,
    ) {
        if !self.before {
            panic!("a filter bug");
        }
    }
}

over_every_link! {
async fn a_filter_that_panics_ends_its_request_at_once_not_the_connection(link) {
    // Called directly, the request runs on the connection's own task; on a
    // link, on a task whose answer must still be sent.
    let (f, b) = connector(link, Duration::from_secs(30)).await;
    b.filter("game.h.fail", Panics { before: false });
    b.filter("game.h.slow", Panics { before: true });
    let c = client(f.gateway.local_addr(), Transport::Tcp).await;
    for route in ["game.h.fail", "game.h.slow"] {
        let started = Instant::now();
        let bug = c.request(route, &json!({})).await.expect("answered");
        assert_eq!(bug["code"], 500, "{route}: {bug}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{route}: answered at once, not at the deadline"
        );
    }
    let echoed = c
        .request("game.h.echo", &json!({ "after": true }))
        .await
        .expect("the connection goes on");
    assert_eq!(echoed, json!({ "after": true }));
}
}
