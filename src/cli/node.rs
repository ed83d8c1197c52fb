//! The apps the shipped binary can serve by name, and its `frontend`
//! command. Nodes are run by the library's command line
//! ([`session_proxy::cli::App`]), as a game's own binary runs them.

use session_proxy::cli::App;
use session_proxy::node::FrontendRole;
use session_proxy_bench::app;

use super::AppName;

/// What `session-proxy run` serves: a generic connector and no backend
/// handlers, or the app asked for by name.
pub fn shipped_app(name: Option<AppName>) -> App {
    match name {
        None => App::new(),
        Some(AppName::Bench) => {
            App::new()
                .any_backend(app::backend_handlers)
                .any_gateway(|server_type, gateway| {
                    app::frontend_handlers(server_type, gateway.handlers())
                })
        }
    }
}

/// A frontend serving the bench app's own routes on its gateway.
pub fn bench_frontend(id: &str, server_type: &str) -> FrontendRole {
    shipped_app(Some(AppName::Bench)).frontend_role(id, server_type)
}
