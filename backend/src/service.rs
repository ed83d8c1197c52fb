//! `BackendSessionService`: a backend's door to every frontend's sessions.

use crate::handler::SharedHandlers;
use crate::serve::Dispatcher;
use crate::{BackendConfig, BackendSession, Error, FrontendClient, Handlers};
use bytes::Bytes;
use serde::Serialize;
use session_proxy_protocol::calls::{
    Broadcast, Drain, GetByUid, GetSession, KickBySid, KickByUid, PushToSids, PushToUids,
    UserSessions,
};
use session_proxy_protocol::sync::RwLockUnpoisoned as _;
use session_proxy_protocol::{SessionId, SessionInfo};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Finds sessions on frontends and hands out [`BackendSession`] proxies;
/// serves the client requests frontends forward to it.
///
/// Knows frontends by id and keeps one multiplexed [`FrontendClient`] link
/// to each. Cheap to clone.
#[derive(Clone, Debug)]
pub struct BackendSessionService {
    inner: Arc<Inner>,
}

struct Inner {
    /// Settings for every link this service opens (validated).
    config: BackendConfig,
    /// Handlers for forwarded client requests, shared by every link.
    handlers: SharedHandlers,
    /// The inbound side of every link: runs handlers on its own tracker.
    dispatcher: Arc<Dispatcher>,
    /// Every link's supervisor task.
    links: TaskTracker,
    /// Stops every link (each link's token is a child of this one).
    stop: CancellationToken,
    /// `frontend id -> client`. Read on every call, written when the
    /// cluster's membership changes.
    frontends: RwLock<HashMap<String, FrontendClient>>,
    /// `frontend id -> server type`, for frontends added with one; used to
    /// aim broadcasts at one type of frontend.
    frontend_types: RwLock<HashMap<String, String>>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendSessionService")
            .field("node_id", &self.config.node_id)
            .field("server_type", &self.config.server_type)
            .finish_non_exhaustive()
    }
}

impl BackendSessionService {
    /// A service with no frontends yet. Fails with [`Error::Config`] naming
    /// the first field of `config` that cannot work.
    pub fn new(config: BackendConfig) -> Result<Self, Error> {
        config.validate()?;
        let handlers = SharedHandlers::default();
        let dispatcher = Arc::new(Dispatcher {
            handlers: handlers.clone(),
            tasks: TaskTracker::new(),
            draining: CancellationToken::new(),
            filters: Default::default(),
            remotes: Default::default(),
            announced: tokio::sync::watch::Sender::new(Arc::default()),
        });
        Ok(BackendSessionService {
            inner: Arc::new(Inner {
                config,
                handlers,
                dispatcher,
                links: TaskTracker::new(),
                stop: CancellationToken::new(),
                frontends: RwLock::new(HashMap::new()),
                frontend_types: RwLock::new(HashMap::new()),
            }),
        })
    }

    /// The settings it was built with (its id and server type among them).
    pub fn config(&self) -> &BackendConfig {
        &self.inner.config
    }

    /// A service that also serves the client requests frontends forward to
    /// it: `config.server_type` names the server type it handles (e.g.
    /// `"chat"`), and `handlers` its routes.
    pub fn serving(config: BackendConfig, handlers: Handlers) -> Result<Self, Error> {
        let service = Self::new(config)?;
        service.serve(handlers);
        Ok(service)
    }

    /// Sets (or replaces) the handlers of forwarded client requests, on every
    /// link at once. Handlers often need the service itself (to push, to
    /// reach channels): build the service, then its handlers, then call
    /// this.
    pub fn serve(&self, handlers: Handlers) {
        *self.inner.handlers.write_unpoisoned() = crate::handler::Served::new(handlers);
    }

    /// Runs `filter` on every forwarded request whose route starts with
    /// `prefix` (`""`: all) before its handler, in the order filters are
    /// added; kept when [`serve`](Self::serve) replaces the handlers. A
    /// refused request is answered with the filter's code and message, and
    /// a refusal that says so kicks the session (see
    /// [`session_proxy_filters`]).
    ///
    /// ```
    /// use session_proxy_backend::{BackendConfig, BackendSessionService};
    /// use session_proxy_filters::{Serial, Timeout};
    ///
    /// let service = BackendSessionService::new(BackendConfig::default()).expect("valid");
    /// // One request at a time per player in a room; none longer than 2 s.
    /// service
    ///     .filter("room.", Serial::new())
    ///     .filter("room.", Timeout(std::time::Duration::from_secs(2)));
    /// ```
    pub fn filter(&self, prefix: &str, filter: impl session_proxy_filters::Filter) -> &Self {
        use session_proxy_protocol::sync::RwLockUnpoisoned as _;
        self.inner
            .dispatcher
            .filters
            .write_unpoisoned()
            .add(prefix, filter);
        self
    }

    /// Adds (or re-points) a frontend. The link is opened in the background;
    /// calls wait for it up to their deadline, and [`ready`](Self::ready)
    /// waits until it is up. Must be called within a tokio runtime.
    pub fn add_frontend(&self, frontend_id: &str, addr: impl Into<String>) {
        let inbound: Arc<dyn crate::link::Inbound> = self.inner.dispatcher.clone();
        let client = FrontendClient::open(
            frontend_id,
            addr.into(),
            self.inner.config.clone(),
            Some(inbound),
            &self.inner.links,
            self.inner.stop.child_token(),
        );
        self.write().insert(frontend_id.to_string(), client);
    }

    /// Like [`add_frontend`](Self::add_frontend), recording the frontend's
    /// server type (e.g. `"connector"`) so broadcasts can aim at it.
    pub fn add_frontend_of_type(
        &self,
        frontend_id: &str,
        server_type: &str,
        addr: impl Into<String>,
    ) {
        self.add_frontend(frontend_id, addr);
        self.inner
            .frontend_types
            .write_unpoisoned()
            .insert(frontend_id.to_string(), server_type.to_string());
    }

    /// Waits until the link to every known frontend is up (so each of them
    /// forwards requests here), for at most `within`. The error names a
    /// frontend that was not reached, and why.
    pub async fn ready(&self, within: Duration) -> Result<(), Error> {
        let clients: Vec<FrontendClient> = self.read().values().cloned().collect();
        let waits = clients.iter().map(|c| c.connected(within));
        futures::future::try_join_all(waits).await.map(|_| ())
    }

    /// How many forwarded requests this backend's handlers are running now.
    pub fn requests_running(&self) -> usize {
        self.inner.dispatcher.tasks.len()
    }

    /// Stops within `drain`: every frontend is told this backend drains
    /// (it forwards no new requests here and routes them to its peers), the
    /// requests already running get the rest of `drain` to finish and
    /// answer, then every link closes. Returns whether everything ended in
    /// time. Also breaks the cycle of handlers that hold this service.
    pub async fn shutdown(&self, drain: Duration) -> bool {
        let until = Instant::now() + drain;
        // Frontends stop picking this backend first, so nothing they send
        // from now on has to be refused.
        let clients: Vec<FrontendClient> = self.read().values().cloned().collect();
        let tell = (drain / 4).min(Duration::from_secs(1));
        let told = clients.iter().map(|c| c.call_with_deadline(Drain {}, tell));
        for result in futures::future::join_all(told).await {
            if let Err(err) = result {
                tracing::debug!(cause = %session_proxy_protocol::chain(&err), "a frontend did not hear of the drain");
            }
        }
        if !clients.is_empty() {
            // A request a frontend picked just before it heard is still on
            // the wire: let it in before new ones are refused.
            tokio::time::sleep((drain / 20).min(Duration::from_millis(50))).await;
        }
        let d = &self.inner.dispatcher;
        d.draining.cancel();
        d.tasks.close();
        let handlers_done = tokio::time::timeout_at(until, d.tasks.wait()).await.is_ok();
        self.close();
        self.inner.links.close();
        let links_done = tokio::time::timeout_at(until, self.inner.links.wait())
            .await
            .is_ok();
        handlers_done && links_done
    }

    /// Drops every handler and every frontend link at once, without waiting
    /// for running handlers (see [`shutdown`](Self::shutdown) for that).
    /// Handlers often hold a clone of this service (a reference cycle); this
    /// breaks it.
    pub fn close(&self) {
        self.inner.dispatcher.draining.cancel();
        self.inner.stop.cancel();
        *self.inner.handlers.write_unpoisoned() = crate::handler::Served::default();
        self.write().clear();
    }

    /// Forgets a frontend and closes its connection (once no call holds it).
    pub fn remove_frontend(&self, frontend_id: &str) -> bool {
        self.inner
            .frontend_types
            .write_unpoisoned()
            .remove(frontend_id);
        self.write().remove(frontend_id).is_some()
    }

    /// The ids of the known frontends.
    pub fn frontends(&self) -> Vec<String> {
        self.read().keys().cloned().collect()
    }

    /// A connected frontend's client (the first by id), else any known one.
    pub(crate) fn any_frontend(&self) -> Option<FrontendClient> {
        let frontends = self.read();
        let mut ids: Vec<&String> = frontends.keys().collect();
        ids.sort();
        ids.iter()
            .find(|id| frontends[**id].is_connected())
            .or(ids.first())
            .map(|id| frontends[*id].clone())
    }

    /// The dispatcher of the requests frontends send.
    pub(crate) fn dispatcher(&self) -> &crate::serve::Dispatcher {
        &self.inner.dispatcher
    }

    /// The client of one frontend, for pipelined or raw calls.
    pub fn client(&self, frontend_id: &str) -> Result<FrontendClient, Error> {
        self.read()
            .get(frontend_id)
            .cloned()
            .ok_or_else(|| Error::UnknownFrontend(frontend_id.to_string()))
    }

    pub(crate) fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, FrontendClient>> {
        // Every write is a single insert or remove: a poisoned map is whole.
        self.inner.frontends.read_unpoisoned()
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, FrontendClient>> {
        self.inner.frontends.write_unpoisoned()
    }

    /// A proxy for session `sid` of frontend `frontend_id`, or `None` when
    /// that frontend has no such session.
    pub async fn get(
        &self,
        frontend_id: &str,
        sid: SessionId,
    ) -> Result<Option<BackendSession>, Error> {
        let client = self.client(frontend_id)?;
        let snapshot = client.call(GetSession { sid }).await?;
        Ok(snapshot.map(|s| BackendSession::from_snapshot(client, s)))
    }

    /// Proxies for every session of `uid` on frontend `frontend_id`.
    pub async fn get_by_uid(
        &self,
        frontend_id: &str,
        uid: &str,
    ) -> Result<Vec<BackendSession>, Error> {
        let client = self.client(frontend_id)?;
        let list = client
            .call(GetByUid {
                uid: uid.to_string(),
            })
            .await?;
        Ok(list
            .into_iter()
            .map(|s| BackendSession::from_snapshot(client.clone(), s))
            .collect())
    }

    /// Kicks one session; returns whether it was open.
    pub async fn kick_by_sid(
        &self,
        frontend_id: &str,
        sid: SessionId,
        reason: &str,
    ) -> Result<bool, Error> {
        let kicked = self
            .client(frontend_id)?
            .call(KickBySid {
                sid,
                reason: reason.to_string(),
            })
            .await?;
        Ok(kicked > 0)
    }

    /// Kicks every session of `uid` on one frontend; returns how many.
    pub async fn kick_by_uid(
        &self,
        frontend_id: &str,
        uid: &str,
        reason: &str,
    ) -> Result<usize, Error> {
        let kicked = self
            .client(frontend_id)?
            .call(KickByUid {
                uid: uid.to_string(),
                reason: reason.to_string(),
            })
            .await?;
        Ok(kicked as usize)
    }

    /// Pushes `msg` (as JSON) on `route` to sessions of one frontend.
    /// Returns the sessions it did not reach.
    pub async fn push_to_sids<T: Serialize + ?Sized>(
        &self,
        frontend_id: &str,
        route: &str,
        msg: &T,
        sids: Vec<SessionId>,
    ) -> Result<Vec<SessionId>, Error> {
        let body = json_body(msg)?;
        self.client(frontend_id)?
            .call(PushToSids {
                route: route.to_string(),
                body,
                sids,
            })
            .await
    }

    /// Pushes `msg` (as JSON) on `route` to every session of each uid on one
    /// frontend, once per session. Returns the uids with no session there.
    pub async fn push_to_uids<T: Serialize + ?Sized>(
        &self,
        frontend_id: &str,
        route: &str,
        msg: &T,
        uids: Vec<String>,
    ) -> Result<Vec<String>, Error> {
        self.push_raw_to_uids(frontend_id, route, json_body(msg)?, uids)
            .await
    }

    pub(crate) async fn push_raw_to_uids(
        &self,
        frontend_id: &str,
        route: &str,
        body: Bytes,
        uids: Vec<String>,
    ) -> Result<Vec<String>, Error> {
        self.client(frontend_id)?
            .call(PushToUids {
                route: route.to_string(),
                body,
                uids,
            })
            .await
    }

    /// Pushes `msg` (as JSON) on `route` to every session of the known
    /// frontends of `server_type` (every known frontend for `None`) — or only
    /// to their bound sessions — one copy per session. Returns how many
    /// sessions it reached; a frontend that fails is logged and counted as
    /// zero.
    pub async fn broadcast<T: Serialize + ?Sized>(
        &self,
        server_type: Option<&str>,
        route: &str,
        msg: &T,
        bound_only: bool,
    ) -> Result<usize, Error> {
        let body = json_body(msg)?;
        let clients: Vec<FrontendClient> = {
            let types = self.inner.frontend_types.read_unpoisoned();
            self.read()
                .iter()
                .filter(|(id, _)| {
                    server_type.is_none_or(|t| types.get(*id).is_some_and(|x| x == t))
                })
                .map(|(_, c)| c.clone())
                .collect()
        };
        let calls = clients.into_iter().map(|client| {
            let call = Broadcast {
                route: route.to_string(),
                body: body.clone(),
                bound_only,
            };
            async move {
                match client.call(call).await {
                    Ok(n) => n as usize,
                    Err(err) => {
                        tracing::warn!(frontend = %client.frontend_id(), cause = %session_proxy_protocol::chain(&err), "broadcast to a frontend failed");
                        0
                    }
                }
            }
        });
        Ok(futures::future::join_all(calls).await.into_iter().sum())
    }

    /// Every session of `uid` on every frontend that shares the session
    /// store, with metadata (created, last active, address, client type and
    /// version, device, parked or connected), asked of one frontend.
    pub async fn user_sessions(
        &self,
        frontend_id: &str,
        uid: &str,
    ) -> Result<Vec<SessionInfo>, Error> {
        self.client(frontend_id)?
            .call(UserSessions {
                uid: uid.to_string(),
            })
            .await
    }
}

pub(crate) fn json_body<T: Serialize + ?Sized>(msg: &T) -> Result<Bytes, Error> {
    serde_json::to_vec(msg)
        .map(Bytes::from)
        .map_err(Error::EncodeJson)
}
