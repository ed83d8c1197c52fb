//! The README's first program, wired the same way on a free port: a
//! client's request reaches the backend handler as soon as `start`
//! returns, its push lands on the frontend's session, and one drain call
//! answers, kicks, ends the session (no store: its close hook runs) and
//! stops everything. The README carries `examples/minimal.rs` verbatim, and
//! this test runs that file's own `start`.

use serde_json::json;
use session_proxy_client::{PomeloClient, PomeloEvent};
use std::time::Duration;

/// The README's program itself, compiled here (its `main` is not run).
#[path = "../../examples/minimal.rs"]
#[allow(dead_code)]
mod app;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_minimal_app_serves_a_client_and_drains_in_one_call() {
    let mut node = app::start("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("node");

    // No polling: the first request after `start` is forwarded.
    let mut client = PomeloClient::connect(node.client_addr().expect("a gateway"))
        .await
        .expect("client");
    let answer = client
        .request("area.playerHandler.move", &json!({ "x": 3, "y": 4 }))
        .await
        .expect("answer");
    assert_eq!(answer, json!({ "code": 200, "x": 3, "y": 4 }));
    let sessions = node.sessions().expect("a frontend").clone();
    let sid = sessions.sids()[0];
    let pos = &sessions.get(sid).expect("open").settings["pos"].value;
    assert_eq!(
        rmp_serde::from_slice::<(i32, i32)>(pos).expect("decodes"),
        (3, 4)
    );

    // A bad body is a typed answer, not a dropped connection.
    let bad = client
        .request("area.playerHandler.move", &json!({ "x": "three" }))
        .await
        .expect("answer");
    assert_eq!(bad["code"], 400, "{bad}");

    let report = node.drain(Duration::from_secs(2)).await;
    assert!(report.complete(), "{report:?}");
    assert_eq!(report.kicked, 1, "{report:?}");
    assert_eq!(report.ended, 1, "no store: the parked session ended");
    assert_eq!(sessions.count(), 0);
    assert_eq!(
        client.next_event(Duration::from_secs(2)).await,
        Some(PomeloEvent::Kick {
            reason: "reconnect".into()
        })
    );

    // The README shows examples/minimal.rs as it is.
    let readme = include_str!("../../README.md");
    let example = include_str!("../../examples/minimal.rs");
    assert!(
        readme.contains(example),
        "README.md must carry examples/minimal.rs verbatim"
    );
}
