//! What the RPC server and the client gateway share: binding a reusable
//! port, accepting under a connection limit, and stopping with a drain.

use crate::logs::warn_throttled;
use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Listens on `addr` with `SO_REUSEADDR`, so a restarted node takes its
/// port back at once.
pub(crate) fn bind_reusable(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// Accepts connections, at most `limit` open at once.
pub(crate) struct Acceptor {
    listener: TcpListener,
    limit: Arc<Semaphore>,
    cancel: CancellationToken,
}

impl Acceptor {
    pub(crate) fn new(listener: TcpListener, limit: usize, cancel: CancellationToken) -> Self {
        Acceptor {
            listener,
            limit: Arc::new(Semaphore::new(limit.max(1))),
            cancel,
        }
    }

    /// The next connection, with the permit its task must hold until it
    /// ends; `None` once cancelled. At the limit, new peers wait in the
    /// kernel's backlog instead of costing memory.
    pub(crate) async fn next(&self) -> Option<(TcpStream, SocketAddr, OwnedSemaphorePermit)> {
        let permit = tokio::select! {
            _ = self.cancel.cancelled() => return None,
            permit = self.limit.clone().acquire_owned() => permit.ok()?,
        };
        let (stream, peer) = accept(&self.listener, &self.cancel).await?;
        Some((stream, peer, permit))
    }
}

/// The next connection on `listener`; `None` once cancelled. Accept errors
/// (out of file descriptors and the like) pause briefly instead of
/// spinning, and are logged at most once a second.
pub(crate) async fn accept(
    listener: &TcpListener,
    cancel: &CancellationToken,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => return None,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                return Some((stream, peer));
            }
            Err(err) => {
                warn_throttled!(cause = %session_proxy_protocol::chain(&err), "accept failed; pausing 50 ms");
                tokio::select! {
                    _ = cancel.cancelled() => return None,
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
            }
        }
    }
}

/// Connections counted per IP address, up to a limit each: the gateway's
/// clients, and the RPC server's connections still in their handshake.
#[derive(Debug)]
pub(crate) struct PerIp {
    counts: DashMap<IpAddr, usize>,
    limit: usize,
}

impl PerIp {
    pub(crate) fn new(limit: usize) -> Self {
        PerIp {
            counts: DashMap::new(),
            limit,
        }
    }

    /// Counts one more connection from `ip`, unless it has `limit` already.
    /// Each `true` is matched by one [`leave`](Self::leave).
    pub(crate) fn try_enter(&self, ip: IpAddr) -> bool {
        let mut n = self.counts.entry(ip).or_insert(0);
        if *n >= self.limit {
            return false;
        }
        *n += 1;
        true
    }

    /// Uncounts one connection from `ip`.
    pub(crate) fn leave(&self, ip: IpAddr) {
        if let Entry::Occupied(mut n) = self.counts.entry(ip) {
            *n.get_mut() -= 1;
            if *n.get() == 0 {
                n.remove();
            }
        }
    }

    /// Whether no connection is counted.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    /// Like [`try_enter`](Self::try_enter), as a guard that leaves on drop.
    pub(crate) fn enter(self: &Arc<Self>, ip: IpAddr) -> Option<IpSlot> {
        self.try_enter(ip).then(|| IpSlot {
            per_ip: self.clone(),
            ip,
        })
    }
}

/// One connection counted in a [`PerIp`]; uncounted on drop.
#[derive(Debug)]
pub(crate) struct IpSlot {
    per_ip: Arc<PerIp>,
    ip: IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        self.per_ip.leave(self.ip);
    }
}

/// A running server's handle: its address, its stop signal, its tasks.
#[derive(Debug)]
pub(crate) struct Running {
    pub(crate) local_addr: SocketAddr,
    pub(crate) cancel: CancellationToken,
    pub(crate) tracker: TaskTracker,
}

impl Running {
    pub(crate) fn new(listener: &TcpListener) -> Self {
        Running {
            local_addr: listener
                .local_addr()
                .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0))),
            cancel: CancellationToken::new(),
            tracker: TaskTracker::new(),
        }
    }

    /// Signals every task to stop and waits up to `drain` for them.
    pub(crate) async fn shutdown(&self, drain: Duration) -> bool {
        self.cancel.cancel();
        self.tracker.close();
        tokio::time::timeout(drain, self.tracker.wait())
            .await
            .is_ok()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}
