//! A JSON description checked and resolved into messages: every message
//! (routes, roots, nested) gets an index, then each field's type is looked
//! up, in the message itself and then at the root.

use super::{Field, Kind, Message, ProtoError, Rule, Schema, MAX_TAG};
use serde_json::{json, Map, Value};
use std::collections::HashMap;

/// A message's description before its field types are resolved.
struct Pending<'a> {
    at: String,
    entries: &'a Map<String, Value>,
    /// Messages nested directly in it, by name.
    nested: HashMap<&'a str, usize>,
}

/// Loads a description (a `serverProtos.json` or `clientProtos.json`).
pub(super) fn load(description: &Value) -> Result<Schema, ProtoError> {
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
