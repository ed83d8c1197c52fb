//! The fault harness's short run, as CI runs it: a fixed list of seeds,
//! each drawing a scenario of `bench/src/faults/scenarios.toml` (a frontend
//! cut off from Redis, packet loss, a paused frontend, a one-way partition
//! between players and a frontend, a frontend killed in the middle of its
//! drain, Redis restarted empty, a frontend's store link stalled half-open,
//! a frontend's clock jumping, a Redis Cluster master failing over), run on
//! hosts in network namespaces of the
//! harness's own, and checked: no acknowledged write lost, no stale read,
//! every request ended in time. And a scenario that must lose writes
//! (`lossy.toml`), to see the harness catch it. The long soak is
//! `bench/faults.sh MINUTES`.
//!
//! A seed draws from the scenarios file as it is: adding a scenario moves
//! seeds to other scenarios, and this list with them.

use crate::common;

use std::time::Duration;

/// The seeds, and the scenarios they draw (`bench faults --plan --seed N`).
const SEEDS: [(u64, &str); 9] = [
    (22, "a frontend cut off from Redis"),
    (11, "packet loss on a frontend"),
    (18, "a paused frontend"),
    (10, "a frontend cut off from the players, one way"),
    (19, "a frontend killed in the middle of its drain"),
    (12, "Redis restarted empty"),
    (35, "a frontend's store link stalls, half-open"),
    (16, "a frontend's clock jumps ahead, then back"),
    (1, "a Redis Cluster master fails over"),
];

/// `session-proxy bench faults <args>`: whether it succeeded, and what it
/// printed.
async fn bench_faults(args: &[String]) -> (bool, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(400),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_session-proxy"))
            .args(["bench", "faults"])
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the run ends")
    .expect("it runs");
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    let why = String::from_utf8_lossy(&out.stderr);
    (out.status.success(), format!("{printed}\n{why}"))
}

/// One harness run at a time: each takes the machine's two cores.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Whether the harness can run here; SKIPPED (or a failure in CI) if not.
fn harness_available() -> bool {
    if let Err(why) = session_proxy_bench::faults::net::available() {
        if std::env::var_os("CI").is_some() {
            panic!(
                "the fault harness needs root, ip and nft in CI (.ci/run installs nftables): {why}"
            );
        }
        eprintln!("SKIPPED: {why}");
        return false;
    }
    // Clock jumps run nodes under libfaketime (Debian's faketime); a Redis
    // Cluster is made with redis-cli.
    common::installed("redis-server", "redis-server")
        && common::installed("redis-cli", "redis-server")
        && common::installed("faketime", "faketime")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_short_seed_list_runs_every_scenario_under_its_faults_and_keeps_every_promise() {
    if !harness_available() {
        return;
    }
    let _alone = ONE_AT_A_TIME.lock().await;
    let args: Vec<String> = SEEDS
        .iter()
        .flat_map(|(seed, _)| ["--seed".to_string(), seed.to_string()])
        .collect();
    let (ok, printed) = bench_faults(&args).await;
    assert!(ok, "{printed}");
    for (seed, scenario) in SEEDS {
        let line = printed
            .lines()
            .find(|l| l.starts_with(&format!("seed {seed:>6} ")))
            .unwrap_or_else(|| panic!("no run of seed {seed}:\n{printed}"));
        assert!(
            line.contains(scenario),
            "seed {seed} drew another scenario: {line}"
        );
        assert!(line.contains(" 0 violations"), "{line}");
    }
    assert!(
        printed.contains("faults: 9 runs,") && printed.contains("0 with violations or not run"),
        "{printed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scenario_that_loses_every_copy_of_the_sessions_is_caught() {
    if !harness_available() {
        return;
    }
    let _alone = ONE_AT_A_TIME.lock().await;
    let lossy = concat!(env!("CARGO_MANIFEST_DIR"), "/bench/src/faults/lossy.toml");
    let args = ["--scenarios", lossy, "--seed", "1"].map(str::to_string);
    let (ok, printed) = bench_faults(&args).await;
    assert!(!ok, "the run failed: {printed}");
    assert!(printed.contains("stale read"), "{printed}");
    assert!(
        printed.contains("seeds [1]"),
        "the seed is named for a replay: {printed}"
    );
}
