//! The chat example as the client libraries meet it in production: its
//! connectors keep their sessions in Redis and register there, so a
//! drained connector's players resume on the other one.

use serde_json::json;
use session_proxy::registry::{RedisMembership, RedisMembershipConfig};
use session_proxy_chat::{ChatCluster, ChatConfig};
use session_proxy_client::PomeloClient;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Two connectors and two chat servers on the Redis at `url` (store and
/// registry), on free loopback ports; returned once the gate hands out a
/// connector (it knows them from the registry).
pub async fn chat_on_redis(url: String) -> ChatCluster {
    let mut registry = RedisMembershipConfig::new(url.clone());
    registry.resync = Duration::from_millis(200);
    let registry = RedisMembership::connect(registry).await.expect("registry");
    let mut config = ChatConfig::ephemeral();
    config.registry = Some(Arc::new(registry));
    config.store = Some(Arc::new(super::store::store_on(url).await));
    let cluster = ChatCluster::start(config).await.expect("chat cluster");
    let started = Instant::now();
    loop {
        let gate = PomeloClient::connect(cluster.gate_addr())
            .await
            .expect("gate");
        let entry = gate
            .request("gate.gateHandler.queryEntry", &json!({ "uid": "anyone" }))
            .await
            .expect("an answer");
        if entry["code"] == 200 {
            return cluster;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the gate has no connector: {entry}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
