//! Request filters: code that runs before and after the requests of a
//! route prefix, on a frontend (before a request is handled or forwarded)
//! and on a backend (around its handler), as Pinus's `before`/`after`
//! filters and Pitaya's pipelines do.
//!
//! - [`Filter`]: one filter. Its [`before`](Filter::before) lets a request
//!   go, makes it wait, or refuses it with a code and a message (the client
//!   gets `{code, msg}`); its [`after`](Filter::after) sees the answer and
//!   the time taken; its [`limit`](Filter::limit) bounds the work's time.
//! - [`Filters`]: the chain, rules of a route prefix and a filter, run in
//!   the order they were added.
//! - The built-ins a public game ships with: [`Serial`] (one request at a
//!   time per session, in arrival order), [`Timeout`], [`Overload`] (refuse
//!   new work past a depth or a latency, as Pinus's `toobusy`) and
//!   [`RateLimit`] (token buckets per session, per client IP and per
//!   session and route; a client that keeps at it is disconnected);
//!   [`check`] makes a filter of a closure, such as "logged in first";
//!   [`Internal`] refuses routes that are not for clients.
//!
//! Every refusal is counted in `session_proxy_filter_refusals_total`, by
//! filter and rule (the rule's route prefix, not the client's route string,
//! so a client cannot make up labels).
//!
//! # Example
//! ```
//! use session_proxy_filters::{check, Call, Filters, RateLimit, Serial};
//! use session_proxy_protocol::client::HandlerError;
//! use session_proxy_protocol::SessionId;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let filters = Filters::new()
//!     .with("", RateLimit::public())
//!     .with("chat.", check("logged_in", |call: &Call| match call.uid {
//!         Some(_) => Ok(()),
//!         None => Err(HandlerError::with_code(401, "log in first")),
//!     }))
//!     .with("room.", Serial::new());
//!
//! let anonymous = Call::new("chat.chatHandler.send", SessionId::from_raw(1));
//! let refused = filters
//!     .run(anonymous, async { bytes::Bytes::from_static(b"{\"code\":200}") })
//!     .await
//!     .expect_err("not logged in");
//! assert_eq!((refused.filter, refused.error.code), ("logged_in", 401));
//!
//! let mut alice = Call::new("chat.chatHandler.send", SessionId::from_raw(2));
//! alice.uid = Some("alice".into());
//! let answer = filters.run(alice, async { bytes::Bytes::from_static(b"{\"code\":200}") }).await;
//! assert_eq!(answer.expect("let through"), "{\"code\":200}");
//! # }
//! ```

mod overload;
mod rate;
mod serial;

pub use overload::Overload;
pub use rate::{Bucket, RateLimit};
pub use serial::Serial;

use bytes::Bytes;
use session_proxy_protocol::client::HandlerError;
use session_proxy_protocol::SessionId;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// The code of a request refused by a rate limit.
pub const RATE_LIMITED: u32 = 429;
/// The code of a request refused because the server is overloaded.
pub const OVERLOADED: u32 = 503;
/// The code of a request whose work passed its filter time limit.
pub const TIMED_OUT: u32 = 504;
/// The code of a client's request for a route that is not for clients
/// ([`Internal`]).
pub const NOT_FOR_CLIENTS: u32 = 403;

/// The metric counting refusals, by `filter` and `rule`.
pub const REFUSALS: &str = "session_proxy_filter_refusals_total";

/// This crate's metrics and their types, as a node exports them.
pub const EXPORTED: &[(&str, &str)] = &[(REFUSALS, "counter")];

/// Describes this crate's metrics to the installed recorder (a series is
/// made at zero, so the metric is seen before the first refusal).
pub fn describe() {
    metrics::describe_counter!(
        REFUSALS,
        "Requests refused by a filter (timeouts included), by filter and rule (its route prefix)."
    );
    metrics::counter!(REFUSALS, "filter" => "rate_limit", "rule" => "*").increment(0);
}

/// One request as the filters see it.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Call {
    /// Its route, `serverType.handler.method`.
    pub route: String,
    /// The session it came from.
    pub sid: SessionId,
    /// The uid bound to the session, if any.
    pub uid: Option<String>,
    /// The client's IP address, where the filter runs on the frontend
    /// that holds the client's connection.
    pub peer: Option<IpAddr>,
}

impl Call {
    /// A request on `route` from session `sid`, with no uid and no peer.
    pub fn new(route: impl Into<String>, sid: SessionId) -> Call {
        Call {
            route: route.into(),
            sid,
            uid: None,
            peer: None,
        }
    }
}

/// Whatever a filter keeps until the request's answer is out (a place in a
/// queue, a count of requests in flight); dropped then, or when the request
/// is cancelled.
pub type Hold = Box<dyn Send>;

/// A future a filter makes a request wait on.
pub type Waiting = Pin<Box<dyn Future<Output = Verdict> + Send>>;

/// What a filter says of a request, before it runs.
pub enum Verdict {
    /// It may go on (to the next filter, then its work), keeping the hold
    /// until its answer is out.
    Go(Option<Hold>),
    /// It waits for the future, which then says.
    Wait(Waiting),
    /// It is refused.
    Refuse(Refusal),
}

impl Verdict {
    /// Go, holding nothing.
    pub fn go() -> Verdict {
        Verdict::Go(None)
    }
}

impl std::fmt::Debug for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verdict::Go(hold) => write!(f, "Go(holding: {})", hold.is_some()),
            Verdict::Wait(_) => f.write_str("Wait"),
            Verdict::Refuse(r) => write!(f, "Refuse({r:?})"),
        }
    }
}

/// A refused request: what the client is answered, which filter refused,
/// and whether the client is disconnected for it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Refusal {
    /// The filter's name.
    pub filter: &'static str,
    /// The code and message the client gets.
    pub error: HandlerError,
    /// The client keeps at it: close its connection (the frontend kicks the
    /// session with the message as the reason).
    pub disconnect: bool,
}

impl Refusal {
    /// Refused by `filter` with `error`.
    pub fn new(filter: &'static str, error: HandlerError) -> Refusal {
        Refusal {
            filter,
            error,
            disconnect: false,
        }
    }

    /// The same, and the client is to be disconnected.
    pub fn and_disconnect(mut self) -> Refusal {
        self.disconnect = true;
        self
    }
}

/// A request's answer, as an after filter sees it.
#[derive(Debug)]
#[non_exhaustive]
pub struct Answered<'a> {
    /// The JSON body the client gets (an error body when the work failed
    /// or timed out).
    pub body: &'a [u8],
    /// From the work's start to its answer.
    pub took: Duration,
    /// Whether the work passed its time limit.
    pub timed_out: bool,
}

/// A filter of requests. The chain calls [`before`](Filter::before) in
/// arrival order, synchronously, as each request comes: a filter that keeps
/// an order (such as [`Serial`]) fixes it there.
pub trait Filter: Send + Sync + 'static {
    /// Its name, in refusals and metrics.
    fn name(&self) -> &'static str;

    /// Before the request runs: go, wait, or refuse. The default lets
    /// every request go.
    fn before(&self, call: &Call) -> Verdict {
        let _ = call;
        Verdict::go()
    }

    /// After the request's work answered (not for a refused request).
    fn after(&self, call: &Call, answered: &Answered<'_>) {
        let _ = (call, answered);
    }

    /// A bound on the time of the request's work: past it the client is
    /// answered [`TIMED_OUT`] and the work is dropped (a forwarded request
    /// is cancelled on its backend). The chain takes the smallest.
    fn limit(&self) -> Option<Duration> {
        None
    }
}

/// The filter of [`check`].
struct Check<F> {
    name: &'static str,
    check: F,
}

impl<F> Filter for Check<F>
where
    F: Fn(&Call) -> Result<(), HandlerError> + Send + Sync + 'static,
{
    fn name(&self) -> &'static str {
        self.name
    }

    fn before(&self, call: &Call) -> Verdict {
        match (self.check)(call) {
            Ok(()) => Verdict::go(),
            Err(error) => Verdict::Refuse(Refusal::new(self.name, error)),
        }
    }
}

/// A before filter named `name` from a closure: `Err` refuses the request
/// with its code and message.
pub fn check<F>(name: &'static str, check: F) -> impl Filter
where
    F: Fn(&Call) -> Result<(), HandlerError> + Send + Sync + 'static,
{
    Check { name, check }
}

/// Refuses every request under its rule with [`NOT_FOR_CLIENTS`] (403):
/// on a gateway, routes that only the cluster's own code calls (a
/// connector's forward, a close hook) and clients must not reach, whatever
/// they send.
#[derive(Clone, Copy, Debug, Default)]
pub struct Internal;

impl Filter for Internal {
    fn name(&self) -> &'static str {
        "internal"
    }

    fn before(&self, call: &Call) -> Verdict {
        Verdict::Refuse(Refusal::new(
            "internal",
            HandlerError::with_code(
                NOT_FOR_CLIENTS,
                format!("{} is not a client route", call.route),
            ),
        ))
    }
}

/// A bound on the work's time (see [`Filter::limit`]).
#[derive(Clone, Copy, Debug)]
pub struct Timeout(pub Duration);

impl Filter for Timeout {
    fn name(&self) -> &'static str {
        "timeout"
    }

    fn limit(&self) -> Option<Duration> {
        Some(self.0)
    }
}

struct Rule {
    /// Requests whose route starts with this ("" for all).
    prefix: String,
    filter: Arc<dyn Filter>,
}

/// A chain of filters, each for the routes under a prefix, run in the order
/// they were added. Cheap to clone (shared).
#[derive(Clone, Default)]
pub struct Filters {
    rules: Arc<Vec<Rule>>,
}

impl std::fmt::Debug for Filters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(
                self.rules
                    .iter()
                    .map(|r| (r.prefix.as_str(), r.filter.name())),
            )
            .finish()
    }
}

impl Filters {
    /// No filters.
    pub fn new() -> Filters {
        Filters::default()
    }

    /// The chain with `filter` added for the routes that start with
    /// `prefix` (`""`: every route; `"chat."`: the chat servers';
    /// `"chat.chatHandler.send"`: one route).
    pub fn with(mut self, prefix: &str, filter: impl Filter) -> Filters {
        self.add(prefix, filter);
        self
    }

    /// Adds `filter` for the routes that start with `prefix`.
    pub fn add(&mut self, prefix: &str, filter: impl Filter) -> &mut Filters {
        Arc::make_mut(&mut self.rules).push(Rule {
            prefix: prefix.to_string(),
            filter: Arc::new(filter),
        });
        self
    }

    /// Adds `filter` for the routes that start with `prefix`, ahead of
    /// every rule added before (for refusals that must come before any
    /// other filter counts the request, such as [`Internal`]).
    pub fn add_first(&mut self, prefix: &str, filter: impl Filter) -> &mut Filters {
        Arc::make_mut(&mut self.rules).insert(
            0,
            Rule {
                prefix: prefix.to_string(),
                filter: Arc::new(filter),
            },
        );
        self
    }

    /// Whether there are no filters.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Whether some filter applies to `route`: when none does, the caller
    /// need not build a [`Call`].
    pub fn applies(&self, route: &str) -> bool {
        self.rules.iter().any(|r| route.starts_with(&r.prefix))
    }

    /// Runs the before filters of `call` now, in order, up to the first that
    /// makes it wait or refuses it; the rest runs in
    /// [`Started::around`].
    pub fn start(&self, call: Call) -> Started {
        let mut started = Started {
            rules: self.rules.clone(),
            call,
            next: 0,
            holds: Vec::new(),
            waiting: None,
            refused: None,
        };
        started.step(None);
        started
    }

    /// [`start`](Self::start), then [`around`](Started::around) `work`.
    pub async fn run<F>(&self, call: Call, work: F) -> Result<Bytes, Refusal>
    where
        F: Future<Output = Bytes>,
    {
        self.start(call).around(work).await
    }
}

impl Clone for Rule {
    fn clone(&self) -> Self {
        Rule {
            prefix: self.prefix.clone(),
            filter: self.filter.clone(),
        }
    }
}

/// A request whose before filters have run as far as they could without
/// waiting.
pub struct Started {
    rules: Arc<Vec<Rule>>,
    call: Call,
    /// The next rule to consider.
    next: usize,
    holds: Vec<Hold>,
    /// The filter at `next - 1` made the request wait on this.
    waiting: Option<Waiting>,
    refused: Option<(Refusal, usize)>,
}

impl Started {
    /// Runs before filters from `next` on, taking `verdict` first (the one
    /// a waiting filter gave at last).
    fn step(&mut self, mut verdict: Option<Verdict>) {
        loop {
            let (at, v) = match verdict.take() {
                Some(v) => (self.next - 1, v),
                None => {
                    let Some((at, rule)) = self
                        .rules
                        .iter()
                        .enumerate()
                        .skip(self.next)
                        .find(|(_, r)| self.call.route.starts_with(&r.prefix))
                    else {
                        self.next = self.rules.len();
                        return;
                    };
                    self.next = at + 1;
                    (at, rule.filter.before(&self.call))
                }
            };
            match v {
                Verdict::Go(hold) => self.holds.extend(hold),
                Verdict::Wait(waiting) => {
                    self.waiting = Some(waiting);
                    return;
                }
                Verdict::Refuse(refusal) => {
                    self.refused = Some((refusal, at));
                    return;
                }
            }
        }
    }

    /// Whether a filter refused the request already.
    pub fn refused(&self) -> Option<&Refusal> {
        self.refused.as_ref().map(|(r, _)| r)
    }

    /// Waits as the filters say, then runs `work` within the smallest time
    /// limit of the filters, and gives its answer to the after filters.
    /// `Err`: refused (and counted), or past the time limit.
    pub async fn around<F>(self, work: F) -> Result<Bytes, Refusal>
    where
        F: Future<Output = Bytes>,
    {
        self.around_with(work, |body| body).await
    }

    /// [`around`](Self::around) for work whose answer is not a body alone:
    /// `body_of` shows the after filters its body.
    pub async fn around_with<F, T>(
        mut self,
        work: F,
        body_of: impl Fn(&T) -> &[u8],
    ) -> Result<T, Refusal>
    where
        F: Future<Output = T>,
    {
        while let Some(waiting) = self.waiting.take() {
            let verdict = waiting.await;
            self.step(Some(verdict));
        }
        if let Some((refusal, at)) = self.refused.take() {
            let prefix = self.rules[at].prefix.as_str();
            let rule = if prefix.is_empty() { "*" } else { prefix };
            metrics::counter!(REFUSALS, "filter" => refusal.filter, "rule" => rule.to_string())
                .increment(1);
            return Err(refusal);
        }
        let matching = || {
            self.rules
                .iter()
                .filter(|r| self.call.route.starts_with(&r.prefix))
        };
        let limit = matching().filter_map(|r| r.filter.limit()).min();
        let started = Instant::now();
        let answer = match limit {
            None => Ok(work.await),
            Some(limit) => tokio::time::timeout(limit, work)
                .await
                .map_err(|_| past_limit(limit)),
        };
        let error_body;
        let answered = Answered {
            body: match &answer {
                Ok(answer) => body_of(answer),
                Err(refusal) => {
                    error_body = refusal.error.to_body();
                    &error_body
                }
            },
            took: started.elapsed(),
            timed_out: answer.is_err(),
        };
        for rule in matching() {
            rule.filter.after(&self.call, &answered);
        }
        drop(std::mem::take(&mut self.holds));
        if answer.is_err() {
            metrics::counter!(REFUSALS, "filter" => "timeout", "rule" => "*").increment(1);
        }
        answer
    }
}

fn past_limit(limit: Duration) -> Refusal {
    Refusal::new(
        "timeout",
        HandlerError::with_code(TIMED_OUT, format!("no answer within {limit:?}")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Counting {
        before: AtomicUsize,
        after: AtomicUsize,
    }

    impl Filter for Arc<Counting> {
        fn name(&self) -> &'static str {
            "counting"
        }
        fn before(&self, _call: &Call) -> Verdict {
            self.before.fetch_add(1, Ordering::SeqCst);
            Verdict::go()
        }
        fn after(&self, _call: &Call, answered: &Answered<'_>) {
            assert_eq!(answered.body, b"ok");
            self.after.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn call(route: &str) -> Call {
        Call::new(route, SessionId::from_raw(1))
    }

    #[tokio::test]
    async fn rules_apply_by_prefix_in_order_and_a_refusal_stops_the_chain() {
        let counting = Arc::new(Counting {
            before: AtomicUsize::new(0),
            after: AtomicUsize::new(0),
        });
        let filters = Filters::new()
            .with("chat.", counting.clone())
            .with(
                "chat.chatHandler.send",
                check("no", |_| Err(HandlerError::with_code(403, "no"))),
            )
            .with("", counting.clone());
        let ok = filters.run(call("chat.chatHandler.get"), async {
            Bytes::from_static(b"ok")
        });
        assert_eq!(ok.await.expect("let through"), "ok");
        assert_eq!(
            counting.before.load(Ordering::SeqCst),
            2,
            "both rules matched"
        );
        assert_eq!(counting.after.load(Ordering::SeqCst), 2);

        let ran = AtomicUsize::new(0);
        let refused = filters
            .run(call("chat.chatHandler.send"), async {
                ran.fetch_add(1, Ordering::SeqCst);
                Bytes::from_static(b"ok")
            })
            .await
            .expect_err("refused");
        assert_eq!((refused.filter, refused.error.code), ("no", 403));
        assert_eq!(ran.load(Ordering::SeqCst), 0, "the work never ran");
        assert_eq!(
            counting.before.load(Ordering::SeqCst),
            3,
            "the last rule was not reached"
        );
        assert_eq!(
            counting.after.load(Ordering::SeqCst),
            2,
            "no after for a refusal"
        );
        assert!(filters.applies("room.roomHandler.join"), "the \"\" rule");
        let chat_only = Filters::new().with("chat.", counting.clone());
        assert!(chat_only.applies("chat.chatHandler.get"));
        assert!(!chat_only.applies("room.roomHandler.join"));
    }

    #[tokio::test(start_paused = true)]
    async fn the_smallest_time_limit_ends_the_work() {
        let filters = Filters::new()
            .with("", Timeout(Duration::from_secs(5)))
            .with("slow.", Timeout(Duration::from_millis(200)));
        let refused = filters
            .run(call("slow.h.m"), async {
                tokio::time::sleep(Duration::from_secs(60)).await;
                Bytes::from_static(b"late")
            })
            .await
            .expect_err("timed out");
        assert_eq!(refused.error.code, TIMED_OUT);
        let answered = filters
            .run(call("fast.h.m"), async {
                tokio::time::sleep(Duration::from_secs(1)).await;
                Bytes::from_static(b"ok")
            })
            .await;
        assert_eq!(answered.expect("within 5 s"), "ok");
    }
}
