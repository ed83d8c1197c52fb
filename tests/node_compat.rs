//! The gateway driven by the real npm client packages (`pinus-protocol` for
//! every byte, `ws` for WebSocket), over WebSocket and raw TCP.

mod common;

use common::cluster::*;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::process::Command;

fn node_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("node")
}

/// Installs the locked npm packages once (`npm ci`), if they are missing.
async fn ensure_packages() -> bool {
    let dir = node_dir();
    if dir.join("node_modules").join("pinus-protocol").exists()
        && dir.join("node_modules").join("ws").exists()
    {
        return true;
    }
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(&dir)
        .stdout(Stdio::null())
        .status()
        .await;
    matches!(status, Ok(s) if s.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinus_protocol_clients_over_websocket_and_tcp() {
    let has_node = Command::new("node")
        .arg("--version")
        .output()
        .await
        .is_ok_and(|o| o.status.success());
    if !has_node || !ensure_packages().await {
        if std::env::var_os("CI").is_some() {
            panic!("node and npm are required in CI (.ci/run installs the packages)");
        }
        eprintln!("SKIPPED: node/npm or the npm packages are not available here");
        return;
    }
    let f = start_frontend("f1", |_| {}).await;
    let (_backend, _) = start_backend("game-1", &[&f]);
    wait_for_backends(&f, 1).await;

    let child = Command::new("node")
        .arg(node_dir().join("compat.js"))
        .arg(f.gateway.local_addr().to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node starts");
    let pid = child.id();
    let output = match tokio::time::timeout(Duration::from_secs(60), child.wait_with_output()).await
    {
        Ok(out) => out.expect("node ran"),
        Err(_) => {
            if let Some(pid) = pid {
                let _ = std::process::Command::new("kill")
                    .arg("-9")
                    .arg(pid.to_string())
                    .status();
            }
            panic!("the node client did not finish within 60 s");
        }
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "node client failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("node-compat ws: ok"), "{stdout}");
    assert!(stdout.contains("node-compat tcp: ok"), "{stdout}");
}
