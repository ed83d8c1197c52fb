//! TLS on cluster links and on the client gateway (raw packages over TLS,
//! and `wss`), on the same ports as the plain protocols.

use crate::common;

use common::*;
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};
use serde_json::json;
use session_proxy::frontend::{Gateway, GatewayConfig, ServerTls};
use session_proxy::link::LinkTls;
use session_proxy::{ConnectInfo, ErrorCode, RpcConfig, SessionConfig, SessionService};
use session_proxy_client::{PomeloClient, PomeloOptions, Transport};
use std::time::Duration;

struct Pki {
    ca: String,
    cert: String,
    key: String,
}

fn pki() -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().expect("ca key");
    let ca = ca_params.self_signed(&ca_key).expect("ca cert");
    let mut leaf_params =
        CertificateParams::new(vec!["localhost".to_string()]).expect("leaf params");
    leaf_params
        .subject_alt_names
        .push(SanType::IpAddress(std::net::IpAddr::from([127, 0, 0, 1])));
    let leaf_key = KeyPair::generate().expect("leaf key");
    let leaf = leaf_params
        .signed_by(&leaf_key, &ca, &ca_key)
        .expect("leaf cert");
    Pki {
        ca: ca.pem(),
        cert: leaf.pem(),
        key: leaf_key.serialize_pem(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_links_over_tls() {
    let pki = pki();
    let sessions = SessionService::new(SessionConfig::new("f1"));
    let mut config = RpcConfig::default();
    config.tls =
        Some(ServerTls::from_pem(pki.cert.as_bytes(), pki.key.as_bytes()).expect("server tls"));
    let server = common::rpc_on_loopback(&sessions, config).await;
    let owner = sessions.create(ConnectInfo::default());

    let mut good = quick_client("b1", Duration::from_secs(2));
    good.tls = Some(LinkTls::from_ca_pem(pki.ca.as_bytes(), "localhost").expect("client tls"));
    let backend = start_backend_with(good, "f1", server.local_addr());
    let mut s = backend
        .get("f1", owner.sid())
        .await
        .expect("over TLS")
        .expect("open");
    s.bind("alice").await.expect("bind over TLS");
    assert_eq!(
        sessions.get(owner.sid()).expect("open").uid.as_deref(),
        Some("alice")
    );

    // Plain TCP to a TLS listener, and TLS expecting another name: refused.
    let plain = start_backend_with(
        quick_client("b2", Duration::from_millis(800)),
        "f1",
        server.local_addr(),
    );
    let err = plain
        .get("f1", owner.sid())
        .await
        .expect_err("plain refused");
    assert!(
        matches!(
            err.code(),
            ErrorCode::Unavailable | ErrorCode::DeadlineExceeded
        ),
        "{err}"
    );
    let mut wrong = quick_client("b3", Duration::from_millis(800));
    wrong.tls =
        Some(LinkTls::from_ca_pem(pki.ca.as_bytes(), "frontend.example").expect("client tls"));
    let wrong = start_backend_with(wrong, "f1", server.local_addr());
    let err = wrong
        .get("f1", owner.sid())
        .await
        .expect_err("wrong name refused");
    let shown = session_proxy::protocol::chain(&err).to_string();
    assert!(shown.contains("TLS"), "{shown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_over_tls_and_wss_share_the_port_with_plain_ones() {
    let pki = pki();
    let sessions = SessionService::new(SessionConfig::new("f1"));
    let rpc = common::rpc_on_loopback(&sessions, RpcConfig::default()).await;
    let mut gw = GatewayConfig::default();
    gw.tls =
        Some(ServerTls::from_pem(pki.cert.as_bytes(), pki.key.as_bytes()).expect("server tls"));
    let mut gateway = Gateway::new(sessions.clone(), rpc.backends(), gw);
    gateway.handlers().add(
        "connector.h.hello",
        |ctx, _b: serde_json::Value| async move {
            let info = ctx
                .sessions
                .info(ctx.sid)
                .map(|(i, _)| i.metadata.get("transport").cloned());
            Ok(json!({ "transport": info.flatten() }))
        },
    );
    let gateway = gateway
        .bind("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("gateway");
    let tls = LinkTls::from_ca_pem(pki.ca.as_bytes(), "localhost").expect("client tls");
    for (transport, tls, want) in [
        (Transport::Tcp, Some(tls.clone()), "tls"),
        (Transport::WebSocket, Some(tls.clone()), "wss"),
        (Transport::Tcp, None, "tcp"),
        (Transport::WebSocket, None, "ws"),
    ] {
        let mut options = PomeloOptions::default();
        options.transport = transport;
        options.tls = tls;
        let c = PomeloClient::connect_with(gateway.local_addr(), options)
            .await
            .expect("connect");
        let answer = c
            .request("connector.h.hello", &json!({}))
            .await
            .expect("request");
        assert_eq!(answer, json!({ "transport": want }));
    }
    assert_eq!(sessions.count(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_file_turns_tls_on_for_links_and_clients() {
    use common::nodes::{free_port, run_node, sigkill};
    let pki = pki();
    let dir = std::env::temp_dir().join(format!("session-proxy-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    for (name, pem) in [
        ("cert.pem", &pki.cert),
        ("key.pem", &pki.key),
        ("ca.pem", &pki.ca),
    ] {
        std::fs::write(dir.join(name), pem).expect("write pem");
    }
    let (rpc, client) = (free_port(), free_port());
    let config = dir.join("cluster.toml");
    std::fs::write(
        &config,
        format!(
            "[cluster]\ntls_cert = {:?}\ntls_key = {:?}\ntls_ca = {:?}\n\n[[node]]\nid = \"connector-1\"\ntype = \"connector\"\nrole = \"frontend\"\nrpc = \"127.0.0.1:{rpc}\"\nclient = \"127.0.0.1:{client}\"\n\n[[node]]\nid = \"chat-1\"\ntype = \"chat\"\nrole = \"backend\"\n",
            dir.join("cert.pem"),
            dir.join("key.pem"),
            dir.join("ca.pem")
        ),
    )
    .expect("write config");
    let mut front = run_node(&config, "connector-1").await;
    let mut back = run_node(&config, "chat-1").await;
    let mut options = PomeloOptions::default();
    options.tls = Some(LinkTls::from_ca_pem(pki.ca.as_bytes(), "localhost").expect("client tls"));
    let c = PomeloClient::connect_with(
        format!("127.0.0.1:{client}").parse().expect("addr"),
        options,
    )
    .await
    .expect("TLS client");
    let until = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let answer = c
            .request("chat.benchHandler.echo", &json!({ "x": 1 }))
            .await
            .expect("answer");
        if answer == json!({ "x": 1 }) {
            break; // client -> TLS -> connector -> TLS link -> chat backend, and back
        }
        assert!(
            std::time::Instant::now() < until,
            "the backend never connected over TLS: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sigkill(&mut back).await;
    sigkill(&mut front).await;
    let _ = std::fs::remove_dir_all(&dir);
}
