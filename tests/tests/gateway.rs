//! `examples/gateway.rs`, the gateway that SUBSCRIBING.md offers as a model, run as a process
//! against a real nats-server: it reports every revocation, also after the nats-server restarts
//! (on its store and on an empty one), after the stream is deleted and made again, and once the
//! service signs with a new key.

use keyledger_e2e::nats::{NatsServer, delete_stream};
use keyledger_e2e::*;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

/// The example as `cargo test` builds it: `target/<profile>/examples/gateway`.
fn example_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps");
    let path = profile_dir
        .join("examples")
        .join(format!("gateway{}", std::env::consts::EXE_SUFFIX));
    let modified = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let source = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/gateway.rs");
    let (built, written) = (modified(&path), modified(&source));
    assert!(
        built.is_some() && built >= written,
        "{} is missing or older than its source: `cargo test --workspace` builds it (a \
         `--test` filter alone does not)",
        path.display()
    );
    path
}

/// The running example and the lines it has printed so far.
struct Gateway {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Gateway {
    fn start(nats: &NatsServer, h: &Harness) -> Self {
        let mut child = Command::new(example_binary())
            .args([&nats.url(), &h.base, "test-gateway"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the gateway example");
        let lines: Arc<Mutex<Vec<String>>> = Arc::default();
        let out = BufReader::new(child.stdout.take().unwrap());
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Self { child, lines }
    }

    /// Creates and revokes a key; waits until the gateway reports the revocation.
    async fn sees_a_revocation(&self, h: &Harness, when: &str) {
        let (key, _) = h.create_key(json!({ "name": when })).await;
        let id = id_of(&key);
        h.delete(&format!("/v1/keys/{id}"), &h.admin)
            .await
            .expect(204);
        let wanted = format!("REVOKE {id} now");
        eventually(
            &format!("the gateway to revoke the key {when}"),
            secs(30),
            async || {
                let lines = self.lines.lock().unwrap();
                lines.iter().any(|l| l.contains(&wanted)).then_some(())
            },
        )
        .await;
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_gateway_sees_revocations_across_a_nats_restart_a_recreated_stream_and_a_new_signing_key()
 {
    let mut nats = NatsServer::start();
    let mut h = Harness::start_publishing_to(&nats).await;
    let gateway = Gateway::start(&nats, &h);
    gateway.sees_a_revocation(&h, "at first").await;

    nats.restart();
    gateway
        .sees_a_revocation(&h, "after the nats-server restarted")
        .await;

    nats.restart_empty();
    gateway
        .sees_a_revocation(&h, "after the nats-server restarted on an empty store")
        .await;

    delete_stream(&nats.url()).await;
    gateway
        .sees_a_revocation(&h, "after the stream was deleted")
        .await;

    h.rotate_the_signing_key().await;
    gateway
        .sees_a_revocation(&h, "signed with a new signing key")
        .await;
}
