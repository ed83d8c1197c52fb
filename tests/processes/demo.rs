//! The demo cluster (`session-proxy demo`, the README's first command) runs
//! end to end and its own checks pass.

use serde_json::Value;
use std::process::Command;

#[test]
fn demo_cluster_checks_pass() {
    let args = [
        "demo",
        "--sessions",
        "300",
        "--workers",
        "4",
        "--pipelined",
        "20000",
        "--players",
        "40",
        "--messages",
        "5",
    ];
    let out = Command::new(env!("CARGO_BIN_EXE_session-proxy"))
        .args(args)
        .arg("--json")
        .output()
        .expect("run session-proxy demo");
    assert!(
        out.status.success(),
        "the demo's checks pass: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("one JSON report");
    assert_eq!(report["sessions"], 300);
    assert_eq!(report["kicked"], 30);
    assert_eq!(report["open_at_end"], 270);
    assert_eq!(report["conflicts"], 30);
    assert!(report["pipelined_per_sec"].as_f64().unwrap_or(0.0) > 0.0);
    assert_eq!(report["chat"]["players"], 40);
    assert_eq!(report["chat"]["requests"], 200);
    // 2 rooms of 20 players, 5 messages each: every player gets 20 * 5.
    assert_eq!(report["chat"]["pushes"], 40 * 20 * 5);

    // The human report says the same.
    let out = Command::new(env!("CARGO_BIN_EXE_session-proxy"))
        .args(args)
        .output()
        .expect("run session-proxy demo");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("p99"), "{text}");
    assert!(text.contains("onChat pushes     4000 delivered"), "{text}");
}
