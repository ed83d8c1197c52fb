//! The JSON handshake.

use serde::Deserialize;
use serde_json::Value;

/// Handshake code: accepted.
pub const CODE_OK: u16 = 200;
/// Handshake code: the user handshake hook refused the client.
pub const CODE_USER_ERROR: u16 = 500;
/// Handshake code: the client type or version is refused.
pub const CODE_OLD_CLIENT: u16 = 501;

/// What a client sends in its handshake package.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct HandshakeRequest {
    /// Protocol part; a handshake without it is refused with code 500.
    pub sys: Option<HandshakeSys>,
    /// Application part, handed to the user handshake hook.
    #[serde(default)]
    pub user: Value,
}

/// The `sys` part of a client handshake.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct HandshakeSys {
    /// Client type, e.g. `js-websocket`.
    #[serde(rename = "type", default)]
    pub client_type: Option<String>,
    /// Client version, e.g. `0.0.1`.
    #[serde(default)]
    pub version: Option<String>,
    /// The version of the route dictionary the client holds.
    #[serde(rename = "dictVersion", default)]
    pub dict_version: Option<Value>,
    /// The version of the protobuf schemas the client holds (unused here).
    #[serde(rename = "protoVersion", default)]
    pub proto_version: Option<Value>,
}

impl HandshakeRequest {
    /// Parses a handshake body; `None` if it is not JSON of this shape.
    pub fn parse(body: &[u8]) -> Option<HandshakeRequest> {
        serde_json::from_slice(body).ok()
    }

    /// The client's type and version (`sys.type`, `sys.version`), empty
    /// where it sent none.
    pub fn client(&self) -> (String, String) {
        let sys = self.sys.as_ref();
        (
            sys.and_then(|s| s.client_type.clone()).unwrap_or_default(),
            sys.and_then(|s| s.version.clone()).unwrap_or_default(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_pinus_client_handshake() {
        let h = HandshakeRequest::parse(
            br#"{"sys":{"type":"js-websocket","version":"0.0.1","rsa":{}},"user":{"token":"t"}}"#,
        )
        .expect("valid");
        let sys = h.sys.expect("sys");
        assert_eq!(sys.client_type.as_deref(), Some("js-websocket"));
        assert_eq!(h.user["token"], "t");
        assert!(HandshakeRequest::parse(b"{}").expect("valid").sys.is_none());
        assert!(HandshakeRequest::parse(b"not json").is_none());
    }
}
