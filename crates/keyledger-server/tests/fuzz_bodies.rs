//! Property versions of the `fuzz/` target `bodies`: arbitrary request bodies go through the same
//! deserialization as `extract::JsonBody` (`serde_json` + `serde_path_to_error`), and whatever
//! parses goes on through the domain validation (`keyledger_core::decide`) the service would run.
//! Nothing may panic, errors must be the documented 400s, and no event may hold a plaintext
//! secret.

use keyledger_core::event::Event;
use keyledger_core::{Action, Command, KeyPatch, NewKey, Secret, Timestamp};
use keyledger_core::{decide, evolve, secret::check_format, validate};
use keyledger_server::dto::{CreateKeyRequest, ResetKeyRequest, UpdateKeyRequest, VerifyRequest};
use proptest::prelude::*;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};
use uuid::Uuid;

const NOW: Timestamp = Timestamp::from_millis(1_800_000_000_000);

/// The server's own body parser; returns the error code and message it would answer with.
fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, (&'static str, String)> {
    keyledger_server::extract::parse_body(bytes).map_err(|e| (e.code, e.message))
}

/// A key as the writer would hold it, for updates and resets to act on.
fn existing_key() -> keyledger_core::KeyState {
    let secret = Secret::generate("kl", &[1; 32]);
    let cmd = Command {
        now: Timestamp::from_millis(NOW.millis() - 60_000),
        if_version: None,
        action: Action::Create(NewKey {
            name: "existing".into(),
            account: "default".into(),
            owner: Some("ops".into()),
            role: None,
            scopes: vec!["keys:read".into()],
            allowed_ips: vec!["10.0.0.0/8".into()],
            enabled: true,
            expires_at: None,
            metadata: Some(json!({"team": "a"})),
            prefix: "kl".into(),
            credential: secret.credential(),
        }),
    };
    let events = decide(None, &cmd).expect("a valid create");
    evolve(None, Uuid::now_v7(), cmd.now, &events[0])
}

/// Every event `decide` returns survives the log's JSON round trip and holds no plaintext.
fn check_events(events: &[Event], secret: &Secret) -> Result<(), TestCaseError> {
    for e in events {
        let text = serde_json::to_string(e).expect("events serialize");
        prop_assert!(
            !text.contains(secret.expose()),
            "plaintext secret in {}",
            text
        );
        let back: Event = serde_json::from_str(&text).expect("events deserialize");
        prop_assert_eq!(&back, e);
    }
    Ok(())
}

/// Runs a parsed create through the service's defaults and `decide`.
fn run_create(req: CreateKeyRequest, random: [u8; 32]) -> Result<(), TestCaseError> {
    // As the service does: a bad prefix is refused before a secret is generated.
    let input = keyledger_service::CreateKey::from(req);
    let Ok(prefix) = input.prefix() else {
        return Ok(());
    };
    let secret = Secret::generate(&prefix, &random);
    let account = input.account.clone().unwrap_or_else(|| "default".into());
    let cmd = Command {
        now: NOW,
        if_version: None,
        action: Action::Create(input.into_new_key(account, &secret)),
    };
    if let Ok(events) = decide(None, &cmd) {
        prop_assert_eq!(events.len(), 1);
        check_events(&events, &secret)?;
        let state = evolve(None, Uuid::now_v7(), NOW, &events[0]);
        prop_assert_eq!(state.secret_hash, secret.hash());
        prop_assert_eq!(&state.hint, &secret.hint());
        prop_assert!(validate::name(&state.name).is_ok());
        prop_assert!(validate::account(&state.account).is_ok());
        prop_assert!(state.scopes.len() <= validate::MAX_SCOPES);
        let state_json = serde_json::to_string(&state).expect("state serializes");
        prop_assert!(!state_json.contains(secret.expose()));
    }
    Ok(())
}

fn run_update(req: UpdateKeyRequest) -> Result<(), TestCaseError> {
    let state = existing_key();
    let cmd = Command {
        now: NOW,
        if_version: Some(state.version),
        action: Action::Update(KeyPatch::from(req)), // as `handlers::update_key`
    };
    if let Ok(events) = decide(Some(&state), &cmd) {
        prop_assert!(events.len() <= 1);
        check_events(&events, &Secret::generate("kl", &[1; 32]))?;
        let mut s = state.clone();
        for e in &events {
            s = evolve(Some(s), state.id, NOW, e);
        }
        prop_assert_eq!(s.version, state.version + events.len() as u64);
    }
    Ok(())
}

fn run_reset(req: ResetKeyRequest, random: [u8; 32]) -> Result<(), TestCaseError> {
    let state = existing_key();
    let secret = Secret::generate("kl", &random);
    let cmd = Command {
        now: NOW,
        if_version: None,
        action: Action::Reset {
            credential: secret.credential(),
            grace_seconds: req.grace_seconds,
        },
    };
    let r = decide(Some(&state), &cmd);
    prop_assert_eq!(r.is_ok(), req.grace_seconds <= validate::MAX_GRACE_SECONDS);
    if let Ok(events) = r {
        check_events(&events, &secret)?;
    }
    Ok(())
}

fn run_verify(req: VerifyRequest) {
    let _ = check_format(&req.key);
    if let Some(ip) = req.ip {
        let _ = ip.parse::<std::net::IpAddr>();
    }
}

/// Every body, parsed as every request type; what parses runs on.
fn run_all(bytes: &[u8], random: [u8; 32]) -> Result<(), TestCaseError> {
    fn check<T>(r: &Result<T, (&'static str, String)>) -> Result<(), TestCaseError> {
        if let Err((code, message)) = r {
            prop_assert!(matches!(*code, "invalid_json" | "validation_failed"));
            prop_assert!(!message.is_empty());
        }
        Ok(())
    }
    let create = parse::<CreateKeyRequest>(bytes);
    check(&create)?;
    if let Ok(req) = create {
        run_create(req, random)?;
    }
    let update = parse::<UpdateKeyRequest>(bytes);
    check(&update)?;
    if let Ok(req) = update {
        run_update(req)?;
    }
    let reset = parse::<ResetKeyRequest>(bytes);
    check(&reset)?;
    if let Ok(req) = reset {
        run_reset(req, random)?;
    }
    let verify = parse::<VerifyRequest>(bytes);
    check(&verify)?;
    if let Ok(req) = verify {
        run_verify(req);
    }
    Ok(())
}

const FIELDS: &[&str] = &[
    "name",
    "account",
    "owner",
    "role",
    "scopes",
    "allowed_ips",
    "enabled",
    "expires_at",
    "metadata",
    "prefix",
    "grace_seconds",
    "key",
    "ip",
];

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        ".{0,12}",
        "[a-z0-9]{1,17}",
        "[A-Za-z0-9_-]{0,66}",
        "keys:(read|write|verify)|admin|events:read",
        "(10|192|::ffff:1)\\.[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}(/[0-9]{1,3})?",
        "(::1|fe80::|2001:db8::)(/[0-9]{1,3})?",
        "20[0-9]{2}-[01][0-9]-[0-3][0-9]T[0-2][0-9]:[0-5][0-9]:[0-6][0-9](\\.[0-9]{1,4})?(Z|[+-][01][0-9]:[0-5][0-9])",
        "[a-z]{1,3}_[0-9A-Za-z]{50}",
        "[ \\t\\n\\u{0}\\u{7f}\\u{85}a]{0,4}",
    ]
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (0u64..700_000).prop_map(Value::from),
        any::<f64>()
            .prop_filter("JSON numbers are finite", |f| f.is_finite())
            .prop_map(Value::from),
        text().prop_map(Value::from),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    prop::sample::select(FIELDS).prop_map(String::from),
                    ".{0,6}"
                ],
                inner,
                0..6,
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Mostly objects with the DTOs' field names, holding values of every type.
fn body() -> impl Strategy<Value = Value> {
    let field_value = prop_oneof![
        3 => leaf(),
        2 => prop::collection::vec(text().prop_map(Value::from), 0..4).prop_map(Value::Array),
        1 => json_value(),
    ];
    prop_oneof![
        6 => prop::collection::btree_map(
            prop::sample::select(FIELDS).prop_map(String::from),
            field_value,
            0..8,
        )
        .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        1 => json_value(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Raw bytes, valid UTF-8 or not: an error or a value, never a panic.
    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..256),
        random in any::<[u8; 32]>(),
    ) {
        run_all(&bytes, random)?;
    }

    /// JSON-ish text (mostly valid, sometimes truncated): same.
    #[test]
    fn truncated_json_never_panics(body in body(), cut in any::<prop::sample::Index>()) {
        let text = serde_json::to_vec(&body).unwrap();
        let end = cut.index(text.len() + 1);
        run_all(&text[..end], [7; 32])?;
    }

    /// Valid JSON is never answered `invalid_json`, and the domain's checks (lengths, accounts,
    /// IPs, timestamps, metadata) run on whatever parses, without a panic or a leaked secret.
    #[test]
    fn arbitrary_json_bodies_parse_or_fail_cleanly(body in body(), random in any::<[u8; 32]>()) {
        let bytes = serde_json::to_vec(&body).unwrap();
        for r in [
            parse::<CreateKeyRequest>(&bytes).err(),
            parse::<UpdateKeyRequest>(&bytes).err(),
            parse::<ResetKeyRequest>(&bytes).err(),
            parse::<VerifyRequest>(&bytes).err(),
        ].into_iter().flatten() {
            prop_assert_eq!(r.0, "validation_failed", "{}", r.1);
        }
        run_all(&bytes, random)?;
    }
}

/// Deep nesting stops at serde_json's recursion limit with a clean error.
#[test]
fn deeply_nested_metadata_is_refused_cleanly() {
    let depth = 10_000;
    let body = format!(
        r#"{{"name":"n","metadata":{}{}}}"#,
        "[".repeat(depth),
        "]".repeat(depth)
    );
    let r = parse::<CreateKeyRequest>(body.as_bytes());
    assert!(r.is_err());
}

/// Bodies are JSON objects: an array (which serde would map onto a struct by position) or a
/// scalar is `validation_failed`, not silently accepted nor mistaken for a syntax error.
#[test]
fn a_body_that_is_not_an_object_is_refused() {
    for body in [
        &br#"["kl_x", [], null]"#[..],
        b"[0, null]",
        b"42",
        b"\"x\"",
        b"null",
    ] {
        let r = parse::<VerifyRequest>(body).err();
        assert_eq!(
            r,
            Some((
                "validation_failed",
                "body: must be a JSON object".to_string()
            ))
        );
    }
    let r = parse::<ResetKeyRequest>(b"[0,").err().map(|e| e.0);
    assert_eq!(r, Some("invalid_json"));
}
