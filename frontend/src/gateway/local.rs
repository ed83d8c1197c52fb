//! Handlers for routes of the frontend's own server type, run on the frontend.

use crate::{BackendRegistry, SessionService};
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;
use session_proxy_protocol::client::{decode_json_body, encode_json_body, HandlerError};
use session_proxy_protocol::{SessionId, SessionSnapshot};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
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
}

/// The future a boxed frontend handler returns: the JSON response body.
pub type LocalFuture = Pin<Box<dyn Future<Output = Result<Bytes, HandlerError>> + Send>>;

/// A frontend handler with its types erased.
pub type LocalHandler = Arc<dyn Fn(LocalContext, Bytes) -> LocalFuture + Send + Sync>;

/// Routes of the frontend's own server type.
#[derive(Clone, Default)]
pub struct LocalHandlers {
    /// `route -> handler`.
    routes: HashMap<String, LocalHandler>,
}

impl std::fmt::Debug for LocalHandlers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.routes.keys()).finish()
    }
}

impl LocalHandlers {
    /// Registers a typed handler (JSON body in, JSON answer out; a body that
    /// does not decode gets a code-400 response).
    pub fn add<B, R, F, Fut>(&mut self, route: &str, handler: F) -> &mut Self
    where
        B: DeserializeOwned + Send + 'static,
        R: Serialize + Send + 'static,
        F: Fn(LocalContext, B) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, HandlerError>> + Send + 'static,
    {
        let handler = Arc::new(handler);
        let boxed: LocalHandler = Arc::new(move |ctx, body: Bytes| {
            let handler = handler.clone();
            Box::pin(async move {
                let input: B = decode_json_body(&body)?;
                let output = handler(ctx, input).await?;
                encode_json_body(&output)
            })
        });
        self.routes.insert(route.to_string(), boxed);
        self
    }

    /// The handler of a route.
    pub fn get(&self, route: &str) -> Option<LocalHandler> {
        self.routes.get(route).cloned()
    }

    /// The registered routes.
    pub fn routes(&self) -> impl Iterator<Item = &str> {
        self.routes.keys().map(String::as_str)
    }
}
