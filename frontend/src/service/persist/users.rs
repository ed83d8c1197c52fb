//! Every session of a user across the frontends sharing the store.

use super::unix_ms;
use crate::service::SessionService;
use crate::store::StoreError;
use session_proxy_protocol::{SessionId, SessionInfo};
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

impl SessionService {
    /// Every session of `uid` on every frontend sharing the store (this
    /// frontend's own, from memory, when there is no store).
    pub async fn user_sessions(&self, uid: &str) -> Result<Vec<SessionInfo>, StoreError> {
        let now_unix = unix_ms(SystemTime::now());
        let mut local: Vec<SessionInfo> = self
            .sids_of_uid(uid)
            .into_iter()
            .filter_map(|sid| {
                self.inner.sessions.get(&sid).map(|e| {
                    let idle = self
                        .now_ms()
                        .saturating_sub(e.last_active.load(Ordering::Relaxed));
                    self.info_of(sid, &e, now_unix.saturating_sub(idle))
                })
            })
            .collect();
        if let Some(link) = self.inner.store.get() {
            link.check_up()?;
            let known: HashSet<SessionId> = local.iter().map(|i| i.sid).collect();
            for record in link.call(link.store.by_uid(uid)).await? {
                if !known.contains(&record.info.sid) {
                    local.push(record.info);
                }
            }
        }
        local.sort_by_key(|i| i.sid);
        Ok(local)
    }

    /// Ends every session of `uid`: kicks this frontend's connected ones,
    /// closes its parked ones, and deletes every session of the uid from
    /// the shared store (parked sessions of other frontends included).
    /// Returns the sessions that ended.
    pub async fn revoke_uid(&self, uid: &str, reason: &str) -> Result<Vec<SessionId>, StoreError> {
        let mut ended: Vec<SessionId> = self
            .sids_of_uid(uid)
            .into_iter()
            .filter(|sid| self.kick_by_sid(*sid, reason))
            .collect();
        if let Some(link) = self.inner.store.get() {
            self.flush().await?;
            let stored: Vec<SessionId> = link
                .call(link.store.by_uid(uid))
                .await?
                .into_iter()
                .map(|s| s.info.sid)
                .collect();
            link.call(link.store.delete(stored.clone())).await?;
            ended.extend(stored);
        }
        ended.sort();
        ended.dedup();
        Ok(ended)
    }
}
