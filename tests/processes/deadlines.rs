//! A call whose caller was told "deadline exceeded" must not take effect
//! later: the deadline travels with the request (its sending time, read
//! through the clock offset measured at the handshake), and the far side
//! drops work that is already past it.

use crate::common;

use common::nodes::{run_node, signal, write_cluster};
use futures::{SinkExt, StreamExt};
use serde_json::json;
use session_proxy::protocol::{
    unix_ms, BackendCodec, Bind, Call, ErrorCode, Hello, HelloReply, Message, Request, Role,
};
use session_proxy::{ConnectInfo, RpcConfig, SessionConfig, SessionService};
use session_proxy_client::PomeloClient;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

#[tokio::test]
async fn a_frontend_does_not_apply_a_call_that_arrives_after_its_deadline() {
    let sessions = SessionService::new(SessionConfig::new("f1"));
    let rpc = common::rpc_on_loopback(&sessions, RpcConfig::default()).await;
    let stream = TcpStream::connect(rpc.local_addr()).await.expect("connect");
    late_calls_are_not_applied(stream, &sessions).await;
}

#[tokio::test]
async fn over_the_in_process_link_too() {
    let sessions = SessionService::new(SessionConfig::new("f1"));
    let mut config = RpcConfig::default();
    config.in_process = Some("deadlines-f1".into());
    let rpc = common::rpc_on_loopback(&sessions, config).await;
    let addr = rpc.in_process_addr().expect("in process");
    let pipe = session_proxy::link::inproc::connect(addr).expect("a pipe");
    late_calls_are_not_applied(pipe, &sessions).await;
}

/// A bind sent 8 s ago with a 5 s deadline is refused, one sent now is
/// applied, over `stream` to the frontend of `sessions`.
async fn late_calls_are_not_applied<S>(stream: S, sessions: &SessionService)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let owner = sessions.create(ConnectInfo::default());
    let mut framed = Framed::new(stream, BackendCodec::new(1 << 20));
    framed
        .send(Message::Hello(Hello::new("b1", Role::Backend, None)))
        .await
        .expect("hello");
    match framed.next().await {
        Some(Ok(Message::HelloReply(HelloReply::Accepted { .. }))) => {}
        other => panic!("not accepted: {other:?}"),
    }
    let bind = |id, sent_ms| {
        Message::Request(Request {
            id,
            deadline_ms: 5_000,
            call: Bind {
                sid: owner.sid(),
                uid: format!("user-{id}"),
            }
            .into(),
            sent_ms,
        })
    };
    // Sent 8 s ago with a 5 s deadline (a backend stopped meanwhile).
    framed.send(bind(1, unix_ms() - 8_000)).await.expect("send");
    framed.send(bind(2, unix_ms())).await.expect("send");
    let mut answers = Vec::new();
    while answers.len() < 2 {
        match tokio::time::timeout(Duration::from_secs(5), framed.next()).await {
            Ok(Some(Ok(Message::Response(r)))) => answers.push(r),
            Ok(Some(Ok(_))) => {}
            other => panic!("no answer: {other:?}"),
        }
    }
    answers.sort_by_key(|r| r.id);
    let late = answers[0].result.as_ref().expect_err("late call refused");
    assert_eq!(late.code, ErrorCode::DeadlineExceeded, "{late}");
    let applied = answers[1].result.clone().expect("the call in time applied");
    assert_eq!(Bind::decode_reply(applied).expect("a bind's reply"), ());
    assert_eq!(
        sessions.get(owner.sid()).expect("open").uid.as_deref(),
        Some("user-2"),
        "only the call in time was applied"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_backend_does_not_apply_a_set_its_client_was_told_failed() {
    let (config, port) = write_cluster("deadlines");
    let mut front = run_node(&config, "connector-1").await;
    let mut back = run_node(&config, "chat-1").await;
    let client = PomeloClient::connect(format!("127.0.0.1:{port}").parse().expect("addr"))
        .await
        .expect("connect");
    let set = |v: u32| json!({ "key": "n", "value": v });
    let until = Instant::now() + Duration::from_secs(10);
    while client.request("chat.benchHandler.set", &set(1)).await.ok()
        != Some(json!({ "code": 200 }))
    {
        assert!(Instant::now() < until, "the backend never served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let pid = back.id().expect("pid");
    signal(pid, "STOP");
    let answer = client
        .request("chat.benchHandler.set", &set(2))
        .await
        .expect("an answer");
    assert_eq!(
        answer["code"], 500,
        "the client is told it failed: {answer}"
    );
    signal(pid, "CONT");
    // The backend reads the request now, past its deadline: it must not
    // run it. Give it time to (wrongly) do so.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let now = client
        .request("chat.benchHandler.get", &json!({ "key": "n" }))
        .await
        .expect("answered");
    assert_eq!(
        now,
        json!({ "code": 200, "value": 1 }),
        "the failed set took effect"
    );

    common::nodes::sigkill(&mut back).await;
    common::nodes::sigkill(&mut front).await;
}
