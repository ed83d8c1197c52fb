//! Length-delimited MessagePack frames.
//!
//! A frame is a `u32` big-endian body length followed by the body, one
//! MessagePack-encoded [`Message`]. The decoder checks the announced length
//! against the maximum *before* it reserves or waits for the body, so a peer
//! cannot make us allocate by lying about a length.

use crate::{CodecError, Message};
use bytes::{Buf, BufMut, BytesMut};
use serde::Deserialize;
use tokio_util::codec::{Decoder, Encoder};

/// Bytes in a frame header.
pub const FRAME_HEADER_LEN: usize = 4;

/// The default maximum body size: 1 MiB.
pub const DEFAULT_MAX_FRAME: usize = 1024 * 1024;

/// Encodes and decodes [`Message`] frames with an enforced maximum size.
///
/// Decoding follows tokio-util's contract: `Ok(None)` means "read more
/// bytes", `Err` means the stream is corrupt and its connection should end.
#[derive(Clone, Debug)]
pub struct MessageCodec {
    /// The largest body this codec accepts or produces, in bytes.
    max_frame: usize,
}

impl MessageCodec {
    /// A codec that refuses bodies larger than `max_frame` bytes (capped at
    /// `u32::MAX`, the largest length a header can carry).
    pub fn new(max_frame: usize) -> Self {
        MessageCodec {
            max_frame: max_frame.min(u32::MAX as usize),
        }
    }

    /// The largest body this codec accepts, in bytes.
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }
}

impl Default for MessageCodec {
    fn default() -> Self {
        MessageCodec::new(DEFAULT_MAX_FRAME)
    }
}

impl Decoder for MessageCodec {
    type Item = Message;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Message>, CodecError> {
        if src.len() < FRAME_HEADER_LEN {
            return Ok(None);
        }
        let mut header = [0u8; FRAME_HEADER_LEN];
        header.copy_from_slice(&src[..FRAME_HEADER_LEN]);
        let len = u32::from_be_bytes(header) as usize;
        if len > self.max_frame {
            return Err(CodecError::FrameTooLarge {
                len,
                max: self.max_frame,
            });
        }
        if len == 0 {
            return Err(CodecError::EmptyFrame);
        }
        let total = FRAME_HEADER_LEN + len;
        if src.len() < total {
            // Make room for the rest of this frame in one allocation; the
            // length was checked against the maximum above.
            src.reserve(total - src.len());
            return Ok(None);
        }
        src.advance(FRAME_HEADER_LEN);
        let body = src.split_to(len);
        // Borrowing from the frame: strings and byte values are copied once,
        // straight into the message (a reading deserializer would first copy
        // each into a scratch buffer of its own).
        let mut de = rmp_serde::Deserializer::from_read_ref(&body[..]);
        let msg = Message::deserialize(&mut de).map_err(CodecError::Malformed)?;
        // The frame must end here: not even one more marker may follow.
        match serde::de::IgnoredAny::deserialize(&mut de) {
            Err(rmp_serde::decode::Error::InvalidMarkerRead(e))
                if e.kind() == std::io::ErrorKind::UnexpectedEof =>
            {
                Ok(Some(msg))
            }
            _ => Err(CodecError::TrailingBytes),
        }
    }
}

impl MessageCodec {
    /// Appends one frame holding `msg` to `dst`. On error `dst` is left as it
    /// was.
    pub fn encode_to(&self, msg: &Message, dst: &mut BytesMut) -> Result<(), CodecError> {
        let start = dst.len();
        dst.put_u32(0);
        let mut writer = dst.writer();
        if let Err(err) = rmp_serde::encode::write(&mut writer, msg) {
            writer.into_inner().truncate(start);
            return Err(CodecError::Encode(err));
        }
        let dst = writer.into_inner();
        let len = dst.len() - start - FRAME_HEADER_LEN;
        if len > self.max_frame {
            dst.truncate(start);
            return Err(CodecError::FrameTooLarge {
                len,
                max: self.max_frame,
            });
        }
        let len32 = u32::try_from(len).expect("max_frame is capped at u32::MAX");
        dst[start..start + FRAME_HEADER_LEN].copy_from_slice(&len32.to_be_bytes());
        Ok(())
    }
}

impl Encoder<Message> for MessageCodec {
    type Error = CodecError;

    fn encode(&mut self, msg: Message, dst: &mut BytesMut) -> Result<(), CodecError> {
        self.encode_to(&msg, dst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        Call, ErrorCode, Hello, HelloReply, KeyWrite, Precondition, Reply, Request, Response, Role,
        RpcError, SessionId, SessionSnapshot, Setting,
    };
    use bytes::Bytes;
    use std::collections::BTreeMap;

    fn sid(n: u64) -> SessionId {
        SessionId::from_raw(n)
    }

    fn every_message() -> Vec<Message> {
        let mut settings = BTreeMap::new();
        settings.insert(
            "room".to_string(),
            Setting {
                value: Bytes::from_static(&[0xa4, b'h', b'a', b'l', b'l']),
                version: 3,
            },
        );
        let snapshot = SessionSnapshot {
            sid: sid(u64::MAX),
            frontend_id: "connector-1".into(),
            uid: Some("alice:eu".into()),
            settings,
        };
        let calls = vec![
            Call::GetSession { sid: sid(1) },
            Call::GetByUid { uid: "bob".into() },
            Call::Bind {
                sid: sid(2),
                uid: "bob".into(),
            },
            Call::Unbind {
                sid: sid(2),
                uid: "bob".into(),
            },
            Call::Push {
                sid: sid(3),
                writes: vec![
                    KeyWrite {
                        key: "a".into(),
                        value: Some(Bytes::from_static(&[1])),
                        expect: Precondition::Any,
                    },
                    KeyWrite {
                        key: "b".into(),
                        value: None,
                        expect: Precondition::Version(9),
                    },
                    KeyWrite {
                        key: "c".into(),
                        value: Some(Bytes::new()),
                        expect: Precondition::Absent,
                    },
                ],
            },
            Call::KickBySid {
                sid: sid(4),
                reason: "bye".into(),
            },
            Call::KickByUid {
                uid: "carol".into(),
                reason: "ban".into(),
            },
            Call::PushToSids {
                route: "onChat".into(),
                body: Bytes::from_static(br#"{"msg":"hi"}"#),
                sids: vec![sid(5), sid(6)],
            },
            Call::PushToUids {
                route: "onAdd".into(),
                body: Bytes::from_static(b"{}"),
                uids: vec!["a".into(), "b:c".into()],
            },
            Call::Broadcast {
                route: "onNews".into(),
                body: Bytes::from_static(b"[]"),
                bound_only: true,
            },
            Call::Handle {
                route: "chat.chatHandler.send".into(),
                session: snapshot.clone(),
                body: Bytes::from_static(br#"{"content":"x"}"#),
            },
        ];
        let replies = vec![
            Ok(Reply::Done),
            Ok(Reply::Session(None)),
            Ok(Reply::Session(Some(snapshot.clone()))),
            Ok(Reply::Sessions(vec![snapshot.clone(), snapshot.clone()])),
            Ok(Reply::Pushed(vec![Some(1), None])),
            Ok(Reply::Kicked(2)),
            Ok(Reply::PushedToSids(vec![sid(9)])),
            Ok(Reply::PushedToUids(vec!["ghost".into()])),
            Ok(Reply::Broadcast(10_000)),
            Ok(Reply::Handled(Bytes::from_static(br#"{"code":200}"#))),
            Err(RpcError::new(ErrorCode::Conflict, "key moved")),
            Err(RpcError::new(ErrorCode::Unknown(777), "from the future")),
        ];
        let mut out = vec![
            Message::Hello(Hello::new("backend-1", Role::Backend, Some("f1".into()))),
            Message::Hello(Hello::new("frontend-1", Role::Frontend, None)),
            Message::HelloReply(HelloReply::Accepted {
                version: 1,
                node_id: "f1".into(),
                clock_ms: 1_764_000_000_000,
            }),
            Message::HelloReply(HelloReply::Refused(RpcError::new(
                ErrorCode::VersionMismatch,
                "speak v1",
            ))),
        ];
        for (i, call) in calls.into_iter().enumerate() {
            out.push(Message::Notify(call.clone()));
            out.push(Message::Request(Request {
                id: i as u64 * 1_000_003,
                deadline_ms: 1234,
                call,
                sent_ms: 1_764_000_000_000 + i as u64,
            }));
        }
        for (i, result) in replies.into_iter().enumerate() {
            out.push(Message::Response(Response {
                id: u64::MAX - i as u64,
                result,
            }));
        }
        out
    }

    fn encode_all(msgs: &[Message]) -> BytesMut {
        let codec = MessageCodec::default();
        let mut buf = BytesMut::new();
        for m in msgs {
            codec.encode_to(m, &mut buf).expect("encodes");
        }
        buf
    }

    #[test]
    fn every_message_round_trips() {
        let msgs = every_message();
        let mut buf = encode_all(&msgs);
        let mut codec = MessageCodec::default();
        for want in &msgs {
            let got = codec.decode(&mut buf).expect("valid").expect("complete");
            assert_eq!(&got, want);
        }
        assert!(buf.is_empty());
        assert!(codec.decode(&mut buf).expect("empty is fine").is_none());
    }

    #[test]
    fn split_at_every_byte_gives_need_more_then_the_message() {
        let msgs = every_message();
        let whole = encode_all(&msgs);
        // Feed the stream one byte at a time: every prefix is either "need
        // more" or a whole message, never an error.
        let mut codec = MessageCodec::default();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for b in whole.iter() {
            buf.put_u8(*b);
            while let Some(m) = codec.decode(&mut buf).expect("a prefix is never corrupt") {
                got.push(m);
            }
        }
        assert_eq!(got, msgs);
    }

    #[test]
    fn oversized_length_is_refused_before_the_body_arrives() {
        let mut codec = MessageCodec::new(1024);
        let mut buf = BytesMut::new();
        buf.put_u32(1025);
        let err = codec.decode(&mut buf).expect_err("too large");
        assert!(matches!(
            err,
            CodecError::FrameTooLarge {
                len: 1025,
                max: 1024
            }
        ));
        assert_eq!(err.code(), ErrorCode::FrameTooLarge);
        // No allocation for the announced body happened.
        assert!(buf.capacity() < 1024);

        let mut huge = BytesMut::new();
        huge.put_u32(u32::MAX);
        assert!(matches!(
            MessageCodec::default().decode(&mut huge),
            Err(CodecError::FrameTooLarge { .. })
        ));
    }

    #[test]
    fn encoder_refuses_a_message_over_the_maximum() {
        let codec = MessageCodec::new(64);
        let msg = Message::Notify(Call::GetByUid {
            uid: "x".repeat(100),
        });
        let mut buf = BytesMut::from(&b"keep"[..]);
        let err = codec.encode_to(&msg, &mut buf).expect_err("too large");
        assert!(matches!(err, CodecError::FrameTooLarge { max: 64, .. }));
        assert_eq!(
            &buf[..],
            b"keep",
            "a refused frame leaves the buffer as it was"
        );
    }

    #[test]
    fn truncated_frame_waits_for_more() {
        let whole = encode_all(&every_message()[..1]);
        let mut part = BytesMut::from(&whole[..whole.len() - 1]);
        assert!(MessageCodec::default()
            .decode(&mut part)
            .expect("ok")
            .is_none());
    }

    #[test]
    fn empty_frame_is_an_error() {
        let mut buf = BytesMut::from(&[0u8, 0, 0, 0][..]);
        assert!(matches!(
            MessageCodec::default().decode(&mut buf),
            Err(CodecError::EmptyFrame)
        ));
    }

    #[test]
    fn garbage_bodies_are_errors_not_panics() {
        let bodies: Vec<Vec<u8>> = vec![
            vec![0xc1],                         // never-used MessagePack byte
            vec![0xff; 17],                     // negative fixints, not a message
            b"GET / HTTP/1.1\r\n\r\n".to_vec(), // another protocol
            vec![0x81, 0xa7, b'R', b'e', b'q'], // a map cut short
            vec![0xdd, 0xff, 0xff, 0xff, 0xff], // array claiming 4G elements
        ];
        for body in bodies {
            let mut buf = BytesMut::new();
            buf.put_u32(body.len() as u32);
            buf.extend_from_slice(&body);
            let res = MessageCodec::default().decode(&mut buf);
            assert!(res.is_err(), "garbage {body:?} decoded as {res:?}");
        }
    }

    #[test]
    fn trailing_bytes_inside_a_frame_are_an_error() {
        let whole = encode_all(&every_message()[..1]);
        // A whole extra value (nil), and a marker whose data is missing.
        for trailing in [&[0xc0][..], &[0xcc][..]] {
            let mut body = whole[FRAME_HEADER_LEN..].to_vec();
            body.extend_from_slice(trailing);
            let mut buf = BytesMut::new();
            buf.put_u32(body.len() as u32);
            buf.extend_from_slice(&body);
            assert!(matches!(
                MessageCodec::default().decode(&mut buf),
                Err(CodecError::TrailingBytes)
            ));
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        // A tiny deterministic xorshift stream; the fuzz targets go further.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..2_000 {
            let mut buf = BytesMut::new();
            let n = (x % 64) as usize;
            for _ in 0..n {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                buf.put_u8(x as u8);
            }
            let mut codec = MessageCodec::new(4096);
            while let Ok(Some(_)) = codec.decode(&mut buf) {}
        }
    }
}
