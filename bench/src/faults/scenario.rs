//! Scenarios as data (`scenarios.toml` beside this file, or a file of the
//! same shape), and a run's plan drawn from one seed: which scenario, which
//! frontend or backend its steps hit, and a jitter on its times.

use anyhow::{bail, Context};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;
use std::time::Duration;

/// The scenarios built in.
pub const BUILT_IN: &str = include_str!("scenarios.toml");

/// One scenario, as written.
#[derive(Clone, Debug, Deserialize)]
pub struct Scenario {
    /// What it does, in words.
    pub name: String,
    /// How long the workload runs under it, in seconds.
    pub secs: f64,
    /// The session store: `single` (one Redis, the default) or `cluster`
    /// (a Redis Cluster of three masters, each with a replica).
    #[serde(default)]
    pub store: Option<String>,
    /// What happens, in order of `at`.
    pub steps: Vec<Step>,
}

/// One step, as written (`fe`/`be` not yet drawn).
#[derive(Clone, Debug, Deserialize)]
pub struct Step {
    /// Seconds into the scenario.
    pub at: f64,
    /// The action.
    #[serde(rename = "do")]
    pub action: String,
    /// The host acted on.
    pub host: Option<String>,
    /// A partition's first end (the sender, one way).
    pub a: Option<String>,
    /// A partition's other end.
    pub b: Option<String>,
    /// Loss, in percent.
    pub percent: Option<u8>,
    /// A delay, in milliseconds.
    pub ms: Option<u64>,
    /// A clock jump, in seconds (negative: back).
    pub secs: Option<i64>,
}

#[derive(Deserialize)]
struct File {
    scenario: Vec<Scenario>,
}

/// Parses a scenarios file and checks every step names a known action and
/// the hosts it needs.
pub fn parse(text: &str) -> anyhow::Result<Vec<Scenario>> {
    let file: File = toml::from_str(text).context("a scenarios file")?;
    for s in &file.scenario {
        for step in &s.steps {
            let needs: &[&str] = match step.action.as_str() {
                "partition" | "one-way" => &["a", "b"],
                "loss" => &["host", "percent"],
                "pause" | "unpause" | "drain" | "kill" | "restart" | "stall" => &["host"],
                "delay" => &["host", "ms"],
                "clock-jump" => &["host", "secs"],
                "heal" | "redis-restart" | "failover" => &[],
                other => bail!("{}: unknown action {other:?}", s.name),
            };
            for field in needs {
                let present = match *field {
                    "a" => step.a.is_some(),
                    "b" => step.b.is_some(),
                    "host" => step.host.is_some(),
                    "ms" => step.ms.is_some(),
                    "secs" => step.secs.is_some(),
                    _ => step.percent.is_some(),
                };
                if !present {
                    bail!("{}: {} needs {field}", s.name, step.action);
                }
            }
        }
        let cluster = match s.store.as_deref() {
            None | Some("single") => false,
            Some("cluster") => true,
            Some(other) => bail!("{}: store {other:?} is neither single nor cluster", s.name),
        };
        for step in &s.steps {
            let fits = match step.action.as_str() {
                "failover" => cluster,
                "redis-restart" | "delay" | "stall" => !cluster,
                _ => true,
            };
            if !fits {
                bail!(
                    "{}: {} does not go with store {:?}",
                    s.name,
                    step.action,
                    s.store
                );
            }
        }
        if s.steps.iter().any(|st| st.at < 0.0 || st.at > s.secs) {
            bail!("{}: a step outside 0..{} s", s.name, s.secs);
        }
    }
    if file.scenario.is_empty() {
        bail!("no scenario");
    }
    Ok(file.scenario)
}

/// A step as it will run: hosts drawn, time jittered.
#[derive(Clone, Debug)]
pub struct Planned {
    /// When, from the scenario's start.
    pub at: Duration,
    /// The action.
    pub action: String,
    /// The host acted on (drawn).
    pub host: Option<String>,
    /// A partition's first end (drawn).
    pub a: Option<String>,
    /// A partition's other end (drawn).
    pub b: Option<String>,
    /// Loss, in percent.
    pub percent: u8,
    /// A delay.
    pub delay: Duration,
    /// A clock jump, in seconds.
    pub secs: i64,
    /// A number drawn for the step (which Redis master fails over).
    pub draw: u32,
}

/// A run's plan: its scenario and steps, and the seed for the workload.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The seed it was drawn from.
    pub seed: u64,
    /// The scenario's name.
    pub scenario: String,
    /// How long the workload runs under it.
    pub secs: Duration,
    /// The store is a Redis Cluster.
    pub cluster: bool,
    /// Its steps, in order.
    pub steps: Vec<Planned>,
}

/// Draws the plan of `seed` from `scenarios`.
pub fn plan(scenarios: &[Scenario], seed: u64) -> Plan {
    let mut rng = StdRng::seed_from_u64(seed);
    let s = &scenarios[rng.gen_range(0..scenarios.len())];
    // One frontend and one backend per run: every `fe` step hits the same.
    let fe = format!("fe{}", rng.gen_range(1..=2));
    let be = format!("be{}", rng.gen_range(1..=2));
    let draw = |name: &Option<String>| {
        name.as_ref().map(|n| match n.as_str() {
            "fe" => fe.clone(),
            "be" => be.clone(),
            other => other.to_string(),
        })
    };
    // One jitter of up to a second for the whole scenario: its steps keep
    // their order and their distances (a kill 20 ms into a drain stays
    // in the drain).
    let shift = rng.gen_range(0.0..1.0);
    let mut steps = Vec::new();
    for step in &s.steps {
        let at = (step.at + shift).min(s.secs);
        steps.push(Planned {
            at: Duration::from_secs_f64(at),
            action: step.action.clone(),
            host: draw(&step.host),
            a: draw(&step.a),
            b: draw(&step.b),
            percent: step.percent.unwrap_or(0),
            delay: Duration::from_millis(step.ms.unwrap_or(0)),
            secs: step.secs.unwrap_or(0),
            draw: rng.gen(),
        });
    }
    Plan {
        seed,
        scenario: s.name.clone(),
        secs: Duration::from_secs_f64(s.secs),
        cluster: s.store.as_deref() == Some("cluster"),
        steps,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_scenarios_parse_and_a_seed_always_draws_the_same_plan() {
        let all = parse(BUILT_IN).expect("built in");
        assert!(all.len() >= 5);
        let (a, b) = (plan(&all, 7), plan(&all, 7));
        assert_eq!(a.scenario, b.scenario);
        assert_eq!(format!("{:?}", a.steps), format!("{:?}", b.steps));
        // Every scenario is drawn by some seed of the first hundred.
        let drawn: std::collections::BTreeSet<String> =
            (0..100).map(|s| plan(&all, s).scenario).collect();
        assert_eq!(drawn.len(), all.len());
    }

    #[test]
    fn a_step_with_an_unknown_action_or_a_missing_host_is_refused() {
        let bad =
            "[[scenario]]\nname = \"x\"\nsecs = 5\nsteps = [{ at = 1.0, do = \"explode\" }]\n";
        assert!(parse(bad).is_err());
        let bad = "[[scenario]]\nname = \"x\"\nsecs = 5\nsteps = [{ at = 1.0, do = \"pause\" }]\n";
        assert!(parse(bad).is_err());
    }
}
