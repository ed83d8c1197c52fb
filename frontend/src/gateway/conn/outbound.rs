//! What goes to the client: pushes, kicks, answers and heartbeats, encoded
//! into one buffer per turn.

use crate::delivery::Ticket;
use crate::Outbound;
use serde_json::json;
use session_proxy_protocol::client::{encode_parts, MessageType, PackageType, Route};

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
                if !self.state.working() {
                    return;
                }
                let body = match &self.shared.config.protos {
                    Some(protos) if self.state.protobuf() && protos.server.has(&route) => {
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

    /// Writes a heartbeat.
    pub(super) fn write_heartbeat(&mut self) {
        let _ = out_codec().encode_to(PackageType::Heartbeat, &[], &mut self.out);
    }
}
