//! One backend connection: the loop that reads its frames, applies its
//! session calls in arrival order (those that wait on the store beside it,
//! in `lanes`), commits them to the store once per batch, and writes the
//! forwarded requests queued for it.

use super::apply::{
    answer_when_written, commit_then_answer, redirect, Answer, LinkCalls, Outgoing,
};
use super::lanes::{Done, Lanes};
use super::{BackendConn, Unauthenticated};
use crate::forward::BackendLink;
use crate::logs::warn_throttled;
use futures::{FutureExt, SinkExt, StreamExt};
use session_proxy_link::inproc::{DirectBackend, Pipe};
use session_proxy_protocol::text::log_safe;
use session_proxy_protocol::{
    ClockOffset, CodecError, ErrorCode, FrontendCodec, HelloReply, Message, Response, RpcError,
};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::codec::Framed;
use tracing::{debug, info, warn};

/// Why a connection ended, for the log line.
enum End {
    PeerClosed,
    Shutdown,
    Corrupt(CodecError),
    Protocol(&'static str),
}

impl BackendConn {
    pub(super) async fn run(self, stream: TcpStream, pre_auth: Unauthenticated) {
        let deadline = tokio::time::Instant::now() + self.config.handshake_timeout;
        #[cfg(feature = "tls")]
        if let Some(tls) = self.config.tls.clone() {
            match tokio::time::timeout_at(deadline, tls.accept(stream)).await {
                Ok(Ok(stream)) => self.run_on(stream, Some(pre_auth), deadline, None).await,
                Ok(Err(err)) => {
                    warn_throttled!(peer = %self.peer, cause = %session_proxy_protocol::chain(&err), "TLS handshake failed")
                }
                Err(_) => {
                    warn_throttled!(peer = %self.peer, "no TLS handshake before the deadline")
                }
            }
            return;
        }
        self.run_on(stream, Some(pre_auth), deadline, None).await
    }

    /// A backend of this process, through an in-memory pipe: no TLS and no
    /// admission (nobody else can reach it); the hello, the cluster
    /// secret and everything after are the TCP link's, but for the
    /// requests forwarded to a backend that offered to be called directly.
    pub(super) async fn run_in_process(self, pipe: Pipe) {
        let deadline = tokio::time::Instant::now() + self.config.handshake_timeout;
        self.run_on(pipe.stream, None, deadline, pipe.direct).await
    }

    async fn run_on<S: AsyncRead + AsyncWrite + Unpin + Send>(
        self,
        stream: S,
        pre_auth: Option<Unauthenticated>,
        deadline: tokio::time::Instant,
        direct: Option<Arc<dyn DirectBackend>>,
    ) {
        // Small frames until the peer is known.
        let mut framed = Framed::new(stream, FrontendCodec::new(self.config.hello_max_frame));
        let Ok(hello) = self.handshake(&mut framed, deadline).await else {
            return;
        };
        let clock = ClockOffset::measure(hello.clock_ms);
        drop(pre_auth);
        let Ok(_slot) = self.slots.clone().try_acquire_owned() else {
            let limit = self.config.max_connections;
            warn_throttled!(peer = %self.peer, limit, "backend refused: this frontend serves its maximum of backend connections");
            let full = RpcError::new(
                ErrorCode::Overloaded,
                format!("this frontend serves its maximum of {limit} backend connections"),
            );
            let _ = tokio::time::timeout(
                self.config.handshake_timeout,
                framed.send(Message::HelloReply(HelloReply::Refused(full))),
            )
            .await;
            return;
        };
        *framed.codec_mut() = FrontendCodec::new(self.config.max_frame);
        // Authenticated (or no secret is set); still the peer's own words.
        let backend = log_safe(&hello.node_id);
        let (tx, mut rx) = mpsc::channel(self.config.queue);
        // Answers that wait for pushes to be written leave through the same
        // queue as forwarded requests.
        let late_answers = tx.clone();
        let link = hello.server_type.map(|server_type| {
            let link = self.backends.register(
                &server_type,
                &hello.node_id,
                tx,
                self.config.max_in_flight,
                direct,
            );
            (server_type, link)
        });
        // Accepted only once registered: a backend that sees the answer can
        // count on this frontend forwarding to it.
        let end = match self.accept(&mut framed).await {
            Err(err) => End::Corrupt(err),
            Ok(()) => {
                let serves = link.as_ref().map(|(t, _)| log_safe(t));
                info!(backend = %backend, serves = ?serves, "backend connected");
                self.serve(
                    &mut framed,
                    link.as_ref().map(|(t, l)| (t.as_str(), &**l)),
                    (&mut rx, &late_answers),
                    clock,
                )
                .await
            }
        };
        if let Some((server_type, link)) = &link {
            self.backends.unregister(server_type, link, false);
            link.close();
        }
        match end {
            End::PeerClosed => info!(backend = %backend, "backend disconnected"),
            End::Shutdown => debug!(backend = %backend, "connection closed for shutdown"),
            End::Corrupt(err) => {
                warn!(backend = %backend, cause = %session_proxy_protocol::chain(&err), code = %err.code(), "closing connection: corrupt stream")
            }
            End::Protocol(what) => {
                warn!(backend = %backend, cause = what, "closing connection: protocol violation")
            }
        }
    }

    async fn serve<S: AsyncRead + AsyncWrite + Unpin + Send>(
        &self,
        framed: &mut Framed<S, FrontendCodec>,
        link: Option<(&str, &BackendLink)>,
        (outbox, late_answers): (&mut mpsc::Receiver<Outgoing>, &mpsc::Sender<Outgoing>),
        clock: ClockOffset,
    ) -> End {
        let calls = LinkCalls { conn: self, link };
        let mut lanes = Lanes::new(&calls, self.config.push_write_wait);
        // Answers of the current batch, held until the batch is durable.
        let mut answers: Vec<Answer> = Vec::new();
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
            // Wait for a frame, a call that waited, or a forwarded request
            // to send.
            let first = tokio::select! {
                _ = &mut cancelled => return End::Shutdown,
                frame = framed.next() => {
                    last_heard = tokio::time::Instant::now();
                    Some(frame)
                }
                done = lanes.next() => {
                    let sid = done.0.sid;
                    self.answer(done, &mut answers, late_answers);
                    for done in lanes.resume(sid) {
                        self.answer(done, &mut answers, late_answers);
                    }
                    None
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
                    if let Err(err) = session_proxy_link::write_batch(framed, out, outbox).await {
                        return End::Corrupt(err);
                    }
                    continue;
                }
            };
            // Then take every frame already buffered, in arrival order.
            let mut next = first;
            while let Some(frame) = next.take() {
                let msg = match frame {
                    None => return End::PeerClosed,
                    Some(Err(err)) => return End::Corrupt(err),
                    Some(Ok(msg)) => msg,
                };
                match msg {
                    Message::Request(req) if req.remaining(clock).is_zero() => {
                        // Its caller has been told it failed: it must not
                        // take effect now.
                        debug!(id = req.id, "call arrived after its deadline; not applied");
                        answers.push(Answer::new(
                            req.id,
                            Err(RpcError::new(
                                ErrorCode::DeadlineExceeded,
                                "arrived after its deadline; not applied",
                            )),
                            false,
                            None,
                        ));
                    }
                    Message::Request(req) => {
                        let deadline = req.remaining(clock);
                        if let Some(done) = lanes.start(Some(req.id), req.call, deadline) {
                            self.answer(done, &mut answers, late_answers);
                        }
                    }
                    Message::Notify(call) => {
                        // Nobody waits for a notify's answer, nor for its
                        // pushes to be written.
                        if let Some(done) = lanes.start(None, call, Duration::ZERO) {
                            self.answer(done, &mut answers, late_answers);
                        }
                    }
                    Message::Ping(id) => {
                        // Buffered with this batch's answers.
                        if let Err(err) = framed.feed(Message::Pong(id)).await {
                            return End::Corrupt(err);
                        }
                    }
                    // A relayed remote call stops (and tells its callee);
                    // session calls are short, or wait on the store, which
                    // they must not leave half done: for them a cancel
                    // changes nothing.
                    Message::Cancel(id) => {
                        if lanes.cancel(id) {
                            debug!(id, "relayed call cancelled by its caller");
                        }
                    }
                    Message::Pong(_) => {}
                    Message::Response(resp) => match link {
                        Some((_, link)) => link.complete(resp),
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
            // Group commit: what we acknowledge is in the store first. The
            // store is awaited on a task of its own, so a slow or failing
            // store never holds up the other calls on this link.
            if self.service.acknowledges_after_write()
                && answers.iter().any(Answer::waits_for_store)
            {
                let (durable, rest): (Vec<_>, Vec<_>) =
                    answers.drain(..).partition(Answer::waits_for_store);
                answers = rest;
                commit_then_answer(
                    &self.tasks,
                    self.service.clone(),
                    durable,
                    late_answers.clone(),
                );
            }
            for Answer { id, result, .. } in answers.drain(..) {
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

    /// Answers a call that finished: now, with this batch, or once its
    /// pushes are written; a notify's failure is only logged.
    fn answer(
        &self,
        (started, result): Done,
        answers: &mut Vec<Answer>,
        late: &mpsc::Sender<Outgoing>,
    ) {
        let Some(id) = started.id else {
            if let Err(err) = result {
                debug!(cause = %session_proxy_protocol::chain(&err), "notify failed");
            }
            return;
        };
        match (started.receipt, result) {
            (Some((receipt, wait)), Ok(reply)) if receipt.0.is_pending() => {
                answer_when_written(&self.tasks, id, reply, receipt, wait, late.clone())
            }
            (_, result) => {
                let mut answer = Answer::new(id, result, started.kind.mutates(), started.sid);
                redirect(&self.service, &mut answer, false);
                answers.push(answer);
            }
        }
    }
}
