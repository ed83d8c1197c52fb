//! A frontend's link to the store through a proxy that can delay or stall
//! it (this kernel has no netem).

use anyhow::Context;
use std::net::SocketAddr;
use std::time::Duration;

/// A frontend's link to the store: a proxy in the players' host that
/// holds every chunk for the delay it is given (forever: a stall).
pub(super) struct StoreLink {
    /// Where the frontend dials its store.
    pub(super) addr: SocketAddr,
    delay: tokio::sync::watch::Sender<Duration>,
    task: tokio::task::JoinHandle<()>,
}

/// A stall: nothing goes through until it is lifted.
pub(super) const STALL: Duration = Duration::MAX;

impl StoreLink {
    pub(super) async fn start(listen: SocketAddr, to: SocketAddr) -> anyhow::Result<StoreLink> {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("the store link's proxy on {listen}"))?;
        let (delay, rx) = tokio::sync::watch::channel(Duration::ZERO);
        let task = tokio::spawn(async move {
            while let Ok((down, _)) = listener.accept().await {
                let rx = rx.clone();
                tokio::spawn(async move {
                    let Ok(up) = tokio::net::TcpStream::connect(to).await else {
                        return;
                    };
                    let (dr, dw) = down.into_split();
                    let (ur, uw) = up.into_split();
                    tokio::join!(pump(dr, uw, rx.clone()), pump(ur, dw, rx));
                });
            }
        });
        Ok(StoreLink {
            addr: listen,
            delay,
            task,
        })
    }
}

/// Copies `from` to `to`, each chunk after the delay in force.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut delay: tokio::sync::watch::Receiver<Duration>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        loop {
            let d = *delay.borrow_and_update();
            if d == STALL {
                if delay.changed().await.is_err() {
                    return;
                }
                continue;
            }
            tokio::time::sleep(d).await;
            break;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

impl StoreLink {
    /// Every chunk from now on waits `delay` ([`STALL`]: until lifted).
    pub(super) fn set(&self, delay: Duration) {
        let _ = self.delay.send(delay);
    }
}

impl Drop for StoreLink {
    fn drop(&mut self) {
        self.task.abort();
    }
}
