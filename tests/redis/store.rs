//! The session store: MemoryStore and RedisStore (on a real redis-server,
//! and on a real 3-master Redis Cluster) behave alike; the frontend writes
//! coalesced changes. The Redis index's upkeep is in `store_index.rs`.

use crate::common;

use bytes::Bytes;
use common::redis::{RedisCluster, RedisServer};
use common::store::{raw, record, store_on};
use session_proxy::frontend::{
    Admission, Evicted, Fenced, MemoryStore, Rebound, Refreshed, SessionStore, StoreOptions,
    StoredSession,
};
use session_proxy::{ConnectInfo, SessionConfig, SessionId, SessionService};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

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
    bindings(store, ttl).await;
    store.clear().await.expect("clear");
    assert!(store.list().await.expect("list").is_empty());
    assert_eq!(store.binding("room", "ann", ttl).await.expect("read"), None);
}

/// Sticky bindings: written once by whoever comes first, moved only from
/// the binding the mover saw, per server type, gone after their TTL.
async fn bindings(store: &dyn SessionStore, ttl: Duration) {
    let bound = |node: &str, written| Rebound {
        node: node.to_string(),
        written,
    };
    assert_eq!(store.binding("room", "ann", ttl).await.expect("read"), None);
    let first = store.rebind("room", "ann", None, "room-2", ttl).await;
    assert_eq!(first.expect("bind"), bound("room-2", true));
    // A frontend that raced and saw no binding takes the first one's.
    let racer = store.rebind("room", "ann", None, "room-1", ttl).await;
    assert_eq!(racer.expect("bind"), bound("room-2", false));
    let moved = store
        .rebind("room", "ann", Some("room-2"), "room-1", ttl)
        .await;
    assert_eq!(moved.expect("move"), bound("room-1", true));
    let stale = store
        .rebind("room", "ann", Some("room-2"), "room-3", ttl)
        .await;
    assert_eq!(stale.expect("move"), bound("room-1", false));
    let read = store.binding("room", "ann", ttl).await.expect("read");
    assert_eq!(read.as_deref(), Some("room-1"));
    assert_eq!(
        store.binding("match", "ann", ttl).await.expect("read"),
        None
    );
    // A read restarts the TTL with the reader's: one of a millisecond
    // lets the binding expire on its own.
    let brief = store.rebind("room", "bob", None, "room-1", ttl).await;
    assert_eq!(brief.expect("bind"), bound("room-1", true));
    let short = Duration::from_millis(1);
    common::eventually(Duration::from_secs(5), "the binding expires", || async {
        match store.binding("room", "bob", short).await {
            Ok(None) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
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
    ) -> session_proxy::frontend::StoreFuture<'_, Vec<Fenced>> {
        self.puts.fetch_add(1, Ordering::Relaxed);
        self.records.fetch_add(s.len(), Ordering::Relaxed);
        self.inner.put(s, ttl)
    }
    fn get(
        &self,
        sid: SessionId,
    ) -> session_proxy::frontend::StoreFuture<'_, Option<StoredSession>> {
        self.inner.get(sid)
    }
    fn by_uid<'a>(
        &'a self,
        uid: &'a str,
    ) -> session_proxy::frontend::StoreFuture<'a, Vec<StoredSession>> {
        self.inner.by_uid(uid)
    }
    fn binding<'a>(
        &'a self,
        server_type: &'a str,
        uid: &'a str,
        ttl: Duration,
    ) -> session_proxy::frontend::StoreFuture<'a, Option<String>> {
        self.inner.binding(server_type, uid, ttl)
    }
    fn rebind<'a>(
        &'a self,
        server_type: &'a str,
        uid: &'a str,
        expected: Option<&'a str>,
        node: &'a str,
        ttl: Duration,
    ) -> session_proxy::frontend::StoreFuture<'a, session_proxy::frontend::Rebound> {
        self.inner.rebind(server_type, uid, expected, node, ttl)
    }
    fn delete(&self, sids: Vec<SessionId>) -> session_proxy::frontend::StoreFuture<'_, usize> {
        self.inner.delete(sids)
    }
    fn delete_uid<'a>(&'a self, uid: &'a str) -> session_proxy::frontend::StoreFuture<'a, usize> {
        self.inner.delete_uid(uid)
    }
    fn list(&self) -> session_proxy::frontend::StoreFuture<'_, Vec<SessionId>> {
        self.inner.list()
    }
    fn clear(&self) -> session_proxy::frontend::StoreFuture<'_, ()> {
        self.inner.clear()
    }
    fn refresh(
        &self,
        sids: Vec<(SessionId, u64)>,
        ttl: Duration,
    ) -> session_proxy::frontend::StoreFuture<'_, Refreshed> {
        self.inner.refresh(sids, ttl)
    }
    fn release(
        &self,
        sids: Vec<(SessionId, u64)>,
    ) -> session_proxy::frontend::StoreFuture<'_, Vec<Fenced>> {
        self.inner.release(sids)
    }
    fn claim<'a>(
        &'a self,
        sid: SessionId,
        seen: u64,
        frontend: &'a str,
    ) -> session_proxy::frontend::StoreFuture<'a, Option<u64>> {
        self.inner.claim(sid, seen, frontend)
    }
    fn admit<'a>(
        &'a self,
        uid: &'a str,
        sid: SessionId,
        limit: usize,
        evict_oldest: bool,
        reason: &'a str,
    ) -> session_proxy::frontend::StoreFuture<'a, Admission> {
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
