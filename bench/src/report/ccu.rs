//! The players-per-node rows of the report (`bench ccu` results): a table
//! and a plot of p99 against connected players, one line per system.

use super::{median, SYSTEMS};
use crate::BenchResult;
use std::collections::BTreeMap;
use std::fmt::Write;

/// The results of one workload, by system.
pub(super) type Runs<'a> = BTreeMap<(String, String), Vec<&'a BenchResult>>;

/// The median players held over the rounds of `w` by `system`.
pub(super) fn players(by: &Runs, w: &str, system: &str) -> Option<f64> {
    let runs = by.get(&(w.to_string(), system.to_string()))?;
    let v: Vec<f64> = runs
        .iter()
        .filter_map(|r| r.ccu)
        .map(|n| n as f64)
        .collect();
    (!v.is_empty()).then(|| median(v))
}

/// The median over the rounds of `w` by `system` of its players per core:
/// one over the slope of its processes' CPU against players, up to the
/// step each round held.
pub(super) fn players_per_core(by: &Runs, w: &str, system: &str) -> Option<f64> {
    let runs = by.get(&(w.to_string(), system.to_string()))?;
    let v: Vec<f64> = runs
        .iter()
        .filter_map(|r| crate::ccu::cores_per_player(&r.steps, r.ccu.unwrap_or(0)))
        .filter(|slope| *slope > 0.0)
        .map(|slope| 1.0 / slope)
        .collect();
    (!v.is_empty()).then(|| median(v))
}

/// The table of workload `w`, and the ratio of ours to Pinus's.
pub(super) fn table(md: &mut String, by: &Runs, w: &str) {
    let _ = writeln!(md, "| system | rounds | players held (median) | p99 at that step | players per core (CPU slope) | generator CPU, memory per client at that step |\n|---|---|---|---|---|---|");
    for s in SYSTEMS {
        let Some(runs) = by.get(&(w.to_string(), s.to_string())) else {
            continue;
        };
        let Some(held) = players(by, w, s) else {
            continue;
        };
        // The step held in the first round that reached the median.
        let step = runs
            .iter()
            .filter(|r| r.ccu.map(|n| n as f64) == Some(held))
            .find_map(|r| r.steps.iter().find(|st| st.clients == held as usize));
        let (p99, generator) = match step {
            Some(st) => (
                format!("{:.1} ms", st.p99_ms),
                format!(
                    "{:.2} cores, {:.0} B",
                    st.generator_cpu, st.generator_bytes_per_client
                ),
            ),
            None => ("–".into(), "–".into()),
        };
        let per_core = players_per_core(by, w, s).map_or("–".into(), |n| format!("{n:.0}"));
        let _ = writeln!(
            md,
            "| {s} | {} | {held:.0} | {p99} | {per_core} | {generator} |",
            runs.len()
        );
    }
    if let (Some(ours), Some(pinus)) = (players(by, w, "session-proxy"), players(by, w, "pinus")) {
        if pinus > 0.0 {
            let _ = writeln!(
                md,
                "\nPlayers per frontend process: session-proxy holds {:.1}× Pinus's.",
                ours / pinus
            );
        }
    }
    let ours = players_per_core(by, w, "session-proxy");
    let each: Vec<String> = super::PEERS
        .iter()
        .filter_map(|(id, name)| {
            let theirs = players_per_core(by, w, id)?;
            Some(format!("{:.1}× {name}'s", ours? / theirs))
        })
        .collect();
    if !each.is_empty() {
        let _ = writeln!(
            md,
            "\nPlayers per core (one over the slope of the system's processes' CPU against players at 1 req/s each, from /proc, up to the step held): session-proxy has {}.",
            each.join(", ")
        );
    }
}

/// p99 (y, log scale) against connected players (x, log scale) in workload
/// `w`, one line per system: its round that held the median.
pub(super) fn svg(by: &Runs, w: &str) -> String {
    let (width, h, left, bottom, top, right) = (720.0, 400.0, 70.0, 50.0, 20.0, 150.0);
    let colors = [
        ("session-proxy", "#1b7f3a"),
        ("pinus", "#c0392b"),
        ("pitaya", "#2c6fbb"),
        ("nano", "#8e44ad"),
    ];
    let (xlo, xhi) = (500f64.log10(), 50_000f64.log10());
    let x_of = |n: f64| left + (n.max(500.0).log10() - xlo) / (xhi - xlo) * (width - left - right);
    let (ylo, yhi) = (0.1f64.log10(), 10_000f64.log10());
    let y_of =
        |ms: f64| h - bottom - (ms.max(0.1).log10() - ylo) / (yhi - ylo) * (h - bottom - top);
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{h}" font-family="sans-serif" font-size="12"><rect width="100%" height="100%" fill="white"/>"#
    );
    for ms in [0.1, 1.0, 10.0, 100.0, 1_000.0, 10_000.0] {
        let y = y_of(ms);
        let _ = write!(
            s,
            r##"<line x1="{left}" y1="{y}" x2="{}" y2="{y}" stroke="#ddd"/><text x="{}" y="{}" text-anchor="end">{ms} ms</text>"##,
            width - right,
            left - 6.0,
            y + 4.0
        );
    }
    for n in [1_000.0, 2_000.0, 5_000.0, 10_000.0, 20_000.0, 50_000.0] {
        let x = x_of(n);
        let _ = write!(
            s,
            r##"<line x1="{x}" y1="{top}" x2="{x}" y2="{}" stroke="#ddd"/><text x="{x}" y="{}" text-anchor="middle">{}k</text>"##,
            h - bottom,
            h - bottom + 18.0,
            n / 1000.0
        );
    }
    let target = y_of(50.0);
    let _ = write!(
        s,
        r##"<line x1="{left}" y1="{target}" x2="{}" y2="{target}" stroke="#888" stroke-dasharray="4 4"/><text x="{}" y="{}" fill="#888">p99 50 ms</text>"##,
        width - right,
        left + 4.0,
        target - 4.0
    );
    let _ = write!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">connected players (1 request/s each)</text>"#,
        (left + width - right) / 2.0,
        h - 10.0
    );
    for (i, (system, color)) in colors.iter().enumerate() {
        // The round that held the median, so one transient round does not
        // stand for the system.
        let held = players(by, w, system);
        let Some(r) = by
            .get(&(w.to_string(), system.to_string()))
            .and_then(|runs| {
                runs.iter()
                    .find(|r| r.ccu.map(|n| n as f64) == held)
                    .or(runs.first())
            })
        else {
            continue;
        };
        let points = r
            .steps
            .iter()
            .map(|st| (x_of(st.clients as f64), y_of(st.p99_ms)));
        let legend = (width - right + 10.0, top + 20.0 + i as f64 * 20.0);
        super::series(&mut s, points, system, color, legend);
    }
    s.push_str("</svg>\n");
    s
}
