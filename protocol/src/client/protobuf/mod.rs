//! Protobuf bodies in pomelo-protobuf's format, the one Pomelo's and
//! Pinus's clients speak when a connector has `useProtobuf` on (npm
//! `pomelo-protobuf`, pomelo-jsclient-websocket, the Unity C# client,
//! libpomelo).
//!
//! It is not Google's `.proto` tooling: messages are described in JSON,
//! one entry per route, and decoded by a generic codec, so bodies stay
//! JSON values on both sides of it.
//!
//! ```json
//! {
//!   "message Point": { "required sInt32 x": 1, "required sInt32 y": 2 },
//!   "onMove": {
//!     "required uInt32 entityId": 1,
//!     "repeated Point path": 2,
//!     "optional string note": 3
//!   }
//! }
//! ```
//!
//! A key is `"<rule> <type> <name>"` with its tag as the value, or
//! `"message <Name>"` with a nested description. Rules are `required`,
//! `optional`, `repeated`; types are `uInt32`, `sInt32`, `int32`, `float`,
//! `double`, `string`, or a message: one nested in the same message, or
//! one at the root (`"message <Name>"` at the top level), looked up in
//! that order, as pomelo-protobuf does.
//!
//! The bytes are the protobuf wire format with pomelo-protobuf's own
//! turns, kept here byte for byte:
//! - `int32` is zig-zag encoded, like `sInt32`;
//! - a repeated number field is one tag, the **count** of values (not
//!   their byte length), then the values; repeated strings and messages
//!   are one tagged field each;
//! - decoders go by the tag alone: the browser client writes wire type 2
//!   for every varint, so the wire type is not checked.
//!
//! Where pomelo-protobuf writes the fields of an object in the object's
//! own key order, this encoder writes them in tag order (as `protoc`
//! does); any decoder reads both.
//!
//! Unlike pomelo-protobuf, a description it would half-ignore (a bad key,
//! a duplicate tag, a type it does not know, such as `uInt64` which its
//! encoder drops) is refused when loaded, and a body that does not fit
//! its message is a typed [`ProtoError`], never a panic.
//!
//! ```
//! use serde_json::json;
//! use session_proxy_protocol::client::protobuf::Schema;
//!
//! let schema = Schema::from_json(&json!({
//!     "onChat": { "required string msg": 1, "required string from": 2 }
//! }))?;
//! let chat = json!({ "msg": "hello", "from": "ann" });
//! let bytes = schema.encode("onChat", &chat)?;
//! assert_eq!(bytes, b"\x0a\x05hello\x12\x03ann");
//! assert_eq!(schema.decode("onChat", &bytes)?, chat);
//! # Ok::<(), session_proxy_protocol::client::protobuf::ProtoError>(())
//! ```
//!
//! - this file: the [`Schema`] and [`Protos`] API, the errors, the model;
//! - `load`: a JSON description checked and resolved into messages;
//! - `encode` and `decode`: values to bytes and back;
//! - `wire`: varints, byte slices, and the path of a field for errors.

mod decode;
mod encode;
mod load;
mod wire;

#[cfg(test)]
mod tests;

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use wire::Path;

/// How deep messages may nest in one body, on either side; a deeper body
/// is refused ([`ProtoError::TooDeep`]) before it can exhaust a stack.
pub const MAX_DEPTH: usize = 32;

/// The largest tag a field may have (protobuf's limit).
const MAX_TAG: u64 = (1 << 29) - 1;

/// Why a description could not be loaded, or a body encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtoError {
    /// The description is not one pomelo-protobuf could use as it is.
    #[error("protos: {at}: {problem}")]
    Schema {
        /// The entry, as a path of keys.
        at: String,
        /// What is wrong with it.
        problem: String,
    },
    /// No message is described for this route.
    #[error("no proto for route {0:?}")]
    NoProto(String),
    /// A required field is missing (or `null`).
    #[error("field {0}: required but missing")]
    Missing(String),
    /// A value of another type than its field's, or out of its range.
    #[error("field {field}: expected {expected}")]
    WrongType {
        /// The field, as a path (`path[2].x`).
        field: String,
        /// What its type takes.
        expected: &'static str,
    },
    /// The bytes end inside a field.
    #[error("body cut short")]
    Truncated,
    /// A varint longer than ten bytes.
    #[error("bad varint")]
    BadVarint,
    /// A tag that no field of the message has.
    #[error("unknown field tag {0}")]
    UnknownTag(u64),
    /// A decoded string that is not UTF-8.
    #[error("field {0}: not UTF-8")]
    NotUtf8(String),
    /// A decoded float that is NaN or infinite, which JSON cannot hold.
    #[error("field {0}: not a finite number")]
    NotFinite(String),
    /// Messages nested deeper than [`MAX_DEPTH`].
    #[error("messages nested deeper than {MAX_DEPTH}")]
    TooDeep,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rule {
    Required,
    Optional,
    Repeated,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    UInt32,
    /// `sInt32` and `int32`: both zig-zag.
    SInt32,
    Float,
    Double,
    String,
    /// Index into [`Schema::messages`].
    Message(usize),
}

impl Kind {
    fn of(name: &str) -> Option<Kind> {
        Some(match name {
            "uInt32" => Kind::UInt32,
            "sInt32" | "int32" => Kind::SInt32,
            "float" => Kind::Float,
            "double" => Kind::Double,
            "string" => Kind::String,
            _ => return None,
        })
    }

    /// The wire type pomelo-protobuf's server encoder writes.
    fn wire_type(self) -> u64 {
        match self {
            Kind::UInt32 | Kind::SInt32 => 0,
            Kind::Double => 1,
            Kind::Float => 5,
            Kind::String | Kind::Message(_) => 2,
        }
    }

    /// Numbers: repeated ones are written as one count-prefixed run.
    fn is_number(self) -> bool {
        !matches!(self, Kind::String | Kind::Message(_))
    }
}

#[derive(Debug)]
struct Field {
    name: String,
    rule: Rule,
    kind: Kind,
    tag: u64,
}

#[derive(Debug, Default)]
struct Message {
    /// In tag order.
    fields: Vec<Field>,
}

impl Message {
    fn by_tag(&self, tag: u64) -> Option<&Field> {
        self.fields
            .binary_search_by_key(&tag, |f| f.tag)
            .ok()
            .map(|i| &self.fields[i])
    }
}

/// One side's protos (the server's or the client's): a message per route,
/// loaded from pomelo-protobuf's JSON description.
#[derive(Debug)]
pub struct Schema {
    messages: Vec<Message>,
    routes: HashMap<String, usize>,
    /// The description in pomelo-protobuf's parsed form, which clients
    /// receive in the handshake and hand to their codec as it is.
    parsed: Value,
}

impl Schema {
    /// Loads a description (a `serverProtos.json` or `clientProtos.json`).
    pub fn from_json(description: &Value) -> Result<Schema, ProtoError> {
        load::load(description)
    }

    /// Whether `route` has a message: its bodies are protobuf, not JSON.
    pub fn has(&self, route: &str) -> bool {
        self.routes.contains_key(route)
    }

    /// The description in pomelo-protobuf's parsed form (what
    /// `Protobuf.parse` returns), as sent to clients.
    pub fn parsed(&self) -> &Value {
        &self.parsed
    }

    fn root(&self, route: &str) -> Result<usize, ProtoError> {
        self.routes
            .get(route)
            .copied()
            .ok_or_else(|| ProtoError::NoProto(route.to_string()))
    }

    /// Encodes `value` (an object) as `route`'s message. Fields the message
    /// does not have are left out, as pomelo-protobuf does.
    pub fn encode(&self, route: &str, value: &Value) -> Result<Vec<u8>, ProtoError> {
        let mut out = Vec::new();
        let object = value.as_object().ok_or_else(|| ProtoError::WrongType {
            field: "(body)".into(),
            expected: "an object",
        })?;
        let mut at = Path::default();
        self.encode_message(self.root(route)?, object, &mut out, &mut at, false)?;
        Ok(out)
    }

    /// Encodes what of `value` fits `route`'s message: a field that is
    /// missing or does not fit is left out rather than failing the whole
    /// body. For answers that must reach the client in some form (an error
    /// answer in a route whose message has a `code` field), never for
    /// data that is checked.
    pub fn encode_lenient(&self, route: &str, value: &Value) -> Result<Vec<u8>, ProtoError> {
        let mut out = Vec::new();
        let empty = Map::new();
        let object = value.as_object().unwrap_or(&empty);
        let mut at = Path::default();
        self.encode_message(self.root(route)?, object, &mut out, &mut at, true)?;
        Ok(out)
    }

    /// Decodes `route`'s message from `bytes` into a JSON object.
    pub fn decode(&self, route: &str, bytes: &[u8]) -> Result<Value, ProtoError> {
        let mut at = Path::default();
        self.decode_message(self.root(route)?, bytes, &mut at)
            .map(Value::Object)
    }
}

/// Both sides' protos and their version, as a connector serves them.
#[derive(Debug)]
pub struct Protos {
    /// What the server sends: answers (by the request's route) and pushes.
    pub server: Schema,
    /// What clients send: requests and notifies.
    pub client: Schema,
    version: String,
}

impl Protos {
    /// Both descriptions; the version is a hash of the two.
    pub fn new(server: Schema, client: Schema) -> Protos {
        let mut hash = Sha256::new();
        hash.update(client.parsed.to_string());
        hash.update([0]);
        hash.update(server.parsed.to_string());
        let digest = hash.finalize();
        let version = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
        Protos {
            server,
            client,
            version,
        }
    }

    /// Loads both descriptions from their JSON text.
    pub fn from_json_text(server: &str, client: &str) -> Result<Protos, ProtoError> {
        let read = |side: &str, text: &str| {
            let value: Value = serde_json::from_str(text).map_err(|e| ProtoError::Schema {
                at: format!("({side})"),
                problem: format!("not JSON: {e}"),
            })?;
            Schema::from_json(&value)
        };
        Ok(Protos::new(
            read("server", server)?,
            read("client", client)?,
        ))
    }

    /// The version clients hold once they have these protos
    /// (`sys.protoVersion` in their handshake).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The handshake reply's `sys.protos`: `{server, client, version}`,
    /// the descriptions in parsed form, as Pomelo and Pinus send them.
    pub fn handshake_value(&self) -> Value {
        json!({
            "server": self.server.parsed,
            "client": self.client.parsed,
            "version": self.version,
        })
    }
}
