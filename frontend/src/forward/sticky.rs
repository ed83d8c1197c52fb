//! Players that stay on their stateful server: for a sticky server type, a
//! binding uid → node kept in the session store, so that a reconnect, a
//! resume on another frontend or a node that joins does not move a player
//! off the node that holds their game state.
//!
//! The rules, in the order they are tried for a bound session's request:
//! 1. The node this frontend read for the uid less than
//!    [`StickyOptions::recheck`] ago, if it is linked.
//! 2. The node the store names, if it is linked.
//! 3. The node the store names is not linked: a drained node, or one away
//!    for more than [`StickyOptions::move_after`] (or unknown to a frontend
//!    up for that long), loses the player; for one that may come back, the
//!    request waits for it within its deadline and then fails
//!    ([`ErrorCode::Unavailable`]: "away").
//! 4. No binding, or the node lost it: the type's router picks a node (the
//!    rendezvous hash of the uid by default) and the store binds the uid to
//!    it, unless another frontend bound it first, whose choice is taken.
//!    When a binding moved, the new node is called with
//!    [`ADOPT_METHOD`](session_proxy_protocol::ADOPT_METHOD) before the
//!    request.
//!
//! While the store fails, requests go where the router says (with the hash
//! router, that is where rule 4 moves a binding when no node has joined
//! since), and nothing is written.

use super::link::{exchange_call, BackendLink, Candidates};
use super::BackendRegistry;
use crate::store::SessionStore;
use dashmap::DashMap;
use session_proxy_protocol::sync::LockUnpoisoned as _;
use session_proxy_protocol::text::log_safe;
use session_proxy_protocol::{Adopt, ErrorCode, Remote, RpcError, SessionSnapshot, ADOPT_METHOD};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How the bindings of a sticky server type behave
/// ([`BackendRegistry::stick`]).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct StickyOptions {
    /// How long a binding lives after it was last read (a frontend reads it
    /// at a player's first request to the type and every `recheck` while
    /// the player keeps sending). Default: a day.
    pub ttl: Duration,
    /// How long a frontend routes by the binding it read before it reads
    /// the store again (another frontend may have moved it). Default: 10 s.
    pub recheck: Duration,
    /// How long a node whose link broke (not a drain) keeps its players:
    /// their requests wait for it within their deadlines, then fail as
    /// unavailable ("away"); after this, their bindings move. Default:
    /// 15 s.
    pub move_after: Duration,
    /// The deadline of one store call. Default: 1 s.
    pub call_timeout: Duration,
}

impl Default for StickyOptions {
    fn default() -> Self {
        StickyOptions {
            ttl: Duration::from_secs(24 * 3600),
            recheck: Duration::from_secs(10),
            move_after: Duration::from_secs(15),
            call_timeout: Duration::from_secs(1),
        }
    }
}

/// How long the store is not asked after it failed.
const QUIET_AFTER_FAILURE: Duration = Duration::from_secs(1);

/// The bindings of one sticky server type.
pub(super) struct Sticky {
    store: Arc<dyn SessionStore>,
    options: StickyOptions,
    /// `uid -> (node, when read)`.
    known: DashMap<String, (String, Instant)>,
    /// Until when the store is not asked (it failed).
    quiet_until: Mutex<Option<Instant>>,
}

impl Sticky {
    pub(super) fn new(store: Arc<dyn SessionStore>, options: StickyOptions) -> Self {
        Sticky {
            store,
            options,
            known: DashMap::new(),
            quiet_until: Mutex::new(None),
        }
    }

    /// The node read for `uid` within `recheck`.
    fn recent(&self, uid: &str) -> Option<String> {
        self.known
            .get(uid)
            .filter(|e| e.1.elapsed() < self.options.recheck)
            .map(|e| e.0.clone())
    }

    fn remember(&self, uid: &str, node: &str) {
        if self.known.len() > 4096 && self.known.len().is_power_of_two() {
            let recheck = self.options.recheck;
            self.known.retain(|_, (_, at)| at.elapsed() < recheck);
        }
        self.known
            .insert(uid.to_string(), (node.to_string(), Instant::now()));
    }

    /// Runs one store call under its deadline; `None` (and the store left
    /// alone for a moment) when it fails or is being left alone.
    async fn ask<T>(&self, op: crate::store::StoreFuture<'_, T>) -> Option<T> {
        if self
            .quiet_until
            .lock_unpoisoned()
            .is_some_and(|until| Instant::now() < until)
        {
            return None;
        }
        let outcome = match tokio::time::timeout(self.options.call_timeout, op).await {
            Ok(Ok(value)) => return Some(value),
            Ok(Err(err)) => err.to_string(),
            Err(_) => format!("no answer within {:?}", self.options.call_timeout),
        };
        let mut quiet = self.quiet_until.lock_unpoisoned();
        if quiet.is_none() {
            tracing::warn!(cause = %outcome, "the store of sticky bindings failed; routing by the router until it answers");
        }
        *quiet = Some(Instant::now() + QUIET_AFTER_FAILURE);
        None
    }

    fn answered(&self) {
        if self.quiet_until.lock_unpoisoned().take().is_some() {
            tracing::info!("the store of sticky bindings answers again");
        }
    }
}

/// When and how a backend left this frontend.
#[derive(Clone, Copy, Debug)]
pub(super) struct Departure {
    at: Instant,
    drained: bool,
}

/// The departed backends, by node id (pruned after an hour), and when
/// this frontend's registry started (links come up after it).
pub(super) struct Departures {
    left: Mutex<HashMap<String, Departure>>,
    born: Instant,
}

impl Default for Departures {
    fn default() -> Self {
        Departures {
            left: Mutex::default(),
            born: Instant::now(),
        }
    }
}

impl Departures {
    pub(super) fn left(&self, node: &str, drained: bool) {
        let mut map = self.left.lock_unpoisoned();
        map.retain(|_, d| d.at.elapsed() < Duration::from_secs(3600));
        map.insert(
            node.to_string(),
            Departure {
                at: Instant::now(),
                drained,
            },
        );
    }

    pub(super) fn came_back(&self, node: &str) {
        self.left.lock_unpoisoned().remove(node);
    }

    /// Until when `node`, not linked now, keeps its players: `None` when
    /// they move now (it drained, or it has been away for `move_after`, or
    /// this frontend, up for that long, never saw it).
    fn keeps_until(&self, node: &str, move_after: Duration) -> Option<Instant> {
        let since = match self.left.lock_unpoisoned().get(node) {
            Some(d) if d.drained => return None,
            Some(d) => d.at,
            None => self.born,
        };
        let until = since + move_after;
        (Instant::now() < until).then_some(until)
    }
}

/// Where a sticky request goes.
pub(super) struct Placed {
    pub(super) link: Arc<BackendLink>,
    pub(super) candidates: Arc<Candidates>,
}

impl BackendRegistry {
    /// The bindings of `server_type`, if it is sticky.
    pub(super) fn sticky(&self, server_type: &str) -> Option<Arc<Sticky>> {
        use session_proxy_protocol::sync::RwLockUnpoisoned as _;
        use std::sync::atomic::Ordering;
        if !self.inner.any_sticky.load(Ordering::Acquire) {
            return None;
        }
        self.inner
            .sticky
            .read_unpoisoned()
            .get(server_type)
            .cloned()
    }

    /// The node of `server_type` for `uid` by the rules of this module;
    /// `choose` is the router's pick among the candidates' ids. When this
    /// call moved the binding, the new node has been told (about `session`
    /// if given) before it returns.
    pub(super) async fn place(
        &self,
        sticky: &Sticky,
        server_type: &str,
        uid: &str,
        choose: impl Fn(&[String]) -> Option<usize>,
        session: Option<&SessionSnapshot>,
        deadline: Duration,
    ) -> Result<Placed, RpcError> {
        let until = Instant::now() + deadline;
        let at = |candidates: Arc<Candidates>, node: &str| {
            let i = candidates.ids.iter().position(|n| n == node)?;
            Some(Placed {
                link: candidates.links.get(i)?.clone(),
                candidates,
            })
        };
        loop {
            let changed = self.inner.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let candidates = self.candidates(server_type)?;
            if let Some(placed) = sticky
                .recent(uid)
                .and_then(|node| at(candidates.clone(), &node))
            {
                return Ok(placed);
            }
            let chosen = choose(&candidates.ids)
                .and_then(|i| candidates.ids.get(i).cloned())
                .ok_or_else(|| RpcError::new(ErrorCode::NoBackend, "the router chose no server"))?;
            let ttl = sticky.options.ttl;
            let Some(held) = sticky
                .ask(sticky.store.binding(server_type, uid, ttl))
                .await
            else {
                return at(candidates, &chosen)
                    .ok_or_else(|| RpcError::new(ErrorCode::NoBackend, "no server picked"));
            };
            sticky.answered();
            if let Some(node) = &held {
                if let Some(placed) = at(candidates.clone(), node) {
                    sticky.remember(uid, node);
                    return Ok(placed);
                }
                let move_after = sticky.options.move_after;
                if let Some(keeps) = self.inner.departed.keeps_until(node, move_after) {
                    // It may come back: wait for a change of the links.
                    let wait = keeps.min(until);
                    if tokio::time::timeout_at(wait.into(), changed).await.is_err()
                        && Instant::now() >= until
                    {
                        return Err(RpcError::new(
                            ErrorCode::Unavailable,
                            format!(
                                "the {server_type} server {} that holds this player is away",
                                log_safe(node)
                            ),
                        ));
                    }
                    continue;
                }
            }
            let rebind = sticky
                .store
                .rebind(server_type, uid, held.as_deref(), &chosen, ttl);
            let Some(rebound) = sticky.ask(rebind).await else {
                return at(candidates, &chosen)
                    .ok_or_else(|| RpcError::new(ErrorCode::NoBackend, "no server picked"));
            };
            if let Some(placed) = at(candidates, &rebound.node) {
                sticky.remember(uid, &rebound.node);
                if let Some(from) = held.filter(|_| rebound.written) {
                    tracing::info!(server_type, from = %log_safe(&from), to = %log_safe(&rebound.node), "a player's sticky binding moved");
                    let left = until.saturating_duration_since(Instant::now());
                    let session = session.cloned();
                    adopt(&placed.link, server_type, uid, from, session, left).await;
                }
                return Ok(placed);
            }
            // Another frontend bound it to a node not linked here: the
            // next round applies the rules to that binding.
            if Instant::now() >= until {
                return Err(RpcError::new(
                    ErrorCode::DeadlineExceeded,
                    "no linked server holds this player",
                ));
            }
        }
    }
}

/// Tells the node a player's binding moved to (`link`) that it holds the
/// player now ([`ADOPT_METHOD`]), before the player's request; a node that
/// serves no such method is fine, one that fails is logged.
async fn adopt(
    link: &Arc<BackendLink>,
    server_type: &str,
    uid: &str,
    from: String,
    session: Option<SessionSnapshot>,
    deadline: Duration,
) {
    let route = format!("{server_type}.{ADOPT_METHOD}");
    let caller = session
        .as_ref()
        .map_or_else(String::new, |s| s.frontend_id.clone());
    let args = Adopt {
        uid: uid.to_string(),
        from,
    };
    let call = match Remote::new(&route, &caller, session, &args) {
        Ok(call) => call,
        Err(err) => {
            tracing::warn!(cause = %err, "cannot encode the adopt call");
            return;
        }
    };
    let told = exchange_call(link, call.into(), deadline).await;
    match told
        .as_ref()
        .map(|reply| Remote::answer::<()>(reply.clone()))
    {
        Ok(Ok(Ok(()))) => {}
        Err(err) if err.code == ErrorCode::UnknownRoute => {}
        Ok(Ok(Err(callee))) => {
            tracing::warn!(node = %log_safe(&link.node_id), code = callee.code, cause = %callee.message, "the node a player moved to failed to adopt them")
        }
        Ok(Err(err)) => {
            tracing::warn!(node = %log_safe(&link.node_id), cause = %err, "undecodable answer to adopt")
        }
        Err(err) => {
            tracing::warn!(node = %log_safe(&link.node_id), cause = %err, "the node a player moved to was not told")
        }
    }
}
