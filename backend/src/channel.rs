//! Channels: named groups of users, kept on a backend, pushed to at once.

use crate::{BackendSessionService, Error};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

/// All channels of one backend. Cheap to clone.
///
/// A channel maps each member uid to the frontend its session lives on. A
/// push to a channel makes one RPC per frontend (not one per member) and
/// reports the uids it did not reach.
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
        self.channels.write().unwrap_or_else(|e| e.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, BTreeMap<String, String>>> {
        self.channels.read().unwrap_or_else(|e| e.into_inner())
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
    /// frontend, all at once. Returns the uids that were not reached — no
    /// session on their frontend, or their frontend failed or is unknown.
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
        let calls = by_frontend.into_iter().map(|(frontend, uids)| {
            let body = body.clone();
            async move {
                match self.sessions.push_raw_to_uids(&frontend, route, body, uids.clone()).await {
                    Ok(missed) => missed,
                    Err(err) => {
                        tracing::warn!(frontend = %frontend, cause = %err, "channel push to a frontend failed");
                        uids
                    }
                }
            }
        });
        let mut missed: Vec<String> = futures::future::join_all(calls)
            .await
            .into_iter()
            .flatten()
            .collect();
        missed.sort();
        Ok(missed)
    }
}
