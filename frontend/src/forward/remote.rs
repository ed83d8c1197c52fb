//! Calls between servers that this frontend relays: a backend's (or a
//! local handler's) remote call goes to the callee's link, picked by key,
//! by node, by the player's binding, or to every node of the type.

use super::link::exchange_call;
use super::{pick_by_key, BackendRegistry};
use bytes::Bytes;
use session_proxy_protocol::client::{server_type_of, HandlerError};
use session_proxy_protocol::text::log_safe;
use session_proxy_protocol::{ErrorCode, Remote, RpcError, SessionSnapshot, Target};
use std::time::Duration;

impl BackendRegistry {
    /// Calls the remote method `route` (`serverType.remoteName.method`) on
    /// the backend of its type that `target` picks, about `session` if
    /// given (the callee gets it, and its changes and pushes come back
    /// here), within `deadline`. A failure is the error to answer a client
    /// with: 404 no such server or method, 504 past the deadline, 503 the
    /// callee draining, or the method's own code and message.
    pub async fn remote<A: serde::Serialize + ?Sized, R: serde::de::DeserializeOwned>(
        &self,
        route: &str,
        target: Target,
        session: Option<SessionSnapshot>,
        args: &A,
        deadline: Duration,
    ) -> Result<R, HandlerError> {
        let server_type = server_type_of(route)
            .ok_or_else(|| HandlerError::with_code(404, format!("{route:?} is not a route")))?;
        let caller = session
            .as_ref()
            .map_or_else(String::new, |s| s.frontend_id.clone());
        let call = Remote::new(route, &caller, session, args)
            .map_err(|e| HandlerError::new(format!("arguments of {route}: {e}")))?;
        let reply = self
            .relay(server_type, &target, call, deadline)
            .await
            .map_err(|err| {
                let code = match err.code {
                    ErrorCode::NoBackend | ErrorCode::UnknownRoute => 404,
                    ErrorCode::DeadlineExceeded => 504,
                    ErrorCode::Unavailable => 503,
                    _ => 500,
                };
                HandlerError::with_code(code, format!("{route}: {err}"))
            })?;
        match Remote::answer(reply) {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(callee)) => Err(HandlerError::with_code(callee.code, callee.message)),
            Err(err) => Err(HandlerError::new(format!("answer of {route}: {err}"))),
        }
    }

    /// Relays a backend's remote call to the backend of `server_type` that
    /// `target` picks (a key's owner by rendezvous hash, a named node, or
    /// the player's node), within `deadline`; returns the callee's reply
    /// bytes untouched.
    pub(crate) async fn relay(
        &self,
        server_type: &str,
        target: &Target,
        call: Remote,
        deadline: Duration,
    ) -> Result<Bytes, RpcError> {
        if let (Target::Uid(uid), Some(sticky)) = (target, self.sticky(server_type)) {
            let started = std::time::Instant::now();
            let choose = |ids: &[String]| pick_by_key(uid.as_bytes(), ids);
            let session = call.session.as_ref();
            let placed = self
                .place(&sticky, server_type, uid, choose, session, deadline)
                .await?;
            let left = deadline.saturating_sub(started.elapsed());
            return exchange_call(&placed.link, call.into(), left).await;
        }
        let candidates = self.candidates(server_type)?;
        let index = match target {
            Target::Key(key) | Target::Uid(key) => pick_by_key(key.as_bytes(), &candidates.ids),
            Target::Node(id) => candidates.ids.iter().position(|n| n == id),
        };
        let link = index
            .and_then(|i| candidates.links.get(i))
            .ok_or_else(|| match target {
                Target::Node(id) => RpcError::new(
                    ErrorCode::NoBackend,
                    format!("no {server_type} server {} is connected", log_safe(id)),
                ),
                Target::Key(_) | Target::Uid(_) => {
                    RpcError::new(ErrorCode::NoBackend, "no server picked")
                }
            })?;
        exchange_call(link, call.into(), deadline).await
    }

    /// Relays a remote call to every backend of `server_type` at once; each
    /// node's id and outcome.
    pub(crate) async fn relay_all(
        &self,
        server_type: &str,
        call: Remote,
        deadline: Duration,
    ) -> Result<Vec<(String, Result<Bytes, RpcError>)>, RpcError> {
        let candidates = self.candidates(server_type)?;
        let calls = candidates.links.iter().map(|link| {
            let call = call.clone();
            async move {
                let outcome = exchange_call(link, call.into(), deadline).await;
                (link.node_id.clone(), outcome)
            }
        });
        Ok(futures::future::join_all(calls).await)
    }
}
