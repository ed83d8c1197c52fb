//! The chat page over plain HTTP/1.1: `GET /` answers the page (with the
//! gate's port filled in), anything else 404. One request per connection,
//! its head capped at 8 KiB and read within 5 s, at most 64 connections at
//! once; nothing else is needed to hand one static page to a browser.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// The page, with `__GATE_PORT__` where the gate's port goes.
const PAGE: &str = include_str!("../web/index.html");
/// The longest request head read.
const MAX_HEAD: usize = 8 * 1024;
/// How long a request may take to arrive, and its answer to be written.
const DEADLINE: Duration = Duration::from_secs(5);
/// Connections served at once; more wait in the backlog.
const MAX_CONNECTIONS: usize = 64;

/// The page's HTTP listener; it stops when dropped.
pub(crate) struct WebServer {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl WebServer {
    /// Listens on `addr` and serves the page for the gate at `gate_port`.
    pub(crate) async fn bind(addr: SocketAddr, gate_port: u16) -> std::io::Result<WebServer> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let page = Arc::new(PAGE.replace("__GATE_PORT__", &gate_port.to_string()));
        let task = tokio::spawn(serve(listener, page));
        Ok(WebServer { addr, task })
    }

    /// Where the page is.
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for WebServer {
    fn drop(&mut self) {
        // Its connections are in the task's JoinSet: they go with it.
        self.task.abort();
    }
}

async fn serve(listener: TcpListener, page: Arc<String>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept(), if connections.len() < MAX_CONNECTIONS => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(answer(stream, page.clone()));
                }
                Err(err) => {
                    // Out of descriptors, most likely: wait, then go on.
                    tracing::warn!(cause = %session_proxy::protocol::chain(&err), "chat page: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Reads one request head and answers it.
async fn answer(mut stream: TcpStream, page: Arc<String>) {
    let Ok(Some(head)) = tokio::time::timeout(DEADLINE, read_head(&mut stream)).await else {
        return;
    };
    let line = head.lines().next().unwrap_or_default();
    let mut words = line.split(' ');
    let method = words.next().unwrap_or_default();
    let path = words.next().unwrap_or_default();
    let path = path.split('?').next().unwrap_or_default();
    let (status, kind, body) = match (method, path) {
        ("GET", "/" | "/index.html") => ("200 OK", "text/html; charset=utf-8", page.as_str()),
        ("GET", _) => ("404 Not Found", "text/plain; charset=utf-8", "not found\n"),
        _ => (
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            "GET only\n",
        ),
    };
    let reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(DEADLINE, async {
        stream.write_all(reply.as_bytes()).await?;
        stream.shutdown().await
    })
    .await;
}

/// The request head, up to its blank line; `None` if the peer closes first
/// or sends more than [`MAX_HEAD`] bytes without one.
async fn read_head(stream: &mut TcpStream) -> Option<String> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() > MAX_HEAD {
            return None;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => head.extend_from_slice(&chunk[..n]),
        }
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}
