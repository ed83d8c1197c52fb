//! A session as the store keeps it, and back: the record of a live entry,
//! and an entry (parked) from a record.

use super::{unix_ms, StoreLink};
use crate::owner;
use crate::service::resume::Parked;
use crate::service::tokens::Tokens;
use crate::service::{SessionEntry, SessionService};
use crate::store::{StoreError, StoredSession};
use session_proxy_protocol::{SessionId, SessionInfo};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::Instant;

impl SessionService {
    /// A session's record for the store.
    pub(super) fn to_stored(&self, sid: SessionId, e: &SessionEntry) -> StoredSession {
        let now_unix = unix_ms(SystemTime::now());
        let idle_ms = self
            .now_ms()
            .saturating_sub(e.last_active.load(Ordering::Relaxed));
        let instant_to_unix = |t: Instant| {
            let now = Instant::now();
            if t >= now {
                now_unix + u64::try_from((t - now).as_millis()).unwrap_or(u64::MAX)
            } else {
                now_unix.saturating_sub(u64::try_from((now - t).as_millis()).unwrap_or(u64::MAX))
            }
        };
        let mut info = self.info_of(sid, e, now_unix.saturating_sub(idle_ms));
        if self
            .inner
            .store
            .get()
            .is_some_and(|l| l.handed_over.load(Ordering::Acquire))
        {
            info.frontend_id.clear();
        }
        let (token, previous) = e.tokens.stored();
        StoredSession {
            info,
            settings: e.settings.to_map(),
            last_version: e.last_version,
            token,
            previous_token: previous.map(|(h, until)| (h, instant_to_unix(until))),
            epoch: e.store_epoch,
            pushes: Vec::new(),
        }
    }

    pub(in crate::service) fn info_of(
        &self,
        sid: SessionId,
        e: &SessionEntry,
        last_active_unix_ms: u64,
    ) -> SessionInfo {
        SessionInfo {
            sid,
            frontend_id: self.frontend_id().to_string(),
            uid: e.uid.clone(),
            created_unix_ms: unix_ms(e.created_at),
            last_active_unix_ms,
            remote_addr: e.info.remote_addr().map(|a| a.to_string()),
            metadata: e
                .info
                .metadata()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
            parked: e.parked.is_some(),
        }
    }

    pub(super) async fn restore(&self, link: &StoreLink) -> Result<usize, StoreError> {
        let mut restored = 0;
        for sid in link.call(link.store.list()).await? {
            let record = match link.call(link.store.get(sid)).await {
                Ok(Some(record)) => record,
                Ok(None) => continue,
                Err(StoreError::Decode(err)) => {
                    // One bad record strands no other session: skipped,
                    // named (its sid, redacted) and counted.
                    crate::metrics::CORRUPT_SKIPPED.increment(1);
                    tracing::error!(
                        sid = %sid.redacted(),
                        cause = %session_proxy_protocol::chain(&err),
                        "skipping a stored session that cannot be decoded"
                    );
                    continue;
                }
                Err(err) => return Err(err),
            };
            if record.info.frontend_id != self.frontend_id()
                || self.inner.sessions.contains_key(&sid)
            {
                continue;
            }
            self.insert_restored(record, link.options.restore_grace);
            restored += 1;
        }
        if restored > 0 {
            tracing::info!(restored, "sessions restored from the store");
        }
        Ok(restored)
    }

    pub(in crate::service) fn insert_restored(&self, record: StoredSession, grace: Duration) {
        let sid = record.info.sid;
        let now_unix = unix_ms(SystemTime::now());
        let (tx, rx) = owner::queue(self.inner.config.owner_queue);
        tx.set_parked(true);
        for push in record.pushes {
            // Fits: the frontend that handed it over kept at most as many.
            let _ = tx.try_send(crate::Outbound::Push {
                route: push.route,
                body: push.body,
            });
        }
        let until = Instant::now() + grace;
        let previous = record.previous_token.and_then(|(h, until_unix)| {
            (until_unix > now_unix).then(|| {
                (
                    h,
                    Instant::now() + Duration::from_millis(until_unix - now_unix),
                )
            })
        });
        let mut info = crate::ConnectInfo::default();
        info.remote_addr = record
            .info
            .remote_addr
            .as_deref()
            .and_then(|a| a.parse().ok());
        info.metadata = record.info.metadata.into_iter().collect();
        let entry = SessionEntry {
            uid: record.info.uid.clone(),
            settings_bytes: record
                .settings
                .iter()
                .map(|(k, s)| k.len() + s.value.len())
                .sum(),
            settings: record.settings.into(),
            last_version: record.last_version,
            info: crate::service::packed::PackedInfo::pack(info),
            created_at: UNIX_EPOCH + Duration::from_millis(record.info.created_unix_ms),
            created: Instant::now(),
            last_active: AtomicU64::new(self.now_ms()),
            idle_timeout: self.inner.config.idle_timeout,
            lifetime: self.inner.config.lifetime,
            parked: Some(Parked { until, rx }),
            owner_gen: 0,
            store_epoch: record.epoch,
            tokens: Tokens::restored(record.token, previous),
            owner: tx,
        };
        self.inner.sessions.insert(sid, Box::new(entry));
        if let Some(uid) = record.info.uid {
            self.inner.uids.restore(uid, sid);
        }
        self.schedule(sid, until);
    }
}
