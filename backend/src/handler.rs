//! Handlers for the client requests that frontends forward to this backend.

use crate::BackendSession;
pub use session_proxy_protocol::client::HandlerError;
use session_proxy_protocol::client::RouteTable;
use std::sync::Arc;

/// A handler table shared by a backend service and all its links, so it can
/// be set (or replaced) after the links are open.
pub(crate) type SharedHandlers = Arc<std::sync::RwLock<Served>>;

/// The handlers being served, with each route's metrics.
#[derive(Default)]
pub(crate) struct Served {
    pub(crate) table: Handlers,
    pub(crate) metrics: std::collections::HashMap<String, crate::metrics::HandlerMetrics>,
}

impl Served {
    pub(crate) fn new(table: Handlers) -> Self {
        Served {
            metrics: crate::metrics::for_routes(table.routes()),
            table,
        }
    }
}

/// Routes (`serverType.handler.method`) to handlers that get the request's
/// [`BackendSession`] and its typed JSON body.
///
/// ```
/// use session_proxy_backend::{Handlers, HandlerError};
/// use serde::Deserialize;
///
/// #[derive(Deserialize)]
/// struct Send { content: String }
///
/// let mut handlers = Handlers::new();
/// handlers.add("chat.chatHandler.send", |mut session, body: Send| async move {
///     if body.content.is_empty() {
///         return Err(HandlerError::with_code(400, "empty message"));
///     }
///     session.set("last", &body.content)?;   // backend errors convert with `?`
///     session.push("last").await?;
///     Ok(serde_json::json!({ "from": session.uid(), "len": body.content.len() }))
/// });
/// assert!(handlers.get("chat.chatHandler.send").is_some());
/// ```
pub type Handlers = RouteTable<BackendSession>;

impl From<crate::Error> for HandlerError {
    /// A backend error as the client sees it: code 500 and the error's
    /// message (sessions are named by their redacted tag only).
    fn from(err: crate::Error) -> Self {
        HandlerError::new(err.to_string())
    }
}
