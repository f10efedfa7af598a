//! Criterion bench of in-process verification on a model of 100k keys, with its baseline as a
//! member of the same group: SHA-256 of the 53-byte key plus a `HashMap<SecretHash, Uuid>`
//! lookup alone (target: `Service::verify` ≤ 300 ns, the baseline ≈ 150 ns).
//!
//! The keys are appended straight through `Log::append_batch` (as the writer would, in big
//! batches), then the service is opened on the data dir. Setup takes several seconds.
//!
//! Run with `cargo bench -p keyledger-service` (or `just bench`).

use criterion::{Criterion, criterion_group, criterion_main};
use keyledger_core::secret::check_format;
use keyledger_core::{Action, Command, NewKey, Secret, SecretHash, decide};
use keyledger_projections::KeyTableProjector;
use keyledger_service::{Config, Service, VerifyCode, now, open_log};
use keyledger_store::AppendRequest;
use std::collections::HashMap;
use std::hint::black_box;
use std::time::Duration;
use uuid::Uuid;

const KEYS: u64 = 100_000;

fn secret(i: u64) -> Secret {
    let mut seed = [0x11_u8; 32];
    seed[..8].copy_from_slice(&i.to_le_bytes());
    Secret::generate("kl", &seed)
}

fn create(i: u64) -> AppendRequest {
    let s = secret(i);
    let at = now();
    let cmd = Command {
        now: at,
        if_version: None,
        action: Action::Create(NewKey {
            name: format!("svc-{i}"),
            account: "default".into(),
            owner: None,
            role: None,
            scopes: vec!["keys:read".into()],
            allowed_ips: vec![],
            enabled: true,
            expires_at: None,
            metadata: None,
            prefix: "kl".into(),
            credential: s.credential(),
        }),
    };
    let events = decide(None, &cmd).unwrap();
    AppendRequest {
        key_id: Uuid::now_v7(),
        account: "default".into(),
        expected_version: 0,
        actor: "cli".into(),
        occurred_at: at,
        events: events.into_iter().map(|e| (Uuid::now_v7(), e)).collect(),
        idempotency: None,
    }
}

fn verify(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::new(dir.path());
    {
        let log = open_log(&config).unwrap();
        let ids: Vec<u64> = (0..KEYS).collect();
        for chunk in ids.chunks(5_000) {
            let batch: Vec<AppendRequest> = chunk.iter().map(|i| create(*i)).collect();
            log.append_batch(&batch, &mut KeyTableProjector).unwrap();
        }
    }
    let service = Service::open(config).unwrap();
    let presented: Vec<String> = (0..1024)
        .map(|j| secret(j * KEYS / 1024).expose().to_owned())
        .collect();
    let index: HashMap<SecretHash, Uuid> =
        (0..KEYS).map(|i| (secret(i).hash(), Uuid::nil())).collect();
    let at = now();
    let mut g = c.benchmark_group("verify_100k_keys");
    let mut i = 0;
    g.bench_function("baseline: sha256 + HashMap lookup", |b| {
        b.iter(|| {
            i = (i + 1) % presented.len();
            index.contains_key(&SecretHash::of(black_box(&presented[i])))
        })
    });
    g.bench_function("check_format (CRC32)", |b| {
        b.iter(|| {
            i = (i + 1) % presented.len();
            check_format(black_box(&presented[i])).is_ok()
        })
    });
    g.bench_function("Service::verify (valid key)", |b| {
        b.iter(|| {
            i = (i + 1) % presented.len();
            let v = service.verify(black_box(&presented[i]), &[], None, at);
            assert_eq!(v.code, VerifyCode::Valid);
        })
    });
    g.finish();
    service.shutdown();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = verify
}
criterion_main!(benches);
