//! Length-delimited MessagePack frames.
//!
//! A frame is a `u32` big-endian body length followed by the body, one
//! MessagePack-encoded [`Message`]. A codec reads the messages of one
//! direction and writes those of the other: [`FrontendCodec`] on a
//! frontend's end of a link, [`BackendCodec`] on a backend's. The decoder checks the announced length
//! against the maximum *before* it reserves or waits for the body, so a peer
//! cannot make us allocate by lying about a length.

use crate::{BackendCall, CodecError, FrontendCall, Message};
use bytes::{Buf, BufMut, BytesMut};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::marker::PhantomData;
use tokio_util::codec::{Decoder, Encoder};

/// Bytes in a frame header.
pub const FRAME_HEADER_LEN: usize = 4;

/// The default maximum body size: 1 MiB.
pub const DEFAULT_MAX_FRAME: usize = 1024 * 1024;

/// Decodes `Message<In>` frames and encodes `Message<Out>` frames, with an
/// enforced maximum size.
///
/// Decoding follows tokio-util's contract: `Ok(None)` means "read more
/// bytes", `Err` means the stream is corrupt and its connection should end.
pub struct MessageCodec<In, Out> {
    /// The largest body this codec accepts or produces, in bytes.
    max_frame: usize,
    /// The directions it reads and writes.
    calls: PhantomData<fn(Out) -> In>,
}

/// A frontend's end of a link: reads what backends send, writes what
/// frontends send.
pub type FrontendCodec = MessageCodec<FrontendCall, BackendCall>;

/// A backend's end of a link: reads what frontends send, writes what
/// backends send.
pub type BackendCodec = MessageCodec<BackendCall, FrontendCall>;

impl<In, Out> Clone for MessageCodec<In, Out> {
    fn clone(&self) -> Self {
        MessageCodec::new(self.max_frame)
    }
}

impl<In, Out> std::fmt::Debug for MessageCodec<In, Out> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageCodec")
            .field("max_frame", &self.max_frame)
            .finish()
    }
}

impl<In, Out> MessageCodec<In, Out> {
    /// A codec that refuses bodies larger than `max_frame` bytes (capped at
    /// `u32::MAX`, the largest length a header can carry).
    pub fn new(max_frame: usize) -> Self {
        MessageCodec {
            max_frame: max_frame.min(u32::MAX as usize),
            calls: PhantomData,
        }
    }

    /// The largest body this codec accepts, in bytes.
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }
}

impl<In, Out> Default for MessageCodec<In, Out> {
    fn default() -> Self {
        MessageCodec::new(DEFAULT_MAX_FRAME)
    }
}

impl<In: DeserializeOwned, Out> Decoder for MessageCodec<In, Out> {
    type Item = Message<In>;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Message<In>>, CodecError> {
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

impl<In, Out: Serialize> MessageCodec<In, Out> {
    /// Appends one frame holding `msg` to `dst`. On error `dst` is left as it
    /// was.
    pub fn encode_to(&self, msg: &Message<Out>, dst: &mut BytesMut) -> Result<(), CodecError> {
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

impl<In, Out: Serialize> Encoder<Message<Out>> for MessageCodec<In, Out> {
    type Error = CodecError;

    fn encode(&mut self, msg: Message<Out>, dst: &mut BytesMut) -> Result<(), CodecError> {
        self.encode_to(&msg, dst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calls::*;
    use crate::{ErrorCode, Hello, HelloReply, Request, Response, Role, RpcError, SessionId};
    use bytes::Bytes;
    use std::collections::BTreeMap;

    /// Reads what it writes: both ends' frames in one stream.
    type Loop = MessageCodec<FrontendCall, FrontendCall>;

    fn sid(n: u64) -> SessionId {
        SessionId::from_raw(n)
    }

    fn every_message() -> Vec<Message<FrontendCall>> {
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
        let calls: Vec<FrontendCall> = vec![
            GetSession { sid: sid(1) }.into(),
            GetByUid { uid: "bob".into() }.into(),
            Bind {
                sid: sid(2),
                uid: "bob".into(),
            }
            .into(),
            Unbind {
                sid: sid(2),
                uid: "bob".into(),
            }
            .into(),
            Push {
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
            }
            .into(),
            KickBySid {
                sid: sid(4),
                reason: "bye".into(),
            }
            .into(),
            KickByUid {
                uid: "carol".into(),
                reason: "ban".into(),
            }
            .into(),
            PushToSids {
                route: "onChat".into(),
                body: Bytes::from_static(br#"{"msg":"hi"}"#),
                sids: vec![sid(5), sid(6)],
            }
            .into(),
            PushToUids {
                route: "onAdd".into(),
                body: Bytes::from_static(b"{}"),
                uids: vec!["a".into(), "b:c".into()],
            }
            .into(),
            Broadcast {
                route: "onNews".into(),
                body: Bytes::from_static(b"[]"),
                bound_only: true,
            }
            .into(),
            Drain {}.into(),
        ];
        let reply = |r: Result<Bytes, CodecError>| Ok(r.expect("encodes"));
        let replies = vec![
            reply(Bind::encode_reply(&())),
            reply(GetSession::encode_reply(&None)),
            reply(GetSession::encode_reply(&Some(snapshot.clone()))),
            reply(GetByUid::encode_reply(&vec![snapshot.clone(), snapshot])),
            reply(Push::encode_reply(&vec![Some(1), None])),
            reply(KickBySid::encode_reply(&2)),
            reply(PushToSids::encode_reply(&vec![sid(9)])),
            reply(PushToUids::encode_reply(&vec!["ghost".into()])),
            reply(Handle::encode_reply(&Bytes::from_static(
                br#"{"code":200}"#,
            ))),
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
        out.push(Message::Cancel(17));
        out.push(Message::Ping(u64::MAX));
        out.push(Message::Pong(0));
        for (i, result) in replies.into_iter().enumerate() {
            out.push(Message::Response(Response {
                id: u64::MAX - i as u64,
                result,
            }));
        }
        out
    }

    fn encode_all(msgs: &[Message<FrontendCall>]) -> BytesMut {
        let codec = Loop::default();
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
        let mut codec = Loop::default();
        for want in &msgs {
            let got = codec.decode(&mut buf).expect("valid").expect("complete");
            assert_eq!(&got, want);
        }
        assert!(buf.is_empty());
        assert!(codec.decode(&mut buf).expect("empty is fine").is_none());
    }

    #[test]
    fn each_end_reads_what_the_other_writes() {
        let handle = Message::Request(Request::new(
            3,
            std::time::Duration::from_secs(1),
            Handle {
                route: "chat.chatHandler.send".into(),
                session: SessionSnapshot {
                    sid: sid(1),
                    frontend_id: "f1".into(),
                    uid: None,
                    settings: BTreeMap::new(),
                },
                body: Bytes::from_static(br#"{"content":"x"}"#),
            },
        ));
        let mut buf = BytesMut::new();
        FrontendCodec::default()
            .encode_to(&handle, &mut buf)
            .expect("encodes");
        let got = BackendCodec::default().decode(&mut buf).expect("valid");
        assert_eq!(got, Some(handle));
        let bind = Message::Notify(FrontendCall::from(Bind {
            sid: sid(2),
            uid: "u".into(),
        }));
        BackendCodec::default()
            .encode_to(&bind, &mut buf)
            .expect("encodes");
        let got = FrontendCodec::default().decode(&mut buf).expect("valid");
        assert_eq!(got, Some(bind));
    }

    #[test]
    fn split_at_every_byte_gives_need_more_then_the_message() {
        let msgs = every_message();
        let whole = encode_all(&msgs);
        // Feed the stream one byte at a time: every prefix is either "need
        // more" or a whole message, never an error.
        let mut codec = Loop::default();
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
        let mut codec = Loop::new(1024);
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
            Loop::default().decode(&mut huge),
            Err(CodecError::FrameTooLarge { .. })
        ));
    }

    #[test]
    fn encoder_refuses_a_message_over_the_maximum() {
        let codec = Loop::new(64);
        let msg = Message::Notify(FrontendCall::from(GetByUid {
            uid: "x".repeat(100),
        }));
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
        assert!(Loop::default().decode(&mut part).expect("ok").is_none());
    }

    #[test]
    fn empty_frame_is_an_error() {
        let mut buf = BytesMut::from(&[0u8, 0, 0, 0][..]);
        assert!(matches!(
            Loop::default().decode(&mut buf),
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
            let res = Loop::default().decode(&mut buf);
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
                Loop::default().decode(&mut buf),
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
            let mut codec = Loop::new(4096);
            while let Ok(Some(_)) = codec.decode(&mut buf) {}
        }
    }
}
