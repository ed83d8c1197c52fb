//! Packages in; requests and notifies routed to a local handler or
//! forwarded to a backend, up to the connection's in-flight cap.

use super::super::LocalContext;
use crate::SessionOwner;
use bytes::Bytes;
use futures::stream::FuturesUnordered;
use session_proxy_protocol::client::{
    server_type_of, ClientMessage, HandlerError, MessageType, Package, PackageCodec, Route,
};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use tokio_util::codec::Decoder;
use tracing::debug;

use super::state::Step;
use session_proxy_filters::Call;

/// The future of a request's JSON answer.
type Answer = Pin<Box<dyn Future<Output = Bytes> + Send>>;
use super::*;
use crate::logs::warn_throttled;

impl ClientConn {
    /// Whether as many requests are being handled as the connection may
    /// have, or as many bytes wait for the client as it may have; then no
    /// more packages are decoded or read.
    pub(super) fn at_capacity(&self) -> bool {
        let pending = self.pending.as_ref().map_or(0, FuturesUnordered::len);
        self.state
            .at_capacity(pending, self.out.len(), &self.shared.limits)
    }

    /// Whether the outgoing buffer is at its byte cap.
    pub(super) fn out_full(&self) -> bool {
        self.state.out_full(self.out.len(), &self.shared.limits)
    }

    /// Decodes and handles what was read (`peer`: the client's address), up
    /// to the in-flight cap; the rest stays in `rbuf` until answers go out.
    pub(super) fn on_bytes(&mut self, peer: SocketAddr) -> Result<(), Stop> {
        let handled = self.decode_packages(peer);
        if let Err(Stop::End(reason)) = &handled {
            // Seen at the default level, at most once a second.
            let reason = session_proxy_protocol::text::log_safe(reason);
            warn_throttled!(%peer, %reason, "closing a client for bad input");
        }
        handled
    }

    fn decode_packages(&mut self, peer: SocketAddr) -> Result<(), Stop> {
        loop {
            if self.at_capacity() {
                return Ok(());
            }
            // The client's packages, up to the configured maximum.
            let mut codec = PackageCodec::new(self.shared.config.max_package);
            match codec.decode(&mut self.rbuf) {
                Ok(Some(package)) => self.on_package(package, peer)?,
                Ok(None) => return Ok(()),
                Err(err) => return Err(Stop::End(format!("bad package: {err}"))),
            }
            if self.closing.is_some() {
                return Ok(());
            }
        }
    }

    pub(super) fn on_package(&mut self, package: Package, peer: SocketAddr) -> Result<(), Stop> {
        let now = self.shared.ms_at(tokio::time::Instant::now());
        match self
            .state
            .on_package(package.kind, now, &self.shared.limits)
        {
            Step::Handshake => {
                if let Some(later) = self.on_handshake(&package.body, peer) {
                    return Err(Stop::Later(later));
                }
            }
            Step::Heartbeat => self.write_heartbeat(),
            Step::Message => self.on_message(package.body, peer)?,
            Step::Nothing => debug!(kind = ?package.kind, "package not answered"),
            Step::Close(reason) => return Err(Stop::End(reason)),
        }
        Ok(())
    }

    pub(super) fn on_message(&mut self, body: Bytes, peer: SocketAddr) -> Result<(), String> {
        let msg = ClientMessage::decode(body).map_err(|e| format!("bad message: {e}"))?;
        if let Some(owner) = &self.owner {
            self.shared.sessions.touch(owner.sid());
        }
        let route = match &msg.route {
            Route::Name(name) => Ok(name.clone()),
            Route::Code(code) => self
                .shared
                .dictionary
                .as_ref()
                .and_then(|d| d.route_of.get(code).cloned())
                .ok_or_else(|| format!("unknown route code {code}")),
            Route::None => Err("message without a route".to_string()),
        };
        let body = self.request_body(&route, msg.body);
        match msg.kind {
            MessageType::Request => {
                // Answers in protobuf when the client speaks it and the
                // route's answer has a proto.
                let speaks = route.as_deref().ok().filter(|_| self.state.protobuf());
                let encoder = protobuf::Answer::new(&self.shared, speaks);
                let answer = body.and_then(|body| self.start(route, body, msg.gzip, false, peer));
                let id = msg.id;
                match answer {
                    Ok(fut) => self
                        .pending
                        .get_or_insert_with(FuturesUnordered::new)
                        .push(Box::pin(async move { (id, encoder.encode(fut.await)) })),
                    Err(err) => {
                        let body = encoder.encode(err.to_body());
                        self.write_message(MessageType::Response, id, &Route::None, &body)
                    }
                }
            }
            MessageType::Notify => match body
                .and_then(|body| self.start(route, body, msg.gzip, true, peer))
            {
                Ok(fut) => {
                    // No answer to wait for: on the gateway's tracker, so
                    // shutdown still waits for it (bounded by the deadline).
                    self.shared.tasks.spawn(fut);
                }
                Err(err) => debug!(cause = %session_proxy_protocol::chain(&err), "notify dropped"),
            },
            MessageType::Response | MessageType::Push => {
                return Err("client sent a server-only message type".into())
            }
        }
        Ok(())
    }

    /// A request's body as JSON: decoded from protobuf when the client
    /// speaks it and the route has a proto.
    fn request_body(
        &self,
        route: &Result<String, String>,
        body: Bytes,
    ) -> Result<Bytes, HandlerError> {
        let (Ok(route), true) = (route, self.state.protobuf()) else {
            return Ok(body);
        };
        match self.shared.config.protos.as_ref() {
            Some(protos) if protos.client.has(route) => {
                protobuf::decode_request(protos, route, &body)
            }
            _ => Ok(body),
        }
    }

    /// Starts handling a request or (`notify`) a notify from `peer`, after
    /// the gateway's filters; returns the future of its JSON answer (empty
    /// for a notify forwarded to a backend, which answers nothing), or the
    /// error answer when it cannot even start.
    pub(super) fn start(
        &self,
        route: Result<String, String>,
        body: Bytes,
        gzip: bool,
        notify: bool,
        peer: SocketAddr,
    ) -> Result<Answer, HandlerError> {
        let route = route.map_err(HandlerError::new)?;
        if gzip {
            return Err(HandlerError::new("gzip bodies are not supported"));
        }
        let local = server_type_of(&route)
            .ok_or_else(|| HandlerError::new(format!("invalid route {route:?}")))?
            == self.shared.config.server_type;
        let sid = self
            .owner
            .as_ref()
            .map(SessionOwner::sid)
            .ok_or_else(|| HandlerError::new("no session"))?;
        let filters = &self.shared.filters;
        if !filters.applies(&route) {
            return self.work(route, body, notify, sid, local);
        }
        // Filters see the request in arrival order, before it runs.
        let mut call = Call::new(route.as_str(), sid);
        call.uid = self.shared.sessions.get(sid).and_then(|s| s.uid);
        call.peer = Some(peer.ip());
        let started = filters.start(call);
        let work = self.work(route, body, notify, sid, local);
        let sessions = self.shared.sessions.clone();
        Ok(Box::pin(async move {
            let refusal = match work {
                Ok(work) => match started.around(work).await {
                    Ok(answer) => return answer,
                    Err(refusal) => refusal,
                },
                Err(err) => {
                    drop(started);
                    return err.to_body();
                }
            };
            if refusal.disconnect {
                sessions.kick_by_sid(sid, &refusal.error.message);
            }
            refusal.error.to_body()
        }))
    }

    /// The request's work: its local handler, or its forward to a backend.
    fn work(
        &self,
        route: String,
        body: Bytes,
        notify: bool,
        sid: session_proxy_protocol::SessionId,
        local: bool,
    ) -> Result<Answer, HandlerError> {
        let deadline = self.shared.config.request_deadline;
        if local {
            let handler = self
                .shared
                .handlers
                .get(&route)
                .ok_or_else(|| HandlerError::new(format!("unknown route {route}")))?;
            let ctx = LocalContext {
                sid,
                sessions: self.shared.sessions.clone(),
                backends: self.shared.backends.clone(),
                deadline,
            };
            let metrics = self.shared.route_metrics.get(&route).cloned();
            let started = std::time::Instant::now();
            return Ok(Box::pin(async move {
                let answer = handler(ctx, body).await;
                if let Some(m) = metrics {
                    m.record(started, answer.is_ok());
                }
                match answer {
                    Ok(answer) => answer,
                    Err(err) => err.to_body(),
                }
            }));
        }
        if self.shared.backends.serves_remote(&route) {
            return Err(HandlerError::with_code(
                session_proxy_filters::NOT_FOR_CLIENTS,
                format!("{route} is a remote method, not a client route"),
            ));
        }
        let session = self
            .shared
            .sessions
            .get(sid)
            .ok_or_else(|| HandlerError::new("session closed"))?;
        let backends = self.shared.backends.clone();
        if notify {
            // One way: no slot among the requests in flight, no answer frame.
            return Ok(Box::pin(async move {
                if let Err(err) = backends.notify(&route, session, body, deadline).await {
                    debug!(route = %route, cause = %session_proxy_protocol::chain(&err), "forwarded notify dropped");
                }
                Bytes::new()
            }));
        }
        Ok(Box::pin(async move {
            match backends.forward(&route, session, body, deadline).await {
                Ok(answer) => answer,
                Err(err) => {
                    debug!(route = %route, cause = %session_proxy_protocol::chain(&err), "forwarded request failed");
                    HandlerError::new(err.to_string()).to_body()
                }
            }
        }))
    }
}
