//! Crash loop, sled-style: this test binary re-executes itself as a child that writes under
//! concurrent load and reports every acknowledged command on stdout; the parent kills it with
//! SIGKILL at a random moment, reopens the data dir and checks the invariants:
//! every acknowledged command is present, seqs are contiguous, the hash chain and signatures
//! verify, and the read models equal a fresh replay of the log.
//!
//! `KEYLEDGER_CRASH_ITERATIONS` (default 50) sets the number of kills; `just soak` runs many.

use keyledger_core::KeyPatch;
use keyledger_service::{Actor, Config, CreateKey, Service, open_log};
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use uuid::Uuid;

const CHILD_ENV: &str = "KEYLEDGER_CRASH_CHILD_DIR";

fn main() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        child(Path::new(&dir));
        return;
    }
    let iterations: usize = std::env::var("KEYLEDGER_CRASH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let dir = tempfile::tempdir().expect("temp dir");
    let mut rng = XorShift::seeded();
    let mut acked: HashMap<Uuid, u64> = HashMap::new();
    let mut total_acks = 0usize;
    for i in 0..iterations {
        let acks = run_and_kill(dir.path(), Duration::from_millis(20 + rng.next() % 180));
        total_acks += acks.len();
        for (id, version) in acks {
            let v = acked.entry(id).or_default();
            *v = (*v).max(version);
        }
        check(dir.path(), &acked, i);
    }
    assert!(total_acks > 0, "the children acknowledged nothing");
    println!(
        "crash loop: {iterations} SIGKILLs, {total_acks} acknowledged commands, {} keys: every invariant held",
        acked.len()
    );
    println!("1 passed, 0 failed");
}

/// Starts a child writing into `dir`, kills it after `after`, returns what it acknowledged.
fn run_and_kill(dir: &Path, after: Duration) -> Vec<(Uuid, u64)> {
    let mut child = Command::new(std::env::current_exe().expect("own path"))
        .env(CHILD_ENV, dir)
        .env("KEYLEDGER_LOG", "off")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("re-execute self");
    let stdout = child.stdout.take().expect("piped");
    let acks = Arc::new(Mutex::new(Vec::new()));
    let reader = {
        let acks = acks.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let mut parts = line.split_whitespace();
                if let (Some("ack"), Some(id), Some(v)) = (parts.next(), parts.next(), parts.next())
                {
                    acks.lock()
                        .unwrap()
                        .push((id.parse().unwrap(), v.parse().unwrap()));
                }
            }
        })
    };
    std::thread::sleep(after);
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
    reader.join().expect("reader");
    Arc::try_unwrap(acks).unwrap().into_inner().unwrap()
}

fn check(dir: &Path, acked: &HashMap<Uuid, u64>, iteration: usize) {
    let log = open_log(&Config::new(dir)).expect("reopen after SIGKILL");
    let verifier = log.signing_keys().verifier();
    let verified = keyledger_store::audit::verify_log(&log, &verifier, |_| {})
        .unwrap_or_else(|e| panic!("iteration {iteration}: audit: {e}"));
    assert_eq!(verified, log.head().unwrap().0, "iteration {iteration}");
    for (id, version) in acked {
        let stored = log.stream_version(*id).unwrap();
        assert!(
            stored >= *version,
            "iteration {iteration}: key {id} acknowledged at version {version}, log has {stored}"
        );
    }
    let persisted = keyledger_projections::open_read_model(&log)
        .unwrap()
        .snapshot();
    let replayed = keyledger_projections::fold_log(&log).unwrap().snapshot();
    assert_eq!(
        persisted, replayed,
        "iteration {iteration}: read model differs from replay"
    );
}

/// The child: 8 concurrent writers creating, updating, resetting and revoking keys, printing
/// `ack <key id> <version>` after each acknowledged command, until it is killed.
fn child(dir: &Path) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let service = Service::open(Config::new(dir)).expect("open");
        let writers: Vec<_> = (0..8)
            .map(|w| {
                let s = service.clone();
                tokio::spawn(async move {
                    for n in 0u64.. {
                        let input = CreateKey {
                            name: format!("w{w}-{n}"),
                            ..Default::default()
                        };
                        let (c, _) = s.create(&Actor::Cli, input, None).await.expect("create");
                        let id = c.entry.state.id;
                        println!("ack {id} {}", c.entry.state.version);
                        let patch = KeyPatch {
                            role: Some(Some(format!("r{n}"))),
                            ..Default::default()
                        };
                        let c = s
                            .update(&Actor::Cli, id, patch, None, None)
                            .await
                            .expect("update");
                        println!("ack {id} {}", c.entry.state.version);
                        let c = match n % 3 {
                            0 => {
                                s.reset(&Actor::Cli, id, 60, None, None)
                                    .await
                                    .expect("reset")
                                    .0
                            }
                            1 => s.delete(&Actor::Cli, id, None, None).await.expect("delete"),
                            _ => continue,
                        };
                        println!("ack {id} {}", c.entry.state.version);
                    }
                })
            })
            .collect();
        for w in writers {
            let _ = w.await;
        }
    });
}

/// A tiny xorshift generator: the kill moments need no cryptographic randomness.
struct XorShift(u64);

impl XorShift {
    fn seeded() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        Self(nanos | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}
