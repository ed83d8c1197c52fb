//! Handlers for routes of the frontend's own server type, run on the frontend.

use crate::{BackendRegistry, SessionService};
use serde::de::DeserializeOwned;
use serde::Serialize;
use session_proxy_protocol::client::{encode_json_body, HandlerError, RouteTable};
use session_proxy_protocol::{SessionId, SessionSnapshot};
use std::time::Duration;

/// What a frontend handler gets besides the body: its session and the ways
/// to reach the rest of the cluster.
#[derive(Clone, Debug)]
pub struct LocalContext {
    /// The session of the client that sent the request.
    pub sid: SessionId,
    /// This frontend's sessions (bind, settings, kicks …).
    pub sessions: SessionService,
    /// The connected backends, to forward to.
    pub backends: BackendRegistry,
    /// The deadline for calls made on the client's behalf.
    pub deadline: Duration,
}

impl LocalContext {
    /// The session as it is now.
    pub fn session(&self) -> Result<SessionSnapshot, HandlerError> {
        self.sessions
            .get(self.sid)
            .ok_or_else(|| HandlerError::new("session closed"))
    }

    /// Calls `route` on a backend (chosen by the router, with this session's
    /// current snapshot) and decodes its JSON answer.
    pub async fn forward<B: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        route: &str,
        body: &B,
    ) -> Result<R, HandlerError> {
        let body = encode_json_body(body)?;
        let answer = self
            .backends
            .forward(route, self.session()?, body, self.deadline)
            .await
            .map_err(|e| HandlerError::new(e.to_string()))?;
        serde_json::from_slice(&answer)
            .map_err(|e| HandlerError::new(format!("backend answer does not fit: {e}")))
    }

    /// Calls the remote method `route` on the node of its type that owns
    /// `key`, about this session (the callee works on it here), and
    /// returns its typed answer; a failure is the error to answer the
    /// client with (see [`BackendRegistry::remote`]).
    pub async fn remote<A: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        route: &str,
        key: &str,
        args: &A,
    ) -> Result<R, HandlerError> {
        let target = session_proxy_protocol::Target::Key(key.to_string());
        self.backends
            .remote(route, target, Some(self.session()?), args, self.deadline)
            .await
    }
}

/// Routes of the frontend's own server type: handlers that get a
/// [`LocalContext`] and the request's typed JSON body.
pub type LocalHandlers = RouteTable<LocalContext>;

impl From<crate::Error> for HandlerError {
    /// A frontend error as the client sees it: code 500 and the error's
    /// message (sessions are named by their redacted tag only).
    fn from(err: crate::Error) -> Self {
        HandlerError::new(err.to_string())
    }
}
