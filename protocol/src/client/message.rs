//! The message layer inside a data package.
//!
//! `[flag][id: varint, request/response only][route, request/notify/push][body]`
//! — flag bit 0: route compressed; bits 1–3: type; bit 4: gzip body.

use super::ClientProtocolError;
use bytes::{BufMut, Bytes, BytesMut};

/// The longest message id, in varint bytes (35 bits).
const MAX_ID_BYTES: usize = 5;

/// The four message types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MessageType {
    /// Client to server, wants a response with the same id.
    Request = 0,
    /// Client to server, no response.
    Notify = 1,
    /// Server to client, answers a request.
    Response = 2,
    /// Server to client, unsolicited.
    Push = 3,
}

impl MessageType {
    fn has_id(self) -> bool {
        matches!(self, MessageType::Request | MessageType::Response)
    }

    fn has_route(self) -> bool {
        !matches!(self, MessageType::Response)
    }
}

/// A message's route.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Route {
    /// Responses carry none.
    None,
    /// A route name, e.g. `chat.chatHandler.send` (at most 255 bytes).
    Name(String),
    /// A dictionary code standing for a route name.
    Code(u16),
}

/// One decoded message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientMessage {
    /// Request, notify, response or push.
    pub kind: MessageType,
    /// The id of a request or response; 0 otherwise.
    pub id: u64,
    /// The route.
    pub route: Route,
    /// The body: JSON text (or gzip of it when `gzip` is set).
    pub body: Bytes,
    /// The gzip flag (bit 4).
    pub gzip: bool,
}

impl ClientMessage {
    /// Decodes a data package's body.
    pub fn decode(mut bytes: Bytes) -> Result<ClientMessage, ClientProtocolError> {
        let Some(&flag) = bytes.first() else {
            return Err(ClientProtocolError::EmptyMessage);
        };
        let compressed = flag & 0x1 != 0;
        let kind = match (flag >> 1) & 0x7 {
            0 => MessageType::Request,
            1 => MessageType::Notify,
            2 => MessageType::Response,
            3 => MessageType::Push,
            other => return Err(ClientProtocolError::UnknownMessageType(other)),
        };
        let gzip = (flag >> 4) & 0x1 != 0;
        let mut pos = 1;
        let mut id = 0u64;
        if kind.has_id() {
            let mut shift = 0;
            loop {
                if pos > MAX_ID_BYTES {
                    return Err(ClientProtocolError::BadMessageId);
                }
                let b = *bytes.get(pos).ok_or(ClientProtocolError::BadMessageId)?;
                pos += 1;
                id |= u64::from(b & 0x7f) << shift;
                shift += 7;
                if b < 0x80 {
                    break;
                }
            }
        }
        let route = if !kind.has_route() {
            Route::None
        } else if compressed {
            let hi = *bytes.get(pos).ok_or(ClientProtocolError::TruncatedRoute)?;
            let lo = *bytes
                .get(pos + 1)
                .ok_or(ClientProtocolError::TruncatedRoute)?;
            pos += 2;
            Route::Code(u16::from_be_bytes([hi, lo]))
        } else {
            let len = usize::from(*bytes.get(pos).ok_or(ClientProtocolError::TruncatedRoute)?);
            pos += 1;
            let raw = bytes
                .get(pos..pos + len)
                .ok_or(ClientProtocolError::TruncatedRoute)?;
            let name = std::str::from_utf8(raw).map_err(|_| ClientProtocolError::RouteNotUtf8)?;
            pos += len;
            Route::Name(name.to_string())
        };
        let body = bytes.split_off(pos);
        Ok(ClientMessage {
            kind,
            id,
            route,
            body,
            gzip,
        })
    }

    /// Appends the encoded message to `dst`. Fails when a route name is over
    /// 255 bytes, or a request, notify or push has no route.
    pub fn encode_to(&self, dst: &mut BytesMut) -> Result<(), ClientProtocolError> {
        encode_parts(self.kind, self.id, &self.route, &self.body, dst)
    }
}

/// Appends a message built from its parts (no intermediate struct), so a
/// connector can encode straight into its write buffer.
pub fn encode_parts(
    kind: MessageType,
    id: u64,
    route: &Route,
    body: &[u8],
    dst: &mut BytesMut,
) -> Result<(), ClientProtocolError> {
    if kind.has_route() {
        match route {
            Route::None => return Err(ClientProtocolError::MissingRoute),
            Route::Name(n) if n.len() > 255 => return Err(ClientProtocolError::RouteTooLong),
            _ => {}
        }
    }
    let compressed = kind.has_route() && matches!(route, Route::Code(_));
    dst.reserve(1 + MAX_ID_BYTES + 3 + body.len());
    dst.put_u8(((kind as u8) << 1) | u8::from(compressed));
    if kind.has_id() {
        let mut rest = id;
        loop {
            let low = (rest & 0x7f) as u8;
            rest >>= 7;
            if rest == 0 {
                dst.put_u8(low);
                break;
            }
            dst.put_u8(low | 0x80);
        }
    }
    if kind.has_route() {
        match route {
            Route::Code(code) => dst.put_u16(*code),
            Route::Name(name) => {
                dst.put_u8(name.len() as u8);
                dst.put_slice(name.as_bytes());
            }
            Route::None => {}
        }
    }
    dst.put_slice(body);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(m: ClientMessage) {
        let mut buf = BytesMut::new();
        m.encode_to(&mut buf).expect("encodes");
        assert_eq!(ClientMessage::decode(buf.freeze()).expect("decodes"), m);
    }

    #[test]
    fn request_bytes_match_pinus_protocol() {
        // Message.encode(300, TYPE_REQUEST, false, "a.b.c", Buffer('{}'))
        let m = ClientMessage {
            kind: MessageType::Request,
            id: 300,
            route: Route::Name("a.b.c".into()),
            body: Bytes::from_static(b"{}"),
            gzip: false,
        };
        let mut buf = BytesMut::new();
        m.encode_to(&mut buf).expect("encodes");
        assert_eq!(&buf[..], b"\x00\xac\x02\x05a.b.c{}");
        roundtrip(m);
    }

    #[test]
    fn response_push_notify_and_compressed_routes() {
        let resp = ClientMessage {
            kind: MessageType::Response,
            id: 1,
            route: Route::None,
            body: Bytes::from_static(br#"{"code":200}"#),
            gzip: false,
        };
        let mut buf = BytesMut::new();
        resp.encode_to(&mut buf).expect("encodes");
        assert_eq!(&buf[..2], &[0x04, 0x01]);
        roundtrip(resp);
        let push = ClientMessage {
            kind: MessageType::Push,
            id: 0,
            route: Route::Code(0x0102),
            body: Bytes::from_static(b"{}"),
            gzip: false,
        };
        let mut buf = BytesMut::new();
        push.encode_to(&mut buf).expect("encodes");
        assert_eq!(&buf[..3], &[0x07, 0x01, 0x02]);
        roundtrip(push);
        roundtrip(ClientMessage {
            kind: MessageType::Notify,
            id: 0,
            route: Route::Name("chat.chatHandler.send".into()),
            body: Bytes::new(),
            gzip: false,
        });
        roundtrip(ClientMessage {
            kind: MessageType::Request,
            id: (1 << 35) - 1,
            route: Route::Name(String::new()),
            body: Bytes::new(),
            gzip: false,
        });
    }

    #[test]
    fn gzip_flag_is_reported() {
        let m = ClientMessage::decode(Bytes::from_static(b"\x10\x01\x01a{}")).expect("decodes");
        assert!(m.gzip);
        assert_eq!(m.route, Route::Name("a".into()));
    }

    #[test]
    fn malformed_messages_are_errors() {
        use ClientProtocolError::*;
        let cases: &[(&[u8], ClientProtocolError)] = &[
            (b"", EmptyMessage),
            (&[0x0e], UnknownMessageType(7)),
            (&[0x00], BadMessageId),
            (&[0x00, 0x80], BadMessageId),
            (&[0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01], BadMessageId),
            (&[0x00, 0x01], TruncatedRoute),
            (&[0x00, 0x01, 0x05, b'a'], TruncatedRoute),
            (&[0x01, 0x01, 0x00], TruncatedRoute),
            (&[0x02, 0x02, 0xff, 0xfe], RouteNotUtf8),
        ];
        for (bytes, want) in cases {
            assert_eq!(
                ClientMessage::decode(Bytes::copy_from_slice(bytes))
                    .as_ref()
                    .err(),
                Some(want),
                "{bytes:?}"
            );
        }
        let mut buf = BytesMut::new();
        assert_eq!(
            encode_parts(
                MessageType::Push,
                0,
                &Route::Name("x".repeat(256)),
                b"",
                &mut buf
            ),
            Err(RouteTooLong)
        );
        assert_eq!(
            encode_parts(MessageType::Push, 0, &Route::None, b"", &mut buf),
            Err(MissingRoute)
        );
    }
}
