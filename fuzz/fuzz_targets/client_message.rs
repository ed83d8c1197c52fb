//! Arbitrary bytes into the client message decoder: no panic, and every
//! decoded message re-encodes and decodes to the same message.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use session_proxy_protocol::client::ClientMessage;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = ClientMessage::decode(Bytes::copy_from_slice(data)) {
        let mut out = BytesMut::new();
        if m.encode_to(&mut out).is_ok() {
            let back = ClientMessage::decode(out.freeze()).expect("our own encoding decodes");
            assert_eq!(back.kind, m.kind);
            assert_eq!(back.id, m.id);
            assert_eq!(back.route, m.route);
            assert_eq!(back.body, m.body);
        }
    }
});
