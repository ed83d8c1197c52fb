//! One client connection: handshake, heartbeats, requests, pushes, kicks.
//!
//! - this file: the connection's task ([`ClientTask`]: sniff the transport,
//!   upgrade, run, finish) and its state ([`ClientConn`]);
//! - `io`: the read/write loop, its deadlines, and the end of a connection;
//! - `outbound`: what goes to the client (pushes, kicks, answers,
//!   heartbeats), encoded into one buffer per turn;
//! - `handshake`: the Pomelo handshake: a new session or a resumed one;
//! - `dispatch`: packages in, requests routed to a local handler or a
//!   backend, up to the in-flight cap.

mod dispatch;
mod handshake;
mod heartbeats;
mod io;
mod outbound;
mod protobuf;
mod state;

pub(crate) use state::Limits;

use super::transport::{tls_configured, upgrade, Transport};
use super::GatewayContext;
use crate::delivery::Ticket;
use crate::SessionOwner;
use bytes::{Bytes, BytesMut};
use futures::stream::FuturesUnordered;
use pin_project_lite::pin_project;
use session_proxy_protocol::client::{PackageCodec, MAX_PACKAGE_BODY};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use tokio::io::ReadBuf;
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{sleep_until, Instant, Sleep};
use tokio_util::sync::WaitForCancellationFutureOwned;
use tracing::debug;

/// Why the running loop stopped.
enum Stop {
    /// The connection ends, for this reason.
    End(String),
    /// The handshake waits for its hooks or a resume from the shared store.
    Later(Box<handshake::Later>),
}

impl From<String> for Stop {
    fn from(reason: String) -> Self {
        Stop::End(reason)
    }
}

/// A request being handled: resolves to its id and JSON response body.
type PendingResponse = Pin<Box<dyn Future<Output = (u64, Bytes)> + Send>>;

/// Rounds of work one poll of a connection may do before it yields to the
/// other tasks on its worker (a client that sends without pause would
/// otherwise keep the worker).
const TURNS_PER_POLL: usize = 32;

/// Encodes our packages (up to the protocol's maximum). Made where needed:
/// a field would cost every connected client its bytes.
fn out_codec() -> PackageCodec {
    PackageCodec::new(MAX_PACKAGE_BODY)
}

/// Sniffing the transport: the transport and any bytes read past the sniff.
type Opening = Pin<Box<dyn Future<Output = Result<(Transport, BytesMut), String>> + Send>>;

/// A connection's stages. The running client is inline on purpose: it is
/// the stage a connection spends its life in, and the task holds it anyway.
#[allow(clippy::large_enum_variant)]
enum Stage {
    /// Waiting for the first byte, which tells raw TCP from TLS and
    /// WebSocket.
    Sniffing(TcpStream),
    /// TLS or WebSocket handshake. Boxed: these are large futures (about
    /// 11 KiB), needed once and never for raw TCP.
    Opening(Opening),
    /// Handshake, requests, pushes, heartbeats.
    Running(ClientConn),
    /// A handshake waiting for its hooks, or for a resume looked up in the
    /// shared store (boxed: needed once).
    Waiting(Pin<Box<dyn Future<Output = ClientConn> + Send>>),
    /// Closing politely (boxed: needed once).
    Finishing(Pin<Box<dyn Future<Output = ()> + Send>>),
    /// Over.
    Done,
}

/// Gives back the connection's per-IP count and listener permit however the
/// task ends (finished or aborted).
struct Slot {
    shared: Arc<GatewayContext>,
    peer: SocketAddr,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.shared.per_ip.leave(self.peer.ip());
    }
}

pin_project! {
    /// One client connection's task, written as a plain future rather than
    /// an `async fn`: an idle connected client costs this struct, its socket
    /// registration and its session entry, and nothing else. (An `async fn`
    /// with a `select!` over five sources kept every branch's future in
    /// the task, about twice this size.)
    pub(crate) struct ClientTask {
        stage: Stage,
        // The handshake deadline, then the heartbeat (or write) deadline:
        // one timer for the connection's life.
        #[pin]
        timer: Sleep,
        #[pin]
        cancelled: WaitForCancellationFutureOwned,
        span: tracing::Span,
        slot: Slot,
    }
}

impl ClientTask {
    /// Serves one accepted client until it goes away.
    pub(crate) fn new(
        stream: TcpStream,
        peer: SocketAddr,
        shared: Arc<GatewayContext>,
        permit: OwnedSemaphorePermit,
    ) -> Self {
        let handshake_deadline = Instant::now() + shared.config.handshake_timeout;
        ClientTask {
            stage: Stage::Sniffing(stream),
            timer: sleep_until(handshake_deadline),
            cancelled: shared.cancel.clone().cancelled_owned(),
            span: tracing::debug_span!("client", %peer),
            slot: Slot {
                peer,
                shared,
                _permit: permit,
            },
        }
    }
}

impl Future for ClientTask {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        let _entered = this.span.enter();
        loop {
            match this.stage {
                Stage::Sniffing(stream) => {
                    let mut first = [0u8; 1];
                    let peeked = stream.poll_peek(cx, &mut ReadBuf::new(&mut first));
                    let reason = match peeked {
                        Poll::Ready(Ok(0)) => "closed",
                        Poll::Ready(Ok(_)) => "",
                        Poll::Ready(Err(err)) => {
                            debug!(cause = %session_proxy_protocol::chain(&err), "connection dropped before the handshake");
                            "read failed"
                        }
                        Poll::Pending => {
                            match opening_ends(cx, this.timer.as_mut(), this.cancelled.as_mut()) {
                                Some(reason) => reason,
                                None => return Poll::Pending,
                            }
                        }
                    };
                    if !reason.is_empty() {
                        debug!(reason, "connection dropped before the handshake");
                        *this.stage = Stage::Done;
                        return Poll::Ready(());
                    }
                    let shared = &this.slot.shared;
                    // 0x16: a TLS ClientHello; an HTTP method: a WebSocket upgrade.
                    let tls = first[0] == 0x16 && tls_configured(&shared.config);
                    if let Stage::Sniffing(stream) = std::mem::replace(this.stage, Stage::Done) {
                        *this.stage = if tls || first[0].is_ascii_alphabetic() {
                            let shared = shared.clone();
                            Stage::Opening(Box::pin(async move {
                                upgrade(stream, &shared.config, tls).await
                            }))
                        } else {
                            Stage::Running(ClientConn::new(
                                Transport::Tcp(stream),
                                BytesMut::new(),
                                shared.clone(),
                                this.timer.deadline(),
                            ))
                        };
                    }
                }
                Stage::Opening(opening) => {
                    let opened = match opening.as_mut().poll(cx) {
                        Poll::Ready(opened) => opened,
                        Poll::Pending => {
                            let Some(reason) =
                                opening_ends(cx, this.timer.as_mut(), this.cancelled.as_mut())
                            else {
                                return Poll::Pending;
                            };
                            debug!(reason, "connection dropped before the handshake");
                            *this.stage = Stage::Done;
                            return Poll::Ready(());
                        }
                    };
                    match opened {
                        Ok((transport, head)) => {
                            let shared = this.slot.shared.clone();
                            *this.stage = Stage::Running(ClientConn::new(
                                transport,
                                head,
                                shared,
                                this.timer.deadline(),
                            ));
                        }
                        Err(reason) => {
                            debug!(reason, "connection dropped before the handshake");
                            *this.stage = Stage::Done;
                            return Poll::Ready(());
                        }
                    }
                }
                Stage::Running(client) => {
                    let stop = ready!(client.poll_run(
                        cx,
                        this.slot.peer,
                        this.timer.as_mut(),
                        this.cancelled.as_mut()
                    ));
                    if let Stage::Running(mut client) = std::mem::replace(this.stage, Stage::Done) {
                        *this.stage = match stop {
                            Stop::End(reason) => Stage::Finishing(Box::pin(client.finish(reason))),
                            Stop::Later(later) => {
                                let peer = this.slot.peer;
                                Stage::Waiting(Box::pin(async move {
                                    client.later(later, peer).await;
                                    client
                                }))
                            }
                        };
                    }
                }
                Stage::Waiting(waiting) => {
                    let client = ready!(waiting.as_mut().poll(cx));
                    *this.stage = Stage::Running(client);
                }
                Stage::Finishing(finishing) => {
                    ready!(finishing.as_mut().poll(cx));
                    *this.stage = Stage::Done;
                }
                Stage::Done => return Poll::Ready(()),
            }
        }
    }
}

/// Why a connection that has not opened yet must end, if it must: its
/// handshake deadline passed, or the server is shutting down.
fn opening_ends(
    cx: &mut Context<'_>,
    timer: Pin<&mut Sleep>,
    cancelled: Pin<&mut WaitForCancellationFutureOwned>,
) -> Option<&'static str> {
    if timer.poll(cx).is_ready() {
        Some("no handshake in time")
    } else if cancelled.poll(cx).is_ready() {
        Some("server shutting down")
    } else {
        None
    }
}

struct ClientConn {
    /// The socket.
    transport: Transport,
    /// Bytes read but not yet decoded.
    rbuf: BytesMut,
    /// Packages encoded but not yet written; written once per turn.
    out: BytesMut,
    /// A WebSocket message or TLS data sent but not yet flushed.
    flushing: bool,
    /// Delivery tickets of the pushes in `out`, dropped once it is written.
    written: Option<Vec<Ticket>>,
    /// Whether bytes read while sniffing the transport were decoded.
    started: bool,
    /// The client's session, from the handshake on (new or resumed);
    /// dropping it closes the session.
    owner: Option<SessionOwner>,
    /// Requests being handled, answered in the order they finish.
    /// Made on the first request: an idle client pays nothing for it.
    pending: Option<FuturesUnordered<PendingResponse>>,
    /// The protocol's state: phase, heartbeats, capacity, deadlines.
    state: state::Protocol,
    /// Set when the connection must end once `out` is written.
    /// (A boxed `String` is one pointer wide, a `Box<str>` two: every
    /// connection pays for this field, and it is set once, at the end.)
    #[allow(clippy::box_collection)]
    closing: Option<Box<String>>,
    /// Gateway-wide state.
    shared: Arc<GatewayContext>,
}

impl Drop for ClientConn {
    fn drop(&mut self) {
        if let Some(g) = crate::metrics::connected(self.transport.kind()) {
            g.decrement(1.0);
        }
    }
}

impl ClientConn {
    fn new(
        transport: Transport,
        head: BytesMut,
        shared: Arc<GatewayContext>,
        deadline: Instant,
    ) -> Self {
        if let Some(g) = crate::metrics::connected(transport.kind()) {
            g.increment(1.0);
        }
        let state = state::Protocol::new(shared.ms_at(deadline), &shared.limits);
        ClientConn {
            transport,
            rbuf: head,
            out: BytesMut::new(),
            flushing: false,
            written: None,
            started: false,
            owner: None,
            pending: None,
            state,
            closing: None,
            shared,
        }
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn connection_task_stays_small() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let _c = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (stream, peer) = listener.accept().await.expect("accept");
        let shared = std::sync::Arc::new(super::super::GatewayContext {
            config: Default::default(),
            sessions: crate::SessionService::new(Default::default()),
            backends: Default::default(),
            handlers: Default::default(),
            route_metrics: Default::default(),
            dictionary: None,
            on_handshake: None,
            check_client: None,
            cancel: Default::default(),
            tasks: Default::default(),
            per_ip: crate::listener::PerIp::new(1),
            limits: super::Limits::of(&Default::default()),
            filters: Default::default(),
            started: tokio::time::Instant::now(),
        });
        let permit = std::sync::Arc::new(tokio::sync::Semaphore::new(1))
            .acquire_owned()
            .await
            .expect("permit");
        assert!(shared.per_ip.try_enter(peer.ip()));
        let conn = super::ClientTask::new(stream, peer, shared.clone(), permit);
        let size = std::mem::size_of_val(&conn);
        eprintln!("connection task: {size} bytes");
        // Every byte here is paid by every connected client. The tokio task
        // around it adds its header and trailer and rounds up to 128 bytes:
        // at 520 bytes (release) the task takes 640; at 536 it took 768, and
        // idle clients measured 150 bytes more each. (Debug builds lay the
        // future out a little larger.)
        let limit = if cfg!(debug_assertions) { 528 } else { 520 };
        assert!(
            size <= limit,
            "the per-connection task grew to {size} bytes"
        );
        drop(conn);
        assert!(
            shared.per_ip.is_empty(),
            "a dropped connection gives its per-IP count back"
        );
    }
}
