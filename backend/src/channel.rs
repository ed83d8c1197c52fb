//! Channels: named groups of users, kept on a backend, pushed to at once.

use crate::{BackendSessionService, Error};
use serde::Serialize;
use session_proxy_protocol::sync::RwLockUnpoisoned as _;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

/// All channels of one backend. Cheap to clone.
///
/// A channel maps each member uid to the frontend its session lives on. A
/// push to a channel makes one RPC per frontend (not one per member) and
/// reports the uids it did not reach. Members follow their sessions: a push
/// that misses a member looks it up, reaches it where it moved, and drops it
/// once its session ended for good (see [`push`](ChannelService::push)).
#[derive(Clone, Debug)]
pub struct ChannelService {
    /// Where pushes go.
    sessions: BackendSessionService,
    /// `channel name -> (uid -> frontend id)`.
    channels: Arc<RwLock<HashMap<String, BTreeMap<String, String>>>>,
}

impl ChannelService {
    /// No channels yet; pushes go through `sessions`.
    pub fn new(sessions: BackendSessionService) -> Self {
        ChannelService {
            sessions,
            channels: Arc::default(),
        }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, BTreeMap<String, String>>> {
        // Each write is one map operation: a poisoned map is still whole.
        self.channels.write_unpoisoned()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, BTreeMap<String, String>>> {
        self.channels.read_unpoisoned()
    }

    /// The backend service pushes go through.
    pub fn sessions(&self) -> &BackendSessionService {
        &self.sessions
    }

    /// Adds `uid` (whose session is on `frontend_id`) to a channel, creating
    /// it. Returns false if the uid was a member already (its frontend is
    /// updated).
    pub fn add(&self, channel: &str, uid: &str, frontend_id: &str) -> bool {
        self.write()
            .entry(channel.to_string())
            .or_default()
            .insert(uid.to_string(), frontend_id.to_string())
            .is_none()
    }

    /// Removes `uid` from a channel; an emptied channel is destroyed.
    /// Returns whether it was a member.
    pub fn leave(&self, channel: &str, uid: &str) -> bool {
        let mut channels = self.write();
        let Some(members) = channels.get_mut(channel) else {
            return false;
        };
        let was = members.remove(uid).is_some();
        if members.is_empty() {
            channels.remove(channel);
        }
        was
    }

    /// The members' uids, sorted.
    pub fn members(&self, channel: &str) -> Vec<String> {
        self.read()
            .get(channel)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// The frontend a member's session is on.
    pub fn frontend_of(&self, channel: &str, uid: &str) -> Option<String> {
        self.read().get(channel).and_then(|m| m.get(uid).cloned())
    }

    /// Whether `uid` is in the channel.
    pub fn contains(&self, channel: &str, uid: &str) -> bool {
        self.read()
            .get(channel)
            .is_some_and(|m| m.contains_key(uid))
    }

    /// Destroys a channel; returns whether it existed.
    pub fn destroy(&self, channel: &str) -> bool {
        self.write().remove(channel).is_some()
    }

    /// The names of all channels.
    pub fn names(&self) -> Vec<String> {
        self.read().keys().cloned().collect()
    }

    /// Pushes `msg` (as JSON) on `route` to every member: one RPC per
    /// frontend, all at once. Members follow their sessions: one not reached
    /// where the channel had it is looked up on the other frontends; one
    /// whose session moved (a drain, a resume elsewhere) is pushed to there
    /// and recorded there, and one whose session every frontend (the one it
    /// was on among them) says is gone for good leaves the channel. Returns the uids that were not
    /// reached (those that left included).
    pub async fn push<T: Serialize + ?Sized>(
        &self,
        channel: &str,
        route: &str,
        msg: &T,
    ) -> Result<Vec<String>, Error> {
        let body = crate::service::json_body(msg)?;
        let mut by_frontend: HashMap<String, Vec<String>> = HashMap::new();
        if let Some(members) = self.read().get(channel) {
            for (uid, frontend) in members {
                by_frontend
                    .entry(frontend.clone())
                    .or_default()
                    .push(uid.clone());
            }
        }
        let missed = self.push_grouped(by_frontend, route, &body).await;
        let mut missed = match missed.is_empty() {
            true => Vec::new(),
            false => self.follow(channel, route, &body, missed).await,
        };
        missed.sort();
        Ok(missed)
    }

    /// One push per frontend, all at once; returns `(uid, frontend)` of
    /// every member not reached.
    async fn push_grouped(
        &self,
        by_frontend: HashMap<String, Vec<String>>,
        route: &str,
        body: &bytes::Bytes,
    ) -> Vec<(String, String)> {
        let calls = by_frontend.into_iter().map(|(frontend, uids)| {
            let body = body.clone();
            async move {
                let missed = match self.sessions.push_raw_to_uids(&frontend, route, body, uids.clone()).await {
                    Ok(missed) => missed,
                    Err(err) => {
                        tracing::debug!(frontend = %frontend, cause = %session_proxy_protocol::chain(&err), "channel push to a frontend failed");
                        uids
                    }
                };
                missed.into_iter().map(|uid| (uid, frontend.clone())).collect::<Vec<_>>()
            }
        });
        futures::future::join_all(calls)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// Looks up the members a push did not reach where the channel had
    /// them: a moved one is recorded on its new frontend and pushed to
    /// there, one that is gone everywhere leaves. Returns the uids still not
    /// reached.
    async fn follow(
        &self,
        channel: &str,
        route: &str,
        body: &bytes::Bytes,
        missed: Vec<(String, String)>,
    ) -> Vec<String> {
        let lookups = missed.into_iter().map(|(uid, was_on)| async move {
            let found = self.locate(&uid, &was_on).await;
            (uid, was_on, found)
        });
        let mut again: HashMap<String, Vec<String>> = HashMap::new();
        let mut not_reached = Vec::new();
        for (uid, was_on, found) in futures::future::join_all(lookups).await {
            match found {
                Located::On(frontend) if frontend != was_on => {
                    tracing::debug!(%uid, from = %was_on, to = %frontend, "channel member moved");
                    self.moved(channel, &uid, &was_on, &frontend);
                    again.entry(frontend).or_default().push(uid);
                }
                Located::Gone => {
                    tracing::debug!(%uid, "channel member's session ended; it leaves");
                    self.leave_if_on(channel, &uid, &was_on);
                    not_reached.push(uid);
                }
                _ => not_reached.push(uid),
            }
        }
        let still = self.push_grouped(again, route, body).await;
        not_reached.extend(still.into_iter().map(|(uid, _)| uid));
        not_reached
    }

    /// Where `uid`'s session is, asking each frontend this backend knows
    /// until one names it. Gone only when every frontend answered, the one
    /// the channel had it on (`was_on`) among them.
    async fn locate(&self, uid: &str, was_on: &str) -> Located {
        let frontends = self.sessions.frontends();
        let mut everyone_answered = frontends.iter().any(|f| f == was_on);
        for frontend in frontends {
            match self.sessions.user_sessions(&frontend, uid).await {
                Ok(found) => {
                    if let Some(info) = found.iter().find(|i| !i.frontend_id.is_empty()) {
                        return Located::On(info.frontend_id.clone());
                    }
                    if !found.is_empty() {
                        // Stored with no owner: handed over at a drain,
                        // not resumed yet.
                        return Located::Unknown;
                    }
                }
                Err(_) => everyone_answered = false,
            }
        }
        match everyone_answered {
            true => Located::Gone,
            false => Located::Unknown,
        }
    }

    /// Records that `uid` moved from `from` to `to` (unless the channel
    /// changed meanwhile).
    fn moved(&self, channel: &str, uid: &str, from: &str, to: &str) {
        if let Some(frontend) = self
            .write()
            .get_mut(channel)
            .and_then(|m| m.get_mut(uid))
            .filter(|f| f.as_str() == from)
        {
            *frontend = to.to_string();
        }
    }

    /// Removes `uid` if the channel still has it on `on`.
    fn leave_if_on(&self, channel: &str, uid: &str, on: &str) {
        if self.frontend_of(channel, uid).as_deref() == Some(on) {
            self.leave(channel, uid);
        }
    }
}

/// Where a channel member's session is.
enum Located {
    /// On this frontend.
    On(String),
    /// Every frontend answered, the one it was on included, and none has
    /// it: it ended for good.
    Gone,
    /// Not known now (a frontend did not answer, or the store holds it for
    /// the next frontend to resume it).
    Unknown,
}
