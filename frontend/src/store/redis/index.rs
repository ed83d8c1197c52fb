//! The keyspace listener and the sweep, keeping each uid's set of sessions
//! clean: a session key that expires, is evicted or deleted leaves its uid
//! set, at once through keyspace notifications (heard from every master)
//! and later through a periodic sweep, which also removes entries a
//! frontend left behind between two steps and finishes evictions it
//! decided.

use super::{parse_sid, Inner};
use crate::store::{Evicted, StoreError};
use ::redis::aio::ConnectionLike;
use ::redis::{AsyncCommands, Cmd, Value};
use futures::StreamExt;
use session_proxy_protocol::SessionId;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

impl Inner {
    /// Cleans the index of sessions whose key is gone (a no-op for those
    /// whose key exists); answers how many it cleaned.
    async fn clean(&self, sids: &[SessionId]) -> Result<usize, StoreError> {
        let cmds: Vec<Cmd> = sids
            .iter()
            .map(|sid| {
                let mut cmd = self.on_session(&self.scripts.end, *sid);
                cmd.arg("clean").arg(0);
                cmd
            })
            .collect();
        let answers: Vec<(i64, String)> = self.run(&cmds).await?;
        let mut unindex = Vec::new();
        for (sid, (_, uid)) in sids.iter().zip(answers) {
            if !uid.is_empty() {
                self.unindex(*sid, &uid, &mut unindex);
            }
        }
        self.run::<Value>(&unindex).await?;
        Ok(unindex.len() / 2)
    }

    pub(super) async fn sweep(&self) -> Result<usize, StoreError> {
        let prefix = &self.keys.prefix;
        let mut link = self.conn.get();
        // Owner keys whose session key is gone.
        let owners: Vec<SessionId> = link
            .scan(&format!("{prefix}o:*"))
            .await?
            .iter()
            .filter_map(|key| self.keys.tag_of("o", key).and_then(parse_sid))
            .collect();
        let exists: Vec<Cmd> = owners
            .iter()
            .map(|sid| ::redis::cmd("EXISTS").arg(self.keys.session(*sid)).clone())
            .collect();
        let exists: Vec<bool> = link.each(&exists).await?;
        let gone: Vec<SessionId> = owners
            .into_iter()
            .zip(exists)
            .filter(|(_, exists)| !exists)
            .map(|(sid, _)| sid)
            .collect();
        let mut mended = self.clean(&gone).await?;
        // Uid set members whose session ended, expired or moved to another
        // uid (a frontend that died between a write and its index update).
        for set in link.scan(&format!("{prefix}u:*")).await? {
            let Some(uid) = self.keys.tag_of("u", &set) else {
                continue;
            };
            let members: Vec<String> = link.smembers(&set).await?;
            let (ours, mut strays): (Vec<&String>, Vec<&String>) =
                members.iter().partition(|m| parse_sid(m).is_some());
            let reads = self.read_fields(ours.iter().filter_map(|m| parse_sid(m)), &["u"]);
            let of: Vec<(Option<String>,)> = link.each(&reads).await?;
            strays.extend(
                ours.into_iter()
                    .zip(of)
                    .filter(|(_, (of,))| of.as_deref() != Some(uid))
                    .map(|(m, _)| m),
            );
            if !strays.is_empty() {
                let _: () = link.srem(&set, &strays).await?;
                mended += strays.len();
            }
        }
        // Evictions decided and not carried out.
        for pending in link.scan(&format!("{prefix}x:*")).await? {
            let Some(uid) = self.keys.tag_of("x", &pending) else {
                continue;
            };
            let decided: HashMap<String, String> = link.hgetall(&pending).await?;
            mended += decided.len();
            self.evict(uid, decided.into_iter().collect()).await?;
        }
        Ok(mended)
    }
}

pub(super) async fn sweep_every(every: Duration, inner: Arc<Inner>, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        match inner.sweep().await {
            Ok(0) => {}
            Ok(n) => debug!(mended = n, "swept stale session index entries"),
            Err(err) => {
                warn!(cause = %session_proxy_protocol::chain(&err), "session index sweep failed")
            }
        }
    }
}

/// Follows expired/evicted/deleted keys on every node and cleans their
/// index entries; passes on what admissions announce on the evictions
/// channel (a cluster carries a publish to every node: it is heard on one).
pub(super) async fn listen(
    inner: Arc<Inner>,
    evictions: tokio::sync::broadcast::Sender<Evicted>,
    stop: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    let evictions_channel = inner.keys.evictions();
    loop {
        let run = async {
            let mut link = inner.conn.get();
            let db = link.get_db();
            let nodes = inner.conn.dial.nodes(&mut link).await?;
            let mut streams = Vec::with_capacity(nodes.len());
            for (i, node) in nodes.iter().enumerate() {
                let mut pubsub = node.get_async_pubsub().await?;
                for event in ["expired", "evicted", "del"] {
                    pubsub
                        .subscribe(format!("__keyevent@{db}__:{event}"))
                        .await?;
                }
                if i == 0 {
                    pubsub.subscribe(&evictions_channel).await?;
                }
                // A node's stream that ends (its connection is lost) ends
                // the whole listen, which then subscribes anew.
                let messages = pubsub.into_on_message().map(Some);
                streams.push(
                    messages
                        .chain(futures::stream::once(async { None }))
                        .boxed(),
                );
            }
            let mut messages = futures::stream::select_all(streams);
            while let Some(Some(msg)) = messages.next().await {
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
                if let Some(sid) = inner.keys.tag_of("s", &key).and_then(parse_sid) {
                    if let Err(err) = inner.clean(&[sid]).await {
                        warn!(cause = %session_proxy_protocol::chain(&err), "cleaning a gone session's index failed");
                    }
                }
            }
            Ok::<(), StoreError>(())
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            result = run => {
                if let Err(err) = result {
                    warn!(cause = %session_proxy_protocol::chain(&err), "keyspace listener lost; reconnecting");
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
