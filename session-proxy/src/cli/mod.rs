//! The command line of a node binary: your game's own, or the shipped
//! `session-proxy`. A game hands its handlers to an [`App`] and its `main`
//! gets the same `run` flags, `SESSION_PROXY_*` environment variables,
//! cluster file, registry records, admin address, readiness, signals and
//! drain as `session-proxy run`.
//!
//! - this file: [`App`] (what the binary serves, by server type), [`Cli`]
//!   and [`RunArgs`] (the command line), [`RunError`];
//! - `flags`: one node described by flags and registered in a registry;
//! - `cluster_file`: nodes of a cluster file, one or several per process.
//!
//! ```no_run
//! use session_proxy::cli::App;
//! use session_proxy::{BackendSession, Handlers};
//!
//! fn room_handlers() -> Handlers {
//!     let mut handlers = Handlers::new();
//!     handlers.add("room.roomHandler.join", |_s: BackendSession, _b: serde_json::Value| async {
//!         Ok(serde_json::json!({ "code": 200 }))
//!     });
//!     handlers
//! }
//!
//! // `game run --role backend --id room-1 --type room --registry redis://127.0.0.1/0`
//! fn main() -> std::process::ExitCode {
//!     App::new().backend("room", |_service| room_handlers()).main()
//! }
//! ```

mod cluster_file;
mod flags;

pub use cluster_file::serve_until_signal;
pub use flags::{connect_registry, connect_store, NodeFlags, RoleArg};

use crate::backend::{BackendSessionService, Handlers};
use crate::cluster::ClusterConfig;
use crate::frontend::Gateway;
use crate::link::LinkTls;
use crate::node::{BackendRole, FrontendRole, NodeBuilder, NodeError};
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

/// Why a node binary could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// The command line or the cluster file asks for something that
    /// cannot run (the text says what).
    #[error("{0}")]
    Usage(String),
    /// This binary serves no handlers for a backend's server type.
    #[error("this binary has no handlers for server type {0:?}")]
    NoHandlers(String),
    /// The cluster file could not be read.
    #[error("reading the cluster file")]
    Cluster(#[from] crate::cluster::ClusterError),
    /// A TLS certificate, key or CA could not be loaded.
    #[error("loading TLS material")]
    Tls(#[from] crate::protocol::tls::TlsError),
    /// The session store did not answer.
    #[error("connecting to the session store at {url}")]
    Store {
        /// The store's URL.
        url: String,
        /// Why.
        #[source]
        source: crate::frontend::StoreError,
    },
    /// The registry did not answer.
    #[error("connecting to the registry at {url}")]
    Registry {
        /// The registry's URL.
        url: String,
        /// Why.
        #[source]
        source: crate::registry::RegistryError,
    },
    /// The metrics recorder could not be installed.
    #[error("installing the metrics recorder")]
    Metrics(#[from] crate::admin::MetricsError),
    /// A node could not start or serve.
    #[error("running the node")]
    Node(#[from] NodeError),
    /// The tokio runtime could not start.
    #[error("starting the tokio runtime")]
    Runtime(#[source] std::io::Error),
}

/// Handlers for backends of a server type, built from their service.
type BackendApp = Arc<dyn Fn(&str, &BackendSessionService) -> Handlers + Send + Sync>;
/// Handlers and hooks for a frontend's gateway of a server type.
type GatewayApp = Arc<dyn Fn(&str, &mut Gateway) + Send + Sync>;
/// A change to every node's builder (hooks, store options, …).
type Configure = Arc<dyn Fn(NodeBuilder) -> NodeBuilder + Send + Sync>;

/// What a node binary serves: backend handlers and gateway handlers by
/// server type, and changes to every node it builds. A frontend whose type
/// has no gateway handlers is a generic connector: it forwards every
/// client route to the backends.
#[derive(Clone, Default)]
pub struct App {
    backends: HashMap<String, BackendApp>,
    any_backend: Option<BackendApp>,
    gateways: HashMap<String, GatewayApp>,
    any_gateway: Option<GatewayApp>,
    sticky: Vec<String>,
    configure: Vec<Configure>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("backends", &self.backends.keys().collect::<Vec<_>>())
            .field("gateways", &self.gateways.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl App {
    /// An app that serves nothing yet.
    pub fn new() -> App {
        App::default()
    }

    /// Backends of `server_type` serve the handlers `handlers` builds from
    /// their service (handlers that push, or a channel service, need it).
    pub fn backend(
        mut self,
        server_type: &str,
        handlers: impl Fn(&BackendSessionService) -> Handlers + Send + Sync + 'static,
    ) -> App {
        self.backends.insert(
            server_type.to_string(),
            Arc::new(move |_, service| handlers(service)),
        );
        self
    }

    /// Backends of any type without handlers of their own serve these
    /// (given the type).
    pub fn any_backend(
        mut self,
        handlers: impl Fn(&str, &BackendSessionService) -> Handlers + Send + Sync + 'static,
    ) -> App {
        self.any_backend = Some(Arc::new(handlers));
        self
    }

    /// Frontends of `server_type` register these handlers and hooks on
    /// their gateway.
    pub fn gateway(
        mut self,
        server_type: &str,
        setup: impl Fn(&mut Gateway) + Send + Sync + 'static,
    ) -> App {
        self.gateways.insert(
            server_type.to_string(),
            Arc::new(move |_, gateway| setup(gateway)),
        );
        self
    }

    /// Frontends of any type without gateway handlers of their own register
    /// these (given the type).
    pub fn any_gateway(
        mut self,
        setup: impl Fn(&str, &mut Gateway) + Send + Sync + 'static,
    ) -> App {
        self.any_gateway = Some(Arc::new(setup));
        self
    }

    /// Players of `server_type` stay on one node of it: a game server that
    /// holds their state (see
    /// [`BackendRegistry::stick`](crate::BackendRegistry::stick)). Every
    /// frontend of the binary keeps the bindings in its session store.
    pub fn sticky(mut self, server_type: &str) -> App {
        self.sticky.push(server_type.to_string());
        self
    }

    /// Changes every node this binary builds, before it starts: lifecycle
    /// hooks, store options, …
    pub fn node(
        mut self,
        configure: impl Fn(NodeBuilder) -> NodeBuilder + Send + Sync + 'static,
    ) -> App {
        self.configure.push(Arc::new(configure));
        self
    }

    /// A frontend role `id` of `server_type`, with the app's gateway
    /// handlers for it.
    pub fn frontend_role(&self, id: &str, server_type: &str) -> FrontendRole {
        let mut role = FrontendRole::new(id, server_type);
        role.sticky.clone_from(&self.sticky);
        let setup = self
            .gateways
            .get(server_type)
            .or(self.any_gateway.as_ref())
            .cloned();
        match setup {
            Some(setup) => {
                let server_type = server_type.to_string();
                role.gateway(move |gateway| setup(&server_type, gateway))
            }
            None => role,
        }
    }

    /// A backend role `id` of `server_type` serving the app's handlers for
    /// it; [`RunError::NoHandlers`] when the app has none.
    pub fn backend_role(
        &self,
        id: &str,
        server_type: &str,
        tls: Option<LinkTls>,
    ) -> Result<BackendRole, RunError> {
        let handlers = self
            .backends
            .get(server_type)
            .or(self.any_backend.as_ref())
            .cloned()
            .ok_or_else(|| RunError::NoHandlers(server_type.to_string()))?;
        let of = server_type.to_string();
        let mut role =
            BackendRole::with_service(id, server_type, move |service| handlers(&of, service));
        role.config.tls = tls;
        Ok(role)
    }

    /// `builder` with the app's changes.
    fn configure(&self, builder: NodeBuilder) -> NodeBuilder {
        self.configure.iter().fold(builder, |b, f| f(b))
    }

    /// Runs what `args` describes (a cluster file's nodes, or one node by
    /// flags) until SIGINT/SIGTERM, then drains.
    pub async fn run(&self, args: &RunArgs) -> Result<(), RunError> {
        match &args.config {
            Some(path) => {
                let config = ClusterConfig::load(path)?;
                self.run_cluster_file(&config, &args.node, args.insecure, args.flags.admin_addr)
                    .await
            }
            None => self.run_flags(&args.flags, args.insecure).await,
        }
    }

    /// The whole `main` of a node binary: parses the command line
    /// (`<binary> run …`, see [`RunArgs`]), sets up logging and the tokio
    /// runtime, and runs until SIGINT/SIGTERM. Exits 0 after a drain, 1 with
    /// the error's chain on stderr when the node cannot run, 130 on a second
    /// signal.
    pub fn main(self) -> ExitCode {
        use clap::Parser;
        let cli = Cli::parse();
        init_logs(cli.log_format);
        let Command::Run(args) = cli.command;
        match self.block_on(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("error: {}", crate::protocol::chain(&err));
                ExitCode::FAILURE
            }
        }
    }

    /// Builds the runtime (a cluster file may set its threads) and runs
    /// `args` on it.
    pub fn block_on(&self, args: &RunArgs) -> Result<(), RunError> {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.enable_all();
        if let Some(path) = &args.config {
            let config = ClusterConfig::load(path)?;
            if let Some(n) = config.process_threads(&args.node) {
                builder.worker_threads(n);
            }
        }
        let runtime = builder.build().map_err(RunError::Runtime)?;
        runtime.block_on(self.run(args))
    }
}

/// The command line of a game's node binary.
#[derive(clap::Parser, Debug)]
#[command(version, about = "A session-proxy node")]
pub struct Cli {
    /// How log lines are written to stderr.
    #[arg(long, global = true, env = "SESSION_PROXY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// What a game's node binary does.
#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Run one node: of a cluster described in a TOML file (--config and
    /// --node), or described by flags and registered in a registry (--role,
    /// --id, --type, --registry, …; each also read from SESSION_PROXY_{FLAG}).
    /// Several --node (or a comma list) run in one process, its backends
    /// linked to its frontends in process.
    Run(RunArgs),
}

/// The `run` flags, shared by every node binary.
#[derive(clap::Args, Clone, Debug)]
pub struct RunArgs {
    /// The cluster file.
    #[arg(long, env = "SESSION_PROXY_CONFIG", requires = "node")]
    pub config: Option<PathBuf>,
    /// The id of the node to run, in the cluster file; several run in one
    /// process.
    #[arg(
        long,
        env = "SESSION_PROXY_NODE",
        requires = "config",
        value_delimiter = ','
    )]
    pub node: Vec<String>,
    /// The node, without a cluster file.
    #[command(flatten)]
    pub flags: NodeFlags,
    /// Let a frontend listen for backends beyond loopback without a cluster
    /// secret (SESSION_PROXY_SECRET). Any peer could then act as a backend;
    /// refused without this flag.
    #[arg(long, env = "SESSION_PROXY_INSECURE")]
    pub insecure: bool,
}

/// The log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Logs to stderr in `format`, filtered by `RUST_LOG` (default: `warn`).
pub fn init_logs(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
}
