//! A call on its way to a frontend, until its typed reply arrives.

use super::{Conn, FrontendClient, Outcome};
use crate::Error;
use session_proxy_protocol::{Call, ErrorCode, Message};
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::time::{timeout_at, Instant};

/// A call on its way. Await [`PendingCall::response`]; dropping it abandons
/// the call (the frontend may still apply it).
#[must_use = "a pending call does nothing unless its response is awaited"]
pub struct PendingCall<C> {
    /// The request id; 0 once the outcome arrived (nothing left to forget).
    pub(super) id: u64,
    /// The connection it went out on.
    pub(super) conn: Arc<Conn>,
    /// Where the reader delivers the outcome.
    pub(super) rx: oneshot::Receiver<Outcome>,
    /// When the caller stops waiting.
    pub(super) deadline_at: Instant,
    /// The deadline as given, for the error message.
    pub(super) deadline: Duration,
    /// For building errors.
    pub(super) client: FrontendClient,
    /// The call's kind ([`Call::INDEX`]), for its metrics.
    pub(super) kind: usize,
    /// When it was sent.
    pub(super) started: Instant,
    /// The call's type: its reply type.
    pub(super) call: PhantomData<fn() -> C>,
}

impl<C: Call> std::fmt::Debug for PendingCall<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingCall")
            .field("call", &C::NAME)
            .field("id", &self.id)
            .finish()
    }
}

impl<C: Call> PendingCall<C> {
    /// Waits for the reply, until the call's deadline.
    pub async fn response(mut self) -> Result<C::Reply, Error> {
        // Already answered (usual for pipelined calls): no timer needed.
        let outcome = match self.rx.try_recv() {
            Ok(outcome) => Ok(Ok(outcome)),
            Err(oneshot::error::TryRecvError::Closed) => Ok(Err(())),
            Err(oneshot::error::TryRecvError::Empty) => timeout_at(self.deadline_at, &mut self.rx)
                .await
                .map(|r| r.map_err(|_| ())),
        };
        if matches!(outcome, Ok(Ok(_))) {
            // The reader removed the call from the table when it answered.
            self.id = 0;
        }
        match outcome {
            Ok(Ok(Outcome::Reply(reply))) => {
                C::decode_reply(reply).map_err(|source| Error::BadReply {
                    frontend: self.client.frontend_id().to_string(),
                    call: C::NAME,
                    source,
                })
            }
            Ok(Ok(Outcome::Remote(source))) if source.code == ErrorCode::NotDurable => {
                Err(Error::NotDurable {
                    frontend: self.client.frontend_id().to_string(),
                    message: source.message,
                })
            }
            Ok(Ok(Outcome::Remote(source))) if source.code == ErrorCode::SessionMoved => {
                Err(Error::SessionMoved {
                    frontend: self.client.frontend_id().to_string(),
                    to: source.message,
                })
            }
            Ok(Ok(Outcome::Remote(source))) => Err(Error::Remote {
                frontend: self.client.frontend_id().to_string(),
                source,
            }),
            Ok(Ok(Outcome::Lost(cause))) => Err(self.client.lost(cause)),
            Ok(Err(_)) => Err(self.client.connection_closed()),
            Err(_) => Err(self.client.deadline_error(self.deadline)),
        }
    }
}

impl<C> Drop for PendingCall<C> {
    fn drop(&mut self) {
        crate::metrics::IN_FLIGHT.decrement(1.0);
        crate::metrics::call_ended(self.kind, self.started.into_std());
        if self.id == 0 {
            return;
        }
        // Abandoned before its answer: the frontend may still apply it,
        // unawaited.
        self.client.sent_one_way();
        // Before its deadline too (the frontend stops at the deadline by
        // itself): the frontend may stop working on it. Best effort: a full
        // queue or a dead link tells nobody.
        if self.conn.inflight.forget(self.id) && Instant::now() < self.deadline_at {
            let _ = self.conn.tx.try_send(Message::Cancel(self.id));
        }
    }
}
