//! Criterion benches of the pure domain, each group with its baseline as a member:
//!
//! - `key_format`: `check_format` (format + CRC32 checksum, the first step of every verify) and
//!   `Secret::parse`, against the CRC32 of the same bytes alone.
//! - `decide_evolve`: deciding and folding a create and an update, against cloning the state
//!   that `evolve` starts from.
//!
//! Run with `cargo bench -p keyledger-core` (or `just bench`).

use criterion::{Criterion, criterion_group, criterion_main};
use keyledger_core::secret::check_format;
use keyledger_core::{Action, Command, KeyPatch, NewKey, Secret, Timestamp, decide, evolve};
use std::hint::black_box;
use std::time::Duration;
use uuid::Uuid;

fn key_format(c: &mut Criterion) {
    let key = Secret::generate("kl", &[7; 32]).expose().to_owned();
    let mut g = c.benchmark_group("key_format");
    g.bench_function("baseline: crc32 of the key body", |b| {
        b.iter(|| crc32fast::hash(&black_box(key.as_bytes())[..key.len() - 6]))
    });
    g.bench_function("check_format", |b| b.iter(|| check_format(black_box(&key))));
    g.bench_function("Secret::parse", |b| {
        b.iter(|| Secret::parse(black_box(&key)))
    });
    g.finish();
}

fn new_key() -> NewKey {
    let s = Secret::generate("kl", &[9; 32]);
    NewKey {
        name: "payments gateway".into(),
        account: "acme".into(),
        owner: Some("team-payments".into()),
        role: Some("service".into()),
        scopes: vec!["keys:read".into(), "keys:verify".into()],
        allowed_ips: vec!["10.0.0.0/8".into()],
        enabled: true,
        expires_at: None,
        metadata: Some(serde_json::json!({"env": "prod"})),
        prefix: "kl".into(),
        credential: s.credential(),
    }
}

fn decide_evolve(c: &mut Criterion) {
    let now = Timestamp::from_millis(1_750_000_000_000);
    let id = Uuid::now_v7();
    let create = Command {
        now,
        if_version: None,
        action: Action::Create(new_key()),
    };
    let created = decide(None, &create).unwrap().remove(0);
    let state = evolve(None, id, now, &created);
    let update = Command {
        now,
        if_version: Some(1),
        action: Action::Update(KeyPatch {
            name: Some("payments gateway v2".into()),
            enabled: Some(false),
            ..KeyPatch::default()
        }),
    };
    let mut g = c.benchmark_group("decide_evolve");
    g.bench_function("baseline: clone KeyState", |b| {
        b.iter(|| black_box(&state).clone())
    });
    g.bench_function("create: decide + evolve", |b| {
        b.iter(|| {
            let e = decide(None, black_box(&create)).unwrap();
            evolve(None, id, now, &e[0])
        })
    });
    g.bench_function("update: decide + evolve", |b| {
        b.iter(|| {
            let e = decide(Some(black_box(&state)), black_box(&update)).unwrap();
            evolve(Some(state.clone()), id, now, &e[0])
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = key_format, decide_evolve
}
criterion_main!(benches);
