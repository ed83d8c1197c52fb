//! A stored session that cannot be decoded strands no other: its frontend
//! restarts with the rest (the bad one skipped and counted), and resuming
//! it answers that it cannot be read, not "try again".

use crate::common;

use serde_json::json;
use session_proxy::frontend::{RedisStore, RedisStoreConfig, StoreOptions};
use session_proxy::node::{FrontendRole, Node};
use session_proxy::{ConnectInfo, SessionConfig, SessionService};
use session_proxy_client::{PomeloClient, PomeloOptions};
use std::sync::Arc;
use std::time::Duration;

async fn store(url: &str) -> Arc<RedisStore> {
    Arc::new(
        RedisStore::connect(RedisStoreConfig::new(url))
            .await
            .expect("store"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_stored_session_is_skipped_and_the_frontend_starts_with_the_rest() {
    let Some(redis) = common::redis::RedisServer::start() else {
        return;
    };
    // A frontend's two sessions, written to the store; then it dies.
    let sessions = SessionService::new(SessionConfig::new("connector-a"));
    sessions
        .attach_store(store(&redis.url()).await, StoreOptions::default())
        .await
        .expect("attach");
    let mut tokens = Vec::new();
    for uid in ["bad", "good"] {
        let owner = sessions.create(ConnectInfo::default());
        sessions.bind(owner.sid(), uid).expect("bind");
        tokens.push(sessions.issue_token(owner.sid()).expect("token"));
        assert!(owner.park(Duration::from_secs(60)));
    }
    sessions.flush().await.expect("written");
    assert!(sessions.stop_tasks(Duration::from_secs(2)).await);
    drop(sessions);

    // One record is damaged in Redis.
    let bad_key = format!("sp:s:{{{}}}", &tokens[0][..16]);
    let client = redis::Client::open(redis.url()).expect("client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let _: () = redis::cmd("HSET")
        .arg(&bad_key)
        .arg("d")
        .arg(&b"\xc1 not msgpack"[..])
        .query_async(&mut conn)
        .await
        .expect("HSET");

    // The frontend comes back with the good one.
    let mut node = Node::builder()
        .frontend(
            FrontendRole::new("connector-a", "connector")
                .client_addr("127.0.0.1:0".parse().expect("addr")),
        )
        .store(store(&redis.url()).await, StoreOptions::default())
        .start()
        .await
        .expect("it starts despite the bad record");
    assert_eq!(node.restored(), 1);
    let addr = node.client_addr().expect("clients");
    let resume = |token: String| {
        let mut options = PomeloOptions::default();
        options.user = json!({ "resumeToken": token });
        PomeloClient::connect_with(addr, options)
    };
    let good = resume(tokens[1].clone())
        .await
        .expect("the good one resumes");
    assert_eq!(good.handshake()["user"]["resumed"], true);
    // The bad one will never resume: the client is told so, and gets a
    // fresh session rather than a "try again".
    let bad = resume(tokens[0].clone()).await.expect("a fresh session");
    let user = &bad.handshake()["user"];
    assert_eq!(user["resumed"], false, "{user}");
    assert_eq!(user["resumeRefused"], "the stored session cannot be read");
    assert!(node.drain(Duration::from_secs(3)).await.complete());
}
