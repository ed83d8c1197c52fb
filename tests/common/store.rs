//! Store fixtures: a stored session record, a store on a URL, raw
//! connections to look at what Redis holds.

use bytes::Bytes;
use session_proxy::frontend::{RedisStore, RedisStoreConfig, StoredSession};
use session_proxy::protocol::{SessionInfo, Setting};
use session_proxy::SessionId;
use std::collections::BTreeMap;

use super::redis::RedisCluster;

/// A session as a frontend stores it: one setting, metadata, a token.
pub fn record(sid: u64, frontend: &str, uid: Option<&str>) -> StoredSession {
    let mut settings = BTreeMap::new();
    settings.insert(
        "room".into(),
        Setting {
            value: Bytes::from_static(b"\xa4hall"),
            version: 3,
        },
    );
    StoredSession {
        info: SessionInfo {
            sid: SessionId::from_raw(sid),
            frontend_id: frontend.into(),
            uid: uid.map(str::to_string),
            created_unix_ms: 1,
            last_active_unix_ms: 2,
            remote_addr: Some("127.0.0.1:5555".into()),
            metadata: [("device".to_string(), "phone".to_string())].into(),
            parked: false,
        },
        settings,
        last_version: 3,
        token: Some([7; 32]),
        previous_token: None,
        epoch: 0,
        pushes: Vec::new(),
    }
}

/// A Redis store on `url` (one server or `redis+cluster://…`).
pub async fn store_on(url: String) -> RedisStore {
    RedisStore::connect(RedisStoreConfig::new(url))
        .await
        .expect("connect")
}

/// A plain connection to one server.
pub async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect")
}

/// A cluster connection, for keys on any master.
pub async fn raw_cluster(cluster: &RedisCluster) -> redis::cluster_async::ClusterConnection {
    redis::cluster::ClusterClient::new(cluster.node_urls())
        .expect("urls")
        .get_async_connection()
        .await
        .expect("connect")
}
