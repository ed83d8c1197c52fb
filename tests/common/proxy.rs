//! A TCP proxy on loopback whose connections a test can cut, to drop a
//! client's connection without the server's doing.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinHandle};

/// Forwards every connection to one address until cut; stops when dropped.
pub struct CutProxy {
    addr: SocketAddr,
    conns: Arc<Mutex<Vec<AbortHandle>>>,
    task: JoinHandle<()>,
}

impl CutProxy {
    /// Listens on a free loopback port and forwards to `to`.
    pub async fn start(to: SocketAddr) -> CutProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let conns: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let held = conns.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut down, _)) = listener.accept().await {
                let forward = tokio::spawn(async move {
                    if let Ok(mut up) = TcpStream::connect(to).await {
                        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                    }
                });
                held.lock().expect("conns").push(forward.abort_handle());
            }
        });
        CutProxy { addr, conns, task }
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Drops every connection through it (both sides close).
    pub fn cut(&self) {
        for c in self.conns.lock().expect("conns").drain(..) {
            c.abort();
        }
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.cut();
        self.task.abort();
    }
}
