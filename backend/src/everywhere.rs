//! Calls to every frontend this backend knows at once (with a registry:
//! every frontend in the cluster): find a user's sessions, kick or revoke
//! them, wherever they are.

use crate::service::unexpected;
use crate::{BackendSessionService, Error, FrontendClient};
use session_proxy_protocol::{Call, Reply, SessionId};

impl BackendSessionService {
    /// Sends `call(frontend)` to every known frontend concurrently and
    /// collects what `take` makes of each reply. Fails with the first error
    /// if any frontend could not answer; the others still got the call.
    async fn on_every_frontend<T>(
        &self,
        what: &'static str,
        call: impl Fn() -> Call,
        take: impl Fn(&FrontendClient, Reply) -> Option<Vec<T>>,
    ) -> Result<Vec<T>, Error> {
        let clients: Vec<FrontendClient> = self.read().values().cloned().collect();
        let calls = clients.iter().map(|client| {
            let call = call();
            let take = &take;
            async move {
                let reply = client.call(call).await?;
                take(client, reply).ok_or_else(|| unexpected(client.frontend_id(), what))
            }
        });
        let mut all = Vec::new();
        let mut first_error = None;
        for result in futures::future::join_all(calls).await {
            match result {
                Ok(found) => all.extend(found),
                Err(err) => {
                    first_error.get_or_insert(err);
                }
            }
        }
        match first_error {
            Some(err) => Err(err),
            None => Ok(all),
        }
    }

    /// Where `uid` is: the `(frontend id, session id)` of each of its
    /// sessions on every known frontend, sorted, without knowing its
    /// frontend beforehand.
    pub async fn locate(&self, uid: &str) -> Result<Vec<(String, SessionId)>, Error> {
        let mut found = self
            .on_every_frontend(
                "locate",
                || Call::GetByUid {
                    uid: uid.to_string(),
                },
                |client, reply| match reply {
                    Reply::Sessions(list) => Some(
                        list.into_iter()
                            .map(|s| (client.frontend_id().to_string(), s.sid))
                            .collect(),
                    ),
                    _ => None,
                },
            )
            .await?;
        found.sort();
        Ok(found)
    }

    /// Kicks every connected session of `uid` on every known frontend with
    /// `reason`; returns how many were kicked. (Parked sessions stay; see
    /// [`revoke_user`](Self::revoke_user) to end those too.)
    pub async fn kick_user_everywhere(&self, uid: &str, reason: &str) -> Result<usize, Error> {
        let kicked = self
            .on_every_frontend(
                "kick_user_everywhere",
                || Call::KickByUid {
                    uid: uid.to_string(),
                    reason: reason.to_string(),
                },
                |_, reply| match reply {
                    Reply::Kicked(n) => Some(vec![n as usize]),
                    _ => None,
                },
            )
            .await?;
        Ok(kicked.into_iter().sum())
    }

    /// Ends every session of `uid` everywhere: each known frontend kicks its
    /// connected sessions and closes its parked ones, and the shared store
    /// forgets all of them (parked sessions of frontends this backend does
    /// not know included). Returns the sessions that ended; fails if any
    /// frontend could not be reached (the others are still revoked).
    pub async fn revoke_user(&self, uid: &str, reason: &str) -> Result<Vec<SessionId>, Error> {
        let mut ended = self
            .on_every_frontend(
                "revoke_user",
                || Call::RevokeUid {
                    uid: uid.to_string(),
                    reason: reason.to_string(),
                },
                |_, reply| match reply {
                    Reply::Ended(sids) => Some(sids),
                    _ => None,
                },
            )
            .await?;
        ended.sort();
        ended.dedup();
        Ok(ended)
    }
}
