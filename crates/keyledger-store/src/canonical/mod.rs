//! RFC 8785 (JSON Canonicalization Scheme) serialization of a `serde_json::Value`
//! ([`write_canonical`]), or straight from a `Serialize` value ([`write_serialize`]).
//!
//! The hash of every event is taken over these bytes, on the writer's hot path. A general JCS
//! crate (`serde_json_canonicalizer`, kept as the reference in the tests) spends most of its
//! time comparing member names through freshly allocated UTF-16 buffers; here names are compared
//! byte-wise with the one correction UTF-16 order needs, strings are copied or (when they need
//! it) escaped by serde_json, whose escaping equals JCS's, safe integers are written directly,
//! and only other numbers go through the reference crate for their ECMAScript form. Both
//! writers share the string and number code.

mod serializer;

pub use serializer::write_serialize;

use serde_json::Value;
use std::cmp::Ordering;

/// RFC 8785 §3.2.3: member names compare as UTF-16 code units. UTF-8 bytes compare as code
/// points, which is the same order but for one case. At the first differing byte both strings
/// are at the same place in a character (all bytes before are equal): two continuation bytes
/// of characters with one lead byte, which order alike either way, or two lead bytes. Among
/// lead bytes, a character of U+E000–U+FFFF (lead 0xEE or 0xEF) sorts after one beyond the
/// BMP (lead 0xF0 and up) in UTF-16, whose surrogates are D800–DFFF.
fn utf16_order(a: &str, b: &str) -> Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let Some(i) = a.iter().zip(b).position(|(x, y)| x != y) else {
        return a.len().cmp(&b.len());
    };
    let high_bmp = |x: u8| x == 0xEE || x == 0xEF;
    let (x, y) = (a[i], b[i]);
    if (high_bmp(x) && y >= 0xF0) || (x >= 0xF0 && high_bmp(y)) {
        y.cmp(&x)
    } else {
        x.cmp(&y)
    }
}

/// Appends `s` as a JSON string. serde_json's escaping of a string is its canonical form. Most
/// strings here (ids, hashes, timestamps, names) have nothing to escape and are copied as they
/// are; the check folds 16 bytes at a time without a branch per byte, so that the compiler can
/// use vector compares.
fn write_str(s: &str, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
    let escaped = |b: u8| (b < 0x20) | (b == b'"') | (b == b'\\');
    let mut chunks = s.as_bytes().chunks_exact(16);
    let plain = chunks
        .by_ref()
        .all(|chunk| !chunk.iter().fold(false, |any, &b| any | escaped(b)))
        && !chunks.remainder().iter().any(|&b| escaped(b));
    if !plain {
        return serde_json::to_writer(out, s);
    }
    out.reserve(s.len() + 2);
    out.push(b'"');
    out.extend_from_slice(s.as_bytes());
    out.push(b'"');
    Ok(())
}

/// Appends the canonical form of `v` to `out`.
pub fn write_canonical(v: &Value, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
    match v {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => {
            use std::io::Write as _;
            const SAFE: u64 = (1 << 53) - 1;
            match (n.as_u64(), n.as_i64()) {
                (Some(u), _) if u <= SAFE => write!(out, "{u}").map_err(serde_json::Error::io)?,
                (_, Some(i)) if i.unsigned_abs() <= SAFE => {
                    write!(out, "{i}").map_err(serde_json::Error::io)?
                }
                _ => out.extend_from_slice(&serde_json_canonicalizer::to_vec(v)?),
            }
        }
        Value::String(s) => write_str(s, out)?,
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
    members.sort_unstable_by(|a, b| utf16_order(a.0, b.0));
    out.push(b'{');
    for (i, (name, value)) in members.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(name, out)?;
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

        /// The byte-wise comparison orders names as their UTF-16 code units do.
        #[test]
        fn names_order_as_utf16_code_units(
            a in "[a-z\\u{7f}-\\u{800}\\u{d7ff}\\u{e000}-\\u{e002}\\u{fffd}\\u{10000}\\u{1f600}]{0,4}",
            b in "[a-z\\u{7f}-\\u{800}\\u{d7ff}\\u{e000}-\\u{e002}\\u{fffd}\\u{10000}\\u{1f600}]{0,4}",
        ) {
            prop_assert_eq!(utf16_order(&a, &b), a.encode_utf16().cmp(b.encode_utf16()));
        }

        /// Straight from `Serialize`, the bytes are those of the tree's.
        #[test]
        fn serializing_directly_equals_writing_the_tree(v in value()) {
            let (mut tree, mut direct) = (Vec::new(), Vec::new());
            write_canonical(&v, &mut tree).unwrap();
            write_serialize(&v, &mut direct).unwrap();
            prop_assert_eq!(String::from_utf8(direct).unwrap(), String::from_utf8(tree).unwrap());
        }

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
