//! Handlers for the client requests that frontends forward to this backend.

use crate::BackendSession;
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;
pub use session_proxy_protocol::client::HandlerError;
use session_proxy_protocol::client::{decode_json_body, encode_json_body};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// The future a boxed handler returns: the JSON response body.
pub type HandlerFuture = Pin<Box<dyn Future<Output = Result<Bytes, HandlerError>> + Send>>;

/// A handler with its types erased: session and raw JSON body in, JSON out.
pub type BoxedHandler = Arc<dyn Fn(BackendSession, Bytes) -> HandlerFuture + Send + Sync>;

/// A handler table shared by a backend service and all its connections, so
/// it can be set (or replaced) after the connections are open.
pub type SharedHandlers = Arc<std::sync::RwLock<Handlers>>;

/// Routes (`serverType.handler.method`) to handlers.
///
/// ```
/// use session_proxy_backend::{Handlers, HandlerError};
/// use serde::Deserialize;
///
/// #[derive(Deserialize)]
/// struct Send { content: String }
///
/// let mut handlers = Handlers::new();
/// handlers.add("chat.chatHandler.send", |session, body: Send| async move {
///     if body.content.is_empty() {
///         return Err(HandlerError::with_code(400, "empty message"));
///     }
///     Ok(serde_json::json!({ "from": session.uid(), "len": body.content.len() }))
/// });
/// assert!(handlers.get("chat.chatHandler.send").is_some());
/// ```
#[derive(Clone, Default)]
pub struct Handlers {
    /// `route -> handler`.
    routes: HashMap<String, BoxedHandler>,
}

impl std::fmt::Debug for Handlers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.routes.keys()).finish()
    }
}

impl Handlers {
    /// No routes.
    pub fn new() -> Self {
        Handlers::default()
    }

    /// Registers a typed handler: the client's JSON body is decoded into `B`
    /// (an empty body reads as `null`), the handler's `R` is encoded back to
    /// JSON. A body that does not decode gets a code-400 response without
    /// calling the handler.
    pub fn add<B, R, F, Fut>(&mut self, route: &str, handler: F) -> &mut Self
    where
        B: DeserializeOwned + Send + 'static,
        R: Serialize + Send + 'static,
        F: Fn(BackendSession, B) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, HandlerError>> + Send + 'static,
    {
        let handler = Arc::new(handler);
        let boxed: BoxedHandler = Arc::new(move |session, body: Bytes| {
            let handler = handler.clone();
            Box::pin(async move {
                let input: B = decode_json_body(&body)?;
                let output = handler(session, input).await?;
                encode_json_body(&output)
            })
        });
        self.routes.insert(route.to_string(), boxed);
        self
    }

    /// Registers a handler that works on raw JSON bytes.
    pub fn add_raw(&mut self, route: &str, handler: BoxedHandler) -> &mut Self {
        self.routes.insert(route.to_string(), handler);
        self
    }

    /// The handler of a route.
    pub fn get(&self, route: &str) -> Option<BoxedHandler> {
        self.routes.get(route).cloned()
    }

    /// The registered routes.
    pub fn routes(&self) -> impl Iterator<Item = &str> {
        self.routes.keys().map(String::as_str)
    }
}
