//! Membership in Redis: one key per node under a `PX` TTL (its lease), a
//! channel that announces every change, and a full re-read every few
//! seconds for what a subscriber missed (a lapsed lease announces nothing).
//!
//! Layout under a prefix (default `sp:`): `sp:n:<node id>` holds the
//! node's JSON record; `sp:nodes` is the channel, each message a node id.

use crate::view::{Changes, View};
use crate::{Members, Membership, NodeRecord, RegistryError, RegistryFuture};
use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{AsyncCommands, Client};
use futures::stream::BoxStream;
use futures::StreamExt;
use std::time::Duration;
use tokio::sync::watch;

/// Where and how a [`RedisMembership`] keeps the records.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RedisMembershipConfig {
    /// The server, e.g. `redis://127.0.0.1:6379/0`.
    pub url: String,
    /// Prefix of every key and of the channel. Default: `"sp:"`.
    pub prefix: String,
    /// How often every record is read again, whatever was announced.
    /// Default: 2 s.
    pub resync: Duration,
    /// Deadline of each command and connection attempt. Default: 1 s.
    pub timeout: Duration,
}

impl RedisMembershipConfig {
    /// Defaults, with the given server URL.
    pub fn new(url: impl Into<String>) -> Self {
        RedisMembershipConfig {
            url: url.into(),
            prefix: "sp:".into(),
            resync: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
        }
    }
}

/// Node records in a real Redis server.
pub struct RedisMembership {
    conn: ConnectionManager,
    prefix: String,
    timeout: Duration,
    /// The members, kept fresh from the channel.
    view: View,
}

impl std::fmt::Debug for RedisMembership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisMembership")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl From<::redis::RedisError> for RegistryError {
    fn from(err: ::redis::RedisError) -> Self {
        RegistryError::Unavailable {
            source: Box::new(err),
        }
    }
}

async fn bounded<T>(
    after: Duration,
    op: impl std::future::Future<Output = Result<T, RegistryError>>,
) -> Result<T, RegistryError> {
    tokio::time::timeout(after, op)
        .await
        .unwrap_or(Err(RegistryError::TimedOut { after }))
}

impl RedisMembership {
    /// Connects, reads the members once and starts following changes.
    /// Must be called within a tokio runtime.
    pub async fn connect(config: RedisMembershipConfig) -> Result<Self, RegistryError> {
        let client = Client::open(config.url.as_str())?;
        let manager = ConnectionManagerConfig::new()
            .set_connection_timeout(config.timeout)
            .set_response_timeout(config.timeout)
            .set_number_of_retries(2)
            .set_max_delay(u64::try_from(config.timeout.as_millis()).unwrap_or(1000));
        let conn = bounded(config.timeout * 2, async {
            Ok(client.get_connection_manager_with_config(manager).await?)
        })
        .await?;
        let first = list(&mut conn.clone(), &config.prefix).await?;
        let changes = RedisChanges {
            client,
            conn: conn.clone(),
            channel: format!("{}nodes", config.prefix),
            prefix: config.prefix.clone(),
            timeout: config.timeout,
            messages: None,
        };
        Ok(RedisMembership {
            conn,
            prefix: config.prefix,
            timeout: config.timeout,
            view: View::start(first, changes, config.resync),
        })
    }

    fn key(&self, id: &str) -> String {
        format!("{}n:{id}", self.prefix)
    }

    fn channel(&self) -> String {
        format!("{}nodes", self.prefix)
    }
}

impl Membership for RedisMembership {
    fn put(&self, record: &NodeRecord, ttl: Duration) -> RegistryFuture<'_, ()> {
        let json = serde_json::to_string(record).map_err(RegistryError::Record);
        let (key, id) = (self.key(&record.id), record.id.clone());
        Box::pin(bounded(self.timeout, async move {
            let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
            let mut conn = self.conn.clone();
            let _: () = ::redis::pipe()
                .cmd("SET")
                .arg(&key)
                .arg(json?)
                .arg("PX")
                .arg(ttl_ms)
                .ignore()
                .cmd("PUBLISH")
                .arg(self.channel())
                .arg(&id)
                .ignore()
                .query_async(&mut conn)
                .await?;
            self.view.reread();
            Ok(())
        }))
    }

    fn remove<'a>(&'a self, id: &'a str) -> RegistryFuture<'a, ()> {
        Box::pin(bounded(self.timeout, async move {
            let mut conn = self.conn.clone();
            let _: () = ::redis::pipe()
                .del(self.key(id))
                .ignore()
                .cmd("PUBLISH")
                .arg(self.channel())
                .arg(id)
                .ignore()
                .query_async(&mut conn)
                .await?;
            self.view.reread();
            Ok(())
        }))
    }

    fn watch(&self) -> watch::Receiver<Members> {
        self.view.watch()
    }

    fn close(&self) -> crate::CloseFuture<'_> {
        self.view.close()
    }
}

/// Every record under `prefix`; a malformed, oversized or misnamed one is
/// skipped with a warning.
async fn list(conn: &mut ConnectionManager, prefix: &str) -> Result<Members, RegistryError> {
    let mut keys: Vec<String> = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = ::redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}n:*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await?;
        keys.extend(batch);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    if keys.is_empty() {
        return Ok(Members::default());
    }
    let values: Vec<Option<Vec<u8>>> = conn.mget(&keys).await?;
    let node_prefix = format!("{prefix}n:");
    let records = keys.iter().zip(values).filter_map(|(key, value)| {
        let id = key.strip_prefix(&node_prefix)?;
        crate::record::parse_entry(id, &value?)
    });
    Ok(Members::from_records(records))
}

/// The channel every write announces on, and full reads of the records.
struct RedisChanges {
    client: Client,
    conn: ConnectionManager,
    channel: String,
    prefix: String,
    timeout: Duration,
    messages: Option<BoxStream<'static, ::redis::Msg>>,
}

impl Changes for RedisChanges {
    async fn open(&mut self) -> Result<(), RegistryError> {
        let messages = bounded(self.timeout, async {
            let mut pubsub = self.client.get_async_pubsub().await?;
            pubsub.subscribe(&self.channel).await?;
            Ok(pubsub.into_on_message().boxed())
        })
        .await?;
        self.messages = Some(messages);
        Ok(())
    }

    async fn next(&mut self) -> bool {
        match self.messages.as_mut() {
            Some(messages) => messages.next().await.is_some(),
            None => false,
        }
    }

    async fn list(&mut self) -> Result<Members, RegistryError> {
        bounded(self.timeout, list(&mut self.conn, &self.prefix)).await
    }
}
