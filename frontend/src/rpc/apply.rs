//! One session call from a backend, applied to the [`SessionService`].

use super::link::BackendConn;
use crate::delivery::{Receipt, Ticket};
use crate::SessionService;
use session_proxy_protocol::{Call, ErrorCode, Message, Reply, Response, RpcError, SessionId};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;
use tracing::debug;

/// Whether a call pushes to clients (and is answered once written).
pub(super) fn pushes_to_clients(call: &Call) -> bool {
    matches!(
        call,
        Call::PushToSids { .. } | Call::PushToUids { .. } | Call::Broadcast { .. }
    )
}

/// Whether a call changes session state (and so must be durable before it
/// is acknowledged, when a store is attached).
pub(super) fn mutates(call: &Call) -> bool {
    matches!(
        call,
        Call::Bind { .. }
            | Call::Unbind { .. }
            | Call::Push { .. }
            | Call::KickBySid { .. }
            | Call::KickByUid { .. }
            | Call::RevokeUid { .. }
    )
}

/// One answer of a batch, held until the batch is durable.
pub(super) struct Answer {
    /// The call's id.
    pub(super) id: u64,
    /// What it did.
    pub(super) result: Result<Reply, RpcError>,
    /// A change that must be in the store before it is acknowledged.
    pub(super) durable: bool,
    /// The one session the call addressed, if any.
    pub(super) sid: Option<SessionId>,
}

impl Answer {
    /// An answer to a call on `sid`, or to a call on no single session.
    pub(super) fn new(
        id: u64,
        result: Result<Reply, RpcError>,
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
/// of a session that is not here are looked at.
pub(super) fn redirect(service: &SessionService, answer: &mut Answer, settled: bool) {
    let Some(sid) = answer.sid else { return };
    let not_here = matches!(
        &answer.result,
        Err(RpcError {
            code: ErrorCode::SessionNotFound,
            ..
        }) | Ok(Reply::Session(None) | Reply::Kicked(0))
    );
    if !(settled || not_here) {
        return;
    }
    if let Some(owner) = service.moved_to(sid) {
        answer.result = Err(RpcError::new(ErrorCode::SessionMoved, owner));
    }
}

/// Answers a push call once every copy is written (or after `wait`),
/// through the link's outgoing queue, on a task of the server's tracker.
pub(super) fn answer_when_written(
    tasks: &TaskTracker,
    id: u64,
    reply: Reply,
    (receipt, issuer): (Arc<Receipt>, Ticket),
    wait: Duration,
    late_answers: mpsc::Sender<Message>,
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
    late_answers: mpsc::Sender<Message>,
) {
    tasks.spawn(async move {
        let committed = service.flush().await;
        if let Err(err) = &committed {
            debug!(cause = %err, calls = answers.len(), "answering changes as not yet durable");
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

impl BackendConn {
    /// Applies one session call to the service. Pushes to clients are
    /// counted on `receipt` when there is one.
    pub(super) async fn apply(
        &self,
        call: Call,
        receipt: Option<&Arc<Receipt>>,
    ) -> Result<Reply, RpcError> {
        let s = &self.service;
        let reply = match call {
            // (A draining backend's Drain is handled by its link; without a
            // server type it was never picked anyway.)
            Call::Ping | Call::Drain => Reply::Done,
            Call::GetSession { sid } => Reply::Session(s.get(sid)),
            Call::GetByUid { uid } => Reply::Sessions(s.get_by_uid(&uid)),
            Call::Bind { sid, uid } => s.bind_everywhere(sid, &uid).await.map(|()| Reply::Done)?,
            Call::Unbind { sid, uid } => s.unbind(sid, &uid).map(|()| Reply::Done)?,
            Call::Push { sid, writes } => Reply::Pushed(s.apply_push(sid, writes)?),
            Call::KickBySid { sid, reason } => {
                Reply::Kicked(u32::from(s.kick_by_sid(sid, &reason)))
            }
            Call::KickByUid { uid, reason } => {
                Reply::Kicked(u32::try_from(s.kick_by_uid(&uid, &reason)).unwrap_or(u32::MAX))
            }
            Call::PushToSids { route, body, sids } => Reply::PushedToSids(
                sids.into_iter()
                    .filter(|sid| {
                        s.push_to_client_tracked(*sid, &route, body.clone(), receipt)
                            .is_err()
                    })
                    .collect(),
            ),
            Call::PushToUids { route, body, uids } => {
                Reply::PushedToUids(s.push_to_uids_tracked(&uids, &route, &body, receipt))
            }
            Call::Broadcast {
                route,
                body,
                bound_only,
            } => Reply::Broadcast(
                u32::try_from(s.broadcast_tracked(&route, &body, bound_only, receipt))
                    .unwrap_or(u32::MAX),
            ),
            Call::UserSessions { uid } => {
                Reply::UserSessions(s.user_sessions(&uid).await.map_err(crate::Error::from)?)
            }
            Call::RevokeUid { uid, reason } => Reply::Ended(
                s.revoke_uid(&uid, &reason)
                    .await
                    .map_err(crate::Error::from)?,
            ),
            Call::Handle { .. } => {
                return Err(RpcError::new(
                    ErrorCode::Unsupported,
                    "frontends do not handle forwarded requests",
                ))
            }
        };
        Ok(reply)
    }
}
