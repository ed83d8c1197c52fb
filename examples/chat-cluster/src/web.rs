//! The chat page over plain HTTP/1.1: `GET /` answers the page (with the
//! gate's port filled in), `GET /client/<module>.js` the client library's
//! ES modules (`clients/js/dist`, built by `tsc` and kept in the
//! repository), anything else 404. One request per connection,
//! its head capped at 8 KiB and read within 5 s, at most 64 connections at
//! once; nothing else is needed to hand one static page to a browser.
//!
//! A trickle cannot starve it (slowloris): when every place is taken, a new
//! connection takes the place of the one that has been reading its request
//! head the longest. A browser sends its head at once, so the connections
//! that lose their place are the ones that trickle.

use session_proxy::protocol::sync::LockUnpoisoned as _;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinSet};

/// The page, with `__GATE_PORT__` where the gate's port goes.
const PAGE: &str = include_str!("../web/index.html");
/// The client library's modules, as the page imports them.
const CLIENT: [(&str, &str); 5] = [
    (
        "/client/index.js",
        include_str!("../../../clients/js/dist/index.js"),
    ),
    (
        "/client/client.js",
        include_str!("../../../clients/js/dist/client.js"),
    ),
    (
        "/client/connection.js",
        include_str!("../../../clients/js/dist/connection.js"),
    ),
    (
        "/client/protobuf.js",
        include_str!("../../../clients/js/dist/protobuf.js"),
    ),
    (
        "/client/protocol.js",
        include_str!("../../../clients/js/dist/protocol.js"),
    ),
];

/// The longest request head read.
const MAX_HEAD: usize = 8 * 1024;
/// How long a request may take to arrive, and its answer to be written.
const DEADLINE: Duration = Duration::from_secs(5);
/// Connections served at once; past it, the slowest head reader makes room.
const MAX_CONNECTIONS: usize = 64;

/// The connections still reading their request head, oldest first.
#[derive(Default)]
struct Reading {
    next: u64,
    by_age: BTreeMap<u64, AbortHandle>,
}

impl Reading {
    /// Ends the connection that has been reading its head the longest;
    /// false when none is (every place is writing an answer).
    fn evict_oldest(&mut self) -> bool {
        match self.by_age.pop_first() {
            Some((_, slowest)) => {
                slowest.abort();
                true
            }
            None => false,
        }
    }
}

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
    let reading = Arc::new(Mutex::new(Reading::default()));
    loop {
        // Room, or a head reader that can make room.
        let room =
            connections.len() < MAX_CONNECTIONS || !reading.lock_unpoisoned().by_age.is_empty();
        tokio::select! {
            accepted = listener.accept(), if room => match accepted {
                Ok((stream, _)) => {
                    let mut r = reading.lock_unpoisoned();
                    if connections.len() >= MAX_CONNECTIONS {
                        r.evict_oldest();
                    }
                    let id = r.next;
                    r.next += 1;
                    let handle = connections.spawn(answer(stream, page.clone(), (id, reading.clone())));
                    r.by_age.insert(id, handle);
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

/// Reads one request head and answers it; `(id, reading)` is its place
/// among the head readers, left once the head is in.
async fn answer(
    mut stream: TcpStream,
    page: Arc<String>,
    (id, reading): (u64, Arc<Mutex<Reading>>),
) {
    let head = tokio::time::timeout(DEADLINE, read_head(&mut stream)).await;
    reading.lock_unpoisoned().by_age.remove(&id);
    let Ok(Some(head)) = head else {
        return;
    };
    let line = head.lines().next().unwrap_or_default();
    let mut words = line.split(' ');
    let method = words.next().unwrap_or_default();
    let path = words.next().unwrap_or_default();
    let path = path.split('?').next().unwrap_or_default();
    let (status, kind, body) = match (method, path) {
        ("GET", "/" | "/index.html") => ("200 OK", "text/html; charset=utf-8", page.as_str()),
        ("GET", path) => match CLIENT.iter().find(|(p, _)| *p == path) {
            Some((_, module)) => ("200 OK", "text/javascript; charset=utf-8", *module),
            None => ("404 Not Found", "text/plain; charset=utf-8", "not found\n"),
        },
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_trickle_of_slow_heads_does_not_starve_a_real_request() {
        let server = WebServer::bind("127.0.0.1:0".parse().expect("addr"), 3014)
            .await
            .expect("bind");
        // Four times as many trickling connections as there are places,
        // each with a head that never ends; all held open to the end.
        let mut trickles = Vec::new();
        for _ in 0..4 * MAX_CONNECTIONS {
            let mut slow = TcpStream::connect(server.local_addr())
                .await
                .expect("connect");
            slow.write_all(b"GET / HTTP/1.1\r\nX-Slow: ")
                .await
                .expect("write");
            trickles.push(slow);
        }
        // A browser's request is answered while they all still trickle
        // (they would hold every place for 5 s each, a batch at a time).
        let page = tokio::time::timeout(Duration::from_secs(3), async {
            let mut browser = TcpStream::connect(server.local_addr())
                .await
                .expect("connect");
            browser
                .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .expect("write");
            let mut answer = Vec::new();
            browser.read_to_end(&mut answer).await.expect("read");
            String::from_utf8_lossy(&answer).into_owned()
        })
        .await
        .expect("the page is answered in the middle of the trickle");
        assert!(page.starts_with("HTTP/1.1 200 OK"), "{page}");
        assert!(page.contains("3014"), "the gate's port is filled in");
        drop(trickles);
    }
}
