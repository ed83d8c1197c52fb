//! How a frontend keeps its sessions in a store: [`StoreOptions`] for any
//! store, [`RedisStoreConfig`] for Redis.

use session_proxy_protocol::config::{check, ConfigError, POSITIVE};
use std::time::Duration;

/// How a [`SessionService`](crate::SessionService) uses its store.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct StoreOptions {
    /// How long a stored session outlives its last write or refresh (a
    /// frontend that dies stops refreshing). Default: 10 min.
    pub ttl: Duration,
    /// How often changes not yet acknowledged to anyone are written
    /// (coalesced: a session changed many times is written once).
    /// Default: 50 ms.
    pub flush_interval: Duration,
    /// How long a session restored after a restart waits for its client to
    /// resume. Default: 60 s.
    pub restore_grace: Duration,
    /// The deadline of every store call. A store that does not answer in
    /// time is taken as down: mutations are answered at once with
    /// `NotDurable` (applied, not yet written) while a background task
    /// retries, and nothing else waits on the store. Default: 1 s.
    pub call_timeout: Duration,
    /// The longest pause between two retries while the store is down (the
    /// pause doubles from 50 ms up to this). Default: 1 s.
    pub retry_max: Duration,
    /// How often the store's server run is checked
    /// ([`SessionStore::incarnation`](crate::SessionStore::incarnation)): a
    /// server that restarted may have come back empty, and every live
    /// session is then written again at once, instead of at the next TTL
    /// refresh. Default: 2 s.
    pub restart_check: Duration,
    /// Write behind: acknowledge a backend's change (a push, a bind) once
    /// it is applied here, before it is in the store; the background
    /// writer writes it within `flush_interval`, coalesced with the
    /// session's other changes. Off by default: what is acknowledged is in
    /// the store first (group commit), and a store that fails answers
    /// `NotDurable`.
    ///
    /// The loss window, when on: a frontend that dies loses the changes of
    /// its last `flush_interval` (50 ms by default) that its clients were
    /// told had succeeded, on top of what the store's own persistence may
    /// lose (Redis with `appendfsync everysec`: up to 1 s). While the store
    /// is down, changes are acknowledged and wait in memory until it
    /// answers again. A change to a session that another frontend claimed
    /// meanwhile is refused by the store when written and lost (the copy
    /// here closes as moved), where the default would have answered the
    /// backend `SessionMoved`. For state a game can afford to lose a
    /// moment of (positions, cosmetic settings), as Redis's `everysec` is.
    pub write_behind: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            ttl: Duration::from_secs(600),
            flush_interval: Duration::from_millis(50),
            restore_grace: Duration::from_secs(60),
            call_timeout: Duration::from_secs(1),
            retry_max: Duration::from_secs(1),
            restart_check: Duration::from_secs(2),
            write_behind: false,
        }
    }
}

impl StoreOptions {
    /// Checks every field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check(
            "StoreOptions",
            &[
                (
                    "ttl",
                    self.ttl >= Duration::from_secs(1),
                    "must be at least 1 s",
                ),
                ("flush_interval", !self.flush_interval.is_zero(), POSITIVE),
                ("restore_grace", !self.restore_grace.is_zero(), POSITIVE),
                ("call_timeout", !self.call_timeout.is_zero(), POSITIVE),
                ("retry_max", !self.retry_max.is_zero(), POSITIVE),
                ("restart_check", !self.restart_check.is_zero(), POSITIVE),
            ],
        )
    }
}

#[cfg(feature = "redis")]
/// Settings of a [`RedisStore`](crate::RedisStore).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RedisStoreConfig {
    /// The server, e.g. `redis://127.0.0.1:6379/0` (the default), or a
    /// Redis Cluster by some of its nodes:
    /// `redis+cluster://[user:password@]host:port[,host:port…]`. The store
    /// finds the other nodes itself; a cluster has only database 0.
    pub url: String,
    /// Prefix of every key, so several clusters can share a server.
    /// Default: `"sp:"`.
    pub prefix: String,
    /// How often to sweep index entries whose session is gone.
    /// Default: 60 s.
    pub sweep_interval: Duration,
    /// How long one attempt to connect to the server may take. Default: 1 s.
    pub connect_timeout: Duration,
    /// How long the server may take to answer one command (or pipeline);
    /// past it the command fails and the connection is replaced. Default: 1 s.
    pub response_timeout: Duration,
}

#[cfg(feature = "redis")]
impl Default for RedisStoreConfig {
    fn default() -> Self {
        RedisStoreConfig {
            url: "redis://127.0.0.1:6379/0".into(),
            prefix: "sp:".into(),
            sweep_interval: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(1),
            response_timeout: Duration::from_secs(1),
        }
    }
}

#[cfg(feature = "redis")]
impl RedisStoreConfig {
    /// Defaults, with the given server URL.
    pub fn new(url: impl Into<String>) -> Self {
        RedisStoreConfig {
            url: url.into(),
            ..RedisStoreConfig::default()
        }
    }

    /// The seed nodes of a `redis+cluster://` URL, each as a `redis://`
    /// URL with the credentials; `None` for a single server.
    pub(crate) fn cluster_seeds(&self) -> Option<Vec<String>> {
        let rest = self.url.strip_prefix("redis+cluster://")?;
        let rest = rest.trim_end_matches('/');
        let (auth, hosts) = match rest.rsplit_once('@') {
            Some((auth, hosts)) => (format!("{auth}@"), hosts),
            None => (String::new(), rest),
        };
        Some(
            hosts
                .split(',')
                .filter(|h| !h.is_empty())
                .map(|h| format!("redis://{auth}{h}"))
                .collect(),
        )
    }
}

#[cfg(all(test, feature = "redis"))]
mod tests {
    use super::RedisStoreConfig;

    #[test]
    fn a_cluster_url_names_its_seeds_with_their_credentials() {
        let seeds = |url: &str| RedisStoreConfig::new(url).cluster_seeds();
        assert_eq!(seeds("redis://127.0.0.1:6379/0"), None);
        assert_eq!(
            seeds("redis+cluster://127.0.0.1:7000,127.0.0.1:7001/"),
            Some(vec![
                "redis://127.0.0.1:7000".to_string(),
                "redis://127.0.0.1:7001".to_string()
            ])
        );
        assert_eq!(
            seeds("redis+cluster://app:secret@10.0.0.1:7000,10.0.0.2:7000"),
            Some(vec![
                "redis://app:secret@10.0.0.1:7000".to_string(),
                "redis://app:secret@10.0.0.2:7000".to_string()
            ])
        );
    }
}
