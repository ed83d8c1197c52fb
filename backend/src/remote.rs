//! Calls between servers (remotes): typed methods a backend serves to the
//! other servers of the cluster, never to clients, and the calls that reach
//! them.
//!
//! A remote call travels on the links the cluster already has: the caller
//! asks a frontend it is linked to ([`Relay`]), and that frontend calls the
//! callee on the callee's link ([`Remote`]). So a new server type needs no
//! configuration anywhere, links stay one kind (backends dial frontends, with
//! the cluster secret), deadlines and cancellation carry over, and a
//! draining callee is not picked. A call about a player's session is relayed
//! by the frontend that owns the session, and the callee works on that
//! session there ([`RemoteCx::session`]), as the player's own requests do.

use crate::{BackendSession, BackendSessionService, Error, HandlerError};
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;
use session_proxy_protocol::client::server_type_of;
use session_proxy_protocol::{
    CalleeError, ErrorCode, Relay, RelayAll, Remote, RemoteReply, RpcError, SessionSnapshot, Target,
};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// What a remote method gets besides its arguments.
#[derive(Debug)]
#[non_exhaustive]
pub struct RemoteCx {
    /// The calling node's id.
    pub caller: String,
    /// The player's session the call is about, when the caller passed one
    /// ([`RemoteCall::with_session`]): its changes and pushes go to the
    /// frontend that owns it.
    pub session: Option<BackendSession>,
}

type Method =
    Arc<dyn Fn(RemoteCx, Bytes) -> Pin<Box<dyn Future<Output = RemoteReply> + Send>> + Send + Sync>;

/// The remote methods a backend serves, by route
/// (`serverType.remoteName.method`): apart from the handlers of client
/// requests, so no client request ever reaches one.
///
/// ```
/// use session_proxy_backend::{HandlerError, RemoteCx, Remotes};
///
/// let mut remotes = Remotes::new();
/// remotes.add("room.roomRemote.add", |cx: RemoteCx, uid: String| async move {
///     if uid.is_empty() {
///         return Err(HandlerError::with_code(400, "no uid"));
///     }
///     Ok(format!("{uid} joined, called by {}", cx.caller))
/// });
/// assert_eq!(remotes.routes().collect::<Vec<_>>(), ["room.roomRemote.add"]);
/// ```
#[derive(Clone, Default)]
pub struct Remotes {
    methods: HashMap<String, Method>,
}

impl std::fmt::Debug for Remotes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.methods.keys()).finish()
    }
}

impl Remotes {
    /// No methods.
    pub fn new() -> Remotes {
        Remotes::default()
    }

    /// Serves `route` with `method`: its arguments and answer travel as
    /// MessagePack of their serde types; an error reaches the caller as
    /// [`RemoteError::Callee`] with its code and message.
    pub fn add<A, R, F, Fut>(&mut self, route: &str, method: F) -> &mut Remotes
    where
        A: DeserializeOwned + Send + 'static,
        R: Serialize + Send + 'static,
        F: Fn(RemoteCx, A) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, HandlerError>> + Send + 'static,
    {
        let method = Arc::new(method);
        let run: Method = Arc::new(move |cx, args: Bytes| {
            let method = method.clone();
            Box::pin(async move {
                let args: A = rmp_serde::from_slice(&args).map_err(|err| CalleeError {
                    code: 400,
                    message: format!("arguments do not fit: {err}"),
                })?;
                let answer = method(cx, args).await.map_err(|err| CalleeError {
                    code: err.code,
                    message: err.message,
                })?;
                rmp_serde::to_vec_named(&answer)
                    .map(Bytes::from)
                    .map_err(|err| CalleeError {
                        code: 500,
                        message: format!("cannot encode the answer: {err}"),
                    })
            })
        });
        self.methods.insert(route.to_string(), run);
        self
    }

    /// Whether `route` is served.
    pub fn serves(&self, route: &str) -> bool {
        self.methods.contains_key(route)
    }

    /// The routes served.
    pub fn routes(&self) -> impl Iterator<Item = &str> {
        self.methods.keys().map(String::as_str)
    }

    /// Runs `route` for `cx` with MessagePack `args`; `None` when no such
    /// method is served.
    pub(crate) fn run(
        &self,
        route: &str,
        cx: RemoteCx,
        args: Bytes,
    ) -> Option<Pin<Box<dyn Future<Output = RemoteReply> + Send>>> {
        self.methods.get(route).map(|method| method(cx, args))
    }
}

/// Why a remote call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RemoteError {
    /// No server of the type is linked to the relaying frontend (or not
    /// the named one), or it serves no such method.
    #[error("no server for {route}")]
    NoServer {
        /// The method.
        route: String,
        /// What the relaying frontend said.
        #[source]
        source: RpcError,
    },
    /// No answer within the deadline; the callee was told to stop.
    #[error("{route} did not answer in time")]
    DeadlineExceeded {
        /// The method.
        route: String,
    },
    /// The callee is draining and takes no new calls: call again (another
    /// node of the type is picked) or give up.
    #[error("the server for {route} is draining")]
    Draining {
        /// The method.
        route: String,
    },
    /// The method answered an error.
    #[error("{route} answered an error")]
    Callee {
        /// The method.
        route: String,
        /// Its code and message.
        #[source]
        source: CalleeError,
    },
    /// The arguments cannot be encoded, or the answer decoded as the type
    /// asked for.
    #[error("the arguments or the answer of {route} do not fit their types")]
    Types {
        /// The method.
        route: String,
        /// The codec's reason.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The route is not `serverType.remoteName.method`.
    #[error("{0:?} is not a route")]
    BadRoute(String),
    /// The call could not be relayed: no frontend linked, or the link
    /// failed.
    #[error("the call to {route} could not be relayed")]
    Relay {
        /// The method.
        route: String,
        /// Why.
        #[source]
        source: Error,
    },
}

impl RemoteError {
    /// The error code, as the caller may answer its own client with.
    pub fn code(&self) -> u32 {
        match self {
            RemoteError::Callee { source, .. } => source.code,
            RemoteError::NoServer { .. } | RemoteError::BadRoute(_) => 404,
            RemoteError::DeadlineExceeded { .. } => 504,
            RemoteError::Draining { .. } => 503,
            RemoteError::Types { .. } | RemoteError::Relay { .. } => 500,
        }
    }

    fn of(route: &str, err: Error) -> RemoteError {
        let route = route.to_string();
        match err {
            Error::Remote { source, .. } => match source.code {
                ErrorCode::NoBackend | ErrorCode::UnknownRoute => {
                    RemoteError::NoServer { route, source }
                }
                ErrorCode::DeadlineExceeded => RemoteError::DeadlineExceeded { route },
                ErrorCode::Unavailable => RemoteError::Draining { route },
                _ => RemoteError::Relay {
                    route,
                    source: Error::Remote {
                        frontend: String::new(),
                        source,
                    },
                },
            },
            Error::DeadlineExceeded { .. } => RemoteError::DeadlineExceeded { route },
            other => RemoteError::Relay {
                route,
                source: other,
            },
        }
    }
}

impl From<RemoteError> for HandlerError {
    /// A remote's failure as a handler's answer to its client.
    fn from(err: RemoteError) -> Self {
        HandlerError::with_code(err.code(), session_proxy_protocol::chain(&err).to_string())
    }
}

/// A remote call being set up: pick its target, then
/// [`call`](Self::call), [`notify`](Self::notify) or
/// [`call_all`](Self::call_all). Made by [`BackendSessionService::remote`].
#[must_use = "a remote call does nothing until it is called"]
pub struct RemoteCall<'a> {
    service: &'a BackendSessionService,
    route: String,
    target: Option<Target>,
    session: Option<SessionSnapshot>,
    deadline: Option<Duration>,
}

impl BackendSessionService {
    /// A call of the remote method `route` (`serverType.remoteName.method`)
    /// on a server of its type. Without a target it goes to the owner of
    /// the session's uid (or session id) when one is passed, else to the
    /// owner of the empty key.
    ///
    /// ```no_run
    /// # async fn join(lobby: session_proxy_backend::BackendSessionService, player: session_proxy_backend::BackendSession) -> Result<(), session_proxy_backend::RemoteError> {
    /// // The room server that owns room 7 adds the player; it pushes to the
    /// // player through the player's own frontend.
    /// let members: Vec<String> = lobby
    ///     .remote("room.roomRemote.add")
    ///     .by_key("7")
    ///     .with_session(&player)
    ///     .call(&"7")
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn remote(&self, route: &str) -> RemoteCall<'_> {
        RemoteCall {
            service: self,
            route: route.to_string(),
            target: None,
            session: None,
            deadline: None,
        }
    }

    /// Serves `remotes` (replacing any served before) to the other servers
    /// of the cluster; every linked frontend learns their routes and
    /// refuses them to clients itself.
    pub fn serve_remotes(&self, remotes: Remotes) {
        use session_proxy_protocol::sync::RwLockUnpoisoned as _;
        let mut routes: Vec<String> = remotes.routes().map(str::to_string).collect();
        routes.sort();
        let dispatcher = self.dispatcher();
        *dispatcher.remotes.write_unpoisoned() = remotes;
        // Every link tells its frontend, which refuses them to clients.
        dispatcher.announced.send_replace(Arc::new(routes));
    }
}

impl<'a> RemoteCall<'a> {
    /// To the node of the type that owns `key` (a room id, a match id): the
    /// same node for the same key while the type's nodes stay.
    pub fn by_key(mut self, key: impl Into<String>) -> Self {
        self.target = Some(Target::Key(key.into()));
        self
    }

    /// To the node with this id (Pitaya's `RPCTo`).
    pub fn to_node(mut self, node_id: impl Into<String>) -> Self {
        self.target = Some(Target::Node(node_id.into()));
        self
    }

    /// About this player's session: the callee gets it in
    /// [`RemoteCx::session`], and the call is relayed by its frontend.
    pub fn with_session(mut self, session: &BackendSession) -> Self {
        self.session = Some(session.export());
        self
    }

    /// Within `deadline` (default: the service's
    /// [`deadline`](crate::BackendConfig::deadline), or what is left of
    /// the request being handled).
    pub fn within(mut self, deadline: Duration) -> Self {
        self.deadline = Some(deadline);
        self
    }

    fn remote_of<A: Serialize + ?Sized>(&self, args: &A) -> Result<(String, Remote), RemoteError> {
        let server_type = server_type_of(&self.route)
            .ok_or_else(|| RemoteError::BadRoute(self.route.clone()))?
            .to_string();
        let caller = &self.service.config().node_id;
        let call = Remote::new(&self.route, caller, self.session.clone(), args).map_err(|err| {
            RemoteError::Types {
                route: self.route.clone(),
                source: Box::new(err),
            }
        })?;
        Ok((server_type, call))
    }

    fn target(&self) -> Target {
        self.target.clone().unwrap_or_else(|| match &self.session {
            Some(s) => match &s.uid {
                Some(uid) => Target::Uid(uid.clone()),
                None => Target::Key(s.sid.to_string()),
            },
            None => Target::Key(String::new()),
        })
    }

    /// The frontend that relays: the session's own, or any linked one.
    fn relay(&self) -> Result<crate::FrontendClient, RemoteError> {
        let found = match &self.session {
            Some(s) => self.service.client(&s.frontend_id),
            None => self
                .service
                .any_frontend()
                .ok_or_else(|| Error::UnknownFrontend("(none linked)".into())),
        };
        found.map_err(|source| RemoteError::Relay {
            route: self.route.clone(),
            source,
        })
    }

    fn deadline(&self) -> Duration {
        self.deadline.unwrap_or(self.service.config().deadline)
    }

    /// Calls the method with `args` and waits for its typed answer.
    pub async fn call<A, R>(self, args: &A) -> Result<R, RemoteError>
    where
        A: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        let (server_type, call) = self.remote_of(args)?;
        let relay = Relay {
            server_type,
            target: self.target(),
            call,
        };
        let reply = self
            .relay()?
            .call_with_deadline(relay, self.deadline())
            .await
            .map_err(|err| RemoteError::of(&self.route, err))?;
        answer_of(&self.route, reply)
    }

    /// Sends the call and waits for no answer (nor for the callee to run
    /// it): it fails only when it cannot be handed to a frontend.
    pub async fn notify<A: Serialize + ?Sized>(self, args: &A) -> Result<(), RemoteError> {
        let (server_type, call) = self.remote_of(args)?;
        let relay = Relay {
            server_type,
            target: self.target(),
            call,
        };
        self.relay()?
            .notify(relay)
            .await
            .map_err(|err| RemoteError::of(&self.route, err))
    }

    /// Calls the method on every node of its type at once (Pinus's
    /// `toServer('*')`): each node's id and outcome.
    pub async fn call_all<A, R>(
        self,
        args: &A,
    ) -> Result<Vec<(String, Result<R, RemoteError>)>, RemoteError>
    where
        A: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        let (server_type, call) = self.remote_of(args)?;
        let all = RelayAll { server_type, call };
        let outcomes = self
            .relay()?
            .call_with_deadline(all, self.deadline())
            .await
            .map_err(|err| RemoteError::of(&self.route, err))?;
        Ok(outcomes
            .into_iter()
            .map(|(node, outcome)| {
                let answer = outcome
                    .map_err(|source| {
                        RemoteError::of(
                            &self.route,
                            Error::Remote {
                                frontend: String::new(),
                                source,
                            },
                        )
                    })
                    .and_then(|reply| answer_of(&self.route, reply));
                (node, answer)
            })
            .collect())
    }
}

/// A callee's reply bytes as the answer type asked for.
fn answer_of<R: DeserializeOwned>(route: &str, reply: Bytes) -> Result<R, RemoteError> {
    match Remote::answer(reply) {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(source)) => Err(RemoteError::Callee {
            route: route.to_string(),
            source,
        }),
        Err(err) => Err(RemoteError::Types {
            route: route.to_string(),
            source: Box::new(err),
        }),
    }
}
