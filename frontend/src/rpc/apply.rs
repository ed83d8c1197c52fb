//! One session call from a backend, applied to the [`SessionService`]: the
//! frontend's side of [`ServeFrontend`], one method per call.

use super::BackendConn;
use crate::delivery::{Receipt, Ticket};
use crate::forward::BackendLink;
use crate::SessionService;
use bytes::Bytes;
use session_proxy_protocol::calls::*;
use session_proxy_protocol::text::log_safe;
use session_proxy_protocol::{BackendCall, ErrorCode, Message, Response, RpcError, SessionId};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;
use tracing::{debug, info};

/// What goes out on a backend link.
pub(super) type Outgoing = Message<BackendCall>;

/// One answer of a batch, held until the batch is durable.
pub(super) struct Answer {
    /// The call's id.
    pub(super) id: u64,
    /// What it did: the encoded reply, or why it failed.
    pub(super) result: Result<Bytes, RpcError>,
    /// A change that must be in the store before it is acknowledged.
    pub(super) durable: bool,
    /// The one session the call addressed, if any.
    pub(super) sid: Option<SessionId>,
}

impl Answer {
    /// An answer to a call on `sid`, or to a call on no single session.
    pub(super) fn new(
        id: u64,
        result: Result<Bytes, RpcError>,
        durable: bool,
        sid: Option<SessionId>,
    ) -> Self {
        Answer {
            id,
            result,
            durable,
            sid,
        }
    }

    /// Whether the store must have the change before the backend hears of it.
    pub(super) fn waits_for_store(&self) -> bool {
        self.durable && self.result.is_ok()
    }
}

/// A call on a session that is no longer here because its client resumed
/// on another frontend is answered [`ErrorCode::SessionMoved`], naming
/// that frontend: the backend addresses the new owner itself. (A transparent
/// redirect would apply a change computed from a snapshot of the old
/// owner's copy; the backend is better placed to read again and retry.)
/// `settled` says the call already ran against the store (after a group
/// commit), so any result may hide a lost race; otherwise only the answers
/// of a session that is not here are looked at (the reads and kicks that
/// find no session ask [`moved`] themselves).
pub(super) fn redirect(service: &SessionService, answer: &mut Answer, settled: bool) {
    let Some(sid) = answer.sid else { return };
    let not_here = matches!(
        &answer.result,
        Err(RpcError {
            code: ErrorCode::SessionNotFound,
            ..
        })
    );
    if !(settled || not_here) {
        return;
    }
    if let Err(moved) = moved(service, sid) {
        answer.result = Err(moved);
    }
}

/// [`ErrorCode::SessionMoved`] when session `sid` now lives on another
/// frontend; for calls that found no session here.
fn moved(service: &SessionService, sid: SessionId) -> Result<(), RpcError> {
    match service.moved_to(sid) {
        Some(owner) => Err(RpcError::new(ErrorCode::SessionMoved, owner)),
        None => Ok(()),
    }
}

/// Answers a push call once every copy is written (or after `wait`),
/// through the link's outgoing queue, on a task of the server's tracker.
pub(super) fn answer_when_written(
    tasks: &TaskTracker,
    id: u64,
    reply: Bytes,
    (receipt, issuer): (Arc<Receipt>, Ticket),
    wait: Duration,
    late_answers: mpsc::Sender<Outgoing>,
) {
    tasks.spawn(async move {
        if tokio::time::timeout(wait, receipt.written(issuer))
            .await
            .is_err()
        {
            debug!(id, ?wait, "answering a push before every client wrote it");
        }
        let answer = Message::Response(Response {
            id,
            result: Ok(reply),
        });
        // Fails only if the link is gone, and its caller with it.
        let _ = late_answers.send(answer).await;
    });
}

/// Makes a batch's changes durable, then answers them through the link's
/// outgoing queue, on a task of the server's tracker. A store that fails
/// turns each answer into [`ErrorCode::NotDurable`]: the change is applied
/// and stays pending until the store answers again.
pub(super) fn commit_then_answer(
    tasks: &TaskTracker,
    service: SessionService,
    answers: Vec<Answer>,
    late_answers: mpsc::Sender<Outgoing>,
) {
    tasks.spawn(async move {
        let committed = service.flush().await;
        if let Err(err) = &committed {
            debug!(cause = %session_proxy_protocol::chain(err), calls = answers.len(), "answering changes as not yet durable");
        }
        for mut answer in answers {
            match &committed {
                // The store may have refused the write: the session moved.
                Ok(()) => redirect(&service, &mut answer, true),
                Err(err) => {
                    answer.result = Err(RpcError::new(
                        ErrorCode::NotDurable,
                        format!("applied, not yet durable (written once the store answers): {err}"),
                    ))
                }
            }
            let Answer { id, result, .. } = answer;
            // Fails only if the link is gone, and its caller with it.
            if late_answers
                .send(Message::Response(Response { id, result }))
                .await
                .is_err()
            {
                return;
            }
        }
    });
}

/// The session calls of one backend link, served on the [`SessionService`].
pub(super) struct LinkCalls<'a> {
    /// The connection the calls came in on.
    pub(super) conn: &'a BackendConn,
    /// The server type the backend serves and its registration, when it
    /// serves one.
    pub(super) link: Option<(&'a str, &'a BackendLink)>,
}

/// How long a relayed remote notify (which has no caller waiting) may take
/// to reach its callee and run there.
const RELAYED_NOTIFY_DEADLINE: Duration = Duration::from_secs(5);

/// What comes with a call.
pub(super) struct CallCx {
    /// The receipt that counts its pushes to clients, when the answer waits
    /// for them.
    pub(super) receipt: Option<Arc<Receipt>>,
    /// What is left of the caller's deadline.
    pub(super) deadline: Duration,
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl ServeFrontend for LinkCalls<'_> {
    type Cx = CallCx;

    async fn get_session(
        &self,
        call: GetSession,
        _: &CallCx,
    ) -> Result<Option<SessionSnapshot>, RpcError> {
        let found = self.service().get(call.sid);
        if found.is_none() {
            moved(self.service(), call.sid)?;
        }
        Ok(found)
    }

    async fn get_by_uid(
        &self,
        call: GetByUid,
        _: &CallCx,
    ) -> Result<Vec<SessionSnapshot>, RpcError> {
        Ok(self.service().get_by_uid(&call.uid))
    }

    async fn bind(&self, call: Bind, _: &CallCx) -> Result<(), RpcError> {
        Ok(self.service().bind_everywhere(call.sid, &call.uid).await?)
    }

    async fn unbind(&self, call: Unbind, _: &CallCx) -> Result<(), RpcError> {
        Ok(self.service().unbind(call.sid, &call.uid)?)
    }

    async fn push(&self, call: Push, _: &CallCx) -> Result<Vec<Option<u64>>, RpcError> {
        Ok(self.service().apply_push(call.sid, call.writes)?)
    }

    async fn kick_by_sid(&self, call: KickBySid, _: &CallCx) -> Result<u32, RpcError> {
        if self.service().kick_by_sid(call.sid, &call.reason) {
            return Ok(1);
        }
        moved(self.service(), call.sid)?;
        Ok(0)
    }

    async fn kick_by_uid(&self, call: KickByUid, _: &CallCx) -> Result<u32, RpcError> {
        Ok(count(self.service().kick_by_uid(&call.uid, &call.reason)))
    }

    async fn push_to_sids(
        &self,
        call: PushToSids,
        receipt: &CallCx,
    ) -> Result<Vec<SessionId>, RpcError> {
        let s = self.service();
        Ok(call
            .sids
            .into_iter()
            .filter(|sid| {
                s.push_to_client_tracked(
                    *sid,
                    &call.route,
                    call.body.clone(),
                    receipt.receipt.as_ref(),
                )
                .is_err()
            })
            .collect())
    }

    async fn push_to_uids(
        &self,
        call: PushToUids,
        receipt: &CallCx,
    ) -> Result<Vec<String>, RpcError> {
        Ok(self.service().push_to_uids_tracked(
            &call.uids,
            &call.route,
            &call.body,
            receipt.receipt.as_ref(),
        ))
    }

    async fn broadcast(&self, call: Broadcast, receipt: &CallCx) -> Result<u32, RpcError> {
        Ok(count(self.service().broadcast_tracked(
            &call.route,
            &call.body,
            call.bound_only,
            receipt.receipt.as_ref(),
        )))
    }

    async fn user_sessions(
        &self,
        call: UserSessions,
        _: &CallCx,
    ) -> Result<Vec<SessionInfo>, RpcError> {
        Ok(self
            .service()
            .user_sessions(&call.uid)
            .await
            .map_err(crate::Error::from)?)
    }

    async fn revoke_uid(&self, call: RevokeUid, _: &CallCx) -> Result<Vec<SessionId>, RpcError> {
        Ok(self
            .service()
            .revoke_uid(&call.uid, &call.reason)
            .await
            .map_err(crate::Error::from)?)
    }

    async fn relay(&self, call: Relay, cx: &CallCx) -> Result<Bytes, RpcError> {
        // A notify has no deadline of its caller's: it gets its own.
        let deadline = match cx.deadline {
            zero if zero.is_zero() => RELAYED_NOTIFY_DEADLINE,
            deadline => deadline,
        };
        self.conn
            .backends
            .relay(&call.server_type, &call.target, call.call, deadline)
            .await
    }

    async fn relay_all(
        &self,
        call: RelayAll,
        cx: &CallCx,
    ) -> Result<Vec<(String, Result<Bytes, RpcError>)>, RpcError> {
        self.conn
            .backends
            .relay_all(&call.server_type, call.call, cx.deadline)
            .await
    }

    async fn served_remotes(&self, call: ServedRemotes, _: &CallCx) -> Result<(), RpcError> {
        if let Some((server_type, link)) = self.link {
            self.conn
                .backends
                .set_remotes(server_type, link, call.routes);
        }
        Ok(())
    }

    async fn drain(&self, _: Drain, _: &CallCx) -> Result<(), RpcError> {
        // A backend without a server type was never picked anyway.
        if let Some((server_type, link)) = self.link {
            // No new picks; what runs on it completes.
            self.conn.backends.unregister(server_type, link, true);
            info!(backend = %log_safe(&link.node_id), "backend draining; forwarding no new requests to it");
        }
        Ok(())
    }
}

impl LinkCalls<'_> {
    fn service(&self) -> &SessionService {
        &self.conn.service
    }
}
