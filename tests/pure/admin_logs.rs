//! A flood of admin requests without a valid token is answered 401 each
//! time, and logged at most once a second with the count of the rest.
//!
//! Alone in its own test binary on purpose: `tracing` caches per call site
//! whether anyone listens.

use crate::common;

use session_proxy::node::{FrontendRole, Node};
use session_proxy::protocol::Secret;
use std::time::Duration;

#[tokio::test]
async fn refused_admin_requests_are_logged_once_a_second_with_a_count() {
    let (logs, _guard) = common::logs::Captured::install();
    let mut node = Node::builder()
        .frontend(FrontendRole::new("connector-1", "connector"))
        .secret(Secret::new("the-cluster-secret"))
        .admin("127.0.0.1:0".parse().expect("addr"), None)
        .start()
        .await
        .expect("node");
    let admin = node.admin_addr().expect("an admin address");
    const REQUESTS: usize = 300;
    let started = std::time::Instant::now();
    for _ in 0..REQUESTS {
        let (status, _) = common::http::get(admin, "/admin/info").await.expect("GET");
        assert_eq!(status, 401);
    }
    let seconds = started.elapsed().as_secs() as usize;
    let text = logs.text();
    let lines = text.matches("admin action refused").count();
    // One line a second at most (one more for the second it started in).
    assert!(
        lines >= 1 && lines <= seconds + 1,
        "{lines} lines in {seconds} s: {text}"
    );
    assert!(text.contains("suppressed="), "{text}");
    assert!(node.drain(Duration::from_secs(2)).await.complete());
}
