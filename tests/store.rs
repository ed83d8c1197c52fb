//! The session store: MemoryStore and RedisStore (on a real redis-server)
//! behave alike; Redis cleans its uid index when keys expire; the frontend
//! writes coalesced changes and survives a SIGKILL.

mod common;

use bytes::Bytes;
use common::redis::{RedisCluster, RedisServer};
use redis::AsyncCommands;
use session_proxy::frontend::{
    Admission, Evicted, Fenced, MemoryStore, RedisStore, RedisStoreConfig, Refreshed, SessionStore,
    StoreOptions, StoredSession,
};
use session_proxy::protocol::{SessionInfo, Setting};
use session_proxy::{ConnectInfo, SessionConfig, SessionId, SessionService};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn record(sid: u64, frontend: &str, uid: Option<&str>) -> StoredSession {
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

async fn exercise(store: &dyn SessionStore) {
    store.clear().await.expect("clear");
    let ttl = Duration::from_secs(60);
    store
        .put(
            vec![
                record(1, "f1", Some("alice:eu")),
                record(2, "f2", Some("alice:eu")),
                record(3, "f1", None),
            ],
            ttl,
        )
        .await
        .expect("put");
    assert_eq!(
        store.get(SessionId::from_raw(1)).await.expect("get"),
        Some(record(1, "f1", Some("alice:eu")))
    );
    assert_eq!(store.get(SessionId::from_raw(9)).await.expect("get"), None);
    let mut alice: Vec<u64> = store
        .by_uid("alice:eu")
        .await
        .expect("by uid")
        .iter()
        .map(|s| s.info.sid.as_u64())
        .collect();
    alice.sort();
    assert_eq!(alice, vec![1, 2], "uids with ':' work");
    // Rebinding moves the session between uid sets.
    store
        .put(vec![record(2, "f2", Some("bob"))], ttl)
        .await
        .expect("put");
    assert_eq!(store.by_uid("alice:eu").await.expect("by uid").len(), 1);
    assert_eq!(store.by_uid("bob").await.expect("by uid").len(), 1);
    let mut all: Vec<u64> = store
        .list()
        .await
        .expect("list")
        .iter()
        .map(|s| s.as_u64())
        .collect();
    all.sort();
    assert_eq!(all, vec![1, 2, 3]);
    assert_eq!(
        store
            .delete(vec![SessionId::from_raw(3), SessionId::from_raw(9)])
            .await
            .expect("delete"),
        1
    );
    assert_eq!(store.delete_uid("alice:eu").await.expect("delete uid"), 1);
    assert!(store.by_uid("alice:eu").await.expect("by uid").is_empty());
    // A refresh reports what the store no longer holds, and what was
    // ended for every holder (3, deleted above).
    let (two, three, nine) = (
        SessionId::from_raw(2),
        SessionId::from_raw(3),
        SessionId::from_raw(9),
    );
    assert_eq!(
        store
            .refresh(vec![(two, 0), (three, 0), (nine, 0)], ttl)
            .await
            .expect("refresh"),
        Refreshed {
            missing: vec![nine],
            fenced: vec![Fenced {
                sid: three,
                owner: String::new()
            }],
        }
    );
    assert_eq!(store.list().await.expect("list"), vec![two]);
    fencing(store, ttl).await;
    admission(store, ttl).await;
    store.clear().await.expect("clear");
    assert!(store.list().await.expect("list").is_empty());
}

/// A per-uid limit across frontends: refused at the limit, or the oldest
/// ended (and announced) to make room; unbound sessions leave the count.
async fn admission(store: &dyn SessionStore, ttl: Duration) {
    let sid = SessionId::from_raw;
    let admitted = |evicted: Vec<Fenced>| Admission::Admitted { evicted };
    let admit =
        |n: u64, limit: usize, evict: bool| store.admit("carol", sid(n), limit, evict, "replaced");
    assert_eq!(admit(20, 1, false).await.expect("admit"), admitted(vec![]));
    store
        .put(vec![record(20, "f1", Some("carol"))], ttl)
        .await
        .expect("put");
    assert_eq!(
        admit(21, 1, false).await.expect("admit"),
        Admission::Refused
    );
    assert_eq!(
        admit(20, 1, false).await.expect("admit"),
        admitted(vec![]),
        "admitted already"
    );
    // The newer login wins: the older one ends, and its holder hears it.
    let mut evictions = store.evictions();
    assert_eq!(
        admit(21, 1, true).await.expect("admit"),
        admitted(vec![Fenced {
            sid: sid(20),
            owner: "f1".into()
        }])
    );
    let heard = tokio::time::timeout(Duration::from_secs(2), evictions.recv())
        .await
        .expect("announced")
        .expect("channel open");
    assert_eq!(
        heard,
        Evicted {
            sid: sid(20),
            reason: "replaced".into()
        }
    );
    assert_eq!(store.get(sid(20)).await.expect("get"), None);
    let stale = store
        .put(vec![record(20, "f1", Some("carol"))], ttl)
        .await
        .expect("put");
    assert_eq!(stale.len(), 1, "the evicted session's holder is fenced");
    // At most two: 21 and 22 (not written yet) fill the uid.
    store
        .put(vec![record(21, "f2", Some("carol"))], ttl)
        .await
        .expect("put");
    assert_eq!(admit(22, 2, false).await.expect("admit"), admitted(vec![]));
    assert_eq!(
        admit(23, 2, false).await.expect("admit"),
        Admission::Refused
    );
    // 21 is unbound: it no longer counts.
    store
        .put(vec![record(21, "f2", None)], ttl)
        .await
        .expect("put");
    assert_eq!(admit(23, 2, false).await.expect("admit"), admitted(vec![]));
    assert_eq!(
        admit(24, 2, false).await.expect("admit"),
        Admission::Refused
    );
    // A session written before it is bound (the usual order: connect,
    // then log in) counts from its admission on.
    store
        .put(vec![record(30, "f1", None)], ttl)
        .await
        .expect("put");
    let admit_dan = |n: u64| store.admit("dan", sid(n), 1, false, "replaced");
    assert_eq!(admit_dan(30).await.expect("admit"), admitted(vec![]));
    assert_eq!(admit_dan(31).await.expect("admit"), Admission::Refused);
}

/// Ownership moves by a claim, atomically, and the old owner's writes are
/// refused from then on (session 2: `f2`, epoch 0).
async fn fencing(store: &dyn SessionStore, ttl: Duration) {
    let sid = SessionId::from_raw(2);
    let held = store.get(sid).await.expect("get").expect("held");
    assert_eq!((held.epoch, held.info.frontend_id.as_str()), (0, "f2"));
    assert_eq!(store.claim(sid, 0, "f3").await.expect("claim"), Some(1));
    assert_eq!(
        store.claim(sid, 0, "f4").await.expect("claim"),
        None,
        "a second claim of the same epoch loses"
    );
    let moved = store.get(sid).await.expect("get").expect("held");
    assert_eq!((moved.epoch, moved.info.frontend_id.as_str()), (1, "f3"));
    let by_f3 = |sid| Fenced {
        sid,
        owner: "f3".into(),
    };
    // The old owner is refused everywhere, and told who holds it.
    let stale = record(2, "f2", Some("bob"));
    assert_eq!(
        store.put(vec![stale], ttl).await.expect("put"),
        vec![by_f3(sid)]
    );
    assert_eq!(
        store.refresh(vec![(sid, 0)], ttl).await.expect("refresh"),
        Refreshed {
            missing: vec![],
            fenced: vec![by_f3(sid)],
        }
    );
    assert_eq!(
        store.release(vec![(sid, 0)]).await.expect("release"),
        vec![by_f3(sid)]
    );
    let kept = store.get(sid).await.expect("get").expect("still held");
    assert_eq!(
        kept.info.frontend_id, "f3",
        "the refused writes changed nothing"
    );
    // The new owner writes, refreshes and releases.
    let mut fresh = record(2, "f3", Some("bob"));
    fresh.epoch = 1;
    fresh.last_version = 4;
    assert!(store
        .put(vec![fresh.clone()], ttl)
        .await
        .expect("put")
        .is_empty());
    assert_eq!(
        store.get(sid).await.expect("get").map(|s| s.last_version),
        Some(4)
    );
    assert_eq!(
        store.refresh(vec![(sid, 1)], ttl).await.expect("refresh"),
        Refreshed::default()
    );
    assert!(store
        .release(vec![(sid, 1)])
        .await
        .expect("release")
        .is_empty());
    assert_eq!(store.get(sid).await.expect("get"), None);
    assert!(store.list().await.expect("list").is_empty());
    assert!(store.by_uid("bob").await.expect("by uid").is_empty());
    // Released stays fenced: nobody writes or claims it back.
    assert_eq!(
        store.put(vec![fresh], ttl).await.expect("put"),
        vec![Fenced {
            sid,
            owner: String::new()
        }]
    );
    assert_eq!(store.get(sid).await.expect("get"), None);
    assert_eq!(store.claim(sid, 1, "f5").await.expect("claim"), None);
    assert_eq!(store.claim(sid, 2, "f5").await.expect("claim"), None);
}

#[tokio::test]
async fn memory_store_contract() {
    exercise(&MemoryStore::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_contract() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let store = store_on(redis.url()).await;
    exercise(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_store_contract() {
    let Some(cluster) = RedisCluster::start() else {
        return;
    };
    let store = store_on(cluster.url()).await;
    exercise(&store).await;
    // Sessions spread over the masters, and `list` and `clear` reach all.
    let sessions: Vec<StoredSession> = (1..=12).map(|n| record(n, "f1", None)).collect();
    store
        .put(sessions, Duration::from_secs(60))
        .await
        .expect("put");
    assert_eq!(store.list().await.expect("list").len(), 12);
    assert!(
        keys_per_node(&cluster)
            .await
            .iter()
            .filter(|n| **n > 0)
            .count()
            >= 2
    );
    store.clear().await.expect("clear");
    assert_eq!(keys_per_node(&cluster).await, vec![0, 0, 0]);
}

async fn keys_per_node(cluster: &RedisCluster) -> Vec<usize> {
    let mut sizes = Vec::new();
    for url in cluster.node_urls() {
        let size: usize = redis::cmd("DBSIZE")
            .query_async(&mut raw(&url).await)
            .await
            .expect("dbsize");
        sizes.push(size);
    }
    sizes
}

async fn store_on(url: String) -> RedisStore {
    RedisStore::connect(RedisStoreConfig::new(url))
        .await
        .expect("connect")
}

async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect")
}

async fn raw_cluster(cluster: &RedisCluster) -> redis::cluster_async::ClusterConnection {
    redis::cluster::ClusterClient::new(cluster.node_urls())
        .expect("urls")
        .get_async_connection()
        .await
        .expect("connect")
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_session_key_leaves_its_uid_set() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let store = store_on(redis.url()).await;
    expired_key_leaves_its_uid_set(&store, &mut raw(&redis.url()).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_an_expired_session_key_leaves_its_uid_set() {
    let Some(cluster) = RedisCluster::start() else {
        return;
    };
    let store = store_on(cluster.url()).await;
    expired_key_leaves_its_uid_set(&store, &mut raw_cluster(&cluster).await).await;
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_mends_what_a_frontend_left_half_done() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let store = store_on(redis.url()).await;
    sweep_mends_the_index(&store, &mut raw(&redis.url()).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_the_sweep_mends_what_a_frontend_left_half_done() {
    let Some(cluster) = RedisCluster::start() else {
        return;
    };
    let store = store_on(cluster.url()).await;
    sweep_mends_the_index(&store, &mut raw_cluster(&cluster).await).await;
}

/// A store that counts what it is asked to write.
struct Counting {
    inner: MemoryStore,
    puts: AtomicUsize,
    records: AtomicUsize,
}

impl SessionStore for Counting {
    fn put(
        &self,
        s: Vec<StoredSession>,
        ttl: Duration,
    ) -> session_proxy::frontend::store::StoreFuture<'_, Vec<Fenced>> {
        self.puts.fetch_add(1, Ordering::Relaxed);
        self.records.fetch_add(s.len(), Ordering::Relaxed);
        self.inner.put(s, ttl)
    }
    fn get(
        &self,
        sid: SessionId,
    ) -> session_proxy::frontend::store::StoreFuture<'_, Option<StoredSession>> {
        self.inner.get(sid)
    }
    fn by_uid<'a>(
        &'a self,
        uid: &'a str,
    ) -> session_proxy::frontend::store::StoreFuture<'a, Vec<StoredSession>> {
        self.inner.by_uid(uid)
    }
    fn delete(
        &self,
        sids: Vec<SessionId>,
    ) -> session_proxy::frontend::store::StoreFuture<'_, usize> {
        self.inner.delete(sids)
    }
    fn delete_uid<'a>(
        &'a self,
        uid: &'a str,
    ) -> session_proxy::frontend::store::StoreFuture<'a, usize> {
        self.inner.delete_uid(uid)
    }
    fn list(&self) -> session_proxy::frontend::store::StoreFuture<'_, Vec<SessionId>> {
        self.inner.list()
    }
    fn clear(&self) -> session_proxy::frontend::store::StoreFuture<'_, ()> {
        self.inner.clear()
    }
    fn refresh(
        &self,
        sids: Vec<(SessionId, u64)>,
        ttl: Duration,
    ) -> session_proxy::frontend::store::StoreFuture<'_, Refreshed> {
        self.inner.refresh(sids, ttl)
    }
    fn release(
        &self,
        sids: Vec<(SessionId, u64)>,
    ) -> session_proxy::frontend::store::StoreFuture<'_, Vec<Fenced>> {
        self.inner.release(sids)
    }
    fn claim<'a>(
        &'a self,
        sid: SessionId,
        seen: u64,
        frontend: &'a str,
    ) -> session_proxy::frontend::store::StoreFuture<'a, Option<u64>> {
        self.inner.claim(sid, seen, frontend)
    }
    fn admit<'a>(
        &'a self,
        uid: &'a str,
        sid: SessionId,
        limit: usize,
        evict_oldest: bool,
        reason: &'a str,
    ) -> session_proxy::frontend::store::StoreFuture<'a, Admission> {
        self.inner.admit(uid, sid, limit, evict_oldest, reason)
    }
    fn evictions(&self) -> tokio::sync::broadcast::Receiver<Evicted> {
        self.inner.evictions()
    }
}

#[tokio::test]
async fn a_burst_of_changes_is_written_once_and_closes_are_deleted() {
    let store = Arc::new(Counting {
        inner: MemoryStore::new(),
        puts: AtomicUsize::new(0),
        records: AtomicUsize::new(0),
    });
    let sessions = SessionService::new(SessionConfig::new("f1"));
    let mut options = StoreOptions::default();
    options.flush_interval = Duration::from_secs(3600); // only explicit flushes here
    sessions
        .attach_store(store.clone(), options)
        .await
        .expect("attach");
    let owner = sessions.create(ConnectInfo::default());
    let sid = owner.sid();
    sessions.bind(sid, "alice").expect("bind");
    for i in 0..100u32 {
        sessions
            .set(sid, "score", Bytes::from(i.to_be_bytes().to_vec()))
            .expect("set");
    }
    sessions.flush().await.expect("flush");
    assert_eq!(store.puts.load(Ordering::Relaxed), 1);
    assert_eq!(
        store.records.load(Ordering::Relaxed),
        1,
        "one record for 102 changes"
    );
    let stored = store.inner.get(sid).await.expect("get").expect("written");
    assert_eq!(stored.info.uid.as_deref(), Some("alice"));
    assert_eq!(
        stored.settings["score"].value,
        Bytes::from(99u32.to_be_bytes().to_vec())
    );
    sessions.flush().await.expect("nothing to write");
    assert_eq!(store.puts.load(Ordering::Relaxed), 1, "no change, no write");
    drop(owner);
    sessions.flush().await.expect("flush");
    assert_eq!(
        store.inner.get(sid).await.expect("get"),
        None,
        "a closed session is deleted"
    );
}

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
