//! The RPC server that backends connect to.
//!
//! One task per backend connection owns its socket. It reads frames, applies
//! each session call *inline*, in arrival order (they are short map
//! operations), and writes the response. Responses are buffered and flushed
//! only when no further frame is already waiting, so a busy connection sends
//! many responses per syscall and an idle one pays no added latency.

use crate::backends::BackendLink;
use crate::delivery::{Receipt, Ticket};
use crate::listener::{bind_reusable, Acceptor, Running};
use crate::{BackendRegistry, RpcConfig, SessionService};
use futures::{FutureExt, SinkExt, StreamExt};
use session_proxy_protocol::auth::NONCE_LEN;
use session_proxy_protocol::{
    Call, CodecError, ErrorCode, Hello, HelloReply, Message, MessageCodec, Reply, Response, Role,
    RpcError, Secret, MAGIC, PROTOCOL_VERSION,
};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn, Instrument};

/// A running RPC server. Stop it with [`RpcServer::shutdown`]; dropping it
/// stops it too, without waiting.
#[derive(Debug)]
#[must_use = "dropping the server stops it"]
pub struct RpcServer {
    /// Address, stop signal and tasks.
    running: Running,
    /// The backends connected through this server that serve a server type.
    backends: BackendRegistry,
}

impl RpcServer {
    /// Listens on `addr` and serves backends until shut down.
    ///
    /// The socket is bound with `SO_REUSEADDR`, so a restarted frontend can
    /// take its port back at once.
    pub async fn bind(
        addr: SocketAddr,
        service: SessionService,
        config: RpcConfig,
    ) -> Result<RpcServer, crate::Error> {
        let listener = bind_reusable(addr, 1024).map_err(crate::Error::Listen)?;
        Ok(Self::serve(listener, service, config))
    }

    /// Serves backends on an already bound listener.
    pub fn serve(listener: TcpListener, service: SessionService, config: RpcConfig) -> RpcServer {
        let running = Running::new(&listener);
        let backends = BackendRegistry::new();
        let acceptor = Acceptor::new(listener, config.max_connections, running.cancel.clone());
        let shared = Shared {
            service,
            backends: backends.clone(),
            config: Arc::new(config),
        };
        let accept = accept_loop(
            acceptor,
            shared,
            running.cancel.clone(),
            running.tracker.clone(),
        );
        let local_addr = running.local_addr;
        running
            .tracker
            .spawn(accept.instrument(tracing::info_span!("rpc_server", %local_addr)));
        RpcServer { running, backends }
    }

    /// The backends connected to this server that serve client requests;
    /// hand it to a [`Gateway`](crate::Gateway) to forward requests to them.
    pub fn backends(&self) -> BackendRegistry {
        self.backends.clone()
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.running.local_addr
    }

    /// Stops accepting, closes every connection after the frame it is
    /// handling, and waits up to `drain` for the tasks to finish. Returns
    /// whether they all finished in time.
    pub async fn shutdown(self, drain: Duration) -> bool {
        self.running.shutdown(drain).await
    }
}

/// What every connection task of a server shares.
#[derive(Clone)]
struct Shared {
    /// The sessions this frontend owns.
    service: SessionService,
    /// Backends that serve forwarded requests.
    backends: BackendRegistry,
    /// Server settings.
    config: Arc<RpcConfig>,
}

async fn accept_loop(
    acceptor: Acceptor,
    shared: Shared,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    info!(
        frontend = shared.service.frontend_id(),
        "listening for backends"
    );
    while let Some((stream, peer, permit)) = acceptor.next().await {
        let conn = Connection {
            service: shared.service.clone(),
            backends: shared.backends.clone(),
            config: shared.config.clone(),
            cancel: cancel.child_token(),
            peer,
        };
        tracker.spawn(
            async move {
                conn.run(stream).await;
                drop(permit);
            }
            .instrument(tracing::info_span!("backend_conn", %peer)),
        );
    }
}

/// One backend connection.
struct Connection {
    /// The sessions this frontend owns.
    service: SessionService,
    /// Where a backend that serves a server type is registered.
    backends: BackendRegistry,
    /// Server settings.
    config: Arc<RpcConfig>,
    /// Cancelled when the server shuts down.
    cancel: CancellationToken,
    /// The backend's address, for logs.
    peer: SocketAddr,
}

/// Whether a call changes session state (and so must be durable before it
/// is acknowledged, when a store is attached).
/// Whether a call pushes to clients (and is answered once written).
fn pushes_to_clients(call: &Call) -> bool {
    matches!(
        call,
        Call::PushToSids { .. } | Call::PushToUids { .. } | Call::Broadcast { .. }
    )
}

fn mutates(call: &Call) -> bool {
    matches!(
        call,
        Call::Bind { .. }
            | Call::Unbind { .. }
            | Call::Push { .. }
            | Call::KickBySid { .. }
            | Call::KickByUid { .. }
            | Call::RevokeUid { .. }
    )
}

/// Answers a push call once every copy is written (or after `wait`),
/// through the link's outgoing queue.
fn answer_when_written(
    id: u64,
    reply: Reply,
    (receipt, issuer): (Arc<Receipt>, Ticket),
    wait: Duration,
    late_answers: mpsc::Sender<Message>,
) {
    tokio::spawn(async move {
        if tokio::time::timeout(wait, receipt.written(issuer))
            .await
            .is_err()
        {
            debug!(id, ?wait, "answering a push before every client wrote it");
        }
        let answer = Message::Response(Response {
            id,
            result: Ok(reply),
        });
        // Fails only if the link is gone, and its caller with it.
        let _ = late_answers.send(answer).await;
    });
}

/// Why a connection ended, for the log line.
enum End {
    PeerClosed,
    Shutdown,
    Corrupt(CodecError),
    Protocol(&'static str),
}

impl Connection {
    async fn run(self, stream: TcpStream) {
        match self.config.tls.clone() {
            None => self.run_on(stream).await,
            Some(tls) => {
                match tokio::time::timeout(self.config.handshake_timeout, tls.accept(stream)).await
                {
                    Ok(Ok(stream)) => self.run_on(stream).await,
                    Ok(Err(err)) => warn!(peer = %self.peer, cause = %err, "TLS handshake failed"),
                    Err(_) => warn!(peer = %self.peer, "no TLS handshake before the deadline"),
                }
            }
        }
    }

    async fn run_on<S: AsyncRead + AsyncWrite + Unpin + Send>(self, stream: S) {
        let mut framed = Framed::new(stream, MessageCodec::new(self.config.max_frame));
        let hello = match self.handshake(&mut framed).await {
            Ok(hello) => hello,
            Err(reason) => {
                warn!(peer = %self.peer, reason, "backend refused");
                return;
            }
        };
        let backend = hello.node_id;
        let (tx, mut rx) = mpsc::channel(self.config.queue.max(1));
        // Answers that wait for pushes to be written leave through the same
        // queue as forwarded requests.
        let late_answers = tx.clone();
        let link = hello.server_type.map(|server_type| {
            let link =
                self.backends
                    .register(&server_type, &backend, tx, self.config.max_in_flight);
            (server_type, link)
        });
        info!(backend = %backend, serves = ?link.as_ref().map(|(t, _)| t), "backend connected");
        let end = self
            .serve(
                &mut framed,
                link.as_ref().map(|(_, l)| &**l),
                &mut rx,
                &late_answers,
            )
            .await;
        if let Some((server_type, link)) = &link {
            self.backends.unregister(server_type, link);
            link.inflight.close(|| {
                Err(RpcError::new(
                    ErrorCode::PeerClosed,
                    "backend connection closed",
                ))
            });
        }
        match end {
            End::PeerClosed => info!(backend = %backend, "backend disconnected"),
            End::Shutdown => debug!(backend = %backend, "connection closed for shutdown"),
            End::Corrupt(err) => {
                warn!(backend = %backend, cause = %err, code = %err.code(), "closing connection: corrupt stream")
            }
            End::Protocol(what) => {
                warn!(backend = %backend, cause = what, "closing connection: protocol violation")
            }
        }
    }

    /// Reads the hello and answers it. Returns the accepted hello.
    async fn handshake<S: AsyncRead + AsyncWrite + Unpin + Send>(
        &self,
        framed: &mut Framed<S, MessageCodec>,
    ) -> Result<Hello, String> {
        let first = tokio::select! {
            _ = self.cancel.cancelled() => return Err("shutting down".into()),
            first = tokio::time::timeout(self.config.handshake_timeout, framed.next()) => first,
        };
        let hello: Hello = match first {
            Err(_) => return Err("no hello before the handshake deadline".into()),
            Ok(None) => return Err("closed before the hello".into()),
            Ok(Some(Err(err))) => return Err(format!("unreadable hello: {err}")),
            Ok(Some(Ok(Message::Hello(hello)))) => hello,
            Ok(Some(Ok(_))) => return Err("first frame is not a hello".into()),
        };
        let mut refusal = self.check_hello(&hello);
        if refusal.is_none() {
            if let Some(secret) = &self.config.secret {
                refusal = self.authenticate(framed, secret, &hello).await?;
            }
        }
        let reply = match &refusal {
            Some(err) => HelloReply::Refused(err.clone()),
            None => HelloReply::Accepted {
                version: PROTOCOL_VERSION,
                node_id: self.service.frontend_id().to_string(),
            },
        };
        framed
            .send(Message::HelloReply(reply))
            .await
            .map_err(|e| format!("cannot answer the hello: {e}"))?;
        match refusal {
            Some(err) => Err(format!("{} ({})", err, hello.node_id)),
            None => Ok(hello),
        }
    }

    /// Runs the challenge–response: `Ok(None)` when the peer proved it
    /// knows the secret, `Ok(Some(refusal))` when it did not.
    async fn authenticate<S: AsyncRead + AsyncWrite + Unpin + Send>(
        &self,
        framed: &mut Framed<S, MessageCodec>,
        secret: &Secret,
        hello: &Hello,
    ) -> Result<Option<RpcError>, String> {
        if hello.nonce.len() != NONCE_LEN {
            warn!(peer = %self.peer, node = %hello.node_id, "peer did not authenticate (no cluster secret?)");
            return Ok(Some(RpcError::new(
                ErrorCode::Unauthorized,
                "this frontend requires the cluster secret",
            )));
        }
        let mut nonce = vec![0u8; NONCE_LEN];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut nonce);
        let me = self.service.frontend_id();
        let challenge = HelloReply::Challenge {
            proof: secret.server_proof(&hello.nonce, &nonce, me),
            nonce: nonce.clone(),
        };
        framed
            .send(Message::HelloReply(challenge))
            .await
            .map_err(|e| format!("cannot send the challenge: {e}"))?;
        let answer = tokio::time::timeout(self.config.handshake_timeout, framed.next()).await;
        let proof = match answer {
            Ok(Some(Ok(Message::Proof(p)))) => p,
            Ok(Some(Ok(_))) => return Err("expected a proof".into()),
            Ok(Some(Err(err))) => return Err(format!("unreadable proof: {err}")),
            Ok(None) => return Err("closed during authentication".into()),
            Err(_) => return Err("no proof before the handshake deadline".into()),
        };
        if secret.verify_client(&proof, &nonce, &hello.nonce, &hello.node_id) {
            Ok(None)
        } else {
            warn!(peer = %self.peer, node = %hello.node_id, "peer failed authentication (wrong cluster secret or a replay)");
            Ok(Some(RpcError::new(
                ErrorCode::Unauthorized,
                "authentication failed",
            )))
        }
    }

    /// Why a hello is refused, if it is.
    fn check_hello(&self, hello: &Hello) -> Option<RpcError> {
        let me = self.service.frontend_id();
        if hello.magic != MAGIC {
            return Some(RpcError::new(
                ErrorCode::VersionMismatch,
                "not a session-proxy peer",
            ));
        }
        if hello.version != PROTOCOL_VERSION {
            return Some(RpcError::new(
                ErrorCode::VersionMismatch,
                format!(
                    "protocol version {} is not supported (this frontend speaks {PROTOCOL_VERSION})",
                    hello.version
                ),
            ));
        }
        if hello.role != Role::Backend {
            return Some(RpcError::new(
                ErrorCode::Unsupported,
                "only backends may connect here",
            ));
        }
        match hello.expect_peer.as_deref() {
            Some(expected) if expected != me => Some(RpcError::new(
                ErrorCode::WrongFrontend,
                format!("this is frontend {me:?}, not {expected:?}"),
            )),
            _ => None,
        }
    }

    async fn serve<S: AsyncRead + AsyncWrite + Unpin + Send>(
        &self,
        framed: &mut Framed<S, MessageCodec>,
        link: Option<&BackendLink>,
        outbox: &mut mpsc::Receiver<Message>,
        late_answers: &mpsc::Sender<Message>,
    ) -> End {
        // Answers of the current batch, held until the batch is durable.
        let mut answers: Vec<(u64, Result<Reply, RpcError>, bool)> = Vec::new();
        // One cancellation future and one silence timer for the link's life:
        // made afresh every turn they cost a waiter registration and a timer
        // insertion per batch of frames.
        let cancelled = self.cancel.cancelled();
        tokio::pin!(cancelled);
        let idle_timeout = self.config.idle_timeout;
        let mut last_heard = tokio::time::Instant::now();
        let silence = tokio::time::sleep_until(last_heard + idle_timeout);
        tokio::pin!(silence);
        loop {
            // Wait for a frame (or a forwarded request to send).
            let first = tokio::select! {
                _ = &mut cancelled => return End::Shutdown,
                frame = framed.next() => {
                    last_heard = tokio::time::Instant::now();
                    frame
                }
                _ = &mut silence => {
                    if last_heard.elapsed() >= idle_timeout {
                        // Backends ping when idle; silence this long means
                        // the peer is gone without closing (half-open).
                        return End::Protocol("no traffic from the backend within the idle timeout");
                    }
                    // Heard from since the timer was set: move it on.
                    silence.as_mut().reset(last_heard + idle_timeout);
                    continue;
                }
                Some(out) = outbox.recv() => {
                    if let Err(err) = self.send_outbox(framed, out, outbox).await {
                        return End::Corrupt(err);
                    }
                    continue;
                }
            };
            // Then take every frame already buffered, in arrival order.
            let mut next = Some(first);
            while let Some(frame) = next.take() {
                let msg = match frame {
                    None => return End::PeerClosed,
                    Some(Err(err)) => return End::Corrupt(err),
                    Some(Ok(msg)) => msg,
                };
                match msg {
                    Message::Request(req) => {
                        let mutates = mutates(&req.call);
                        let wait = self
                            .config
                            .push_write_wait
                            .min(Duration::from_millis(u64::from(req.deadline_ms) / 2));
                        if pushes_to_clients(&req.call) && !wait.is_zero() {
                            let (receipt, issuer) = Receipt::new();
                            let result = self.apply(req.call, Some(&receipt)).await;
                            match result {
                                Ok(reply) if receipt.is_pending() => answer_when_written(
                                    req.id,
                                    reply,
                                    (receipt, issuer),
                                    wait,
                                    late_answers.clone(),
                                ),
                                result => answers.push((req.id, result, mutates)),
                            }
                        } else {
                            let result = self.apply(req.call, None).await;
                            answers.push((req.id, result, mutates));
                        }
                    }
                    Message::Notify(call) => {
                        if let Err(err) = self.apply(call, None).await {
                            debug!(cause = %err, "notify failed");
                        }
                    }
                    Message::Response(resp) => match link {
                        Some(link) => {
                            if !link.inflight.complete(resp.id, resp.result) {
                                debug!(
                                    id = resp.id,
                                    "response to a forwarded request nobody waits for"
                                );
                            }
                        }
                        None => debug!(id = resp.id, "ignoring a response to no request"),
                    },
                    Message::Hello(_) | Message::HelloReply(_) | Message::Proof(_) => {
                        return End::Protocol("handshake frame after the handshake")
                    }
                }
                if answers.len() < 1024 {
                    next = framed.next().now_or_never();
                }
            }
            // Group commit: what we acknowledge is in the store first.
            if answers.iter().any(|(_, r, m)| *m && r.is_ok()) {
                if let Err(err) = self.service.flush().await {
                    warn!(cause = %err, "session store write failed; failing this batch's changes");
                    for (_, result, mutates) in answers.iter_mut() {
                        if *mutates && result.is_ok() {
                            *result = Err(RpcError::new(
                                ErrorCode::Unavailable,
                                format!("applied but not yet persisted (will retry): {err}"),
                            ));
                        }
                    }
                }
            }
            for (id, result, _) in answers.drain(..) {
                // `feed` only buffers; it writes when the buffer is past its
                // high-water mark, which is our backpressure.
                if let Err(err) = framed
                    .feed(Message::Response(Response { id, result }))
                    .await
                {
                    return End::Corrupt(err);
                }
            }
            if let Err(err) = framed.flush().await {
                return End::Corrupt(err);
            }
            if self.cancel.is_cancelled() {
                return End::Shutdown;
            }
        }
    }

    /// Writes forwarded requests for this backend, as many as are queued.
    async fn send_outbox<S: AsyncRead + AsyncWrite + Unpin + Send>(
        &self,
        framed: &mut Framed<S, MessageCodec>,
        first: Message,
        outbox: &mut mpsc::Receiver<Message>,
    ) -> Result<(), CodecError> {
        framed.feed(first).await?;
        while let Ok(out) = outbox.try_recv() {
            framed.feed(out).await?;
        }
        // Let the other tasks that are ready now (client connections with
        // requests read in the same I/O round) queue theirs, so they leave
        // in this write instead of one write each.
        tokio::task::yield_now().await;
        while let Ok(out) = outbox.try_recv() {
            framed.feed(out).await?;
        }
        framed.flush().await
    }

    /// Applies one session call to the service. Pushes to clients are
    /// counted on `receipt` when there is one.
    async fn apply(&self, call: Call, receipt: Option<&Arc<Receipt>>) -> Result<Reply, RpcError> {
        let s = &self.service;
        let reply = match call {
            Call::Ping => Reply::Done,
            Call::GetSession { sid } => Reply::Session(s.get(sid)),
            Call::GetByUid { uid } => Reply::Sessions(s.get_by_uid(&uid)),
            Call::Bind { sid, uid } => s.bind(sid, &uid).map(|()| Reply::Done)?,
            Call::Unbind { sid, uid } => s.unbind(sid, &uid).map(|()| Reply::Done)?,
            Call::Push { sid, writes } => Reply::Pushed(s.apply_push(sid, writes)?),
            Call::KickBySid { sid, reason } => {
                Reply::Kicked(u32::from(s.kick_by_sid(sid, &reason)))
            }
            Call::KickByUid { uid, reason } => {
                Reply::Kicked(u32::try_from(s.kick_by_uid(&uid, &reason)).unwrap_or(u32::MAX))
            }
            Call::PushToSids { route, body, sids } => Reply::PushedToSids(
                sids.into_iter()
                    .filter(|sid| {
                        s.push_to_client_tracked(*sid, &route, body.clone(), receipt)
                            .is_err()
                    })
                    .collect(),
            ),
            Call::PushToUids { route, body, uids } => {
                Reply::PushedToUids(s.push_to_uids_tracked(&uids, &route, &body, receipt))
            }
            Call::Broadcast {
                route,
                body,
                bound_only,
            } => Reply::Broadcast(
                u32::try_from(s.broadcast_tracked(&route, &body, bound_only, receipt))
                    .unwrap_or(u32::MAX),
            ),
            Call::UserSessions { uid } => Reply::UserSessions(
                s.user_sessions(&uid)
                    .await
                    .map_err(|e| RpcError::new(ErrorCode::Unavailable, e.to_string()))?,
            ),
            Call::RevokeUid { uid, reason } => Reply::Ended(
                s.revoke_uid(&uid, &reason)
                    .await
                    .map_err(|e| RpcError::new(ErrorCode::Unavailable, e.to_string()))?,
            ),
            Call::Handle { .. } => {
                return Err(RpcError::new(
                    ErrorCode::Unsupported,
                    "frontends do not handle forwarded requests",
                ))
            }
        };
        Ok(reply)
    }
}
