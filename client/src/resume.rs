//! A client that keeps its session: [`SessionClient`] resumes with the
//! server's token after a dropped connection, goes back to its [`Entry`]
//! (a gate, or a function that picks a connector) when its connector
//! drains (a `"reconnect"` kick), and says whether the session came back
//! ([`ResumeEvent::Session`]).
//!
//! Requests made while it reconnects wait for the session, within their
//! timeout, or fail at once ([`WhileReconnecting`]). A request in flight
//! when the connection drops fails with [`ClientError::ClosedBefore`]: it
//! may or may not have been applied. When the session does not come back
//! (its token was stale), the requests that waited for it fail with
//! [`ClientError::SessionLost`] and the game logs in again.
//!
//! # Example
//! ```
//! use serde_json::{json, Value};
//! use session_proxy_client::{Entry, ResumeEvent, ResumeOptions, SessionClient};
//! use session_proxy_frontend::{BackendRegistry, Gateway, GatewayConfig, SessionConfig, SessionService};
//! use std::time::Duration;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let sessions = SessionService::new(SessionConfig::new("connector-1"));
//! let mut gateway = Gateway::new(sessions, BackendRegistry::default(), GatewayConfig::new("connector"));
//! gateway.handlers().add("connector.entryHandler.hello", |_ctx, _: Value| async move {
//!     Ok(json!({ "code": 200 }))
//! });
//! let server = gateway.bind("127.0.0.1:0".parse()?).await?;
//!
//! let client = SessionClient::connect(Entry::Direct(server.local_addr()), ResumeOptions::default()).await?;
//! // The first session is a new one: log in. After a drop, the client
//! // resumes by itself and says so with `resumed: true`.
//! match client.next_event(Duration::from_secs(1)).await {
//!     Some(ResumeEvent::Session { resumed: false, .. }) => {
//!         client.request("connector.entryHandler.hello", &json!({})).await?;
//!     }
//!     other => panic!("{other:?}"),
//! }
//! // What to keep to come back after the game restarts (ResumeOptions::saved).
//! assert!(client.saved().is_some());
//! server.shutdown(Duration::from_secs(1)).await;
//! # Ok(())
//! # }
//! ```

use crate::{ClientError, PomeloClient, PomeloEvent, PomeloOptions};
use serde_json::Value;
use session_proxy_protocol::sync::LockUnpoisoned as _;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::{timeout, timeout_at, Instant};

/// Where a client finds its connector.
#[derive(Clone)]
pub enum Entry {
    /// One connector, always.
    Direct(SocketAddr),
    /// Ask a gate: a request to `route` with `body`, answered `{code: 200,
    /// host, port}` (chatofpomelo's `gate.gateHandler.queryEntry`).
    Gate {
        /// The gate's address.
        addr: SocketAddr,
        /// The route that answers.
        route: String,
        /// The request's body (e.g. `{"uid": …}`).
        body: Value,
    },
    /// Ask a function (a registry, a matchmaker); `None` when it has no
    /// connector to give yet.
    Pick(Arc<dyn Fn() -> Option<SocketAddr> + Send + Sync>),
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Entry::Direct(addr) => f.debug_tuple("Direct").field(addr).finish(),
            Entry::Gate { addr, route, .. } => f
                .debug_struct("Gate")
                .field("addr", addr)
                .field("route", route)
                .finish(),
            Entry::Pick(_) => f.write_str("Pick(..)"),
        }
    }
}

/// A session to resume: the connector that holds it and its token. Keep it
/// (it changes on every resume: [`SessionClient::saved`]) to come back
/// after the game restarts ([`ResumeOptions::saved`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Saved {
    /// The connector.
    pub addr: SocketAddr,
    /// The resume token (`user.resumeToken`).
    pub token: String,
}

/// What requests made while reconnecting do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum WhileReconnecting {
    /// Wait for the session, within the request timeout; sent once it is
    /// back, failed with [`ClientError::SessionLost`] if a new one started.
    #[default]
    Wait,
    /// Fail at once with [`ClientError::Reconnecting`].
    Fail,
}

/// How a [`SessionClient`] connects and reconnects.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ResumeOptions {
    /// Each connection's options (transport, TLS, request timeout, …).
    pub client: PomeloOptions,
    /// Reconnect attempts before it gives up. Default: 10.
    pub attempts: u32,
    /// The first delay's upper bound; it doubles per attempt, with full
    /// jitter. Default: 200 ms.
    pub min_delay: Duration,
    /// The longest delay. Default: 5 s.
    pub max_delay: Duration,
    /// How long opening a connection and its handshake may take. Default: 5 s.
    pub connect_timeout: Duration,
    /// Requests made while reconnecting. Default: wait.
    pub while_reconnecting: WhileReconnecting,
    /// A session to resume at the first connect. Default: none.
    pub saved: Option<Saved>,
}

impl Default for ResumeOptions {
    fn default() -> Self {
        ResumeOptions {
            client: PomeloOptions::default(),
            attempts: 10,
            min_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            while_reconnecting: WhileReconnecting::Wait,
            saved: None,
        }
    }
}

/// What happened to a [`SessionClient`]'s session, in order.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum ResumeEvent {
    /// A connection was established (the first one too): `resumed` says
    /// whether the server gave the same session back. When it did not, the
    /// game logs in again.
    Session {
        /// The same session back.
        resumed: bool,
        /// Why a resume was refused (`user.resumeRefused`), when it was.
        refused: Option<String>,
        /// The connector.
        addr: SocketAddr,
    },
    /// The connection was lost; an attempt is about to be made.
    Reconnecting {
        /// 1 for the first attempt.
        attempt: u32,
        /// The delay before it.
        delay: Duration,
        /// Why the connection was lost.
        cause: String,
    },
    /// A push.
    Push {
        /// Its route.
        route: String,
        /// Its JSON body.
        body: Value,
    },
    /// A kick that ends the session (not `"reconnect"`, which the client
    /// handles); the client is closed after it.
    Kicked {
        /// The server's reason.
        reason: String,
    },
    /// The client gave up reconnecting; it is closed.
    GaveUp {
        /// The last attempt's error.
        error: String,
    },
}

#[derive(Clone)]
enum Link {
    /// Connected, in the `session`-th session (counted from 0; a resume
    /// keeps the count, a fresh session adds one).
    Open {
        client: Arc<PomeloClient>,
        session: u64,
    },
    /// Reconnecting after session `session` lost its connection.
    Reconnecting { session: u64 },
    /// Closed for good.
    Closed,
}

/// A client that keeps its session (see the [module](self)). Clones share
/// it: one task can read its events while others make requests. It closes
/// when the last clone is dropped, or at [`close`](Self::close).
#[derive(Clone, Debug)]
pub struct SessionClient {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    link: watch::Receiver<Link>,
    saved: Arc<Mutex<Option<Saved>>>,
    events: tokio::sync::Mutex<mpsc::UnboundedReceiver<ResumeEvent>>,
    request_timeout: Duration,
    while_reconnecting: WhileReconnecting,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl fmt::Debug for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Link::Open { session, .. } => write!(f, "Open(session {session})"),
            Link::Reconnecting { session } => write!(f, "Reconnecting(session {session})"),
            Link::Closed => f.write_str("Closed"),
        }
    }
}

impl SessionClient {
    /// Connects through `entry`: resumes [`ResumeOptions::saved`] when
    /// given, or starts a new session. The first [`ResumeEvent::Session`]
    /// is already in [`next_event`](Self::next_event)'s queue.
    pub async fn connect(
        entry: Entry,
        options: ResumeOptions,
    ) -> Result<SessionClient, ClientError> {
        let saved = Arc::new(Mutex::new(options.saved.clone()));
        let (mut client, established) = establish(&entry, &options, &saved, false).await?;
        let (events_tx, events) = mpsc::unbounded_channel();
        let _ = events_tx.send(established);
        let conn_events = take_events(&mut client);
        let client = Arc::new(client);
        let (link_tx, link) = watch::channel(Link::Open { client, session: 0 });
        let supervisor = Supervisor {
            entry,
            options: options.clone(),
            saved: saved.clone(),
            link: link_tx,
            events: events_tx,
            session: 0,
        };
        let task = tokio::spawn(supervisor.run(conn_events));
        let shared = Shared {
            link,
            saved,
            events: tokio::sync::Mutex::new(events),
            request_timeout: options.client.request_timeout,
            while_reconnecting: options.while_reconnecting,
            task,
        };
        Ok(SessionClient {
            shared: Arc::new(shared),
        })
    }

    /// The session to resume, as it stands (its token changes on every
    /// resume); `None` once the session is over.
    pub fn saved(&self) -> Option<Saved> {
        self.shared.saved.lock_unpoisoned().clone()
    }

    /// Whether the client is connected now.
    pub fn is_connected(&self) -> bool {
        matches!(*self.shared.link.borrow(), Link::Open { .. })
    }

    /// Whether the client is closed (kicked, or it gave up).
    pub fn is_closed(&self) -> bool {
        matches!(*self.shared.link.borrow(), Link::Closed)
    }

    /// Sends a request and waits for its response body, within the request
    /// timeout (waiting for the session first while reconnecting).
    pub async fn request(&self, route: &str, body: &Value) -> Result<Value, ClientError> {
        let s = &self.shared;
        let deadline = Instant::now() + s.request_timeout;
        let mut link = s.link.clone();
        let mut since: Option<u64> = None;
        loop {
            let now = link.borrow_and_update().clone();
            let waiting_on = match now {
                Link::Open { client, session } => {
                    if since.is_some_and(|s| s != session) {
                        return Err(ClientError::SessionLost {
                            route: route.to_string(),
                        });
                    }
                    match client.request(route, body).await {
                        // Not sent: the connection is gone; wait for the next.
                        Err(ClientError::Closed)
                            if s.while_reconnecting == WhileReconnecting::Wait =>
                        {
                            session
                        }
                        other => return other,
                    }
                }
                Link::Reconnecting { session } => {
                    if s.while_reconnecting == WhileReconnecting::Fail {
                        return Err(ClientError::Reconnecting {
                            route: route.to_string(),
                        });
                    }
                    session
                }
                Link::Closed => return Err(ClientError::Closed),
            };
            since.get_or_insert(waiting_on);
            match timeout_at(deadline, link.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(ClientError::Closed),
                Err(_) => {
                    return Err(ClientError::Timeout {
                        route: route.to_string(),
                        after: s.request_timeout,
                    })
                }
            }
        }
    }

    /// Sends a notify on the current connection; fails while reconnecting.
    pub async fn notify(&self, route: &str, body: &Value) -> Result<(), ClientError> {
        let now = self.shared.link.borrow().clone();
        match now {
            Link::Open { client, .. } => client.notify(route, body).await,
            Link::Reconnecting { .. } => Err(ClientError::Reconnecting {
                route: route.to_string(),
            }),
            Link::Closed => Err(ClientError::Closed),
        }
    }

    /// The next event, waiting at most `wait`; `None` when none came, or the
    /// client is closed and every event was read. Clones share one queue:
    /// read it from one task.
    pub async fn next_event(&self, wait: Duration) -> Option<ResumeEvent> {
        timeout(wait, async { self.shared.events.lock().await.recv().await })
            .await
            .ok()
            .flatten()
    }

    /// Closes the client, for every clone (the session stays resumable on
    /// the server for its resume grace, with [`saved`](Self::saved)).
    pub fn close(self) {
        self.shared.task.abort();
    }
}

/// The connection's own events, taken over by the supervisor.
fn take_events(client: &mut PomeloClient) -> mpsc::UnboundedReceiver<PomeloEvent> {
    let (_, none) = mpsc::unbounded_channel();
    std::mem::replace(&mut client.events, none)
}

/// Finds a connector through `entry`.
async fn pick(entry: &Entry, options: &ResumeOptions) -> Result<SocketAddr, ClientError> {
    match entry {
        Entry::Direct(addr) => Ok(*addr),
        Entry::Pick(f) => f().ok_or_else(|| ClientError::NoEntry("no connector to pick".into())),
        Entry::Gate { addr, route, body } => {
            let o = PomeloOptions {
                transport: options.client.transport,
                tls: options.client.tls.clone(),
                request_timeout: options.client.request_timeout,
                ..PomeloOptions::default()
            };
            let gate = PomeloClient::connect_with(*addr, o).await?;
            let answer = gate.request(route, body).await?;
            gate.close();
            let (Some(200), Some(host), Some(port)) = (
                answer["code"].as_u64(),
                answer["host"].as_str().map(str::to_string),
                answer["port"].as_u64().and_then(|p| u16::try_from(p).ok()),
            ) else {
                return Err(ClientError::NoEntry(answer.to_string()));
            };
            let found = tokio::net::lookup_host((host.as_str(), port))
                .await
                .map_err(|source| ClientError::Resolve {
                    host: host.clone(),
                    source,
                })?
                .next();
            found.ok_or_else(|| ClientError::NoEntry(format!("{host} has no address")))
        }
    }
}

/// Opens a connection, resuming the saved session if there is one (at its
/// connector, or wherever `entry` says when `reroute`).
async fn establish(
    entry: &Entry,
    options: &ResumeOptions,
    saved: &Mutex<Option<Saved>>,
    reroute: bool,
) -> Result<(PomeloClient, ResumeEvent), ClientError> {
    let held = saved.lock_unpoisoned().clone();
    let attempt = async {
        let addr = match &held {
            Some(s) if !reroute => s.addr,
            _ => pick(entry, options).await?,
        };
        let mut o = options.client.clone();
        if let Some(s) = &held {
            if !o.user.is_object() {
                o.user = Value::Object(Default::default());
            }
            o.user["resumeToken"] = Value::String(s.token.clone());
        }
        Ok::<_, ClientError>((addr, PomeloClient::connect_with(addr, o).await?))
    };
    let (addr, client) = timeout(options.connect_timeout, attempt)
        .await
        .map_err(|_| ClientError::HandshakeTimeout)??;
    let user = &client.handshake()["user"];
    let event = ResumeEvent::Session {
        resumed: user["resumed"] == true,
        refused: user["resumeRefused"].as_str().map(str::to_string),
        addr,
    };
    *saved.lock_unpoisoned() = client.resume_token().map(|token| Saved {
        addr,
        token: token.to_string(),
    });
    Ok((client, event))
}

/// The task that owns the connection's events and reconnects.
struct Supervisor {
    entry: Entry,
    options: ResumeOptions,
    saved: Arc<Mutex<Option<Saved>>>,
    link: watch::Sender<Link>,
    events: mpsc::UnboundedSender<ResumeEvent>,
    session: u64,
}

impl Supervisor {
    async fn run(mut self, mut conn: mpsc::UnboundedReceiver<PomeloEvent>) {
        loop {
            let mut kicked = None;
            while let Some(event) = conn.recv().await {
                match event {
                    PomeloEvent::Push { route, body } => {
                        let _ = self.events.send(ResumeEvent::Push { route, body });
                    }
                    PomeloEvent::Kick { reason } => kicked = Some(reason),
                    PomeloEvent::Closed => break,
                }
            }
            let cause = match kicked {
                Some(reason) if reason != "reconnect" => {
                    // The session is over on the server.
                    *self.saved.lock_unpoisoned() = None;
                    let _ = self.link.send(Link::Closed);
                    let _ = self.events.send(ResumeEvent::Kicked { reason });
                    return;
                }
                Some(_) => "the connector is draining",
                None => "the connection was lost",
            };
            let _ = self.link.send(Link::Reconnecting {
                session: self.session,
            });
            match self.reconnect(kicked.is_some(), cause).await {
                Ok(next) => conn = next,
                Err(error) => {
                    let _ = self.link.send(Link::Closed);
                    let _ = self.events.send(ResumeEvent::GaveUp {
                        error: session_proxy_protocol::chain(&error).to_string(),
                    });
                    return;
                }
            }
        }
    }

    async fn reconnect(
        &mut self,
        mut reroute: bool,
        cause: &str,
    ) -> Result<mpsc::UnboundedReceiver<PomeloEvent>, ClientError> {
        let o = &self.options;
        let mut last = ClientError::Closed;
        for attempt in 1..=o.attempts.max(1) {
            // Full jitter; a draining connector's players go at once.
            let cap = o
                .min_delay
                .saturating_mul(1u32 << (attempt - 1).min(16))
                .min(o.max_delay);
            let delay = if attempt == 1 && reroute {
                Duration::ZERO
            } else {
                cap.mul_f64(jitter())
            };
            let _ = self.events.send(ResumeEvent::Reconnecting {
                attempt,
                delay,
                cause: cause.to_string(),
            });
            tokio::time::sleep(delay).await;
            match establish(&self.entry, o, &self.saved, reroute).await {
                Ok((mut client, event)) => {
                    if matches!(event, ResumeEvent::Session { resumed: false, .. }) {
                        self.session += 1;
                    }
                    let conn = take_events(&mut client);
                    let _ = self.link.send(Link::Open {
                        client: Arc::new(client),
                        session: self.session,
                    });
                    let _ = self.events.send(event);
                    return Ok(conn);
                }
                Err(err) => {
                    // A connector that cannot be reached: ask the entry next.
                    reroute = !matches!(self.entry, Entry::Direct(_));
                    // A handshake refused with this token will be again,
                    // unless the server said to try again.
                    if matches!(err, ClientError::Refused { retry: false, .. }) {
                        *self.saved.lock_unpoisoned() = None;
                    }
                    last = err;
                }
            }
        }
        Err(last)
    }
}

/// A number in [0, 1) for jitter, from the clock and a per-process counter
/// (no random-number crate for this).
fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}
