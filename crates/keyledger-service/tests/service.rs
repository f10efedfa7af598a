//! The service against a real redb file: read models equal a fresh fold of the log, state
//! survives restarts, concurrent commands are group-committed.

use keyledger_core::{KeyPatch, Timestamp};
use keyledger_projections::{fold_log, open_read_model};
use keyledger_service::{
    Actor, AsOf, BatchStats, Config, CreateKey, Service, ServiceError, VerifyCode, now,
};
use keyledger_store::faults::{FaultSwitch, faulty_opener};
use keyledger_store::{Log, SigningKeys};
use proptest::prelude::*;
use std::sync::{Arc, Mutex};
use uuid::Uuid;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn named(name: &str) -> CreateKey {
    CreateKey {
        name: name.into(),
        scopes: vec!["keys:read".into()],
        ..Default::default()
    }
}

/// A key named `name` in `account`.
fn in_account(name: &str, account: &str) -> CreateKey {
    CreateKey {
        account: Some(account.into()),
        ..named(name)
    }
}

/// Sends all `keys` to the writer at once; their results in order.
async fn create_at_once(s: &Service, keys: Vec<CreateKey>) -> Vec<Result<(), ServiceError>> {
    let tasks: Vec<_> = keys
        .into_iter()
        .map(|key| {
            let s = s.clone();
            tokio::spawn(async move { s.create(&Actor::Cli, key, None).await.map(drop) })
        })
        .collect();
    let mut results = Vec::with_capacity(tasks.len());
    for t in tasks {
        results.push(t.await.unwrap());
    }
    results
}

/// Makes `config` record every committed batch.
fn record_batches(config: &mut Config) -> Arc<Mutex<Vec<BatchStats>>> {
    let batches: Arc<Mutex<Vec<BatchStats>>> = Arc::default();
    let sink = batches.clone();
    config.on_batch = Some(Arc::new(move |b| sink.lock().unwrap().push(b)));
    batches
}

#[derive(Debug, Clone)]
enum Op {
    Create(String),
    Rename(usize, String),
    Toggle(usize, bool),
    Scopes(usize, Vec<String>),
    Reset(usize, u64),
    Delete(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => "[a-z]{1,8}".prop_map(Op::Create),
        2 => (any::<usize>(), "[a-z]{1,8}").prop_map(|(i, n)| Op::Rename(i, n)),
        1 => (any::<usize>(), any::<bool>()).prop_map(|(i, b)| Op::Toggle(i, b)),
        1 => (any::<usize>(), prop::collection::vec("[a-z]{1,3}:[a-z]{1,3}", 0..3)).prop_map(|(i, s)| Op::Scopes(i, s)),
        1 => (any::<usize>(), prop_oneof![Just(0u64), Just(3600u64)]).prop_map(|(i, g)| Op::Reset(i, g)),
        1 => any::<usize>().prop_map(Op::Delete),
    ]
}

async fn run(service: &Service, ops: &[Op]) {
    let mut ids: Vec<Uuid> = Vec::new();
    let pick = |ids: &[Uuid], i: usize| ids.get(i % ids.len().max(1)).copied();
    for op in ops {
        let a = Actor::Cli;
        let r = match op {
            Op::Create(name) => service.create(&a, named(name), None).await.map(|(c, _)| {
                ids.push(c.entry.state.id);
            }),
            Op::Rename(i, name) => match pick(&ids, *i) {
                Some(id) => {
                    let patch = KeyPatch {
                        name: Some(name.clone()),
                        ..Default::default()
                    };
                    service.update(&a, id, patch, None, None).await.map(drop)
                }
                None => Ok(()),
            },
            Op::Toggle(i, on) => match pick(&ids, *i) {
                Some(id) => {
                    let patch = KeyPatch {
                        enabled: Some(*on),
                        ..Default::default()
                    };
                    service.update(&a, id, patch, None, None).await.map(drop)
                }
                None => Ok(()),
            },
            Op::Scopes(i, scopes) => match pick(&ids, *i) {
                Some(id) => {
                    let patch = KeyPatch {
                        scopes: Some(scopes.clone()),
                        ..Default::default()
                    };
                    service.update(&a, id, patch, None, None).await.map(drop)
                }
                None => Ok(()),
            },
            Op::Reset(i, grace) => match pick(&ids, *i) {
                Some(id) => service.reset(&a, id, *grace, None, None).await.map(drop),
                None => Ok(()),
            },
            Op::Delete(i) => match pick(&ids, *i) {
                Some(id) => service.delete(&a, id, None, None).await.map(drop),
                None => Ok(()),
            },
        };
        // Commands on a revoked key are refused; nothing else may fail.
        assert!(
            matches!(r, Ok(()) | Err(ServiceError::Deleted)),
            "{op:?}: {r:?}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Random command sequences: the live read model equals a fresh fold of the log, and the
    /// persisted key table loaded after a restart equals both.
    #[test]
    fn live_projections_equal_a_fresh_rebuild_from_the_log(ops in prop::collection::vec(op(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime();
        let live = rt.block_on(async {
            let service = Service::open(Config::new(dir.path())).unwrap();
            run(&service, &ops).await;
            let live = service.snapshot();
            service.shutdown();
            live
        });
        let log = keyledger_service::open_log(&Config::new(dir.path())).unwrap();
        prop_assert_eq!(&fold_log(&log).unwrap().snapshot(), &live);
        prop_assert_eq!(&open_read_model(&log).unwrap().snapshot(), &live);
        // `keyledger replay`: rebuilding the persisted table from the log changes nothing.
        keyledger_projections::persisted::catch_up(&log, true, |_, _| {}).unwrap();
        prop_assert_eq!(&open_read_model(&log).unwrap().snapshot(), &live);
    }

    /// `as_of` at every seq equals folding the log's prefix up to that seq.
    #[test]
    fn as_of_every_seq_equals_folding_that_prefix(ops in prop::collection::vec(op(), 1..25)) {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime();
        rt.block_on(async {
            let service = Service::open(Config::new(dir.path())).unwrap();
            run(&service, &ops).await;
            let events = service.log().read(0, usize::MAX).unwrap();
            let mut prefix: std::collections::BTreeMap<Uuid, keyledger_core::KeyState> = Default::default();
            for env in &events {
                let next = keyledger_core::evolve(prefix.remove(&env.key_id), env.key_id, env.occurred_at, &env.event);
                prefix.insert(env.key_id, next);
                for (id, expected) in &prefix {
                    let got = service.get_as_of(&Actor::Cli, *id, AsOf::Seq(env.seq)).unwrap();
                    assert_eq!(&got, expected, "key {id} as of seq {}", env.seq);
                }
            }
            if let Some(first) = events.first() {
                // Before its first event a key does not exist.
                let later_key = events.iter().find(|e| e.key_id != first.key_id);
                if let Some(k) = later_key {
                    let before = AsOf::Seq(k.seq - 1);
                    assert_eq!(service.get_as_of(&Actor::Cli, k.key_id, before), Err(ServiceError::NotFound));
                }
            }
            service.shutdown();
        });
    }
}

/// Expiry and the end of a grace period fall due while the service is down: on the next start
/// the scheduler records each exactly once.
#[test]
fn scheduled_events_fire_once_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    rt.block_on(async {
        let s = Service::open(Config::new(dir.path())).unwrap();
        let soon = keyledger_core::Timestamp::from_millis(now().millis() + 300);
        let input = CreateKey {
            expires_at: Some(soon),
            ..named("short")
        };
        let (c, _) = s.create(&Actor::Cli, input, None).await.unwrap();
        s.reset(&Actor::Cli, c.entry.state.id, 1, None, None)
            .await
            .unwrap();
        assert_eq!(s.run_due().await, 0, "nothing is due yet");
        s.shutdown();
    });
    std::thread::sleep(std::time::Duration::from_millis(1100));
    rt.block_on(async {
        let s = Service::open(Config::new(dir.path())).unwrap();
        assert_eq!(s.run_due().await, 2, "key.expired and key.rotation_ended");
        assert_eq!(s.run_due().await, 0, "each fires once");
        let types: Vec<&str> = s
            .log()
            .read(0, 100)
            .unwrap()
            .iter()
            .map(|e| e.event.type_name())
            .collect();
        assert_eq!(
            types,
            [
                "key.created",
                "key.rotated",
                "key.expired",
                "key.rotation_ended"
            ]
        );
        s.shutdown();
    });
    rt.block_on(async {
        let s = Service::open(Config::new(dir.path())).unwrap();
        assert_eq!(s.run_due().await, 0, "and not again after another restart");
        s.shutdown();
    });
}

#[test]
fn restart_keeps_keys_versions_verification_and_last_used() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let (id, secret, before) = rt.block_on(async {
        let s = Service::open(Config::new(dir.path())).unwrap();
        let (c, secret) = s.create(&Actor::Cli, named("a"), None).await.unwrap();
        let secret = secret.unwrap();
        let id = c.entry.state.id;
        let patch = KeyPatch {
            role: Some(Some("member".into())),
            ..Default::default()
        };
        s.update(&Actor::Cli, id, patch, None, None).await.unwrap();
        assert_eq!(
            s.verify(secret.expose(), &[], None, now()).code,
            VerifyCode::Valid
        );
        let before = s.snapshot();
        s.shutdown();
        (id, secret.expose().to_owned(), before)
    });
    rt.block_on(async {
        let s = Service::open(Config::new(dir.path())).unwrap();
        assert_eq!(s.snapshot(), before);
        let e = s.get(&Actor::Cli, id).unwrap();
        assert_eq!(e.state.version, 2);
        assert!(
            e.last_used_at().is_some(),
            "last_used_at persisted on shutdown"
        );
        assert_eq!(s.verify(&secret, &[], None, now()).code, VerifyCode::Valid);
        s.shutdown();
    });
}

#[test]
fn a_failed_last_used_flush_is_retried_and_does_not_fail_the_next_command() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let switch = FaultSwitch::new();
    let id = rt.block_on(async {
        let mut config = Config::new(dir.path());
        // Only the explicit flushes below run.
        config.last_used_flush = std::time::Duration::from_secs(3600);
        let keys = SigningKeys::load_or_create(&config.signing_key_path(), Timestamp(0)).unwrap();
        let log = Log::open_with(faulty_opener(config.log_path(), switch.clone()), keys).unwrap();
        let s = Service::open_with_log(config, log).unwrap();
        let (c, secret) = s.create(&Actor::Cli, named("a"), None).await.unwrap();
        let secret = secret.unwrap();
        assert_eq!(
            s.verify(secret.expose(), &[], None, now()).code,
            VerifyCode::Valid
        );
        switch.fail_now();
        s.flush_last_used();
        switch.heal();
        s.flush_last_used();
        // The failed flush did not leave the log refusing commands.
        s.create(&Actor::Cli, named("b"), None).await.unwrap();
        s.shutdown();
        c.entry.state.id
    });
    let s = Service::open(Config::new(dir.path())).unwrap();
    assert!(
        s.get(&Actor::Cli, id).unwrap().last_used_at().is_some(),
        "the stamp whose flush failed was written by the next one"
    );
    s.shutdown();
}

#[test]
fn concurrent_commands_share_write_transactions() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new(dir.path());
    let batches = record_batches(&mut config);
    let rt = runtime();
    rt.block_on(async {
        let s = Service::open(config).unwrap();
        let keys = (0..64).map(|i| named(&format!("k{i}"))).collect();
        for r in create_at_once(&s, keys).await {
            r.unwrap();
        }
        assert_eq!(s.head(), 64);
        s.shutdown();
    });
    let batches = batches.lock().unwrap();
    assert_eq!(batches.iter().map(|b| b.commands).sum::<usize>(), 64);
    assert!(
        batches.iter().any(|b| b.commands > 1),
        "no batch held more than one command"
    );
}

#[test]
fn a_failed_command_in_a_batch_does_not_fail_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    rt.block_on(async {
        let s = Service::open(Config::new(dir.path())).unwrap();
        let bad = CreateKey {
            name: String::new(),
            ..Default::default()
        };
        let (ok, err) = tokio::join!(
            s.create(&Actor::Cli, named("fine"), None),
            s.create(&Actor::Cli, bad, None)
        );
        assert!(ok.is_ok());
        assert!(matches!(err, Err(ServiceError::Invalid { ref field, .. }) if field == "name"));
        assert_eq!(s.head(), 1);
        s.shutdown();
    });
}

fn idem(key: &str, fingerprint: &str) -> Option<keyledger_service::Idempotency> {
    Some(keyledger_service::Idempotency {
        key: key.into(),
        fingerprint: fingerprint.into(),
    })
}

#[test]
fn the_same_idempotency_key_and_request_return_the_first_result_without_a_new_event() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    rt.block_on(async {
        let s = Service::open(Config::new(dir.path())).unwrap();
        let (first, secret) = s
            .create(&Actor::Cli, named("a"), idem("k1", "f1"))
            .await
            .unwrap();
        assert!(secret.is_some() && !first.replayed);
        let (again, secret) = s
            .create(&Actor::Cli, named("a"), idem("k1", "f1"))
            .await
            .unwrap();
        assert!(again.replayed);
        assert!(
            secret.is_none(),
            "secrets are never stored, so never replayed"
        );
        assert_eq!(again.entry.state, first.entry.state);
        assert_eq!(s.head(), 1);
        // Concurrent duplicates in one batch: still one event.
        let id = first.entry.state.id;
        let patch = || KeyPatch {
            name: Some("b".into()),
            ..Default::default()
        };
        let (x, y) = tokio::join!(
            s.update(&Actor::Cli, id, patch(), None, idem("k2", "f2")),
            s.update(&Actor::Cli, id, patch(), None, idem("k2", "f2"))
        );
        assert_eq!(x.unwrap().entry.state.version, 2);
        assert_eq!(y.unwrap().entry.state.version, 2);
        assert_eq!(s.head(), 2);
        s.shutdown();
    });
    // Remembered across a restart.
    rt.block_on(async {
        let s = Service::open(Config::new(dir.path())).unwrap();
        let (again, _) = s
            .create(&Actor::Cli, named("a"), idem("k1", "f1"))
            .await
            .unwrap();
        assert!(again.replayed);
        assert_eq!(
            again.entry.state.version, 1,
            "the state as the first call left it"
        );
        assert_eq!(s.head(), 2);
        s.shutdown();
    });
}

#[test]
fn an_idempotency_key_reused_for_another_request_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    rt.block_on(async {
        let s = Service::open(Config::new(dir.path())).unwrap();
        s.create(&Actor::Cli, named("a"), idem("k", "one"))
            .await
            .unwrap();
        let err = s
            .create(&Actor::Cli, named("b"), idem("k", "two"))
            .await
            .unwrap_err();
        assert_eq!(err, ServiceError::IdempotencyMismatch);
        assert_eq!(s.head(), 1);
        s.shutdown();
    });
}

/// A non-admin key must not take over a more powerful key of its account (reset it and
/// receive its secret, or change it).
#[test]
fn a_key_cannot_change_a_key_holding_scopes_it_lacks() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    rt.block_on(async {
        let s = Service::open(Config::new(dir.path())).unwrap();
        let admin = CreateKey {
            name: "root".into(),
            scopes: vec!["admin".into()],
            ..Default::default()
        };
        let (root, _) = s.create(&Actor::Cli, admin, None).await.unwrap();
        let writer = CreateKey {
            name: "w".into(),
            scopes: vec!["keys:write".into(), "keys:read".into()],
            ..Default::default()
        };
        let (w, _) = s.create(&Actor::Cli, writer, None).await.unwrap();
        let actor = Actor::Key(keyledger_service::Caller::from_state(&w.entry.state));
        let root_id = root.entry.state.id;
        let forbidden = |r: Result<_, ServiceError>| matches!(r, Err(ServiceError::Forbidden(_)));
        assert!(forbidden(
            s.reset(&actor, root_id, 0, None, None).await.map(drop)
        ));
        assert!(forbidden(
            s.delete(&actor, root_id, None, None).await.map(drop)
        ));
        let disable = KeyPatch {
            enabled: Some(false),
            ..Default::default()
        };
        assert!(forbidden(
            s.update(&actor, root_id, disable, None, None)
                .await
                .map(drop)
        ));
        // Keys within its own powers remain its to manage.
        let (mine, _) = s.create(&actor, named("mine"), None).await.unwrap();
        assert!(
            s.reset(&actor, mine.entry.state.id, 0, None, None)
                .await
                .is_ok()
        );
        assert_eq!(s.get(&Actor::Cli, root_id).unwrap().state.version, 1);
        s.shutdown();
    });
}

/// What a command is expected to get.
type Answer = dyn Fn(&ServiceError) -> bool;

/// A request authenticates when it arrives and commits later, after whatever the commands
/// queued before it did to its key: the key's standing and powers at commit are what count.
/// Otherwise a key revoked (or disabled, rotated away, narrowed) while its request waited could
/// still write, and the log would show it acting after its revocation.
#[test]
fn a_calling_key_is_judged_as_it_stands_at_commit_not_as_it_authenticated() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    rt.block_on(async {
        let s = Service::open(Config::new(dir.path())).unwrap();
        let writer = CreateKey {
            scopes: vec!["keys:read".into(), "keys:write".into()],
            ..named("w")
        };
        let (w, secret) = s.create(&Actor::Cli, writer, None).await.unwrap();
        let w = w.entry.state.id;
        let (target, _) = s.create(&Actor::Cli, named("t"), None).await.unwrap();
        let target = target.entry.state.id;
        let as_authenticated = |secret: &keyledger_core::Secret| {
            Actor::Key(s.authenticate(Some(secret.expose()), None).unwrap().0)
        };
        let rename = |name: &str| KeyPatch {
            name: Some(name.into()),
            ..Default::default()
        };
        let caller = as_authenticated(secret.as_ref().unwrap());
        s.update(&caller, target, rename("t1"), None, None)
            .await
            .unwrap();
        // Authenticated from 127.0.0.1, for the allowed IPs.
        let local = Some("127.0.0.1".parse().unwrap());
        let from_local = Actor::Key(
            s.authenticate(Some(secret.as_ref().unwrap().expose()), local)
                .unwrap()
                .0,
        );

        // What an admin changed on the key since its request authenticated, how to undo it,
        // and what the request gets at commit.
        let forbidden = |e: &ServiceError| matches!(e, ServiceError::Forbidden(_));
        let invalid = |code| move |e: &ServiceError| *e == ServiceError::CallerInvalid(code);
        // The first change sets an expiry this soon; each request waits until it has passed.
        let soon = Timestamp(now().millis() + 100);
        let changes: [(KeyPatch, KeyPatch, &Actor, &Answer); 4] = [
            (
                KeyPatch {
                    expires_at: Some(Some(soon)),
                    ..Default::default()
                },
                KeyPatch {
                    expires_at: Some(None),
                    ..Default::default()
                },
                &caller,
                &invalid(VerifyCode::Expired),
            ),
            (
                KeyPatch {
                    scopes: Some(vec!["keys:read".into()]),
                    ..Default::default()
                },
                KeyPatch {
                    scopes: Some(vec!["keys:read".into(), "keys:write".into()]),
                    ..Default::default()
                },
                &caller,
                &forbidden,
            ),
            (
                KeyPatch {
                    enabled: Some(false),
                    ..Default::default()
                },
                KeyPatch {
                    enabled: Some(true),
                    ..Default::default()
                },
                &caller,
                &invalid(VerifyCode::Disabled),
            ),
            (
                KeyPatch {
                    allowed_ips: Some(vec!["10.0.0.0/8".into()]),
                    ..Default::default()
                },
                KeyPatch {
                    allowed_ips: Some(vec![]),
                    ..Default::default()
                },
                &from_local,
                &invalid(VerifyCode::ForbiddenIp),
            ),
        ];
        for (change, undo, actor, answer) in changes {
            let what = format!("{change:?}");
            s.update(&Actor::Cli, w, change, None, None).await.unwrap();
            while now() <= soon {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            let r = s.update(actor, target, rename("t2"), None, None).await;
            assert!(r.as_ref().is_err_and(answer), "{what}: {r:?}");
            s.update(&Actor::Cli, w, undo, None, None).await.unwrap();
        }

        // Rotated with a grace period since: its secret may no longer change keys (403).
        let (_, new_secret) = s.reset(&Actor::Cli, w, 60, None, None).await.unwrap();
        let r = s.update(&caller, target, rename("t4"), None, None).await;
        assert!(matches!(r, Err(ServiceError::Forbidden(_))), "{r:?}");
        // Rotated again, without one: its secret is unknown (401 NOT_FOUND).
        let caller = as_authenticated(new_secret.as_ref().unwrap());
        s.reset(&Actor::Cli, w, 0, None, None).await.unwrap();
        let r = s.delete(&caller, target, None, None).await;
        assert_eq!(
            r.unwrap_err(),
            ServiceError::CallerInvalid(VerifyCode::NotFound)
        );

        // Revoked since: 401 REVOKED, also for a create.
        let (_, last_secret) = s.reset(&Actor::Cli, w, 0, None, None).await.unwrap();
        let caller = as_authenticated(last_secret.as_ref().unwrap());
        s.delete(&Actor::Cli, w, None, None).await.unwrap();
        let r = s.create(&caller, named("after"), None).await.map(drop);
        assert_eq!(
            r.unwrap_err(),
            ServiceError::CallerInvalid(VerifyCode::Revoked)
        );

        let t = s.get(&Actor::Cli, target).unwrap();
        assert_eq!((t.state.name.as_str(), t.state.version), ("t1", 2));
        assert_eq!(
            s.key_count(),
            2,
            "w (revoked) and the target: nothing was created"
        );
        s.shutdown();
    });
}

/// An idempotent retry gets its first answer while its key still authenticates at commit (a
/// key that reset itself with a grace period retries with the old secret), and 401 once not.
#[test]
fn a_retry_gets_its_first_answer_only_while_its_key_still_authenticates() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    rt.block_on(async {
        let s = Service::open(Config::new(dir.path())).unwrap();
        let writer = CreateKey {
            scopes: vec!["keys:write".into()],
            ..named("w")
        };
        let (w, secret) = s.create(&Actor::Cli, writer, None).await.unwrap();
        let w = w.entry.state.id;
        let secret = secret.unwrap();
        let caller = Actor::Key(s.authenticate(Some(secret.expose()), None).unwrap().0);
        let reset = || s.reset(&caller, w, 60, None, idem("r1", "f1"));

        let (first, new_secret) = reset().await.unwrap();
        assert!(new_secret.is_some() && !first.replayed);
        // The same request again, by the old secret, now in its grace period.
        let (again, no_secret) = reset().await.unwrap();
        assert!(again.replayed && no_secret.is_none());
        assert_eq!(again.entry.state.version, first.entry.state.version);

        // Revoked: a revoked key keeps no grace secret, so the old one is unknown, as it would
        // be to authentication.
        s.delete(&Actor::Cli, w, None, None).await.unwrap();
        let r = reset().await.map(drop);
        assert_eq!(
            r.unwrap_err(),
            ServiceError::CallerInvalid(VerifyCode::NotFound)
        );
        s.shutdown();
    });
}

#[test]
fn a_filtered_events_page_examines_at_most_ten_thousand_events_and_paging_misses_none() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    rt.block_on(async {
        let s = Service::open(Config::new(dir.path())).unwrap();
        // Seq 1 and seq 12,002 are in account "a"; the 12,000 between are not.
        s.create(&Actor::Cli, in_account("first", "a"), None)
            .await
            .unwrap();
        for chunk in 0..48 {
            let keys = (0..250).map(|i| in_account(&format!("b{chunk}-{i}"), "b"));
            for r in create_at_once(&s, keys.collect()).await {
                r.unwrap();
            }
        }
        s.create(&Actor::Cli, in_account("last", "a"), None)
            .await
            .unwrap();
        assert_eq!(s.head(), 12_002);

        let page = |after: u64| {
            s.events(
                &Actor::Cli,
                keyledger_service::EventQuery {
                    after,
                    limit: 50,
                    account: Some("a".into()),
                    event_type: None,
                },
            )
            .unwrap()
        };
        // The first page stops after 10,000 examined events, short of its limit.
        let (events, next) = page(0);
        assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), [1]);
        assert_eq!(next, 10_000);
        // Following `next_after` until it comes back unchanged yields every match once.
        let (mut seen, mut after) = (vec![1], next);
        loop {
            let (events, next) = page(after);
            seen.extend(events.iter().map(|e| e.seq));
            if next == after {
                break;
            }
            after = next;
        }
        assert_eq!(seen, [1, 12_002]);
        assert_eq!(after, 12_002);
        s.shutdown();
    });
}

#[test]
fn a_revocation_earlier_in_the_same_batch_makes_room_under_the_key_limit() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new(dir.path());
    config.max_keys_per_account = Some(2);
    // While `hold` is set, the writer waits in its batch callback, so the next commands queue
    // up and are decided together in one batch.
    let hold = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (entered_tx, entered) = std::sync::mpsc::channel::<()>();
    let (release, release_rx) = std::sync::mpsc::channel::<()>();
    let batches: Arc<Mutex<Vec<BatchStats>>> = Arc::default();
    {
        let (hold, sink) = (hold.clone(), batches.clone());
        let (entered_tx, release_rx) = (Mutex::new(entered_tx), Mutex::new(release_rx));
        config.on_batch = Some(Arc::new(move |b| {
            sink.lock().unwrap().push(b);
            if hold.swap(false, std::sync::atomic::Ordering::SeqCst) {
                entered_tx.lock().unwrap().send(()).unwrap();
                release_rx.lock().unwrap().recv().unwrap();
            }
        }));
    }
    let rt = runtime();
    rt.block_on(async {
        let s = Service::open(config).unwrap();
        let (first, _) = s
            .create(&Actor::Cli, in_account("k1", "a"), None)
            .await
            .unwrap();
        s.create(&Actor::Cli, in_account("k2", "a"), None)
            .await
            .unwrap();
        hold.store(true, std::sync::atomic::Ordering::SeqCst);
        let held = tokio::spawn({
            let s = s.clone();
            async move { s.create(&Actor::Cli, in_account("other", "b"), None).await }
        });
        tokio::task::spawn_blocking(move || entered.recv().unwrap())
            .await
            .unwrap();
        let batches_before = batches.lock().unwrap().len();
        // `join!` polls in order: the revocation is queued, then the creates, then the writer
        // is let go.
        let (revoked, created, refused, ()) = tokio::join!(
            s.delete(&Actor::Cli, first.entry.state.id, None, None),
            s.create(&Actor::Cli, in_account("k3", "a"), None),
            s.create(&Actor::Cli, in_account("k4", "a"), None),
            async { release.send(()).unwrap() },
        );
        held.await.unwrap().unwrap();
        revoked.unwrap();
        created.expect("the revocation before it in the batch made room");
        match refused {
            Err(ServiceError::KeyLimit { count, limit, .. }) => assert_eq!((count, limit), (2, 2)),
            other => panic!("a third live key was not refused: {:?}", other.map(drop)),
        }
        let batches = batches.lock().unwrap();
        assert_eq!(batches.len(), batches_before + 1);
        assert_eq!(
            batches[batches_before].commands, 2,
            "the revocation and the create were not one batch"
        );
        s.shutdown();
    });
}

#[test]
fn concurrent_creates_in_one_account_stop_exactly_at_its_key_limit() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new(dir.path());
    config.max_keys_per_account = Some(10);
    let batches = record_batches(&mut config);
    let rt = runtime();
    rt.block_on(async {
        let s = Service::open(config).unwrap();
        let keys = (0..64).map(|i| in_account(&format!("k{i}"), "a")).collect();
        let mut refused = 0;
        for r in create_at_once(&s, keys).await {
            match r {
                Ok(()) => {}
                Err(ServiceError::KeyLimit {
                    account,
                    count,
                    limit,
                }) => {
                    assert_eq!((account.as_str(), count, limit), ("a", 10, 10));
                    refused += 1;
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(refused, 54);
        assert_eq!(s.head(), 10);
        s.shutdown();
    });
    assert!(
        batches.lock().unwrap().iter().any(|b| b.commands > 1),
        "no batch held more than one create: the in-batch count went untested"
    );
}
