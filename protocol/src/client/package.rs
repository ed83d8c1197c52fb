//! The package layer: `[type: u8][length: u24 big-endian][body]`.

use super::ClientProtocolError;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::Decoder;

/// The largest body the package header can describe: 16 MiB − 1.
pub const MAX_PACKAGE_BODY: usize = 0xff_ffff;

/// Bytes in a package header.
pub const PACKAGE_HEADER_LEN: usize = 4;

/// The five package types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PackageType {
    /// JSON handshake, both directions.
    Handshake = 1,
    /// Empty, client to server: the handshake is done.
    HandshakeAck = 2,
    /// Empty, both directions.
    Heartbeat = 3,
    /// A message (request, notify, response or push).
    Data = 4,
    /// JSON `{"reason": …}`, server to client, then close.
    Kick = 5,
}

impl PackageType {
    /// The type for a header byte.
    pub fn from_u8(b: u8) -> Result<Self, ClientProtocolError> {
        Ok(match b {
            1 => PackageType::Handshake,
            2 => PackageType::HandshakeAck,
            3 => PackageType::Heartbeat,
            4 => PackageType::Data,
            5 => PackageType::Kick,
            other => return Err(ClientProtocolError::UnknownPackageType(other)),
        })
    }
}

/// One package.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Package {
    /// Its type.
    pub kind: PackageType,
    /// Its body (empty for acks and heartbeats).
    pub body: Bytes,
}

/// Splits a byte stream into packages, refusing bodies over a maximum before
/// allocating for them; appends encoded packages to a buffer.
#[derive(Clone, Copy, Debug)]
pub struct PackageCodec {
    /// The largest body accepted or produced.
    max_body: usize,
}

impl PackageCodec {
    /// A codec with the given maximum body size (capped at
    /// [`MAX_PACKAGE_BODY`]).
    pub fn new(max_body: usize) -> Self {
        PackageCodec {
            max_body: max_body.min(MAX_PACKAGE_BODY),
        }
    }

    /// Appends one package to `dst`. Fails, leaving `dst` as it was, when the
    /// body is over the maximum.
    pub fn encode_to(
        &self,
        kind: PackageType,
        body: &[u8],
        dst: &mut BytesMut,
    ) -> Result<(), ClientProtocolError> {
        if body.len() > self.max_body {
            return Err(ClientProtocolError::PackageTooLarge {
                len: body.len(),
                max: self.max_body,
            });
        }
        dst.reserve(PACKAGE_HEADER_LEN + body.len());
        dst.put_u8(kind as u8);
        dst.put_uint(body.len() as u64, 3);
        dst.put_slice(body);
        Ok(())
    }

    /// Appends a package whose body is produced by `write` straight into the
    /// buffer (no intermediate copy). Fails, leaving `dst` as it was, when
    /// the body turns out over the maximum.
    pub fn encode_with(
        &self,
        kind: PackageType,
        dst: &mut BytesMut,
        write: impl FnOnce(&mut BytesMut) -> Result<(), ClientProtocolError>,
    ) -> Result<(), ClientProtocolError> {
        let start = dst.len();
        dst.put_u8(kind as u8);
        dst.put_uint(0, 3);
        if let Err(err) = write(dst) {
            dst.truncate(start);
            return Err(err);
        }
        let len = dst.len() - start - PACKAGE_HEADER_LEN;
        if len > self.max_body {
            dst.truncate(start);
            return Err(ClientProtocolError::PackageTooLarge {
                len,
                max: self.max_body,
            });
        }
        let be = (len as u32).to_be_bytes();
        dst[start + 1..start + 4].copy_from_slice(&be[1..]);
        Ok(())
    }
}

impl Decoder for PackageCodec {
    type Item = Package;
    type Error = ClientProtocolError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Package>, ClientProtocolError> {
        if src.len() < PACKAGE_HEADER_LEN {
            return Ok(None);
        }
        let kind = PackageType::from_u8(src[0])?;
        let len = (usize::from(src[1]) << 16) | (usize::from(src[2]) << 8) | usize::from(src[3]);
        if len > self.max_body {
            return Err(ClientProtocolError::PackageTooLarge {
                len,
                max: self.max_body,
            });
        }
        if src.len() < PACKAGE_HEADER_LEN + len {
            src.reserve(PACKAGE_HEADER_LEN + len - src.len());
            return Ok(None);
        }
        src.advance(PACKAGE_HEADER_LEN);
        let body = src.split_to(len).freeze();
        Ok(Some(Package { kind, body }))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Package>, ClientProtocolError> {
        match self.decode(src)? {
            Some(p) => Ok(Some(p)),
            None if src.is_empty() => Ok(None),
            None => Err(ClientProtocolError::Truncated),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_pinus_protocol_bytes() {
        // Package.encode(TYPE_HEARTBEAT) and Package.encode(TYPE_DATA, [1,2,3])
        // in pinus-protocol produce exactly these bytes.
        let codec = PackageCodec::new(1024);
        let mut buf = BytesMut::new();
        codec
            .encode_to(PackageType::Heartbeat, &[], &mut buf)
            .expect("small");
        codec
            .encode_to(PackageType::Data, &[1, 2, 3], &mut buf)
            .expect("small");
        assert_eq!(&buf[..], &[3, 0, 0, 0, 4, 0, 0, 3, 1, 2, 3]);
        let mut codec = codec;
        assert_eq!(
            codec.decode(&mut buf).expect("ok"),
            Some(Package {
                kind: PackageType::Heartbeat,
                body: Bytes::new()
            })
        );
        assert_eq!(
            codec.decode(&mut buf).expect("ok"),
            Some(Package {
                kind: PackageType::Data,
                body: Bytes::from_static(&[1, 2, 3])
            })
        );
    }

    #[test]
    fn three_byte_length_is_big_endian() {
        let codec = PackageCodec::new(MAX_PACKAGE_BODY);
        let mut buf = BytesMut::new();
        codec
            .encode_to(PackageType::Data, &vec![7u8; 0x01_0203], &mut buf)
            .expect("fits");
        assert_eq!(&buf[..4], &[4, 0x01, 0x02, 0x03]);
    }

    #[test]
    fn split_input_waits_for_more() {
        let codec = PackageCodec::new(1024);
        let mut whole = BytesMut::new();
        codec
            .encode_to(PackageType::Kick, br#"{"reason":"x"}"#, &mut whole)
            .expect("small");
        let mut c = codec;
        let mut buf = BytesMut::new();
        for (i, b) in whole.iter().enumerate() {
            buf.put_u8(*b);
            let got = c.decode(&mut buf).expect("never corrupt");
            assert_eq!(got.is_some(), i == whole.len() - 1);
        }
    }

    #[test]
    fn unknown_type_oversized_and_truncated_are_errors() {
        let mut c = PackageCodec::new(16);
        assert_eq!(
            c.decode(&mut BytesMut::from(&[9u8, 0, 0, 0][..])),
            Err(ClientProtocolError::UnknownPackageType(9))
        );
        assert_eq!(
            c.decode(&mut BytesMut::from(&[0u8, 0, 0, 0][..])),
            Err(ClientProtocolError::UnknownPackageType(0))
        );
        let mut big = BytesMut::from(&[4u8, 0, 0, 17][..]);
        assert_eq!(
            c.decode(&mut big),
            Err(ClientProtocolError::PackageTooLarge { len: 17, max: 16 })
        );
        assert!(big.capacity() < 64, "no allocation for a refused body");
        let mut cut = BytesMut::from(&[4u8, 0, 0, 5, 1, 2][..]);
        assert_eq!(c.decode(&mut cut), Ok(None));
        assert_eq!(c.decode_eof(&mut cut), Err(ClientProtocolError::Truncated));
        let mut buf = BytesMut::new();
        assert!(c.encode_to(PackageType::Data, &[0; 17], &mut buf).is_err());
        assert!(buf.is_empty());
    }

    #[test]
    fn encode_with_patches_the_length() {
        let codec = PackageCodec::new(8);
        let mut buf = BytesMut::from(&b"x"[..]);
        codec
            .encode_with(PackageType::Data, &mut buf, |b| {
                b.put_slice(b"hello");
                Ok(())
            })
            .expect("fits");
        assert_eq!(&buf[..], b"x\x04\x00\x00\x05hello");
        assert!(codec
            .encode_with(PackageType::Data, &mut buf, |b| {
                b.put_slice(&[0; 9]);
                Ok(())
            })
            .is_err());
        assert_eq!(&buf[..], b"x\x04\x00\x00\x05hello");
    }
}
