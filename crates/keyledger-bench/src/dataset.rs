//! Big data dirs, made fast: events are decided with the real `decide`, then appended straight
//! through [`Log::append_batch`] with the real [`KeyTableProjector`] in large batches (one fsync
//! per batch), bypassing HTTP and the writer's channel. The result is exactly what the service
//! would have written for the same commands.
//!
//! Layout: key 0 is an admin key, key 1 holds `keys:verify`; every other key has three events
//! (`key.created`, `key.updated`, `key.rotated` with no grace), so N keys make about 3N events.
//! Secrets are derived from the key's index, so any key's current secret can be recomputed.

use anyhow::{Context, bail};
use keyledger_core::{Action, Command, KeyPatch, NewKey, Secret, decide, evolve};
use keyledger_projections::KeyTableProjector;
use keyledger_service::{Config, now, open_log};
use keyledger_store::AppendRequest;
use std::path::{Path, PathBuf};
use std::time::Instant;
use uuid::Uuid;

pub const ADMIN: u64 = 0;
pub const VERIFIER: u64 = 1;
/// Names are `svc-<i> <word>`; searching for one word matches 1 key in 16.
pub const WORDS: [&str; 16] = [
    "alpha", "bravo", "charlie", "delta", "echo", "falcon", "golf", "hotel", "india", "juliet",
    "kilo", "lima", "mike", "november", "oscar", "papa",
];
pub const SEARCH: &str = "falcon";
const MARKER: &str = "bench-dataset-complete";
const KEYS_PER_BATCH: u64 = 2_000;

/// The secret of key `i` in its `generation` (0: at creation, 1: after the rotation).
pub fn secret(i: u64, generation: u8) -> Secret {
    let mut seed = [0x5a_u8; 32];
    seed[..8].copy_from_slice(&i.to_le_bytes());
    seed[8] = generation;
    Secret::generate("kl", &seed)
}

/// The secret key `i` holds once the data set is written.
pub fn current_secret(i: u64) -> Secret {
    secret(i, if i <= VERIFIER { 0 } else { 1 })
}

pub fn name(i: u64) -> String {
    format!("svc-{i:07} {}", WORDS[(i % 16) as usize])
}

/// Number of events a data set of `keys` keys holds.
pub fn event_count(keys: u64) -> u64 {
    keys.min(2) + 3 * keys.saturating_sub(2)
}

fn request(i: u64) -> AppendRequest {
    let at = now();
    let key_id = Uuid::now_v7();
    let first = secret(i, 0);
    let scopes = match i {
        ADMIN => vec!["admin".to_owned()],
        VERIFIER => vec!["keys:verify".to_owned()],
        _ => vec!["keys:read".to_owned()],
    };
    let mut commands = vec![Action::Create(NewKey {
        name: name(i),
        account: "default".into(),
        owner: Some("team-bench".into()),
        role: None,
        scopes,
        allowed_ips: vec![],
        enabled: true,
        expires_at: None,
        metadata: None,
        prefix: "kl".into(),
        credential: first.credential(),
    })];
    if i > VERIFIER {
        commands.push(Action::Update(KeyPatch {
            owner: Some(Some(format!("team-{}", i % 50))),
            ..KeyPatch::default()
        }));
        commands.push(Action::Reset {
            credential: secret(i, 1).credential(),
            grace_seconds: 0,
        });
    }
    let mut state = None;
    let mut events = Vec::new();
    for action in commands {
        let cmd = Command {
            now: at,
            if_version: None,
            action,
        };
        for e in decide(state.as_ref(), &cmd).expect("bench commands are valid") {
            state = Some(evolve(state, key_id, at, &e));
            events.push((Uuid::now_v7(), e));
        }
    }
    AppendRequest {
        key_id,
        account: "default".into(),
        expected_version: 0,
        actor: "cli".into(),
        occurred_at: at,
        events,
        idempotency: None,
    }
}

/// Writes a data set of `keys` keys into the empty dir `dir`. Returns the seconds it took.
fn generate(dir: &Path, keys: u64) -> anyhow::Result<f64> {
    let started = Instant::now();
    let log = open_log(&Config::new(dir)).context("opening the new log")?;
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<AppendRequest>>(2);
    // Deciding and hashing on one thread, appending (sealing, signing, redb) on this one.
    let producer = std::thread::spawn(move || {
        let mut i = 0;
        while i < keys {
            let end = (i + KEYS_PER_BATCH).min(keys);
            if tx.send((i..end).map(request).collect()).is_err() {
                return;
            }
            i = end;
        }
    });
    let mut done = 0u64;
    let mut last_report = Instant::now();
    for batch in rx {
        for r in log.append_batch(&batch, &mut KeyTableProjector)? {
            if let Err(e) = r {
                bail!("bulk append refused a request: {e}");
            }
        }
        done += batch.len() as u64;
        if last_report.elapsed().as_secs() >= 10 {
            eprintln!("  ... {done}/{keys} keys written");
            last_report = Instant::now();
        }
    }
    producer.join().expect("producer thread");
    Ok(started.elapsed().as_secs_f64())
}

/// A private copy of the cached data set of `keys` keys (generated into the cache first if
/// needed), so that runs that write (creates) never change the cache.
pub struct Dataset {
    pub keys: u64,
    pub events: u64,
    /// Seconds the bulk generation took, when this run generated it.
    pub generated_in: Option<f64>,
    pub dir: PathBuf,
    _work: tempfile::TempDir,
}

impl Dataset {
    pub fn prepare(cache_root: &Path, work_root: &Path, keys: u64) -> anyhow::Result<Self> {
        let keys = keys.max(2);
        let cached = cache_root.join(format!("keys-{keys}"));
        let mut generated_in = None;
        if !cached.join(MARKER).exists() {
            if cached.exists() {
                std::fs::remove_dir_all(&cached)?;
            }
            std::fs::create_dir_all(&cached)?;
            eprintln!(
                "generating a data set of {keys} keys ({} events) in {}",
                event_count(keys),
                cached.display()
            );
            let secs = generate(&cached, keys)?;
            eprintln!("  generated in {secs:.1} s");
            std::fs::write(cached.join(MARKER), format!("{keys}\n"))?;
            generated_in = Some(secs);
        } else {
            // A cache made by an older binary is brought up to the current log format (replay
            // rows) here, once, rather than by every run's first open of its copy.
            drop(open_log(&Config::new(&cached))?);
        }
        std::fs::create_dir_all(work_root)?;
        let work = tempfile::Builder::new()
            .prefix("keyledger-bench-")
            .tempdir_in(work_root)?;
        let dir = work.path().join("data");
        std::fs::create_dir_all(&dir)?;
        for f in [
            keyledger_service::LOG_FILE,
            keyledger_service::SIGNING_KEY_FILE,
        ] {
            std::fs::copy(cached.join(f), dir.join(f))
                .with_context(|| format!("copying {f} of the cached data set"))?;
            // Written back now, not while the first scenarios are measured (2.8 GB at 1M keys).
            std::fs::File::open(dir.join(f))?.sync_all()?;
        }
        Ok(Self {
            keys,
            events: event_count(keys),
            generated_in,
            dir,
            _work: work,
        })
    }
}
