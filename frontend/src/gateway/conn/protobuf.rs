//! Protobuf bodies at the client edge ([`GatewayConfig::protos`]): requests
//! are decoded to JSON on their way in, answers and pushes encoded on
//! their way out, so handlers and backends only ever see JSON.
//!
//! [`GatewayConfig::protos`]: crate::GatewayConfig::protos

use super::super::GatewayContext;
use crate::logs::warn_throttled;
use bytes::Bytes;
use serde_json::Value;
use session_proxy_protocol::client::protobuf::{Protos, Schema};
use session_proxy_protocol::client::HandlerError;
use std::sync::Arc;

/// The code of the answer to a request whose body does not fit its proto.
pub(super) const CODE_BAD_BODY: u32 = 400;

/// How the answer of one request goes out: encoded with the proto of the
/// request's route, or as it is (JSON).
pub(super) struct Answer(Option<(Arc<Protos>, String)>);

impl Answer {
    /// For a request on `route` (`None`: the client does not speak
    /// protobuf, or the route is unknown): JSON unless the route's answers
    /// have a proto.
    pub(super) fn new(shared: &GatewayContext, route: Option<&str>) -> Answer {
        Answer(route.and_then(|route| {
            let protos = shared.config.protos.as_ref()?;
            protos
                .server
                .has(route)
                .then(|| (protos.clone(), route.to_string()))
        }))
    }

    /// The JSON answer, encoded if it must be.
    pub(super) fn encode(&self, json: Bytes) -> Bytes {
        match &self.0 {
            Some((protos, route)) => encode_body(&protos.server, route, &json),
            None => json,
        }
    }
}

/// A request's protobuf body, as the JSON handlers get; a body that does
/// not fit is answered [`CODE_BAD_BODY`] with the reason.
pub(super) fn decode_request(
    protos: &Protos,
    route: &str,
    body: &[u8],
) -> Result<Bytes, HandlerError> {
    match protos.client.decode(route, body) {
        Ok(value) => Ok(Bytes::from(value.to_string())),
        Err(err) => Err(HandlerError::with_code(
            CODE_BAD_BODY,
            format!("body does not fit the proto of {route}: {err}"),
        )),
    }
}

/// A JSON answer or push for a route with a proto, encoded. One that does
/// not fit (an error answer, or a handler's bug) still goes out, with the
/// fields that fit: the client decodes this route's bodies as protobuf
/// whatever they hold, so JSON would reach it as garbage.
pub(super) fn encode_body(schema: &Schema, route: &str, json: &[u8]) -> Bytes {
    let value: Value = serde_json::from_slice(json).unwrap_or(Value::Null);
    match schema.encode(route, &value) {
        Ok(bytes) => Bytes::from(bytes),
        Err(err) => {
            let is_error_answer =
                value.get("code").is_some_and(|c| c != 200) && value.get("msg").is_some();
            if is_error_answer {
                tracing::debug!(route, cause = %session_proxy_protocol::chain(&err), "an error answer sent with the fields its proto has");
            } else {
                let route = session_proxy_protocol::text::log_safe(route);
                warn_throttled!(%route, cause = %session_proxy_protocol::chain(&err), "a body does not fit its proto; sending the fields that do");
            }
            Bytes::from(schema.encode_lenient(route, &value).unwrap_or_default())
        }
    }
}
