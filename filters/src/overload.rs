//! Refusing new work past a depth or a latency (Pinus's `toobusy`).

use crate::{Answered, Call, Filter, Refusal, Verdict, OVERLOADED};
use session_proxy_protocol::client::HandlerError;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Refuses new requests with [`OVERLOADED`] (503) while `max_in_flight`
/// requests under its rule run, or while the recent answers are slow: the
/// moving average of their times (each answer counts for an eighth) is
/// above `max_latency`. A refused request does no work, so the average
/// would never come down: each refusal brings it down by an eighth too, and
/// the server is tried again after a few.
#[derive(Clone)]
pub struct Overload {
    max_in_flight: usize,
    max_latency: Option<Duration>,
    state: Arc<State>,
}

#[derive(Default)]
struct State {
    in_flight: AtomicUsize,
    /// The moving average of answer times, in µs.
    average_us: AtomicU64,
}

/// A request counted in flight until its answer is out.
struct InFlight(Arc<State>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Overload {
    /// At most `max_in_flight` requests at once under the rule.
    pub fn new(max_in_flight: usize) -> Overload {
        Overload {
            max_in_flight,
            max_latency: None,
            state: Arc::default(),
        }
    }

    /// Also refuse while answers take longer than `max_latency` on average.
    pub fn max_latency(mut self, max_latency: Duration) -> Overload {
        self.max_latency = Some(max_latency);
        self
    }

    /// Requests running now.
    pub fn in_flight(&self) -> usize {
        self.state.in_flight.load(Ordering::Acquire)
    }

    /// Moves the average an eighth of the way to `sample_us`.
    fn average_towards(&self, sample_us: u64) {
        let _ = self
            .state
            .average_us
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |avg| {
                Some(avg - avg / 8 + sample_us / 8)
            });
    }
}

impl Filter for Overload {
    fn name(&self) -> &'static str {
        "overload"
    }

    fn before(&self, _call: &Call) -> Verdict {
        let refuse = |why: String| {
            Verdict::Refuse(Refusal::new(
                "overload",
                HandlerError::with_code(OVERLOADED, why),
            ))
        };
        if let Some(max) = self.max_latency {
            let average = Duration::from_micros(self.state.average_us.load(Ordering::Acquire));
            if average > max {
                self.average_towards(0);
                return refuse(format!("server busy (answers take {average:?})"));
            }
        }
        let before = self.state.in_flight.fetch_add(1, Ordering::AcqRel);
        let hold = InFlight(self.state.clone());
        if before >= self.max_in_flight {
            drop(hold);
            return refuse(format!("server busy ({before} requests running)"));
        }
        Verdict::Go(Some(Box::new(hold)))
    }

    fn after(&self, _call: &Call, answered: &Answered<'_>) {
        let us = u64::try_from(answered.took.as_micros()).unwrap_or(u64::MAX);
        self.average_towards(us);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Filters;
    use bytes::Bytes;
    use session_proxy_protocol::SessionId;

    fn call() -> Call {
        Call::new("game.h.m", SessionId::from_raw(1))
    }

    #[tokio::test]
    async fn past_its_depth_new_work_is_refused_until_some_finishes() {
        let overload = Overload::new(2);
        let filters = Filters::new().with("", overload.clone());
        let first = filters.start(call());
        let second = filters.start(call());
        let third = filters.start(call());
        assert_eq!(third.refused().map(|r| r.error.code), Some(OVERLOADED));
        assert_eq!(overload.in_flight(), 2, "the refused one is not counted");
        drop(third);
        let answer = first.around(async { Bytes::from_static(b"1") }).await;
        assert_eq!(answer.expect("ran"), "1");
        let fourth = filters.start(call());
        assert!(fourth.refused().is_none(), "room again");
        drop((second, fourth));
        assert_eq!(overload.in_flight(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn slow_answers_turn_new_work_away_for_a_while() {
        let overload = Overload::new(100).max_latency(Duration::from_millis(100));
        let filters = Filters::new().with("", overload.clone());
        let mut outcomes = String::new();
        for _ in 0..40 {
            let slow = filters.run(call(), async {
                tokio::time::sleep(Duration::from_millis(500)).await;
                Bytes::new()
            });
            outcomes.push(if slow.await.is_ok() { 'r' } else { 'x' });
        }
        assert!(outcomes.starts_with("rrx"), "{outcomes}: refused once slow");
        let refused = outcomes.matches('x').count();
        assert!(
            (10..30).contains(&refused),
            "{outcomes}: refused while slow, and tried again"
        );
    }
}
