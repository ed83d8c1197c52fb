//! Pushes to clients: to one session, to every session of some uids, to
//! everyone; each reached connection can be counted on a receipt.
use super::Outbound;
use crate::delivery::Receipt;
use crate::owner::{OwnerTx, SendError};
use crate::Error;
use bytes::Bytes;
use session_proxy_protocol::SessionId;
use std::sync::Arc;

use super::SessionService;

impl SessionService {
    /// Queues a server push for a session's client.
    ///
    /// A client whose queue is full reads too slowly to keep up: its session
    /// is closed with reason `"slow client"` (its connection then closes)
    /// and [`Error::OwnerQueueFull`] is returned. Nothing is buffered
    /// without bound.
    pub fn push_to_client(&self, sid: SessionId, route: &str, body: Bytes) -> Result<(), Error> {
        self.push_to_client_tracked(sid, route, body, None)
    }

    /// [`push_to_client`](Self::push_to_client) counted on `receipt`.
    pub(crate) fn push_to_client_tracked(
        &self,
        sid: SessionId,
        route: &str,
        body: Bytes,
        receipt: Option<&Arc<Receipt>>,
    ) -> Result<(), Error> {
        let owner = self
            .inner
            .sessions
            .get(&sid)
            .map(|e| e.owner.clone())
            .ok_or(Error::SessionNotFound(sid))?;
        self.deliver(sid, &owner, route, body, receipt)
    }

    /// Queues a push; with a `receipt`, the connection holds a ticket on it
    /// until the push is written. A parked session's push waits for its
    /// client to come back, so it takes no ticket (nobody waits that long).
    pub(super) fn deliver(
        &self,
        sid: SessionId,
        owner: &OwnerTx,
        route: &str,
        body: Bytes,
        receipt: Option<&Arc<Receipt>>,
    ) -> Result<(), Error> {
        let push = Outbound::Push {
            route: route.to_string(),
            body,
        };
        let ticket = receipt.filter(|_| !owner.is_parked()).map(Receipt::ticket);
        use crate::metrics::{PUSH_CLIENT_GONE, PUSH_DELIVERED, PUSH_QUEUE_FULL};
        match owner.try_send_ticketed(push, ticket) {
            Ok(()) => {
                PUSH_DELIVERED.increment(1);
                Ok(())
            }
            Err(SendError::Full) if owner.is_parked() => {
                // Its client is away: keep the session, drop this push.
                PUSH_QUEUE_FULL.increment(1);
                Err(Error::OwnerQueueFull(sid))
            }
            Err(SendError::Full) => {
                PUSH_QUEUE_FULL.increment(1);
                tracing::warn!(sid = %sid.redacted(), "client too slow for its pushes; closing");
                self.end(sid, super::EndReason::SlowClient, true);
                Err(Error::OwnerQueueFull(sid))
            }
            Err(SendError::Closed) => {
                PUSH_CLIENT_GONE.increment(1);
                Err(Error::OwnerGone(sid))
            }
        }
    }

    /// Pushes to every session of each uid, once per session. Returns the
    /// uids no session of which was reached.
    pub fn push_to_uids(&self, uids: &[String], route: &str, body: &Bytes) -> Vec<String> {
        self.push_to_uids_tracked(uids, route, body, None)
    }

    /// [`push_to_uids`](Self::push_to_uids) counted on `receipt`.
    pub(crate) fn push_to_uids_tracked(
        &self,
        uids: &[String],
        route: &str,
        body: &Bytes,
        receipt: Option<&Arc<Receipt>>,
    ) -> Vec<String> {
        uids.iter()
            .filter(|uid| {
                let reached = self
                    .sids_of_uid(uid)
                    .into_iter()
                    .filter(|sid| {
                        self.push_to_client_tracked(*sid, route, body.clone(), receipt)
                            .is_ok()
                    })
                    .count();
                reached == 0
            })
            .cloned()
            .collect()
    }

    /// Pushes to every session (or every bound session) once. Returns how
    /// many sessions it reached.
    pub fn broadcast(&self, route: &str, body: &Bytes, bound_only: bool) -> usize {
        self.broadcast_tracked(route, body, bound_only, None)
    }

    /// [`broadcast`](Self::broadcast) counted on `receipt`.
    pub(crate) fn broadcast_tracked(
        &self,
        route: &str,
        body: &Bytes,
        bound_only: bool,
        receipt: Option<&Arc<Receipt>>,
    ) -> usize {
        // Clone the senders out, so no shard guard is held while delivering
        // (a full queue closes its session, which needs a write guard).
        let targets: Vec<(SessionId, OwnerTx)> = self
            .inner
            .sessions
            .iter()
            .filter(|e| !bound_only || e.uid.is_some())
            .map(|e| (*e.key(), e.owner.clone()))
            .collect();
        targets
            .into_iter()
            .filter(|(sid, owner)| {
                self.deliver(*sid, owner, route, body.clone(), receipt)
                    .is_ok()
            })
            .count()
    }
}
