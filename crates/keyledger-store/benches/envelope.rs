//! Criterion benches of the envelope, each group with its baseline as a member:
//!
//! - `envelope_seal`: what the writer does per event inside the commit — JSON value, RFC 8785
//!   canonical bytes and SHA-256 (`envelope_hash`), the ed25519 signature (alone, and eight one by
//!   one against eight batched by `SigningKeys::sign_all`), and the stored JSON —
//!   against SHA-256 of the same canonical bytes alone.
//! - `envelope_decode`: `serde_json` decoding of a stored envelope (an audit's and a read's
//!   per-event cost) and of the members the NATS publisher reads (`RawEvent`), against a parse
//!   of the same bytes that builds nothing (`IgnoredAny`).
//!
//! Run with `cargo bench -p keyledger-store` (or `just bench`).

use criterion::{Criterion, criterion_group, criterion_main};
use keyledger_core::event::SCHEMA_VERSION;
use keyledger_core::{Action, Command, NewKey, Secret, Timestamp, decide};
use keyledger_store::envelope::{canonical_bytes, envelope_hash};
use keyledger_store::{Envelope, GENESIS_HASH, SigningKeys};
use sha2::{Digest, Sha256};
use std::hint::black_box;
use std::time::Duration;
use uuid::Uuid;

fn envelope() -> Envelope {
    let now = Timestamp::from_millis(1_750_000_000_000);
    let s = Secret::generate("kl", &[3; 32]);
    let cmd = Command {
        now,
        if_version: None,
        action: Action::Create(NewKey {
            name: "payments gateway".into(),
            account: "acme".into(),
            owner: Some("team-payments".into()),
            role: Some("service".into()),
            scopes: vec!["keys:read".into(), "keys:verify".into()],
            allowed_ips: vec![],
            enabled: true,
            expires_at: None,
            metadata: None,
            prefix: "kl".into(),
            credential: s.credential(),
        }),
    };
    let event = decide(None, &cmd).unwrap().remove(0);
    Envelope {
        seq: 1_234_567,
        id: Uuid::now_v7(),
        event,
        schema: SCHEMA_VERSION,
        key_id: Uuid::now_v7(),
        account: "acme".into(),
        version: 1,
        occurred_at: now,
        actor: Uuid::now_v7().to_string(),
        prev_hash: GENESIS_HASH.into(),
        hash: String::new(),
        signature: String::new(),
        signer: "k1".into(),
    }
}

fn seal(c: &mut Criterion) {
    let env = envelope();
    let keys = SigningKeys::ephemeral([5; 32], Timestamp::from_millis(0));
    let value = serde_json::to_value(&env).unwrap();
    let canonical = canonical_bytes(&value).unwrap();
    let hash = envelope_hash(&value).unwrap();
    let mut g = c.benchmark_group("envelope_seal");
    g.bench_function("baseline: sha256 of canonical bytes", |b| {
        b.iter(|| Sha256::digest(black_box(&canonical)))
    });
    g.bench_function("to_value + canonical + sha256", |b| {
        b.iter(|| envelope_hash(&serde_json::to_value(black_box(&env)).unwrap()).unwrap())
    });
    g.bench_function("chain_hash (the writer's path)", |b| {
        b.iter(|| black_box(&env).chain_hash().unwrap())
    });
    g.bench_function("ed25519 sign", |b| b.iter(|| keys.sign(black_box(&hash))));
    // A writer's chunk: eight signatures one by one against one `sign_all` (shared inversion).
    let chunk = [hash; 8];
    g.bench_function("ed25519 sign x8, one by one", |b| {
        b.iter(|| black_box(&chunk).map(|h| keys.sign(&h)))
    });
    g.bench_function("ed25519 sign x8, sign_all", |b| {
        b.iter(|| keys.sign_all(black_box(&chunk)))
    });
    g.bench_function("stored JSON (to_vec)", |b| {
        b.iter(|| serde_json::to_vec(black_box(&env)).unwrap())
    });
    g.bench_function("stored JSON (to_json, the writer's path)", |b| {
        b.iter(|| black_box(&env).to_json().unwrap())
    });
    g.bench_function("seal: hash + sign + to_vec", |b| {
        b.iter(|| {
            let h = envelope_hash(&serde_json::to_value(black_box(&env)).unwrap()).unwrap();
            let sig = keys.sign(&h);
            (sig, serde_json::to_vec(&env).unwrap())
        })
    });
    g.finish();
}

fn decode(c: &mut Criterion) {
    let mut env = envelope();
    env.hash = hex::encode([0xab; 32]);
    env.signature = "A".repeat(88);
    let bytes = serde_json::to_vec(&env).unwrap();
    let mut g = c.benchmark_group("envelope_decode");
    g.bench_function("baseline: parse only (IgnoredAny)", |b| {
        b.iter(|| serde_json::from_slice::<serde::de::IgnoredAny>(black_box(&bytes)).unwrap())
    });
    g.bench_function("Envelope from JSON", |b| {
        b.iter(|| keyledger_store::log::decode(black_box(&bytes)).unwrap())
    });
    g.bench_function("RawEvent (what the publisher reads)", |b| {
        b.iter(|| keyledger_store::RawEvent::from_stored(black_box(&bytes)).unwrap())
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = seal, decode
}
criterion_main!(benches);
