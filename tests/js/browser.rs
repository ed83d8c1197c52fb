//! The chat example's page in a real browser: headless Chromium (Debian's
//! package) driven by npm `puppeteer-core` from `tests/node/browser.js`.

use crate::common;

use common::node::{chromium, node_ready, run_script_with};
use session_proxy_chat::{ChatCluster, ChatConfig};
use std::path::PathBuf;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pages_chat_and_a_reloaded_page_resumes_its_session() {
    if !node_ready().await {
        return;
    }
    let Some(chromium) = chromium() else {
        return;
    };
    let mut config = ChatConfig::ephemeral();
    config.web_port = Some(0);
    let cluster = ChatCluster::start(config).await.expect("chat cluster");
    let url = format!(
        "http://{}/",
        cluster.web_addr().expect("the page is served")
    );
    // `SESSION_PROXY_SCREENSHOT=docs/chat-page.png` refreshes the README's.
    let shot = std::env::var("SESSION_PROXY_SCREENSHOT")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("chat-page.png"));
    let _ = std::fs::remove_file(&shot);
    let stdout = run_script_with(
        "browser.js",
        &[url, shot.display().to_string()],
        &[("CHROMIUM", chromium)],
        Duration::from_secs(120),
    )
    .await;
    assert!(stdout.contains("browser: ok"), "{stdout}");
    // The reload resumed the session: one per user, no second one parked.
    let mut uids = Vec::new();
    for i in 0..cluster.connector_addrs().len() {
        if let Some(sessions) = cluster.sessions(i) {
            sessions.for_each(|s| uids.push(s.uid.clone().unwrap_or_default()));
        }
    }
    uids.sort();
    assert_eq!(uids, ["ann*lobby", "bob*lobby"]);
    let png = std::fs::read(&shot).expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG"), "the screenshot is a PNG");
    cluster.shutdown(Duration::from_secs(2)).await;
}
