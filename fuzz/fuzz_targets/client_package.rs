//! Arbitrary bytes into the client package decoder: no panic; a body is
//! never longer than the maximum; every package re-encodes to the same bytes.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use session_proxy_protocol::client::PackageCodec;
use tokio_util::codec::Decoder;

fuzz_target!(|data: &[u8]| {
    let mut codec = PackageCodec::new(4096);
    let mut buf = BytesMut::from(data);
    let mut consumed = 0;
    let before = buf.len();
    while let Ok(Some(p)) = codec.decode(&mut buf) {
        assert!(p.body.len() <= 4096);
        let mut again = BytesMut::new();
        codec.encode_to(p.kind, &p.body, &mut again).expect("fits");
        assert_eq!(&again[..], &data[consumed..consumed + again.len()]);
        consumed += again.len();
    }
    assert!(consumed <= before);
});
