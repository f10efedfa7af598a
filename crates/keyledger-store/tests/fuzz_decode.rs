//! Property versions of the `fuzz/` target `decode`: the event decoder and the envelope hash on
//! arbitrary input, and round trips of random valid envelopes (through bytes and through a real
//! log with its audit).

use keyledger_core::event::{Created, Deleted, Expired, Rotated, RotationEnded, Updated};
use keyledger_core::{Event, SecretHash, Timestamp, validate};
use keyledger_store::envelope::{Envelope, encode_replay_row, envelope_hash};
use keyledger_store::log::decode;
use keyledger_store::{AppendRequest, Log, NoProjection, ReplayEvent, SigningKeys, audit};
use proptest::prelude::*;
use serde_json::{Map, Value};
use std::net::{Ipv4Addr, Ipv6Addr};
use uuid::Uuid;

/// 0001-01-01 .. 9999-12-31: what RFC 3339 with four-digit years can carry.
fn timestamp() -> impl Strategy<Value = Timestamp> {
    prop_oneof![
        (-62_135_596_800_000i64..=253_402_300_799_999).prop_map(Timestamp::from_millis),
        (1_700_000_000_000i64..1_900_000_000_000).prop_map(Timestamp::from_millis),
    ]
}

fn hash() -> impl Strategy<Value = SecretHash> {
    any::<[u8; 32]>().prop_map(SecretHash)
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![".{0,16}", "[a-z0-9_-]{1,16}", any::<String>()]
}

/// Addresses and CIDR blocks, normalised as `validate::allowed_ips` stores them.
fn ip_strings() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(
        prop_oneof![
            (any::<u32>(), 0u8..=32).prop_map(|(a, p)| format!("{}/{p}", Ipv4Addr::from(a))),
            (any::<u128>(), 0u8..=128).prop_map(|(a, p)| format!("{}/{p}", Ipv6Addr::from(a))),
            any::<u128>().prop_map(|a| Ipv6Addr::from(a).to_string()),
        ],
        0..3,
    )
}

/// JSON as metadata holds it: every number kind, including awkward doubles.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        prop_oneof![
            Just(5e-324),
            Just(1.7976931348623157e308),
            Just(0.1),
            Just(-0.0)
        ]
        .prop_map(Value::from),
        text().prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(text(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn metadata() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::btree_map(text(), json_value(), 0..4).prop_map(|m| m.into_iter().collect())
}

fn created() -> impl Strategy<Value = Event> {
    (
        (
            text(),
            text(),
            prop::option::of(text()),
            prop::option::of(text()),
        ),
        (
            prop::collection::vec(text(), 0..4),
            ip_strings(),
            any::<bool>(),
            prop::option::of(timestamp()),
        ),
        (metadata(), "[a-z0-9]{1,16}", hash()),
    )
        .prop_map(
            |(
                (account, name, owner, role),
                (scopes, allowed_ips, enabled, expires_at),
                (metadata, prefix, secret_hash),
            )| {
                Event::Created(Created {
                    hint: format!("{prefix}_...abcd"),
                    account,
                    name,
                    owner,
                    role,
                    scopes,
                    allowed_ips: validate::allowed_ips(&allowed_ips).unwrap(),
                    enabled,
                    expires_at,
                    metadata,
                    prefix,
                    secret_hash,
                })
            },
        )
}

fn event() -> impl Strategy<Value = Event> {
    let updated = (
        (
            prop::option::of(text()),
            prop::option::of(prop::option::of(text())),
            prop::option::of(prop::option::of(text())),
            prop::option::of(prop::collection::vec(text(), 0..3)),
        ),
        (
            prop::option::of(ip_strings()),
            prop::option::of(any::<bool>()),
            prop::option::of(prop::option::of(timestamp())),
            prop::option::of(metadata()),
        ),
    )
        .prop_map(
            |((name, owner, role, scopes), (allowed_ips, enabled, expires_at, metadata))| {
                Event::Updated(Updated {
                    name,
                    owner,
                    role,
                    scopes,
                    allowed_ips: allowed_ips.map(|ips| validate::allowed_ips(&ips).unwrap()),
                    enabled,
                    expires_at,
                    metadata,
                })
            },
        );
    let rotated = (hash(), hash(), any::<u32>(), prop::option::of(timestamp())).prop_map(
        |(secret_hash, previous_secret_hash, grace_seconds, grace_until)| {
            Event::Rotated(Rotated {
                secret_hash,
                hint: "kl_...wxyz".into(),
                previous_secret_hash,
                grace_seconds,
                grace_until,
            })
        },
    );
    prop_oneof![
        created(),
        updated,
        rotated,
        Just(Event::Deleted(Deleted {})),
        timestamp().prop_map(|expires_at| Event::Expired(Expired { expires_at })),
        hash().prop_map(|secret_hash| Event::RotationEnded(RotationEnded { secret_hash })),
    ]
}

fn envelope() -> impl Strategy<Value = Envelope> {
    (
        (any::<u64>(), any::<u128>(), event(), any::<u32>()),
        (any::<u128>(), text(), any::<u64>(), timestamp()),
        (
            text(),
            "[0-9a-f]{64}",
            "[0-9a-f]{64}",
            "[A-Za-z0-9+/]{86}==",
            "[0-9a-f]{16}",
        ),
    )
        .prop_map(
            |(
                (seq, id, event, schema),
                (key_id, account, version, occurred_at),
                (actor, prev_hash, hash, signature, signer),
            )| Envelope {
                seq,
                id: Uuid::from_u128(id),
                event,
                schema,
                key_id: Uuid::from_u128(key_id),
                account,
                version,
                occurred_at,
                actor,
                prev_hash,
                hash,
                signature,
                signer,
            },
        )
}

/// 2^53: the largest integer below which every integer is exactly a double.
const MAX_SAFE_INTEGER: u64 = 1 << 53;

/// Known limit of the canonical form (RFC 8785 numbers are IEEE doubles): integers above 2^53
/// that differ only beyond a double's precision hash alike. Seqs and versions never get there;
/// a metadata value can, so such a change to a stored event would not break the hash chain.
/// Pinned so that a stricter canonical form or metadata rule is a deliberate change.
#[test]
fn integers_beyond_2_pow_53_share_a_hash() {
    let a = serde_json::json!({"seq": 1, "data": {"metadata": {"n": 9_007_199_254_740_993u64}}});
    let b = serde_json::json!({"seq": 1, "data": {"metadata": {"n": 9_007_199_254_740_992u64}}});
    assert_eq!(envelope_hash(&a).unwrap(), envelope_hash(&b).unwrap());
    let c = serde_json::json!({"seq": 1, "data": {"metadata": {"n": MAX_SAFE_INTEGER - 1}}});
    let d = serde_json::json!({"seq": 1, "data": {"metadata": {"n": MAX_SAFE_INTEGER - 2}}});
    assert_ne!(envelope_hash(&c).unwrap(), envelope_hash(&d).unwrap());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode(&bytes);
    }

    /// Valid envelopes with one byte changed, or cut short: an error or an envelope, no panic.
    #[test]
    fn decoding_damaged_envelopes_never_panics(
        env in envelope(),
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = serde_json::to_vec(&env).unwrap();
        let i = at.index(bytes.len());
        bytes[i] = byte;
        let _ = decode(&bytes);
        let _ = decode(&bytes[..cut.index(bytes.len())]);
    }

    /// Any JSON value (an envelope or not): hashing and decoding it never panic.
    #[test]
    fn hashing_arbitrary_json_never_panics(v in json_value()) {
        let _ = envelope_hash(&v);
        let _ = decode(&serde_json::to_vec(&v).unwrap());
    }

    /// serialize → decode gives the same envelope, and the hash is the same whether computed
    /// before storing, from the stored bytes (as the audit does) or from the decoded envelope.
    /// Only `hash` and `signature` are outside it.
    #[test]
    fn replay_rows_decode_to_the_event_they_were_written_from(env in envelope()) {
        let row = encode_replay_row(env.key_id, env.occurred_at, &env.event).unwrap();
        let back = ReplayEvent::decode_row(env.seq, &row).unwrap();
        prop_assert_eq!(back, ReplayEvent::from(env));
    }

    /// The writer's direct canonical writer hashes exactly as the general one does on the
    /// envelope's JSON (which the audit uses): any difference would break the chain.
    #[test]
    fn chain_hash_equals_the_hash_of_the_envelope_json(env in envelope()) {
        let reference = envelope_hash(&serde_json::to_value(&env).unwrap()).unwrap();
        prop_assert_eq!(env.chain_hash().unwrap(), reference);
    }

    /// The writer's stored JSON is serde_json's, byte for byte: readers, exports and NATS
    /// payloads see the same text as before it was written by hand.
    #[test]
    fn stored_json_equals_serde_json(env in envelope()) {
        prop_assert_eq!(
            String::from_utf8(env.to_json().unwrap()).unwrap(),
            serde_json::to_string(&env).unwrap()
        );
    }

    #[test]
    fn envelopes_round_trip_with_a_stable_hash(env in envelope()) {
        let bytes = serde_json::to_vec(&env).unwrap();
        let back = decode(&bytes).unwrap();
        prop_assert_eq!(&back, &env);
        let before = envelope_hash(&serde_json::to_value(&env).unwrap()).unwrap();
        let stored: Value = serde_json::from_slice(&bytes).unwrap();
        prop_assert_eq!(envelope_hash(&stored).unwrap(), before);
        prop_assert_eq!(envelope_hash(&serde_json::to_value(&back).unwrap()).unwrap(), before);
        let mut resigned = env.clone();
        resigned.hash = "0".repeat(64);
        resigned.signature = String::new();
        prop_assert_eq!(envelope_hash(&serde_json::to_value(&resigned).unwrap()).unwrap(), before);
        // JCS writes numbers as IEEE doubles: above 2^53 neighbouring integers share a form
        // (see `integers_beyond_2_pow_53_share_a_hash`).
        let mut moved = env.clone();
        moved.seq = (moved.seq % MAX_SAFE_INTEGER) + 1;
        prop_assert_ne!(envelope_hash(&serde_json::to_value(&moved).unwrap()).unwrap(), before);
    }
}

proptest! {
    // Each case opens a redb file and commits with fsync: fewer cases.
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Random valid events through a real log: read back equal, and the audit (which hashes the
    /// stored bytes) verifies the chain and every signature.
    #[test]
    fn random_events_survive_the_log_and_its_audit(
        first in created(),
        rest in prop::collection::vec(event().prop_filter("one create per stream", |e| {
            !matches!(e, Event::Created(_))
        }), 0..4),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(
            &dir.path().join("log.redb"),
            SigningKeys::ephemeral([5; 32], Timestamp::from_millis(0)),
        )
        .unwrap();
        let key_id = Uuid::now_v7();
        let events: Vec<Event> = std::iter::once(first).chain(rest).collect();
        let written = log
            .append(
                AppendRequest {
                    key_id,
                    account: "default".into(),
                    expected_version: 0,
                    actor: "fuzz".into(),
                    occurred_at: Timestamp::from_millis(1_800_000_000_000),
                    events: events.iter().map(|e| (Uuid::now_v7(), e.clone())).collect(),
                    idempotency: None,
                },
                &mut NoProjection,
            )
            .unwrap()
            .unwrap();
        let read = log.stream(key_id).unwrap();
        prop_assert_eq!(&read, &written);
        prop_assert_eq!(read.iter().map(|e| e.event.clone()).collect::<Vec<_>>(), events);
        let verifier = log.signing_keys().verifier();
        prop_assert_eq!(audit::verify_log(&log, &verifier, |_| {}), Ok(read.len() as u64));
    }
}
