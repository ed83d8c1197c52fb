//! What a filter chain costs one request: the chain itself, with the work
//! an empty future. `cargo bench -p session-proxy-filters`.
#![allow(missing_docs)] // criterion_group! generates undocumented items

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use futures::executor::block_on;
use session_proxy_filters::{check, Call, Filters, RateLimit, Serial};
use session_proxy_protocol::SessionId;
use std::hint::black_box;
use std::net::IpAddr;

fn call(sid: u64) -> Call {
    let mut call = Call::new("chat.chatHandler.send", SessionId::from_raw(sid));
    call.uid = Some("alice".into());
    call.peer = Some(IpAddr::from([10, 0, (sid >> 8) as u8, sid as u8]));
    call
}

fn run(filters: &Filters, sid: u64) {
    let answer = block_on(filters.run(call(sid), async { Bytes::from_static(b"{}") }));
    black_box(answer.is_ok());
}

fn chain(c: &mut Criterion) {
    let mut g = c.benchmark_group("filters");
    let none = Filters::new();
    g.bench_function("no rule applies (the gateway's test)", |b| {
        b.iter(|| black_box(none.applies(black_box("chat.chatHandler.send"))))
    });
    let checked = Filters::new().with(
        "chat.",
        check("logged_in", |call: &Call| match call.uid {
            Some(_) => Ok(()),
            None => Err(session_proxy_protocol::client::HandlerError::new("no")),
        }),
    );
    g.bench_function("one check", |b| b.iter(|| run(&checked, 1)));
    // A generous limit, so every request passes: the cost of passing.
    let unlimited = RateLimit::new()
        .per_session(session_proxy_filters::Bucket::new(1e12, 1e12))
        .per_ip(session_proxy_filters::Bucket::new(1e12, 1e12));
    let limited = Filters::new().with("", unlimited);
    g.bench_function("rate limit, one session", |b| b.iter(|| run(&limited, 1)));
    let mut sid = 0u64;
    g.bench_function("rate limit, 10k sessions in turn", |b| {
        b.iter(|| {
            sid = (sid + 1) % 10_000;
            run(&limited, sid)
        })
    });
    let serial = Filters::new().with("", Serial::new());
    g.bench_function("serial, one session", |b| b.iter(|| run(&serial, 1)));
    g.finish();
}

criterion_group!(benches, chain);
criterion_main!(benches);
