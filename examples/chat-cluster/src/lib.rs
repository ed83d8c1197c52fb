//! The reference chat — Pomelo's "chatofpomelo" — rebuilt on session-proxy.
//!
//! A gate tells each user which connector to use; connectors hold the
//! client connections and sessions; chat servers keep one channel per room.
//! Routes: `gate.gateHandler.queryEntry {uid}`, `connector.entryHandler.enter
//! {username, rid}`, `chat.chatHandler.send {content, from, target}`; pushes:
//! `onAdd`, `onChat`, `onLeave`. Any Pomelo/Pinus client can join.
//!
//! With a registry ([`ChatConfig::registry`]) the connectors register in it
//! with their client counts, and the gate hands out the active connector
//! with the fewest clients, never a draining one; without one it hashes the
//! uid over the connectors, as chatofpomelo does.
//!
//! The connectors speak protobuf bodies to Pomelo's protobuf clients (those
//! that send `sys.protoVersion`), with the protos in `protos/` (built in);
//! `chat.chatHandler.send` has no answer proto, so its answer stays JSON.
//! Other clients speak JSON on every route.

use anyhow::Context;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};
use session_proxy::backend::{BackendSession, BackendSessionService};
use session_proxy::backend::{ChannelService, HandlerError, Handlers, RemoteCx, Remotes};
use session_proxy::filters::{check, Bucket, RateLimit};
use session_proxy::frontend::{pick_by_key, HashRouter, Router};
use session_proxy::frontend::{SessionService, SingleSessionPolicy};
use session_proxy::frontend::{SessionStore, StoreOptions};
use session_proxy::node::{BackendRole, DrainReport, FrontendRole, Node};
use session_proxy::protocol::client::protobuf::Protos;
use session_proxy::protocol::{SessionSnapshot, Target};
use session_proxy::registry::Membership;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

mod web;

/// How to lay out the chat cluster.
#[derive(Clone)]
#[non_exhaustive]
pub struct ChatConfig {
    /// Connectors (frontends). Default: 2.
    pub connectors: usize,
    /// Chat servers (backends). Default: 2.
    pub chat_servers: usize,
    /// The address everything listens on. Default: 127.0.0.1.
    pub host: IpAddr,
    /// The gate's port (0 = any free port). Default: 3014, as in chatofpomelo.
    pub gate_port: u16,
    /// The first connector's client port; the next ones count up (0 = any
    /// free ports). Default: 3050.
    pub connector_port: u16,
    /// The heartbeat interval told to clients. Default: 10 s.
    pub heartbeat: Duration,
    /// How long a dropped player may come back with its resume token before
    /// it leaves its room (the chat page comes back so after a reload).
    /// Zero: a drop is a leave, as in chatofpomelo. Default: 30 s.
    pub resume_grace: Duration,
    /// Connections one client IP may hold on a connector. Default: 256.
    pub max_connections_per_ip: usize,
    /// Where the connectors register (under a lease of `lease`) and where
    /// the gate picks them from. Default: `None` (the gate hashes uids).
    pub registry: Option<Arc<dyn Membership>>,
    /// The connectors' lease in the registry. Default: 10 s.
    pub lease: Duration,
    /// Serve the chat page over HTTP on this port of `host` (0 = any free
    /// port); it talks to the gate and a connector over WebSocket.
    /// Default: `None`.
    pub web_port: Option<u16>,
    /// Serve the chat's protos (`protos/serverProtos.json`,
    /// `protos/clientProtos.json`) to protobuf clients. Default: `true`.
    pub protobuf: bool,
    /// Where the connectors keep their sessions: shared, a connector's
    /// players resume on another one after it drains or dies (their client
    /// asks the gate again). Default: `None` (each connector keeps its own).
    pub store: Option<Arc<dyn SessionStore>>,
}

/// The chat's protos, as pomelo-protobuf describes them.
pub fn chat_protos() -> anyhow::Result<Arc<Protos>> {
    let protos = Protos::from_json_text(
        include_str!("../protos/serverProtos.json"),
        include_str!("../protos/clientProtos.json"),
    )
    .context("the chat's protos")?;
    Ok(Arc::new(protos))
}

impl std::fmt::Debug for ChatConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatConfig")
            .field("connectors", &self.connectors)
            .field("chat_servers", &self.chat_servers)
            .field("gate_port", &self.gate_port)
            .field("connector_port", &self.connector_port)
            .field("registry", &self.registry.is_some())
            .finish_non_exhaustive()
    }
}

impl Default for ChatConfig {
    fn default() -> Self {
        ChatConfig {
            connectors: 2,
            chat_servers: 2,
            host: IpAddr::from([127, 0, 0, 1]),
            gate_port: 3014,
            connector_port: 3050,
            heartbeat: Duration::from_secs(10),
            resume_grace: Duration::from_secs(30),
            max_connections_per_ip: 256,
            registry: None,
            lease: Duration::from_secs(10),
            protobuf: true,
            web_port: None,
            store: None,
        }
    }
}

impl ChatConfig {
    /// Defaults on free loopback ports (for tests and the demo).
    pub fn ephemeral() -> Self {
        ChatConfig {
            gate_port: 0,
            connector_port: 0,
            ..ChatConfig::default()
        }
    }
}

/// A running chat cluster: the gate, the connectors and the chat servers,
/// each a [`Node`].
pub struct ChatCluster {
    gate: Node,
    web: Option<web::WebServer>,
    connectors: Vec<Node>,
    chat_servers: Vec<Node>,
}

impl std::fmt::Debug for ChatCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatCluster")
            .field("gate", &self.gate.client_addr())
            .field("connectors", &self.connector_addrs())
            .finish()
    }
}

#[derive(Deserialize)]
struct QueryEntry {
    uid: Option<String>,
}

#[derive(Deserialize)]
struct Enter {
    username: String,
    rid: String,
}

#[derive(Deserialize)]
struct Send {
    content: Value,
    from: Option<String>,
    target: Option<String>,
}

fn rmp<T: serde::Serialize + ?Sized>(v: &T) -> Bytes {
    Bytes::from(rmp_serde::to_vec_named(v).expect("chat settings always encode"))
}

fn room_of(session: &SessionSnapshot) -> Option<String> {
    let raw = session.settings.get("rid")?;
    rmp_serde::from_slice(&raw.value).ok()
}

/// Chat requests go to the chat server of their room, so every member of a
/// room is in one channel; sessions without a room fall back to the uid hash.
fn route_by_room(session: &SessionSnapshot, route: &str, nodes: &[String]) -> Option<usize> {
    match room_of(session) {
        Some(rid) => pick_by_key(rid.as_bytes(), nodes),
        None => HashRouter.route(session, route, nodes),
    }
}

fn username(uid: &str) -> &str {
    uid.split('*').next().unwrap_or(uid)
}

/// The chat server's remote methods: joining and leaving a room, which only
/// a connector calls (a client cannot reach a remote), about the player's
/// session.
fn chat_remotes(channels: ChannelService) -> Remotes {
    let mut remotes = Remotes::new();
    let ch = channels.clone();
    remotes.add("chat.chatRemote.add", move |cx: RemoteCx, _: ()| {
        let ch = ch.clone();
        async move {
            let session = cx.session.ok_or_else(|| HandlerError::new("no player"))?;
            let (uid, rid) = identity(&session)?;
            // Tell the room first, then add the newcomer (as chatofpomelo).
            ch.push(&rid, "onAdd", &json!({ "user": username(&uid) }))
                .await
                .map_err(|e| HandlerError::new(e.to_string()))?;
            ch.add(&rid, &uid, session.frontend_id());
            let users: Vec<String> = ch
                .members(&rid)
                .iter()
                .map(|u| username(u).to_string())
                .collect();
            Ok(json!({ "users": users }))
        }
    });
    remotes.add("chat.chatRemote.kick", move |cx: RemoteCx, _: ()| {
        let ch = channels.clone();
        async move {
            let session = cx.session.ok_or_else(|| HandlerError::new("no player"))?;
            let (uid, rid) = identity(&session)?;
            if ch.leave(&rid, &uid) {
                ch.push(&rid, "onLeave", &json!({ "user": username(&uid) }))
                    .await
                    .map_err(|e| HandlerError::new(e.to_string()))?;
            }
            Ok(())
        }
    });
    remotes
}

fn chat_handlers(channels: ChannelService) -> Handlers {
    let mut handlers = Handlers::new();
    let ch = channels;
    handlers.add(
        "chat.chatHandler.send",
        move |session: BackendSession, body: Send| {
            let ch = ch.clone();
            async move {
                let (uid, rid) = identity(&session)?;
                let from = body.from.unwrap_or_else(|| username(&uid).to_string());
                let target = body.target.unwrap_or_else(|| "*".to_string());
                let msg = json!({ "msg": body.content, "from": from, "target": target });
                if target == "*" {
                    ch.push(&rid, "onChat", &msg)
                        .await
                        .map_err(|e| HandlerError::new(e.to_string()))?;
                } else {
                    let target_uid = format!("{target}*{rid}");
                    let frontend = ch.frontend_of(&rid, &target_uid).ok_or_else(|| {
                        HandlerError::with_code(404, format!("{target} is not in this room"))
                    })?;
                    let missed = ch
                        .sessions()
                        .push_to_uids(&frontend, "onChat", &msg, vec![target_uid])
                        .await
                        .map_err(|e| HandlerError::new(e.to_string()))?;
                    if !missed.is_empty() {
                        return Err(HandlerError::with_code(404, format!("{target} is gone")));
                    }
                }
                Ok(json!({ "route": "chat.chatHandler.send" }))
            }
        },
    );
    handlers
}

fn identity(session: &BackendSession) -> Result<(String, String), HandlerError> {
    let uid = session
        .uid()
        .ok_or_else(|| HandlerError::new("enter a room first"))?
        .to_string();
    let rid: String = session
        .get("rid")
        .ok()
        .flatten()
        .ok_or_else(|| HandlerError::new("enter a room first"))?;
    Ok((uid, rid))
}

/// How long a connector waits for a chat server to take a player's leave.
const LEAVE_DEADLINE: Duration = Duration::from_secs(2);

/// A connector: a frontend whose players enter rooms, routed to the chat
/// server of their room, and leave their room when their session ends for
/// good (not when it moves to another connector).
fn connector(config: &ChatConfig, i: usize, protos: Option<Arc<Protos>>) -> FrontendRole {
    let id = format!("connector-{}", i + 1);
    let port = match config.connector_port {
        0 => 0,
        first => first + i as u16,
    };
    let mut role = FrontendRole::new(id, "connector")
        .rpc_addr(SocketAddr::new(config.host, 0))
        .client_addr(SocketAddr::new(config.host, port));
    // Duplicate login: the first session of a user keeps the name.
    role.sessions.single_session = SingleSessionPolicy::RejectNew;
    role.gateway.heartbeat = config.heartbeat;
    role.gateway.resume_grace = config.resume_grace;
    role.gateway.max_connections_per_ip = config.max_connections_per_ip;
    role.gateway.protos = protos;
    role.gateway(|gateway| {
        gateway.backends().set_router("chat", route_by_room);
        // Chat messages: only from a player in a room, at most 5 a second
        // (bursts of 10); a client that keeps flooding is disconnected.
        gateway
            .filter(
                "chat.chatHandler.send",
                check("entered", |call| match call.uid {
                    Some(_) => Ok(()),
                    None => Err(HandlerError::with_code(401, "enter a room first")),
                }),
            )
            .filter(
                "chat.chatHandler.send",
                RateLimit::new()
                    .per_session(Bucket::new(5.0, 10.0))
                    .disconnect_after(50, Duration::from_secs(10)),
            );
        gateway.handlers().add(
            "connector.entryHandler.enter",
            |ctx, body: Enter| async move {
                let uid = format!("{}*{}", body.username, body.rid);
                match ctx.sessions.bind(ctx.sid, &uid) {
                    Ok(()) => {}
                    Err(session_proxy::frontend::Error::SessionLimit) => {
                        return Ok(json!({ "code": 500, "error": true }));
                    }
                    Err(e) => return Err(HandlerError::new(e.to_string())),
                }
                ctx.sessions
                    .set(ctx.sid, "rid", rmp(&body.rid))
                    .map_err(|e| HandlerError::new(e.to_string()))?;
                // The chat server that owns the room adds the player.
                let users: Value = ctx.remote("chat.chatRemote.add", &body.rid, &()).await?;
                Ok(users)
            },
        );
        gateway.on_close(|ctx| async move {
            let (Some(_), Some(rid)) = (&ctx.session.uid, room_of(&ctx.session)) else {
                return;
            };
            // Answered: a drain waits for it before it closes the links.
            let left: Result<(), _> = ctx
                .backends
                .remote(
                    "chat.chatRemote.kick",
                    Target::Key(rid),
                    Some(ctx.session),
                    &(),
                    LEAVE_DEADLINE,
                )
                .await;
            if let Err(err) = left {
                tracing::warn!(code = err.code, cause = %err.message, "could not tell the chat server a user left");
            }
        });
    })
}

/// The gate: it only answers where to go (no sessions to resume there).
fn gate(config: &ChatConfig, connector_addrs: Vec<SocketAddr>) -> FrontendRole {
    let mut role = FrontendRole::new("gate", "gate")
        .rpc_addr(SocketAddr::new(config.host, 0))
        .client_addr(SocketAddr::new(config.host, config.gate_port));
    role.gateway.resume_grace = Duration::ZERO;
    let members = config.registry.as_ref().map(|r| r.watch());
    role.gateway(move |gate| {
        gate.handlers().add("gate.gateHandler.queryEntry", move |_ctx, body: QueryEntry| {
            let addrs = connector_addrs.clone();
            // The least loaded active connector, as the registry has it.
            let picked = members.as_ref().map(|m| {
                m.borrow()
                    .pick_frontend("connector")
                    .and_then(|r| r.client_addr.as_deref()?.parse::<SocketAddr>().ok())
            });
            async move {
                match picked {
                    Some(Some(addr)) => {
                        return Ok(json!({ "code": 200, "host": addr.ip().to_string(), "port": addr.port() }))
                    }
                    Some(None) => return Ok(json!({ "code": 500, "error": "no connector available" })),
                    None => {}
                }
                let Some(uid) = body.uid else {
                    return Ok(json!({ "code": 500 }));
                };
                let names: Vec<String> = (1..=addrs.len()).map(|i| format!("connector-{i}")).collect();
                let refs: Vec<&str> = names.iter().map(String::as_str).collect();
                let i = pick_by_key(uid.as_bytes(), &refs).unwrap_or(0);
                Ok(json!({ "code": 200, "host": addrs[i].ip().to_string(), "port": addrs[i].port() }))
            }
        });
    })
}

impl ChatCluster {
    /// Starts the connectors, the chat servers and the gate, and waits until
    /// every chat server is connected to every connector.
    pub async fn start(config: ChatConfig) -> anyhow::Result<ChatCluster> {
        let protos = if config.protobuf {
            Some(chat_protos()?)
        } else {
            None
        };
        let mut connectors = Vec::new();
        for i in 0..config.connectors.max(1) {
            let mut node = Node::builder().frontend(connector(&config, i, protos.clone()));
            if let Some(registry) = &config.registry {
                node = node.registry(registry.clone(), config.lease);
            }
            if let Some(store) = &config.store {
                node = node.store(store.clone(), StoreOptions::default());
            }
            let node = node
                .start()
                .await
                .with_context(|| format!("connector-{}", i + 1))?;
            connectors.push(node);
        }

        let mut chat_servers = Vec::new();
        for i in 0..config.chat_servers.max(1) {
            // The handlers push through the service they run on.
            let mut role =
                BackendRole::with_service(format!("chat-server-{}", i + 1), "chat", |service| {
                    let channels = ChannelService::new(service.clone());
                    service.serve_remotes(chat_remotes(channels.clone()));
                    chat_handlers(channels)
                });
            let mut node = Node::builder();
            match &config.registry {
                Some(registry) => node = node.registry(registry.clone(), config.lease),
                None => {
                    for c in &connectors {
                        let (id, addr) = (c.frontend_id(), c.rpc_addr());
                        if let (Some(id), Some(addr)) = (id, addr) {
                            role = role.frontend(id, addr.to_string());
                        }
                    }
                }
            }
            let node = node
                .backend(role)
                .start()
                .await
                .with_context(|| format!("chat-server-{}", i + 1))?;
            chat_servers.push(node);
        }

        let connector_addrs: Vec<SocketAddr> =
            connectors.iter().filter_map(Node::client_addr).collect();
        let gate = Node::builder()
            .frontend(gate(&config, connector_addrs))
            .start()
            .await
            .with_context(|| format!("gate: client listener on port {}", config.gate_port))?;
        let web = match config.web_port {
            Some(port) => {
                let gate_port = gate.client_addr().map_or(0, |a| a.port());
                Some(
                    web::WebServer::bind(SocketAddr::new(config.host, port), gate_port)
                        .await
                        .with_context(|| format!("chat page: HTTP listener on port {port}"))?,
                )
            }
            None => None,
        };

        let cluster = ChatCluster {
            gate,
            web,
            connectors,
            chat_servers,
        };
        cluster
            .wait_until_connected(Duration::from_secs(10))
            .await?;
        Ok(cluster)
    }

    async fn wait_until_connected(&self, within: Duration) -> anyhow::Result<()> {
        let want = self.chat_servers.len();
        for c in &self.connectors {
            let Some(backends) = c.connected_backends() else {
                continue;
            };
            if !backends.wait_for("chat", want, within).await {
                anyhow::bail!("chat servers did not connect to every connector within {within:?}");
            }
        }
        Ok(())
    }

    /// Where clients ask for their connector.
    pub fn gate_addr(&self) -> SocketAddr {
        self.gate
            .client_addr()
            .expect("the gate node serves clients")
    }

    /// Where the chat page is served (`http://<addr>/`), if it is.
    pub fn web_addr(&self) -> Option<SocketAddr> {
        self.web.as_ref().map(web::WebServer::local_addr)
    }

    /// The connectors' client addresses.
    pub fn connector_addrs(&self) -> Vec<SocketAddr> {
        self.connectors
            .iter()
            .filter_map(Node::client_addr)
            .collect()
    }

    /// Marks connector `i` (0-based) draining in the registry: the gate
    /// hands it out no more. Returns `false` without a registry.
    pub fn set_draining(&self, i: usize) -> bool {
        match self.connectors.get(i).filter(|c| c.is_registered()) {
            Some(c) => {
                c.announce_draining();
                true
            }
            None => false,
        }
    }

    /// Drains connector `i` (0-based) within `within`: the gate hands it out
    /// no more, its players are kicked with `"reconnect"` after their
    /// answers in flight, and with a [`store`](ChatConfig::store) their
    /// sessions are handed over for another connector to resume. `None`
    /// when there is no such connector.
    pub async fn drain_connector(&mut self, i: usize, within: Duration) -> Option<DrainReport> {
        Some(self.connectors.get_mut(i)?.drain(within).await)
    }

    /// The sessions of connector `i` (0-based).
    pub fn sessions(&self, i: usize) -> Option<&SessionService> {
        self.connectors.get(i).and_then(Node::sessions)
    }

    /// The backend services of the chat servers (for pushes from outside a
    /// handler, e.g. a broadcast).
    pub fn chat_servers(&self) -> Vec<BackendSessionService> {
        self.chat_servers
            .iter()
            .flat_map(Node::backends)
            .cloned()
            .collect()
    }

    /// Drains everything within `drain`, each node with the one drain
    /// sequence: the gate, then the connectors (their players' sessions
    /// end, and their leave notices reach the chat servers before the links
    /// close), then the chat servers.
    pub async fn shutdown(self, drain: Duration) {
        drop(self.web);
        let nodes = std::iter::once(self.gate)
            .chain(self.connectors)
            .chain(self.chat_servers);
        for mut node in nodes {
            let report = node.drain(drain).await;
            if !report.complete() {
                tracing::warn!(?report, "a chat node did not drain within its limit");
            }
        }
    }
}
