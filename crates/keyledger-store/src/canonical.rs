//! RFC 8785 (JSON Canonicalization Scheme) serialization of a `serde_json::Value`.
//!
//! The hash of every event is taken over these bytes, on the writer's hot path. A general JCS
//! crate (`serde_json_canonicalizer`, kept as the reference in the tests) spends most of its
//! time comparing member names through freshly allocated UTF-16 buffers; here names are compared
//! as UTF-16 code units without allocating, strings are escaped by serde_json (whose escaping
//! equals JCS's), safe integers are written directly, and only other numbers go through the
//! reference crate for their ECMAScript form.

use serde_json::Value;

/// Appends the canonical form of `v` to `out`.
pub fn write_canonical(v: &Value, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
    match v {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => {
            const SAFE: u64 = (1 << 53) - 1;
            match (n.as_u64(), n.as_i64()) {
                (Some(u), _) if u <= SAFE => out.extend_from_slice(u.to_string().as_bytes()),
                (_, Some(i)) if i.unsigned_abs() <= SAFE => {
                    out.extend_from_slice(i.to_string().as_bytes())
                }
                _ => out.extend_from_slice(&serde_json_canonicalizer::to_vec(v)?),
            }
        }
        Value::String(s) => serde_json::to_writer(&mut *out, s)?,
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out)?;
            }
            out.push(b']');
        }
        Value::Object(map) => write_object(map, &[], out)?,
    }
    Ok(())
}

/// Appends the canonical form of the object `map` without the members named in `skip`.
pub fn write_object(
    map: &serde_json::Map<String, Value>,
    skip: &[&str],
    out: &mut Vec<u8>,
) -> Result<(), serde_json::Error> {
    let mut members: Vec<(&String, &Value)> = map
        .iter()
        .filter(|(k, _)| !skip.contains(&k.as_str()))
        .collect();
    // Names compare as UTF-16 code units (RFC 8785 §3.2.3), not as UTF-8 bytes.
    members.sort_unstable_by(|a, b| a.0.encode_utf16().cmp(b.0.encode_utf16()));
    out.push(b'{');
    for (i, (name, value)) in members.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        serde_json::to_writer(&mut *out, name)?;
        out.push(b':');
        write_canonical(value, out)?;
    }
    out.push(b'}');
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            prop_oneof![".*", "[\\u{0}-\\u{1f}\"\\\\/a-z\\u{e000}\\u{1f600}]{0,8}"]
                .prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(
                    prop_oneof![".{0,6}", "[a-z\\u{e000}\\u{ff5e}\\u{1f600}]{1,4}"],
                    inner,
                    0..6
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// The fast writer produces exactly the reference crate's bytes.
        #[test]
        fn equals_the_reference_implementation(v in value()) {
            let mut fast = Vec::new();
            write_canonical(&v, &mut fast).unwrap();
            prop_assert_eq!(
                String::from_utf8(fast).unwrap(),
                String::from_utf8(serde_json_canonicalizer::to_vec(&v).unwrap()).unwrap()
            );
        }
    }

    #[test]
    fn names_sort_by_utf16_code_units() {
        // U+E000 sorts after U+1F600 in UTF-8 but before it in UTF-16 (surrogates D800..DFFF).
        let v = serde_json::json!({"\u{e000}": 1, "\u{1f600}": 2});
        let mut out = Vec::new();
        write_canonical(&v, &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"\u{1f600}\":2,\"\u{e000}\":1}"
        );
    }
}
