//! The chat example as the client libraries meet it in production: its
//! connectors keep their sessions in Redis and register there, so a
//! drained connector's players resume on the other one.

use serde_json::json;
use session_proxy::registry::{RedisMembership, RedisMembershipConfig};
use session_proxy_chat::{ChatCluster, ChatConfig};
use session_proxy_client::PomeloClient;
use std::sync::Arc;
use std::time::Duration;

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
    let gate = cluster.gate_addr();
    super::eventually(
        Duration::from_secs(10),
        "the gate hands out a connector",
        || async move {
            let client = PomeloClient::connect(gate)
                .await
                .map_err(|e| e.to_string())?;
            let entry = client
                .request("gate.gateHandler.queryEntry", &json!({ "uid": "anyone" }))
                .await
                .map_err(|e| e.to_string())?;
            match entry["code"] == 200 {
                true => Ok(()),
                false => Err(entry.to_string()),
            }
        },
    )
    .await;
    cluster
}
