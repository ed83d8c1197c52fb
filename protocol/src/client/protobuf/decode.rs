//! Bytes to values: fields found by tag alone (clients write other wire
//! types), every length and count checked against what is there.

use super::wire::{get_len, get_varint, take, Path};
use super::{Kind, ProtoError, Rule, Schema, MAX_DEPTH};
use serde_json::{Map, Number, Value};

impl Schema {
    pub(super) fn decode_message(
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

fn finite(n: f64, at: &Path) -> Result<Value, ProtoError> {
    Number::from_f64(n)
        .map(Value::Number)
        .ok_or_else(|| ProtoError::NotFinite(at.to_string()))
}
