//! Encode/decode costs of both wire protocols.
#![allow(missing_docs)] // criterion_group! generates undocumented items

use bytes::{Bytes, BytesMut};
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use session_proxy_protocol::client::{
    encode_parts, ClientMessage, MessageType, PackageCodec, PackageType, Route,
};
use session_proxy_protocol::{
    BackendCodec, FrontendCall, FrontendCodec, KeyWrite, Message, Precondition, Push, Request,
    SessionId,
};
use tokio_util::codec::Decoder;

fn push_request() -> Message<FrontendCall> {
    Message::Request(Request {
        id: 123_456,
        deadline_ms: 5000,
        sent_ms: 1_764_000_000_000,
        call: Push {
            sid: SessionId::from_raw(0xdead_beef),
            writes: vec![KeyWrite {
                key: "room".into(),
                value: Some(Bytes::from_static(b"\xa9lobby-042")),
                expect: Precondition::Any,
            }],
        }
        .into(),
    })
}

fn cluster(c: &mut Criterion) {
    let codec = BackendCodec::default();
    let msg = push_request();
    let mut g = c.benchmark_group("cluster_frame");
    g.throughput(Throughput::Elements(1));
    g.bench_function("encode_push", |b| {
        let mut buf = BytesMut::with_capacity(4096);
        b.iter(|| {
            buf.clear();
            codec.encode_to(black_box(&msg), &mut buf).expect("encodes");
        })
    });
    let mut one = BytesMut::new();
    codec.encode_to(&msg, &mut one).expect("encodes");
    g.bench_function("decode_push", |b| {
        let mut codec = FrontendCodec::default();
        b.iter(|| {
            let mut buf = one.clone();
            black_box(codec.decode(&mut buf).expect("valid").expect("whole"));
        })
    });
    g.finish();
}

fn client(c: &mut Criterion) {
    let codec = PackageCodec::new(64 * 1024);
    let route = Route::Name("chat.chatHandler.send".into());
    let body = br#"{"rid":"lobby","content":"hello there","from":"alice","target":"*"}"#;
    let mut g = c.benchmark_group("client_package");
    g.throughput(Throughput::Elements(1));
    g.bench_function("encode_request", |b| {
        let mut buf = BytesMut::with_capacity(4096);
        b.iter(|| {
            buf.clear();
            codec
                .encode_with(PackageType::Data, &mut buf, |d| {
                    encode_parts(MessageType::Request, 77, black_box(&route), body, d)
                })
                .expect("encodes");
        })
    });
    let mut one = BytesMut::new();
    codec
        .encode_with(PackageType::Data, &mut one, |d| {
            encode_parts(MessageType::Request, 77, &route, body, d)
        })
        .expect("encodes");
    g.bench_function("decode_request", |b| {
        let mut codec = codec;
        b.iter(|| {
            let mut buf = one.clone();
            let p = codec.decode(&mut buf).expect("valid").expect("whole");
            black_box(ClientMessage::decode(p.body).expect("valid"));
        })
    });
    g.finish();
}

/// What a protobuf push costs the gateway on top of a JSON one: the
/// handler's JSON parsed, then encoded with the route's proto; and a
/// protobuf request decoded to the JSON handlers get.
fn protobuf(c: &mut Criterion) {
    use session_proxy_protocol::client::protobuf::Schema;
    let schema = Schema::from_json(&serde_json::json!({
        "onChat": { "required string msg": 1, "required string from": 2, "required string target": 3 }
    }))
    .expect("valid protos");
    let json = br#"{"msg":"hello there","from":"alice","target":"*"}"#;
    let mut g = c.benchmark_group("client_protobuf");
    g.throughput(Throughput::Elements(1));
    g.bench_function("encode_push_from_json", |b| {
        b.iter(|| {
            let value: serde_json::Value = serde_json::from_slice(black_box(json)).expect("JSON");
            black_box(schema.encode("onChat", &value).expect("fits"))
        })
    });
    let bytes = schema
        .encode("onChat", &serde_json::from_slice(json).expect("JSON"))
        .expect("fits");
    g.bench_function("decode_request_to_json", |b| {
        b.iter(|| {
            let value = schema.decode("onChat", black_box(&bytes)).expect("fits");
            black_box(value.to_string())
        })
    });
    g.finish();
}

criterion_group!(benches, cluster, client, protobuf);
criterion_main!(benches);
