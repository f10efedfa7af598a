//! The persisted key table: `key id -> KeyState` in the log's redb file, updated by
//! [`KeyTableProjector`] inside each append's write transaction, with its checkpoint (the last
//! applied seq) in the same transaction. It can therefore never disagree with the log, unless
//! the file is edited, which [`verify_table`] (`audit verify`) finds.

use crate::ProjectionError;
use keyledger_core::{KeyState, evolve, evolve_in_place, evolve_owned};
use keyledger_store::{Envelope, Log, Projector, StoreError};
use redb::{ReadableTable, TableDefinition, WriteTransaction};
use uuid::Uuid;

pub(crate) const KEYS: TableDefinition<u128, &[u8]> = TableDefinition::new("proj_keys");
pub(crate) const LAST_USED: TableDefinition<u128, i64> = TableDefinition::new("proj_last_used");
const META: TableDefinition<&str, u64> = TableDefinition::new("proj_meta");
const CHECKPOINT: &str = "keys_checkpoint";
const FORMAT_KEY: &str = "keys_format";
/// Bump when the stored `KeyState` shape or encoding changes: the table is then rebuilt from the
/// log at the next start. 1: JSON; 2: MessagePack (see [`encode_state`]).
const FORMAT: u64 = 2;

fn storage(e: impl ToString) -> StoreError {
    StoreError::Storage(e.to_string())
}

/// The table's checkpoint and format as `meta` records them (0 where unset).
fn checkpoint_and_format(
    meta: &impl ReadableTable<&'static str, u64>,
) -> Result<(u64, u64), StoreError> {
    let get = |name| {
        meta.get(name)
            .map(|v| v.map_or(0, |v| v.value()))
            .map_err(storage)
    };
    Ok((get(CHECKPOINT)?, get(FORMAT_KEY)?))
}

/// Folds each appended event into the persisted key table.
#[derive(Debug, Default)]
pub struct KeyTableProjector;

impl Projector for KeyTableProjector {
    fn apply(&mut self, txn: &WriteTransaction, envs: &[&Envelope]) -> Result<(), StoreError> {
        let mut table = txn.open_table(KEYS).map_err(storage)?;
        for env in envs {
            let key = env.key_id.as_u128();
            let current = match table.get(key).map_err(storage)? {
                Some(bytes) => Some(decode_state(bytes.value())?),
                None => None,
            };
            let next = evolve(current, env.key_id, env.occurred_at, &env.event);
            table
                .insert(key, encode_state(&next)?.as_slice())
                .map_err(storage)?;
        }
        Ok(())
    }

    fn finish(&mut self, txn: &WriteTransaction, head: u64) -> Result<(), StoreError> {
        let mut meta = txn.open_table(META).map_err(storage)?;
        meta.insert(CHECKPOINT, head).map_err(storage)?;
        meta.insert(FORMAT_KEY, FORMAT).map_err(storage)?;
        Ok(())
    }
}

/// A key's state as the table stores it: MessagePack, fields by position, timestamps as
/// milliseconds and hashes as raw bytes (their binary serde forms). Under half the JSON's
/// size; start-up, which decodes every state, got 1.4–2.2× faster with it. The log's JSON
/// stays the signed source of truth; this table can always be rebuilt from it.
fn encode_state(state: &KeyState) -> Result<Vec<u8>, StoreError> {
    let mut out = Vec::new();
    encode_state_into(&mut out, state)?;
    Ok(out)
}

/// [`encode_state`], appended to `out`.
fn encode_state_into(out: &mut Vec<u8>, state: &KeyState) -> Result<(), StoreError> {
    rmp_serde::encode::write(out, state).map_err(|e| StoreError::Encode(format!("key table: {e}")))
}

fn decode_state(bytes: &[u8]) -> Result<KeyState, StoreError> {
    rmp_serde::from_slice(bytes).map_err(|e| StoreError::Corrupt(format!("key table: {e}")))
}

/// Brings the persisted table up to the log's head: a full rebuild when it is missing, of an
/// older format, or `rebuild` is set; otherwise only the events after its checkpoint.
/// `progress(done, total)` is called as events are applied. Returns the number applied.
pub fn catch_up(
    log: &Log,
    rebuild: bool,
    mut progress: impl FnMut(u64, u64),
) -> Result<u64, ProjectionError> {
    let db = log.database()?;
    let (head, _) = log.head()?;
    let (checkpoint, format) = {
        let txn = db.begin_write().map_err(storage)?;
        let out = checkpoint_and_format(&txn.open_table(META).map_err(storage)?)?;
        txn.open_table(KEYS).map_err(storage)?;
        txn.open_table(LAST_USED).map_err(storage)?;
        txn.commit().map_err(storage)?;
        out
    };
    if rebuild || format != FORMAT || checkpoint > head || (checkpoint == 0 && head > 0) {
        return rebuild_all(log, head, progress);
    }
    let from = checkpoint;
    if from == head {
        return Ok(0);
    }
    // Apply in chunks so that one transaction never holds the whole log.
    const CHUNK: usize = 50_000;
    let total = head - from;
    let mut applied = 0u64;
    let mut after = from;
    loop {
        let batch = log.read(after, CHUNK)?;
        let Some(last) = batch.last().map(|e| e.seq) else {
            break;
        };
        let txn = db.begin_write().map_err(storage)?;
        let mut p = KeyTableProjector;
        p.apply(&txn, &batch.iter().collect::<Vec<_>>())?;
        p.finish(&txn, last)?;
        txn.commit().map_err(storage)?;
        applied += batch.len() as u64;
        progress(applied, total);
        after = last;
    }
    Ok(applied)
}

/// Every key's state folded from the whole log: states, each key's index among them, the
/// number of events applied and the last seq.
struct Folded {
    slots: std::collections::HashMap<Uuid, usize>,
    states: Vec<KeyState>,
    applied: u64,
    last: u64,
}

/// Folds the whole log in memory. States live in a Vec and the map holds only their index:
/// growing the map and sorting by id then move 20-byte pairs, not whole states. Each event is
/// applied where its state lies.
fn fold_states(
    log: &Log,
    head: u64,
    mut progress: impl FnMut(u64, u64),
) -> Result<Folded, ProjectionError> {
    use std::collections::hash_map::Entry;
    // Sized up front: growing them by doubling cost ~10 % of a 1M-key rebuild (copies, and the
    // kernel zeroing each fresh allocation).
    let keys = usize::try_from(log.stream_count()?).unwrap_or(0);
    let mut slots: std::collections::HashMap<Uuid, usize> =
        std::collections::HashMap::with_capacity(keys);
    let mut states: Vec<KeyState> = Vec::with_capacity(keys);
    let mut applied = 0u64;
    let last = log.replay(0, |ev| {
        match slots.entry(ev.key_id) {
            Entry::Occupied(slot) => {
                evolve_in_place(&mut states[*slot.get()], ev.occurred_at, ev.event)
            }
            Entry::Vacant(slot) => {
                slot.insert(states.len());
                states.push(evolve_owned(None, ev.key_id, ev.occurred_at, ev.event));
            }
        }
        applied += 1;
        if applied.is_multiple_of(65_536) {
            progress(applied, head);
        }
        Ok(())
    })?;
    Ok(Folded {
        slots,
        states,
        applied,
        last,
    })
}

/// Folds the whole log in memory, then writes the table in one transaction, in key order.
/// Much faster than applying event by event: each key is encoded and written once.
fn rebuild_all(
    log: &Log,
    head: u64,
    mut progress: impl FnMut(u64, u64),
) -> Result<u64, ProjectionError> {
    let Folded {
        slots,
        states,
        applied,
        last,
    } = fold_states(log, head, &mut progress)?;
    let mut ordered: Vec<(Uuid, usize)> = slots.into_iter().collect();
    ordered.sort_unstable_by_key(|(id, _)| *id);
    let txn = log.database()?.begin_write().map_err(storage)?;
    txn.delete_table(KEYS).map_err(storage)?;
    write_in_order(&txn, &states, &ordered)?;
    KeyTableProjector.finish(&txn, last)?;
    txn.commit().map_err(storage)?;
    progress(applied, head);
    Ok(applied)
}

/// States per message from [`write_in_order`]'s encoding thread.
const ENCODE_CHUNK: usize = 4096;

/// Writes `states` into the key table in `ordered`'s order. A second thread encodes while this
/// one inserts: redb takes one writer, so encoding would otherwise leave a core idle.
fn write_in_order(
    txn: &WriteTransaction,
    states: &[KeyState],
    ordered: &[(Uuid, usize)],
) -> Result<(), StoreError> {
    /// One chunk's states, encoded back to back, with each one's end.
    type Encoded = Result<(Vec<u8>, Vec<usize>), StoreError>;
    let mut table = txn.open_table(KEYS).map_err(storage)?;
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Encoded>(4);
        scope.spawn(move || {
            for chunk in ordered.chunks(ENCODE_CHUNK) {
                let mut buf = Vec::with_capacity(chunk.len() * 192);
                let mut ends = Vec::with_capacity(chunk.len());
                let encoded = chunk
                    .iter()
                    .try_for_each(|(_, i)| {
                        encode_state_into(&mut buf, &states[*i])?;
                        ends.push(buf.len());
                        Ok(())
                    })
                    .map(|()| (buf, ends));
                let failed = encoded.is_err();
                // A closed channel means the inserting side stopped (an error): stop too.
                if tx.send(encoded).is_err() || failed {
                    break;
                }
            }
        });
        for (chunk, encoded) in ordered.chunks(ENCODE_CHUNK).zip(rx) {
            let (buf, ends) = encoded?;
            let mut start = 0;
            for ((id, _), end) in chunk.iter().zip(ends) {
                table
                    .insert(id.as_u128(), &buf[start..end])
                    .map_err(storage)?;
                start = end;
            }
        }
        Ok(())
    })
}

/// Checks that the persisted key table is what folding the log gives: every key, every field,
/// at the log's head. The service trusts the table at start-up, and it is not signed, so an
/// edit of it (a key's scopes or secret hash, say) is found here. Fold the log only after its
/// replay rows were checked against their signed events (`audit::verify_log`): the fold reads
/// them. Returns the number of keys. `last_used_at` is not in the log, so not checked.
pub fn verify_table(log: &Log, progress: impl FnMut(u64, u64)) -> Result<u64, ProjectionError> {
    let mismatch = |what: String| ProjectionError::TableMismatch(what);
    let (head, _) = log.head()?;
    let folded = fold_states(log, head, progress)?;
    let txn = log.database()?.begin_read().map_err(storage)?;
    let (checkpoint, format) = match txn.open_table(META) {
        Ok(meta) => checkpoint_and_format(&meta)?,
        Err(redb::TableError::TableDoesNotExist(_)) => (0, FORMAT),
        Err(e) => return Err(storage(e).into()),
    };
    if format != FORMAT {
        return Err(mismatch(format!(
            "stored in format {format}, which this version does not read (it reads {FORMAT}); \
             start the service once to rebuild it"
        )));
    }
    if checkpoint != head {
        return Err(mismatch(format!(
            "its checkpoint is seq {checkpoint}, the log's head {head}"
        )));
    }
    let keys = match txn.open_table(KEYS) {
        Ok(keys) => Some(keys),
        Err(redb::TableError::TableDoesNotExist(_)) => None,
        Err(e) => return Err(storage(e).into()),
    };
    let mut rows = 0u64;
    let range = keys
        .as_ref()
        .map(|k| k.iter())
        .transpose()
        .map_err(storage)?;
    for item in range.into_iter().flatten() {
        let (id, bytes) = item.map_err(storage)?;
        let id = Uuid::from_u128(id.value());
        let stored = decode_state(bytes.value())
            .map_err(|e| mismatch(format!("key {id}: unreadable ({e})")))?;
        let Some(&slot) = folded.slots.get(&id) else {
            return Err(mismatch(format!("key {id} is not in the log")));
        };
        if let Some(field) = first_difference(&stored, &folded.states[slot]) {
            return Err(mismatch(format!(
                "key {id}: `{field}` differs from the log"
            )));
        }
        rows += 1;
    }
    if rows != folded.states.len() as u64 {
        let missing = folded
            .states
            .iter()
            .find(|s| {
                keys.as_ref()
                    .is_none_or(|k| k.get(s.id.as_u128()).ok().flatten().is_none())
            })
            .map_or_else(|| "?".to_owned(), |s| s.id.to_string());
        return Err(mismatch(format!(
            "{} keys of the log are missing from it, the first {missing}",
            folded.states.len() as u64 - rows
        )));
    }
    Ok(rows)
}

/// The first field in which two states differ, by name.
fn first_difference(a: &KeyState, b: &KeyState) -> Option<String> {
    if a == b {
        return None;
    }
    let (serde_json::Value::Object(a), serde_json::Value::Object(b)) = (
        serde_json::to_value(a).unwrap_or_default(),
        serde_json::to_value(b).unwrap_or_default(),
    ) else {
        return Some("state".into());
    };
    a.iter()
        .find(|(k, v)| b.get(*k) != Some(*v))
        .map(|(k, _)| k.clone())
        .or_else(|| Some("state".into()))
}

/// Number of keys in the persisted table (to size the in-memory model before loading it).
pub fn key_count(log: &Log) -> Result<u64, ProjectionError> {
    use redb::ReadableTableMetadata;
    let txn = log.database()?.begin_read().map_err(storage)?;
    Ok(txn
        .open_table(KEYS)
        .map_err(storage)?
        .len()
        .map_err(storage)?)
}

type Loaded = Vec<(KeyState, Option<i64>)>;

/// Every key in the persisted table with its persisted `last_used_at` (ms), plus the checkpoint.
///
/// A second thread reads and decodes while the caller's thread consumes (`f` builds the
/// in-memory model): decoding and indexing cost about the same, so start-up takes about half
/// as long on two cores.
pub fn load_all(
    log: &Log,
    mut f: impl FnMut(KeyState, Option<i64>),
) -> Result<u64, ProjectionError> {
    const BATCH: usize = 1024;
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Loaded>(8);
        let reader = scope.spawn(move || -> Result<u64, ProjectionError> {
            let txn = log.database()?.begin_read().map_err(storage)?;
            let keys = txn.open_table(KEYS).map_err(storage)?;
            let used = txn.open_table(LAST_USED).map_err(storage)?;
            let meta = txn.open_table(META).map_err(storage)?;
            let checkpoint = meta
                .get(CHECKPOINT)
                .map_err(storage)?
                .map_or(0, |v| v.value());
            // Both tables are ordered by key id: merge them instead of a lookup per key.
            let mut used = used.iter().map_err(storage)?.peekable();
            let mut batch = Vec::with_capacity(BATCH);
            for item in keys.iter().map_err(storage)? {
                let (k, v) = item.map_err(storage)?;
                let id = k.value();
                let mut last_used = None;
                while let Some(Ok((uk, uv))) = used.peek() {
                    match uk.value().cmp(&id) {
                        std::cmp::Ordering::Less => {}
                        std::cmp::Ordering::Equal => last_used = Some(uv.value()),
                        std::cmp::Ordering::Greater => break,
                    }
                    used.next();
                }
                if let Some(Err(e)) = used.peek() {
                    return Err(storage(e).into());
                }
                batch.push((decode_state(v.value())?, last_used));
                if batch.len() == BATCH {
                    let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
                    if tx.send(full).is_err() {
                        break;
                    }
                }
            }
            let _ = tx.send(batch);
            Ok(checkpoint)
        });
        for batch in rx {
            for (state, last_used) in batch {
                f(state, last_used);
            }
        }
        reader.join().expect("the key table reader does not panic")
    })
}

/// Persists `last_used_at` values (write-behind); one transaction for the lot, beside the
/// command writer's ([`Log::write_aside`], which reopens the log after a failure).
pub fn store_last_used(log: &Log, values: &[(Uuid, i64)]) -> Result<(), ProjectionError> {
    if values.is_empty() {
        return Ok(());
    }
    log.write_aside(|txn| {
        let mut t = txn.open_table(LAST_USED).map_err(storage)?;
        for (id, ms) in values {
            t.insert(id.as_u128(), *ms).map_err(storage)?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyledger_core::{PreviousSecret, SecretHash, Timestamp};
    use keyledger_store::{AppendRequest, SigningKeys};

    fn full_state() -> KeyState {
        let serde_json::Value::Object(metadata) = serde_json::json!({
            "plan": "pro", "seats": 12, "ratio": -0.25, "big": u64::MAX, "neg": i64::MIN,
            "none": null, "flag": true, "nested": {"list": [1, "two", {"three": 3.5}]},
        }) else {
            unreachable!()
        };
        KeyState {
            id: uuid::Uuid::now_v7(),
            account: "acme".into(),
            name: "Ünïcode \"quoted\" name".into(),
            owner: Some("ops@acme.test".into()),
            role: None,
            scopes: vec!["keys:read".into(), "keys:verify".into()],
            allowed_ips: vec![
                "10.0.0.0/8".parse().unwrap(),
                "2001:db8::/32".parse().unwrap(),
            ],
            enabled: false,
            expires_at: Some(Timestamp(1_900_000_000_123)),
            metadata,
            prefix: "kl".into(),
            hint: "kl_...abcd".into(),
            secret_hash: SecretHash([7; 32]),
            previous: Some(PreviousSecret {
                secret_hash: SecretHash([9; 32]),
                until: Timestamp(-1),
            }),
            created_at: Timestamp(1_800_000_000_000),
            updated_at: Timestamp(1_800_000_000_001),
            rotated_at: Some(Timestamp(1_800_000_000_001)),
            deleted_at: None,
            expired: true,
            version: 42,
        }
    }

    #[test]
    fn stored_key_states_round_trip_every_field_in_under_half_the_json_size() {
        let state = full_state();
        let bytes = encode_state(&state).unwrap();
        assert_eq!(decode_state(&bytes).unwrap(), state);
        let json = serde_json::to_vec(&state).unwrap();
        assert!(
            bytes.len() * 2 < json.len(),
            "{} vs {} bytes",
            bytes.len(),
            json.len()
        );
    }

    /// Every row of the key table, in key order.
    fn key_table(log: &Log) -> Vec<(u128, Vec<u8>)> {
        let txn = log.database().unwrap().begin_read().unwrap();
        let table = txn.open_table(KEYS).unwrap();
        table
            .iter()
            .unwrap()
            .map(|r| {
                let (k, v) = r.unwrap();
                (k.value(), v.value().to_vec())
            })
            .collect()
    }

    /// A log in `dir`, signed with a key made from `seed`.
    fn open_log(dir: &tempfile::TempDir, seed: u8) -> Log {
        let keys = SigningKeys::ephemeral([seed; 32], Timestamp(0));
        Log::open(&dir.path().join("log.redb"), keys).unwrap()
    }

    /// The `key.created` whose fold starts `state` (enabled).
    fn created_from(state: &KeyState) -> keyledger_core::Event {
        keyledger_core::Event::Created(keyledger_core::event::Created {
            account: state.account.clone(),
            name: state.name.clone(),
            owner: state.owner.clone(),
            role: None,
            scopes: state.scopes.clone(),
            allowed_ips: state.allowed_ips.clone(),
            enabled: true,
            expires_at: state.expires_at,
            metadata: state.metadata.clone(),
            prefix: state.prefix.clone(),
            hint: state.hint.clone(),
            secret_hash: state.secret_hash,
        })
    }

    /// One event for `key_id`'s stream at `version`, by the CLI.
    fn request(
        key_id: Uuid,
        account: &str,
        version: u64,
        at: Timestamp,
        event: keyledger_core::Event,
    ) -> AppendRequest {
        AppendRequest {
            key_id,
            account: account.into(),
            expected_version: version,
            actor: "cli".into(),
            occurred_at: at,
            events: vec![(Uuid::now_v7(), event)],
            idempotency: None,
        }
    }

    #[test]
    fn a_rebuild_over_several_encoding_chunks_writes_the_table_the_appends_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let log = open_log(&dir, 4);
        let base = full_state();
        let n = 2 * ENCODE_CHUNK + 3;
        let ids: Vec<Uuid> = (0..n).map(|_| Uuid::now_v7()).collect();
        let at = |version: u64| Timestamp(1_800_000_000_000 + version as i64);
        let creates: Vec<_> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let state = KeyState {
                    name: format!("key {i}"),
                    expires_at: None,
                    secret_hash: SecretHash([(i % 251) as u8; 32]),
                    ..base.clone()
                };
                request(*id, &base.account, 0, at(0), created_from(&state))
            })
            .collect();
        log.append_batch(&creates, &mut KeyTableProjector).unwrap();
        // Every third key changes again, so that the fold applies events to existing states.
        let updates: Vec<_> = ids
            .iter()
            .step_by(3)
            .map(|id| {
                let update = keyledger_core::event::Updated {
                    name: Some(format!("renamed {id}")),
                    enabled: Some(false),
                    ..Default::default()
                };
                let update = keyledger_core::Event::Updated(update);
                request(*id, &base.account, 1, at(1), update)
            })
            .collect();
        log.append_batch(&updates, &mut KeyTableProjector).unwrap();
        let appended = key_table(&log);
        assert_eq!(appended.len(), n);

        let applied = catch_up(&log, true, |_, _| {}).unwrap();
        assert_eq!(applied as usize, n + updates.len());
        assert_eq!(key_table(&log), appended);
    }

    #[test]
    fn a_key_table_of_an_older_format_is_rebuilt_from_the_log_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let log = open_log(&dir, 3);
        let state = full_state();
        let request = request(
            state.id,
            &state.account,
            0,
            state.created_at,
            created_from(&state),
        );
        log.append(request, &mut KeyTableProjector)
            .unwrap()
            .unwrap();
        // What a format-1 table looked like: JSON states, `keys_format` 1.
        let txn = log.database().unwrap().begin_write().unwrap();
        {
            let mut table = txn.open_table(KEYS).unwrap();
            let json = serde_json::to_vec(&state).unwrap();
            table.insert(state.id.as_u128(), json.as_slice()).unwrap();
            txn.open_table(META).unwrap().insert(FORMAT_KEY, 1).unwrap();
        }
        txn.commit().unwrap();

        let model = crate::open_read_model(&log).unwrap();
        assert_eq!(model.snapshot(), crate::fold_log(&log).unwrap().snapshot());
        assert_eq!(model.get(&state.id).unwrap().state.metadata, state.metadata);
    }
}
