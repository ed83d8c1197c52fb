//! The task that keeps one link up: dial, serve the connection until it
//! dies, back off, redial; and, while a connection is up, its reader, writer
//! and pinger.

use super::dial::{dial, Reader, Writer};
use super::{
    refuse, AnswerBytes, Answers, ClientInner, Conn, FrontendClient, Inbound, Outcome, Outgoing,
    Refused, Replier, Running, State,
};
use crate::error::LinkError;
use crate::BackendConfig;
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use rand::Rng;
use session_proxy_link::inproc::{DirectAnswer, DirectBackend};
use session_proxy_protocol::{
    BackendCall, ClockOffset, ErrorCode, Handle, InFlight, Message, RpcError, ServedRemotes,
};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;
use tokio::time::{timeout, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Keeps one frontend link alive.
pub(super) struct Supervisor {
    /// The frontend's node id, checked in the handshake.
    pub(super) frontend_id: Arc<str>,
    /// Where it listens.
    pub(super) addr: String,
    /// Backend settings (validated).
    pub(super) config: BackendConfig,
    /// Tells the handles where the link is.
    pub(super) state: watch::Sender<State>,
    /// Stops the link (shutdown, or the last handle dropped).
    pub(super) cancel: CancellationToken,
    /// The client handle, for the sessions given to request handlers; weak,
    /// so the supervisor stops when the last handle is dropped.
    pub(super) client: Weak<ClientInner>,
    /// Where requests the frontend sends go; `None` refuses them.
    pub(super) inbound: Option<Arc<dyn Inbound>>,
}

/// Redial delays: doubling from `min` to `max`, each with ±25 % jitter so
/// that backends that lost a frontend together do not redial together.
#[derive(Debug)]
pub(super) struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub(super) fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max,
            next: min,
        }
    }

    /// The delay before the next attempt; doubles the one after.
    pub(super) fn next_delay(&mut self) -> Duration {
        let d = jitter(self.next);
        self.next = (self.next * 2).min(self.max);
        d
    }

    /// After a success: start again from `min`.
    pub(super) fn reset(&mut self) {
        self.next = self.min;
    }
}

fn jitter(d: Duration) -> Duration {
    let factor = rand::thread_rng().gen_range(0.75..1.25);
    d.mul_f64(factor)
}

impl Supervisor {
    pub(super) async fn run(self) {
        let mut backoff = Backoff::new(self.config.backoff_min, self.config.backoff_max);
        let mut failures = 0u32;
        let mut first = true;
        loop {
            if !std::mem::take(&mut first) {
                crate::metrics::REDIALED.increment(1);
            }
            self.state.send_replace(State::Connecting);
            let attempt = tokio::select! {
                _ = self.cancel.cancelled() => return,
                attempt = dial(&self.frontend_id, &self.addr, &self.config, self.direct()) => attempt,
            };
            match attempt {
                Ok((reader, writer, offset)) => {
                    if failures > 0 {
                        info!(addr = %self.addr, after_failures = failures, "reconnected to frontend");
                    } else {
                        info!(addr = %self.addr, "connected to frontend");
                    }
                    failures = 0;
                    backoff.reset();
                    let cause = self.serve(reader, writer, offset).await;
                    if self.cancel.is_cancelled() {
                        return;
                    }
                    warn!(cause = %session_proxy_protocol::chain(&cause), "connection to frontend lost");
                    // Redial after a short pause, not in a tight loop, in
                    // case the frontend accepts and drops again at once.
                    if self.pause(self.config.backoff_min).await {
                        return;
                    }
                }
                Err(cause) => {
                    failures += 1;
                    if failures == 1 {
                        warn!(addr = %self.addr, cause = %session_proxy_protocol::chain(&cause), "cannot reach frontend; retrying with backoff");
                    } else {
                        debug!(addr = %self.addr, cause = %session_proxy_protocol::chain(&cause), failures, "frontend still unreachable");
                    }
                    self.state.send_replace(State::Down(Arc::new(cause)));
                    if self.pause(backoff.next_delay()).await {
                        return;
                    }
                }
            }
        }
    }

    /// Sleeps; returns true when the link was stopped meanwhile.
    async fn pause(&self, d: Duration) -> bool {
        tokio::select! {
            _ = self.cancel.cancelled() => true,
            _ = tokio::time::sleep(d) => false,
        }
    }

    /// Runs a connection until it dies; returns why.
    async fn serve(
        &self,
        mut reader: Reader,
        writer: Writer,
        clock: ClockOffset,
    ) -> Arc<LinkError> {
        let (tx, rx) = mpsc::channel(self.config.queue);
        let conn = Arc::new(Conn {
            tx: tx.clone(),
            inflight: InFlight::new(self.config.max_in_flight),
        });
        self.state.send_replace(State::Up(conn.clone()));
        // When the last frame arrived, in ms since `epoch`.
        let epoch = Instant::now();
        let last_rx = AtomicU64::new(0);
        let ping = self.config.ping_interval;
        let pinger = async {
            loop {
                tokio::time::sleep(ping).await;
                let quiet = epoch
                    .elapsed()
                    .saturating_sub(Duration::from_millis(last_rx.load(Ordering::Relaxed)));
                if quiet < ping {
                    continue;
                }
                let Ok((id, rx)) = conn.inflight.register() else {
                    return LinkError::Closed;
                };
                if tx.send(Message::Ping(id)).await.is_err() {
                    return LinkError::Closed;
                }
                if timeout(ping, rx).await.is_err() {
                    conn.inflight.forget(id);
                    return LinkError::Silent(ping);
                }
            }
        };
        // This connection's requests that are still running, and the room
        // for their answers.
        let answers = Arc::new(Answers {
            tx: tx.clone(),
            bytes: AnswerBytes::new(self.config.max_queued_answer_bytes),
            running: Running::default(),
        });
        let read = async {
            loop {
                let frame = reader.next().await;
                let ms = u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
                last_rx.store(ms, Ordering::Relaxed);
                match frame {
                    None => return LinkError::Closed,
                    Some(Err(err)) => return LinkError::Corrupt(err),
                    Some(Ok(Message::Response(resp))) => {
                        let outcome = match resp.result {
                            Ok(reply) => Outcome::Reply(reply),
                            Err(err) => Outcome::Remote(err),
                        };
                        if !conn.inflight.complete(resp.id, outcome) {
                            debug!(id = resp.id, "response to a call nobody waits for");
                        }
                    }
                    Some(Ok(Message::Request(req))) => {
                        // What is left of the caller's deadline after the
                        // way here (a stopped process, a full socket).
                        let deadline = req.remaining(clock);
                        let reply = Replier::new(req.id, &answers, deadline);
                        if deadline.is_zero() {
                            debug!(id = req.id, "request arrived after its deadline; not run");
                            refuse(
                                Some(reply),
                                ErrorCode::DeadlineExceeded,
                                "arrived after its deadline; not run",
                            );
                        } else {
                            answers
                                .running
                                .track(req.id, || self.incoming(req.call, deadline, Some(reply)));
                        }
                    }
                    Some(Ok(Message::Notify(call))) => {
                        if let Err(refused) = self.incoming(call, self.config.deadline, None) {
                            refused.answer();
                        }
                    }
                    Some(Ok(Message::Cancel(id))) => answers.running.cancel(id),
                    Some(Ok(Message::Ping(id))) => {
                        // Dropped when the queue is full: the frontend's
                        // silence timer counts every frame, not pongs.
                        let _ = tx.try_send(Message::Pong(id));
                    }
                    Some(Ok(Message::Pong(id))) => {
                        conn.inflight.complete(id, Outcome::Reply(Bytes::new()));
                    }
                    Some(Ok(_)) => {
                        return LinkError::Protocol("handshake frame after the handshake")
                    }
                }
            }
        };
        // The remote methods served, told the frontend first and on every
        // change (it refuses them to clients).
        let announce = async {
            if let Some(inbound) = &self.inbound {
                let mut routes = inbound.remote_routes();
                loop {
                    let served = ServedRemotes {
                        routes: routes.borrow_and_update().to_vec(),
                    };
                    if tx.send(Message::Notify(served.into())).await.is_err() {
                        break;
                    }
                    if routes.changed().await.is_err() {
                        break;
                    }
                }
            }
            std::future::pending::<LinkError>().await
        };
        let cause = tokio::select! {
            // Stopping ends the writer, after it wrote what is queued (the
            // last answers of a drain).
            cause = write_loop(writer, rx, &answers.bytes, &self.cancel) => cause,
            cause = read => cause,
            cause = pinger => cause,
            cause = announce => cause,
        };
        let cause = Arc::new(cause);
        // No new call may pick this connection up, then fail the pending ones.
        self.state.send_replace(State::Connecting);
        conn.inflight.close(|| Outcome::Lost(cause.clone()));
        cause
    }

    /// This backend as a frontend of this process may call it directly,
    /// when it serves forwarded requests and the config allows it.
    fn direct(&self) -> Option<Arc<dyn DirectBackend>> {
        let inbound = self
            .inbound
            .clone()
            .filter(|_| self.config.in_process_direct)?;
        Some(Arc::new(DirectLink {
            inbound,
            client: self.client.clone(),
        }))
    }

    /// A call the frontend sent goes to the inbound side (refused when there
    /// is none, or when every handle is gone).
    fn incoming(
        &self,
        call: BackendCall,
        deadline: Duration,
        reply: Option<Replier>,
    ) -> Result<Option<AbortHandle>, Refused> {
        let Some(inbound) = &self.inbound else {
            return Err(Refused {
                reply,
                code: ErrorCode::Unsupported,
                message: "this backend serves no forwarded requests",
            });
        };
        let Some(inner) = self.client.upgrade() else {
            return Err(Refused {
                reply,
                code: ErrorCode::Unavailable,
                message: "backend shutting down",
            });
        };
        inbound
            .clone()
            .call(FrontendClient { inner }, call, deadline, reply)
    }
}

/// This backend's side of an in-process link, called directly by its
/// frontend for forwarded requests ([`Inbound::direct`]).
struct DirectLink {
    inbound: Arc<dyn Inbound>,
    client: Weak<ClientInner>,
}

impl DirectBackend for DirectLink {
    fn handle(&self, call: Handle, deadline: Duration) -> Result<DirectAnswer, RpcError> {
        let Some(inner) = self.client.upgrade() else {
            return Err(RpcError::new(
                ErrorCode::Unavailable,
                "backend shutting down",
            ));
        };
        self.inbound
            .clone()
            .direct(FrontendClient { inner }, call, deadline)
    }
}

/// Writes queued frames, flushing once per batch of whatever is queued.
/// How long a stopping link may take to write what is queued.
const LAST_WRITE: Duration = Duration::from_secs(1);

async fn write_loop(
    writer: Writer,
    mut rx: mpsc::Receiver<Outgoing>,
    answer_bytes: &AnswerBytes,
    stop: &CancellationToken,
) -> LinkError {
    // Each answer gives its room back as it goes to the codec.
    let mut writer = writer.with(|frame: Outgoing| {
        answer_bytes.written(&frame);
        futures::future::ready(Ok::<_, session_proxy_protocol::CodecError>(frame))
    });
    let write = |source| LinkError::Send {
        what: "a frame",
        source,
    };
    loop {
        let msg = tokio::select! {
            msg = rx.recv() => msg,
            _ = stop.cancelled() => {
                // What is queued leaves before the link closes, within a
                // bound (a peer that does not read gets no more).
                let last = session_proxy_link::write_rest(&mut writer, &mut rx);
                let _ = tokio::time::timeout(LAST_WRITE, last).await;
                return LinkError::Stopped;
            }
        };
        let Some(msg) = msg else {
            return LinkError::Stopped;
        };
        if let Err(err) = session_proxy_link::write_batch(&mut writer, msg, &mut rx).await {
            return write(err);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_with_bounded_jitter_and_resets() {
        let min = Duration::from_millis(100);
        let max = Duration::from_millis(700);
        let mut b = Backoff::new(min, max);
        let mut nominal = min;
        for _ in 0..8 {
            let d = b.next_delay();
            assert!(
                d >= nominal.mul_f64(0.75) && d <= nominal.mul_f64(1.25),
                "{d:?} for {nominal:?}"
            );
            nominal = (nominal * 2).min(max);
        }
        b.reset();
        let d = b.next_delay();
        assert!(d <= min.mul_f64(1.25), "{d:?} after a reset");
    }
}
