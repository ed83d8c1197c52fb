use super::wire::put_varint;
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
