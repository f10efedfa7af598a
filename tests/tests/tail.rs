//! `keyledger events tail`, run in-process against a real server and a real nats-server: from
//! the log (the server's event stream) and from NATS, verified, filtered, live, and across a
//! server restart.

use keyledger::tail::{Options, Source, run};
use keyledger_e2e::nats::{NatsServer, delete_stream};
use keyledger_e2e::*;
use serde_json::{Value, json};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Output that a test can read while the tail still runs.
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);

impl Write for Shared {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Shared {
    fn lines(&self) -> Vec<String> {
        let bytes = self.0.lock().unwrap().clone();
        String::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

fn log_tail(h: &Harness) -> Options {
    let mut o = Options::new(Source::Log);
    o.url = h.base.clone();
    o.api_key = Some(h.admin.clone());
    o
}

fn nats_tail(h: &Harness, nats: &NatsServer) -> Options {
    let mut o = Options::new(Source::Nats);
    o.url = h.base.clone();
    o.nats_url = nats.url();
    o
}

/// Runs the tail to its limit (at most 30 s); its output lines.
async fn tail(opts: Options) -> anyhow::Result<Vec<String>> {
    let out = Shared::default();
    let mut w = out.clone();
    tokio::time::timeout(secs(30), run(opts, &mut w))
        .await
        .expect("the tail reaches its limit within 30 s")?;
    Ok(out.lines())
}

fn envelopes(lines: &[String]) -> Vec<Value> {
    lines
        .iter()
        .map(|l| serde_json::from_str(l).expect("--json prints one envelope per line"))
        .collect()
}

fn seqs(envs: &[Value]) -> Vec<u64> {
    envs.iter().map(|e| e["seq"].as_u64().unwrap()).collect()
}

/// Creates, updates, resets and deletes keys, in `account` (or the default); the log's head.
async fn history(h: &Harness, account: Option<&str>) -> u64 {
    for i in 0..3 {
        let mut body = json!({ "name": format!("k{i}") });
        if let Some(a) = account {
            body["account"] = json!(a);
        }
        let (k, _) = h.create_key(body).await;
        let path = format!("/v1/keys/{}", id_of(&k));
        h.patch(&path, &h.admin, &json!({ "name": format!("k{i}-renamed") }))
            .await
            .expect(200);
        if i == 1 {
            h.post(&format!("{path}/reset"), &h.admin, &json!({}))
                .await
                .expect(200);
        }
        if i == 2 {
            h.delete(&path, &h.admin).await.expect(204);
        }
    }
    h.log_head().await
}

/// Tails from the start to `head`, verifying: exactly the stored envelopes, each once, in order.
async fn prints_the_whole_log_verified(h: &Harness, mut o: Options, head: u64) {
    o.from = "all".into();
    o.json = true;
    o.verify = true;
    o.limit = Some(head);
    let envs = envelopes(&tail(o).await.unwrap());
    assert_eq!(seqs(&envs), (1..=head).collect::<Vec<_>>());
    let stored = h
        .get("/v1/events?limit=1000", &h.admin)
        .await
        .expect(200)
        .json();
    assert_eq!(
        Value::Array(envs),
        stored["data"],
        "exactly the stored envelopes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_from_the_log_prints_every_event_once_in_order_verified() {
    let h = Harness::start().await;
    let head = history(&h, None).await;
    prints_the_whole_log_verified(&h, log_tail(&h), head).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_from_the_log_prints_one_readable_line_per_event_with_a_check_mark() {
    let h = Harness::start().await;
    let (k, _) = h
        .create_key(json!({ "name": "one", "account": "acme" }))
        .await;
    let mut o = log_tail(&h);
    o.from = "2".into();
    o.verify = true;
    o.limit = Some(1);
    let lines = tail(o).await.unwrap();
    assert_eq!(lines.len(), 1, "{lines:?}");
    let line = &lines[0];
    assert!(line.trim_start().starts_with("2 key.created"), "{line}");
    assert!(line.contains(&format!("acme/{}", id_of(&k))), "{line}");
    assert!(line.ends_with(" ✓"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_from_the_log_starting_new_prints_only_later_events() {
    let h = Harness::start().await;
    let before = history(&h, None).await;
    let mut o = log_tail(&h);
    o.json = true;
    o.limit = Some(1);
    let out = Shared::default();
    let mut w = out.clone();
    let task = tokio::spawn(async move { run(o, &mut w).await });
    // The tail reads the head when it starts: keep creating until it has printed one.
    let mut created = Vec::new();
    while !task.is_finished() {
        assert!(created.len() < 100, "the tail printed nothing");
        let (k, _) = h.create_key(json!({ "name": "later" })).await;
        created.push(id_of(&k));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    task.await.unwrap().unwrap();
    let envs = envelopes(&out.lines());
    assert_eq!(envs.len(), 1);
    assert!(seqs(&envs)[0] > before, "{envs:?}");
    assert!(created.contains(&envs[0]["key_id"].as_str().unwrap().to_owned()));
}

/// Runs a verifying tail from the start, does `between` to the service once the tail has
/// printed the history, then creates two keys: the envelopes printed, which must be every
/// event once, in order; and the seq of the history's last event.
async fn tail_across(
    h: &mut Harness,
    mut o: Options,
    between: impl AsyncFnOnce(&mut Harness),
) -> (Vec<Value>, u64) {
    let first = history(h, None).await;
    o.from = "all".into();
    o.json = true;
    o.verify = true;
    o.limit = Some(first + 2);
    let out = Shared::default();
    let mut w = out.clone();
    let task = tokio::spawn(async move { run(o, &mut w).await });
    eventually("the tail to print the history", secs(10), async || {
        (out.lines().len() as u64 == first).then_some(())
    })
    .await;
    between(h).await;
    h.create_key(json!({ "name": "after 1" })).await;
    h.create_key(json!({ "name": "after 2" })).await;
    tokio::time::timeout(secs(30), task)
        .await
        .expect("the tail reaches its limit")
        .unwrap()
        .unwrap();
    let envs = envelopes(&out.lines());
    assert_eq!(seqs(&envs), (1..=first + 2).collect::<Vec<_>>());
    (envs, first)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_from_the_log_resumes_after_the_server_restarts() {
    let mut h = Harness::start().await;
    let o = log_tail(&h);
    tail_across(&mut h, o, Harness::restart_on_the_same_address).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_from_the_log_filters_by_account_and_type() {
    let h = Harness::start().await;
    history(&h, Some("acme")).await;
    history(&h, Some("globex")).await;
    let mut o = log_tail(&h);
    o.from = "all".into();
    o.json = true;
    o.verify = true;
    o.account = Some("globex".into());
    o.event_type = Some("key.created".into());
    o.limit = Some(3);
    let envs = envelopes(&tail(o).await.unwrap());
    assert_eq!(envs.len(), 3);
    for e in &envs {
        assert_eq!(e["account"], "globex");
        assert_eq!(e["type"], "key.created");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_with_verify_rejects_events_signed_by_another_service() {
    let h = Harness::start().await;
    let other = Harness::start().await;
    let keys = other.get("/v1/signing-key", &other.admin).await.expect(200);
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), keys.json().to_string()).unwrap();
    let mut o = log_tail(&h);
    o.from = "all".into();
    o.verify = true;
    o.signing_keys = Some(file.path().to_owned());
    o.limit = Some(1);
    let e = format!("{:#}", tail(o).await.unwrap_err());
    assert!(e.contains("verification failed: seq 1"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_from_the_log_needs_a_key_with_events_read() {
    let h = Harness::start().await;
    let mut o = log_tail(&h);
    o.api_key = None;
    let e = format!("{:#}", tail(o).await.unwrap_err());
    assert!(e.contains("--api-key"), "{e}");

    let (_, reader) = h
        .create_key(json!({ "name": "keys only", "scopes": ["keys:read"] }))
        .await;
    let mut o = log_tail(&h);
    o.api_key = Some(reader.clone());
    let e = format!("{:#}", tail(o).await.unwrap_err());
    assert!(e.contains("403"), "{e}");
    assert!(e.contains("events:read"), "{e}");
    assert!(!e.contains(&reader), "the key is never printed: {e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_rejects_the_other_sources_filters() {
    let h = Harness::start().await;
    let mut o = log_tail(&h);
    o.subject = Some("keyledger.keys.>".into());
    let e = tail(o).await.unwrap_err().to_string();
    assert!(e.contains("--subject"), "{e}");

    let mut o = Options::new(Source::Nats);
    o.event_type = Some("key.created".into());
    let e = tail(o).await.unwrap_err().to_string();
    assert!(e.contains("--type"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_from_nats_prints_every_event_once_in_order_verified() {
    let nats = NatsServer::start();
    let h = Harness::start_publishing_to(&nats).await;
    let head = history(&h, None).await;
    prints_the_whole_log_verified(&h, nats_tail(&h, &nats), head).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_from_nats_filters_by_subject() {
    let nats = NatsServer::start();
    let h = Harness::start_publishing_to(&nats).await;
    history(&h, Some("acme")).await;
    let mut o = nats_tail(&h, &nats);
    o.from = "all".into();
    o.json = true;
    o.verify = true;
    o.subject = Some("keyledger.keys.*.*.rotated".into());
    o.limit = Some(1);
    let envs = envelopes(&tail(o).await.unwrap());
    assert_eq!(envs.len(), 1);
    assert_eq!(envs[0]["type"], "key.rotated");
    assert_eq!(envs[0]["account"], "acme");
}

/// The consumer of a tail lives in the nats-server: a restart of that server loses it, and the
/// tail used to exit with "consumer not found".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_from_nats_resumes_after_the_nats_server_restarts() {
    let mut nats = NatsServer::start();
    let mut h = Harness::start_publishing_to(&nats).await;
    let o = nats_tail(&h, &nats);
    tail_across(&mut h, o, async |_| nats.restart()).await;
}

/// A stream made anew numbers from 1 again: a tail that resumed at its old stream seq skipped
/// the new stream's first events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_from_nats_goes_on_in_a_recreated_stream_at_its_first_message() {
    let mut nats = NatsServer::start();
    let mut h = Harness::start_publishing_to(&nats).await;
    let o = nats_tail(&h, &nats);
    tail_across(&mut h, o, async |_| nats.restart_empty()).await;
}

/// The same without a restart: the stream deleted under a running tail and made again by the
/// publisher. The tail's consumer followed the new stream at the old stream seq, silently
/// skipping its first events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_from_nats_goes_on_when_the_stream_is_deleted_and_made_again_under_it() {
    let nats = NatsServer::start();
    let mut h = Harness::start_publishing_to(&nats).await;
    let o = nats_tail(&h, &nats);
    let url = nats.url();
    tail_across(&mut h, o, async |_| {
        delete_stream(&url).await;
        // Long enough for the tail's consumer to notice and start re-creating itself.
        tokio::time::sleep(secs(3)).await;
    })
    .await;
}

/// As above, but the new stream at once outgrows the old one's numbering: the tail's consumer,
/// re-created at the old stream seq, then delivered later events first, and the skipped ones
/// were taken for repeats once the tail noticed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_from_nats_misses_nothing_when_a_recreated_stream_overtakes_its_old_numbering() {
    let nats = NatsServer::start();
    let mut h = Harness::start_publishing_to(&nats).await;
    let o = nats_tail(&h, &nats);
    let url = nats.url();
    let (envs, first) = tail_across(&mut h, o, async |h: &mut Harness| {
        delete_stream(&url).await;
        let head = h.log_head().await;
        for i in 0..head + 5 {
            h.create_key(json!({ "name": format!("overtake {i}") }))
                .await;
        }
    })
    .await;
    assert!(envs.len() as u64 == first + 2);
}

/// A verifying tail that got its keys from the service fetches them again when an event names
/// a signer it does not know, and goes on (it failed at the first event after a rotation).
async fn a_verifying_tail_survives_a_signing_key_rotation(mut h: Harness, o: Options) {
    let (envs, first) = tail_across(&mut h, o, Harness::rotate_the_signing_key).await;
    assert_ne!(envs[0]["signer"], envs[first as usize]["signer"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_from_the_log_verifies_across_a_signing_key_rotation() {
    let h = Harness::start().await;
    let o = log_tail(&h);
    a_verifying_tail_survives_a_signing_key_rotation(h, o).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_from_nats_verifies_across_a_signing_key_rotation() {
    let nats = NatsServer::start();
    let h = Harness::start_publishing_to(&nats).await;
    let o = nats_tail(&h, &nats);
    a_verifying_tail_survives_a_signing_key_rotation(h, o).await;
}

/// Keys given in a file are not reloaded: an event by another signer still fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_with_a_signing_keys_file_fails_at_a_signer_it_does_not_list() {
    let mut h = Harness::start().await;
    let keys = h.get("/v1/signing-key", &h.admin).await.expect(200);
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), keys.json().to_string()).unwrap();
    h.rotate_the_signing_key().await;
    h.create_key(json!({ "name": "signed by the new key" }))
        .await;
    let mut o = log_tail(&h);
    o.from = "all".into();
    o.verify = true;
    o.signing_keys = Some(file.path().to_owned());
    o.limit = Some(h.log_head().await);
    let e = format!("{:#}", tail(o).await.unwrap_err());
    assert!(e.contains("unknown signer"), "{e}");
}
