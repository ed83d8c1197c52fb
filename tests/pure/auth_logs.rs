//! Refusals of unauthenticated peers are logged with their address and
//! never with the secret.
//!
//! Alone in its own test binary on purpose: `tracing` caches per call site
//! whether anyone listens, and another test hitting the same log line first
//! on a thread without a subscriber would hide it from this one's.

use crate::common;

use common::*;
use session_proxy::{ConnectInfo, ErrorCode};

const SECRET: &str = "the-cluster-secret-7f3a9c";

#[tokio::test]
async fn only_peers_with_the_secret_get_in_and_refusals_are_logged_without_it() {
    let (logs, _guard) = common::logs::Captured::install();

    let (sessions, server) = secured_frontend(Some(SECRET)).await;
    let owner = sessions.create(ConnectInfo::default());
    let sid = owner.sid();

    // The right secret: calls work.
    let good = secured_backend(Some(SECRET), server.local_addr());
    let mut s = good
        .get("f1", sid)
        .await
        .expect("authenticated")
        .expect("open");
    s.bind("alice").await.expect("bind");

    // A wrong secret, and none at all: refused before any session call.
    for secret in [Some("not-the-secret"), None] {
        let bad = secured_backend(secret, server.local_addr());
        let err = bad.get("f1", sid).await.expect_err("refused");
        assert_eq!(err.code(), ErrorCode::Unavailable, "{err}");
        let shown = session_proxy::protocol::chain(&err).to_string();
        assert!(
            shown.contains("unauthorized") || shown.contains("secret"),
            "{shown}"
        );
        let err = bad
            .client("f1")
            .expect("known")
            .call(session_proxy::protocol::KickBySid {
                sid,
                reason: "x".into(),
            })
            .await
            .expect_err("refused");
        assert_eq!(err.code(), ErrorCode::Unavailable);
    }
    // Nothing the refused peers tried changed anything.
    let now = sessions.get(sid).expect("still open");
    assert_eq!(now.uid.as_deref(), Some("alice"));

    let text = logs.text();
    assert!(text.contains("failed authentication"), "{text}");
    assert!(text.contains("did not authenticate"), "{text}");
    assert!(
        text.contains("127.0.0.1:"),
        "the peer address is logged: {text}"
    );
    assert!(!text.contains(SECRET), "the secret must never be logged");
    assert!(!text.contains("not-the-secret"));
}
