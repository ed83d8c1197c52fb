//! What goes to the client: pushes, kicks, answers and heartbeats, encoded
//! into one buffer per turn.

use crate::delivery::Ticket;
use crate::Outbound;
use serde_json::json;
use session_proxy_protocol::client::{encode_parts, MessageType, PackageType, Route};
use tokio::time::Instant;

use super::*;

impl ClientConn {
    /// A queued event; its delivery ticket is held until `out` is written.
    pub(super) fn on_ticketed(&mut self, event: Option<(Outbound, Option<Ticket>)>) {
        match event {
            Some((event, ticket)) => {
                self.on_outbound(Some(event));
                if let Some(ticket) = ticket {
                    self.written.get_or_insert_with(Vec::new).push(ticket);
                }
            }
            None => self.on_outbound(None),
        }
    }

    pub(super) fn on_outbound(&mut self, event: Option<Outbound>) {
        match event {
            None => self.closing = Some(Box::new("session closed".into())),
            Some(Outbound::Kick { reason }) => {
                let body = json!({ "reason": reason }).to_string();
                let _ = out_codec().encode_to(PackageType::Kick, body.as_bytes(), &mut self.out);
                self.closing = Some(format!("kicked: {reason}").into());
            }
            Some(Outbound::Push { route, body }) => {
                if self.phase != Phase::Working {
                    return;
                }
                let body = match &self.shared.config.protos {
                    Some(protos) if self.protobuf && protos.server.has(&route) => {
                        super::protobuf::encode_body(&protos.server, &route, &body)
                    }
                    _ => body,
                };
                let route = match self
                    .shared
                    .dictionary
                    .as_ref()
                    .and_then(|d| d.code_of.get(&route))
                {
                    Some(code) => Route::Code(*code),
                    None => Route::Name(route),
                };
                self.write_message(MessageType::Push, 0, &route, &body);
            }
        }
    }

    pub(super) fn write_message(&mut self, kind: MessageType, id: u64, route: &Route, body: &[u8]) {
        let result = out_codec().encode_with(PackageType::Data, &mut self.out, |b| {
            encode_parts(kind, id, route, body, b)
        });
        if let Err(err) = result {
            tracing::warn!(cause = %session_proxy_protocol::chain(&err), ?kind, "message dropped: cannot encode it");
        }
    }

    /// Starts the heartbeat deadline and sends the first heartbeat (on the
    /// handshake ack). It is not an answer: the client's first heartbeat is
    /// answered however soon it comes.
    pub(super) fn arm_heartbeat(&mut self) {
        self.alive_until = Instant::now() + self.shared.config.silence_limit();
        self.rearm = true;
        let _ = out_codec().encode_to(PackageType::Heartbeat, &[], &mut self.out);
        let half = self.half_heartbeat_ms();
        self.heartbeats.first_sent(self.shared.now_ms(), half);
    }

    /// Half the heartbeat interval, in ms.
    fn half_heartbeat_ms(&self) -> u32 {
        let half = self.shared.config.heartbeat_whole_secs() / 2;
        u32::try_from(half.as_millis()).unwrap_or(u32::MAX)
    }

    /// A heartbeat from the client: it is alive. It is answered (as Pinus
    /// does), but at most once per half heartbeat interval, so a client that answers every server
    /// heartbeat at once (seen from browsers) does not start a ping-pong;
    /// one that keeps sending far too often is closed.
    pub(super) fn on_heartbeat(&mut self) -> Result<(), String> {
        self.alive_until = Instant::now() + self.shared.config.silence_limit();
        self.rearm = true;
        let half = self.half_heartbeat_ms();
        if self.heartbeats.on_client(self.shared.now_ms(), half)? {
            let _ = out_codec().encode_to(PackageType::Heartbeat, &[], &mut self.out);
        }
        Ok(())
    }
}
