//! The README's first program, wired the same way on free ports: a client's
//! request reaches the backend handler as soon as `ready` returns, its push
//! lands on the frontend's session, and the whole app stops well under a
//! second. The README carries `examples/minimal.rs` verbatim.

use serde::Deserialize;
use serde_json::json;
use session_proxy::{
    BackendConfig, BackendSession, BackendSessionService, Gateway, GatewayConfig, Handlers,
    RpcConfig, RpcServer, SessionConfig, SessionService,
};
use session_proxy_bench::pomelo::PomeloClient;
use std::time::{Duration, Instant};

#[derive(Deserialize)]
struct Move {
    x: i32,
    y: i32,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_minimal_app_serves_a_client_and_stops_well_under_a_second() {
    let sessions = SessionService::new(SessionConfig::new("connector-1"));
    let rpc = RpcServer::bind(
        "127.0.0.1:0".parse().expect("addr"),
        sessions.clone(),
        RpcConfig::default(),
    )
    .await
    .expect("rpc");
    let gateway = Gateway::new(
        sessions.clone(),
        rpc.backends(),
        GatewayConfig::new("connector"),
    )
    .bind("127.0.0.1:0".parse().expect("addr"))
    .await
    .expect("gateway");
    let mut handlers = Handlers::new();
    handlers.add(
        "area.playerHandler.move",
        |mut session: BackendSession, to: Move| async move {
            session.set("pos", &(to.x, to.y))?;
            session.push("pos").await?;
            Ok(json!({ "code": 200, "x": to.x, "y": to.y }))
        },
    );
    let mut config = BackendConfig::new("area-1");
    config.server_type = Some("area".into());
    let backend = BackendSessionService::serving(config, handlers).expect("valid config");
    backend.add_frontend("connector-1", rpc.local_addr().to_string());
    backend.ready(Duration::from_secs(5)).await.expect("ready");

    // No polling: the first request after `ready` is forwarded.
    let client = PomeloClient::connect(gateway.local_addr())
        .await
        .expect("client");
    let answer = client
        .request("area.playerHandler.move", &json!({ "x": 3, "y": 4 }))
        .await
        .expect("answer");
    assert_eq!(answer, json!({ "code": 200, "x": 3, "y": 4 }));
    let sid = sessions.sids()[0];
    let pos = &sessions.get(sid).expect("open").settings["pos"].value;
    assert_eq!(
        rmp_serde::from_slice::<(i32, i32)>(pos).expect("decodes"),
        (3, 4)
    );

    // A bad body is a typed answer, not a dropped connection.
    let bad = client
        .request("area.playerHandler.move", &json!({ "x": "three" }))
        .await
        .expect("answer");
    assert_eq!(bad["code"], 400, "{bad}");

    let started = Instant::now();
    let drain = Duration::from_secs(1);
    assert!(
        gateway.shutdown(drain).await,
        "clients closed within the drain"
    );
    assert!(
        backend.shutdown(drain).await,
        "handlers and links ended within the drain"
    );
    assert!(
        rpc.shutdown(drain).await,
        "backend connections closed within the drain"
    );
    let took = started.elapsed();
    assert!(took < Duration::from_millis(500), "shutdown took {took:?}");
    drop(client);

    // The README shows examples/minimal.rs as it is.
    let readme = include_str!("../README.md");
    let example = include_str!("../examples/minimal.rs");
    assert!(
        readme.contains(example),
        "README.md must carry examples/minimal.rs verbatim"
    );
}
