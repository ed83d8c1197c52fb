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

use serde_json::{json, Map, Number, Value};
use sha2::{Digest, Sha256};
use std::collections::HashMap;

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

/// A message's description before its field types are resolved.
struct Pending<'a> {
    at: String,
    entries: &'a Map<String, Value>,
    /// Messages nested directly in it, by name.
    nested: HashMap<&'a str, usize>,
}

impl Schema {
    /// Loads a description (a `serverProtos.json` or `clientProtos.json`).
    pub fn from_json(description: &Value) -> Result<Schema, ProtoError> {
        let top = description.as_object().ok_or_else(|| ProtoError::Schema {
            at: "(top)".into(),
            problem: "must be an object".into(),
        })?;
        let mut pending = Vec::new();
        let mut roots = HashMap::new();
        let mut routes = HashMap::new();
        let mut parsed = Map::new();
        for (key, value) in top {
            let index = collect(key, value, &mut pending)?;
            match key.strip_prefix("message ") {
                Some(name) => {
                    roots.insert(name.to_string(), index);
                }
                None => {
                    routes.insert(key.clone(), index);
                }
            }
        }
        let mut messages = Vec::with_capacity(pending.len());
        for message in &pending {
            messages.push(resolve(message, &roots)?);
        }
        for (key, value) in top {
            let object = value.as_object().expect("checked by collect");
            parsed.insert(key.clone(), parsed_form(object));
        }
        Ok(Schema {
            messages,
            routes,
            parsed: Value::Object(parsed),
        })
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

    fn encode_message(
        &self,
        index: usize,
        object: &Map<String, Value>,
        out: &mut Vec<u8>,
        at: &mut Path,
        lenient: bool,
    ) -> Result<(), ProtoError> {
        if at.depth >= MAX_DEPTH {
            return Err(ProtoError::TooDeep);
        }
        at.depth += 1;
        for field in &self.messages[index].fields {
            let (start, mark, depth) = (out.len(), at.parts.len(), at.depth);
            at.push(&field.name);
            let written = self.encode_field(field, object.get(&field.name), out, at, lenient);
            // A failed nested field leaves its own path behind.
            at.parts.truncate(mark);
            at.depth = depth;
            if let Err(err) = written {
                if !lenient || err == ProtoError::TooDeep {
                    return Err(err);
                }
                out.truncate(start);
            }
        }
        at.depth -= 1;
        Ok(())
    }

    fn encode_field(
        &self,
        field: &Field,
        value: Option<&Value>,
        out: &mut Vec<u8>,
        at: &mut Path,
        lenient: bool,
    ) -> Result<(), ProtoError> {
        let head = (field.tag << 3) | field.kind.wire_type();
        let value = value.filter(|v| !v.is_null());
        match (field.rule, value) {
            (Rule::Required, None) => Err(ProtoError::Missing(at.to_string())),
            (Rule::Optional | Rule::Repeated, None) => Ok(()),
            (Rule::Required | Rule::Optional, Some(value)) => {
                put_varint(out, head);
                self.encode_value(field.kind, value, out, at, lenient)
            }
            (Rule::Repeated, Some(Value::Array(items))) if items.is_empty() => Ok(()),
            (Rule::Repeated, Some(Value::Array(items))) if field.kind.is_number() => {
                put_varint(out, head);
                put_varint(out, items.len() as u64);
                for (i, item) in items.iter().enumerate() {
                    at.index(i);
                    self.encode_value(field.kind, item, out, at, lenient)?;
                    at.unindex();
                }
                Ok(())
            }
            (Rule::Repeated, Some(Value::Array(items))) => {
                for (i, item) in items.iter().enumerate() {
                    at.index(i);
                    put_varint(out, head);
                    self.encode_value(field.kind, item, out, at, lenient)?;
                    at.unindex();
                }
                Ok(())
            }
            (Rule::Repeated, Some(_)) => Err(at.wrong("an array")),
        }
    }

    fn encode_value(
        &self,
        kind: Kind,
        value: &Value,
        out: &mut Vec<u8>,
        at: &mut Path,
        lenient: bool,
    ) -> Result<(), ProtoError> {
        match kind {
            Kind::UInt32 => {
                let n = integer(value)
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(|| at.wrong("an integer from 0 to 4294967295"))?;
                put_varint(out, u64::from(n));
            }
            Kind::SInt32 => {
                let n = integer(value)
                    .and_then(|n| i32::try_from(n).ok())
                    .ok_or_else(|| at.wrong("an integer from -2147483648 to 2147483647"))?;
                put_varint(out, u64::from(((n << 1) ^ (n >> 31)) as u32));
            }
            Kind::Float => {
                let n = value
                    .as_f64()
                    .filter(|n| n.abs() <= f64::from(f32::MAX))
                    .ok_or_else(|| at.wrong("a number within float's range"))?;
                out.extend_from_slice(&(n as f32).to_le_bytes());
            }
            Kind::Double => {
                let n = value.as_f64().ok_or_else(|| at.wrong("a number"))?;
                out.extend_from_slice(&n.to_le_bytes());
            }
            Kind::String => {
                let s = value.as_str().ok_or_else(|| at.wrong("a string"))?;
                put_varint(out, s.len() as u64);
                out.extend_from_slice(s.as_bytes());
            }
            Kind::Message(index) => {
                let object = value.as_object().ok_or_else(|| at.wrong("an object"))?;
                let mut inner = Vec::new();
                self.encode_message(index, object, &mut inner, at, lenient)?;
                put_varint(out, inner.len() as u64);
                out.extend_from_slice(&inner);
            }
        }
        Ok(())
    }

    fn decode_message(
        &self,
        index: usize,
        bytes: &[u8],
        at: &mut Path,
    ) -> Result<Map<String, Value>, ProtoError> {
        if at.depth >= MAX_DEPTH {
            return Err(ProtoError::TooDeep);
        }
        at.depth += 1;
        let message = &self.messages[index];
        let mut object = Map::new();
        let mut pos = 0;
        while pos < bytes.len() {
            let tag = get_varint(bytes, &mut pos)? >> 3;
            let field = message.by_tag(tag).ok_or(ProtoError::UnknownTag(tag))?;
            at.push(&field.name);
            match field.rule {
                Rule::Required | Rule::Optional => {
                    let value = self.decode_value(field.kind, bytes, &mut pos, at)?;
                    object.insert(field.name.clone(), value);
                }
                Rule::Repeated => {
                    // A count, then the numbers; each takes at least a
                    // byte, so a hostile count ends at the end of `bytes`.
                    // No encoder writes a count of 0; it adds nothing.
                    let count = if field.kind.is_number() {
                        get_varint(bytes, &mut pos)?
                    } else {
                        1
                    };
                    if count > 0 {
                        let slot = object
                            .entry(field.name.clone())
                            .or_insert_with(|| Value::Array(Vec::new()));
                        // Names are unique in a message: only arrays are
                        // put under a repeated field's.
                        if let Value::Array(items) = slot {
                            for _ in 0..count {
                                at.index(items.len());
                                items.push(self.decode_value(field.kind, bytes, &mut pos, at)?);
                                at.unindex();
                            }
                        }
                    }
                }
            }
            at.pop();
        }
        for field in &message.fields {
            if field.rule == Rule::Required && !object.contains_key(&field.name) {
                at.push(&field.name);
                return Err(ProtoError::Missing(at.to_string()));
            }
        }
        at.depth -= 1;
        Ok(object)
    }

    fn decode_value(
        &self,
        kind: Kind,
        bytes: &[u8],
        pos: &mut usize,
        at: &mut Path,
    ) -> Result<Value, ProtoError> {
        Ok(match kind {
            Kind::UInt32 => {
                let n = get_varint(bytes, pos)?;
                let n =
                    u32::try_from(n).map_err(|_| at.wrong("an integer from 0 to 4294967295"))?;
                Value::from(n)
            }
            Kind::SInt32 => {
                let n = get_varint(bytes, pos)?;
                let n = u32::try_from(n)
                    .map_err(|_| at.wrong("an integer from -2147483648 to 2147483647"))?;
                Value::from(((n >> 1) as i32) ^ -((n & 1) as i32))
            }
            Kind::Float => {
                let raw =
                    <[u8; 4]>::try_from(take(bytes, pos, 4)?).map_err(|_| ProtoError::Truncated)?;
                finite(f64::from(f32::from_le_bytes(raw)), at)?
            }
            Kind::Double => {
                let raw =
                    <[u8; 8]>::try_from(take(bytes, pos, 8)?).map_err(|_| ProtoError::Truncated)?;
                finite(f64::from_le_bytes(raw), at)?
            }
            Kind::String => {
                let len = get_len(bytes, pos)?;
                let raw = take(bytes, pos, len)?;
                let s =
                    std::str::from_utf8(raw).map_err(|_| ProtoError::NotUtf8(at.to_string()))?;
                Value::String(s.to_string())
            }
            Kind::Message(index) => {
                let len = get_len(bytes, pos)?;
                let raw = take(bytes, pos, len)?;
                Value::Object(self.decode_message(index, raw, at)?)
            }
        })
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

/// Registers `value` (a message description under `at`) and every message
/// nested in it, in `pending`; returns its index.
fn collect<'a>(
    at: &str,
    value: &'a Value,
    pending: &mut Vec<Pending<'a>>,
) -> Result<usize, ProtoError> {
    let entries = value.as_object().ok_or_else(|| ProtoError::Schema {
        at: at.to_string(),
        problem: "must be an object".into(),
    })?;
    let index = pending.len();
    pending.push(Pending {
        at: at.to_string(),
        entries,
        nested: HashMap::new(),
    });
    for (key, inner) in entries {
        if let Some(name) = key.strip_prefix("message ") {
            if name.is_empty() || name.contains(' ') {
                return Err(ProtoError::Schema {
                    at: format!("{at}.{key}"),
                    problem: "a message key is \"message <Name>\"".into(),
                });
            }
            let child = collect(&format!("{at}.{key}"), inner, pending)?;
            pending[index].nested.insert(name, child);
        }
    }
    Ok(index)
}

/// The fields of one message, their types resolved: nested in it first,
/// then at the root.
fn resolve(message: &Pending<'_>, roots: &HashMap<String, usize>) -> Result<Message, ProtoError> {
    let mut fields: Vec<Field> = Vec::new();
    for (key, tag) in message.entries {
        if key.starts_with("message ") {
            continue;
        }
        let bad = |problem: String| ProtoError::Schema {
            at: format!("{}.{key}", message.at),
            problem,
        };
        let words: Vec<&str> = key.split(' ').collect();
        let [rule, type_name, name] = words[..] else {
            return Err(bad("a field key is \"<rule> <type> <name>\"".into()));
        };
        let rule = match rule {
            "required" => Rule::Required,
            "optional" => Rule::Optional,
            "repeated" => Rule::Repeated,
            other => return Err(bad(format!("unknown rule {other:?}"))),
        };
        let tag = tag
            .as_u64()
            .filter(|t| (1..=MAX_TAG).contains(t))
            .ok_or_else(|| bad(format!("the tag must be an integer from 1 to {MAX_TAG}")))?;
        let kind = match Kind::of(type_name) {
            Some(kind) => kind,
            None => match message
                .nested
                .get(type_name)
                .copied()
                .or_else(|| roots.get(type_name).copied())
            {
                Some(index) => Kind::Message(index),
                None => {
                    return Err(bad(format!(
                        "unknown type {type_name:?} (pomelo-protobuf has uInt32, sInt32, int32, \
                         float, double, string and messages)"
                    )))
                }
            },
        };
        if let Some(other) = fields.iter().find(|f| f.tag == tag || f.name == name) {
            return Err(bad(format!("tag or name already used by {}", other.name)));
        }
        fields.push(Field {
            name: name.to_string(),
            rule,
            kind,
            tag,
        });
    }
    fields.sort_by_key(|f| f.tag);
    Ok(Message { fields })
}

/// A checked description in pomelo-protobuf's parsed form: each field as
/// `{option, type, tag}`, nested messages under `__messages`, names by tag
/// under `__tags`.
fn parsed_form(entries: &Map<String, Value>) -> Value {
    let mut out = Map::new();
    let mut messages = Map::new();
    let mut tags = Map::new();
    for (key, value) in entries {
        if let Some(name) = key.strip_prefix("message ") {
            let nested = value.as_object().expect("checked by collect");
            messages.insert(name.to_string(), parsed_form(nested));
            continue;
        }
        let words: Vec<&str> = key.split(' ').collect();
        if let [rule, type_name, name] = words[..] {
            out.insert(
                name.to_string(),
                json!({ "option": rule, "type": type_name, "tag": value }),
            );
            tags.insert(value.to_string(), Value::String(name.to_string()));
        }
    }
    out.insert("__messages".into(), Value::Object(messages));
    out.insert("__tags".into(), Value::Object(tags));
    Value::Object(out)
}

/// Where in a body the codec is, for errors: `path[2].x`.
#[derive(Default)]
struct Path {
    parts: Vec<String>,
    depth: usize,
}

impl Path {
    fn push(&mut self, name: &str) {
        self.parts.push(name.to_string());
    }
    fn pop(&mut self) {
        self.parts.pop();
    }
    fn index(&mut self, i: usize) {
        if let Some(last) = self.parts.last_mut() {
            last.push_str(&format!("[{i}]"));
        }
    }
    fn unindex(&mut self) {
        if let Some(last) = self.parts.last_mut() {
            if let Some(open) = last.rfind('[') {
                last.truncate(open);
            }
        }
    }
    fn wrong(&self, expected: &'static str) -> ProtoError {
        ProtoError::WrongType {
            field: self.to_string(),
            expected,
        }
    }
}

impl std::fmt::Display for Path {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.parts.join("."))
    }
}

/// A JSON integer, or a float with no fraction (as JavaScript has them).
fn integer(value: &Value) -> Option<i64> {
    value.as_i64().or_else(|| {
        let f = value.as_f64()?;
        (f.fract() == 0.0 && f.abs() <= 9_007_199_254_740_992.0).then_some(f as i64)
    })
}

fn finite(n: f64, at: &Path) -> Result<Value, ProtoError> {
    Number::from_f64(n)
        .map(Value::Number)
        .ok_or_else(|| ProtoError::NotFinite(at.to_string()))
}

fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn get_varint(bytes: &[u8], pos: &mut usize) -> Result<u64, ProtoError> {
    let mut n: u64 = 0;
    for shift in (0..70).step_by(7) {
        let b = *bytes.get(*pos).ok_or(ProtoError::Truncated)?;
        *pos += 1;
        if shift == 63 && b > 1 {
            return Err(ProtoError::BadVarint);
        }
        n |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Ok(n);
        }
    }
    Err(ProtoError::BadVarint)
}

fn get_len(bytes: &[u8], pos: &mut usize) -> Result<usize, ProtoError> {
    usize::try_from(get_varint(bytes, pos)?).map_err(|_| ProtoError::Truncated)
}

fn take<'a>(bytes: &'a [u8], pos: &mut usize, len: usize) -> Result<&'a [u8], ProtoError> {
    let end = pos.checked_add(len).ok_or(ProtoError::Truncated)?;
    let raw = bytes.get(*pos..end).ok_or(ProtoError::Truncated)?;
    *pos = end;
    Ok(raw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Every type, nesting, a root message and a recursive one.
    fn schema() -> Schema {
        Schema::from_json(&json!({
            "message Point": { "required sInt32 x": 1, "required sInt32 y": 2 },
            "message Tree": { "optional string label": 1, "repeated Tree children": 2 },
            "everything": {
                "required uInt32 id": 1,
                "optional int32 delta": 2,
                "optional float speed": 3,
                "optional double weight": 4,
                "optional string name": 5,
                "repeated Point path": 6,
                "repeated uInt32 counts": 7,
                "repeated double scores": 8,
                "repeated string tags": 9,
                "message Bag": {
                    "message Item": { "required uInt32 id": 1, "optional string kind": 2 },
                    "repeated Item items": 1
                },
                "optional Bag bag": 10,
                "optional Tree tree": 11,
                "repeated float floats": 12
            }
        }))
        .expect("valid protos")
    }

    #[test]
    fn bytes_are_pomelo_protobufs() {
        let s = schema();
        // Checked against pomelo-protobuf 0.4.0's encoder (tests/node does
        // the same for the chat protos at run time).
        let bytes = s
            .encode(
                "everything",
                &json!({ "id": 300, "delta": -2, "counts": [1, 2], "tags": ["a", "b"], "path": [{ "x": 1, "y": -1 }] }),
            )
            .expect("encodes");
        assert_eq!(
            bytes,
            [
                0x08, 0xac, 0x02, // id 300
                0x10, 0x03, // delta -2, zig-zag
                0x32, 0x04, 0x08, 0x02, 0x10, 0x01, // path[0]
                0x38, 0x02, 0x01, 0x02, // counts: tag, count 2, values
                0x4a, 0x01, b'a', 0x4a, 0x01, b'b', // tags, one field each
            ]
        );
        // The browser client's wire type 2 on varints decodes the same.
        assert_eq!(
            s.decode("everything", &[0x0a, 0xac, 0x02])
                .expect("decodes"),
            json!({ "id": 300 })
        );
    }

    #[test]
    fn bodies_that_do_not_fit_are_typed_errors() {
        let s = schema();
        let enc = |v: Value| s.encode("everything", &v).expect_err("refused");
        assert_eq!(enc(json!({})), ProtoError::Missing("id".into()));
        assert_eq!(
            enc(json!({ "id": -1 })),
            ProtoError::WrongType {
                field: "id".into(),
                expected: "an integer from 0 to 4294967295"
            }
        );
        assert!(matches!(
            enc(json!({ "id": 1, "path": [{ "x": 1, "y": "north" }] })),
            ProtoError::WrongType { field, .. } if field == "path[0].y"
        ));
        assert!(matches!(
            enc(json!({ "id": 1, "tags": "a" })),
            ProtoError::WrongType { .. }
        ));
        assert_eq!(
            s.encode("nope", &json!({})),
            Err(ProtoError::NoProto("nope".into()))
        );
        // Lenient: what fits goes out.
        let partial = s
            .encode_lenient("everything", &json!({ "name": "x", "delta": "bad" }))
            .expect("lenient");
        assert_eq!(
            s.decode("everything", &[&[0x08, 0x00][..], &partial].concat())
                .expect("decodes"),
            json!({ "id": 0, "name": "x" })
        );
        let dec = |b: &[u8]| s.decode("everything", b).expect_err("refused");
        assert_eq!(dec(&[0x08]), ProtoError::Truncated);
        assert_eq!(dec(&[0x10, 0x02]), ProtoError::Missing("id".into()));
        assert_eq!(
            dec(&[0x08, 0x01, 0xf8, 0x01, 0x00]),
            ProtoError::UnknownTag(31)
        );
        assert_eq!(
            dec(&[0x08, 0x01, 0x2a, 0x01, 0xff]),
            ProtoError::NotUtf8("name".into())
        );
        assert_eq!(
            dec(&[0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]),
            ProtoError::BadVarint
        );
        assert_eq!(
            dec(&[0x08, 0x01, 0x1d, 0x00, 0x00, 0xc0, 0x7f]),
            ProtoError::NotFinite("speed".into())
        );
        // A hostile count runs out of bytes, it does not allocate.
        assert_eq!(
            dec(&[0x08, 0x01, 0x38, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x01]),
            ProtoError::Truncated
        );
    }

    #[test]
    fn deep_nesting_is_refused_both_ways() {
        let s = schema();
        let mut tree = json!({});
        for _ in 0..MAX_DEPTH + 1 {
            tree = json!({ "children": [tree] });
        }
        let body = json!({ "id": 1, "tree": tree });
        assert_eq!(s.encode("everything", &body), Err(ProtoError::TooDeep));
        assert_eq!(
            s.encode_lenient("everything", &body),
            Err(ProtoError::TooDeep)
        );
        // The same nesting, as bytes.
        let mut inner: Vec<u8> = Vec::new();
        for _ in 0..MAX_DEPTH + 1 {
            let mut outer = vec![0x12];
            put_varint(&mut outer, inner.len() as u64);
            outer.extend_from_slice(&inner);
            inner = outer;
        }
        let mut bytes = vec![0x08, 0x01, 0x5a];
        put_varint(&mut bytes, inner.len() as u64);
        bytes.extend_from_slice(&inner);
        assert_eq!(s.decode("everything", &bytes), Err(ProtoError::TooDeep));
    }

    #[test]
    fn descriptions_pomelo_protobuf_would_half_ignore_are_refused() {
        for bad in [
            json!({ "r": { "required uInt64 n": 1 } }),
            json!({ "r": { "required Nope n": 1 } }),
            json!({ "r": { "needed uInt32 n": 1 } }),
            json!({ "r": { "required uInt32": 1 } }),
            json!({ "r": { "required uInt32 a": 1, "optional string b": 1 } }),
            json!({ "r": { "required uInt32 a": 0 } }),
            json!({ "r": { "message In": 3 } }),
            json!({ "r": 1 }),
            json!([]),
        ] {
            assert!(
                matches!(Schema::from_json(&bad), Err(ProtoError::Schema { .. })),
                "{bad}"
            );
        }
        // A type nested in the parent is not in scope (pomelo-protobuf
        // looks in the message itself, then at the root).
        let scoped = json!({ "r": { "message A": { "required uInt32 n": 1 }, "message B": { "required A a": 1 }, "required B b": 1 } });
        assert!(Schema::from_json(&scoped).is_err());
    }

    #[test]
    fn the_parsed_form_is_pomelo_protobufs() {
        let s = Schema::from_json(&json!({
            "onMove": { "required uInt32 entityId": 1, "message Path": { "required double x": 1 }, "repeated Path path": 2 }
        }))
        .expect("valid");
        assert_eq!(
            s.parsed(),
            &json!({ "onMove": {
                "entityId": { "option": "required", "type": "uInt32", "tag": 1 },
                "path": { "option": "repeated", "type": "Path", "tag": 2 },
                "__messages": { "Path": {
                    "x": { "option": "required", "type": "double", "tag": 1 },
                    "__messages": {}, "__tags": { "1": "x" }
                } },
                "__tags": { "1": "entityId", "2": "path" }
            } })
        );
        let a = Protos::new(s, Schema::from_json(&json!({})).expect("empty"));
        let b = Protos::from_json_text(r#"{"onMove":{"required uInt32 entityId":1}}"#, "{}")
            .expect("valid");
        assert_ne!(a.version(), b.version(), "the version follows the protos");
        assert_eq!(a.handshake_value()["version"], a.version());
    }

    fn point() -> impl Strategy<Value = Value> {
        (any::<i32>(), any::<i32>()).prop_map(|(x, y)| json!({ "x": x, "y": y }))
    }

    fn tree() -> impl Strategy<Value = Value> {
        let leaf = proptest::option::of("[a-z]{0,4}").prop_map(|l| match l {
            Some(l) => json!({ "label": l }),
            None => json!({}),
        });
        leaf.prop_recursive(4, 16, 3, |inner| {
            proptest::collection::vec(inner, 1..3).prop_map(|c| json!({ "children": c }))
        })
    }

    /// Values the protos allow: every field, present or not.
    fn everything() -> impl Strategy<Value = Value> {
        (
            any::<u32>(),
            proptest::option::of(any::<i32>()),
            proptest::option::of(any::<f32>().prop_filter("finite", |f| f.is_finite())),
            proptest::option::of(any::<f64>().prop_filter("finite", |f| f.is_finite())),
            proptest::option::of("\\PC{0,12}"),
            proptest::collection::vec(point(), 0..3),
            proptest::collection::vec(any::<u32>(), 0..4),
            proptest::collection::vec(any::<f64>().prop_filter("finite", |f| f.is_finite()), 0..3),
            proptest::collection::vec("\\PC{0,5}", 0..3),
            proptest::option::of(proptest::collection::vec(
                (any::<u32>(), proptest::option::of("[a-z]{1,3}")),
                0..3,
            )),
            proptest::option::of(tree()),
        )
            .prop_map(
                |(id, delta, speed, weight, name, path, counts, scores, tags, bag, tree)| {
                    let mut v = json!({ "id": id });
                    let mut set = |k: &str, x: Value| {
                        v[k] = x;
                    };
                    if let Some(d) = delta {
                        set("delta", json!(d));
                    }
                    if let Some(s) = speed {
                        set("speed", json!(f64::from(s)));
                    }
                    if let Some(w) = weight {
                        set("weight", json!(w));
                    }
                    if let Some(n) = name {
                        set("name", json!(n));
                    }
                    for (k, x) in [
                        ("path", json!(path)),
                        ("counts", json!(counts)),
                        ("scores", json!(scores)),
                        ("tags", json!(tags)),
                    ] {
                        if x.as_array().is_some_and(|a| !a.is_empty()) {
                            set(k, x);
                        }
                    }
                    if let Some(items) = bag {
                        let items: Vec<Value> = items
                            .into_iter()
                            .map(|(id, kind)| match kind {
                                Some(k) => json!({ "id": id, "kind": k }),
                                None => json!({ "id": id }),
                            })
                            .collect();
                        set(
                            "bag",
                            if items.is_empty() {
                                json!({})
                            } else {
                                json!({ "items": items })
                            },
                        );
                    }
                    if let Some(t) = tree {
                        set("tree", t);
                    }
                    v
                },
            )
    }

    proptest! {
        #[test]
        fn every_value_the_protos_allow_survives_a_round_trip(v in everything()) {
            let s = schema();
            let bytes = s.encode("everything", &v).expect("allowed values encode");
            prop_assert_eq!(s.decode("everything", &bytes).expect("decodes"), v);
        }

        #[test]
        fn arbitrary_bytes_never_panic_and_what_decodes_re_encodes(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let s = schema();
            if let Ok(v) = s.decode("everything", &bytes) {
                let again = s.encode("everything", &v).expect("a decoded body encodes");
                prop_assert_eq!(s.decode("everything", &again).expect("decodes"), v);
            }
        }
    }
}
