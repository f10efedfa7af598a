//! The single writer: one thread takes commands from a channel, decides them against the current
//! state, appends whatever has accumulated in one redb transaction (one fsync per batch: group
//! commit), applies the committed envelopes to the in-memory model, and only then answers.
//!
//! Batches adapt to load by themselves: while one batch commits, the next accumulates. A lone
//! command is never held back waiting for company.

use crate::{Caller, SCOPE_WRITE, ServiceError, now};
use keyledger_core::{Action, Command, KeyState, decide, evolve};
use keyledger_projections::{KeyEntry, KeyTableProjector, ReadModel};
use keyledger_store::{AppendError, AppendRequest, Envelope, IdempotencyRecord, Log};
use parking_lot::RwLock;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::{broadcast, mpsc, oneshot};
use uuid::Uuid;

/// The committed result of a command: the key after it, and the events it produced.
#[derive(Debug, Clone)]
pub struct Committed {
    pub entry: Arc<KeyEntry>,
    /// Shared with the live event feed: each committed envelope is allocated once.
    pub events: Vec<Arc<Envelope>>,
    /// The result of an earlier command with the same `Idempotency-Key`; nothing was appended.
    pub replayed: bool,
}

/// A client's `Idempotency-Key` with the fingerprint of its request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idempotency {
    pub key: String,
    /// Hex SHA-256 of the request (method, path, canonical body).
    pub fingerprint: String,
}

/// How long an idempotency key is remembered.
pub const IDEMPOTENCY_TTL_SECONDS: i64 = 24 * 3600;

pub(crate) struct Job {
    pub key_id: Uuid,
    /// The calling key as it authenticated; `None` for the system and the CLI. It is checked
    /// again at commit ([`Caller::at_commit`]), and its powers there bound the command: its
    /// account, and for a non-admin key its [`crate::Bounds`] (without them a key could take
    /// over a more powerful key, e.g. reset an admin key, or lift its own limits).
    pub caller: Option<Caller>,
    pub if_version: Option<u64>,
    pub action: Action,
    pub actor: String,
    pub idempotency: Option<Idempotency>,
    pub reply: oneshot::Sender<Result<Committed, ServiceError>>,
}

impl Job {
    fn scoped_idempotency_key(&self) -> Option<String> {
        self.idempotency
            .as_ref()
            .map(|i| format!("{}:{}", self.actor, i.key))
    }
}

/// What the writer reports after each committed batch (for metrics).
#[derive(Debug, Clone, Copy)]
pub struct BatchStats {
    pub commands: usize,
    pub events: usize,
    pub seconds: f64,
}

pub type BatchObserver = Arc<dyn Fn(BatchStats) + Send + Sync>;

/// An append's result with its envelopes behind `Arc`s, shared by the reply and the feed.
type SharedResult = Result<Vec<Arc<Envelope>>, AppendError>;

fn shared(results: Vec<keyledger_store::AppendResult>) -> Vec<SharedResult> {
    results
        .into_iter()
        .map(|r| r.map(|events| events.into_iter().map(Arc::new).collect()))
        .collect()
}

fn unavailable() -> ServiceError {
    ServiceError::Unavailable("storage is unavailable; nothing was written, retry later".into())
}

pub(crate) struct Writer {
    pub log: Log,
    pub model: Arc<RwLock<ReadModel>>,
    pub events: broadcast::Sender<Arc<Envelope>>,
    pub max_batch: usize,
    pub observer: Option<BatchObserver>,
    pub max_keys_per_account: Option<usize>,
}

struct Pending {
    job: Job,
    outcome: Outcome,
}

enum Outcome {
    /// Index into the append requests.
    Appended(usize),
    /// Decided to nothing; answer with the current state.
    Unchanged,
    /// Same idempotency key and request as an earlier job of this batch.
    SameAs(usize),
    /// Same idempotency key and request as an earlier, committed command.
    Replay { key_id: Uuid, version: u64 },
}

impl Writer {
    pub fn run(self, mut rx: mpsc::Receiver<Job>) {
        let mut jobs = Vec::with_capacity(self.max_batch);
        while let Some(first) = rx.blocking_recv() {
            jobs.push(first);
            while jobs.len() < self.max_batch {
                match rx.try_recv() {
                    Ok(job) => jobs.push(job),
                    Err(_) => break,
                }
            }
            self.process(std::mem::take(&mut jobs));
        }
    }

    fn process(&self, jobs: Vec<Job>) {
        // After an I/O error the log must be reopened; until that works, writes are refused.
        if self.log.database().is_err()
            && let Err(e) = self.log.reopen()
        {
            tracing::warn!(error = %e, "storage still unavailable");
            for job in jobs {
                let _ = job.reply.send(Err(unavailable()));
            }
            return;
        }
        let started = std::time::Instant::now();
        let now = now();
        // States as this batch leaves them, for commands on the same key later in the batch.
        let mut overlay: HashMap<Uuid, KeyState> = HashMap::new();
        let mut requests: Vec<AppendRequest> = Vec::new();
        let mut pending: Vec<Pending> = Vec::with_capacity(jobs.len());
        // Idempotency keys of this batch -> (fingerprint, index in `pending`).
        let mut batch_keys: HashMap<String, (String, usize)> = HashMap::new();
        // How this batch changes each account's count of live keys (for the per-account limit).
        // It assumes each decided append commits; one refused in the batch (a version conflict,
        // which the single writer never causes against its own model) would leave it off by one.
        let mut live_delta: HashMap<String, isize> = HashMap::new();
        {
            let model = self.model.read();
            for job in jobs {
                let state_of =
                    |id: &Uuid| overlay.get(id).or_else(|| model.get(id).map(|e| &e.state));
                // The calling key as it stands now, after the commands before this one.
                let changed;
                let caller = match &job.caller {
                    Some(c) => match c.at_commit(state_of(&c.key_id), now) {
                        Ok(None) => Some(c),
                        Ok(Some(now)) => {
                            changed = now;
                            Some(&changed)
                        }
                        Err(e) => {
                            let _ = job.reply.send(Err(e));
                            continue;
                        }
                    },
                    None => None,
                };
                let scoped = job.scoped_idempotency_key();
                if let Some(scoped) = &scoped {
                    match self.idempotent_outcome(&job, scoped, &batch_keys, now) {
                        Err(e) => {
                            let _ = job.reply.send(Err(e));
                            continue;
                        }
                        Ok(Some(outcome)) => {
                            pending.push(Pending { job, outcome });
                            continue;
                        }
                        Ok(None) => {}
                    }
                }
                let fingerprint = job.idempotency.as_ref().map(|i| i.fingerprint.clone());
                let before = pending.len();
                let current = state_of(&job.key_id).cloned();
                match self.decide(&job, caller, current.as_ref(), now) {
                    Err(e) => {
                        let _ = job.reply.send(Err(e));
                    }
                    Ok(events) if events.is_empty() => pending.push(Pending {
                        job,
                        outcome: Outcome::Unchanged,
                    }),
                    Ok(events) => {
                        let account = match (&job.action, &current) {
                            (_, Some(s)) => s.account.clone(),
                            (Action::Create(new), None) => new.account.clone(),
                            _ => unreachable!("decide refuses non-creates on absent keys"),
                        };
                        if current.is_none()
                            && let Err(e) = self.check_key_limit(&model, &account, &live_delta)
                        {
                            let _ = job.reply.send(Err(e));
                            continue;
                        }
                        let mut state = current.clone();
                        for e in &events {
                            state = Some(evolve(state, job.key_id, now, e));
                        }
                        let state = state.expect("events were applied");
                        let was_live = current.as_ref().is_some_and(|s| !s.is_deleted());
                        let is_live = !state.is_deleted();
                        if was_live != is_live {
                            *live_delta.entry(account.clone()).or_default() +=
                                if is_live { 1 } else { -1 };
                        }
                        overlay.insert(job.key_id, state);
                        let idempotency =
                            job.scoped_idempotency_key().map(|key| IdempotencyRecord {
                                key,
                                fingerprint: fingerprint.clone().unwrap_or_default(),
                                key_id: job.key_id,
                                version: 0,
                                at: now,
                            });
                        requests.push(AppendRequest {
                            key_id: job.key_id,
                            account,
                            expected_version: current.as_ref().map_or(0, |s| s.version),
                            actor: job.actor.clone(),
                            occurred_at: now,
                            events: events.into_iter().map(|e| (Uuid::now_v7(), e)).collect(),
                            idempotency,
                        });
                        pending.push(Pending {
                            job,
                            outcome: Outcome::Appended(requests.len() - 1),
                        });
                    }
                }
                if let (Some(scoped), true) = (scoped, pending.len() > before) {
                    batch_keys.insert(scoped, (fingerprint.unwrap_or_default(), before));
                }
            }
        }
        if pending.is_empty() {
            return;
        }
        let results = if requests.is_empty() {
            Vec::new()
        } else {
            match self.log.append_batch(&requests, &mut KeyTableProjector) {
                Ok(r) => shared(r),
                Err(e) => {
                    tracing::error!(error = %e, commands = pending.len(), "commit failed; nothing of this batch was written");
                    for p in pending {
                        let _ = p.job.reply.send(Err(unavailable()));
                    }
                    if let Err(e) = self.log.reopen() {
                        tracing::warn!(error = %e, "reopening the log failed; will retry with the next command");
                    }
                    return;
                }
            }
        };
        let committed: Vec<&Arc<Envelope>> = results.iter().flatten().flatten().collect();
        if !committed.is_empty() {
            let mut model = self.model.write();
            for env in &committed {
                model.apply(env);
            }
        }
        for env in &committed {
            let _ = self.events.send(Arc::clone(env));
        }
        if let Some(observe) = &self.observer {
            observe(BatchStats {
                commands: pending.len(),
                events: committed.len(),
                seconds: started.elapsed().as_secs_f64(),
            });
        }
        let model = self.model.read();
        let replies: Vec<Result<Committed, ServiceError>> = pending
            .iter()
            .map(|p| self.reply_for(p, &pending, &results, &model))
            .collect();
        drop(model);
        for (p, reply) in pending.into_iter().zip(replies) {
            let _ = p.job.reply.send(reply);
        }
    }

    fn reply_for(
        &self,
        p: &Pending,
        all: &[Pending],
        results: &[SharedResult],
        model: &ReadModel,
    ) -> Result<Committed, ServiceError> {
        let current = |id: &Uuid| model.get(id).cloned().ok_or(ServiceError::NotFound);
        match &p.outcome {
            Outcome::Appended(i) => match &results[*i] {
                Err(AppendError::Conflict { .. }) => Err(ServiceError::Conflict(
                    "a concurrent change to this key won; retry".into(),
                )),
                Err(AppendError::IdReused { .. }) => {
                    Err(ServiceError::Conflict("event id reused".into()))
                }
                Ok(events) => Ok(Committed {
                    entry: current(&p.job.key_id)?,
                    events: events.clone(),
                    replayed: false,
                }),
            },
            Outcome::Unchanged => Ok(Committed {
                entry: current(&p.job.key_id)?,
                events: Vec::new(),
                replayed: false,
            }),
            Outcome::SameAs(first) => {
                let mut c = self.reply_for(&all[*first], all, results, model)?;
                c.events.clear();
                c.replayed = true;
                Ok(c)
            }
            Outcome::Replay { key_id, version } => {
                let entry = current(key_id)?;
                let entry = if entry.state.version == *version {
                    entry
                } else {
                    let events = self.log.stream(*key_id).map_err(ServiceError::storage)?;
                    let state = events
                        .iter()
                        .take_while(|e| e.version <= *version)
                        .fold(None, |s, e| {
                            Some(evolve(s, e.key_id, e.occurred_at, &e.event))
                        })
                        .ok_or(ServiceError::NotFound)?;
                    Arc::new(KeyEntry::detached(state))
                };
                Ok(Committed {
                    entry,
                    events: Vec::new(),
                    replayed: true,
                })
            }
        }
    }

    /// `Some` when the job repeats an earlier one; an error when it reuses a key for a
    /// different request.
    fn idempotent_outcome(
        &self,
        job: &Job,
        scoped: &str,
        batch: &HashMap<String, (String, usize)>,
        now: keyledger_core::Timestamp,
    ) -> Result<Option<Outcome>, ServiceError> {
        let fp = job
            .idempotency
            .as_ref()
            .map_or("", |i| i.fingerprint.as_str());
        let mismatch = || ServiceError::IdempotencyMismatch;
        if let Some((first_fp, index)) = batch.get(scoped) {
            return if first_fp == fp {
                Ok(Some(Outcome::SameAs(*index)))
            } else {
                Err(mismatch())
            };
        }
        let record = self
            .log
            .idempotency(scoped)
            .map_err(ServiceError::storage)?;
        match record {
            Some(r) if r.at.plus_seconds(IDEMPOTENCY_TTL_SECONDS) > now => {
                if r.fingerprint == fp {
                    Ok(Some(Outcome::Replay {
                        key_id: r.key_id,
                        version: r.version,
                    }))
                } else {
                    Err(mismatch())
                }
            }
            _ => Ok(None),
        }
    }

    /// Refuses a new key in `account` when it already has [`Writer::max_keys_per_account`]
    /// live keys, counting the creates and revocations earlier in this batch (`live_delta`).
    fn check_key_limit(
        &self,
        model: &ReadModel,
        account: &str,
        live_delta: &HashMap<String, isize>,
    ) -> Result<(), ServiceError> {
        let Some(limit) = self.max_keys_per_account else {
            return Ok(());
        };
        let delta = live_delta.get(account).copied().unwrap_or(0);
        let count = model.live_keys(account).saturating_add_signed(delta);
        if count >= limit {
            return Err(ServiceError::KeyLimit {
                account: account.to_owned(),
                count,
                limit,
            });
        }
        Ok(())
    }

    /// Decides `job` for `caller` (as it stands at commit) against the key's `current` state.
    fn decide(
        &self,
        job: &Job,
        caller: Option<&Caller>,
        current: Option<&KeyState>,
        now: keyledger_core::Timestamp,
    ) -> Result<Vec<keyledger_core::Event>, ServiceError> {
        if let Some(c) = caller {
            c.require(SCOPE_WRITE)?;
        }
        // A create's account was checked by `Service::create`: a key's account never changes,
        // so the caller's is the same at commit.
        let account_limit = caller.and_then(Caller::account_limit);
        if let (Some(limit), Some(s)) = (account_limit, current)
            && limit != s.account
        {
            // Another account's key answers as if absent; a create of its id as a conflict.
            return Err(match job.action {
                Action::Create(_) => {
                    ServiceError::Conflict("a key with this id already exists".into())
                }
                _ => ServiceError::NotFound,
            });
        }
        let grace = caller.is_some_and(|c| c.rotating);
        let bounds = caller.and_then(Caller::bounds);
        if grace || bounds.is_some() {
            // A missing, stale or revoked key answers as it would to anyone (and in that
            // order), before any check that could tell it apart from another account's key.
            keyledger_core::check_version(current, job.if_version)?;
            match (current, &job.action) {
                (_, Action::Create(_)) => {}
                (None, _) => return Err(ServiceError::NotFound),
                (Some(s), _) if s.deleted_at.is_some() => return Err(ServiceError::Deleted),
                _ => {}
            }
        }
        if grace {
            return Err(ServiceError::Forbidden(
                "the calling secret was rotated away (it is in its grace period): it may read \
                 and verify, but changing keys needs the current secret"
                    .into(),
            ));
        }
        if let Some(bounds) = &bounds {
            bounds.check(&job.action, current)?;
        }
        let cmd = Command {
            now,
            if_version: job.if_version,
            action: job.action.clone(),
        };
        Ok(decide(current, &cmd)?)
    }
}
