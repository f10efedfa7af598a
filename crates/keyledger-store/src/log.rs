//! The append-only log on redb.
//!
//! Tables (all in one redb file):
//! - `events`: `seq -> envelope JSON`, seq 1, 2, 3, ... without gaps;
//! - `stream_heads`: `key id -> version` (absent: no stream);
//! - `stream_index`: `(key id, version) -> seq`;
//! - `event_ids`: `event id -> seq`, for idempotent retries;
//! - `meta`: `"head" -> seq (8 bytes BE) ++ hash (64 hex bytes)`;
//! - `replay`: `seq -> replay row` ([`encode_replay_row`]): what folding needs of each event, in
//!   a compact binary form, written in the same transaction as the event. Replays read these
//!   rows; the JSON stays the signed source of truth, and `audit verify` checks every row
//!   against it.
//!
//! Every append runs inside one write transaction that checks each stream's expected version,
//! extends the hash chain, signs, lets a [`Projector`] update read models in the same
//! transaction, and commits durably before anything is acknowledged.

use crate::envelope::{Envelope, GENESIS_HASH, RawEvent, ReplayEvent, encode_replay_row};
use crate::signing::SigningKeys;
use crate::{AppendError, StoreError};
use keyledger_core::event::SCHEMA_VERSION;
use keyledger_core::{Event, Timestamp};
use redb::{
    Database, ReadOnlyDatabase, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition,
    WriteTransaction,
};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, mpsc};
use uuid::Uuid;

pub(crate) const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
const STREAM_HEADS: TableDefinition<u128, u64> = TableDefinition::new("stream_heads");
const STREAM_INDEX: TableDefinition<(u128, u64), u64> = TableDefinition::new("stream_index");
const EVENT_IDS: TableDefinition<u128, u64> = TableDefinition::new("event_ids");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const IDEMPOTENCY: TableDefinition<&str, &[u8]> = TableDefinition::new("idempotency");
pub(crate) const REPLAY: TableDefinition<u64, &[u8]> = TableDefinition::new("replay");

/// redb's page cache by default. Reads on the hot paths never reach redb (verification and
/// listing are served from memory), so a large cache would only hold the pages the start-up
/// load read once; redb's own default (1 GiB) made the resident set ~2× the read model.
pub const DEFAULT_CACHE_BYTES: usize = 64 << 20;

/// What a command with an `Idempotency-Key` produced, stored with its events.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IdempotencyRecord {
    /// The caller-scoped key (`<actor>:<Idempotency-Key>`).
    pub key: String,
    /// Hex SHA-256 of the request (method, path, canonical body).
    pub fingerprint: String,
    pub key_id: Uuid,
    /// The key's version after the command.
    pub version: u64,
    pub at: Timestamp,
}

/// Events to append to one key's stream.
#[derive(Debug, Clone)]
pub struct AppendRequest {
    pub key_id: Uuid,
    pub account: String,
    /// The stream's version the events were decided against; 0 = the stream must not exist.
    pub expected_version: u64,
    pub actor: String,
    pub occurred_at: Timestamp,
    /// Each event with its id (UUID v7), chosen by the caller so that retries are idempotent.
    pub events: Vec<(Uuid, Event)>,
    /// Recorded in the same transaction, with `version` set to the stream's new version.
    pub idempotency: Option<IdempotencyRecord>,
}

/// Updates read models inside the append's write transaction.
pub trait Projector {
    /// Called once per transaction with its new events, in log order.
    fn apply(&mut self, txn: &WriteTransaction, envelopes: &[&Envelope]) -> Result<(), StoreError>;
    /// Called once per transaction after the last `apply`, with the log's new head seq.
    fn finish(&mut self, _txn: &WriteTransaction, _head: u64) -> Result<(), StoreError> {
        Ok(())
    }
}

/// A projector that does nothing: for tools and tests that only need the log.
pub struct NoProjection;

impl Projector for NoProjection {
    fn apply(&mut self, _: &WriteTransaction, _: &[&Envelope]) -> Result<(), StoreError> {
        Ok(())
    }
}

/// The outcome of one request in a batch.
pub type AppendResult = Result<Vec<Envelope>, AppendError>;

/// Opens the database file; called again to recover after an I/O error.
pub type Opener = Arc<dyn Fn() -> Result<Database, StoreError> + Send + Sync>;

/// The database under a log: writable, or read-only for audits and exports, which must leave
/// the file they check as it was (a writable open commits at least once).
pub enum Db {
    Writable(Database),
    ReadOnly(ReadOnlyDatabase),
}

impl Db {
    pub fn begin_read(&self) -> Result<ReadTransaction, StoreError> {
        Ok(match self {
            Db::Writable(db) => db.begin_read()?,
            Db::ReadOnly(db) => db.begin_read()?,
        })
    }

    pub fn begin_write(&self) -> Result<WriteTransaction, StoreError> {
        match self {
            Db::Writable(db) => Ok(db.begin_write()?),
            Db::ReadOnly(_) => Err(StoreError::Storage("the log is open read-only".into())),
        }
    }
}

/// `e` from opening the log at `path`, saying what to do where the cause is a common one.
fn open_error(path: &Path, e: redb::DatabaseError) -> StoreError {
    let path = path.display();
    StoreError::Storage(match e {
        redb::DatabaseError::DatabaseAlreadyOpen => format!(
            "{path} is open in another process (is `keyledger serve` running on this data dir?)"
        ),
        redb::DatabaseError::RepairAborted => format!(
            "{path} was not closed cleanly and needs a repair, which a read-only open does not \
             make: start `keyledger serve` on it once (or run `keyledger replay`), then retry"
        ),
        e => format!("{path}: {e}"),
    })
}

/// The event log. Cheap to clone; clones share the database.
///
/// After an I/O error redb refuses every further operation until the database is reopened;
/// [`Log::reopen`] does that (the writer calls it after a failed commit), so the service
/// recovers once the fault clears.
#[derive(Clone)]
pub struct Log {
    db: Arc<parking_lot::RwLock<Option<Arc<Db>>>>,
    /// Set by [`Log::close`]: a closed log is never reopened.
    closed: Arc<AtomicBool>,
    opener: Arc<dyn Fn() -> Result<Db, StoreError> + Send + Sync>,
    keys: Arc<SigningKeys>,
    signers: Arc<SigningPool>,
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log").finish_non_exhaustive()
    }
}

struct Head {
    seq: u64,
    hash: String,
}

/// What [`Log::chain_one`] made of a request.
enum Chained {
    /// Linked into the chain: new events, to be signed and stored.
    New(Vec<Envelope>),
    /// Refused (a version conflict); nothing written.
    Answered(AppendResult),
    /// Its first event id is already in the log (or earlier in this batch) at this seq.
    Committed(u64),
}

/// The answer to a retried request: the events stored for its ids, if they are the same events
/// (same ids, same key) as it asks for, else `IdReused`.
fn same_events<'a>(
    req: &AppendRequest,
    stored: impl Iterator<Item = &'a Envelope>,
) -> AppendResult {
    let mut stored = stored;
    let mut out = Vec::with_capacity(req.events.len());
    for (id, _) in &req.events {
        match stored.next() {
            Some(env) if env.id == *id && env.key_id == req.key_id => out.push(env.clone()),
            _ => return Err(AppendError::IdReused { event_id: *id }),
        }
    }
    Ok(out)
}

/// The log's tables, opened once per write transaction rather than once per event.
struct Tables<'t> {
    events: redb::Table<'t, u64, &'static [u8]>,
    heads: redb::Table<'t, u128, u64>,
    index: redb::Table<'t, (u128, u64), u64>,
    ids: redb::Table<'t, u128, u64>,
    idempotency: redb::Table<'t, &'static str, &'static [u8]>,
    replay: redb::Table<'t, u64, &'static [u8]>,
}

impl<'t> Tables<'t> {
    fn open(txn: &'t WriteTransaction) -> Result<Self, StoreError> {
        Ok(Self {
            events: txn.open_table(EVENTS)?,
            heads: txn.open_table(STREAM_HEADS)?,
            index: txn.open_table(STREAM_INDEX)?,
            ids: txn.open_table(EVENT_IDS)?,
            idempotency: txn.open_table(IDEMPOTENCY)?,
            replay: txn.open_table(REPLAY)?,
        })
    }
}

/// Hashes signed together, by one thread: their nonce points share one field inversion.
const SIGNING_CHUNK: usize = 8;

/// Batches with at least this many new events are signed by the helpers too: two chunks of
/// signatures (~120 µs each) dwarf waking a helper.
const PARALLEL_SIGNING_MIN: usize = 2 * SIGNING_CHUNK;

/// Threads to sign a batch or to decode a replay on: the machine's parallelism, at most 4.
fn parallelism() -> usize {
    static THREADS: OnceLock<usize> = OnceLock::new();
    *THREADS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get().min(4)))
}

/// Seqs per chunk of a parallel [`Log::replay`].
pub const REPLAY_CHUNK: u64 = 4096;

/// The hashes of one batch to sign, shared by the appending thread and the helpers, in chunks
/// of [`SIGNING_CHUNK`].
struct SignJob {
    keys: Arc<SigningKeys>,
    hashes: Vec<[u8; 32]>,
    /// The next chunk to claim.
    next: AtomicUsize,
    signatures: Vec<OnceLock<Vec<String>>>,
}

impl SignJob {
    fn new(keys: &Arc<SigningKeys>, hashes: Vec<[u8; 32]>) -> Self {
        Self {
            keys: keys.clone(),
            signatures: hashes
                .chunks(SIGNING_CHUNK)
                .map(|_| OnceLock::new())
                .collect(),
            hashes,
            next: AtomicUsize::new(0),
        }
    }

    fn chunk(&self, c: usize) -> &[String] {
        self.signatures[c].get_or_init(|| {
            let end = ((c + 1) * SIGNING_CHUNK).min(self.hashes.len());
            self.keys.sign_all(&self.hashes[c * SIGNING_CHUNK..end])
        })
    }

    /// Signs unclaimed chunks until none is left.
    fn work(&self) {
        loop {
            let c = self.next.fetch_add(1, Ordering::Relaxed);
            if c >= self.signatures.len() {
                return;
            }
            self.chunk(c);
        }
    }

    /// The appending thread's part: claims chunks like a helper, then signs whatever is still
    /// unsigned (claimed by a helper that has not run yet) and returns every signature in order.
    fn finish(&self) -> Vec<String> {
        self.work();
        (0..self.signatures.len())
            .flat_map(|c| self.chunk(c).iter().cloned())
            .collect()
    }
}

/// Helper threads that sign a batch beside the appending thread.
///
/// They start with the first batch large enough to need them (a log that is only read, as by
/// `audit verify` or `events export`, never starts them) and then run for the log's lifetime,
/// sleeping between batches: a thread spawned per batch started ~0.5–1 ms late under load (the
/// scheduler queues a new thread behind the busy HTTP workers), after the batch was long
/// signed. The appending thread never waits for a helper to show up: it claims chunks like the
/// helpers do, then signs every chunk still unsigned itself; it only waits for a chunk a
/// helper is signing at that moment. Signatures are deterministic, so who signs does not
/// matter.
struct SigningPool {
    threads: usize,
    helpers: OnceLock<Vec<mpsc::Sender<Arc<SignJob>>>>,
}

impl SigningPool {
    fn new(threads: usize) -> Self {
        Self {
            threads,
            helpers: OnceLock::new(),
        }
    }

    fn helpers(&self) -> &[mpsc::Sender<Arc<SignJob>>] {
        self.helpers.get_or_init(|| {
            (0..self.threads)
                .filter_map(|_| {
                    let (tx, rx) = mpsc::channel::<Arc<SignJob>>();
                    std::thread::Builder::new()
                        .name("keyledger-sign".into())
                        .spawn(move || {
                            while let Ok(job) = rx.recv() {
                                job.work();
                            }
                        })
                        .ok()
                        .map(|_| tx)
                })
                .collect()
        })
    }

    /// The signatures of `hashes`, in order.
    fn sign(&self, keys: &Arc<SigningKeys>, hashes: Vec<[u8; 32]>) -> Vec<String> {
        if hashes.len() < PARALLEL_SIGNING_MIN || self.threads == 0 {
            return keys.sign_all(&hashes);
        }
        let helpers = self.helpers();
        let job = Arc::new(SignJob::new(keys, hashes));
        for helper in helpers {
            let _ = helper.send(job.clone());
        }
        job.finish()
    }
}

impl Log {
    /// Opens (or creates) the log at `path` with redb's page cache at [`DEFAULT_CACHE_BYTES`].
    pub fn open(path: &Path, keys: SigningKeys) -> Result<Self, StoreError> {
        Self::open_with_cache(path, keys, DEFAULT_CACHE_BYTES)
    }

    /// Opens (or creates) the log at `path` with a page cache of `cache_bytes`.
    pub fn open_with_cache(
        path: &Path,
        keys: SigningKeys,
        cache_bytes: usize,
    ) -> Result<Self, StoreError> {
        let path = path.to_path_buf();
        Self::open_with(
            Arc::new(move || {
                Database::builder()
                    .set_cache_size(cache_bytes)
                    .create(&path)
                    .map_err(|e| open_error(&path, e))
            }),
            keys,
        )
    }

    /// Opens the existing log at `path` without writing to it: appends and cursor updates
    /// fail. A log that was not closed cleanly is refused (its repair would write).
    pub fn open_read_only(path: &Path, keys: SigningKeys) -> Result<Self, StoreError> {
        let path = path.to_path_buf();
        let opener = move || {
            Database::builder()
                .set_cache_size(DEFAULT_CACHE_BYTES)
                .open_read_only(&path)
                .map(Db::ReadOnly)
                .map_err(|e| open_error(&path, e))
        };
        let db = opener()?;
        Ok(Self::with_db(db, Arc::new(opener), keys))
    }

    /// Opens the log through `opener` (e.g. on a custom storage backend).
    pub fn open_with(opener: Opener, keys: SigningKeys) -> Result<Self, StoreError> {
        let db = opener()?;
        let txn = db.begin_write()?;
        txn.open_table(EVENTS)?;
        txn.open_table(STREAM_HEADS)?;
        txn.open_table(STREAM_INDEX)?;
        txn.open_table(EVENT_IDS)?;
        txn.open_table(META)?;
        txn.open_table(IDEMPOTENCY)?;
        txn.open_table(REPLAY)?;
        txn.commit()?;
        fill_replay_rows(&db)?;
        Ok(Self::with_db(
            Db::Writable(db),
            Arc::new(move || opener().map(Db::Writable)),
            keys,
        ))
    }

    /// The last seq of the log file at `path` (0 if there is none), without a signing key: to
    /// decide whether a missing key file may be created. Repairs the file only if it needs it.
    pub fn stored_head(path: &Path) -> Result<u64, StoreError> {
        // A file that is not there or empty (created but never written) holds no events.
        if std::fs::metadata(path).map_or(true, |m| m.len() == 0) {
            return Ok(0);
        }
        let db = match Database::builder().open_read_only(path) {
            Ok(db) => Db::ReadOnly(db),
            Err(redb::DatabaseError::RepairAborted) => Db::Writable(
                Database::builder()
                    .create(path)
                    .map_err(|e| open_error(path, e))?,
            ),
            Err(e) => return Err(open_error(path, e)),
        };
        let txn = db.begin_read()?;
        match txn.open_table(META) {
            Ok(meta) => Ok(head_in(&meta)?.seq),
            // Created, but never opened as a log.
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(0),
            Err(e) => Err(e.into()),
        }
    }

    fn with_db(
        db: Db,
        opener: Arc<dyn Fn() -> Result<Db, StoreError> + Send + Sync>,
        keys: SigningKeys,
    ) -> Self {
        Self {
            db: Arc::new(parking_lot::RwLock::new(Some(Arc::new(db)))),
            closed: Arc::default(),
            opener,
            keys: Arc::new(keys),
            signers: Arc::new(SigningPool::new(parallelism() - 1)),
        }
    }

    /// The open database; an error while it is being reopened after an I/O failure.
    pub fn database(&self) -> Result<Arc<Db>, StoreError> {
        self.db.read().clone().ok_or_else(|| {
            StoreError::Storage("the log is being reopened after an I/O error".into())
        })
    }

    /// Closes the database for every clone of this log (the file can then be opened again,
    /// e.g. by a restarted service in the same process). Later calls fail.
    pub fn close(&self) {
        let mut slot = self.db.write();
        self.closed.store(true, Ordering::SeqCst);
        slot.take();
    }

    /// Closes and reopens the database, to recover from an I/O error. Waits (up to ~2 s) for
    /// readers of the old handle to finish, since the file can be open only once.
    pub fn reopen(&self) -> Result<(), StoreError> {
        let mut slot = self.db.write();
        if self.closed.load(Ordering::SeqCst) {
            return Err(StoreError::Storage("the log is closed".into()));
        }
        if let Some(old) = slot.take() {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
            let mut old = Some(old);
            while let Some(o) = old.take() {
                match Arc::try_unwrap(o) {
                    Ok(db) => drop(db),
                    Err(shared) if std::time::Instant::now() < deadline => {
                        old = Some(shared);
                        std::thread::sleep(std::time::Duration::from_millis(5));
                    }
                    Err(shared) => {
                        *slot = Some(shared);
                        return Err(StoreError::Storage(
                            "cannot reopen the log: the old handle is still in use".into(),
                        ));
                    }
                }
            }
        }
        *slot = Some(Arc::new((self.opener)()?));
        Ok(())
    }

    pub fn signing_keys(&self) -> &SigningKeys {
        &self.keys
    }

    /// Appends each request in one transaction. A request whose expected version does not match
    /// fails alone (`Err` in its slot) and writes nothing; the others commit. A storage error
    /// fails the whole batch and nothing of it is visible.
    pub fn append_batch(
        &self,
        requests: &[AppendRequest],
        projector: &mut dyn Projector,
    ) -> Result<Vec<AppendResult>, StoreError> {
        let txn = self.database()?.begin_write()?;
        let mut head = read_head(&txn)?;
        let start_seq = head.seq;
        let mut results = Vec::with_capacity(requests.len());
        // Whether each result holds new events (false: a refused request or a retry's originals).
        let mut fresh = Vec::with_capacity(requests.len());
        // Requests that repeat an earlier request of this batch: (index, first seq). Their
        // answer is that request's events, which exist only once the batch is signed.
        let mut repeats = Vec::new();
        let mut tables = Tables::open(&txn)?;
        for (i, req) in requests.iter().enumerate() {
            let (result, new) = match self.chain_one(&mut tables, &mut head, req)? {
                Chained::New(events) => (Ok(events), true),
                Chained::Answered(result) => (result, false),
                Chained::Committed(seq) if seq > start_seq => {
                    repeats.push((i, seq));
                    (Ok(Vec::new()), false)
                }
                Chained::Committed(seq) => (self.committed_retry(&tables, seq, req)?, false),
            };
            results.push(result);
            fresh.push(new);
        }
        let mut new_events: Vec<&mut Envelope> = results
            .iter_mut()
            .zip(&fresh)
            .filter(|(_, new)| **new)
            .filter_map(|(r, _)| r.as_mut().ok())
            .flatten()
            .collect();
        let stored = self.sign_all(&mut new_events)?;
        for (env, bytes) in new_events.iter().zip(stored) {
            tables.events.insert(env.seq, bytes.as_slice())?;
            let row = encode_replay_row(env.key_id, env.occurred_at, &env.event)?;
            tables.replay.insert(env.seq, row.as_slice())?;
        }
        drop(tables);
        let new_events: Vec<&Envelope> = new_events.into_iter().map(|e| &*e).collect();
        // New events have the seqs start_seq + 1, start_seq + 2, ... in order.
        let repeated: Vec<(usize, AppendResult)> = repeats
            .into_iter()
            .map(|(i, seq)| {
                let first = (seq - start_seq - 1) as usize;
                let stored = new_events.get(first..).unwrap_or_default();
                (i, same_events(&requests[i], stored.iter().copied()))
            })
            .collect();
        if !new_events.is_empty() {
            projector.apply(&txn, &new_events)?;
            let mut meta = txn.open_table(META)?;
            meta.insert("head", encode_head(&head).as_slice())?;
            drop(meta);
            projector.finish(&txn, head.seq)?;
        }
        txn.commit()?;
        for (i, result) in repeated {
            results[i] = result;
        }
        Ok(results)
    }

    /// Appends one request; a convenience over [`Log::append_batch`].
    pub fn append(
        &self,
        request: AppendRequest,
        projector: &mut dyn Projector,
    ) -> Result<AppendResult, StoreError> {
        Ok(self
            .append_batch(std::slice::from_ref(&request), projector)?
            .pop()
            .expect("one result per request"))
    }

    /// Signs each linked envelope and encodes it as stored, in order.
    fn sign_all(&self, envs: &mut [&mut Envelope]) -> Result<Vec<Vec<u8>>, StoreError> {
        let hashes = envs
            .iter()
            .map(|env| {
                let mut hash = [0u8; 32];
                hex::decode_to_slice(&env.hash, &mut hash)
                    .map_err(|e| StoreError::Encode(format!("event hash: {e}")))?;
                Ok(hash)
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let signatures = self.signers.sign(&self.keys, hashes);
        envs.iter_mut()
            .zip(signatures)
            .map(|(env, signature)| {
                env.signature = signature;
                env.to_json().map_err(StoreError::encode)
            })
            .collect()
    }

    /// Checks one request and links its events into the chain, unsigned and not yet stored in
    /// `events` (see [`Log::sign_all`]).
    fn chain_one(
        &self,
        t: &mut Tables<'_>,
        head: &mut Head,
        req: &AppendRequest,
    ) -> Result<Chained, StoreError> {
        let key = req.key_id.as_u128();
        if let Some((first_id, _)) = req.events.first() {
            // A retry of an append that already committed returns the original events.
            let seen = t.ids.get(first_id.as_u128())?.map(|v| v.value());
            if let Some(seq) = seen {
                return Ok(Chained::Committed(seq));
            }
        }
        let actual = t.heads.get(key)?.map_or(0, |v| v.value());
        if actual != req.expected_version {
            return Ok(Chained::Answered(Err(AppendError::Conflict {
                key_id: req.key_id,
                expected: req.expected_version,
                actual,
            })));
        }
        let mut out = Vec::with_capacity(req.events.len());
        let mut version = actual;
        for (id, event) in &req.events {
            version += 1;
            let env = self.link(head, *id, event, req, version)?;
            t.index.insert((key, version), env.seq)?;
            t.ids.insert(id.as_u128(), env.seq)?;
            out.push(env);
        }
        t.heads.insert(key, version)?;
        if let Some(rec) = &req.idempotency {
            let rec = IdempotencyRecord {
                version,
                ..rec.clone()
            };
            let bytes = serde_json::to_vec(&rec).map_err(StoreError::encode)?;
            t.idempotency.insert(rec.key.as_str(), bytes.as_slice())?;
        }
        Ok(Chained::New(out))
    }

    /// The stored events of a retried request whose first event id committed at `seq` in an
    /// earlier transaction.
    fn committed_retry(
        &self,
        t: &Tables<'_>,
        seq: u64,
        req: &AppendRequest,
    ) -> Result<AppendResult, StoreError> {
        let mut stored = Vec::with_capacity(req.events.len());
        for i in 0..req.events.len() as u64 {
            match t.events.get(seq + i)? {
                Some(bytes) => stored.push(decode(bytes.value())?),
                None => break,
            }
        }
        Ok(same_events(req, stored.iter()))
    }

    /// Gives an event its seq and links it to the chain (its `hash`); [`Log::sign_all`] signs it.
    fn link(
        &self,
        head: &mut Head,
        id: Uuid,
        event: &Event,
        req: &AppendRequest,
        version: u64,
    ) -> Result<Envelope, StoreError> {
        let mut env = Envelope {
            seq: head.seq + 1,
            id,
            event: event.clone(),
            schema: SCHEMA_VERSION,
            key_id: req.key_id,
            account: req.account.clone(),
            version,
            occurred_at: req.occurred_at,
            actor: req.actor.clone(),
            prev_hash: head.hash.clone(),
            hash: String::new(),
            signature: String::new(),
            signer: self.keys.active_id().to_owned(),
        };
        env.hash = hex::encode(env.chain_hash().map_err(StoreError::encode)?);
        head.seq = env.seq;
        head.hash.clone_from(&env.hash);
        Ok(env)
    }

    /// How many keys have events (one stream each), in O(1): sizes folds before they start.
    pub fn stream_count(&self) -> Result<u64, StoreError> {
        let txn = self.database()?.begin_read()?;
        Ok(redb::ReadableTableMetadata::len(
            &txn.open_table(STREAM_HEADS)?,
        )?)
    }

    /// The last seq (0 when empty) and its hash.
    pub fn head(&self) -> Result<(u64, String), StoreError> {
        let txn = self.database()?.begin_read()?;
        let head = head_in(&txn.open_table(META)?)?;
        Ok((head.seq, head.hash))
    }

    /// Up to `limit` events with seq > `after`, in order.
    /// Up to `limit` events after seq `after`, as stored (for publishing), without decoding
    /// their data.
    pub fn read_raw(&self, after: u64, limit: usize) -> Result<Vec<RawEvent>, StoreError> {
        let mut out = Vec::new();
        self.scan_raw(after, |_, bytes| {
            out.push(
                RawEvent::from_stored(bytes)
                    .map_err(|e| StoreError::Corrupt(format!("undecodable event: {e}")))?,
            );
            Ok(out.len() < limit)
        })?;
        Ok(out)
    }

    pub fn read(&self, after: u64, limit: usize) -> Result<Vec<Envelope>, StoreError> {
        let mut out = Vec::new();
        self.scan_raw(after, |_, bytes| {
            out.push(decode(bytes)?);
            Ok(out.len() < limit)
        })?;
        Ok(out)
    }

    /// Calls `f(seq, stored bytes)` for each event after `after` until it returns `Ok(false)`.
    /// Reads one consistent snapshot.
    pub fn scan_raw(
        &self,
        after: u64,
        f: impl FnMut(u64, &[u8]) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        self.scan_table(EVENTS, after, f)
    }

    /// [`Log::scan_raw`] over the replay rows: what [`Log::replay`] reads, undecoded (the
    /// ceiling a replay is measured against).
    pub fn scan_replay_rows_raw(
        &self,
        after: u64,
        f: impl FnMut(u64, &[u8]) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        self.scan_table(REPLAY, after, f)
    }

    fn scan_table(
        &self,
        table: TableDefinition<u64, &[u8]>,
        after: u64,
        mut f: impl FnMut(u64, &[u8]) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        let txn = self.database()?.begin_read()?;
        let rows = txn.open_table(table)?;
        for item in rows.range(after.saturating_add(1)..)? {
            let (k, v) = item?;
            if !f(k.value(), v.value())? {
                break;
            }
        }
        Ok(())
    }

    /// Like [`Log::scan_raw`] from the start, with each event's replay row (`None` if it has
    /// none), read in the same snapshot: for `audit verify`.
    pub fn scan_with_replay_rows(
        &self,
        mut f: impl FnMut(u64, &[u8], Option<&[u8]>) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        let txn = self.database()?.begin_read()?;
        let events = txn.open_table(EVENTS)?;
        let replay = txn.open_table(REPLAY)?;
        for item in events.range(1..)? {
            let (k, v) = item?;
            // A lookup per event: an audit's cost is its signature checks, not these.
            let row = replay.get(k.value())?;
            if !f(k.value(), v.value(), row.as_ref().map(|r| r.value()))? {
                break;
            }
        }
        Ok(())
    }

    /// Calls `f` with each event after seq `after`, in order, up to the head as of the call;
    /// returns the last seq passed to `f` (`after` when there was none). Decodes only what
    /// folding needs ([`ReplayEvent`]), and for long logs on several threads: seqs have no gaps,
    /// so each thread reads and decodes every n-th chunk of [`REPLAY_CHUNK`] seqs in its own
    /// read transaction while the calling thread consumes the chunks in order.
    pub fn replay(
        &self,
        after: u64,
        mut f: impl FnMut(ReplayEvent) -> Result<(), StoreError>,
    ) -> Result<u64, StoreError> {
        let (head, _) = self.head()?;
        if head <= after {
            return Ok(after);
        }
        let chunks = (head - after).div_ceil(REPLAY_CHUNK);
        let workers = (parallelism() as u64).min(chunks);
        let range = |k: u64| {
            (
                after + k * REPLAY_CHUNK,
                (after + (k + 1) * REPLAY_CHUNK).min(head),
            )
        };
        if workers < 2 {
            // One chunk at a time here too: a long log is never held in memory whole.
            for k in 0..chunks {
                let (lo, hi) = range(k);
                for ev in self.replay_range(lo, hi)? {
                    f(ev)?;
                }
            }
            return Ok(head);
        }
        std::thread::scope(|s| {
            let receivers: Vec<_> = (0..workers)
                .map(|w| {
                    // Two chunks in flight per thread: decoding stays ahead without holding the log.
                    let (tx, rx) = mpsc::sync_channel(2);
                    s.spawn(move || {
                        for k in (w..chunks).step_by(workers as usize) {
                            let (lo, hi) = range(k);
                            // A closed channel means the consumer stopped (an error): stop too.
                            if tx.send(self.replay_range(lo, hi)).is_err() {
                                break;
                            }
                        }
                    });
                    rx
                })
                .collect();
            for k in 0..chunks {
                let chunk = receivers[(k % workers) as usize]
                    .recv()
                    .map_err(|_| StoreError::Storage("a replay thread stopped".into()))??;
                for ev in chunk {
                    f(ev)?;
                }
            }
            Ok(head)
        })
    }

    /// The events with `lo < seq <= hi`, checked to be exactly those seqs.
    fn replay_range(&self, lo: u64, hi: u64) -> Result<Vec<ReplayEvent>, StoreError> {
        let txn = self.database()?.begin_read()?;
        let rows = txn.open_table(REPLAY)?;
        let mut out = Vec::with_capacity((hi - lo) as usize);
        for item in rows.range(lo + 1..=hi)? {
            let (k, v) = item?;
            let ev = ReplayEvent::decode_row(k.value(), v.value())?;
            if k.value() != lo + 1 + out.len() as u64 {
                return Err(StoreError::Corrupt(format!(
                    "seq {} is out of place",
                    k.value()
                )));
            }
            out.push(ev);
        }
        if out.len() as u64 != hi - lo {
            return Err(StoreError::Corrupt(format!("events {lo}..={hi} have gaps")));
        }
        Ok(out)
    }

    /// The whole stream of one key, in version order (empty if it has none).
    pub fn stream(&self, key_id: Uuid) -> Result<Vec<Envelope>, StoreError> {
        let txn = self.database()?.begin_read()?;
        stream_in(&txn, key_id)
    }

    /// A named consumer's position in the log (e.g. the NATS outbox's "published up to"); 0
    /// when never set.
    pub fn cursor(&self, name: &str) -> Result<u64, StoreError> {
        let txn = self.database()?.begin_read()?;
        let meta = txn.open_table(META)?;
        let key = format!("cursor:{name}");
        Ok(match meta.get(key.as_str())? {
            Some(v) => u64::from_be_bytes(
                v.value()
                    .try_into()
                    .map_err(|_| StoreError::Corrupt(format!("cursor {name}")))?,
            ),
            None => 0,
        })
    }

    /// Runs `write` in a write transaction of its own and commits it durably: for writes beside
    /// the command writer's batches (cursors, `last_used_at`). Reopens the log first when an
    /// earlier failure left it without a database, and again after a failure of its own: redb
    /// refuses everything after an I/O error until reopened, and the command writer's next
    /// commit must not fail for this write's fault.
    pub fn write_aside<E: From<StoreError>>(
        &self,
        write: impl FnOnce(&WriteTransaction) -> Result<(), E>,
    ) -> Result<(), E> {
        let attempt = || -> Result<(), E> {
            let db = match self.database() {
                Ok(db) => db,
                Err(_) => {
                    self.reopen()?;
                    self.database()?
                }
            };
            let txn = db.begin_write()?;
            write(&txn)?;
            txn.commit().map_err(StoreError::from)?;
            Ok(())
        };
        // `attempt` has dropped its handle by now, so that the reopen need not wait for it.
        let result = attempt();
        if result.is_err() {
            let _ = self.reopen();
        }
        result
    }

    /// Durably stores a named cursor (through [`Log::write_aside`]).
    pub fn set_cursor(&self, name: &str, seq: u64) -> Result<(), StoreError> {
        self.write_aside(|txn| {
            let mut meta = txn.open_table(META)?;
            let key = format!("cursor:{name}");
            meta.insert(key.as_str(), seq.to_be_bytes().as_slice())?;
            Ok(())
        })
    }

    /// The record stored for a caller-scoped idempotency key, if any.
    pub fn idempotency(&self, key: &str) -> Result<Option<IdempotencyRecord>, StoreError> {
        let txn = self.database()?.begin_read()?;
        let table = txn.open_table(IDEMPOTENCY)?;
        let Some(v) = table.get(key)? else {
            return Ok(None);
        };
        serde_json::from_slice(v.value())
            .map(Some)
            .map_err(|e| StoreError::Corrupt(format!("idempotency record: {e}")))
    }

    /// The stream's current version (0 when it does not exist).
    pub fn stream_version(&self, key_id: Uuid) -> Result<u64, StoreError> {
        let txn = self.database()?.begin_read()?;
        let heads = txn.open_table(STREAM_HEADS)?;
        Ok(heads.get(key_id.as_u128())?.map_or(0, |v| v.value()))
    }
}

fn stream_in(txn: &ReadTransaction, key_id: Uuid) -> Result<Vec<Envelope>, StoreError> {
    let index = txn.open_table(STREAM_INDEX)?;
    let events = txn.open_table(EVENTS)?;
    let k = key_id.as_u128();
    let mut out = Vec::new();
    for item in index.range((k, 0)..=(k, u64::MAX))? {
        let (at, seq) = item?;
        let (version, seq) = (at.value().1, seq.value());
        let bytes = events
            .get(seq)?
            .ok_or_else(|| StoreError::Corrupt(format!("index points at missing seq {seq}")))?;
        let env = decode(bytes.value())?;
        // The index is not signed: an edited row must not hand out another key's event
        // (another account's, say) as this key's history.
        if env.key_id != key_id || env.version != version {
            return Err(StoreError::Corrupt(format!(
                "the stream index puts seq {seq} at version {version} of key {key_id}; it is \
                 version {} of key {}",
                env.version, env.key_id
            )));
        }
        out.push(env);
    }
    Ok(out)
}

/// Writes the replay row of every event that has none: all of them in a log written before
/// the `replay` table existed (once, at the first open after the upgrade; ~5 µs per event),
/// none otherwise. Counts decide whether to look, so an up-to-date log costs two lookups.
fn fill_replay_rows(db: &Database) -> Result<(), StoreError> {
    const BATCH: usize = 65_536;
    let counts = |txn: &ReadTransaction| -> Result<(u64, u64), StoreError> {
        use redb::ReadableTableMetadata;
        Ok((
            txn.open_table(EVENTS)?.len()?,
            txn.open_table(REPLAY)?.len()?,
        ))
    };
    let (events, rows) = counts(&db.begin_read()?)?;
    if rows >= events {
        return Ok(());
    }
    tracing::info!(
        missing = events - rows,
        "writing the replay rows of events logged by an earlier version (once)"
    );
    let mut after = 0u64;
    loop {
        let txn = db.begin_write()?;
        let mut last = None;
        {
            let events = txn.open_table(EVENTS)?;
            let mut replay = txn.open_table(REPLAY)?;
            for item in events.range(after + 1..)?.take(BATCH) {
                let (k, v) = item?;
                let seq = k.value();
                last = Some(seq);
                if replay.get(seq)?.is_none() {
                    let ev = ReplayEvent::decode(v.value())
                        .map_err(|e| StoreError::Corrupt(format!("seq {seq}: {e}")))?;
                    let row = encode_replay_row(ev.key_id, ev.occurred_at, &ev.event)?;
                    replay.insert(seq, row.as_slice())?;
                }
            }
        }
        txn.commit()?;
        match last {
            Some(seq) => after = seq,
            None => return Ok(()),
        }
    }
}

/// Decodes a stored envelope.
pub fn decode(bytes: &[u8]) -> Result<Envelope, StoreError> {
    serde_json::from_slice(bytes)
        .map_err(|e| StoreError::Corrupt(format!("undecodable event: {e}")))
}

/// The fields of a stored envelope that the log's filters read.
#[derive(Debug, serde::Deserialize)]
pub struct Routing<'a> {
    #[serde(borrow)]
    pub account: std::borrow::Cow<'a, str>,
    #[serde(rename = "type", borrow)]
    pub event_type: std::borrow::Cow<'a, str>,
}

/// [`Routing`] of a stored envelope, without building the rest: for filters that skip many.
pub fn decode_routing(bytes: &[u8]) -> Result<Routing<'_>, StoreError> {
    serde_json::from_slice(bytes)
        .map_err(|e| StoreError::Corrupt(format!("undecodable event: {e}")))
}

fn read_head(txn: &WriteTransaction) -> Result<Head, StoreError> {
    head_in(&txn.open_table(META)?)
}

/// The head recorded in the `meta` table; the genesis head of an empty log.
fn head_in(meta: &impl ReadableTable<&'static str, &'static [u8]>) -> Result<Head, StoreError> {
    let head = meta
        .get("head")?
        .map(|v| decode_head(v.value()))
        .transpose()?;
    Ok(head.unwrap_or(Head {
        seq: 0,
        hash: GENESIS_HASH.into(),
    }))
}

fn encode_head(head: &Head) -> Vec<u8> {
    let mut out = head.seq.to_be_bytes().to_vec();
    out.extend_from_slice(head.hash.as_bytes());
    out
}

fn decode_head(bytes: &[u8]) -> Result<Head, StoreError> {
    if bytes.len() != 8 + 64 {
        return Err(StoreError::Corrupt("malformed log head".into()));
    }
    let seq = u64::from_be_bytes(bytes[..8].try_into().expect("8 bytes"));
    let hash = String::from_utf8(bytes[8..].to_vec())
        .map_err(|_| StoreError::Corrupt("malformed log head".into()))?;
    Ok(Head { seq, hash })
}

#[cfg(test)]
mod signing_pool_tests {
    use super::*;

    fn keys() -> Arc<SigningKeys> {
        Arc::new(SigningKeys::ephemeral([3; 32], Timestamp(0)))
    }

    fn hashes(n: u8) -> Vec<[u8; 32]> {
        (0..n).map(|i| [i; 32]).collect()
    }

    fn alone(keys: &SigningKeys, hashes: &[[u8; 32]]) -> Vec<String> {
        hashes.iter().map(|h| keys.sign(h).1).collect()
    }

    #[test]
    fn helpers_start_only_with_the_first_batch_that_needs_them() {
        let keys = keys();
        let pool = SigningPool::new(2);
        pool.sign(&keys, hashes(PARALLEL_SIGNING_MIN as u8 - 1));
        assert!(
            pool.helpers.get().is_none(),
            "a small batch started helpers"
        );
        pool.sign(&keys, hashes(PARALLEL_SIGNING_MIN as u8));
        assert_eq!(pool.helpers.get().map(Vec::len), Some(2));
    }

    #[test]
    fn helpers_sign_the_same_as_the_appending_thread_alone() {
        let keys = keys();
        for helpers in [0, 1, 3] {
            let pool = SigningPool::new(helpers);
            for n in [1, 7, 8, 33, 100] {
                let h = hashes(n);
                assert_eq!(
                    pool.sign(&keys, h.clone()),
                    alone(&keys, &h),
                    "{helpers} helpers, {n}"
                );
            }
        }
    }

    #[test]
    fn hashes_claimed_by_a_helper_that_never_runs_are_signed_by_the_appending_thread() {
        let keys = keys();
        let h = hashes(20);
        let job = SignJob::new(&keys, h.clone());
        // A helper claimed the first two chunks (16 hashes) and was then descheduled.
        job.next.store(2, Ordering::Relaxed);
        assert_eq!(job.finish(), alone(&keys, &h));
    }

    #[test]
    fn a_pool_whose_helpers_are_gone_still_signs_everything() {
        let keys = keys();
        let (tx, rx) = mpsc::channel();
        drop(rx);
        let pool = SigningPool {
            threads: 1,
            helpers: OnceLock::from(vec![tx]),
        };
        let h = hashes(16);
        assert_eq!(pool.sign(&keys, h.clone()), alone(&keys, &h));
    }
}

#[cfg(test)]
mod stream_index_tests {
    use super::*;
    use keyledger_core::event::{Deleted, Event};

    #[test]
    fn an_index_row_pointing_at_another_keys_event_is_corrupt_not_that_keys_history() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(
            &dir.path().join("log.redb"),
            SigningKeys::ephemeral([5; 32], Timestamp(0)),
        )
        .unwrap();
        let (mine, theirs) = (Uuid::from_u128(1), Uuid::from_u128(2));
        for key_id in [mine, theirs] {
            let request = AppendRequest {
                key_id,
                account: "default".into(),
                expected_version: 0,
                actor: "test".into(),
                occurred_at: Timestamp(1),
                events: vec![(Uuid::now_v7(), Event::Deleted(Deleted {}))],
                idempotency: None,
            };
            log.append(request, &mut NoProjection).unwrap().unwrap();
        }
        assert_eq!(log.stream(mine).unwrap()[0].key_id, mine);
        {
            let txn = log.database().unwrap().begin_write().unwrap();
            txn.open_table(STREAM_INDEX)
                .unwrap()
                .insert((mine.as_u128(), 1), 2)
                .unwrap();
            txn.commit().unwrap();
        }
        let err = log.stream(mine).unwrap_err().to_string();
        assert!(
            err.contains(&format!("seq 2 at version 1 of key {mine}")),
            "{err}"
        );
    }
}
