//! The Redis store's index upkeep, on a real redis-server and on a real
//! 3-master Redis Cluster: expired keys leave their uid set (keyspace
//! notifications from every master), the sweep mends what a frontend left
//! half done, and a batch follows a slot that moved.

use crate::common;

use common::redis::{RedisCluster, RedisServer};
use common::store::{raw, raw_cluster, record, store_on};
use redis::AsyncCommands;
use session_proxy::frontend::{RedisStore, SessionStore};
use session_proxy::SessionId;
use std::time::Duration;

/// Two tests of `$check(&store, &mut connection)`: on a redis-server, and
/// on a 3-master Redis Cluster.
macro_rules! on_one_server_and_a_cluster {
    ($one:ident, $cluster:ident, $check:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $one() {
            let Some(redis) = RedisServer::start() else {
                return;
            };
            let store = store_on(redis.url()).await;
            $check(&store, &mut raw(&redis.url()).await).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $cluster() {
            let Some(cluster) = RedisCluster::start() else {
                return;
            };
            let store = store_on(cluster.url()).await;
            $check(&store, &mut raw_cluster(&cluster).await).await;
        }
    };
}

/// Redis expires a session key on its own; the keyspace notification
/// (from the node that held it) makes the store drop it from its uid set.
async fn expired_key_leaves_its_uid_set(store: &RedisStore, conn: &mut impl AsyncCommands) {
    store
        .put(
            vec![record(0xabc, "f1", Some("carol:na"))],
            Duration::from_millis(200),
        )
        .await
        .expect("put");
    store
        .put(
            vec![record(0xdef, "f1", Some("carol:na"))],
            Duration::from_secs(60),
        )
        .await
        .expect("put");
    let set = "sp:u:{carol:na}";
    let members: Vec<String> = conn.smembers(set).await.expect("smembers");
    assert_eq!(members.len(), 2);
    // Nobody reads the key meanwhile.
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let members: Vec<String> = conn.smembers(set).await.expect("smembers");
        if members == vec!["0000000000000def".to_string()] {
            break;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "expired key still indexed: {members:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let owner: bool = conn
        .exists("sp:o:{0000000000000abc}")
        .await
        .expect("exists");
    assert!(!owner, "owner entry cleaned too");
}

on_one_server_and_a_cluster!(
    an_expired_session_key_leaves_its_uid_set,
    on_a_cluster_an_expired_session_key_leaves_its_uid_set,
    expired_key_leaves_its_uid_set
);

/// What a frontend leaves behind when it dies between two steps, or while
/// no node listened: the sweep mends it.
async fn sweep_mends_the_index(store: &RedisStore, conn: &mut impl AsyncCommands) {
    let ttl = Duration::from_secs(60);
    store
        .put(
            vec![record(1, "f1", Some("dave")), record(2, "f1", Some("dave"))],
            ttl,
        )
        .await
        .expect("put");
    // A uid set member and an owner key pointing at sessions that do not
    // exist, a member whose session moved to another uid, and an eviction
    // decided but not carried out.
    let _: () = conn
        .sadd("sp:u:{dave}", "00000000000000ff")
        .await
        .expect("sadd");
    let _: () = conn
        .sadd("sp:u:{erin}", &["00000000000000ee", "0000000000000001"])
        .await
        .expect("sadd");
    let _: () = conn
        .set("sp:o:{00000000000000ee}", "erin")
        .await
        .expect("set");
    let _: () = conn
        .hset("sp:x:{dave}", "0000000000000002", "replaced")
        .await
        .expect("hset");
    let mut evictions = store.evictions();
    let mended = store.sweep().await.expect("sweep");
    assert!(mended >= 4, "mended {mended}");
    let dave: Vec<String> = conn.smembers("sp:u:{dave}").await.expect("smembers");
    assert_eq!(
        dave,
        vec!["0000000000000001".to_string()],
        "the live entry stays"
    );
    let erin: Vec<String> = conn.smembers("sp:u:{erin}").await.expect("smembers");
    assert!(erin.is_empty(), "{erin:?}");
    let pending: bool = conn.exists("sp:x:{dave}").await.expect("exists");
    assert!(!pending, "the pending eviction is done");
    assert_eq!(store.get(SessionId::from_raw(2)).await.expect("get"), None);
    let heard = tokio::time::timeout(Duration::from_secs(2), evictions.recv())
        .await
        .expect("announced")
        .expect("channel open");
    assert_eq!(heard.sid, SessionId::from_raw(2));
    let stale = store
        .put(vec![record(2, "f1", Some("dave"))], ttl)
        .await
        .expect("put");
    assert_eq!(stale.len(), 1, "the evicted session's holder is fenced");
    let held: Vec<u64> = store
        .by_uid("dave")
        .await
        .expect("by uid")
        .iter()
        .map(|s| s.info.sid.as_u64())
        .collect();
    assert_eq!(held, vec![1]);
}

on_one_server_and_a_cluster!(
    the_sweep_mends_what_a_frontend_left_half_done,
    on_a_cluster_the_sweep_mends_what_a_frontend_left_half_done,
    sweep_mends_the_index
);

/// A slot that moves to another master after the store learnt the slot
/// map: the batch that meets the redirect is written anyway (command by
/// command, following it), and the next batches use the new map.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_a_batch_follows_a_slot_that_moved() {
    let Some(cluster) = RedisCluster::start() else {
        return;
    };
    let store = store_on(cluster.url()).await;
    let ttl = Duration::from_secs(60);
    // The store learns the slot map with a first batch.
    store
        .put(vec![record(1, "f1", None), record(2, "f1", None)], ttl)
        .await
        .expect("put");
    // Session 0x77's slot (empty so far) moves to another master.
    let urls = cluster.node_urls();
    let slot: u16 = redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg("sp:s:{0000000000000077}")
        .query_async(&mut raw(&urls[0]).await)
        .await
        .expect("keyslot");
    let mut ids = Vec::new();
    let mut owner = None;
    for (i, url) in urls.iter().enumerate() {
        let mut node = raw(url).await;
        let id: String = redis::cmd("CLUSTER")
            .arg("MYID")
            .query_async(&mut node)
            .await
            .expect("myid");
        ids.push(id);
        let nodes: String = redis::cmd("CLUSTER")
            .arg("NODES")
            .query_async(&mut node)
            .await
            .expect("nodes");
        let mine = nodes
            .lines()
            .find(|l| l.contains("myself"))
            .expect("myself line")
            .to_string();
        let serves = mine.split_whitespace().skip(8).any(|range| {
            let (a, b) = range.split_once('-').unwrap_or((range, range));
            let (a, b): (u16, u16) = (a.parse().unwrap_or(1), b.parse().unwrap_or(0));
            (a..=b).contains(&slot)
        });
        if serves {
            owner = Some(i);
        }
    }
    let owner = owner.expect("a master serves the slot");
    let new_owner = (owner + 1) % urls.len();
    for url in &urls {
        let _: () = redis::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(slot)
            .arg("NODE")
            .arg(&ids[new_owner])
            .query_async(&mut raw(url).await)
            .await
            .expect("setslot");
    }
    // The stale map sends 0x77 to its old master, which redirects it.
    store
        .put(
            vec![record(0x77, "f1", Some("mover")), record(3, "f1", None)],
            ttl,
        )
        .await
        .expect("put across a moved slot");
    assert_eq!(
        store
            .get(SessionId::from_raw(0x77))
            .await
            .expect("get")
            .map(|s| s.info.uid),
        Some(Some("mover".to_string()))
    );
    let held: u64 = redis::cmd("CLUSTER")
        .arg("COUNTKEYSINSLOT")
        .arg(slot)
        .query_async(&mut raw(&urls[new_owner]).await)
        .await
        .expect("count");
    assert!(held >= 1, "the session is on the slot's new master");
    // And the batches after it go by the new map.
    store
        .put(
            vec![record(0x77, "f1", Some("mover")), record(4, "f1", None)],
            ttl,
        )
        .await
        .expect("put");
    assert_eq!(store.by_uid("mover").await.expect("by uid").len(), 1);
}
