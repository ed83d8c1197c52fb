//! Calls to every frontend this backend knows at once (with a registry:
//! every frontend in the cluster): find a user's sessions, kick or revoke
//! them, wherever they are.

use crate::{BackendSessionService, Error, FrontendClient};
use session_proxy_protocol::calls::{Call, FrontendCall, GetByUid, KickByUid, RevokeUid};
use session_proxy_protocol::SessionId;

impl BackendSessionService {
    /// Sends `call()` to every known frontend concurrently and collects what
    /// `take` makes of each reply. Fails with the first error if any
    /// frontend could not answer; the others still got the call.
    async fn on_every_frontend<C: Call<Wire = FrontendCall>, T>(
        &self,
        call: impl Fn() -> C,
        take: impl Fn(&FrontendClient, C::Reply) -> Vec<T>,
    ) -> Result<Vec<T>, Error> {
        let clients: Vec<FrontendClient> = self.read().values().cloned().collect();
        let calls = clients.iter().map(|client| {
            let call = call();
            let take = &take;
            async move { Ok::<_, Error>(take(client, client.call(call).await?)) }
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
                || GetByUid {
                    uid: uid.to_string(),
                },
                |client, list| {
                    list.into_iter()
                        .map(|s| (client.frontend_id().to_string(), s.sid))
                        .collect()
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
                || KickByUid {
                    uid: uid.to_string(),
                    reason: reason.to_string(),
                },
                |_, n| vec![n as usize],
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
                || RevokeUid {
                    uid: uid.to_string(),
                    reason: reason.to_string(),
                },
                |_, sids| sids,
            )
            .await?;
        ended.sort();
        ended.dedup();
        Ok(ended)
    }
}
