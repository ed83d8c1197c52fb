//! The connection's loop: write what is encoded, take pushes and answers,
//! read; its deadlines; and how a connection ends.

use crate::{EndReason, SessionOwner};
use bytes::BytesMut;
use futures::StreamExt;
use session_proxy_protocol::client::{MessageType, PackageType, Route};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::WaitForCancellationFutureOwned;
use tracing::debug;

use super::super::transport::Ending;
use super::state::{CLIENT_KICK, HEARTBEAT_TIMEOUT};
use super::*;

impl ClientConn {
    /// Runs the connection until it must end; returns why.
    ///
    /// Each turn: write what is encoded (nothing else happens while the
    /// client does not take it, up to the write timeout), then take queued
    /// pushes, then finished requests (after the pushes the backend sent
    /// before them), and read only when neither had anything.
    pub(super) fn poll_run(
        &mut self,
        cx: &mut Context<'_>,
        peer: SocketAddr,
        mut timer: Pin<&mut Sleep>,
        mut cancelled: Pin<&mut WaitForCancellationFutureOwned>,
    ) -> Poll<Stop> {
        if !self.started {
            self.started = true;
            // Bytes read while sniffing the transport (TLS) are packages too.
            if !self.rbuf.is_empty() {
                if let Err(reason) = self.on_bytes(peer) {
                    return Poll::Ready(reason);
                }
            }
        }
        for _ in 0..TURNS_PER_POLL {
            if !self.out.is_empty() || self.flushing {
                match self
                    .transport
                    .poll_send(cx, &mut self.out, &mut self.flushing)
                {
                    Poll::Ready(Ok(())) => {
                        self.state.write_done();
                        // Pushes whose senders wait for the write: written.
                        self.written = None;
                        if self.pending.as_ref().is_some_and(|p| !p.is_empty()) {
                            // Busy: keep the buffer for the next answers.
                            self.out.clear();
                        } else {
                            self.out = BytesMut::new();
                        }
                    }
                    Poll::Ready(Err(err)) => return Poll::Ready(Stop::End(err)),
                    Poll::Pending => {
                        let now = self.shared.ms_at(Instant::now());
                        self.state.write_stalled(now, &self.shared.limits);
                        return self.poll_stop(cx, timer, cancelled).map(Stop::End);
                    }
                }
            }
            if let Some(reason) = self.closing.take() {
                return Poll::Ready(Stop::End(*reason));
            }
            if let Poll::Ready(reason) = self.poll_stop(cx, timer.as_mut(), cancelled.as_mut()) {
                return Poll::Ready(Stop::End(reason));
            }
            let mut busy = false;
            // Pushes wait in the queue until the client has acked the
            // handshake (a resumed session may have some already). Taking
            // all that are queued sends a burst in one write.
            if self.state.working() {
                while self.closing.is_none() && !self.out_full() {
                    match self.owner.as_mut().map(|o| o.poll_recv_ticketed(cx)) {
                        Some(Poll::Ready(event)) => {
                            self.on_ticketed(event);
                            busy = true;
                        }
                        _ => break,
                    }
                }
            }
            // Answers past the byte cap wait (unpolled, so a local handler
            // has not even run) until the buffer is written.
            while self.closing.is_none() && !self.out_full() {
                let answer = match self.pending.as_mut() {
                    Some(pending) if !pending.is_empty() => pending.poll_next_unpin(cx),
                    _ => Poll::Pending,
                };
                let Poll::Ready(Some((id, body))) = answer else {
                    break;
                };
                busy = true;
                self.state.on_answer(body.len());
                // Pushes the backend sent before this answer are already
                // queued: write them first, so they arrive in order.
                while let Some(Ok(Some(event))) =
                    self.owner.as_mut().map(SessionOwner::try_recv_ticketed)
                {
                    self.on_ticketed(Some(event));
                }
                // After a kick nothing more goes out.
                if self.closing.is_none() {
                    self.write_message(MessageType::Response, id, &Route::None, &body);
                }
            }
            if busy {
                continue;
            }
            if !self.rbuf.is_empty() && !self.at_capacity() {
                // Packages left undecoded while the connection was at its
                // in-flight cap: there is room again.
                let before = self.rbuf.len();
                if let Err(reason) = self.on_bytes(peer) {
                    return Poll::Ready(reason);
                }
                if self.rbuf.len() != before {
                    continue;
                }
            }
            if self.at_capacity() {
                // Full: read nothing more until answers go out, so a
                // pipelining client is slowed by TCP, not refused. The
                // pending answers wake this task.
                return self.poll_stop(cx, timer, cancelled).map(Stop::End);
            }
            match self.transport.poll_read(cx, &mut self.rbuf) {
                Poll::Ready(Ok(true)) => {
                    if let Err(reason) = self.on_bytes(peer) {
                        return Poll::Ready(reason);
                    }
                    if self.rbuf.is_empty() {
                        // Everything read was decoded: drop the buffer
                        // until the client sends again.
                        self.rbuf = BytesMut::new();
                    }
                }
                Poll::Ready(Ok(false)) => return Poll::Ready(Stop::End(CLIENT_CLOSED.into())),
                Poll::Ready(Err(err)) => return Poll::Ready(Stop::End(err)),
                Poll::Pending => {
                    if self.out.is_empty() && self.closing.is_none() {
                        // Nothing to do until something wakes us; the
                        // deadline may have moved while handling input.
                        return self.poll_stop(cx, timer, cancelled).map(Stop::End);
                    }
                }
            }
        }
        // A whole budget of turns in one poll: let the worker run other
        // tasks, and come back at once.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Ends the connection on server shutdown or a passed deadline; moves
    /// the timer first if a deadline changed.
    pub(super) fn poll_stop(
        &mut self,
        cx: &mut Context<'_>,
        mut timer: Pin<&mut Sleep>,
        cancelled: Pin<&mut WaitForCancellationFutureOwned>,
    ) -> Poll<String> {
        if cancelled.poll(cx).is_ready() {
            return Poll::Ready(SHUTTING_DOWN.into());
        }
        loop {
            if let Some(at) = self.state.moved_deadline() {
                let at = self.shared.instant_of(at, Instant::now());
                timer.as_mut().reset(at);
            }
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let now = self.shared.ms_at(Instant::now());
            if let Some(reason) = self.state.on_timer(now) {
                return Poll::Ready(reason.into());
            }
        }
    }

    pub(super) async fn finish(mut self, reason: String) {
        debug!(reason, "client connection ends");
        if reason == SHUTTING_DOWN {
            self.answer_and_kick().await;
        }
        if let Some(owner) = self.owner.take() {
            let grace = self.shared.config.resume_grace;
            if self.closing.is_some() || grace.is_zero() || !self.state.resumable() {
                // Kicked, refused, no resume, or a client that never acked
                // its handshake (nobody to resume it): the session ends here.
                self.shared.sessions.close_if_owner(
                    owner.sid(),
                    owner.generation(),
                    end_reason(&reason),
                );
                drop(owner);
            } else {
                // The client may come back with its token.
                owner.park(grace);
            }
        }
        // Shutdown and drain kicks (come back elsewhere): 1001.
        let drain_kick = reason
            .strip_prefix("kicked: ")
            .is_some_and(|r| r == self.shared.config.shutdown_kick_reason);
        let ending = if reason == SHUTTING_DOWN || drain_kick {
            Ending::GoingAway
        } else {
            Ending::Normal
        };
        // Bounded: a client that reads nothing does not hold the task.
        let write_timeout = self.shared.config.write_timeout;
        let _ = tokio::time::timeout(write_timeout, self.transport.close(ending, &reason)).await;
    }
}

/// Why a connection ends when its gateway shuts down.
const SHUTTING_DOWN: &str = "server shutting down";
/// Why a connection ends when its client closes it.
const CLIENT_CLOSED: &str = "client closed the connection";

/// Why a session ends with its connection, from why the connection ended
/// (a kicked session has ended already; closing it again does nothing).
fn end_reason(stop: &str) -> EndReason {
    match stop {
        SHUTTING_DOWN => EndReason::Shutdown,
        CLIENT_CLOSED | CLIENT_KICK | HEARTBEAT_TIMEOUT => EndReason::Disconnected,
        other => EndReason::ConnectionError(other.to_string()),
    }
}

impl ClientConn {
    /// On shutdown: writes the answers of the requests in flight that come
    /// within `shutdown_grace`, then a kick with `shutdown_kick_reason`, so
    /// the client knows to come back (elsewhere) with its token.
    async fn answer_and_kick(&mut self) {
        let until = Instant::now() + self.shared.config.shutdown_grace;
        if self.state.working() {
            while let Some(pending) = self.pending.as_mut().filter(|p| !p.is_empty()) {
                match tokio::time::timeout_at(until, pending.next()).await {
                    Ok(Some((id, body))) => {
                        self.write_message(MessageType::Response, id, &Route::None, &body)
                    }
                    _ => break,
                }
            }
        }
        if self.closing.is_none() {
            // A kick package, but the session stays parked: with a shared
            // store the client resumes on a restarted or another frontend.
            let reason = &self.shared.config.shutdown_kick_reason;
            let body = serde_json::json!({ "reason": reason }).to_string();
            let _ = out_codec().encode_to(PackageType::Kick, body.as_bytes(), &mut self.out);
        }
        let written = tokio::time::timeout_at(
            until.max(Instant::now() + std::time::Duration::from_millis(100)),
            std::future::poll_fn(|cx| {
                self.transport
                    .poll_send(cx, &mut self.out, &mut self.flushing)
            }),
        )
        .await;
        if !matches!(written, Ok(Ok(()))) {
            debug!("the client did not take its last answers before the shutdown deadline");
        }
    }
}
