//! The store's connection to Redis, with its deadlines.

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::Client;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tracing::debug;

/// The store's connection to the server, replaced when it stops answering.
///
/// The `redis` connection manager redials by itself when a connection is
/// closed or reset, but a server that stops answering (stopped, or behind a
/// dead network path) leaves it waiting on a socket that never fails. Each
/// command has a response timeout; after one, a fresh connection is dialled
/// in the background and swapped in once it answers, while the old one keeps
/// serving whatever it still can.
pub(super) struct Conn {
    pub(super) current: RwLock<ConnectionManager>,
    pub(super) client: Client,
    pub(super) config: ConnectionManagerConfig,
    /// How long dialling and the first answer may take together.
    pub(super) dial_timeout: Duration,
    pub(super) redialing: AtomicBool,
}

impl Conn {
    pub(super) fn get(&self) -> ConnectionManager {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Dials a replacement after `err`, if it says the server stopped
    /// answering; one redial at a time.
    pub(super) fn failed(self: &Arc<Self>, err: &::redis::RedisError) {
        if !err.is_timeout() || self.redialing.swap(true, Ordering::AcqRel) {
            return;
        }
        let conn = self.clone();
        tokio::spawn(async move {
            let dial = conn
                .client
                .get_connection_manager_with_config(conn.config.clone());
            match tokio::time::timeout(conn.dial_timeout, dial).await {
                Ok(Ok(fresh)) => {
                    *conn.current.write().unwrap_or_else(|e| e.into_inner()) = fresh;
                    debug!("store connection replaced after a timeout");
                }
                Ok(Err(err)) => debug!(cause = %err, "store redial failed; next timeout retries"),
                Err(_) => debug!("store redial timed out; next timeout retries"),
            }
            conn.redialing.store(false, Ordering::Release);
        });
    }
}
