//! Turns the JSON lines of `bench/compare` into the comparison section of
//! `docs/BENCHMARKS.md` and a latency-distribution plot (SVG).

mod ccu;

use super::BenchResult;
use anyhow::Context;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

const BEGIN: &str = "<!-- compare:begin -->";
const END: &str = "<!-- compare:end -->";
const SYSTEMS: [&str; 7] = [
    "session-proxy",
    ONE_PROCESS,
    DURABLE,
    "pinus",
    "pitaya",
    "nano",
    "floor",
];
/// The peers, with the names the ratios use.
const PEERS: [(&str, &str); 3] = [("pinus", "Pinus"), ("pitaya", "Pitaya"), ("nano", "nano")];
/// Frontend and backend in one process, linked in process.
const ONE_PROCESS: &str = "session-proxy one process";
/// With the Redis store, on a server with `appendonly yes` / `everysec`.
const DURABLE: &str = "session-proxy + Redis AOF";

#[derive(Deserialize)]
struct Row {
    system: String,
    workload: String,
    result: BenchResult,
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

struct Summary {
    rounds: usize,
    throughput: f64,
    throughput_min: f64,
    throughput_max: f64,
    p50: f64,
    p99: f64,
    p999: f64,
    errors: u64,
    per_client: Option<f64>,
}

fn summarize(rows: &[&BenchResult]) -> Summary {
    let t: Vec<f64> = rows.iter().map(|r| r.throughput).collect();
    Summary {
        rounds: rows.len(),
        throughput: median(t.clone()),
        throughput_min: t.iter().copied().fold(f64::INFINITY, f64::min),
        throughput_max: t.iter().copied().fold(0.0, f64::max),
        p50: median(rows.iter().map(|r| r.p50_us as f64).collect()),
        p99: median(rows.iter().map(|r| r.p99_us as f64).collect()),
        p999: median(rows.iter().map(|r| r.p999_us as f64).collect()),
        errors: rows.iter().map(|r| r.errors).sum(),
        per_client: {
            let v: Vec<f64> = rows.iter().filter_map(|r| r.bytes_per_client).collect();
            (!v.is_empty()).then(|| median(v))
        },
    }
}

fn machine() -> String {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_string())
        })
        .and_then(|kib| kib.parse::<u64>().ok())
        .map(|kib| format!("{:.1} GiB", kib as f64 / 1024.0 / 1024.0))
        .unwrap_or_else(|| "?".into());
    format!("{cores} cores, {mem} memory")
}

/// Writes the comparison section into `out` (between its markers, or
/// appended) and the plot to `plot`.
pub fn report(input: &Path, out: &Path, plot: &Path, command: &str) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(input).with_context(|| format!("reading {}", input.display()))?;
    let rows: Vec<Row> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .context("a result line is not valid JSON")?;
    let mut by: BTreeMap<(String, String), Vec<&BenchResult>> = BTreeMap::new();
    let mut workloads: Vec<String> = Vec::new();
    for r in &rows {
        if !workloads.contains(&r.workload) {
            workloads.push(r.workload.clone());
        }
        by.entry((r.workload.clone(), r.system.clone()))
            .or_default()
            .push(&r.result);
    }
    let get = |w: &str, s: &str| {
        by.get(&(w.to_string(), s.to_string()))
            .map(|v| summarize(v))
    };

    let mut md = String::new();
    let _ = writeln!(md, "{BEGIN}");
    let _ = writeln!(md, "## Side by side with Pinus, Pitaya and nano\n");
    let _ = writeln!(md, "Command: `{command}` — machine: {}. Each workload ran once per round, the systems interleaved (Pinus, Pitaya, nano, session-proxy, floor, next round); figures are medians over the rounds, throughput with its min–max. The load generator is `session-proxy bench` on the same machine, so every system shares the 2 cores with its load. Pinus 1.7.4 runs as master + connector + chat processes; Pitaya v2.11.3 in cluster mode as a connector (frontend) and a chat server (backend) talking over a NATS 2.15.3 server, found through etcd, as in its cluster demo; nano v0.5.1 in cluster mode as a master, a gate and a chat member (gRPC between them), as in its cluster example; session-proxy as a connector process and a chat backend process (`bench/cluster.toml`); the floor is one Rust process that answers the handshake and echoes requests, nothing else. The peers' recipes are in `bench/pinus` and `bench/peers` (with their lockfiles). nano keeps session state on the node that sets it, so its set-push and login rows send nothing back to the gate: they do less work than the other systems' (which push the change to the frontend that owns the session). Memory readings (idle) are taken on a freshly started server, one per reading.\n", machine());
    for w in &workloads {
        let _ = writeln!(md, "### {w}\n");
        if w.starts_with("ccu") {
            ccu::table(&mut md, &by, w);
            let _ = writeln!(md);
            continue;
        }
        let idle = w.starts_with("idle");
        if idle {
            let _ = writeln!(md, "| system | rounds | clients connected/s | server RSS per client | errors |\n|---|---|---|---|---|");
        } else {
            let _ = writeln!(md, "| system | rounds | throughput (ops/s) | p50 | p99 | p99.9 | errors |\n|---|---|---|---|---|---|---|");
        }
        for s in SYSTEMS {
            let Some(x) = get(w, s) else { continue };
            if idle {
                let per = x
                    .per_client
                    .map_or("–".into(), |b| format!("{:.1} KiB", b / 1024.0));
                let _ = writeln!(
                    md,
                    "| {s} | {} | {:.0} | {per} | {} |",
                    x.rounds, x.throughput, x.errors
                );
            } else {
                let _ = writeln!(
                    md,
                    "| {s} | {} | {:.0} ({:.0}–{:.0}) | {:.2} ms | {:.2} ms | {:.2} ms | {} |",
                    x.rounds,
                    x.throughput,
                    x.throughput_min,
                    x.throughput_max,
                    x.p50 / 1000.0,
                    x.p99 / 1000.0,
                    x.p999 / 1000.0,
                    x.errors
                );
            }
        }
        if let Some(ours) = get(w, "session-proxy") {
            let peers: Vec<(&str, Summary)> = PEERS
                .iter()
                .filter_map(|(id, name)| get(w, id).map(|x| (*name, x)))
                .collect();
            let each = |f: &dyn Fn(&Summary) -> Option<f64>, what: &str| {
                peers
                    .iter()
                    .filter_map(|(name, peer)| {
                        let ratio = f(&ours)? / f(peer)?;
                        Some(format!("{ratio:.2}× {name}{what}"))
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            if idle {
                let per = each(&|x| x.per_client, "'s");
                if !per.is_empty() {
                    let _ = writeln!(md, "\nMemory per client: session-proxy uses {per}.");
                }
            } else if !peers.is_empty() {
                let _ = write!(
                    md,
                    "\nRatios: throughput {}; p99 {}",
                    each(&|x| Some(x.throughput), ""),
                    each(&|x| Some(x.p99), "'s")
                );
                if w.starts_with("fanout") {
                    let _ = write!(md, "; p50 {}", each(&|x| Some(x.p50), "'s"));
                }
                if let Some(floor) = get(w, "floor") {
                    let _ = write!(
                        md,
                        "; throughput {:.2}× the floor",
                        ours.throughput / floor.throughput
                    );
                    if w.starts_with("fanout") {
                        let _ = write!(md, ", p50 {:.2}× the floor's", ours.p50 / floor.p50);
                    }
                }
                let _ = writeln!(md, ".");
            }
        }
        if let (Some(one), Some(floor)) = (get(w, ONE_PROCESS), get(w, "floor")) {
            let _ = write!(
                md,
                "\nOne process: throughput {:.2}× the floor",
                one.throughput / floor.throughput
            );
            if let Some(two) = get(w, "session-proxy") {
                let _ = write!(
                    md,
                    ", {:.2}× two processes",
                    one.throughput / two.throughput
                );
            }
            let _ = writeln!(md, ".");
        }
        if let (Some(durable), Some(none)) = (get(w, DURABLE), get(w, "session-proxy")) {
            let _ = writeln!(
                md,
                "\nWith the Redis store: throughput {:.2}× no store, p99 {:.2}×.",
                durable.throughput / none.throughput,
                durable.p99 / none.p99
            );
        }
        let _ = writeln!(md);
    }
    let _ = writeln!(
        md,
        "### Targets\n\n| target | measured | met |\n|---|---|---|"
    );
    let mut target = |name: &str, measured: Option<String>, met: Option<bool>| {
        let m = measured.unwrap_or_else(|| "not measured".into());
        let ok = match met {
            Some(true) => "yes",
            Some(false) => "no",
            None => "–",
        };
        let _ = writeln!(md, "| {name} | {m} | {ok} |");
    };
    for w in &workloads {
        if w.starts_with("idle") || w.starts_with("ccu") {
            continue;
        }
        // Ahead of every Go peer: throughput; for fan-out the p50, for
        // the open loop (every system runs the same rate) the p99.
        let Some(ours) = get(w, "session-proxy") else {
            continue;
        };
        let (fanout, open) = (w.starts_with("fanout"), w.starts_with("echo-open"));
        let lead = |peer: &Summary| match (fanout, open) {
            (true, _) => peer.p50 / ours.p50,
            (_, true) => peer.p99 / ours.p99,
            _ => ours.throughput / peer.throughput,
        };
        for (id, name) in &PEERS[1..] {
            let r = get(w, id).map(|peer| lead(&peer));
            let what = match (fanout, open) {
                (true, _) => "p50",
                (_, true) => "p99",
                _ => "throughput",
            };
            target(
                &format!("{w}: ahead of {name} ({what})"),
                r.map(|r| format!("{r:.2}× ahead")),
                r.map(|r| r >= 1.0),
            );
        }
    }
    for w in ["echo-50", "echo-1000"] {
        let ratio = get(w, "session-proxy")
            .zip(get(w, "pinus"))
            .map(|(a, b)| a.throughput / b.throughput);
        // What the machine allows: the raw floor against Pinus.
        let floor_vs_pinus = get(w, "floor")
            .zip(get(w, "pinus"))
            .map(|(f, p)| format!(" (the floor itself: {:.2}×)", f.throughput / p.throughput))
            .unwrap_or_default();
        target(
            &format!("{w}: ≥ 10× Pinus throughput"),
            ratio.map(|r| format!("{r:.2}×{floor_vs_pinus}")),
            ratio.map(|r| r >= 10.0),
        );
        let floor = get(w, "session-proxy")
            .zip(get(w, "floor"))
            .map(|(a, b)| b.throughput / a.throughput);
        target(
            &format!("{w}: within 2× of the floor"),
            floor.map(|r| format!("floor is {r:.2}× ours")),
            floor.map(|r| r <= 2.0),
        );
    }
    let open = workloads
        .iter()
        .find(|w| w.starts_with("echo-open"))
        .cloned();
    if let Some(w) = open {
        let r = get(&w, "session-proxy")
            .zip(get(&w, "pinus"))
            .map(|(a, b)| a.p99 / b.p99);
        let floor_vs_pinus = get(&w, "floor")
            .zip(get(&w, "pinus"))
            .map(|(f, p)| format!(" (the floor itself: {:.2}×)", f.p99 / p.p99))
            .unwrap_or_default();
        target(
            &format!("{w}: p99 ≤ 1/10 of Pinus"),
            r.map(|r| format!("{r:.2}× Pinus's p99{floor_vs_pinus}")),
            r.map(|r| r <= 0.1),
        );
    }
    for (prefix, limit) in [("idle-tcp", 2.0), ("idle-ws", 4.0)] {
        let w = workloads.iter().find(|w| w.starts_with(prefix)).cloned();
        let per = w
            .and_then(|w| get(&w, "session-proxy"))
            .and_then(|x| x.per_client)
            .map(|b| b / 1024.0);
        target(
            &format!("{prefix}: ≤ {limit} KiB RSS per client"),
            per.map(|k| format!("{k:.2} KiB")),
            per.map(|k| k <= limit),
        );
    }
    if let Some(w) = workloads.iter().find(|w| w.starts_with("ccu")) {
        let ratio = ccu::players(&by, w, "session-proxy")
            .zip(ccu::players(&by, w, "pinus"))
            .filter(|(_, p)| *p > 0.0)
            .map(|(a, b)| a / b);
        target(
            &format!("{w}: ≥ 5× Pinus's players per frontend process"),
            ratio.map(|r| format!("{r:.1}×")),
            ratio.map(|r| r >= 5.0),
        );
        let per_core = ccu::players_per_core(&by, w, "session-proxy")
            .zip(ccu::players_per_core(&by, w, "pinus"))
            .map(|(a, b)| a / b);
        target(
            &format!("{w}: ≥ 5× Pinus's players per core"),
            per_core.map(|r| format!("{r:.1}×")),
            per_core.map(|r| r >= 5.0),
        );
    }
    let one = get("echo-50", ONE_PROCESS)
        .zip(get("echo-50", "floor"))
        .map(|(a, b)| a.throughput / b.throughput);
    target(
        "echo-50, one process: ≥ 0.85× the floor",
        one.map(|r| format!("{r:.2}×")),
        one.map(|r| r >= 0.85),
    );
    for w in ["set-push-50", "login-50"] {
        let r = get(w, DURABLE)
            .zip(get(w, "session-proxy"))
            .map(|(a, b)| a.throughput / b.throughput);
        target(
            &format!("{w} with the Redis store: ≥ 0.8× the throughput without"),
            r.map(|r| format!("{r:.2}×")),
            r.map(|r| r >= 0.8),
        );
    }
    if let Some(w) = workloads.iter().find(|w| w.starts_with("fanout")) {
        let pair = get(w, "session-proxy").zip(get(w, "pinus"));
        let p50 = pair.as_ref().map(|(a, b)| a.p50 / b.p50);
        let p99 = pair.as_ref().map(|(a, b)| a.p99 / b.p99);
        target(
            &format!("{w}: p50 ≤ 0.5× Pinus's"),
            p50.map(|r| format!("{r:.2}×")),
            p50.map(|r| r <= 0.5),
        );
        target(
            &format!("{w}: p99 ≤ 0.25× Pinus's"),
            p99.map(|r| format!("{r:.2}×")),
            p99.map(|r| r <= 0.25),
        );
        let floor = get(w, "session-proxy")
            .zip(get(w, "floor"))
            .map(|(a, f)| a.p50 / f.p50);
        target(
            &format!("{w}: p50 ≤ 1.5× the fan-out floor's"),
            floor.map(|r| format!("{r:.2}×")),
            floor.map(|r| r <= 1.5),
        );
    }
    let plot_name = plot
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("bench-latency.svg");
    let _ = writeln!(md, "\n### Latency distribution (echo, 50 clients, closed loop)\n\n![latency by percentile]({plot_name})\n");
    if let Some(w) = workloads.iter().find(|w| w.starts_with("ccu")) {
        let ccu_plot = plot.with_file_name("bench-ccu.svg");
        let _ = writeln!(md, "### p99 against connected players ({w}, each system's median round)\n\n![p99 by players](bench-ccu.svg)\n");
        std::fs::write(&ccu_plot, ccu::svg(&by, w))
            .with_context(|| format!("writing {}", ccu_plot.display()))?;
    }
    let _ = writeln!(md, "{END}");

    std::fs::write(plot, svg(&by)).with_context(|| format!("writing {}", plot.display()))?;
    let existing = std::fs::read_to_string(out).unwrap_or_else(|_| "# Benchmarks\n\n".into());
    let updated = match (existing.find(BEGIN), existing.find(END)) {
        (Some(a), Some(b)) if b > a => format!(
            "{}{}{}",
            &existing[..a],
            md.trim_end(),
            &existing[b + END.len()..]
        ),
        _ => format!("{}\n{}", existing.trim_end(), md),
    };
    std::fs::write(out, updated).with_context(|| format!("writing {}", out.display()))?;
    Ok(())
}

/// Percentile (x, "nines" scale) against latency (y, log scale), one line
/// per system, for the first round of echo-50.
fn svg(by: &BTreeMap<(String, String), Vec<&BenchResult>>) -> String {
    let (w, h, left, bottom, top, right) = (720.0, 400.0, 70.0, 50.0, 20.0, 150.0);
    let colors = [
        ("session-proxy", "#1b7f3a"),
        ("pinus", "#c0392b"),
        ("pitaya", "#2c6fbb"),
        ("nano", "#8e44ad"),
        ("floor", "#555555"),
    ];
    let x_of = |p: f64| {
        let nines = -(1.0 - (p / 100.0).min(0.9999)).log10(); // 0 .. 4
        left + nines / 4.0 * (w - left - right)
    };
    let (lo, hi) = (10f64.log10(), 1_000_000f64.log10());
    let y_of = |us: f64| {
        let v = us.max(10.0).log10();
        h - bottom - (v - lo) / (hi - lo) * (h - bottom - top)
    };
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12"><rect width="100%" height="100%" fill="white"/>"#
    );
    for us in [10.0, 100.0, 1_000.0, 10_000.0, 100_000.0, 1_000_000.0] {
        let y = y_of(us);
        let label = if us >= 1000.0 {
            format!("{} ms", us / 1000.0)
        } else {
            format!("{us} µs")
        };
        let _ = write!(
            s,
            r##"<line x1="{left}" y1="{y}" x2="{}" y2="{y}" stroke="#ddd"/><text x="{}" y="{}" text-anchor="end">{label}</text>"##,
            w - right,
            left - 6.0,
            y + 4.0
        );
    }
    for (p, label) in [
        (0.0, "p0"),
        (90.0, "p90"),
        (99.0, "p99"),
        (99.9, "p99.9"),
        (99.99, "p99.99"),
    ] {
        let x = x_of(p);
        let _ = write!(
            s,
            r##"<line x1="{x}" y1="{top}" x2="{x}" y2="{}" stroke="#ddd"/><text x="{x}" y="{}" text-anchor="middle">{label}</text>"##,
            h - bottom,
            h - bottom + 18.0
        );
    }
    let _ = write!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">percentile</text>"#,
        (left + w - right) / 2.0,
        h - 10.0
    );
    for (i, (system, color)) in colors.iter().enumerate() {
        let Some(results) = by.get(&("echo-50".to_string(), system.to_string())) else {
            continue;
        };
        let Some(r) = results.first() else { continue };
        let points = r
            .distribution
            .iter()
            .filter(|(p, _)| *p < 100.0)
            .map(|(p, us)| (x_of(*p), y_of(*us as f64)));
        series(
            &mut s,
            points,
            system,
            color,
            (w - right + 10.0, top + 20.0 + i as f64 * 20.0),
        );
    }
    s.push_str("</svg>\n");
    s
}

/// One system's line through `points`, and its legend entry at `legend`.
fn series(
    s: &mut String,
    points: impl Iterator<Item = (f64, f64)>,
    system: &str,
    color: &str,
    (lx, ly): (f64, f64),
) {
    let points: Vec<String> = points.map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
    let _ = write!(
        s,
        r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
        points.join(" ")
    );
    let _ = write!(
        s,
        r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{color}" stroke-width="3"/><text x="{}" y="{}">{system}</text>"#,
        lx + 20.0,
        lx + 26.0,
        ly + 4.0
    );
}
