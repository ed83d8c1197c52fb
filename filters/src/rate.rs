//! Token buckets per session, per client IP and per session and route.

use crate::{Call, Filter, Refusal, Verdict, RATE_LIMITED};
use dashmap::DashMap;
use session_proxy_protocol::client::HandlerError;
use session_proxy_protocol::SessionId;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// A token bucket's size: `rate` requests a second on average, `burst` at
/// once.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bucket {
    /// Tokens added per second.
    pub rate: f64,
    /// Tokens it holds at most (a client idle long enough may send this
    /// many at once).
    pub burst: f64,
}

impl Bucket {
    /// `rate` a second, `burst` at once.
    pub fn new(rate: f64, burst: f64) -> Bucket {
        Bucket { rate, burst }
    }
}

/// A bucket's tokens as of `at`.
#[derive(Clone, Copy)]
struct Tokens {
    left: f64,
    at: Instant,
}

impl Tokens {
    /// Refills to `now`; takes one if there is one.
    fn take(&mut self, bucket: Bucket, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.left = (self.left + elapsed * bucket.rate).min(bucket.burst);
        self.at = now;
        if self.left >= 1.0 {
            self.left -= 1.0;
            true
        } else {
            false
        }
    }

    /// Whether it would be full by `now`: then it is the same as no entry.
    fn full_by(&self, bucket: Bucket, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.left + elapsed * bucket.rate >= bucket.burst
    }
}

/// Buckets of one kind of key, with what they are sized to.
struct Buckets<K: Hash + Eq> {
    size: Bucket,
    map: DashMap<K, Tokens>,
    inserts: AtomicU64,
}

/// How often (in new keys) full buckets are dropped: a key whose bucket is
/// full again costs nothing.
const PRUNE_EVERY: u64 = 1024;

/// Counts a new key; whether the map is due a pruning first (every
/// [`PRUNE_EVERY`] new keys).
fn prune_due(inserts: &AtomicU64) -> bool {
    let before = inserts.fetch_add(1, Ordering::Relaxed);
    before != 0 && before % PRUNE_EVERY == 0
}

impl<K: Hash + Eq + Clone> Buckets<K> {
    fn new(size: Bucket) -> Self {
        Buckets {
            size,
            map: DashMap::new(),
            inserts: AtomicU64::new(0),
        }
    }

    fn take(&self, key: &K, now: Instant) -> bool {
        if let Some(mut tokens) = self.map.get_mut(key) {
            return tokens.take(self.size, now);
        }
        if prune_due(&self.inserts) {
            let size = self.size;
            self.map.retain(|_, t| !t.full_by(size, now));
        }
        let mut tokens = Tokens {
            left: self.size.burst,
            at: now,
        };
        let taken = tokens.take(self.size, now);
        self.map.insert(key.clone(), tokens);
        taken
    }

    fn give_back(&self, key: &K) {
        if let Some(mut tokens) = self.map.get_mut(key) {
            tokens.left = (tokens.left + 1.0).min(self.size.burst);
        }
    }
}

/// Refusals of one session within the current window.
#[derive(Clone, Copy)]
struct Violations {
    count: u32,
    since: Instant,
}

struct Inner {
    per_session: Option<Buckets<SessionId>>,
    per_ip: Option<Buckets<IpAddr>>,
    per_route: Option<Buckets<(SessionId, String)>>,
    /// Refusals within `window` after which the client is disconnected.
    disconnect_after: Option<(u32, Duration)>,
    violations: DashMap<SessionId, Violations>,
    violation_inserts: AtomicU64,
}

/// Token-bucket rate limits on requests: per session, per client IP (on the
/// frontend that holds the connection), and per session and route. A
/// request takes a token from each bucket that applies; with one empty it is
/// refused with [`RATE_LIMITED`] (429) and takes nothing. A session refused
/// `n` times within a window is disconnected (see
/// [`disconnect_after`](Self::disconnect_after)).
///
/// [`RateLimit::public`] has defaults a public game can ship with.
#[derive(Clone)]
pub struct RateLimit {
    inner: Arc<Inner>,
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit {
            inner: Arc::new(Inner {
                per_session: None,
                per_ip: None,
                per_route: None,
                disconnect_after: None,
                violations: DashMap::new(),
                violation_inserts: AtomicU64::new(0),
            }),
        }
    }
}

impl RateLimit {
    /// No limits yet: add them with the methods below.
    pub fn new() -> RateLimit {
        RateLimit::default()
    }

    /// The defaults for a public game: per session 50 requests a second
    /// (bursts of 100); per client IP 500 a second (bursts of 1,000: players
    /// behind one NAT share an address); a session refused 200 times within
    /// 10 s is disconnected.
    pub fn public() -> RateLimit {
        RateLimit::new()
            .per_session(Bucket::new(50.0, 100.0))
            .per_ip(Bucket::new(500.0, 1000.0))
            .disconnect_after(200, Duration::from_secs(10))
    }

    fn edit(mut self, edit: impl FnOnce(&mut Inner)) -> RateLimit {
        if Arc::get_mut(&mut self.inner).is_none() {
            // Shared already: the changed copy starts with empty buckets.
            let i = &self.inner;
            self.inner = Arc::new(Inner {
                per_session: i.per_session.as_ref().map(|b| Buckets::new(b.size)),
                per_ip: i.per_ip.as_ref().map(|b| Buckets::new(b.size)),
                per_route: i.per_route.as_ref().map(|b| Buckets::new(b.size)),
                disconnect_after: i.disconnect_after,
                violations: DashMap::new(),
                violation_inserts: AtomicU64::new(0),
            });
        }
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            edit(inner);
        }
        self
    }

    /// A bucket per session.
    pub fn per_session(self, size: Bucket) -> RateLimit {
        self.edit(|i| i.per_session = Some(Buckets::new(size)))
    }

    /// A bucket per client IP address (requests without one, such as those
    /// a backend sees, are not limited by it).
    pub fn per_ip(self, size: Bucket) -> RateLimit {
        self.edit(|i| i.per_ip = Some(Buckets::new(size)))
    }

    /// A bucket per session and route.
    pub fn per_route(self, size: Bucket) -> RateLimit {
        self.edit(|i| i.per_route = Some(Buckets::new(size)))
    }

    /// Disconnect a session refused `refusals` times within `window`.
    pub fn disconnect_after(self, refusals: u32, window: Duration) -> RateLimit {
        self.edit(|i| i.disconnect_after = Some((refusals.max(1), window)))
    }

    /// Keys held (sessions, addresses, session-routes), full buckets not
    /// yet dropped included.
    pub fn keys(&self) -> usize {
        let i = &self.inner;
        i.per_session.as_ref().map_or(0, |b| b.map.len())
            + i.per_ip.as_ref().map_or(0, |b| b.map.len())
            + i.per_route.as_ref().map_or(0, |b| b.map.len())
    }

    /// Counts a refusal of `sid`; whether it is to be disconnected now.
    fn violated(&self, sid: SessionId, now: Instant) -> bool {
        let Some((limit, window)) = self.inner.disconnect_after else {
            return false;
        };
        let violations = &self.inner.violations;
        if prune_due(&self.inner.violation_inserts) {
            violations.retain(|_, v| now.saturating_duration_since(v.since) < window);
        }
        let mut v = violations.entry(sid).or_insert(Violations {
            count: 0,
            since: now,
        });
        if now.saturating_duration_since(v.since) >= window {
            *v = Violations {
                count: 0,
                since: now,
            };
        }
        v.count += 1;
        v.count >= limit
    }
}

impl Filter for RateLimit {
    fn name(&self) -> &'static str {
        "rate_limit"
    }

    fn before(&self, call: &Call) -> Verdict {
        let now = Instant::now();
        let i = &self.inner;
        let route_key = i.per_route.as_ref().map(|_| (call.sid, call.route.clone()));
        let session_ok = i
            .per_session
            .as_ref()
            .is_none_or(|b| b.take(&call.sid, now));
        let ip_ok = session_ok
            && match (&i.per_ip, call.peer) {
                (Some(b), Some(ip)) => b.take(&ip, now),
                _ => true,
            };
        let route_ok = ip_ok
            && match (&i.per_route, &route_key) {
                (Some(b), Some(key)) => b.take(key, now),
                _ => true,
            };
        if route_ok {
            return Verdict::go();
        }
        // Refused: what was taken goes back.
        if session_ok {
            if let Some(b) = &i.per_session {
                b.give_back(&call.sid);
            }
        }
        if ip_ok {
            if let (Some(b), Some(ip)) = (&i.per_ip, call.peer) {
                b.give_back(&ip);
            }
        }
        let which = if !session_ok {
            "session"
        } else if !ip_ok {
            "client address"
        } else {
            "route"
        };
        let refusal = Refusal::new(
            "rate_limit",
            HandlerError::with_code(RATE_LIMITED, format!("too many requests for this {which}")),
        );
        Verdict::Refuse(if self.violated(call.sid, now) {
            refusal.and_disconnect()
        } else {
            refusal
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(sid: u64, ip: [u8; 4]) -> Call {
        let mut call = Call::new("chat.chatHandler.send", SessionId::from_raw(sid));
        call.peer = Some(IpAddr::from(ip));
        call
    }

    fn passes(limit: &RateLimit, call: &Call) -> bool {
        matches!(limit.before(call), Verdict::Go(_))
    }

    #[tokio::test(start_paused = true)]
    async fn a_session_gets_its_burst_then_its_rate_and_others_are_unaffected() {
        let limit = RateLimit::new().per_session(Bucket::new(10.0, 5.0));
        let a = call(1, [10, 0, 0, 1]);
        let passed = (0..20).filter(|_| passes(&limit, &a)).count();
        assert_eq!(passed, 5, "the burst");
        assert!(passes(&limit, &call(2, [10, 0, 0, 2])), "another session");
        tokio::time::advance(Duration::from_millis(1000)).await;
        let passed = (0..20).filter(|_| passes(&limit, &a)).count();
        assert_eq!(passed, 5, "a second refills up to the burst");
        // At twice its rate for 10 s, about half get through.
        let mut passed = 0;
        for _ in 0..200 {
            tokio::time::advance(Duration::from_millis(50)).await;
            passed += usize::from(passes(&limit, &a));
        }
        assert!((95..=105).contains(&passed), "{passed} of 200");
    }

    #[tokio::test(start_paused = true)]
    async fn an_address_shared_by_sessions_has_its_own_bucket() {
        let limit = RateLimit::new()
            .per_session(Bucket::new(100.0, 100.0))
            .per_ip(Bucket::new(1.0, 3.0));
        let passed = (0..10)
            .filter(|i| passes(&limit, &call(*i, [10, 0, 0, 9])))
            .count();
        assert_eq!(passed, 3);
        assert!(passes(&limit, &call(99, [10, 0, 0, 8])), "another address");
    }

    #[tokio::test(start_paused = true)]
    async fn a_session_that_keeps_at_it_is_disconnected() {
        let limit = RateLimit::new()
            .per_session(Bucket::new(1.0, 1.0))
            .disconnect_after(3, Duration::from_secs(10));
        let a = call(1, [10, 0, 0, 1]);
        assert!(passes(&limit, &a));
        let verdicts: Vec<bool> = (0..3)
            .map(|_| match limit.before(&a) {
                Verdict::Refuse(r) => r.disconnect,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(verdicts, [false, false, true]);
        // A new window forgives.
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(passes(&limit, &a));
        match limit.before(&a) {
            Verdict::Refuse(r) => assert!(!r.disconnect),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn full_buckets_are_dropped() {
        let limit = RateLimit::new().per_session(Bucket::new(100.0, 10.0));
        for sid in 0..PRUNE_EVERY {
            assert!(passes(&limit, &call(sid, [10, 0, 0, 1])));
        }
        assert_eq!(limit.keys() as u64, PRUNE_EVERY);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(passes(&limit, &call(PRUNE_EVERY, [10, 0, 0, 1])));
        assert_eq!(limit.keys(), 1, "only the new session's is left");
    }
}
