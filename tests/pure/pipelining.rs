//! A client that pipelines more requests than its connection's in-flight
//! cap (`GatewayConfig::max_pending_requests`, 64) is slowed by TCP, not
//! refused: 200 requests written at once are all answered, with the default
//! settings, over raw TCP and WebSocket, on a local and a forwarded route.

use crate::common;

use bytes::{Bytes, BytesMut};
use common::cluster::*;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use session_proxy::protocol::client::{
    encode_parts, ClientMessage, MessageType, PackageCodec, PackageType, Route, MAX_PACKAGE_BODY,
};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_util::codec::Decoder;

/// Many more than the default cap of 64.
const REQUESTS: u64 = 200;

/// Raw packages both ways over TCP or one WebSocket, so that every request
/// leaves in a single write.
enum Wire {
    Tcp(TcpStream, BytesMut),
    Ws(Box<tokio_tungstenite::WebSocketStream<TcpStream>>, BytesMut),
}

impl Wire {
    async fn open(addr: SocketAddr, ws: bool) -> Wire {
        let stream = TcpStream::connect(addr).await.expect("connect");
        if ws {
            let (ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}/"), stream)
                .await
                .expect("websocket upgrade");
            Wire::Ws(Box::new(ws), BytesMut::new())
        } else {
            Wire::Tcp(stream, BytesMut::new())
        }
    }

    /// Sends `bytes` in one write (one WebSocket message).
    async fn send(&mut self, bytes: BytesMut) {
        match self {
            Wire::Tcp(s, _) => s.write_all(&bytes).await.expect("write"),
            Wire::Ws(ws, _) => ws
                .send(WsMessage::Binary(bytes.freeze()))
                .await
                .expect("send"),
        }
    }

    /// The next package from the gateway.
    async fn next(&mut self) -> (PackageType, Bytes) {
        let mut codec = PackageCodec::new(MAX_PACKAGE_BODY);
        loop {
            let buf = match self {
                Wire::Tcp(_, buf) | Wire::Ws(_, buf) => buf,
            };
            if let Some(p) = codec.decode(buf).expect("valid package") {
                return (p.kind, p.body);
            }
            match self {
                Wire::Tcp(s, buf) => {
                    assert!(s.read_buf(buf).await.expect("read") > 0, "closed")
                }
                Wire::Ws(ws, buf) => match ws.next().await {
                    Some(Ok(WsMessage::Binary(data))) => buf.extend_from_slice(&data),
                    Some(Ok(_)) => {}
                    other => panic!("websocket ended: {other:?}"),
                },
            }
        }
    }
}

/// Handshakes, writes `REQUESTS` requests on `route` at once (body
/// `{"i": n}`), and returns every answer by request id.
async fn pipeline(addr: SocketAddr, ws: bool, route: &str) -> BTreeMap<u64, Value> {
    let codec = PackageCodec::new(MAX_PACKAGE_BODY);
    let mut wire = Wire::open(addr, ws).await;
    let mut out = BytesMut::new();
    common::encode_client_handshake(&mut out);
    wire.send(out.split()).await;
    assert_eq!(wire.next().await.0, PackageType::Handshake);
    codec
        .encode_to(PackageType::HandshakeAck, &[], &mut out)
        .expect("encode");
    for id in 1..=REQUESTS {
        let body = json!({ "i": id }).to_string();
        codec
            .encode_with(PackageType::Data, &mut out, |b| {
                encode_parts(
                    MessageType::Request,
                    id,
                    &Route::Name(route.into()),
                    body.as_bytes(),
                    b,
                )
            })
            .expect("encode");
    }
    wire.send(out.split()).await;
    let mut answers = BTreeMap::new();
    let all = async {
        while answers.len() < REQUESTS as usize {
            let (kind, body) = wire.next().await;
            if kind != PackageType::Data {
                continue;
            }
            let msg = ClientMessage::decode(body).expect("a message");
            assert_eq!(msg.kind, MessageType::Response);
            let value: Value = serde_json::from_slice(&msg.body).expect("JSON");
            assert!(answers.insert(msg.id, value).is_none(), "answered twice");
        }
    };
    tokio::time::timeout(WAIT * 2, all)
        .await
        .expect("every pipelined request is answered");
    answers
}

fn check(answers: BTreeMap<u64, Value>) {
    assert_eq!(answers.len(), REQUESTS as usize);
    for (id, answer) in answers {
        assert_eq!(answer, json!({ "i": id }), "request {id} got {answer}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_past_the_cap_are_all_answered() {
    let f = start_frontend("f1", |_| {}).await;
    let (_backend, _channels) = start_backend("game-1", &[&f]);
    wait_for_backends(&f, 1).await;
    let addr = f.gateway.local_addr();
    for ws in [false, true] {
        // A frontend-local route: every handler is ready at once, so all
        // 200 packages of the write would start before any answer.
        check(pipeline(addr, ws, "connector.entry.echo").await);
        // A forwarded route, through the backend.
        check(pipeline(addr, ws, "game.h.echo").await);
    }
}
