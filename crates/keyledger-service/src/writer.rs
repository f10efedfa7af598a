//! The single writer: one thread takes commands from a channel, decides them against the current
//! state, appends whatever has accumulated in one redb transaction (one fsync per batch: group
//! commit), applies the committed envelopes to the in-memory model, and only then answers.
//!
//! Batches adapt to load by themselves: while one batch commits, the next accumulates. A lone
//! command is never held back waiting for company.

use crate::{ServiceError, now};
use keyledger_core::{Action, Command, KeyState, decide, evolve};
use keyledger_projections::{KeyEntry, KeyTableProjector, ReadModel};
use keyledger_store::{AppendError, AppendRequest, Envelope, Log};
use parking_lot::RwLock;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::{broadcast, mpsc, oneshot};
use uuid::Uuid;

/// The committed result of a command: the key after it, and the events it produced.
#[derive(Debug, Clone)]
pub struct Committed {
    pub entry: Arc<KeyEntry>,
    pub events: Vec<Envelope>,
}

pub(crate) struct Job {
    pub key_id: Uuid,
    pub account_limit: Option<String>,
    pub if_version: Option<u64>,
    pub action: Action,
    pub actor: String,
    pub reply: oneshot::Sender<Result<Committed, ServiceError>>,
}

/// What the writer reports after each committed batch (for metrics).
#[derive(Debug, Clone, Copy)]
pub struct BatchStats {
    pub commands: usize,
    pub events: usize,
    pub seconds: f64,
}

pub type BatchObserver = Arc<dyn Fn(BatchStats) + Send + Sync>;

pub(crate) struct Writer {
    pub log: Log,
    pub model: Arc<RwLock<ReadModel>>,
    pub events: broadcast::Sender<Arc<Envelope>>,
    pub max_batch: usize,
    pub observer: Option<BatchObserver>,
}

struct Pending {
    job: Job,
    /// Index into the append requests, when the command produced events.
    request: Option<usize>,
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
        let started = std::time::Instant::now();
        let now = now();
        // States as this batch leaves them, for commands on the same key later in the batch.
        let mut overlay: HashMap<Uuid, KeyState> = HashMap::new();
        let mut requests: Vec<AppendRequest> = Vec::new();
        let mut pending: Vec<Pending> = Vec::with_capacity(jobs.len());
        {
            let model = self.model.read();
            for job in jobs {
                let current = overlay
                    .get(&job.key_id)
                    .cloned()
                    .or_else(|| model.get(&job.key_id).map(|e| e.state.clone()));
                match self.decide(&job, current.as_ref(), now) {
                    Err(e) => {
                        let _ = job.reply.send(Err(e));
                    }
                    Ok(events) if events.is_empty() => pending.push(Pending { job, request: None }),
                    Ok(events) => {
                        let account = match (&job.action, &current) {
                            (_, Some(s)) => s.account.clone(),
                            (Action::Create(new), None) => new.account.clone(),
                            _ => unreachable!("decide refuses non-creates on absent keys"),
                        };
                        let mut state = current.clone();
                        for e in &events {
                            state = Some(evolve(state, job.key_id, now, e));
                        }
                        overlay.insert(job.key_id, state.expect("events were applied"));
                        requests.push(AppendRequest {
                            key_id: job.key_id,
                            account,
                            expected_version: current.as_ref().map_or(0, |s| s.version),
                            actor: job.actor.clone(),
                            occurred_at: now,
                            events: events.into_iter().map(|e| (Uuid::now_v7(), e)).collect(),
                        });
                        pending.push(Pending {
                            job,
                            request: Some(requests.len() - 1),
                        });
                    }
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
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, commands = pending.len(), "commit failed");
                    for p in pending {
                        let _ = p.job.reply.send(Err(ServiceError::Unavailable(
                            "storage is unavailable; nothing was written".into(),
                        )));
                    }
                    return;
                }
            }
        };
        let committed: Vec<&Envelope> = results.iter().flatten().flatten().collect();
        if !committed.is_empty() {
            let mut model = self.model.write();
            for env in &committed {
                model.apply(env);
            }
        }
        for env in &committed {
            let _ = self.events.send(Arc::new((*env).clone()));
        }
        if let Some(observe) = &self.observer {
            observe(BatchStats {
                commands: pending.len(),
                events: committed.len(),
                seconds: started.elapsed().as_secs_f64(),
            });
        }
        let model = self.model.read();
        for p in pending {
            let reply = match p.request.map(|i| &results[i]) {
                Some(Err(AppendError::Conflict { .. })) => Err(ServiceError::Conflict(
                    "a concurrent change to this key won; retry".into(),
                )),
                Some(Err(AppendError::IdReused { .. })) => {
                    Err(ServiceError::Conflict("event id reused".into()))
                }
                outcome => model
                    .get(&p.job.key_id)
                    .map(|entry| Committed {
                        entry: entry.clone(),
                        events: outcome
                            .map(|r| r.clone().unwrap_or_default())
                            .unwrap_or_default(),
                    })
                    .ok_or(ServiceError::NotFound),
            };
            let _ = p.job.reply.send(reply);
        }
    }

    fn decide(
        &self,
        job: &Job,
        current: Option<&KeyState>,
        now: keyledger_core::Timestamp,
    ) -> Result<Vec<keyledger_core::Event>, ServiceError> {
        if let (Some(limit), Some(s)) = (&job.account_limit, current)
            && *limit != s.account
        {
            // Another account's key answers as if absent; a create of its id as a conflict.
            return Err(match job.action {
                Action::Create(_) => {
                    ServiceError::Conflict("a key with this id already exists".into())
                }
                _ => ServiceError::NotFound,
            });
        }
        let cmd = Command {
            now,
            if_version: job.if_version,
            action: job.action.clone(),
        };
        Ok(decide(current, &cmd)?)
    }
}
