use super::*;
use crate::log::REPLAY_CHUNK;
use keyledger_core::event::{Deleted, Updated};
use keyledger_core::{Event, Timestamp};
use redb::ReadableTable;
use std::sync::{Arc, Barrier};

fn open(dir: &tempfile::TempDir) -> Log {
    Log::open(
        &dir.path().join("log.redb"),
        SigningKeys::ephemeral([3; 32], Timestamp(0)),
    )
    .unwrap()
}

fn rename(n: u32) -> Event {
    Event::Updated(Updated {
        name: Some(format!("name {n}")),
        ..Default::default()
    })
}

fn req(key: Uuid, expected: u64, events: Vec<Event>) -> AppendRequest {
    AppendRequest {
        key_id: key,
        account: "default".into(),
        expected_version: expected,
        actor: "cli".into(),
        occurred_at: Timestamp(1_800_000_000_000),
        events: events.into_iter().map(|e| (Uuid::now_v7(), e)).collect(),
        idempotency: None,
    }
}

#[test]
fn appends_get_contiguous_seqs_and_chained_hashes() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(&dir);
    let key = Uuid::now_v7();
    let a = log
        .append(req(key, 0, vec![rename(1), rename(2)]), &mut NoProjection)
        .unwrap()
        .unwrap();
    let b = log
        .append(req(key, 2, vec![rename(3)]), &mut NoProjection)
        .unwrap()
        .unwrap();
    let seqs: Vec<u64> = a.iter().chain(&b).map(|e| e.seq).collect();
    assert_eq!(seqs, [1, 2, 3]);
    assert_eq!(a[0].prev_hash, GENESIS_HASH);
    assert_eq!(a[1].prev_hash, a[0].hash);
    assert_eq!(b[0].prev_hash, a[1].hash);
    assert_eq!(b[0].version, 3);
    assert_eq!(log.head().unwrap(), (3, b[0].hash.clone()));
    assert_eq!(log.stream(key).unwrap(), [a, b].concat());
    let verifier = log.signing_keys().verifier();
    assert_eq!(audit::verify_log(&log, &verifier, |_| {}), Ok(3));
}

#[test]
fn two_concurrent_appends_to_one_stream_exactly_one_wins() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(&dir);
    let key = Uuid::now_v7();
    log.append(req(key, 0, vec![rename(0)]), &mut NoProjection)
        .unwrap()
        .unwrap();
    let barrier = Arc::new(Barrier::new(2));
    let handles: Vec<_> = (0..2)
        .map(|i| {
            let (log, barrier) = (log.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                log.append(req(key, 1, vec![rename(i)]), &mut NoProjection)
                    .unwrap()
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1);
    assert!(results.iter().any(|r| matches!(
        r,
        Err(AppendError::Conflict {
            expected: 1,
            actual: 2,
            ..
        })
    )));
    assert_eq!(log.stream_version(key).unwrap(), 2);
}

#[test]
fn two_concurrent_creates_of_the_same_id_one_wins() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(&dir);
    let key = Uuid::now_v7();
    let barrier = Arc::new(Barrier::new(2));
    let handles: Vec<_> = (0..2)
        .map(|i| {
            let (log, barrier) = (log.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                log.append(req(key, 0, vec![rename(i)]), &mut NoProjection)
                    .unwrap()
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1);
    assert_eq!(log.head().unwrap().0, 1);
}

#[test]
fn a_retried_append_with_the_same_event_ids_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(&dir);
    let key = Uuid::now_v7();
    let r = req(key, 0, vec![rename(1), Event::Deleted(Deleted {})]);
    let first = log.append(r.clone(), &mut NoProjection).unwrap().unwrap();
    let again = log.append(r, &mut NoProjection).unwrap().unwrap();
    assert_eq!(first, again);
    assert_eq!(log.head().unwrap().0, 2);
}

#[test]
fn a_batch_commits_the_matching_requests_and_refuses_the_stale_one() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(&dir);
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    let results = log
        .append_batch(
            &[
                req(a, 0, vec![rename(1)]),
                req(b, 5, vec![rename(2)]),
                req(a, 1, vec![rename(3)]),
            ],
            &mut NoProjection,
        )
        .unwrap();
    assert!(results[0].is_ok());
    assert!(matches!(results[1], Err(AppendError::Conflict { .. })));
    assert_eq!(results[2].as_ref().unwrap()[0].seq, 2);
    assert_eq!(log.head().unwrap().0, 2);
}

#[test]
fn the_log_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let key = Uuid::now_v7();
    let head = {
        let log = open(&dir);
        log.append(req(key, 0, vec![rename(1)]), &mut NoProjection)
            .unwrap()
            .unwrap();
        log.head().unwrap()
    };
    let log = open(&dir);
    assert_eq!(log.head().unwrap(), head);
    assert_eq!(log.read(0, 10).unwrap().len(), 1);
}

#[test]
fn audit_names_the_event_signed_by_a_foreign_key() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(&dir);
    let key = Uuid::now_v7();
    log.append(req(key, 0, vec![rename(1), rename(2)]), &mut NoProjection)
        .unwrap()
        .unwrap();
    let foreign = SigningKeys::ephemeral([9; 32], Timestamp(0)).verifier();
    let err = audit::verify_log(&log, &foreign, |_| {}).unwrap_err();
    assert!(
        matches!(
            err,
            audit::AuditError::Failed(audit::AuditFailure { seq: 1, .. })
        ),
        "{err}"
    );
}

#[test]
fn raw_reads_carry_the_stored_bytes_and_the_members_a_publisher_needs() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(&dir);
    let key = Uuid::now_v7();
    log.append(req(key, 0, vec![rename(1), rename(2)]), &mut NoProjection)
        .unwrap()
        .unwrap();
    let decoded = log.read(0, 10).unwrap();
    let raw = log.read_raw(0, 10).unwrap();
    assert_eq!(raw.len(), 2);
    for (r, e) in raw.iter().zip(&decoded) {
        assert_eq!(r.bytes, serde_json::to_vec(e).unwrap());
        assert_eq!((r.seq, r.id, r.occurred_at), (e.seq, e.id, e.occurred_at));
        assert_eq!(r.subject, e.subject());
        assert_eq!((&r.hash, &r.signature), (&e.hash, &e.signature));
    }
    assert_eq!(log.read_raw(1, 10).unwrap().len(), 1);
    assert_eq!(log.read_raw(0, 1).unwrap()[0].seq, 1);
}

/// Records what the log hands its projector.
#[derive(Default)]
struct Recording(Vec<u64>);

impl Projector for Recording {
    fn apply(
        &mut self,
        _: &redb::WriteTransaction,
        envelopes: &[&Envelope],
    ) -> Result<(), StoreError> {
        self.0.extend(envelopes.iter().map(|e| e.seq));
        Ok(())
    }
}

#[test]
fn a_batch_signed_on_several_threads_is_chained_and_signed_in_log_order() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(&dir);
    let earlier = req(Uuid::now_v7(), 0, vec![rename(0)]);
    let original = log
        .append(earlier.clone(), &mut NoProjection)
        .unwrap()
        .unwrap();
    // 30 new streams (every third with two events), a stale version and a retry of `earlier`:
    // well above the size from which signatures are spread over threads.
    let mut batch: Vec<AppendRequest> = (0..30u32)
        .map(|i| {
            let events = if i % 3 == 0 {
                vec![rename(i), rename(i + 100)]
            } else {
                vec![rename(i)]
            };
            req(Uuid::now_v7(), 0, events)
        })
        .collect();
    batch.insert(7, req(earlier.key_id, 0, vec![rename(999)]));
    batch.insert(20, earlier);
    let mut projector = Recording::default();
    let results = log.append_batch(&batch, &mut projector).unwrap();

    assert!(matches!(
        results[7],
        Err(AppendError::Conflict { actual: 1, .. })
    ));
    assert_eq!(
        results[20].as_ref().unwrap(),
        &original,
        "a retry returns the stored events"
    );
    let new: Vec<&Envelope> = results
        .iter()
        .enumerate()
        .filter(|(i, _)| ![7, 20].contains(i))
        .flat_map(|(_, r)| r.as_ref().unwrap())
        .collect();
    let seqs: Vec<u64> = new.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (2..=41).collect::<Vec<_>>());
    assert_eq!(
        projector.0, seqs,
        "the projector sees each new event once, in order"
    );
    let stored = log.read(1, 100).unwrap();
    assert_eq!(
        stored.iter().collect::<Vec<_>>(),
        new,
        "returned = stored, signatures included"
    );
    let verifier = log.signing_keys().verifier();
    assert_eq!(audit::verify_log(&log, &verifier, |_| {}), Ok(41));
}

/// Appends `n` events as renames of keys of 100 events each.
fn append_renames(log: &Log, n: u32) {
    let requests: Vec<AppendRequest> = (0..n.div_ceil(100))
        .map(|k| {
            let events = (0..100.min(n - k * 100))
                .map(|i| rename(k * 100 + i))
                .collect();
            req(Uuid::now_v7(), 0, events)
        })
        .collect();
    for chunk in requests.chunks(20) {
        for r in log.append_batch(chunk, &mut NoProjection).unwrap() {
            r.unwrap();
        }
    }
}

#[test]
fn replay_passes_every_event_after_a_seq_once_and_in_order_across_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(&dir);
    let n = 2 * REPLAY_CHUNK as u32 + 1_234;
    append_renames(&log, n);
    let expected: Vec<ReplayEvent> = log
        .read(0, usize::MAX)
        .unwrap()
        .into_iter()
        .map(ReplayEvent::from)
        .collect();
    for after in [0, 1, REPLAY_CHUNK - 1, REPLAY_CHUNK + 7, u64::from(n)] {
        let mut seen = Vec::new();
        let last = log
            .replay(after, |ev| {
                seen.push(ev);
                Ok(())
            })
            .unwrap();
        assert_eq!(last, u64::from(n));
        assert_eq!(seen, expected[after as usize..], "after {after}");
    }
}

#[test]
fn replay_stops_at_the_first_error_of_its_callback_and_returns_it() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(&dir);
    append_renames(&log, 3 * REPLAY_CHUNK as u32);
    let mut calls = 0;
    let err = log
        .replay(0, |ev| {
            calls += 1;
            if ev.seq == REPLAY_CHUNK + 5 {
                return Err(StoreError::Storage("stop".into()));
            }
            Ok(())
        })
        .unwrap_err();
    assert_eq!(err, StoreError::Storage("stop".into()));
    assert_eq!(calls, REPLAY_CHUNK + 5);
}

/// Replays read the replay rows; a missing one is an error, never a skipped event.
#[test]
fn replay_reports_a_gap_in_the_log_instead_of_skipping_it() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(&dir);
    append_renames(&log, 2 * REPLAY_CHUNK as u32 + 10);
    let txn = log.database().unwrap().begin_write().unwrap();
    txn.open_table(crate::log::REPLAY)
        .unwrap()
        .remove(REPLAY_CHUNK + 3)
        .unwrap();
    txn.commit().unwrap();
    let err = log.replay(0, |_| Ok(())).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
}

/// What every event decodes to from its signed JSON.
fn replayed_from_json(log: &Log) -> Vec<ReplayEvent> {
    log.read_raw(0, usize::MAX)
        .unwrap()
        .iter()
        .map(|raw| ReplayEvent::decode(&raw.bytes).unwrap())
        .collect()
}

fn replayed(log: &Log) -> Vec<ReplayEvent> {
    let mut out = Vec::new();
    log.replay(0, |ev| {
        out.push(ev);
        Ok(())
    })
    .unwrap();
    out
}

#[test]
fn a_log_written_without_replay_rows_gets_them_when_it_is_opened() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(&dir);
    append_renames(&log, REPLAY_CHUNK as u32 + 10);
    // As a log written before the `replay` table existed, except for one row.
    let txn = log.database().unwrap().begin_write().unwrap();
    let kept = txn
        .open_table(crate::log::REPLAY)
        .unwrap()
        .get(7)
        .unwrap()
        .unwrap()
        .value()
        .to_vec();
    txn.delete_table(crate::log::REPLAY).unwrap();
    txn.open_table(crate::log::REPLAY)
        .unwrap()
        .insert(7, kept.as_slice())
        .unwrap();
    txn.commit().unwrap();
    log.close();
    drop(log);

    let log = open(&dir);
    assert_eq!(replayed(&log), replayed_from_json(&log));
    assert_eq!(replayed(&log).len() as u64, REPLAY_CHUNK + 10);
    let verifier = log.signing_keys().verifier();
    assert_eq!(
        audit::verify_log(&log, &verifier, |_| {}),
        Ok(REPLAY_CHUNK + 10)
    );
}

#[test]
fn replay_rows_hold_what_the_signed_events_hold() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(&dir);
    append_renames(&log, 50);
    assert_eq!(replayed(&log), replayed_from_json(&log));
}

#[test]
fn audit_names_a_replay_row_that_differs_from_its_signed_event() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(&dir);
    append_renames(&log, 5);
    let txn = log.database().unwrap().begin_write().unwrap();
    {
        let mut rows = txn.open_table(crate::log::REPLAY).unwrap();
        let other = rows.get(2).unwrap().unwrap().value().to_vec();
        rows.insert(4, other.as_slice()).unwrap();
    }
    txn.commit().unwrap();
    let verifier = log.signing_keys().verifier();
    let failure = audit::verify_log(&log, &verifier, |_| {}).unwrap_err();
    assert_eq!(
        failure.to_string(),
        "seq 4: the replay row differs from the signed event"
    );
}

#[test]
fn a_request_repeated_within_one_batch_gets_the_first_ones_events_and_writes_nothing_more() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(&dir);
    let first = req(Uuid::now_v7(), 0, vec![rename(1), rename(2)]);
    let mut other_key = first.clone();
    other_key.key_id = Uuid::now_v7();
    let batch = vec![
        first.clone(),
        req(Uuid::now_v7(), 0, vec![rename(3)]),
        first,
        other_key,
    ];
    let results = log.append_batch(&batch, &mut NoProjection).unwrap();

    let original = results[0].as_ref().unwrap();
    assert_eq!(results[2].as_ref().unwrap(), original, "signed, as stored");
    assert!(matches!(results[3], Err(AppendError::IdReused { .. })));
    assert_eq!(log.head().unwrap().0, 3);
    assert_eq!(&log.read(0, 10).unwrap()[..2], &original[..]);
}

#[test]
fn stream_count_counts_keys_not_events() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(&dir);
    assert_eq!(log.stream_count().unwrap(), 0);
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    log.append(req(a, 0, vec![rename(1), rename(2)]), &mut NoProjection)
        .unwrap()
        .unwrap();
    log.append(req(b, 0, vec![rename(3)]), &mut NoProjection)
        .unwrap()
        .unwrap();
    log.append(req(a, 2, vec![rename(4)]), &mut NoProjection)
        .unwrap()
        .unwrap();
    assert_eq!(log.head().unwrap().0, 4);
    assert_eq!(log.stream_count().unwrap(), 2);
}

#[test]
fn a_failed_cursor_write_does_not_fail_the_next_append() {
    let dir = tempfile::tempdir().unwrap();
    let switch = faults::FaultSwitch::new();
    let log = Log::open_with(
        faults::faulty_opener(dir.path().join("log.redb"), switch.clone()),
        SigningKeys::ephemeral([3; 32], Timestamp(0)),
    )
    .unwrap();
    switch.fail_now();
    assert!(log.set_cursor("nats", 7).is_err());
    switch.heal();
    // As the command writer does before each batch: reopen when no handle is open (the reopen
    // inside set_cursor failed while the fault lasted). What must not be left behind is the
    // handle redb latched as failed, which would fail this append.
    if log.database().is_err() {
        log.reopen().unwrap();
    }
    let key = Uuid::now_v7();
    log.append(req(key, 0, vec![rename(1)]), &mut NoProjection)
        .expect("no handle latched as failed is left behind")
        .unwrap();
    log.set_cursor("nats", 1).unwrap();
    assert_eq!(log.cursor("nats").unwrap(), 1);
}

#[test]
fn a_closed_log_is_not_reopened_by_a_write_beside_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(&dir);
    log.close();
    assert!(log.set_cursor("nats", 1).is_err());
    assert!(log.reopen().is_err());
    assert!(log.database().is_err(), "still closed");
    // The file is free for another opener (e.g. a restarted service in the same process).
    let again = open(&dir);
    again.set_cursor("nats", 2).unwrap();
    assert_eq!(again.cursor("nats").unwrap(), 2);
}
