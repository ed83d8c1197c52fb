//! [`SessionOwner`]: the connection's side of a session.

use super::Outbound;
use crate::delivery::Ticket;
use crate::owner::OwnerRx;
use session_proxy_protocol::SessionId;

use super::SessionService;

/// The connection's side of a session: its id and the queue of kicks and
/// pushes for its client.
///
/// Dropping the owner closes the session with reason `"disconnected"` (if it
/// is still open), so a connection task that ends for any reason cannot leak
/// its session.
#[derive(Debug)]
pub struct SessionOwner {
    /// The session this handle owns.
    pub(super) sid: SessionId,
    /// Which owner of the session this is (see `SessionEntry::owner_gen`).
    pub(super) gen: u64,
    /// Kicks and pushes for the client, in order; `None` once parked.
    pub(super) rx: Option<OwnerRx>,
    /// For closing the session on drop.
    pub(super) service: SessionService,
}

impl SessionOwner {
    /// The session id.
    pub fn sid(&self) -> SessionId {
        self.sid
    }

    /// Which owner of the session this handle is: a resume makes a new one,
    /// and an older handle can then neither close nor park the session.
    pub fn generation(&self) -> u64 {
        self.gen
    }

    /// The next kick or push for the client. `None` once the session is
    /// closed (by a kick, a replacement, or [`SessionService::close`]) and
    /// everything queued before has been read.
    pub async fn recv(&mut self) -> Option<Outbound> {
        match self.rx.as_mut() {
            Some(rx) => rx.recv().await,
            None => None,
        }
    }

    /// [`recv`](Self::recv) as a poll: for connection code written as a
    /// hand-made future rather than an `async fn`.
    pub fn poll_recv(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Outbound>> {
        match self.rx.as_mut() {
            Some(rx) => rx.poll_recv(cx),
            None => std::task::Poll::Ready(None),
        }
    }

    /// [`poll_recv`](Self::poll_recv) with the delivery ticket of a push
    /// whose sender waits for it to be written: the connection drops the
    /// ticket once the push is written.
    pub(crate) fn poll_recv_ticketed(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<(Outbound, Option<Ticket>)>> {
        match self.rx.as_mut() {
            Some(rx) => rx.poll_recv_ticketed(cx),
            None => std::task::Poll::Ready(None),
        }
    }

    /// [`try_recv`](Self::try_recv) with the delivery ticket (see
    /// [`poll_recv_ticketed`](Self::poll_recv_ticketed)).
    #[allow(clippy::result_unit_err)]
    pub(crate) fn try_recv_ticketed(&mut self) -> Result<Option<(Outbound, Option<Ticket>)>, ()> {
        match self.rx.as_mut() {
            Some(rx) => rx.try_recv_ticketed(),
            None => Err(()),
        }
    }

    /// Like [`recv`](Self::recv) but without waiting: `Ok(None)` when nothing
    /// is queued yet, `Err(())` once the session is over.
    #[allow(clippy::result_unit_err)]
    pub fn try_recv(&mut self) -> Result<Option<Outbound>, ()> {
        match self.rx.as_mut() {
            Some(rx) => rx.try_recv(),
            None => Err(()),
        }
    }
}

impl Drop for SessionOwner {
    fn drop(&mut self) {
        if self.rx.is_some() {
            self.service
                .close_if_owner(self.sid, self.gen, crate::EndReason::Disconnected);
        }
    }
}
