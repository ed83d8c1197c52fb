//! A backend that follows the registry: it dials each frontend as it
//! registers and stops redialling one whose record is gone.

use crate::backend::BackendSessionService;
use crate::registry::Members;
use std::collections::HashMap;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::info;

/// Keeps `backend`'s frontends equal to the frontends in `members` (draining
/// ones included: their sessions still need their backends), until the
/// returned handle is dropped or the registry is gone.
pub fn follow_frontends(
    mut members: watch::Receiver<Members>,
    backend: BackendSessionService,
) -> Following {
    let task = tokio::spawn(async move {
        // Frontend id -> the RPC address it is dialled at.
        let mut known: HashMap<String, String> = HashMap::new();
        loop {
            let now = members.borrow_and_update().clone();
            for f in now.frontends() {
                let Some(addr) = &f.rpc_addr else { continue };
                if known.get(&f.id) != Some(addr) {
                    info!(frontend = %f.id, %addr, "frontend registered; dialling it");
                    backend.add_frontend_of_type(&f.id, &f.server_type, addr.clone());
                    known.insert(f.id.clone(), addr.clone());
                }
            }
            known.retain(|id, _| {
                let stays = now.get(id).is_some();
                if !stays {
                    info!(frontend = %id, "frontend left the registry; no longer dialled");
                    backend.remove_frontend(id);
                }
                stays
            });
            if members.changed().await.is_err() {
                return;
            }
        }
    });
    Following { task }
}

/// The task of [`follow_frontends`]; dropping it stops following (the
/// links already open stay).
#[derive(Debug)]
#[must_use = "dropping it stops following the registry"]
pub struct Following {
    task: JoinHandle<()>,
}

impl Following {
    /// Stops following and waits for the task to end (the links already
    /// open stay).
    pub async fn stop(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl Drop for Following {
    fn drop(&mut self) {
        self.task.abort();
    }
}
