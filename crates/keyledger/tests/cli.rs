//! The `keyledger` binary as an operator and an auditor use it: serve (bootstrap key printed
//! once, graceful SIGTERM), events export, events tail from the log, audit verify against a
//! tampered data dir, and the Python verifier of docs/examples against a log the service
//! produced.

use keyledger_core::Timestamp;
use keyledger_store::SigningKeys;
use keyledger_store::envelope::envelope_hash;
use redb::{Database, ReadableTable, TableDefinition};
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
const KEY_TABLE: TableDefinition<u128, &[u8]> = TableDefinition::new("proj_keys");

fn keyledger(args: &[&str], data: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_keyledger"))
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .env("KEYLEDGER_LOG", "warn")
        .output()
        .expect("run keyledger")
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs a command that must fail; its stderr.
fn refused(args: &[&str], data: &Path) -> String {
    let out = keyledger(args, data);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{args:?} succeeded: {stderr}");
    stderr
}

/// A data dir with 4 events: three keys created, one revoked.
fn populated() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for name in ["one", "two", "three"] {
        ok(keyledger(&["keys", "create", "--name", name], dir.path()));
    }
    let list = ok(keyledger(&["keys", "list"], dir.path()));
    let first: Value = serde_json::from_str(list.lines().next().unwrap()).unwrap();
    ok(keyledger(
        &["keys", "revoke", first["id"].as_str().unwrap()],
        dir.path(),
    ));
    dir
}

fn log_path(dir: &Path) -> std::path::PathBuf {
    dir.join("keyledger.redb")
}

/// Edits `table` of the log file directly, as an intruder with the file could.
fn with_table<K: redb::Key + 'static>(
    dir: &Path,
    table: TableDefinition<K, &[u8]>,
    f: impl FnOnce(&mut redb::Table<K, &[u8]>),
) {
    let db = Database::create(log_path(dir)).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut t = txn.open_table(table).unwrap();
        f(&mut t);
    }
    txn.commit().unwrap();
}

fn with_events(dir: &Path, f: impl FnOnce(&mut redb::Table<u64, &[u8]>)) {
    with_table(dir, EVENTS, f)
}

fn with_key_table(dir: &Path, f: impl FnOnce(&mut redb::Table<u128, &[u8]>)) {
    with_table(dir, KEY_TABLE, f)
}

/// The id of the key named `name`, from `keys list`.
fn key_id(dir: &Path, name: &str) -> uuid::Uuid {
    let list = ok(keyledger(&["keys", "list"], dir));
    list.lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|k| k["name"] == name)
        .and_then(|k| k["id"].as_str()?.parse().ok())
        .unwrap_or_else(|| panic!("no key {name}: {list}"))
}

fn read_event(t: &redb::Table<u64, &[u8]>, seq: u64) -> Value {
    serde_json::from_slice(t.get(seq).unwrap().unwrap().value()).unwrap()
}

fn audit_failure(dir: &Path) -> String {
    let out = keyledger(&["audit", "verify"], dir);
    assert_eq!(out.status.code(), Some(1), "audit must fail");
    String::from_utf8(out.stderr).unwrap()
}

/// A mistyped `--data-dir` must not become a new, empty log that `audit verify` calls "ok".
#[test]
fn commands_that_read_a_log_refuse_a_data_dir_without_one() {
    let parent = tempfile::tempdir().unwrap();
    let missing = parent.path().join("typo");
    let id = "01a20f85-390d-704a-ab3d-9f2131ac8237";
    for args in [
        &["audit", "verify"][..],
        &["events", "export"],
        &["replay"],
        &["keys", "list"],
        &["keys", "revoke", id],
    ] {
        let stderr = refused(args, &missing);
        assert!(stderr.contains("no keyledger log at"), "{args:?}: {stderr}");
        assert!(!missing.exists(), "{args:?} created {}", missing.display());
    }
}

/// A rate limit of 0 would let every key make one request and then lock it out for good; a
/// runtime of 0 worker threads cannot serve.
#[test]
fn serve_refuses_zero_for_its_counts() {
    let dir = tempfile::tempdir().unwrap();
    for flag in ["--key-rate-limit", "--worker-threads"] {
        let stderr = refused(&["serve", flag, "0"], dir.path());
        assert!(stderr.contains(flag), "{stderr}");
        assert!(stderr.contains("not in 1.."), "{stderr}");
    }
}

#[test]
fn keys_list_prints_each_key_as_the_api_shows_it() {
    let dir = populated();
    let list = ok(keyledger(&["keys", "list"], dir.path()));
    let key: Value = serde_json::from_str(list.lines().next().unwrap()).unwrap();
    let mut fields: Vec<_> = key.as_object().unwrap().keys().cloned().collect();
    fields.sort();
    assert_eq!(
        fields,
        [
            "account",
            "allowed_ips",
            "created_at",
            "enabled",
            "expires_at",
            "hint",
            "id",
            "last_used_at",
            "metadata",
            "name",
            "owner",
            "role",
            "rotated_at",
            "scopes",
            "updated_at",
            "version"
        ]
    );
}

/// A mistyped bootstrap key on a first start leaves nothing behind to trip over later.
#[test]
fn a_malformed_bootstrap_key_on_a_new_data_dir_creates_nothing() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("new");
    let out = Command::new(env!("CARGO_BIN_EXE_keyledger"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&dir)
        .env("KEYLEDGER_BOOTSTRAP_KEY", "kl_notvalid")
        .env("KEYLEDGER_LOG", "warn")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("KEYLEDGER_BOOTSTRAP_KEY"), "{stderr}");
    assert!(!dir.exists(), "created {}", dir.display());
}

#[test]
fn keys_list_into_a_closed_pipe_exits_cleanly() {
    let dir = populated();
    let mut child = Command::new(env!("CARGO_BIN_EXE_keyledger"))
        .args(["keys", "list", "--data-dir"])
        .arg(dir.path())
        .env("KEYLEDGER_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The reader goes away before the command has opened the log, let alone printed.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn audit_verify_accepts_an_untouched_log() {
    let dir = populated();
    let out = ok(keyledger(&["audit", "verify"], dir.path()));
    assert!(out.contains("4 events"), "{out}");
    assert!(
        out.contains("the key table (3 keys) matches the log"),
        "{out}"
    );
}

/// The service trusts its key table at start-up, and the table is not signed: an edit of it
/// (a name here; scopes or a secret hash would be worse) must not pass the audit.
#[test]
fn audit_verify_names_an_edited_or_missing_key_table_row() {
    let dir = populated();
    let two = key_id(dir.path(), "two");
    with_key_table(dir.path(), |t| {
        let mut row = t.get(two.as_u128()).unwrap().unwrap().value().to_vec();
        let at = row.windows(3).position(|w| w == b"two").expect("the name");
        row[at + 2] = b'x';
        t.insert(two.as_u128(), row.as_slice()).unwrap();
    });
    assert_eq!(
        key_id(dir.path(), "twx"),
        two,
        "the service reads the table"
    );
    let err = audit_failure(dir.path());
    assert!(
        err.contains(&format!(
            "key table: key {two}: `name` differs from the log"
        )),
        "{err}"
    );
    // A row for a key the log never made (copied from another key).
    let stray = uuid::Uuid::from_u128(7);
    with_key_table(dir.path(), |t| {
        let row = t.get(two.as_u128()).unwrap().unwrap().value().to_vec();
        t.insert(stray.as_u128(), row.as_slice()).unwrap();
    });
    let err = audit_failure(dir.path());
    assert!(
        err.contains(&format!("key table: key {stray} is not in the log")),
        "{err}"
    );
    with_key_table(dir.path(), |t| {
        t.remove(stray.as_u128()).unwrap();
        t.remove(two.as_u128()).unwrap();
    });
    let err = audit_failure(dir.path());
    assert!(
        err.contains(&format!(
            "key table: 1 keys of the log are missing from it, the first {two}"
        )),
        "{err}"
    );
}

#[test]
fn audit_verify_names_a_modified_event() {
    let dir = populated();
    with_events(dir.path(), |t| {
        let mut e = read_event(t, 2);
        e["data"]["name"] = "forged".into();
        t.insert(2, serde_json::to_vec(&e).unwrap().as_slice())
            .unwrap();
    });
    let err = audit_failure(dir.path());
    assert!(err.contains("seq 2: hash does not match"), "{err}");
}

/// An auditor must not change the evidence: not when the audit passes, and not when it fails
/// on a tampered file (a writable open would leave it needing a repair, which a bad page then
/// makes impossible, so the service could no longer start on it).
#[test]
fn audit_verify_and_export_leave_the_log_file_as_it_was() {
    let dir = populated();
    let before = std::fs::read(log_path(dir.path())).unwrap();
    ok(keyledger(&["audit", "verify"], dir.path()));
    ok(keyledger(&["events", "export"], dir.path()));
    assert!(
        std::fs::read(log_path(dir.path())).unwrap() == before,
        "changed by a passing audit"
    );

    // Tamper below redb, as an intruder with the file would: its page checksums no longer match.
    let mut bytes = before;
    let (from, to) = (br#""name":"two""#, br#""name":"twx""#);
    let mut flipped = 0;
    for i in 0..bytes.len() - from.len() {
        if &bytes[i..i + from.len()] == from {
            bytes[i..i + to.len()].copy_from_slice(to);
            flipped += 1;
        }
    }
    assert!(flipped > 0, "the event's JSON is in the file");
    std::fs::write(log_path(dir.path()), &bytes).unwrap();
    audit_failure(dir.path());
    ok(keyledger(&["events", "export"], dir.path()));
    assert!(
        std::fs::read(log_path(dir.path())).unwrap() == bytes,
        "changed by a failed audit"
    );
    let keys = ok(keyledger(&["keys", "list"], dir.path()));
    assert_eq!(keys.lines().count(), 2, "{keys}");
}

/// A command on a data dir whose server keeps its signing keys elsewhere must not sign with a
/// stray new key, which no published key verifies.
#[test]
fn no_command_creates_a_signing_key_for_a_log_with_events() {
    let dir = populated();
    let default = dir.path().join("signing-keys.json");
    let elsewhere = dir.path().join("elsewhere.json");
    std::fs::rename(&default, &elsewhere).unwrap();
    for args in [
        &["audit", "verify"][..],
        &["replay"],
        &["keys", "list"],
        &["keys", "create", "--name", "four"],
    ] {
        let stderr = refused(args, dir.path());
        assert!(
            stderr.contains("no signing key file at"),
            "{args:?}: {stderr}"
        );
        assert!(stderr.contains("--signing-key-file"), "{args:?}: {stderr}");
        assert!(!default.exists(), "{args:?} created a signing key");
    }
    // An export neither signs nor verifies.
    let exported = ok(keyledger(&["events", "export"], dir.path()));
    assert_eq!(exported.lines().count(), 4);
    assert!(!default.exists());
    let given = ["--signing-key-file", elsewhere.to_str().unwrap()];
    let audit = ok(keyledger(
        &[&["audit", "verify"][..], &given].concat(),
        dir.path(),
    ));
    assert!(audit.contains("4 events"), "{audit}");

    // Rotating a file that is not there says where it looked; `--create` starts one.
    let stderr = refused(&["signing-key", "rotate"], dir.path());
    assert!(stderr.contains("--create"), "{stderr}");
    assert!(!default.exists());
    let created: Value = serde_json::from_str(&ok(keyledger(
        &["signing-key", "rotate", "--create"],
        dir.path(),
    )))
    .unwrap();
    let listed: Value =
        serde_json::from_str(&ok(keyledger(&["signing-key", "list"], dir.path()))).unwrap();
    assert_eq!(listed["keys"], serde_json::json!([created]));
}

/// Lost signing keys: a new key file signs what comes next, and the earlier events still
/// verify against their public keys, saved before (an auditor needs no secret key at all).
#[test]
fn after_the_signing_keys_are_lost_the_audit_checks_old_events_against_saved_public_keys() {
    let dir = populated();
    let saved = dir.path().join("public.json");
    std::fs::write(&saved, ok(keyledger(&["signing-key", "list"], dir.path()))).unwrap();
    std::fs::remove_file(dir.path().join("signing-keys.json")).unwrap();
    let public = ["--public-keys", saved.to_str().unwrap()];
    let audit = ok(keyledger(
        &[&["audit", "verify"][..], &public].concat(),
        dir.path(),
    ));
    assert!(audit.contains("4 events"), "{audit}");

    ok(keyledger(
        &["signing-key", "rotate", "--create"],
        dir.path(),
    ));
    ok(keyledger(&["keys", "create", "--name", "five"], dir.path()));
    let err = audit_failure(dir.path());
    assert!(err.contains("seq 1: unknown signer"), "{err}");
    let audit = ok(keyledger(
        &[&["audit", "verify"][..], &public].concat(),
        dir.path(),
    ));
    assert!(audit.contains("5 events"), "{audit}");

    // Imported as retired keys, the old public keys are listed (and served) with the new one,
    // verify the whole log, and never sign: the next event is the new key's.
    let saved_keys: Value =
        serde_json::from_str(&std::fs::read_to_string(&saved).unwrap()).unwrap();
    let import = ["signing-key", "import-public", saved.to_str().unwrap()];
    ok(keyledger(&import, dir.path()));
    ok(keyledger(&import, dir.path()));
    let listed: Value =
        serde_json::from_str(&ok(keyledger(&["signing-key", "list"], dir.path()))).unwrap();
    let listed = listed["keys"].as_array().unwrap();
    assert_eq!(listed.len(), 2, "imported once: {listed:?}");
    assert_eq!(listed[0], saved_keys["keys"][0]);
    let file = std::fs::read_to_string(dir.path().join("signing-keys.json")).unwrap();
    let file: Value = serde_json::from_str(&file).unwrap();
    assert!(file["keys"][0].get("secret_key").is_none(), "{file}");
    ok(keyledger(&["keys", "create", "--name", "six"], dir.path()));
    let audit = ok(keyledger(&["audit", "verify"], dir.path()));
    assert!(audit.contains("6 events"), "{audit}");
    let events = ok(keyledger(&["events", "export"], dir.path()));
    let last: Value = serde_json::from_str(events.lines().last().unwrap()).unwrap();
    assert_eq!(last["signer"], listed[1]["id"]);
}

/// A log that was not closed cleanly needs a repair, which writes: an audit refuses it (with
/// or without the key file) and leaves the file as it was.
#[test]
fn an_audit_of_a_log_that_needs_a_repair_refuses_it_and_changes_nothing() {
    let dir = populated();
    let dirty = tempfile::tempdir().unwrap();
    {
        // A copy taken while the log is open is what a crash leaves behind.
        let _open = Database::create(log_path(dir.path())).unwrap();
        std::fs::copy(log_path(dir.path()), log_path(dirty.path())).unwrap();
    }
    let before = std::fs::read(log_path(dirty.path())).unwrap();
    let err = audit_failure(dirty.path());
    assert!(err.contains("no signing key file at"), "{err}");
    std::fs::copy(
        dir.path().join("signing-keys.json"),
        dirty.path().join("signing-keys.json"),
    )
    .unwrap();
    let stderr = refused(&["audit", "verify"], dirty.path());
    assert!(stderr.contains("not closed cleanly"), "{stderr}");
    assert!(std::fs::read(log_path(dirty.path())).unwrap() == before);
    // One start of a writing command repairs it; the audit then passes.
    ok(keyledger(&["replay"], dirty.path()));
    ok(keyledger(&["audit", "verify"], dirty.path()));
}

#[test]
fn a_new_data_dir_is_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("new");
    ok(keyledger(&["keys", "create", "--name", "one"], &dir));
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "{mode:o}");
}

#[test]
fn offline_commands_on_a_served_data_dir_name_the_server() {
    let dir = populated();
    let served = serve(dir.path());
    for args in [&["audit", "verify"][..], &["keys", "list"]] {
        let stderr = refused(args, dir.path());
        assert!(
            stderr.contains("is `keyledger serve` running"),
            "{args:?}: {stderr}"
        );
    }
    served.stop();
}

#[test]
fn audit_verify_names_a_removed_event() {
    let dir = populated();
    with_events(dir.path(), |t| {
        t.remove(2).unwrap();
    });
    let err = audit_failure(dir.path());
    assert!(err.contains("seq 2: missing event"), "{err}");
}

#[test]
fn audit_verify_names_swapped_events() {
    let dir = populated();
    with_events(dir.path(), |t| {
        let (a, b) = (read_event(t, 2), read_event(t, 3));
        t.insert(2, serde_json::to_vec(&b).unwrap().as_slice())
            .unwrap();
        t.insert(3, serde_json::to_vec(&a).unwrap().as_slice())
            .unwrap();
    });
    let err = audit_failure(dir.path());
    assert!(err.contains("seq 2:"), "{err}");
}

#[test]
fn audit_verify_names_an_inserted_event() {
    let dir = populated();
    with_events(dir.path(), |t| {
        let mut e = read_event(t, 4);
        e["seq"] = 5.into();
        e["prev_hash"] = e["hash"].clone();
        t.insert(5, serde_json::to_vec(&e).unwrap().as_slice())
            .unwrap();
    });
    let err = audit_failure(dir.path());
    assert!(err.contains("seq 5:"), "{err}");
}

/// An attacker who rewrites history from seq 2 on and re-chains it consistently, signing with
/// a key of their own under the real signer's id, is caught by the signature.
#[test]
fn audit_verify_names_events_re_signed_with_a_foreign_key() {
    let dir = populated();
    let foreign = SigningKeys::ephemeral([0xEE; 32], Timestamp(0));
    with_events(dir.path(), |t| {
        let mut prev = read_event(t, 1)["hash"].as_str().unwrap().to_owned();
        for seq in 2..=4 {
            let mut e = read_event(t, seq);
            if seq == 2 {
                e["data"]["name"] = "forged".into();
            }
            e["prev_hash"] = prev.clone().into();
            let hash = envelope_hash(&e).unwrap();
            let (_, sig) = foreign.sign(&hash);
            e["hash"] = hex(&hash).into();
            e["signature"] = sig.into();
            prev = e["hash"].as_str().unwrap().to_owned();
            t.insert(seq, serde_json::to_vec(&e).unwrap().as_slice())
                .unwrap();
        }
    });
    let err = audit_failure(dir.path());
    assert!(err.contains("seq 2: signature does not verify"), "{err}");
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

struct Served {
    child: Child,
    addr: SocketAddr,
    stderr: Vec<String>,
}

/// Starts `keyledger serve` on an ephemeral port and reads stderr up to "listening on".
fn serve(dir: &Path) -> Served {
    serve_with(dir, &[], &[], None)
}

/// As [`serve`], with extra arguments and environment; all stderr lines are also sent to `log`.
fn serve_with(
    dir: &Path,
    args: &[&str],
    env: &[(&str, &str)],
    log: Option<std::sync::mpsc::Sender<String>>,
) -> Served {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_keyledger"));
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .args(args)
        .env("KEYLEDGER_LOG", "warn")
        .env_remove("KEYLEDGER_BOOTSTRAP_KEY")
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut stderr = Vec::new();
    let addr = loop {
        let line = lines.next().expect("serve exited early").unwrap();
        if let Some(log) = &log {
            let _ = log.send(line.clone());
        }
        let listening = line
            .strip_prefix("keyledger: listening on http://")
            .or_else(|| line.strip_prefix("keyledger: listening on https://"));
        if let Some(a) = listening {
            break a.trim().parse().unwrap();
        }
        stderr.push(line);
    };
    // Keep draining stderr so that the child never blocks on a full pipe.
    std::thread::spawn(move || {
        for line in lines.by_ref().map_while(Result::ok) {
            if let Some(log) = &log {
                let _ = log.send(line);
            }
        }
    });
    Served {
        child,
        addr,
        stderr,
    }
}

impl Served {
    fn stop(mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let exit = self.child.wait().unwrap();
        assert!(exit.success(), "graceful shutdown exits 0, got {exit:?}");
    }
}

/// One HTTP/1.1 request over loopback: (status, body).
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    key: &str,
    body: Option<&str>,
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    let body = body.unwrap_or("");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status = resp[9..12].parse().unwrap();
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// `POST /v1/keys` with this body, which must answer 201; the response.
fn create(served: &Served, key: &str, body: &str) -> Value {
    let (status, resp) = http(served.addr, "POST", "/v1/keys", key, Some(body));
    assert_eq!(status, 201, "{resp}");
    serde_json::from_str(&resp).unwrap()
}

fn bootstrap_key(stderr: &[String]) -> Option<String> {
    stderr
        .iter()
        .map(|l| l.trim())
        .find(|l| l.starts_with("kl_"))
        .map(str::to_owned)
}

#[test]
fn serve_prints_the_bootstrap_key_once_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let first = serve(dir.path());
    let key = bootstrap_key(&first.stderr).expect("bootstrap key on first start");
    let (status, me) = http(first.addr, "GET", "/v1/me", &key, None);
    assert_eq!(status, 200, "{me}");
    assert!(me.contains("\"admin\""));
    first.stop();

    let second = serve(dir.path());
    assert_eq!(bootstrap_key(&second.stderr), None, "printed only once");
    let (status, _) = http(second.addr, "GET", "/v1/me", &key, None);
    assert_eq!(status, 200);
    second.stop();
}

#[test]
fn serve_runs_as_many_worker_threads_as_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    for (args, env, expected) in [
        (&["--worker-threads", "1"][..], &[][..], 1),
        (&[][..], &[("KEYLEDGER_WORKER_THREADS", "3")][..], 3),
    ] {
        let served = serve_with(dir.path(), args, env, None);
        let (status, metrics) = http(served.addr, "GET", "/metrics", "", None);
        assert_eq!(status, 200);
        let line = format!("\nkeyledger_worker_threads {expected}\n");
        assert!(metrics.contains(&line), "{args:?} {env:?}: {metrics}");
        served.stop();
    }
}

#[test]
fn events_tail_follows_the_log_of_a_running_server_without_nats() {
    let dir = tempfile::tempdir().unwrap();
    let served = serve(dir.path());
    let key = bootstrap_key(&served.stderr).unwrap();
    create(&served, &key, r#"{"name":"one"}"#);
    let out = Command::new(env!("CARGO_BIN_EXE_keyledger"))
        .args([
            "events", "tail", "--source", "log", "--from", "all", "--limit", "2",
        ])
        .args(["--verify", "--url", &format!("http://{}", served.addr)])
        .env("KEYLEDGER_API_KEY", &key)
        .env("KEYLEDGER_LOG", "warn")
        .output()
        .unwrap();
    let stdout = ok(out);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    for (seq, line) in [(1, lines[0]), (2, lines[1])] {
        assert!(
            line.trim_start().starts_with(&format!("{seq} key.created")),
            "{line}"
        );
        assert!(line.ends_with(" ✓"), "{line}");
    }
    assert!(!stdout.contains(&key), "the API key is never printed");
    // A start beyond the log is named as the operator gave it.
    let out = Command::new(env!("CARGO_BIN_EXE_keyledger"))
        .args(["events", "tail", "--source", "log", "--from", "99"])
        .args(["--url", &format!("http://{}", served.addr)])
        .env("KEYLEDGER_API_KEY", &key)
        .env("KEYLEDGER_LOG", "warn")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("--from 99: beyond the log, whose last seq is 2"),
        "{stderr}"
    );
    served.stop();
}

fn python_verify(events: &Path, keys: &Path) -> Output {
    Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../docs/examples/verify_log.py"
        ))
        .arg(events)
        .arg(keys)
        .output()
        .expect("python3 on PATH")
}

/// docs/examples/verify_log.py, written from docs/EVENTS.md alone, verifies a real log; and
/// names the event an attacker changed.
#[test]
fn the_python_verifier_checks_a_log_the_service_produced() {
    let dir = tempfile::tempdir().unwrap();
    let served = serve(dir.path());
    let key = bootstrap_key(&served.stderr).unwrap();
    let body = create(
        &served,
        &key,
        r#"{"name":"ünïcode \"quoted\"","scopes":["a:b"],"allowed_ips":["10.0.0.0/8","::1"],"metadata":{"plan":"pro","n":1.5,"big":1e21,"tiny":1e-7,"nested":{"z":[true,null],"a":"\u0001"}},"expires_at":"2099-01-01T00:00:00Z"}"#,
    );
    let id = body["key"]["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/keys/{id}");
    assert_eq!(
        http(
            served.addr,
            "PATCH",
            &path,
            &key,
            Some(r#"{"role":"member","owner":"cus_1"}"#)
        )
        .0,
        200
    );
    assert_eq!(
        http(
            served.addr,
            "POST",
            &format!("{path}/reset"),
            &key,
            Some(r#"{"grace_seconds":60}"#)
        )
        .0,
        200
    );
    assert_eq!(http(served.addr, "DELETE", &path, &key, None).0, 204);
    let (_, signing) = http(served.addr, "GET", "/v1/signing-key", &key, None);
    served.stop();

    let events = dir.path().join("events.jsonl");
    let keys = dir.path().join("keys.json");
    std::fs::write(&events, ok(keyledger(&["events", "export"], dir.path()))).unwrap();
    std::fs::write(&keys, signing).unwrap();
    let out = python_verify(&events, &keys);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.trim(), "ok: 5 events");

    let text = std::fs::read_to_string(&events).unwrap();
    let tampered: Vec<String> = text
        .lines()
        .map(|l| {
            let mut e: Value = serde_json::from_str(l).unwrap();
            if e["seq"] == 3 {
                e["data"]["role"] = "owner".into();
            }
            e.to_string()
        })
        .collect();
    std::fs::write(&events, tampered.join("\n")).unwrap();
    let out = python_verify(&events, &keys);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "seq 3: hash does not match the event's canonical bytes"
    );
}

#[test]
fn serve_speaks_tls_with_a_given_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl on PATH");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let data = dir.path().join("data");
    let served = serve_with(
        &data,
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
        &[],
        None,
    );
    let key_line = bootstrap_key(&served.stderr).unwrap();
    let url = format!("https://127.0.0.1:{}/v1/me", served.addr.port());
    let out = Command::new("curl")
        .args(["-sS", "--cacert", cert.to_str().unwrap(), "-H"])
        .arg(format!("Authorization: Bearer {key_line}"))
        .arg(&url)
        .output()
        .expect("curl on PATH");
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(body.contains("\"admin\""), "{body}");
    // Plain HTTP on the TLS port is refused.
    let plain = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("http://127.0.0.1:{}/healthz", served.addr.port()))
        .output()
        .unwrap();
    assert_ne!(String::from_utf8_lossy(&plain.stdout), "200");
    served.stop();
}

/// Runs every kind of request with the most verbose logging, then scans every log line for
/// secrets, secret hashes and the signing key.
#[test]
fn no_secret_hash_or_signing_key_appears_in_any_log_line() {
    let dir = tempfile::tempdir().unwrap();
    let admin = keyledger_core::Secret::generate("kl", &[42; 32]);
    let (tx, rx) = std::sync::mpsc::channel();
    let served = serve_with(
        dir.path(),
        &[],
        &[
            ("KEYLEDGER_LOG", "trace"),
            ("KEYLEDGER_BOOTSTRAP_KEY", admin.expose()),
        ],
        Some(tx),
    );
    let a = served.addr;
    let key = admin.expose();
    let mut secrets = vec![key.to_owned()];
    let (_, created) = http(
        a,
        "POST",
        "/v1/keys",
        key,
        Some(r#"{"name":"logged","scopes":["keys:verify"]}"#),
    );
    let created: Value = serde_json::from_str(&created).unwrap();
    secrets.push(created["secret"].as_str().unwrap().to_owned());
    let id = created["key"]["id"].as_str().unwrap().to_owned();
    let (_, reset) = http(
        a,
        "POST",
        &format!("/v1/keys/{id}/reset"),
        key,
        Some(r#"{"grace_seconds":5}"#),
    );
    let reset: Value = serde_json::from_str(&reset).unwrap();
    secrets.push(reset["secret"].as_str().unwrap().to_owned());
    let verify = format!(r#"{{"key":"{}"}}"#, secrets[2]);
    http(a, "POST", "/v1/verify", key, Some(&verify));
    http(a, "GET", "/v1/me", &secrets[2], None);
    let wrong = keyledger_core::Secret::generate("kl", &[43; 32]);
    secrets.push(wrong.expose().to_owned());
    http(a, "GET", "/v1/me", wrong.expose(), None);
    http(
        a,
        "GET",
        &format!("/v1/keys?apikey={}", secrets[1]),
        key,
        None,
    );
    http(a, "GET", "/v1/events", key, None);
    http(a, "DELETE", &format!("/v1/keys/{id}"), key, None);
    served.stop();

    let signing = std::fs::read_to_string(dir.path().join("signing-keys.json")).unwrap();
    let signing: Value = serde_json::from_str(&signing).unwrap();
    let mut needles: Vec<String> = signing["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["secret_key"].as_str().unwrap().to_owned())
        .collect();
    for s in &secrets {
        needles.push(s.clone());
        needles.push(keyledger_core::SecretHash::of(s).to_hex());
        // The random part alone, too (a log line might strip the prefix).
        needles.push(s[3..].to_owned());
    }
    // The sender goes away when the child's stderr reaches EOF.
    let lines: Vec<String> = rx.iter().collect();
    let requests = lines.iter().filter(|l| l.contains("request_id")).count();
    assert!(
        requests >= 8,
        "every request is logged at trace level: {lines:#?}"
    );
    for line in &lines {
        for n in &needles {
            assert!(
                !line.contains(n.as_str()),
                "a log line leaks a secret: {line}"
            );
        }
    }
}
