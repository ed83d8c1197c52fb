//! A frontend keeping its sessions in a real Redis server: killed with
//! SIGKILL, restarted, and its clients resume as if nothing happened.
//! Plus per-user queries and revocation across frontends.

use crate::common;
use common::{sid_of, token_of};

use common::nodes::{free_port, sigkill, spawn_session_proxy};
use common::redis::RedisServer;
use serde_json::json;
use session_proxy::frontend::{
    Gateway, GatewayConfig, GatewayServer, RedisStore, RedisStoreConfig, StoreOptions,
};
use session_proxy::{
    BackendConfig, BackendSessionService, RpcConfig, RpcServer, SessionConfig, SessionService,
};
use session_proxy_client::{PomeloClient, PomeloEvent, PomeloOptions, Transport};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::process::Child;

const WAIT: Duration = Duration::from_secs(10);

/// Starts `session-proxy frontend` with a gateway and the Redis store;
/// returns once it listens, with the lines it printed.
async fn spawn_frontend(rpc: u16, clients: u16, redis: &str) -> (Child, Vec<String>) {
    let (rpc, clients) = (format!("127.0.0.1:{rpc}"), format!("127.0.0.1:{clients}"));
    let args = [
        "frontend",
        "--id",
        "f1",
        "--rpc-addr",
        &rpc,
        "--client-addr",
        &clients,
        "--redis",
        redis,
        "--resume-grace",
        "30",
    ];
    spawn_session_proxy(&args, "listening on").await
}

async fn connect(
    addr: SocketAddr,
    token: Option<&str>,
    transport: Transport,
) -> Result<PomeloClient, session_proxy_client::ClientError> {
    let mut options = PomeloOptions::default();
    options.transport = transport;
    if let Some(t) = token {
        options.user = json!({ "resumeToken": t });
    }
    PomeloClient::connect_with(addr, options).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_frontend_restarts_with_every_acknowledged_change() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let (rpc, clients) = (free_port(), free_port());
    let (mut first, lines) = spawn_frontend(rpc, clients, &redis.url()).await;
    assert!(
        lines.iter().any(|l| l == "restored 0 sessions"),
        "{lines:?}"
    );
    let client_addr: SocketAddr = format!("127.0.0.1:{clients}").parse().expect("addr");

    let mut players = Vec::new();
    for transport in [Transport::Tcp, Transport::WebSocket] {
        let c = connect(client_addr, None, transport)
            .await
            .expect("connect");
        let token = token_of(&c);
        players.push((c, token, transport));
    }
    let mut config = BackendConfig::new("game-1");
    config.deadline = Duration::from_secs(2);
    let backend = BackendSessionService::new(config).expect("valid config");
    backend.add_frontend("f1", format!("127.0.0.1:{rpc}"));
    for (i, (_, token, _)) in players.iter().enumerate() {
        let mut s = backend
            .get("f1", sid_of(token))
            .await
            .expect("call")
            .expect("open");
        s.bind(&format!("player:{i}")).await.expect("bind");
        s.set("room", "hall").expect("encode");
        s.set("hp", &100u32).expect("encode");
        s.push_all().await.expect("push_all");
        // Every acknowledged push must survive, up to the last one.
        for n in 0..50u32 {
            s.set("n", &n).expect("encode");
            s.push("n").await.expect("acknowledged push");
        }
    }

    sigkill(&mut first).await;
    for (c, _, _) in players.iter_mut() {
        loop {
            match c.next_event(WAIT).await {
                Some(PomeloEvent::Closed) => break,
                Some(_) => continue,
                None => panic!("the client did not notice the kill"),
            }
        }
    }

    let (mut second, lines) = spawn_frontend(rpc, clients, &redis.url()).await;
    assert!(
        lines.iter().any(|l| l == "restored 2 sessions"),
        "{lines:?}"
    );
    for (i, (_, token, transport)) in players.iter().enumerate() {
        let c = connect(client_addr, Some(token), *transport)
            .await
            .expect("resume after the restart");
        assert_eq!(c.handshake()["user"]["resumed"], true);
        assert_ne!(&token_of(&c), token, "rotated");
        // The same backend service reconnects by itself.
        let until = tokio::time::Instant::now() + WAIT;
        let s = loop {
            match backend.get("f1", sid_of(token)).await {
                Ok(Some(s)) => break s,
                other => {
                    assert!(
                        tokio::time::Instant::now() < until,
                        "backend never reconnected: {other:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        assert_eq!(s.uid(), Some(format!("player:{i}").as_str()));
        assert_eq!(
            s.get::<String>("room").expect("decode").as_deref(),
            Some("hall")
        );
        assert_eq!(s.get::<u32>("hp").expect("decode"), Some(100));
        assert_eq!(
            s.get::<u32>("n").expect("decode"),
            Some(49),
            "the last acknowledged push"
        );
        let by_uid = backend
            .get_by_uid("f1", &format!("player:{i}"))
            .await
            .expect("call");
        assert_eq!(by_uid.len(), 1, "the uid index was restored");
    }
    sigkill(&mut second).await;
}

struct Front {
    sessions: SessionService,
    rpc: RpcServer,
    gateway: GatewayServer,
}

async fn start_front(id: &str, url: &str) -> Front {
    let sessions = SessionService::new(SessionConfig::new(id));
    let store = RedisStore::connect(RedisStoreConfig::new(url))
        .await
        .expect("redis");
    sessions
        .attach_store(Arc::new(store), StoreOptions::default())
        .await
        .expect("attach");
    let rpc = common::rpc_on_loopback(&sessions, RpcConfig::default()).await;
    let mut config = GatewayConfig::default();
    config.resume_grace = Duration::from_secs(30);
    let gateway = Gateway::new(sessions.clone(), rpc.backends(), config)
        .bind("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("gateway");
    Front {
        sessions,
        rpc,
        gateway,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_sessions_and_revoke_span_every_frontend() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let f1 = start_front("f1", &redis.url()).await;
    let f2 = start_front("f2", &redis.url()).await;
    let backend = BackendSessionService::new(BackendConfig::new("admin")).expect("valid config");
    backend.add_frontend("f1", f1.rpc.local_addr().to_string());
    backend.add_frontend("f2", f2.rpc.local_addr().to_string());

    let mut options = PomeloOptions::default();
    options.user = json!({ "device": "iphone-15" });
    let mut on_f1 = PomeloClient::connect_with(f1.gateway.local_addr(), options)
        .await
        .expect("connect");
    let on_f2 = connect(f2.gateway.local_addr(), None, Transport::WebSocket)
        .await
        .expect("connect");
    let (sid1, sid2) = (sid_of(&token_of(&on_f1)), sid_of(&token_of(&on_f2)));
    common::bind_via(&backend, "f1", sid1, "bob:eu")
        .await
        .expect("bind");
    common::bind_via(&backend, "f2", sid2, "bob:eu")
        .await
        .expect("bind");
    let mut events = f2.sessions.subscribe();
    drop(on_f2); // parked on f2
    assert_eq!(common::next_parked(&mut events, WAIT).await, sid2);
    f2.sessions.flush().await.expect("flush");

    // Asked of f1, the answer includes f2's session (from the store).
    let all = backend.user_sessions("f1", "bob:eu").await.expect("call");
    assert_eq!(all.len(), 2, "{all:?}");
    let mine = all.iter().find(|i| i.sid == sid1).expect("f1's session");
    assert_eq!(mine.frontend_id, "f1");
    assert_eq!(
        mine.metadata.get("device").map(String::as_str),
        Some("iphone-15")
    );
    assert_eq!(
        mine.metadata.get("clientType").map(String::as_str),
        Some("rust-tcp")
    );
    assert!(mine
        .remote_addr
        .as_deref()
        .is_some_and(|a| a.starts_with("127.0.0.1:")));
    assert!(!mine.parked);
    let theirs = all.iter().find(|i| i.sid == sid2).expect("f2's session");
    assert_eq!(theirs.frontend_id, "f2");
    assert!(theirs.parked);

    let ended = backend
        .revoke_user("bob:eu", "account locked")
        .await
        .expect("revoke");
    let mut want = vec![sid1, sid2];
    want.sort();
    assert_eq!(ended, want);
    assert_eq!(
        on_f1.next_event(WAIT).await,
        Some(PomeloEvent::Kick {
            reason: "account locked".into()
        })
    );
    assert_eq!(f1.sessions.count() + f2.sessions.count(), 0);
    assert!(backend
        .user_sessions("f2", "bob:eu")
        .await
        .expect("call")
        .is_empty());
}
