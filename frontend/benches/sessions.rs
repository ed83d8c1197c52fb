//! Session-service operations at 1k, 100k and 1M sessions (the push apply
//! cost should stay flat), and the memory of 1M idle sessions.
#![allow(missing_docs)] // criterion_group! generates undocumented items

use bytes::Bytes;
use criterion::{black_box, criterion_group, BenchmarkId, Criterion};
use session_proxy_frontend::{ConnectInfo, SessionConfig, SessionOwner, SessionService};
use session_proxy_protocol::{KeyWrite, Precondition};

fn filled(n: usize) -> (SessionService, Vec<SessionOwner>) {
    let s = SessionService::new(SessionConfig::new("bench"));
    let owners: Vec<SessionOwner> = (0..n).map(|_| s.create(ConnectInfo::default())).collect();
    for (i, o) in owners.iter().enumerate() {
        s.bind(o.sid(), &format!("user-{i}"))
            .expect("fresh session binds");
    }
    (s, owners)
}

fn operations(c: &mut Criterion) {
    let mut g = c.benchmark_group("session_service");
    g.sample_size(20);
    for n in [1_000usize, 100_000, 1_000_000] {
        let (s, owners) = filled(n);
        let sids: Vec<_> = owners.iter().map(|o| o.sid()).collect();
        let value = Bytes::from_static(b"\xa5lobby");
        let mut i = 0usize;
        g.bench_with_input(BenchmarkId::new("apply_push", n), &n, |b, _| {
            b.iter(|| {
                i = (i + 7919) % sids.len();
                let writes = vec![KeyWrite {
                    key: "room".into(),
                    value: Some(value.clone()),
                    expect: Precondition::Any,
                }];
                black_box(s.apply_push(sids[i], writes).expect("open"));
            })
        });
        g.bench_with_input(BenchmarkId::new("get_by_uid", n), &n, |b, _| {
            b.iter(|| {
                i = (i + 7919) % sids.len();
                black_box(s.sids_of_uid(&format!("user-{i}")));
            })
        });
        g.bench_with_input(BenchmarkId::new("create_bind_close", n), &n, |b, _| {
            b.iter(|| {
                let o = s.create(ConnectInfo::default());
                s.bind(o.sid(), "transient").expect("binds");
                drop(o);
            })
        });
        drop(owners);
    }
    g.finish();
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn memory() {
    let before = rss_kib();
    let (s, owners) = filled(1_000_000);
    let after = rss_kib();
    drop((s, owners));
    println!(
        "memory: 1,000,000 bound sessions (owner handles included): {} MiB, {:.0} bytes per session",
        (after - before) / 1024,
        (after - before) as f64 * 1024.0 / 1_000_000.0
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default();
    targets = operations
}

fn main() {
    // Memory first, in a fresh process: after the benchmarks the allocator
    // keeps freed pages and the growth would read as zero.
    memory();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
