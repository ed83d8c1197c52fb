//! Histories of what clients asked a cluster and what they were told, and
//! a checker that proves afterwards, Jepsen-style, that the cluster kept
//! its promises under faults:
//!
//! - **No acknowledged write is lost**: a read made after every write of a
//!   key ended sees at least the last acknowledged value.
//! - **No stale read**: a read sees at least every value acknowledged to
//!   the same session before the read began, and no value never written.
//! - **One owner per epoch**: a session's changes are committed by one
//!   frontend per ownership epoch, and never by an older epoch once a newer
//!   one committed.
//! - **Every request ends in time**: answered, or failed with a typed
//!   error, within its deadline (and a slack the caller names).
//!
//! The model: each key of a session is written by one client with values
//! that only grow (a counter), so "at least" is a number comparison. Record
//! with a [`Recorder`] shared by every client task, then [`check`] the
//! [`Recorder::events`].
//!
//! ```
//! use session_proxy_faults::{check, Kind, Outcome, Recorder};
//! use std::time::Duration;
//!
//! let history = Recorder::new();
//! let deadline = Duration::from_secs(1);
//! let write = history.invoke(1, "player-1", Kind::write("n", 1), deadline);
//! history.complete(write, Outcome::Ok);
//! let read = history.invoke(1, "player-1", Kind::read("n"), deadline);
//! history.complete(read, Outcome::Value(Some(1)));
//! assert!(check(&history.events(), Duration::from_millis(100)).is_empty());
//! ```

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// What an operation did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    /// Set `key` to `value` (values of one key only grow).
    Write {
        /// The key.
        key: String,
        /// The value.
        value: u64,
    },
    /// Read `key`.
    Read {
        /// The key.
        key: String,
    },
    /// A frontend committed a change of the session under an ownership
    /// epoch (observed, not asked: invoked and completed at once).
    Commit {
        /// The frontend.
        frontend: String,
        /// The epoch it held the session under.
        epoch: u64,
    },
}

impl Kind {
    /// A write of `value` to `key`.
    pub fn write(key: &str, value: u64) -> Kind {
        Kind::Write {
            key: key.to_string(),
            value,
        }
    }

    /// A read of `key`.
    pub fn read(key: &str) -> Kind {
        Kind::Read {
            key: key.to_string(),
        }
    }
}

/// How an operation ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Acknowledged (a write, a commit).
    Ok,
    /// A read's answer (`None`: the key is not set).
    Value(Option<u64>),
    /// Failed with a typed error: its code and message.
    Failed {
        /// The error's code.
        code: u32,
        /// What it said.
        message: String,
    },
    /// Never answered: still pending when the history was taken.
    Unanswered,
}

impl Outcome {
    /// A request's outcome from what a Pomelo client got: an answer
    /// `{code: 200, …}` is acknowledged, another code a typed failure, and
    /// the client's own error (its connection, its timer) a failure too.
    pub fn of_answer<E: fmt::Display>(answer: &Result<serde_json::Value, E>) -> Outcome {
        match answer {
            Ok(a) if a["code"] == 200 => Outcome::Ok,
            Ok(a) => Outcome::Failed {
                code: a["code"]
                    .as_u64()
                    .and_then(|c| u32::try_from(c).ok())
                    .unwrap_or(0),
                message: a.to_string(),
            },
            Err(err) => Outcome::Failed {
                code: 0,
                message: err.to_string(),
            },
        }
    }
}

/// One operation of a history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// The client that made it.
    pub process: u64,
    /// The session it was about.
    pub session: String,
    /// What it did.
    pub kind: Kind,
    /// When it began, since the history began.
    pub invoked: Duration,
    /// When it ended (its invocation while unanswered).
    pub completed: Duration,
    /// How it ended.
    pub outcome: Outcome,
    /// How long it was allowed.
    pub deadline: Duration,
}

/// An operation under way, as [`Recorder::invoke`] hands it out.
#[derive(Debug)]
#[must_use = "complete it, or it is reported as unanswered"]
pub struct Pending(usize);

/// Records a history; cheap to clone, shared by every client of a run.
#[derive(Clone, Debug)]
pub struct Recorder {
    started: Instant,
    events: Arc<Mutex<Vec<Event>>>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}

impl Recorder {
    /// An empty history, starting now.
    pub fn new() -> Recorder {
        Recorder {
            started: Instant::now(),
            events: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Event>> {
        // A client task that panicked mid-record leaves whole events.
        self.events.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records that `process` begins `kind` on `session`, allowed
    /// `deadline`.
    pub fn invoke(&self, process: u64, session: &str, kind: Kind, deadline: Duration) -> Pending {
        let now = self.started.elapsed();
        let mut events = self.lock();
        events.push(Event {
            process,
            session: session.to_string(),
            kind,
            invoked: now,
            completed: now,
            outcome: Outcome::Unanswered,
            deadline,
        });
        Pending(events.len() - 1)
    }

    /// Records how `op` ended.
    pub fn complete(&self, op: Pending, outcome: Outcome) {
        let now = self.started.elapsed();
        if let Some(event) = self.lock().get_mut(op.0) {
            event.completed = now;
            event.outcome = outcome;
        }
    }

    /// Records a commit seen now: `frontend` changed `session` under
    /// `epoch`.
    pub fn commit(&self, session: &str, frontend: &str, epoch: u64) {
        let kind = Kind::Commit {
            frontend: frontend.to_string(),
            epoch,
        };
        let op = self.invoke(0, session, kind, Duration::ZERO);
        self.complete(op, Outcome::Ok);
    }

    /// The history so far.
    pub fn events(&self) -> Vec<Event> {
        self.lock().clone()
    }

    /// The history as JSON lines, one event each (to keep with a failed
    /// run's seed).
    pub fn to_json_lines(&self) -> String {
        self.lock()
            .iter()
            .filter_map(|e| serde_json::to_string(e).ok())
            .map(|line| line + "\n")
            .collect()
    }
}

/// A promise a history shows broken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Violation {
    /// A read made after every write of the key ended saw less than the
    /// last acknowledged value.
    LostWrite {
        /// The session and key.
        session: String,
        /// The key.
        key: String,
        /// The last acknowledged value.
        acknowledged: u64,
        /// What the read saw.
        read: Option<u64>,
    },
    /// A read saw less than a value acknowledged before it began.
    StaleRead {
        /// The session.
        session: String,
        /// The key.
        key: String,
        /// The value acknowledged before the read.
        acknowledged: u64,
        /// What the read saw.
        read: Option<u64>,
    },
    /// A read saw a value nobody wrote.
    PhantomRead {
        /// The session.
        session: String,
        /// The key.
        key: String,
        /// What the read saw.
        read: u64,
    },
    /// Two frontends committed under one epoch, or an older epoch
    /// committed after a newer one.
    SplitOwner {
        /// The session.
        session: String,
        /// The earlier commit: frontend and epoch.
        first: (String, u64),
        /// The later one.
        then: (String, u64),
    },
    /// An operation was never answered, or took longer than its deadline
    /// and the slack.
    Late {
        /// The operation.
        event: Box<Event>,
    },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::LostWrite {
                session,
                key,
                acknowledged,
                read,
            } => write!(
                f,
                "lost write: {session}/{key} acknowledged {acknowledged}, read {read:?} after"
            ),
            Violation::StaleRead {
                session,
                key,
                acknowledged,
                read,
            } => write!(
                f,
                "stale read: {session}/{key} read {read:?} after {acknowledged} was acknowledged"
            ),
            Violation::PhantomRead { session, key, read } => {
                write!(
                    f,
                    "phantom read: {session}/{key} read {read}, never written"
                )
            }
            Violation::SplitOwner {
                session,
                first,
                then,
            } => write!(
                f,
                "split owner: {session} committed by {} at epoch {}, then by {} at epoch {}",
                first.0, first.1, then.0, then.1
            ),
            Violation::Late { event } => write!(
                f,
                "late: {:?} on {} by {} ended {:?} after {:?} (deadline {:?})",
                event.kind,
                event.session,
                event.process,
                event.outcome,
                event.completed.saturating_sub(event.invoked),
                event.deadline
            ),
        }
    }
}

/// Checks `history` against every promise above; `slack` is how far past
/// its deadline an operation may end (the client's own timers, a loaded
/// machine). Empty when every promise held.
pub fn check(history: &[Event], slack: Duration) -> Vec<Violation> {
    let mut found = Vec::new();
    reads(history, &mut found);
    owners(history, &mut found);
    deadlines(history, slack, &mut found);
    found
}

/// Lost writes, stale reads and phantom reads, key by key.
fn reads(history: &[Event], found: &mut Vec<Violation>) {
    // (session, key) -> (writes: (value, invoked, completed, acked), reads)
    type Writes = Vec<(u64, Duration, Duration, bool)>;
    let mut keys: HashMap<(&str, &str), (Writes, Vec<&Event>)> = HashMap::new();
    for e in history {
        match &e.kind {
            Kind::Write { key, value } => keys.entry((&e.session, key)).or_default().0.push((
                *value,
                e.invoked,
                e.completed,
                e.outcome == Outcome::Ok,
            )),
            Kind::Read { key } => keys.entry((&e.session, key)).or_default().1.push(e),
            Kind::Commit { .. } => {}
        }
    }
    for ((session, key), (writes, reads)) in keys {
        let last_write_end = writes.iter().map(|w| w.2).max();
        let last_acked = writes.iter().filter(|w| w.3).map(|w| w.0).max();
        for r in reads {
            let Outcome::Value(read) = r.outcome else {
                continue;
            };
            if let Some(v) = read {
                if !writes.iter().any(|w| w.0 == v && w.1 <= r.completed) {
                    found.push(Violation::PhantomRead {
                        session: session.to_string(),
                        key: key.to_string(),
                        read: v,
                    });
                    continue;
                }
            }
            let seen = read.unwrap_or(0);
            let is_final = last_write_end.is_some_and(|end| end <= r.invoked);
            match last_acked {
                Some(acked) if is_final && (read.is_none() || seen < acked) => {
                    found.push(Violation::LostWrite {
                        session: session.to_string(),
                        key: key.to_string(),
                        acknowledged: acked,
                        read,
                    });
                    continue;
                }
                _ => {}
            }
            let before = writes
                .iter()
                .filter(|w| w.3 && w.2 < r.invoked)
                .map(|w| w.0)
                .max();
            if let Some(acked) = before.filter(|a| read.is_none() || seen < *a) {
                found.push(Violation::StaleRead {
                    session: session.to_string(),
                    key: key.to_string(),
                    acknowledged: acked,
                    read,
                });
            }
        }
    }
}

/// One frontend per epoch, and epochs that only grow, per session.
fn owners(history: &[Event], found: &mut Vec<Violation>) {
    let mut commits: HashMap<&str, Vec<(&Event, &str, u64)>> = HashMap::new();
    for e in history {
        if let Kind::Commit { frontend, epoch } = &e.kind {
            commits
                .entry(&e.session)
                .or_default()
                .push((e, frontend, *epoch));
        }
    }
    for (session, mut list) in commits {
        list.sort_by_key(|(e, _, _)| e.completed);
        let mut newest: Option<(&str, u64)> = None;
        for (_, frontend, epoch) in list {
            if let Some((held_by, held)) = newest {
                let split = epoch < held || (epoch == held && frontend != held_by);
                if split {
                    found.push(Violation::SplitOwner {
                        session: session.to_string(),
                        first: (held_by.to_string(), held),
                        then: (frontend.to_string(), epoch),
                    });
                }
                if epoch <= held {
                    continue;
                }
            }
            newest = Some((frontend, epoch));
        }
    }
}

/// Every operation answered (or failed) within its deadline and `slack`.
fn deadlines(history: &[Event], slack: Duration, found: &mut Vec<Violation>) {
    for e in history {
        let took = e.completed.saturating_sub(e.invoked);
        if e.outcome == Outcome::Unanswered || took > e.deadline + slack {
            found.push(Violation::Late {
                event: Box::new(e.clone()),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    fn at(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    fn op(session: &str, kind: Kind, from: u64, to: u64, outcome: Outcome) -> Event {
        Event {
            process: 1,
            session: session.into(),
            kind,
            invoked: at(from),
            completed: at(to),
            outcome,
            deadline: SECOND,
        }
    }

    fn failed() -> Outcome {
        Outcome::Failed {
            code: 500,
            message: "connection closed".into(),
        }
    }

    /// Writes 1..=3 acknowledged, 4 failed (it may or may not have
    /// applied), then a final read.
    fn run(final_read: Option<u64>) -> Vec<Event> {
        vec![
            op("s", Kind::write("n", 1), 0, 10, Outcome::Ok),
            op("s", Kind::write("n", 2), 10, 20, Outcome::Ok),
            op("s", Kind::write("n", 3), 20, 30, Outcome::Ok),
            op("s", Kind::write("n", 4), 30, 40, failed()),
            op("s", Kind::read("n"), 50, 60, Outcome::Value(final_read)),
        ]
    }

    #[test]
    fn a_good_history_has_no_violation() {
        assert_eq!(check(&run(Some(3)), at(0)), vec![]);
        // The failed write may have applied before its answer was lost.
        assert_eq!(check(&run(Some(4)), at(0)), vec![]);
    }

    #[test]
    fn a_final_read_below_the_last_acknowledged_write_is_a_lost_write() {
        let found = check(&run(Some(2)), at(0));
        assert!(
            matches!(
                &found[..],
                [Violation::LostWrite {
                    acknowledged: 3,
                    read: Some(2),
                    ..
                }]
            ),
            "{found:?}"
        );
        let found = check(&run(None), at(0));
        assert!(
            matches!(&found[..], [Violation::LostWrite { read: None, .. }]),
            "{found:?}"
        );
    }

    #[test]
    fn a_read_older_than_an_acknowledged_write_is_stale_and_an_unwritten_value_a_phantom() {
        let mut h = run(Some(3));
        // During the writes, a read that began after 2 was acknowledged.
        h.push(op("s", Kind::read("n"), 25, 26, Outcome::Value(Some(1))));
        let found = check(&h, at(0));
        assert!(
            matches!(
                &found[..],
                [Violation::StaleRead {
                    acknowledged: 2,
                    read: Some(1),
                    ..
                }]
            ),
            "{found:?}"
        );
        // One that overlaps the write of 2 may see 1.
        let mut h = run(Some(3));
        h.push(op("s", Kind::read("n"), 15, 16, Outcome::Value(Some(1))));
        assert_eq!(check(&h, at(0)), vec![]);
        let found = check(&run(Some(9)), at(0));
        assert!(
            matches!(&found[..], [Violation::PhantomRead { read: 9, .. }]),
            "{found:?}"
        );
    }

    #[test]
    fn two_owners_of_one_epoch_or_an_older_epoch_later_split_the_session() {
        let commit = |frontend: &str, epoch, ms| {
            let kind = Kind::Commit {
                frontend: frontend.into(),
                epoch,
            };
            op("s", kind, ms, ms, Outcome::Ok)
        };
        let moved = vec![commit("a", 0, 1), commit("a", 0, 2), commit("b", 1, 3)];
        assert_eq!(check(&moved, at(0)), vec![]);
        let same_epoch = vec![commit("a", 0, 1), commit("b", 0, 2)];
        assert!(matches!(
            &check(&same_epoch, at(0))[..],
            [Violation::SplitOwner { .. }]
        ));
        let stale_owner = vec![commit("a", 0, 1), commit("b", 1, 2), commit("a", 0, 3)];
        assert!(matches!(
            &check(&stale_owner, at(0))[..],
            [Violation::SplitOwner { .. }]
        ));
    }

    #[test]
    fn an_unanswered_or_late_operation_is_late_and_slack_is_allowed() {
        let mut h = run(Some(3));
        h.push(op("s", Kind::read("n"), 100, 100, Outcome::Unanswered));
        h.push(op(
            "s",
            Kind::read("n"),
            100,
            1_150,
            Outcome::Value(Some(3)),
        ));
        let found = check(&h, at(100));
        assert!(
            matches!(&found[..], [Violation::Late { event }] if event.outcome == Outcome::Unanswered),
            "{found:?}"
        );
        assert_eq!(check(&h, at(10)).len(), 2);
    }

    #[test]
    fn the_recorder_keeps_what_it_was_told_and_reports_what_never_ended() {
        let history = Recorder::new();
        let w = history.invoke(7, "s", Kind::write("n", 1), SECOND);
        history.complete(w, Outcome::Ok);
        let _never = history.invoke(7, "s", Kind::read("n"), SECOND);
        history.commit("s", "f1", 0);
        let events = history.events();
        assert_eq!(events.len(), 3);
        assert_eq!(events[0].outcome, Outcome::Ok);
        let found = check(&events, SECOND);
        assert!(
            matches!(&found[..], [Violation::Late { event }] if event.process == 7),
            "{found:?}"
        );
        let lines = history.to_json_lines();
        let back: Vec<Event> = lines
            .lines()
            .map(|l| serde_json::from_str(l).expect("an event"))
            .collect();
        assert_eq!(back, events);
    }
}
