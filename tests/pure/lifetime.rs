//! Session lifetime: idle and absolute timeouts, parking on disconnect,
//! resume with rotating tokens.

use crate::common;
use common::token_of;

use serde_json::{json, Value};
use session_proxy::backend::{BackendSession, Handlers};
use session_proxy::frontend::{EndReason, Gateway, GatewayConfig, GatewayServer};
use session_proxy::{
    BackendConfig, BackendSessionService, ConnectInfo, Outbound, RpcConfig, RpcServer,
    SessionConfig, SessionEvent, SessionService, SingleSessionPolicy,
};
use session_proxy_client::{PomeloClient, PomeloEvent, PomeloOptions, Transport};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(5);

#[tokio::test(start_paused = true)]
async fn idle_timeout_fires_after_inactivity_and_touch_postpones_it() {
    let mut config = SessionConfig::new("f1");
    config.idle_timeout = Some(Duration::from_secs(10));
    let sessions = SessionService::new(config);
    let mut events = sessions.subscribe();
    let mut owner = sessions.create(ConnectInfo::default());
    let sid = owner.sid();

    tokio::time::sleep(Duration::from_secs(9)).await;
    assert!(sessions.get(sid).is_some(), "not idle long enough yet");
    sessions.touch(sid);
    tokio::time::sleep(Duration::from_secs(9)).await;
    assert!(
        sessions.get(sid).is_some(),
        "the touch restarted the idle timer"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    tokio::task::yield_now().await;
    assert!(sessions.get(sid).is_none(), "idle for 10 s: expired");
    assert_eq!(
        owner.recv().await,
        Some(Outbound::Kick {
            reason: "expired".into()
        })
    );
    let closed = std::iter::from_fn(|| events.try_recv().ok())
        .find(|e| matches!(e, SessionEvent::Closed { .. }));
    assert_eq!(
        closed,
        Some(SessionEvent::Closed {
            sid,
            uid: None,
            reason: session_proxy::frontend::EndReason::Expired
        })
    );
}

#[tokio::test(start_paused = true)]
async fn absolute_lifetime_fires_however_active_and_can_be_overridden() {
    let mut config = SessionConfig::new("f1");
    config.lifetime = Some(Duration::from_secs(60));
    let sessions = SessionService::new(config);
    let busy = sessions.create(ConnectInfo::default());
    let longer = sessions.create(ConnectInfo::default());
    sessions
        .set_timeouts(longer.sid(), None, Some(Duration::from_secs(120)))
        .expect("open");
    for _ in 0..11 {
        tokio::time::sleep(Duration::from_secs(5)).await;
        sessions.touch(busy.sid());
        sessions.touch(longer.sid());
    }
    assert!(sessions.get(busy.sid()).is_some(), "55 s old");
    tokio::time::sleep(Duration::from_secs(6)).await;
    tokio::task::yield_now().await;
    assert!(
        sessions.get(busy.sid()).is_none(),
        "61 s old: expired despite activity"
    );
    assert!(
        sessions.get(longer.sid()).is_some(),
        "its own lifetime is 120 s"
    );
    tokio::time::sleep(Duration::from_secs(60)).await;
    tokio::task::yield_now().await;
    assert!(sessions.get(longer.sid()).is_none());
}

#[tokio::test(start_paused = true)]
async fn a_parked_session_expires_at_the_end_of_its_grace() {
    let sessions = SessionService::new(SessionConfig::new("f1"));
    let owner = sessions.create(ConnectInfo::default());
    let sid = owner.sid();
    sessions.bind(sid, "alice").expect("bind");
    assert!(owner.park(Duration::from_secs(30)));
    assert!(sessions.is_parked(sid));
    tokio::time::sleep(Duration::from_secs(29)).await;
    assert!(sessions.get(sid).is_some(), "still within its grace");
    tokio::time::sleep(Duration::from_secs(2)).await;
    tokio::task::yield_now().await;
    assert!(sessions.get(sid).is_none());
    assert!(
        sessions.get_by_uid("alice").is_empty(),
        "and gone from the uid index"
    );
}

struct Node {
    sessions: SessionService,
    _rpc: RpcServer,
    gateway: GatewayServer,
    backend: BackendSessionService,
}

async fn start(policy: SingleSessionPolicy, grace: Duration, overlap: Duration) -> Node {
    start_with(policy, grace, overlap, false).await
}

/// A node whose gateway refuses stale resume tokens when `strict`.
async fn start_with(
    policy: SingleSessionPolicy,
    grace: Duration,
    overlap: Duration,
    strict: bool,
) -> Node {
    let mut config = SessionConfig::new("f1");
    config.single_session = policy;
    config.token_overlap = overlap;
    config.owner_queue = 4;
    let sessions = SessionService::new(config);
    let rpc = common::rpc_on_loopback(&sessions, RpcConfig::default()).await;
    let mut gw = GatewayConfig::new("connector");
    gw.resume_grace = grace;
    gw.strict_resume = strict;
    let mut gateway = Gateway::new(sessions.clone(), rpc.backends(), gw);
    gateway
        .handlers()
        .add("connector.entry.login", |ctx, body: Value| async move {
            let uid = body["uid"].as_str().unwrap_or_default().to_string();
            ctx.sessions
                .bind(ctx.sid, &uid)
                .map_err(|e| session_proxy::backend::HandlerError::new(e.to_string()))?;
            Ok(json!({ "sid": ctx.sid.to_string() }))
        });
    let gateway = gateway
        .bind("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("gateway");
    let mut bc = BackendConfig::new("game-1");
    bc.server_type = Some("game".into());
    let mut handlers = Handlers::new();
    handlers.add("game.h.whoami", |s: BackendSession, _b: Value| async move {
        Ok(json!({ "sid": s.id().to_string(), "uid": s.uid(), "gold": s.get::<u32>("gold").ok().flatten() }))
    });
    let backend = BackendSessionService::serving(bc, handlers).expect("valid config");
    backend.add_frontend("f1", rpc.local_addr().to_string());
    Node {
        sessions,
        _rpc: rpc,
        gateway,
        backend,
    }
}

async fn connect(
    node: &Node,
    token: Option<&str>,
) -> Result<PomeloClient, session_proxy_client::ClientError> {
    let mut options = PomeloOptions::default();
    options.transport = Transport::WebSocket;
    if let Some(t) = token {
        options.user = json!({ "resumeToken": t });
    }
    PomeloClient::connect_with(node.gateway.local_addr(), options).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_and_resume_keeps_sid_uid_settings_and_parked_pushes() {
    let node = start(
        SingleSessionPolicy::Off,
        Duration::from_secs(10),
        Duration::from_secs(5),
    )
    .await;
    let a = connect(&node, None).await.expect("connect");
    assert_eq!(a.handshake()["user"]["resumed"], false);
    let token = token_of(&a);
    assert_eq!(token.len(), 48);
    let login = a
        .request("connector.entry.login", &json!({ "uid": "alice" }))
        .await
        .expect("login");
    let sid = login["sid"].as_str().expect("sid").to_string();
    let mut s = node
        .backend
        .get_by_uid("f1", "alice")
        .await
        .expect("call")
        .remove(0);
    s.set("gold", &42u32).expect("encode");
    s.push("gold").await.expect("push");

    drop(a); // the network drops
    let until = tokio::time::Instant::now() + WAIT;
    while !node.sessions.is_parked(s.id()) {
        assert!(tokio::time::Instant::now() < until, "never parked");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Pushes sent while parked wait for the resume (up to the queue size,
    // 4 here); the rest are reported undelivered.
    let mut missed = Vec::new();
    for i in 0..6 {
        missed.extend(
            node.backend
                .push_to_sids("f1", "onMail", &json!({ "i": i }), vec![s.id()])
                .await
                .expect("push call"),
        );
    }
    assert_eq!(
        missed,
        vec![s.id(), s.id()],
        "the 5th and 6th were not delivered"
    );
    assert!(
        node.sessions.get(s.id()).is_some(),
        "a full queue does not close a parked session"
    );

    let mut b = connect(&node, Some(&token)).await.expect("resume");
    assert_eq!(b.handshake()["user"]["resumed"], true);
    let rotated = token_of(&b);
    assert_ne!(rotated, token, "rotated on resume");
    for i in 0..4 {
        assert_eq!(
            b.next_push(WAIT).await.expect("parked push"),
            ("onMail".into(), json!({ "i": i }))
        );
    }
    // Backends see no difference.
    let me = b
        .request("game.h.whoami", &json!({}))
        .await
        .expect("whoami");
    assert_eq!(me, json!({ "sid": sid, "uid": "alice", "gold": 42 }));
    assert_eq!(node.sessions.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_tokens_get_a_fresh_session_that_says_why() {
    let node = start(
        SingleSessionPolicy::Off,
        Duration::from_millis(300),
        Duration::from_millis(100),
    )
    .await;
    let a = connect(&node, None).await.expect("connect");
    let first = token_of(&a);
    let old_sid = node.sessions.sids();
    a.request("connector.entry.login", &json!({ "uid": "alice" }))
        .await
        .expect("login");
    drop(a);
    // Wait for the parked session to expire: the event, not a sleep.
    let mut events = node.sessions.subscribe();
    tokio::time::timeout(WAIT, async {
        while node.sessions.count() > 0 {
            let _ = events.recv().await;
        }
    })
    .await
    .expect("the parked session expired");
    for (token, why) in [
        (first.as_str(), "the session is gone"),
        ("not-a-token", "malformed resume token"),
    ] {
        let c = connect(&node, Some(token))
            .await
            .expect("a stale token still connects");
        let user = &c.handshake()["user"];
        assert_eq!(user["resumed"], false, "{user}");
        assert_eq!(user["resumeRefused"], why, "{user}");
        assert!(user["resumeToken"].is_string(), "a token of its own");
        // A fresh session: nobody's uid, not the old sid.
        let me = c
            .request("game.h.whoami", &json!({}))
            .await
            .expect("whoami");
        assert_eq!(me["uid"], Value::Null);
        let old: Vec<String> = old_sid.iter().map(ToString::to_string).collect();
        assert!(!old.contains(&me["sid"].as_str().expect("sid").to_string()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_expired_and_rotated_out_tokens_are_refused_when_strict() {
    let node = start_with(
        SingleSessionPolicy::Off,
        Duration::from_millis(600),
        Duration::from_millis(300),
        true,
    )
    .await;
    let garbage = connect(&node, Some("not-a-token"))
        .await
        .expect_err("refused");
    assert!(garbage.to_string().contains("500"), "{garbage:#}");
    let forged = connect(&node, Some(&"ab".repeat(24)))
        .await
        .expect_err("refused");
    assert!(forged.to_string().contains("500"), "{forged:#}");

    let mut events = node.sessions.subscribe();
    let a = connect(&node, None).await.expect("connect");
    let first = token_of(&a);
    let sid_before = node.sessions.sids();
    drop(a);
    common::next_parked(&mut events, WAIT).await;
    let b = connect(&node, Some(&first))
        .await
        .expect("resume within grace");
    let second = token_of(&b);
    // Within the overlap the previous token still works (the client may have
    // missed the reply) and takes the session over.
    let mut b = b;
    let c = connect(&node, Some(&first))
        .await
        .expect("previous token within the overlap");
    assert_eq!(
        b.next_event(WAIT).await,
        Some(PomeloEvent::Kick {
            reason: "resumed elsewhere".into()
        })
    );
    let third = token_of(&c);
    tokio::time::sleep(Duration::from_millis(400)).await;
    // After the overlap the rotated-out tokens are refused...
    for old in [&first, &second] {
        let err = connect(&node, Some(old)).await.expect_err("rotated out");
        assert!(err.to_string().contains("500"), "{err:#}");
    }
    // ...and nothing changed: the same one session, still owned by c.
    assert_eq!(node.sessions.sids(), sid_before);
    assert!(!node.sessions.is_parked(sid_before[0]));
    c.request("connector.entry.login", &json!({ "uid": "bob" }))
        .await
        .expect("c still works");

    // After the grace the session is gone for good.
    drop(c);
    let expired = async {
        loop {
            match events.recv().await {
                Ok(SessionEvent::Closed { reason, .. }) => return reason,
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(err) => panic!("session events ended: {err}"),
            }
        }
    };
    let reason = tokio::time::timeout(WAIT, expired)
        .await
        .expect("the session expired");
    assert_eq!(reason, EndReason::Expired);
    let err = connect(&node, Some(&third)).await.expect_err("expired");
    assert!(err.to_string().contains("500"), "{err:#}");
    assert_eq!(node.sessions.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_session_policy_holds_across_resume() {
    let node = start(
        SingleSessionPolicy::KickOld,
        Duration::from_secs(10),
        Duration::from_secs(5),
    )
    .await;
    let a = connect(&node, None).await.expect("connect");
    let token = token_of(&a);
    a.request("connector.entry.login", &json!({ "uid": "alice" }))
        .await
        .expect("login");
    let mut events = node.sessions.subscribe();
    drop(a);
    crate::common::next_parked(&mut events, Duration::from_secs(5)).await;
    // alice logs in again on a new session while the old one is parked:
    // the policy replaces the parked session, so its token is dead.
    let b = connect(&node, None).await.expect("connect");
    b.request("connector.entry.login", &json!({ "uid": "alice" }))
        .await
        .expect("login");
    let again = connect(&node, Some(&token))
        .await
        .expect("a stale token gets a fresh session");
    assert_eq!(
        again.handshake()["user"]["resumed"],
        false,
        "the replaced session cannot be resumed"
    );
    assert_eq!(node.sessions.get_by_uid("alice").len(), 1);
}
