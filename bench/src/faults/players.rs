//! The players: sessions writing counters and reading them back while the
//! scenario runs, every operation recorded for the checker.

use super::cluster::Cluster;
use super::scenario::Plan;
use super::{FaultOptions, DEADLINE, SETTLE};
use anyhow::{bail, Context};
use serde_json::json;
use session_proxy_client::{Entry, ResumeEvent, ResumeOptions, SessionClient};
use session_proxy_faults::{Kind, Outcome, Recorder};
use session_proxy_registry::{Membership, NodeState, RedisMembership, RedisMembershipConfig};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A player: a session of its own, a counter written and read back until
/// `stop`; then one last read, recorded after every fault healed.
struct Player {
    i: usize,
    uid: String,
    client: Option<SessionClient>,
    next: u64,
    /// The session may not be the one written to before (a new client, or
    /// the server gave a fresh session): read before writing again, so a
    /// lost session shows in the history instead of being written over.
    read_first: bool,
}

impl Player {
    async fn connect(&mut self, entry: &Entry) -> bool {
        if self.client.as_ref().is_some_and(|c| !c.is_closed()) {
            return true;
        }
        let mut options = ResumeOptions::default();
        options.client.request_timeout = DEADLINE;
        options.attempts = 30;
        options.min_delay = Duration::from_millis(50);
        options.max_delay = Duration::from_secs(1);
        // A client that gave up resumes from where it was.
        options.saved = self.client.as_ref().and_then(SessionClient::saved);
        let again = self.client.is_some() || self.next > 0;
        match SessionClient::connect(entry.clone(), options).await {
            Ok(c) => {
                self.client = Some(c);
                self.read_first |= again;
                true
            }
            Err(_) => false,
        }
    }

    /// Reads the client's events: a fresh session after the first one
    /// means a read comes next.
    async fn session_events(&mut self) {
        let Some(c) = &self.client else { return };
        while let Some(event) = c.next_event(Duration::ZERO).await {
            if let ResumeEvent::Session { resumed: false, .. } = event {
                self.read_first |= self.next > 0;
            }
        }
    }

    async fn write(&mut self, history: &Recorder) {
        let Some(c) = &self.client else { return };
        self.next += 1;
        let op = history.invoke(
            self.i as u64,
            &self.uid,
            Kind::write("n", self.next),
            DEADLINE,
        );
        let answer = c
            .request(
                "chat.benchHandler.set",
                &json!({ "key": "n", "value": self.next }),
            )
            .await;
        history.complete(op, Outcome::of_answer(&answer));
    }

    async fn read(&mut self, history: &Recorder) -> bool {
        let Some(c) = &self.client else { return false };
        let op = history.invoke(self.i as u64, &self.uid, Kind::read("n"), DEADLINE);
        let answer = c
            .request("chat.benchHandler.get", &json!({ "key": "n" }))
            .await;
        match &answer {
            Ok(a) if a["code"] == 200 => {
                history.complete(op, Outcome::Value(a["value"].as_u64()));
                true
            }
            other => {
                history.complete(op, Outcome::of_answer(other));
                false
            }
        }
    }
}

pub(super) async fn drive(
    o: &FaultOptions,
    cluster: &mut Cluster<'_>,
    plan: &Plan,
) -> anyhow::Result<Recorder> {
    let mut registry = RedisMembershipConfig::new(cluster.redis_url.clone());
    registry.resync = Duration::from_millis(500);
    let registry = RedisMembership::connect(registry)
        .await
        .context("the registry")?;
    let members = registry.watch();
    // Player i goes to the (i mod n)-th active frontend by id: the players
    // split evenly, so a fault on either frontend hits half of them (the
    // least loaded one, as a gate picks, herds a burst of players onto one
    // before the client counts are renewed).
    let entry_of = move |i: usize| {
        let members = members.clone();
        Entry::Pick(Arc::new(move || {
            let members = members.borrow();
            let mut active: Vec<_> = members
                .iter()
                .filter(|r| r.server_type == "connector" && r.state == NodeState::Active)
                .filter_map(|r| {
                    Some((
                        r.id.clone(),
                        r.client_addr.as_deref()?.parse::<SocketAddr>().ok()?,
                    ))
                })
                .collect();
            active.sort();
            active.get(i % active.len().max(1)).map(|(_, addr)| *addr)
        }))
    };
    // Every frontend serves before the players come.
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let serving = registry
            .watch()
            .borrow()
            .iter()
            .filter(|n| n.server_type == "connector" && n.state == NodeState::Active)
            .count();
        if serving == 2 {
            break;
        }
        if Instant::now() > until {
            bail!("the frontends did not turn active");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let history = Recorder::new();
    let stop = Arc::new(AtomicBool::new(false));
    let mut players = Vec::new();
    for i in 0..o.players {
        let (entry, history, stop, pace) = (entry_of(i), history.clone(), stop.clone(), o.pace);
        players.push(tokio::spawn(async move {
            let mut p = Player {
                i,
                uid: format!("player-{i}"),
                client: None,
                next: 0,
                read_first: false,
            };
            let mut round = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if !p.connect(&entry).await {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
                p.session_events().await;
                round += 1;
                if p.read_first || round % 4 == 0 {
                    // Until one is answered, when the session may be new.
                    if p.read(&history).await {
                        p.read_first = false;
                    }
                } else {
                    p.write(&history).await;
                }
                tokio::time::sleep(pace).await;
            }
            p
        }));
    }

    // The scenario.
    let begun = Instant::now();
    for step in &plan.steps {
        tokio::time::sleep_until((begun + step.at).into()).await;
        cluster
            .apply(step)
            .await
            .with_context(|| format!("{} at {:?}", step.action, step.at))?;
    }
    tokio::time::sleep_until((begun + plan.secs).into()).await;
    cluster.heal_all().await?;
    stop.store(true, Ordering::Relaxed);
    let mut done = Vec::new();
    for p in players {
        done.push(p.await.context("a player")?);
    }

    // Every counter read back once the cluster has settled: a read that
    // fails is retried (each try is in the history) until one answers.
    let until = Instant::now() + SETTLE;
    for p in &mut done {
        let entry = entry_of(p.i);
        loop {
            if p.connect(&entry).await && p.read(&history).await {
                break;
            }
            if Instant::now() > until {
                bail!(
                    "{}: no read answered within {SETTLE:?} of the last fault",
                    p.uid
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(history)
}
