//! Arbitrary bytes into the pomelo-protobuf decoder, against protos with
//! every type, nesting and a recursive message: no panic, and every
//! decoded body re-encodes and decodes to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use session_proxy_protocol::client::protobuf::Schema;
use std::sync::OnceLock;

fn schema() -> &'static Schema {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        let description = serde_json::json!({
            "message Tree": { "optional string label": 1, "repeated Tree children": 2 },
            "body": {
                "required uInt32 id": 1,
                "optional sInt32 delta": 2,
                "optional float speed": 3,
                "optional double weight": 4,
                "repeated uInt32 counts": 5,
                "repeated string tags": 6,
                "optional Tree tree": 7
            }
        });
        Schema::from_json(&description).expect("valid protos")
    })
}

fuzz_target!(|data: &[u8]| {
    let schema = schema();
    if let Ok(value) = schema.decode("body", data) {
        let again = schema.encode("body", &value).expect("a decoded body encodes");
        assert_eq!(schema.decode("body", &again).expect("decodes"), value);
    }
});
