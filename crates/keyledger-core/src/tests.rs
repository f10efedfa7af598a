//! Given/when/then tests at the aggregate boundary.

use super::*;
use crate::validate::DEFAULT_ACCOUNT;

const T0: Timestamp = Timestamp(1_800_000_000_000);

fn id() -> Uuid {
    Uuid::from_u128(42)
}

fn credential(n: u8) -> Credential {
    Secret::generate("kl", &[n; 32]).credential()
}

fn new_key() -> NewKey {
    NewKey {
        name: "ci deploy".into(),
        account: DEFAULT_ACCOUNT.into(),
        owner: None,
        role: None,
        scopes: vec!["keys:read".into()],
        allowed_ips: vec![],
        enabled: true,
        expires_at: None,
        metadata: None,
        prefix: "kl".into(),
        credential: credential(1),
    }
}

fn cmd(now: Timestamp, action: Action) -> Command {
    Command {
        now,
        if_version: None,
        action,
    }
}

/// Given `history` (applied in order at T0), when `command`, then the events or error.
fn given(history: &[Action]) -> Option<KeyState> {
    let mut state = None;
    for action in history {
        let events = decide(state.as_ref(), &cmd(T0, action.clone())).expect("history decides");
        for e in &events {
            state = Some(evolve(state, id(), T0, e));
        }
    }
    state
}

fn when(
    state: &Option<KeyState>,
    now: Timestamp,
    action: Action,
) -> Result<Vec<Event>, DomainError> {
    decide(state.as_ref(), &cmd(now, action))
}

#[test]
fn create_on_empty_stream_emits_created_with_hash_not_plaintext() {
    let events = when(&None, T0, Action::Create(new_key())).unwrap();
    assert_eq!(events.len(), 1);
    let Event::Created(c) = &events[0] else {
        panic!()
    };
    assert_eq!(c.secret_hash, credential(1).secret_hash);
    let json = serde_json::to_string(&events[0]).unwrap();
    assert!(!json.contains(Secret::generate("kl", &[1; 32]).expose()));
}

#[test]
fn a_scope_is_measured_in_characters_as_names_are() {
    let ok = crate::validate::scopes(&["é".repeat(128)]).unwrap();
    assert_eq!(ok[0].chars().count(), 128);
    assert_eq!(
        crate::validate::scopes(&["é".repeat(129)])
            .unwrap_err()
            .to_string(),
        "scopes[0]: 1 to 128 characters"
    );
}

/// The limits count entries as sent, as the OpenAPI document's `maxItems` does, and say so:
/// 100 distinct scopes and a duplicate are 101.
#[test]
fn the_scope_and_ip_limits_count_duplicates_and_say_so() {
    use crate::validate::{allowed_ips, scopes};
    let mut many: Vec<String> = (0..100).map(|i| format!("s{i}")).collect();
    assert_eq!(scopes(&many).unwrap().len(), 100);
    many.push("s7".into());
    assert_eq!(
        scopes(&many).unwrap_err().to_string(),
        "scopes: at most 100 scopes, duplicates included"
    );
    let mut ips: Vec<String> = (0..100).map(|i| format!("10.0.0.{i}")).collect();
    assert_eq!(allowed_ips(&ips).unwrap().len(), 100);
    ips.push("10.0.0.7/32".into());
    assert_eq!(
        allowed_ips(&ips).unwrap_err().to_string(),
        "allowed_ips: at most 100 entries, duplicates included"
    );
}

#[test]
fn a_name_of_invisible_characters_only_is_empty_but_one_with_a_joiner_inside_is_kept() {
    use crate::validate::{name, owner};
    for blank in [
        "\u{200b}",
        " \u{200b}\u{feff} ",
        "\u{2060}\u{3164}",
        "\u{00ad}\t",
    ] {
        assert_eq!(
            name(blank).unwrap_err().to_string(),
            "name: must not be empty",
            "{blank:?}"
        );
        assert!(owner(Some(blank)).is_err(), "{blank:?}");
    }
    for kept in ["a\u{200b}b", "\u{200d}x", "👩\u{200d}💻"] {
        assert!(name(kept).is_ok(), "{kept:?}");
    }
}

/// A metadata object `levels` deep, itself the first level.
fn nested(levels: usize) -> serde_json::Value {
    (1..levels).fold(
        serde_json::json!({"leaf": 1}),
        |inner, _| serde_json::json!({"a": inner}),
    )
}

#[test]
fn metadata_nested_to_the_limit_is_kept_and_its_event_reads_back() {
    let mut k = new_key();
    k.metadata = Some(nested(32));
    let events = when(&None, T0, Action::Create(k)).unwrap();
    // The events as JSON read back (that stored envelopes, a few levels deeper, stay readable
    // is pinned end to end in the e2e keys tests).
    let stored = serde_json::to_string(&events).unwrap();
    let back: Vec<Event> = serde_json::from_str(&stored).unwrap();
    assert_eq!(back, events);
}

#[test]
fn create_on_existing_stream_is_refused() {
    let state = given(&[Action::Create(new_key())]);
    assert_eq!(
        when(&state, T0, Action::Create(new_key())),
        Err(DomainError::AlreadyExists)
    );
}

#[test]
fn create_validates_fields_and_names_them() {
    type Mutation = Box<dyn Fn(&mut NewKey)>;
    let cases: Vec<(Mutation, &str)> = vec![
        (
            Box::new(|k| k.name = "x".repeat(256)),
            "name: at most 255 characters",
        ),
        (
            Box::new(|k| k.name = "  ".into()),
            "name: must not be empty",
        ),
        (
            Box::new(|k| k.account = "a b".into()),
            "account: must match [A-Za-z0-9_-]{1,64}",
        ),
        (
            Box::new(|k| k.prefix = "KL".into()),
            "prefix: must match [a-z0-9]{1,16}",
        ),
        (
            Box::new(|k| k.allowed_ips = vec!["10.0.0.0/8".into(), "nope".into()]),
            "allowed_ips[1]: not an IP address or CIDR block",
        ),
        (
            Box::new(|k| k.scopes = vec!["a b".into()]),
            "scopes[0]: must not contain whitespace or invisible characters",
        ),
        (
            Box::new(|k| k.scopes = vec!["keys:read".into(), "admin\u{200b}".into()]),
            "scopes[1]: must not contain whitespace or invisible characters",
        ),
        (
            Box::new(|k| k.expires_at = Some(T0)),
            "expires_at: must lie in the future",
        ),
        (
            Box::new(|k| k.metadata = Some(serde_json::json!([1]))),
            "metadata: must be a JSON object",
        ),
        (
            Box::new(|k| k.metadata = Some(serde_json::json!({"x": "y".repeat(9000)}))),
            "metadata: at most 8192 bytes as JSON",
        ),
        (
            Box::new(|k| k.name = "a\u{2028}b".into()),
            "name: must not contain control characters or line breaks",
        ),
        (
            Box::new(|k| k.role = Some("own\u{200b}er".into())),
            "role: must not contain invisible characters",
        ),
        (
            Box::new(|k| k.owner = Some("cus_\u{2800}42".into())),
            "owner: must not contain invisible characters",
        ),
        (
            Box::new(|k| k.scopes = vec!["admin\u{2800}".into()]),
            "scopes[0]: must not contain whitespace or invisible characters",
        ),
        (
            Box::new(|k| k.metadata = Some(nested(33))),
            "metadata: at most 32 levels of nesting",
        ),
    ];
    for (mutate, message) in cases {
        let mut k = new_key();
        mutate(&mut k);
        let err = when(&None, T0, Action::Create(k)).unwrap_err();
        assert_eq!(err.to_string(), message);
    }
}

#[test]
fn update_emits_only_changed_fields() {
    let state = given(&[Action::Create(new_key())]);
    let patch = KeyPatch {
        name: Some("ci deploy".into()),
        role: Some(Some("owner".into())),
        enabled: Some(false),
        ..Default::default()
    };
    let events = when(&state, T0, Action::Update(patch)).unwrap();
    assert_eq!(
        events,
        vec![Event::Updated(event::Updated {
            role: Some(Some("owner".into())),
            enabled: Some(false),
            ..Default::default()
        })]
    );
}

#[test]
fn update_that_changes_nothing_emits_nothing() {
    let state = given(&[Action::Create(new_key())]);
    let patch = KeyPatch {
        name: Some("ci deploy".into()),
        ..Default::default()
    };
    assert_eq!(when(&state, T0, Action::Update(patch)), Ok(vec![]));
}

/// Rules tighten between versions, and expiries pass: a key stored under older rules must
/// still take its own values back unchanged (a form that sends every field), while a change
/// to a value the rules now refuse is refused.
#[test]
fn values_the_key_already_has_are_not_validated_again() {
    let mut state = given(&[Action::Create(new_key())]).unwrap();
    state.name = "line\u{2028}break".into();
    state.owner = Some("own\u{200b}er".into());
    state.scopes = vec!["admin\u{2800}".into()];
    state.expires_at = Some(Timestamp(T0.0 - 1));
    state.metadata = nested(40).as_object().unwrap().clone();
    let state = Some(state);
    let as_read = KeyPatch {
        name: state.as_ref().map(|s| s.name.clone()),
        owner: Some(state.as_ref().unwrap().owner.clone()),
        scopes: state.as_ref().map(|s| s.scopes.clone()),
        expires_at: Some(state.as_ref().unwrap().expires_at),
        metadata: Some(nested(40)),
        ..Default::default()
    };
    assert_eq!(when(&state, T0, Action::Update(as_read)), Ok(vec![]));
    let changed = KeyPatch {
        owner: Some(Some("new\u{200b}owner".into())),
        ..Default::default()
    };
    assert_eq!(
        when(&state, T0, Action::Update(changed))
            .unwrap_err()
            .to_string(),
        "owner: must not contain invisible characters"
    );
}

#[test]
fn update_with_stale_version_is_refused() {
    let state = given(&[Action::Create(new_key())]);
    let c = Command {
        now: T0,
        if_version: Some(7),
        action: Action::Update(KeyPatch::default()),
    };
    assert_eq!(
        decide(state.as_ref(), &c),
        Err(DomainError::VersionMismatch {
            expected: 7,
            actual: 1
        })
    );
}

#[test]
fn commands_on_missing_key_are_not_found() {
    assert_eq!(when(&None, T0, Action::Delete), Err(DomainError::NotFound));
}

#[test]
fn writes_to_a_deleted_key_are_refused_but_system_commands_are_moot() {
    let state = given(&[Action::Create(new_key()), Action::Delete]);
    assert_eq!(when(&state, T0, Action::Delete), Err(DomainError::Deleted));
    assert_eq!(
        when(&state, T0, Action::Update(KeyPatch::default())),
        Err(DomainError::Deleted)
    );
    assert_eq!(when(&state, T0, Action::Expire), Ok(vec![]));
}

#[test]
fn reset_with_grace_keeps_previous_secret_until_grace_ends() {
    let state = given(&[Action::Create(new_key())]);
    let events = when(
        &state,
        T0,
        Action::Reset {
            credential: credential(2),
            grace_seconds: 60,
        },
    )
    .unwrap();
    let s = evolve(state, id(), T0, &events[0]);
    assert_eq!(s.secret_hash, credential(2).secret_hash);
    assert_eq!(
        s.previous,
        Some(PreviousSecret {
            secret_hash: credential(1).secret_hash,
            until: T0.plus_seconds(60)
        })
    );
    assert_eq!(s.rotated_at, Some(T0));
    assert_eq!(s.version, 2);
    let state = Some(s);
    assert_eq!(
        when(&state, T0.plus_seconds(59), Action::EndRotation),
        Ok(vec![])
    );
    let ended = when(&state, T0.plus_seconds(60), Action::EndRotation).unwrap();
    assert!(matches!(ended[..], [Event::RotationEnded(_)]));
    assert_eq!(evolve(state, id(), T0, &ended[0]).previous, None);
}

#[test]
fn reset_without_grace_drops_previous_secret_at_once() {
    let state = given(&[
        Action::Create(new_key()),
        Action::Reset {
            credential: credential(2),
            grace_seconds: 0,
        },
    ])
    .unwrap();
    assert_eq!(state.previous, None);
}

#[test]
fn reset_refuses_grace_beyond_a_week() {
    let state = given(&[Action::Create(new_key())]);
    let err = when(
        &state,
        T0,
        Action::Reset {
            credential: credential(2),
            grace_seconds: 604_801,
        },
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "grace_seconds: must be between 0 and 604800"
    );
}

#[test]
fn expire_fires_once_after_expiry() {
    let mut k = new_key();
    k.expires_at = Some(T0.plus_seconds(10));
    let state = given(&[Action::Create(k)]);
    assert_eq!(when(&state, T0, Action::Expire), Ok(vec![]));
    let events = when(&state, T0.plus_seconds(10), Action::Expire).unwrap();
    assert_eq!(events.len(), 1);
    let state = Some(evolve(state, id(), T0, &events[0]));
    assert_eq!(
        when(&state, T0.plus_seconds(20), Action::Expire),
        Ok(vec![])
    );
}

#[test]
fn ip_allow_list_matches_addresses_and_blocks() {
    let mut k = new_key();
    k.allowed_ips = vec![
        "10.1.0.0/16".into(),
        "2001:db8::1".into(),
        "::ffff:192.0.2.0/120".into(),
    ];
    let s = given(&[Action::Create(k)]).unwrap();
    assert!(s.allows_ip(Some("10.1.2.3".parse().unwrap())));
    // An IPv4-mapped block is stored as IPv4 and matches either spelling of a peer.
    assert_eq!(s.allowed_ips[2].to_string(), "192.0.2.0/24");
    assert!(s.allows_ip(Some("192.0.2.7".parse().unwrap())));
    assert!(s.allows_ip(Some("::ffff:192.0.2.7".parse().unwrap())));
    assert!(s.allows_ip(Some("::ffff:10.1.2.3".parse().unwrap())));
    assert!(s.allows_ip(Some("2001:db8::1".parse().unwrap())));
    assert!(!s.allows_ip(Some("10.2.0.1".parse().unwrap())));
    assert!(!s.allows_ip(None));
}

#[test]
fn events_round_trip_through_json() {
    let state = given(&[Action::Create(new_key())]);
    let events = when(
        &state,
        T0,
        Action::Update(KeyPatch {
            owner: Some(None),
            expires_at: Some(Some(T0.plus_seconds(5))),
            ..Default::default()
        }),
    )
    .unwrap();
    for e in events {
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(serde_json::from_value::<Event>(json).unwrap(), e);
    }
}

#[test]
fn canonical_nets_are_truncated_and_ipv4_mapped_ones_become_ipv4() {
    let canon = |s: &str| crate::model::canonical_net(s.parse().unwrap()).to_string();
    assert_eq!(canon("10.1.2.3/8"), "10.0.0.0/8");
    assert_eq!(canon("::ffff:127.0.0.1/128"), "127.0.0.1/32");
    assert_eq!(canon("::ffff:10.9.8.7/104"), "10.0.0.0/8");
    // Wider than the mapped range, or outside it: left as IPv6.
    assert_eq!(canon("::ffff:0:0/95"), "::fffe:0:0/95");
    assert_eq!(canon("2001:db8::7/32"), "2001:db8::/32");
}
