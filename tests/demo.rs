//! The demo cluster runs end to end and its own checks pass.

use session_proxy::demo::{self, DemoConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_cluster_checks_pass() {
    let mut config = DemoConfig::default();
    config.sessions = 300;
    config.workers = 4;
    config.pipelined = 20_000;
    config.players = 40;
    config.messages = 5;
    let report = demo::run(config).await.expect("the demo's checks pass");
    assert_eq!(report.sessions, 300);
    assert_eq!(report.kicked, 30);
    assert_eq!(report.open_at_end, 270);
    assert_eq!(report.conflicts, 30);
    assert!(report.pipelined_per_sec > 0.0);
    assert_eq!(report.chat.players, 40);
    assert_eq!(report.chat.requests, 200);
    // 2 rooms of 20 players, 5 messages each: every player gets 20 * 5.
    assert_eq!(report.chat.pushes, 40 * 20 * 5);
    let text = report.to_string();
    assert!(text.contains("p99"), "{text}");
    assert!(text.contains("onChat pushes     4000 delivered"), "{text}");
}
