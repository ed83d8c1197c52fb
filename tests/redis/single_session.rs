//! The single-session policy across frontends sharing a real Redis: two
//! logins of one uid racing on two frontends leave exactly one session,
//! whichever way the policy goes, and at most N with `sessions_per_uid`.

use crate::common;

use common::redis::{RedisCluster, RedisServer};
use serde_json::json;
use session_proxy::frontend::{RedisStore, RedisStoreConfig, StoreOptions};
use session_proxy::{
    BackendConfig, BackendSessionService, Gateway, GatewayConfig, GatewayServer, RpcConfig,
    RpcServer, SessionConfig, SessionService, SingleSessionPolicy,
};
use session_proxy_client::{PomeloClient, PomeloEvent};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The store's server: one, or a Redis Cluster of three masters.
enum Redis {
    One(RedisServer),
    Cluster(RedisCluster),
}

impl Redis {
    fn url(&self) -> String {
        match self {
            Redis::One(r) => r.url(),
            Redis::Cluster(c) => c.url(),
        }
    }
}

struct Cluster {
    _redis: Redis,
    gates: Vec<(GatewayServer, RpcServer)>,
    backend: BackendSessionService,
}

impl Cluster {
    /// Two frontends on one store, one chat backend dialling both.
    async fn start(policy: SingleSessionPolicy, per_uid: usize) -> Option<Cluster> {
        Some(Cluster::on(Redis::One(RedisServer::start()?), policy, per_uid).await)
    }

    /// [`Cluster::start`] on the given store server.
    async fn on(redis: Redis, policy: SingleSessionPolicy, per_uid: usize) -> Cluster {
        let mut config = BackendConfig::new("chat-1");
        config.server_type = Some("chat".into());
        let backend = BackendSessionService::new(config).expect("config");
        backend.serve(session_proxy_bench::app::backend_handlers("chat", &backend));
        let mut gates = Vec::new();
        for id in ["connector-a", "connector-b"] {
            let mut config = SessionConfig::new(id);
            config.single_session = policy;
            config.sessions_per_uid = per_uid;
            let sessions = SessionService::new(config);
            let store = RedisStore::connect(RedisStoreConfig::new(redis.url()))
                .await
                .expect("store");
            sessions
                .attach_store(Arc::new(store), StoreOptions::default())
                .await
                .expect("attach");
            let rpc = common::rpc_on_loopback(&sessions, RpcConfig::default()).await;
            let gateway = Gateway::new(sessions, rpc.backends(), GatewayConfig::new("connector"))
                .bind("127.0.0.1:0".parse().expect("addr"))
                .await
                .expect("gateway");
            backend.add_frontend(id, rpc.local_addr().to_string());
            assert!(
                rpc.backends()
                    .wait_for("chat", 1, Duration::from_secs(5))
                    .await
            );
            gates.push((gateway, rpc));
        }
        Cluster {
            _redis: redis,
            gates,
            backend,
        }
    }

    async fn client(&self, frontend: usize) -> PomeloClient {
        PomeloClient::connect(self.gates[frontend].0.local_addr())
            .await
            .expect("connect")
    }

    /// The sessions of `uid` that the frontends hold, as a backend finds them.
    async fn located(&self, uid: &str) -> usize {
        self.backend.locate(uid).await.expect("locate").len()
    }
}

/// Whether a login is answered `{code: 200}` (a session replaced while it
/// logs in may be closed before its answer).
async fn login(client: &PomeloClient, uid: &str) -> bool {
    client
        .request("chat.benchHandler.login", &json!({ "uid": uid }))
        .await
        .is_ok_and(|answer| answer["code"] == 200)
}

/// Whether the client is kicked with `"replaced"` within `within`.
async fn replaced(client: &mut PomeloClient, within: Duration) -> bool {
    let until = Instant::now() + within;
    while let Some(event) = client
        .next_event(until.saturating_duration_since(Instant::now()))
        .await
    {
        match event {
            PomeloEvent::Kick { reason } => return reason == "replaced",
            PomeloEvent::Closed => return false,
            PomeloEvent::Push { .. } => {}
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_logins_on_two_frontends_with_reject_new_admit_exactly_one() {
    let Some(cluster) = Cluster::start(SingleSessionPolicy::RejectNew, 1).await else {
        return;
    };
    for round in 0..10 {
        let uid = format!("racer-{round}");
        let (a, b) = (cluster.client(0).await, cluster.client(1).await);
        let (on_a, on_b) = tokio::join!(login(&a, &uid), login(&b, &uid));
        assert!(on_a ^ on_b, "round {round}: a {on_a}, b {on_b}");
        assert_eq!(cluster.located(&uid).await, 1, "round {round}");
    }
    // A parked session still counts; once the winner's session ends, a
    // new login is admitted.
    let first = cluster.client(0).await;
    assert!(login(&first, "leaver").await);
    first.close();
    let second = cluster.client(1).await;
    assert!(
        !login(&second, "leaver").await,
        "the parked one still counts"
    );
    let ended = cluster
        .backend
        .kick_user_everywhere("leaver", "bye")
        .await
        .expect("kick");
    assert_eq!(ended, 1);
    let started = Instant::now();
    while !login(&second, "leaver").await {
        assert!(started.elapsed() < Duration::from_secs(5), "never admitted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(cluster.located("leaver").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_on_another_frontend_with_kick_old_replaces_the_first() {
    let Some(cluster) = Cluster::start(SingleSessionPolicy::KickOld, 1).await else {
        return;
    };
    kick_old_replaces_the_first(cluster).await;
}

/// The same on a Redis Cluster: the admission decides on the uid's slot,
/// the eviction is carried out on the session's, and its announcement
/// crosses the cluster bus to the other frontend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_redis_cluster_a_login_on_another_frontend_with_kick_old_replaces_the_first() {
    let Some(redis) = RedisCluster::start() else {
        return;
    };
    let cluster = Cluster::on(Redis::Cluster(redis), SingleSessionPolicy::KickOld, 1).await;
    kick_old_replaces_the_first(cluster).await;
}

async fn kick_old_replaces_the_first(cluster: Cluster) {
    let mut first = cluster.client(0).await;
    assert!(login(&first, "kim").await);
    let mut second = cluster.client(1).await;
    assert!(login(&second, "kim").await);
    assert!(
        replaced(&mut first, Duration::from_secs(3)).await,
        "the first session was not told"
    );
    assert_eq!(cluster.located("kim").await, 1);

    // Racing: exactly one stays; the other is told, or closed before its
    // login was answered.
    for round in 0..5 {
        let uid = format!("racer-{round}");
        let (mut a, mut b) = (cluster.client(0).await, cluster.client(1).await);
        let (on_a, on_b) = tokio::join!(login(&a, &uid), login(&b, &uid));
        assert!(on_a || on_b, "round {round}: neither login answered");
        let (kicked_a, kicked_b) = tokio::join!(
            replaced(&mut a, Duration::from_secs(1)),
            replaced(&mut b, Duration::from_secs(1))
        );
        let (a_out, b_out) = (kicked_a || !on_a, kicked_b || !on_b);
        assert!(a_out ^ b_out, "round {round}: a out {a_out}, b out {b_out}");
        assert_eq!(cluster.located(&uid).await, 1, "round {round}");
    }
    assert!(!replaced(&mut second, Duration::from_millis(300)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_n_sessions_per_uid_across_frontends() {
    let Some(cluster) = Cluster::start(SingleSessionPolicy::KickOld, 2).await else {
        return;
    };
    let mut oldest = cluster.client(0).await;
    assert!(login(&oldest, "nia").await);
    let mut middle = cluster.client(1).await;
    assert!(login(&middle, "nia").await);
    assert_eq!(cluster.located("nia").await, 2);
    let newest = cluster.client(0).await;
    assert!(login(&newest, "nia").await);
    assert!(replaced(&mut oldest, Duration::from_secs(3)).await);
    assert!(!replaced(&mut middle, Duration::from_millis(300)).await);
    assert_eq!(cluster.located("nia").await, 2);
    drop(newest);
}
