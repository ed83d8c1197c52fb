//! In-process links: a frontend's RPC server and backends that run in the
//! same process meet through an in-memory pipe instead of a TCP socket.
//!
//! A frontend that serves in process ([`listen`], done by the frontend's
//! `RpcServer` when `RpcConfig::in_process` names it) takes pipes under
//! `inproc://<name>`; a backend given that address as its frontend's
//! ([`connect`]) gets one. Everything else is the TCP link's: the same
//! frames, hello, cluster secret, deadlines and ordering, so a game moves a
//! backend into its own process by changing the address alone.
//!
//! A backend may also hand its frontend a [`DirectBackend`] with the pipe
//! ([`connect_direct`]): the frontend then runs forwarded client requests
//! through it, on the client's own task, with no frame encoded and no task
//! crossed, while the backend's session calls still take the pipe.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), session_proxy_link::inproc::InProcessError> {
//! use session_proxy_link::inproc;
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! let mut listener = inproc::listen("doc-example")?;
//! let mut backend_side = inproc::connect("inproc://doc-example")?;
//! let mut frontend_side = listener.accept().await.expect("a pipe").stream;
//! backend_side.write_all(b"hello").await.expect("write");
//! let mut got = [0u8; 5];
//! frontend_side.read_exact(&mut got).await.expect("read");
//! assert_eq!(&got, b"hello");
//! # Ok(()) }
//! ```

use bytes::Bytes;
use session_proxy_protocol::sync::LockUnpoisoned as _;
use session_proxy_protocol::{Handle, RpcError};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::io::DuplexStream;
use tokio::sync::mpsc;

/// The address prefix of an in-process frontend.
pub const SCHEME: &str = "inproc://";

/// Bytes buffered in each direction of a pipe before the writer waits for
/// the reader (as a socket's buffer would).
const PIPE_BUFFER: usize = 256 * 1024;

/// Pipes waiting for their frontend to take them.
const BACKLOG: usize = 64;

/// Why an in-process listen or connect failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InProcessError {
    /// Another frontend of this process listens under the name.
    #[error("an in-process frontend named {0:?} exists already in this process")]
    NameTaken(String),
    /// The address does not start with `inproc://`, or names nothing.
    #[error("not an in-process address: {0:?}")]
    NotInProcess(String),
    /// No frontend of this process listens under the name (yet, or any more).
    #[error("no in-process frontend named {0:?} in this process")]
    NoSuchFrontend(String),
    /// The frontend has 64 pipes it has not taken yet.
    #[error("in-process frontend {0:?} is not taking connections")]
    Busy(String),
}

/// The answer of a request run through a [`DirectBackend`]: the handler's
/// answer for the client (JSON, application errors included), as a
/// [`Handle`] call replies over a link.
pub type DirectAnswer = Pin<Box<dyn Future<Output = Result<Bytes, RpcError>> + Send>>;

/// A backend of this process that its frontend calls directly for the
/// requests it forwards, instead of sending them through the pipe.
///
/// The contract is the link's: the handler sees the same session snapshot,
/// its session calls and pushes reach the frontend before its answer, it
/// stops at its deadline, and it stops at its next await when the frontend
/// drops the answer's future (the client left).
pub trait DirectBackend: Send + Sync + 'static {
    /// Starts `call` with `deadline` left. `Err` when the backend refuses it
    /// before it runs (shutting down); the future is the answer.
    fn handle(&self, call: Handle, deadline: Duration) -> Result<DirectAnswer, RpcError>;
}

/// A backend's pipe as its frontend takes it.
pub struct Pipe {
    /// The frontend's end of the pipe.
    pub stream: DuplexStream,
    /// The backend to call directly, if it offered itself
    /// ([`connect_direct`]).
    pub direct: Option<Arc<dyn DirectBackend>>,
}

impl std::fmt::Debug for Pipe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipe")
            .field("direct", &self.direct.is_some())
            .finish_non_exhaustive()
    }
}

/// Where `listen`ers wait, by name; the id tells a listener's entry from a
/// later one's of the same name.
type Listeners = Mutex<HashMap<String, (u64, mpsc::Sender<Pipe>)>>;

fn listeners() -> &'static Listeners {
    static LISTENERS: OnceLock<Listeners> = OnceLock::new();
    LISTENERS.get_or_init(Default::default)
}

/// A frontend's in-process listener; the name is free again once dropped.
#[derive(Debug)]
pub struct InProcessListener {
    name: String,
    id: u64,
    pipes: mpsc::Receiver<Pipe>,
}

impl InProcessListener {
    /// The next backend's pipe; `None` never happens while the listener
    /// lives (it holds its own sender in the registry).
    pub async fn accept(&mut self) -> Option<Pipe> {
        self.pipes.recv().await
    }

    /// The address backends dial: `inproc://<name>`.
    pub fn addr(&self) -> String {
        format!("{SCHEME}{}", self.name)
    }
}

impl Drop for InProcessListener {
    fn drop(&mut self) {
        let mut map = listeners().lock_unpoisoned();
        if map.get(&self.name).is_some_and(|(id, _)| *id == self.id) {
            map.remove(&self.name);
        }
    }
}

/// Listens under `name` (the address `inproc://<name>`).
pub fn listen(name: &str) -> Result<InProcessListener, InProcessError> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let mut map = listeners().lock_unpoisoned();
    if map.contains_key(name) {
        return Err(InProcessError::NameTaken(name.to_string()));
    }
    let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let (tx, pipes) = mpsc::channel(BACKLOG);
    map.insert(name.to_string(), (id, tx));
    Ok(InProcessListener {
        name: name.to_string(),
        id,
        pipes,
    })
}

/// Whether `addr` is an in-process address.
pub fn is_in_process(addr: &str) -> bool {
    addr.starts_with(SCHEME)
}

/// Opens a pipe to the in-process frontend at `addr` (`inproc://<name>`);
/// returns the backend's end. Never waits.
pub fn connect(addr: &str) -> Result<DuplexStream, InProcessError> {
    open(addr, None)
}

/// [`connect`], offering `direct` to the frontend for the requests it
/// forwards to this backend.
pub fn connect_direct(
    addr: &str,
    direct: Arc<dyn DirectBackend>,
) -> Result<DuplexStream, InProcessError> {
    open(addr, Some(direct))
}

fn open(
    addr: &str,
    direct: Option<Arc<dyn DirectBackend>>,
) -> Result<DuplexStream, InProcessError> {
    let name = addr
        .strip_prefix(SCHEME)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| InProcessError::NotInProcess(addr.to_string()))?;
    let map = listeners().lock_unpoisoned();
    let (_, pipes) = map
        .get(name)
        .ok_or_else(|| InProcessError::NoSuchFrontend(name.to_string()))?;
    let (backend, frontend) = tokio::io::duplex(PIPE_BUFFER);
    let pipe = Pipe {
        stream: frontend,
        direct,
    };
    pipes.try_send(pipe).map_err(|e| match e {
        mpsc::error::TrySendError::Full(_) => InProcessError::Busy(name.to_string()),
        mpsc::error::TrySendError::Closed(_) => InProcessError::NoSuchFrontend(name.to_string()),
    })?;
    Ok(backend)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn names_are_taken_once_and_freed_on_drop() {
        let listener = listen("unit-a").expect("free");
        assert_eq!(
            listen("unit-a").map(|_| ()),
            Err(InProcessError::NameTaken("unit-a".into()))
        );
        assert_eq!(listener.addr(), "inproc://unit-a");
        drop(listener);
        assert!(matches!(
            connect("inproc://unit-a"),
            Err(InProcessError::NoSuchFrontend(_))
        ));
        assert!(matches!(
            connect("127.0.0.1:1"),
            Err(InProcessError::NotInProcess(_))
        ));
        assert!(matches!(
            connect("inproc://"),
            Err(InProcessError::NotInProcess(_))
        ));
        let _again = listen("unit-a").expect("free again");
    }

    struct Answers;

    impl DirectBackend for Answers {
        fn handle(&self, call: Handle, _deadline: Duration) -> Result<DirectAnswer, RpcError> {
            Ok(Box::pin(async move { Ok(call.body) }))
        }
    }

    #[tokio::test]
    async fn a_pipe_carries_the_backend_it_offers_to_be_called_directly() {
        let mut listener = listen("unit-direct").expect("free");
        let _plain = connect("inproc://unit-direct").expect("open");
        let _direct = connect_direct("inproc://unit-direct", Arc::new(Answers)).expect("open");
        let plain = listener.accept().await.expect("a pipe");
        assert!(plain.direct.is_none());
        let direct = listener
            .accept()
            .await
            .expect("a pipe")
            .direct
            .expect("offered");
        let call = Handle {
            route: "game.h.echo".into(),
            session: session_proxy_protocol::SessionSnapshot {
                sid: session_proxy_protocol::SessionId::from_raw(7),
                frontend_id: "f1".into(),
                uid: None,
                settings: Default::default(),
            },
            body: Bytes::from_static(b"{}"),
        };
        let answer = direct
            .handle(call, Duration::from_secs(1))
            .expect("started");
        assert_eq!(answer.await, Ok(Bytes::from_static(b"{}")));
    }

    #[tokio::test]
    async fn a_frontend_that_takes_nothing_is_busy_not_a_wait() {
        let _listener = listen("unit-busy").expect("free");
        let mut kept = Vec::new();
        for _ in 0..BACKLOG {
            kept.push(connect("inproc://unit-busy").expect("backlog"));
        }
        assert_eq!(
            connect("inproc://unit-busy").map(|_| ()),
            Err(InProcessError::Busy("unit-busy".into()))
        );
    }
}
