//! `BackendSessionService`: a backend's door to every frontend's sessions.

use crate::{BackendSession, ClientConfig, Error, FrontendClient};
use session_proxy_protocol::{Call, Reply, SessionId};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// Finds sessions on frontends and hands out [`BackendSession`] proxies.
///
/// Knows frontends by id and keeps one multiplexed [`FrontendClient`] to
/// each. Cheap to clone.
#[derive(Clone, Debug)]
pub struct BackendSessionService {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Settings for every client this service opens.
    config: ClientConfig,
    /// `frontend id -> client`. Read on every call, written when the
    /// cluster's membership changes.
    frontends: RwLock<HashMap<String, FrontendClient>>,
}

impl BackendSessionService {
    /// A service with no frontends yet.
    pub fn new(config: ClientConfig) -> Self {
        BackendSessionService {
            inner: Arc::new(Inner {
                config,
                frontends: RwLock::new(HashMap::new()),
            }),
        }
    }

    /// Adds (or re-points) a frontend. The connection is opened in the
    /// background; calls wait for it up to their deadline. Must be called
    /// within a tokio runtime.
    pub fn add_frontend(&self, frontend_id: &str, addr: impl Into<String>) {
        let client = FrontendClient::connect(frontend_id, addr.into(), self.inner.config.clone());
        self.write().insert(frontend_id.to_string(), client);
    }

    /// Forgets a frontend and closes its connection (once no call holds it).
    pub fn remove_frontend(&self, frontend_id: &str) -> bool {
        self.write().remove(frontend_id).is_some()
    }

    /// The ids of the known frontends.
    pub fn frontends(&self) -> Vec<String> {
        self.read().keys().cloned().collect()
    }

    /// The client of one frontend, for pipelined or raw calls.
    pub fn client(&self, frontend_id: &str) -> Result<FrontendClient, Error> {
        self.read()
            .get(frontend_id)
            .cloned()
            .ok_or_else(|| Error::UnknownFrontend(frontend_id.to_string()))
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, FrontendClient>> {
        // Every write is a single insert or remove: a poisoned map is whole.
        self.inner
            .frontends
            .read()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, FrontendClient>> {
        self.inner
            .frontends
            .write()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// A proxy for session `sid` of frontend `frontend_id`, or `None` when
    /// that frontend has no such session.
    pub async fn get(
        &self,
        frontend_id: &str,
        sid: SessionId,
    ) -> Result<Option<BackendSession>, Error> {
        let client = self.client(frontend_id)?;
        match client.call(Call::GetSession { sid }).await? {
            Reply::Session(snapshot) => {
                Ok(snapshot.map(|s| BackendSession::from_snapshot(client, s)))
            }
            _ => Err(unexpected(frontend_id, "get")),
        }
    }

    /// Proxies for every session of `uid` on frontend `frontend_id`.
    pub async fn get_by_uid(
        &self,
        frontend_id: &str,
        uid: &str,
    ) -> Result<Vec<BackendSession>, Error> {
        let client = self.client(frontend_id)?;
        match client
            .call(Call::GetByUid {
                uid: uid.to_string(),
            })
            .await?
        {
            Reply::Sessions(list) => Ok(list
                .into_iter()
                .map(|s| BackendSession::from_snapshot(client.clone(), s))
                .collect()),
            _ => Err(unexpected(frontend_id, "get_by_uid")),
        }
    }

    /// Kicks one session; returns whether it was open.
    pub async fn kick_by_sid(
        &self,
        frontend_id: &str,
        sid: SessionId,
        reason: &str,
    ) -> Result<bool, Error> {
        let client = self.client(frontend_id)?;
        match client
            .call(Call::KickBySid {
                sid,
                reason: reason.to_string(),
            })
            .await?
        {
            Reply::Kicked(n) => Ok(n > 0),
            _ => Err(unexpected(frontend_id, "kick_by_sid")),
        }
    }

    /// Kicks every session of `uid` on one frontend; returns how many.
    pub async fn kick_by_uid(
        &self,
        frontend_id: &str,
        uid: &str,
        reason: &str,
    ) -> Result<usize, Error> {
        let client = self.client(frontend_id)?;
        match client
            .call(Call::KickByUid {
                uid: uid.to_string(),
                reason: reason.to_string(),
            })
            .await?
        {
            Reply::Kicked(n) => Ok(n as usize),
            _ => Err(unexpected(frontend_id, "kick_by_uid")),
        }
    }
}

fn unexpected(frontend_id: &str, call: &'static str) -> Error {
    Error::UnexpectedReply {
        frontend: frontend_id.to_string(),
        call,
    }
}
