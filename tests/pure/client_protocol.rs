//! Clients at the edges of the protocol: handshakes that are never acked,
//! heartbeats sent back as fast as they arrive, a resume token copied to
//! another device, the dictionary reply every kind of client expects, the
//! protos reply, the handshake hooks, and WebSocket close codes.

use crate::common;

use bytes::BytesMut;
use common::cluster::start_frontend;
use session_proxy::protocol::client::{PackageCodec, PackageType, MAX_PACKAGE_BODY};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::Decoder;

/// A raw client: handshake sent, reply read.
struct Raw {
    stream: TcpStream,
    buf: BytesMut,
    codec: PackageCodec,
}

impl Raw {
    async fn handshake(addr: std::net::SocketAddr) -> Raw {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let mut out = BytesMut::new();
        common::encode_client_handshake(&mut out);
        stream.write_all(&out).await.expect("write");
        let mut raw = Raw {
            stream,
            buf: BytesMut::new(),
            codec: PackageCodec::new(MAX_PACKAGE_BODY),
        };
        assert_eq!(
            raw.next(Duration::from_secs(5)).await,
            Some(PackageType::Handshake)
        );
        raw
    }

    async fn send(&mut self, kind: PackageType) {
        let mut out = BytesMut::new();
        self.codec.encode_to(kind, &[], &mut out).expect("encode");
        self.stream.write_all(&out).await.expect("write");
    }

    /// The next package's type; `None` when closed or nothing came in time.
    async fn next(&mut self, within: Duration) -> Option<PackageType> {
        let until = tokio::time::Instant::now() + within;
        loop {
            if let Some(p) = self.codec.decode(&mut self.buf).expect("valid package") {
                return Some(p.kind);
            }
            match tokio::time::timeout_at(until, self.stream.read_buf(&mut self.buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return None,
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_never_acked_leave_no_sessions_behind() {
    let f = start_frontend("f1", |c| c.resume_grace = Duration::from_secs(30)).await;
    let addr = f.gateway.local_addr();
    for _ in 0..200 {
        let raw = Raw::handshake(addr).await;
        drop(raw);
    }
    common::eventually(
        Duration::from_secs(5),
        "sessions of clients that never acked are let go",
        || async {
            match f.sessions.count() {
                0 => Ok(()),
                n => Err(format!("{n} still held")),
            }
        },
    )
    .await;
    // An acked session that drops is parked for its resume grace, as before.
    let mut acked = Raw::handshake(addr).await;
    acked.send(PackageType::HandshakeAck).await;
    assert_eq!(
        acked.next(Duration::from_secs(5)).await,
        Some(PackageType::Heartbeat)
    );
    let mut events = f.sessions.subscribe();
    drop(acked);
    let parked = common::next_parked(&mut events, Duration::from_secs(5)).await;
    assert!(f.sessions.is_parked(parked), "the acked session is parked");
    assert_eq!(f.sessions.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_echoing_heartbeats_gets_no_ping_pong_and_a_flood_is_closed() {
    // Heartbeat 2 s: at most one answer per second.
    let f = start_frontend("f1", |c| c.heartbeat = Duration::from_secs(2)).await;
    let mut c = Raw::handshake(f.gateway.local_addr()).await;
    c.send(PackageType::HandshakeAck).await;
    assert_eq!(
        c.next(Duration::from_secs(5)).await,
        Some(PackageType::Heartbeat)
    );
    // Answer every server heartbeat at once, for 1.5 s.
    let mut answered = 0;
    let until = tokio::time::Instant::now() + Duration::from_millis(1500);
    c.send(PackageType::Heartbeat).await;
    while tokio::time::Instant::now() < until {
        match c.next(until - tokio::time::Instant::now()).await {
            Some(PackageType::Heartbeat) => {
                answered += 1;
                c.send(PackageType::Heartbeat).await;
            }
            Some(other) => panic!("unexpected {other:?}"),
            None => break,
        }
    }
    assert!(answered <= 2, "{answered} heartbeats in 1.5 s: a ping-pong");

    // A client that keeps sending heartbeats far too often is closed.
    let mut flood = Raw::handshake(f.gateway.local_addr()).await;
    flood.send(PackageType::HandshakeAck).await;
    for _ in 0..200 {
        flood.send(PackageType::Heartbeat).await;
    }
    let mut closed = false;
    for _ in 0..10 {
        if flood.next(Duration::from_secs(2)).await.is_none() {
            closed = true;
            break;
        }
    }
    assert!(closed, "a heartbeat flood is closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_token_copied_to_another_device_is_refused_when_asked() {
    use serde_json::json;
    use session_proxy_client::{PomeloClient, PomeloOptions};
    let f = start_frontend("f1", |c| c.resume_same_client = true).await;
    let addr = f.gateway.local_addr();
    let open = |user: serde_json::Value| {
        let mut options = PomeloOptions::default();
        options.user = user;
        PomeloClient::connect_with(addr, options)
    };
    let first = open(json!({ "device": "phone-1" })).await.expect("connect");
    let token = first.handshake()["user"]["resumeToken"]
        .as_str()
        .expect("a token")
        .to_string();
    let mut events = f.sessions.subscribe();
    first.close();
    common::next_parked(&mut events, Duration::from_secs(5)).await;
    let elsewhere = open(json!({ "device": "laptop-9", "resumeToken": token }))
        .await
        .expect("another device gets a session of its own");
    let user = &elsewhere.handshake()["user"];
    assert_eq!(user["resumed"], false);
    assert!(
        user["resumeRefused"]
            .as_str()
            .is_some_and(|why| why.contains("different client type or device")),
        "{user}"
    );
    assert_eq!(f.sessions.count(), 2, "the parked session is untouched");
    // The device it was issued to still resumes.
    let back = open(json!({ "device": "phone-1", "resumeToken": token }))
        .await
        .expect("the same device resumes");
    assert_eq!(back.handshake()["user"]["resumed"], true);
}

/// The handshake reply's `sys` for a client that sends `sys`.
async fn handshake_sys(addr: std::net::SocketAddr, sys: serde_json::Value) -> serde_json::Value {
    handshake_reply(addr, serde_json::json!({ "sys": sys, "user": {} }))
        .await
        .get("sys")
        .cloned()
        .unwrap_or_default()
}

/// The whole handshake reply to `handshake` (the connection then closes).
async fn handshake_reply(
    addr: std::net::SocketAddr,
    handshake: serde_json::Value,
) -> serde_json::Value {
    handshake_open(addr, handshake).await.0
}

/// The whole handshake reply to `handshake`, and the connection, still
/// open (its session lives while it does).
async fn handshake_open(
    addr: std::net::SocketAddr,
    handshake: serde_json::Value,
) -> (serde_json::Value, Raw) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let codec = PackageCodec::new(MAX_PACKAGE_BODY);
    let mut out = BytesMut::new();
    let body = handshake.to_string();
    codec
        .encode_to(PackageType::Handshake, body.as_bytes(), &mut out)
        .expect("encode");
    stream.write_all(&out).await.expect("write");
    let mut raw = Raw {
        stream,
        buf: BytesMut::new(),
        codec,
    };
    loop {
        if let Some(p) = raw.codec.decode(&mut raw.buf).expect("valid package") {
            assert_eq!(p.kind, PackageType::Handshake);
            return (serde_json::from_slice(&p.body).expect("JSON"), raw);
        }
        assert!(
            raw.stream.read_buf(&mut raw.buf).await.expect("read") > 0,
            "closed"
        );
    }
}

#[tokio::test]
async fn the_dictionary_reply_suits_pinus_and_libpomelo2_clients() {
    use serde_json::json;
    let f = start_frontend("f1", |c| {
        c.dictionary = vec!["game.h.echo".into(), "onStep".into()];
    })
    .await;
    let addr = f.gateway.local_addr();
    let sys = handshake_sys(addr, json!({ "type": "c", "version": "1" })).await;
    assert_eq!(sys["useDict"], true);
    assert_eq!(sys["dict"], json!({ "game.h.echo": 1, "onStep": 2 }));
    assert_eq!(sys["routeToCode"], sys["dict"]);
    assert_eq!(
        sys["codeToRoute"],
        json!({ "1": "game.h.echo", "2": "onStep" })
    );
    let version = sys["dictVersion"].as_str().expect("a version").to_string();
    // A client that holds this version gets none of them again.
    let again = handshake_sys(
        addr,
        json!({ "type": "c", "version": "1", "dictVersion": version }),
    )
    .await;
    assert_eq!(again["useDict"], true);
    for field in ["dict", "routeToCode", "codeToRoute", "dictVersion"] {
        assert!(again.get(field).is_none(), "{field} sent again: {again}");
    }
}

#[tokio::test]
async fn protos_go_to_protobuf_clients_that_do_not_hold_them_and_to_no_one_else() {
    use serde_json::json;
    let protos = session_proxy_chat::chat_protos().expect("the chat's protos");
    let version = protos.version().to_string();
    let f = start_frontend("f1", |c| c.protos = Some(protos)).await;
    let addr = f.gateway.local_addr();
    // Pomelo's protobuf clients send protoVersion 0 when they hold none.
    let fresh = handshake_sys(
        addr,
        json!({ "type": "js", "version": "1", "protoVersion": 0 }),
    )
    .await;
    assert_eq!(fresh["useProto"], true);
    assert_eq!(fresh["protos"]["version"], version.as_str());
    assert_eq!(
        fresh["protos"]["server"]["onAdd"],
        json!({ "user": { "option": "required", "type": "string", "tag": 1 }, "__messages": {}, "__tags": { "1": "user" } })
    );
    assert!(fresh["protos"]["client"]["chat.chatHandler.send"].is_object());
    // Holding an old version: the protos again.
    let stale = handshake_sys(
        addr,
        json!({ "type": "js", "version": "1", "protoVersion": "old" }),
    )
    .await;
    assert_eq!(stale["protos"]["version"], version.as_str());
    // Holding the current one: none.
    let current = handshake_sys(
        addr,
        json!({ "type": "js", "version": "1", "protoVersion": version }),
    )
    .await;
    assert_eq!(current["useProto"], true);
    assert!(current.get("protos").is_none(), "{current}");
    // A client that does not speak protobuf keeps JSON everywhere.
    let json_client = handshake_sys(addr, json!({ "type": "js", "version": "1" })).await;
    assert!(json_client.get("useProto").is_none(), "{json_client}");
    assert!(json_client.get("protos").is_none(), "{json_client}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_hooks_refuse_old_clients_bad_users_slow_hooks_and_a_panic_refuses_only_its_client(
) {
    use serde_json::json;
    use session_proxy::{Gateway, GatewayConfig, RpcConfig, SessionConfig, SessionService};
    use std::time::Duration;
    let sessions = SessionService::new(SessionConfig::new("f-hooks"));
    let rpc = common::rpc_on_loopback(&sessions, RpcConfig::default()).await;
    let mut config = GatewayConfig::new("connector");
    config.hook_timeout = Duration::from_millis(300);
    let mut gateway = Gateway::new(sessions.clone(), rpc.backends(), config);
    // Pomelo's checkClient: version 0.1 is too old; a client type the
    // check cannot handle makes it panic, inside its future.
    gateway.check_client(|client_type: String, version: String| async move {
        assert!(client_type != "crash", "a bug in the check");
        tokio::task::yield_now().await;
        version != "0.1"
    });
    // A user hook that looks the auth token up somewhere slow.
    gateway.on_handshake(|request, _peer| async move {
        let token = request
            .user
            .get("token")
            .and_then(|t| t.as_str())
            .map(str::to_string);
        match token.as_deref() {
            Some("good") => Ok(Some(json!({ "welcome": true }))),
            Some("slow") => {
                tokio::time::sleep(Duration::from_secs(30)).await;
                Ok(None)
            }
            Some("panic") => panic!("a bug in the hook"),
            _ => Err("invalid auth token".to_string()),
        }
    });
    let gateway = gateway
        .bind("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("gateway");
    let addr = gateway.local_addr();
    let hello = |client_type: &str, version: &str, token: &str| json!({ "sys": { "type": client_type, "version": version }, "user": { "token": token } });
    let old = handshake_reply(addr, hello("js", "0.1", "good")).await;
    assert_eq!(old["code"], 501, "{old}");
    let bad = handshake_reply(addr, hello("js", "1.0", "stolen")).await;
    assert_eq!(bad["code"], 500, "{bad}");
    assert_eq!(bad["error"], "invalid auth token");
    let hook_bug = handshake_reply(addr, hello("js", "1.0", "panic")).await;
    assert_eq!(hook_bug["code"], 500, "{hook_bug}");
    assert_eq!(hook_bug["error"], "handshake hook failed");
    let check_bug = handshake_reply(addr, hello("crash", "1.0", "good")).await;
    assert_eq!(check_bug["code"], 500, "{check_bug}");
    assert_eq!(check_bug["error"], "client check failed");
    // A hook past its timeout is answered when the timeout ends, not
    // when the hook would have.
    let started = std::time::Instant::now();
    let slow = handshake_reply(addr, hello("js", "1.0", "slow")).await;
    assert_eq!(slow["code"], 500, "{slow}");
    assert_eq!(slow["error"], "handshake hook timed out");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "waited for the hook"
    );
    // Nobody else is hurt: the next client is let in, with the hook's word
    // (its connection kept open: a session whose client leaves before its
    // ack closes).
    let (good, _open) = handshake_open(addr, hello("js", "1.0", "good")).await;
    assert_eq!(good["code"], 200, "{good}");
    assert_eq!(good["user"]["welcome"], true, "{good}");
    assert_eq!(
        sessions.count(),
        1,
        "only the accepted client has a session"
    );
}

/// A WebSocket client that has shaken hands and acked.
async fn ws_client(addr: std::net::SocketAddr) -> tokio_tungstenite::WebSocketStream<TcpStream> {
    use futures::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}/"), stream)
        .await
        .expect("upgrade");
    let mut out = BytesMut::new();
    common::encode_client_handshake(&mut out);
    PackageCodec::new(MAX_PACKAGE_BODY)
        .encode_to(PackageType::HandshakeAck, &[], &mut out)
        .expect("encode");
    ws.send(Message::Binary(out.freeze())).await.expect("send");
    ws
}

/// The close frame's code and reason, after whatever packages came first.
async fn close_frame(ws: &mut tokio_tungstenite::WebSocketStream<TcpStream>) -> (u16, String) {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        let next = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("a close frame in time");
        match next {
            Some(Ok(Message::Close(Some(frame)))) => {
                return (u16::from(frame.code), frame.reason.to_string())
            }
            Some(Ok(Message::Close(None))) | None | Some(Err(_)) => panic!("closed without a code"),
            Some(Ok(_)) => {}
        }
    }
}

#[tokio::test]
async fn browsers_see_why_a_websocket_closed_in_its_close_code() {
    let f = start_frontend("f1", |_| {}).await;
    let addr = f.gateway.local_addr();
    // A kick: 1000 with the reason.
    let mut kicked = ws_client(addr).await;
    let sid = common::eventually(Duration::from_secs(5), "a session", || async {
        f.sessions
            .sids()
            .first()
            .copied()
            .ok_or_else(|| "none yet".to_string())
    })
    .await;
    assert!(f.sessions.kick_by_sid(sid, "banned"));
    assert_eq!(
        close_frame(&mut kicked).await,
        (1000, "kicked: banned".to_string())
    );
    // Shutdown: 1001, going away (come back elsewhere).
    let mut second = ws_client(addr).await;
    common::eventually(Duration::from_secs(5), "a second session", || async {
        match f.sessions.sids().iter().any(|s| *s != sid) {
            true => Ok(()),
            false => Err("only the first".to_string()),
        }
    })
    .await;
    let (code, _) = tokio::join!(
        close_frame(&mut second),
        f.gateway.shutdown(Duration::from_secs(2))
    )
    .0;
    assert_eq!(code, 1001);
}
