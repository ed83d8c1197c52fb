//! A table of request handlers by route, shared by the frontend's local
//! routes and the backend's forwarded ones: typed JSON bodies in and out,
//! with the handler's context type (`C`) chosen by the side that runs it.

use super::{decode_json_body, encode_json_body, HandlerError};
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// The future a boxed handler returns: the JSON response body.
pub type RouteFuture = Pin<Box<dyn Future<Output = Result<Bytes, HandlerError>> + Send>>;

/// A handler with its types erased: context and raw JSON body in, JSON out.
pub type RouteHandler<C> = Arc<dyn Fn(C, Bytes) -> RouteFuture + Send + Sync>;

/// Routes (`serverType.handler.method`) to handlers that take a `C`.
pub struct RouteTable<C> {
    /// `route -> handler`.
    routes: HashMap<String, RouteHandler<C>>,
}

impl<C> Clone for RouteTable<C> {
    fn clone(&self) -> Self {
        RouteTable {
            routes: self.routes.clone(),
        }
    }
}

impl<C> Default for RouteTable<C> {
    fn default() -> Self {
        RouteTable {
            routes: HashMap::new(),
        }
    }
}

impl<C> std::fmt::Debug for RouteTable<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.routes.keys()).finish()
    }
}

impl<C: Send + 'static> RouteTable<C> {
    /// No routes.
    pub fn new() -> Self {
        RouteTable::default()
    }

    /// Registers a typed handler: the client's JSON body is decoded into `B`
    /// (an empty body reads as `null`), the handler's `R` is encoded back to
    /// JSON. A body that does not decode gets a code-400 response without
    /// calling the handler.
    pub fn add<B, R, F, Fut>(&mut self, route: &str, handler: F) -> &mut Self
    where
        B: DeserializeOwned + Send + 'static,
        R: Serialize + Send + 'static,
        F: Fn(C, B) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, HandlerError>> + Send + 'static,
    {
        let handler = Arc::new(handler);
        let boxed: RouteHandler<C> = Arc::new(move |ctx, body: Bytes| {
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

    /// Registers a handler that works on raw JSON bytes.
    pub fn add_raw(&mut self, route: &str, handler: RouteHandler<C>) -> &mut Self {
        self.routes.insert(route.to_string(), handler);
        self
    }

    /// The handler of a route.
    pub fn get(&self, route: &str) -> Option<RouteHandler<C>> {
        self.routes.get(route).cloned()
    }

    /// The registered routes.
    pub fn routes(&self) -> impl Iterator<Item = &str> {
        self.routes.keys().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_handlers_decode_their_body_and_refuse_one_that_does_not_fit() {
        let mut table = RouteTable::<u32>::new();
        table.add("a.b.add", |ctx: u32, n: u32| async move { Ok(ctx + n) });
        let handler = table.get("a.b.add").expect("registered");
        let rt = tokio_test_block_on(handler(2, Bytes::from_static(b"40")));
        assert_eq!(rt.expect("fits"), Bytes::from_static(b"42"));
        let err =
            tokio_test_block_on(handler(2, Bytes::from_static(b"\"x\""))).expect_err("refused");
        assert_eq!(err.code, 400);
        assert!(table.get("a.b.other").is_none());
        assert_eq!(table.routes().collect::<Vec<_>>(), ["a.b.add"]);
    }

    /// Polls a future that never waits (the handlers above do not).
    fn tokio_test_block_on<F: Future>(f: F) -> F::Output {
        let mut f = std::pin::pin!(f);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match f.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(v) => v,
            std::task::Poll::Pending => panic!("the handler waited"),
        }
    }
}
