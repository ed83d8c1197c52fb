//! The npm client packages of `tests/node` (locked, installed with `npm ci`)
//! and node scripts run against a test's nodes, stopped by their PID.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::process::Command;

/// `tests/node`.
pub fn node_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("node")
}

/// `clients/js`, the TypeScript client library.
pub fn client_js_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("clients")
        .join("js")
}

/// Whether node and the locked packages of `tests/node` are there
/// (installed with `npm ci` if missing). Without them a test says SKIPPED,
/// and fails in CI.
pub async fn node_ready() -> bool {
    let wanted = ["pinus-protocol", "ws", "pomelo-protobuf", "puppeteer-core"];
    npm_ready(&node_dir(), &wanted).await
}

/// Whether node and the locked packages `wanted` of the npm package in
/// `dir` are there (installed with `npm ci` if missing). Without them a
/// test says SKIPPED, and fails in CI.
pub async fn npm_ready(dir: &std::path::Path, wanted: &[&str]) -> bool {
    let has_node = Command::new("node")
        .arg("--version")
        .output()
        .await
        .is_ok_and(|o| o.status.success());
    if has_node && ensure_packages(dir, wanted).await {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("node and npm are required in CI (.ci/run installs the packages)");
    }
    eprintln!("SKIPPED: node/npm or the npm packages are not available here");
    false
}

async fn ensure_packages(dir: &std::path::Path, wanted: &[&str]) -> bool {
    let modules = dir.join("node_modules");
    if wanted.iter().all(|p| modules.join(p).exists()) {
        return true;
    }
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(dir)
        .stdout(Stdio::null())
        .status()
        .await;
    matches!(status, Ok(s) if s.success())
}

/// Runs `node tests/node/<script> <args…>` to its end, within `within`
/// (then it is killed by its PID); returns its stdout, and fails the test
/// if it exits non-zero.
pub async fn run_script(script: &str, args: &[String], within: Duration) -> String {
    run_script_with(script, args, &[], within).await
}

/// [`run_script`] with environment variables.
pub async fn run_script_with(
    script: &str,
    args: &[String],
    env: &[(&str, String)],
    within: Duration,
) -> String {
    let mut argv = vec![node_dir().join(script).display().to_string()];
    argv.extend(args.iter().cloned());
    run_node(&node_dir(), &argv, env, within).await
}

/// Runs `node <args…>` in `dir` to its end, within `within` (then it is
/// killed by its PID); returns its stdout, and fails the test if it exits
/// non-zero.
pub async fn run_node(
    dir: &std::path::Path,
    args: &[String],
    env: &[(&str, String)],
    within: Duration,
) -> String {
    let what = args.join(" ");
    let mut command = Command::new("node");
    command
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in env {
        command.env(k, v);
    }
    let child = command.spawn().expect("node starts");
    let pid = child.id();
    let output = match tokio::time::timeout(within, child.wait_with_output()).await {
        Ok(out) => out.expect("node ran"),
        Err(_) => {
            if let Some(pid) = pid {
                // TERM first: puppeteer closes the browser it started.
                for (signal, wait) in [("-TERM", 3), ("-KILL", 0)] {
                    let _ = std::process::Command::new("kill")
                        .args([signal, &pid.to_string()])
                        .status();
                    std::thread::sleep(Duration::from_secs(wait));
                }
            }
            panic!("node {what} did not finish within {within:?}");
        }
    };
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "node {what} failed:\n{stdout}\n{stderr}"
    );
    stdout
}

/// Debian's Chromium (`chromium`, or `$CHROMIUM`), never a downloaded
/// browser. Without it a test says SKIPPED, and fails in CI.
pub fn chromium() -> Option<String> {
    let found = std::env::var("CHROMIUM").ok().or_else(|| {
        ["chromium", "chromium-browser"].iter().find_map(|name| {
            let out = std::process::Command::new("sh")
                .args(["-c", &format!("command -v {name}")])
                .output()
                .ok()?;
            let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
            (out.status.success() && !path.is_empty()).then_some(path)
        })
    });
    if found.is_none() {
        if std::env::var_os("CI").is_some() {
            panic!("chromium is required in CI (.ci/run installs it)");
        }
        eprintln!("SKIPPED: chromium is not installed; install Debian's chromium to run this test");
    }
    found
}
