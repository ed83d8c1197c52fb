//! What the RPC server and the client gateway share: binding a reusable
//! port, accepting under a connection limit, and stopping with a drain.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::warn;

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
        loop {
            let accepted = tokio::select! {
                _ = self.cancel.cancelled() => return None,
                accepted = self.listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    return Some((stream, peer, permit));
                }
                Err(err) => {
                    // Out of file descriptors and the like: back off briefly
                    // instead of spinning.
                    warn!(cause = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
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
