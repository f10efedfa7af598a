//! Request bodies: arbitrary bytes through the server's own body parser
//! (`keyledger_server::extract::parse_body`), and every body that parses
//! on through the domain validation the service runs (`keyledger_core::decide`). Never panics;
//! no event holds the plaintext secret.
#![no_main]

use keyledger_core::{Action, Command, KeyPatch, NewKey, Secret, Timestamp};
use keyledger_core::{decide, evolve, secret::check_format, validate};
use keyledger_server::dto::{CreateKeyRequest, ResetKeyRequest, UpdateKeyRequest, VerifyRequest};
use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;

const NOW: Timestamp = Timestamp::from_millis(1_800_000_000_000);

fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Option<T> {
    // The server's own parser; its error must format without panicking.
    keyledger_server::extract::parse_body(bytes)
        .map_err(|e| format!("{}: {}", e.code, e.message))
        .ok()
}


fn no_plaintext(events: &[keyledger_core::Event], secret: &Secret) {
    for e in events {
        let text = serde_json::to_string(e).expect("events serialize");
        assert!(
            !text.contains(secret.expose()),
            "plaintext secret in an event"
        );
    }
}

fn existing() -> keyledger_core::KeyState {
    let secret = Secret::generate("kl", &[1; 32]);
    let cmd = Command {
        now: Timestamp::from_millis(NOW.millis() - 60_000),
        if_version: None,
        action: Action::Create(NewKey {
            name: "existing".into(),
            account: "default".into(),
            owner: None,
            role: None,
            scopes: vec!["keys:read".into()],
            allowed_ips: vec![],
            enabled: true,
            expires_at: None,
            metadata: None,
            prefix: "kl".into(),
            credential: secret.credential(),
        }),
    };
    let events = decide(None, &cmd).expect("a valid create");
    evolve(None, uuid::Uuid::nil(), cmd.now, &events[0])
}

fuzz_target!(|data: &[u8]| {
    let random = [data.len() as u8; 32];
    if let Some(req) = parse::<CreateKeyRequest>(data) {
        let input = keyledger_service::CreateKey::from(req);
        if let Ok(prefix) = input.prefix() {
            let secret = Secret::generate(&prefix, &random);
            let account = input.account.clone().unwrap_or_else(|| "default".into());
            let cmd = Command {
                now: NOW,
                if_version: None,
                action: Action::Create(input.into_new_key(account, &secret)),
            };
            if let Ok(events) = decide(None, &cmd) {
                assert_eq!(events.len(), 1);
                no_plaintext(&events, &secret);
                let state = evolve(None, uuid::Uuid::nil(), NOW, &events[0]);
                // The stored event must decode to the state it produced.
                let text = serde_json::to_string(&events[0]).unwrap();
                let back: keyledger_core::Event = serde_json::from_str(&text).unwrap();
                assert_eq!(evolve(None, uuid::Uuid::nil(), NOW, &back), state);
            }
        }
    }
    if let Some(req) = parse::<UpdateKeyRequest>(data) {
        let state = existing();
        let cmd = Command {
            now: NOW,
            if_version: Some(1),
            action: Action::Update(KeyPatch::from(req)), // as `handlers::update_key`
        };
        if let Ok(events) = decide(Some(&state), &cmd) {
            let mut s = state.clone();
            for e in &events {
                s = evolve(Some(s), state.id, NOW, e);
                let text = serde_json::to_string(e).unwrap();
                let back: keyledger_core::Event = serde_json::from_str(&text).unwrap();
                assert_eq!(&back, e);
            }
        }
    }
    if let Some(req) = parse::<ResetKeyRequest>(data) {
        let secret = Secret::generate("kl", &random);
        let cmd = Command {
            now: NOW,
            if_version: None,
            action: Action::Reset {
                credential: secret.credential(),
                grace_seconds: req.grace_seconds,
            },
        };
        let r = decide(Some(&existing()), &cmd);
        assert_eq!(r.is_ok(), req.grace_seconds <= validate::MAX_GRACE_SECONDS);
        if let Ok(events) = r {
            no_plaintext(&events, &secret);
        }
    }
    if let Some(req) = parse::<VerifyRequest>(data) {
        let _ = check_format(&req.key);
        if let Some(ip) = req.ip {
            let _ = ip.parse::<std::net::IpAddr>();
        }
    }
});
