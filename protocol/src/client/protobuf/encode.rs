//! Values to bytes: fields in tag order, pomelo-protobuf's wire types.

use super::wire::{put_varint, Path};
use super::{Field, Kind, ProtoError, Rule, Schema, MAX_DEPTH};
use serde_json::{Map, Value};

impl Schema {
    pub(super) fn encode_message(
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
}

/// A JSON integer, or a float with no fraction (as JavaScript has them).
fn integer(value: &Value) -> Option<i64> {
    value.as_i64().or_else(|| {
        let f = value.as_f64()?;
        (f.fract() == 0.0 && f.abs() <= 9_007_199_254_740_992.0).then_some(f as i64)
    })
}
