//! The keyspace listener and the sweep. Keeping each uid's set of sessions
//! clean: a session key that expires,
//! is evicted or deleted leaves its uid set and the owner hash, at once
//! through keyspace notifications and later through a periodic sweep.

use super::conn::Conn;
use super::{parse_sid, Keys};
use crate::store::{Evicted, StoreError};
use ::redis::aio::ConnectionManager;
use ::redis::{AsyncCommands, Client, Script};
use futures::StreamExt;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

pub(super) async fn scan(
    conn: &mut ConnectionManager,
    pattern: &str,
) -> Result<Vec<String>, StoreError> {
    let mut out = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = ::redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await?;
        out.extend(batch);
        if next == 0 {
            return Ok(out);
        }
        cursor = next;
    }
}

/// Cleans the index of one session whose key is gone (no-op if it exists).
pub(super) async fn clean(
    conn: &mut ConnectionManager,
    keys: &Keys,
    delete: &Script,
    sid_hex: &str,
) -> Result<(), StoreError> {
    let Some(sid) = parse_sid(sid_hex) else {
        return Ok(());
    };
    let _: i64 = delete
        .key(keys.session(sid))
        .key(keys.owners())
        .arg(sid_hex)
        .arg(&keys.prefix)
        .arg("1")
        .invoke_async(conn)
        .await?;
    Ok(())
}

pub(super) async fn sweep(
    conn: &mut ConnectionManager,
    keys: &Keys,
    delete: &Script,
) -> Result<usize, StoreError> {
    let mut cleaned = 0;
    // Owner entries whose session key is gone.
    let owners: HashMap<String, String> = conn.hgetall(keys.owners()).await?;
    for sid_hex in owners.keys() {
        let Some(sid) = parse_sid(sid_hex) else {
            continue;
        };
        let exists: bool = conn.exists(keys.session(sid)).await?;
        if !exists {
            clean(conn, keys, delete, sid_hex).await?;
            cleaned += 1;
        }
    }
    // Uid set members with no session key and no owner entry.
    for set in scan(conn, &format!("{}u:*", keys.prefix)).await? {
        let members: Vec<String> = conn.smembers(&set).await?;
        for sid_hex in members {
            let Some(sid) = parse_sid(&sid_hex) else {
                let _: () = conn.srem(&set, &sid_hex).await?;
                continue;
            };
            let exists: bool = conn.exists(keys.session(sid)).await?;
            if !exists {
                let _: () = conn.srem(&set, &sid_hex).await?;
                cleaned += 1;
            }
        }
    }
    Ok(cleaned)
}

pub(super) async fn sweep_every(
    every: Duration,
    conn: Arc<Conn>,
    keys: Keys,
    delete: Script,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        match sweep(&mut conn.get(), &keys, &delete).await {
            Ok(0) => {}
            Ok(n) => debug!(cleaned = n, "swept stale session index entries"),
            Err(err) => warn!(cause = %err, "session index sweep failed"),
        }
    }
}

/// Follows expired/evicted/deleted keys and cleans their index entries.
pub(super) async fn listen(
    client: Client,
    db: i64,
    conn: Arc<Conn>,
    keys: Keys,
    delete: Script,
    evictions: tokio::sync::broadcast::Sender<Evicted>,
    stop: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    let evictions_channel = keys.evictions();
    loop {
        let run = async {
            let mut pubsub = client.get_async_pubsub().await?;
            for event in ["expired", "evicted", "del"] {
                pubsub
                    .subscribe(format!("__keyevent@{db}__:{event}"))
                    .await?;
            }
            pubsub.subscribe(&evictions_channel).await?;
            let mut messages = pubsub.on_message();
            while let Some(msg) = messages.next().await {
                let key: String = match msg.get_payload() {
                    Ok(k) => k,
                    Err(_) => continue,
                };
                if msg.get_channel_name() == evictions_channel {
                    // "<sid hex> <reason>", from an admission.
                    let (hex, reason) = key.split_once(' ').unwrap_or((key.as_str(), ""));
                    if let Some(sid) = parse_sid(hex) {
                        // Nobody listening is fine: the holder is fenced.
                        let _ = evictions.send(Evicted {
                            sid,
                            reason: reason.to_string(),
                        });
                    }
                    continue;
                }
                if let Some(sid_hex) = keys.sid_of(&key) {
                    if let Err(err) = clean(&mut conn.get(), &keys, &delete, &sid_hex).await {
                        warn!(cause = %err, "cleaning a gone session's index failed");
                    }
                }
            }
            Ok::<(), StoreError>(())
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            result = run => {
                if let Err(err) = result {
                    warn!(cause = %err, "keyspace listener lost; reconnecting");
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}
