//! Arbitrary bytes into the cluster frame decoder: never a panic, never
//! more than the maximum frame, and every decoded message re-encodes to a
//! frame that decodes to the same message.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use session_proxy_protocol::{FrontendCall, MessageCodec};
use tokio_util::codec::Decoder;

fuzz_target!(|data: &[u8]| {
    // What a frontend reads from backends, written back the same way.
    let mut codec = MessageCodec::<FrontendCall, FrontendCall>::new(64 * 1024);
    let mut buf = BytesMut::from(data);
    while let Ok(Some(msg)) = codec.decode(&mut buf) {
        let mut again = BytesMut::new();
        if codec.encode_to(&msg, &mut again).is_ok() {
            let back = codec.decode(&mut again).expect("our own frame decodes").expect("whole");
            assert_eq!(back, msg);
        }
    }
});
