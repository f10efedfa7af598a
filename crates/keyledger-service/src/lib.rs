//! # keyledger-service
//!
//! The application layer of keyledger, knowing neither HTTP nor NATS:
//!
//! - [`Service`]: opens the data dir (log, signing keys, read models), runs the single writer
//!   (group commit, see [`writer`]), and offers the operations: create, update, reset, delete,
//!   get, list, verify, authenticate, bootstrap.
//! - [`Actor`] / [`Caller`]: who acts, with scope checks, account isolation and the rule that a
//!   key never grants scopes it does not hold.
//! - [`VerifyCode`]: the outcome of verifying a presented key.
//!
//! **Invariants:** every command goes through the one writer thread and is answered only after
//! its batch is durably committed and applied to the in-memory model (read-your-writes). Plaintext
//! secrets exist only in [`Secret`] values returned by create/reset and are never logged.

mod caller;
mod error;
pub mod history;
pub mod outbox;
pub mod writer;

pub use caller::{
    Actor, Bounds, Caller, Credential, SCOPE_ADMIN, SCOPE_EVENTS, SCOPE_READ, SCOPE_VERIFY,
    SCOPE_WRITE,
};
pub use error::{AuthError, ServiceError};
pub use history::{AsOf, EventQuery};
pub use keyledger_projections::{Cursor, KeyEntry, ListPage, ListQuery, SortField, SortValue};
pub use writer::{BatchObserver, BatchStats, Committed, Idempotency};

use keyledger_core::secret::{DEFAULT_PREFIX, check_format};
use keyledger_core::validate::DEFAULT_ACCOUNT;
use keyledger_core::{Action, KeyPatch, NewKey, Secret, SecretHash, Timestamp};
use keyledger_projections::{ReadModel, open_read_model, persisted};
use keyledger_store::{Envelope, Log, PublicKeyInfo, SigningKeys};
use parking_lot::{Mutex, RwLock};
use serde_json::Value;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, oneshot};
use uuid::Uuid;
use writer::{Job, Writer};

/// The wall clock, in milliseconds. The only clock the service reads.
pub fn now() -> Timestamp {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    Timestamp::from_millis(ms)
}

/// File names inside the data dir.
pub const LOG_FILE: &str = "keyledger.redb";
pub const SIGNING_KEY_FILE: &str = "signing-keys.json";

#[derive(Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    /// Where the signing keys live; default `<data_dir>/signing-keys.json`.
    pub signing_key_file: Option<PathBuf>,
    /// Most commands in one write transaction.
    pub max_batch: usize,
    /// How often `last_used_at` stamps are persisted.
    pub last_used_flush: Duration,
    pub on_batch: Option<BatchObserver>,
    /// Most keys (not revoked) one account may have; a create beyond is refused (409
    /// `key_limit_reached`). `None`: no limit.
    pub max_keys_per_account: Option<usize>,
}

impl Config {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            signing_key_file: None,
            max_batch: 1024,
            last_used_flush: Duration::from_secs(1),
            on_batch: None,
            max_keys_per_account: None,
        }
    }

    pub fn log_path(&self) -> PathBuf {
        self.data_dir.join(LOG_FILE)
    }

    pub fn signing_key_path(&self) -> PathBuf {
        self.signing_key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join(SIGNING_KEY_FILE))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("data dir {path}: {message}")]
    DataDir { path: String, message: String },
    #[error(
        "no signing key file at {path}, and the log already has events: pass \
         --signing-key-file (KEYLEDGER_SIGNING_KEY_FILE) if the keys live elsewhere; if they \
         are lost, `keyledger signing-key rotate --create` starts a new file, and `keyledger \
         audit verify --public-keys` checks the earlier events against their saved public keys"
    )]
    NoSigningKeys { path: String },
    #[error(transparent)]
    Signing(#[from] keyledger_store::SigningError),
    #[error(transparent)]
    Store(#[from] keyledger_store::StoreError),
    #[error(transparent)]
    Projection(#[from] keyledger_projections::ProjectionError),
}

/// Opens the log of a data dir (creating dir, log and signing key as needed), without starting
/// a service: for offline tools.
pub fn open_log(config: &Config) -> Result<Log, OpenError> {
    create_data_dir(&config.data_dir)?;
    let keys = signing_keys(config, true)?;
    Ok(Log::open(&config.log_path(), keys)?)
}

/// Opens the existing log of a data dir without writing to it (see [`Log::open_read_only`]):
/// for audits and exports, which must leave the file as it was. Without `need_keys`, a
/// missing key file is no error: the log then holds a placeholder key, which never signs, as a
/// read-only log appends nothing.
pub fn open_log_read_only(config: &Config, need_keys: bool) -> Result<Log, OpenError> {
    let keys = match signing_keys(config, false) {
        Err(OpenError::NoSigningKeys { .. }) if !need_keys => {
            SigningKeys::ephemeral([0; 32], now())
        }
        keys => keys?,
    };
    Ok(Log::open_read_only(&config.log_path(), keys)?)
}

/// The data dir, created owner-only if missing (it holds the log and, by default, the signing
/// keys); an existing dir keeps its permissions.
fn create_data_dir(dir: &std::path::Path) -> Result<(), OpenError> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(|e| OpenError::DataDir {
        path: dir.display().to_string(),
        message: e.to_string(),
    })
}

/// The log's signing keys. A missing key file is created only for a log without events (and
/// only when `may_create`; a read-only caller must not even repair the file to find out): for
/// any other log it means the keys are elsewhere, and a new key would sign events that no
/// published key verifies.
fn signing_keys(config: &Config, may_create: bool) -> Result<SigningKeys, OpenError> {
    let path = config.signing_key_path();
    if path.exists() {
        return Ok(SigningKeys::load(&path)?);
    }
    if !may_create || Log::stored_head(&config.log_path())? > 0 {
        return Err(OpenError::NoSigningKeys {
            path: path.display().to_string(),
        });
    }
    Ok(SigningKeys::create(&path, now())?)
}

/// Input of a create, as received (defaults are filled in here).
#[derive(Debug, Clone, Default)]
pub struct CreateKey {
    pub name: String,
    pub account: Option<String>,
    pub owner: Option<String>,
    pub role: Option<String>,
    pub scopes: Vec<String>,
    pub allowed_ips: Vec<String>,
    pub enabled: Option<bool>,
    pub expires_at: Option<Timestamp>,
    pub metadata: Option<Value>,
    pub prefix: Option<String>,
}

impl CreateKey {
    /// The prefix of the key to generate (default `kl`), validated.
    pub fn prefix(&self) -> Result<String, ServiceError> {
        let prefix = self.prefix.as_deref().unwrap_or(DEFAULT_PREFIX);
        keyledger_core::validate::prefix(prefix)?;
        Ok(prefix.to_owned())
    }

    /// The domain's create input, with defaults filled in, in `account`, for `secret`.
    pub fn into_new_key(self, account: String, secret: &Secret) -> NewKey {
        NewKey {
            name: self.name,
            account,
            owner: self.owner,
            role: self.role,
            scopes: self.scopes,
            allowed_ips: self.allowed_ips,
            enabled: self.enabled.unwrap_or(true),
            expires_at: self.expires_at,
            metadata: self.metadata,
            prefix: secret.prefix().to_owned(),
            credential: secret.credential(),
        }
    }
}

/// The result of verifying a presented key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyCode {
    Valid,
    NotFound,
    Disabled,
    Expired,
    Revoked,
    ForbiddenIp,
    InsufficientScopes,
}

impl VerifyCode {
    pub fn as_str(self) -> &'static str {
        match self {
            VerifyCode::Valid => "VALID",
            VerifyCode::NotFound => "NOT_FOUND",
            VerifyCode::Disabled => "DISABLED",
            VerifyCode::Expired => "EXPIRED",
            VerifyCode::Revoked => "REVOKED",
            VerifyCode::ForbiddenIp => "FORBIDDEN_IP",
            VerifyCode::InsufficientScopes => "INSUFFICIENT_SCOPES",
        }
    }
}

/// The hash to look a presented key up by; `None` for a malformed one (its checksum rejects it
/// without a lookup).
fn presented_hash(presented: &str) -> Option<SecretHash> {
    check_format(presented).ok()?;
    Some(SecretHash::of(presented))
}

/// Why a key whose secret was presented may not be used now, in the order in which the codes
/// take precedence; `None`: it may. Verification, authentication and the check of a calling
/// key at commit (`Caller::at_commit`) all answer by it.
pub(crate) fn refusal(
    deleted: bool,
    enabled: bool,
    expired: bool,
    ip_allowed: impl FnOnce() -> bool,
) -> Option<VerifyCode> {
    if deleted {
        Some(VerifyCode::Revoked)
    } else if !enabled {
        Some(VerifyCode::Disabled)
    } else if expired {
        Some(VerifyCode::Expired)
    } else if !ip_allowed() {
        Some(VerifyCode::ForbiddenIp)
    } else {
        None
    }
}

impl std::fmt::Display for VerifyCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone)]
pub struct Verification {
    pub code: VerifyCode,
    /// The key, for every code but `NOT_FOUND`.
    pub entry: Option<Arc<KeyEntry>>,
    /// The presented secret is the rotated-away one, inside its grace period.
    pub rotating: bool,
}

struct Inner {
    log: Log,
    model: Arc<RwLock<ReadModel>>,
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    events: broadcast::Sender<Arc<Envelope>>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    stop_flusher: Mutex<Option<std::sync::mpsc::Sender<()>>>,
    outbox: Arc<outbox::OutboxStatus>,
}

/// The running service. Cheap to clone.
#[derive(Clone)]
pub struct Service {
    inner: Arc<Inner>,
}

impl Service {
    /// Opens the data dir, brings the read models up to the log, starts the writer.
    pub fn open(config: Config) -> Result<Self, OpenError> {
        let log = open_log(&config)?;
        Self::open_with_log(config, log)
    }

    /// As [`Service::open`], on an already opened log (e.g. one on a fault-injecting backend).
    pub fn open_with_log(config: Config, log: Log) -> Result<Self, OpenError> {
        let model = Arc::new(RwLock::new(open_read_model(&log)?));
        let (tx, rx) = mpsc::channel(config.max_batch * 4);
        let (events, _) = broadcast::channel(8192);
        let writer = Writer {
            log: log.clone(),
            model: model.clone(),
            events: events.clone(),
            max_batch: config.max_batch.max(1),
            observer: config.on_batch.clone(),
            max_keys_per_account: config.max_keys_per_account,
        };
        let writer_thread = std::thread::Builder::new()
            .name("keyledger-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| OpenError::DataDir {
                path: config.data_dir.display().to_string(),
                message: e.to_string(),
            })?;
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let flusher = {
            let (log, model, every) = (log.clone(), model.clone(), config.last_used_flush);
            std::thread::Builder::new()
                .name("keyledger-last-used".into())
                .spawn(move || {
                    while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                        stop_rx.recv_timeout(every)
                    {
                        flush_last_used(&log, &model);
                    }
                    flush_last_used(&log, &model);
                })
                .map_err(|e| OpenError::DataDir {
                    path: config.data_dir.display().to_string(),
                    message: e.to_string(),
                })?
        };
        Ok(Self {
            inner: Arc::new(Inner {
                log,
                model,
                jobs: Mutex::new(Some(tx)),
                events,
                threads: Mutex::new(vec![writer_thread, flusher]),
                stop_flusher: Mutex::new(Some(stop_tx)),
                outbox: Arc::default(),
            }),
        })
    }

    pub fn log(&self) -> &Log {
        &self.inner.log
    }

    /// The publishing state of the event outbox (NATS).
    pub fn outbox(&self) -> &Arc<outbox::OutboxStatus> {
        &self.inner.outbox
    }

    /// Live committed envelopes, in seq order.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Envelope>> {
        self.inner.events.subscribe()
    }

    pub fn public_keys(&self) -> Vec<PublicKeyInfo> {
        self.inner.log.signing_keys().public_keys()
    }

    /// Seq of the last event applied to the read models.
    pub fn head(&self) -> u64 {
        self.inner.model.read().head()
    }

    pub fn key_count(&self) -> usize {
        self.inner.model.read().len()
    }

    /// Whether the writer is accepting commands.
    pub fn is_ready(&self) -> bool {
        self.inner
            .jobs
            .lock()
            .as_ref()
            .is_some_and(|tx| !tx.is_closed())
    }

    /// Stops taking commands, lets the writer finish its queue, persists `last_used_at`.
    pub fn shutdown(&self) {
        self.inner.jobs.lock().take();
        self.inner.stop_flusher.lock().take();
        let threads = std::mem::take(&mut *self.inner.threads.lock());
        for t in threads {
            let _ = t.join();
        }
        // Other clones (tasks still winding down) must not keep the file open.
        self.inner.log.close();
    }

    async fn submit(
        &self,
        actor: &Actor,
        key_id: Uuid,
        if_version: Option<u64>,
        action: Action,
        idempotency: Option<Idempotency>,
    ) -> Result<Committed, ServiceError> {
        let tx = self
            .inner
            .jobs
            .lock()
            .clone()
            .ok_or_else(|| ServiceError::Unavailable("the service is shutting down".into()))?;
        let (reply, rx) = oneshot::channel();
        let job = Job {
            key_id,
            caller: match actor {
                Actor::Key(c) => Some(c.clone()),
                _ => None,
            },
            if_version,
            action,
            actor: actor.name(),
            idempotency,
            reply,
        };
        tx.send(job)
            .await
            .map_err(|_| ServiceError::Unavailable("the service is shutting down".into()))?;
        rx.await
            .map_err(|_| ServiceError::Unavailable("the writer stopped".into()))?
    }

    /// Creates a key. The returned [`Secret`] is the only copy of its plaintext; it is `None`
    /// when the call replays an earlier one with the same idempotency key (secrets are never
    /// stored, so they cannot be shown twice).
    pub async fn create(
        &self,
        actor: &Actor,
        input: CreateKey,
        idempotency: Option<Idempotency>,
    ) -> Result<(Committed, Option<Secret>), ServiceError> {
        actor.require(SCOPE_WRITE)?;
        let account = match (input.account.clone(), actor.account_limit()) {
            (Some(a), Some(limit)) if a != limit => {
                return Err(ServiceError::Forbidden(
                    "account: a non-admin key creates keys only in its own account".into(),
                ));
            }
            (Some(a), _) => a,
            (None, Some(limit)) => limit.to_owned(),
            (None, None) => DEFAULT_ACCOUNT.to_owned(),
        };
        let mut input = input;
        // A limited key's keys inherit the limits they are not given (it may set no wider).
        if let Some(b) = actor.bounds() {
            if input.allowed_ips.is_empty() {
                input.allowed_ips = b.allowed_ips.iter().map(ToString::to_string).collect();
            }
            input.expires_at = input.expires_at.or(b.expires_at);
        }
        let secret = generate_secret(&input.prefix()?)?;
        let new = input.into_new_key(account, &secret);
        let committed = self
            .submit(
                actor,
                Uuid::now_v7(),
                None,
                Action::Create(new),
                idempotency,
            )
            .await?;
        let secret = (!committed.replayed).then_some(secret);
        Ok((committed, secret))
    }

    pub async fn update(
        &self,
        actor: &Actor,
        id: Uuid,
        patch: KeyPatch,
        if_version: Option<u64>,
        idempotency: Option<Idempotency>,
    ) -> Result<Committed, ServiceError> {
        actor.require(SCOPE_WRITE)?;
        self.submit(actor, id, if_version, Action::Update(patch), idempotency)
            .await
    }

    /// Rotates the secret; the old one stays valid for `grace_seconds`.
    pub async fn reset(
        &self,
        actor: &Actor,
        id: Uuid,
        grace_seconds: u64,
        if_version: Option<u64>,
        idempotency: Option<Idempotency>,
    ) -> Result<(Committed, Option<Secret>), ServiceError> {
        actor.require(SCOPE_WRITE)?;
        let prefix = self
            .visible(actor, id)
            .map(|e| e.state.prefix.clone())
            .unwrap_or_else(|| DEFAULT_PREFIX.to_owned());
        let secret = generate_secret(&prefix)?;
        let action = Action::Reset {
            credential: secret.credential(),
            grace_seconds,
        };
        let committed = self
            .submit(actor, id, if_version, action, idempotency)
            .await?;
        let secret = (!committed.replayed).then_some(secret);
        Ok((committed, secret))
    }

    pub async fn delete(
        &self,
        actor: &Actor,
        id: Uuid,
        if_version: Option<u64>,
        idempotency: Option<Idempotency>,
    ) -> Result<Committed, ServiceError> {
        actor.require(SCOPE_WRITE)?;
        self.submit(actor, id, if_version, Action::Delete, idempotency)
            .await
    }

    /// Runs a system command (expiry, end of rotation) on a key.
    pub async fn system(&self, id: Uuid, action: Action) -> Result<Committed, ServiceError> {
        self.submit(&Actor::System, id, None, action, None).await
    }

    fn visible(&self, actor: &Actor, id: Uuid) -> Option<Arc<KeyEntry>> {
        self.inner
            .model
            .read()
            .get(&id)
            .filter(|e| actor.sees(&e.state))
            .cloned()
    }

    /// One live (not revoked) key the actor may see.
    pub fn get(&self, actor: &Actor, id: Uuid) -> Result<Arc<KeyEntry>, ServiceError> {
        actor.require(SCOPE_READ)?;
        self.visible(actor, id)
            .filter(|e| !e.state.is_deleted())
            .ok_or(ServiceError::NotFound)
    }

    pub fn list(&self, actor: &Actor, mut query: ListQuery) -> Result<ListPage, ServiceError> {
        actor.require(SCOPE_READ)?;
        query.account = self.account_filter(actor, query.account.take())?;
        Ok(self.inner.model.read().list(&query))
    }

    /// Verifies a presented key at `now`: format, lookup, state, IP, scopes. A `VALID` key's
    /// `last_used_at` is stamped.
    pub fn verify(
        &self,
        presented: &str,
        required_scopes: &[String],
        ip: Option<IpAddr>,
        now: Timestamp,
    ) -> Verification {
        self.verify_in(None, presented, required_scopes, ip, now)
    }

    /// [`Service::verify`] on behalf of `verifier`: a key outside a non-admin verifier's
    /// account is `NOT_FOUND`, as if absent, and its `last_used_at` is left alone.
    pub fn verify_for(
        &self,
        verifier: &Caller,
        presented: &str,
        required_scopes: &[String],
        ip: Option<IpAddr>,
        now: Timestamp,
    ) -> Verification {
        self.verify_in(Some(verifier), presented, required_scopes, ip, now)
    }

    /// Whether the key whose secret hashes to `hash` would still authenticate from `ip` now,
    /// as [`Service::authenticate`] checks, without stamping a use: for a caller whose access
    /// lasts (an event stream). Its current state, or `None`.
    pub fn still_authenticates(
        &self,
        hash: &SecretHash,
        ip: Option<IpAddr>,
        now: Timestamp,
    ) -> Option<Arc<KeyEntry>> {
        let v = self.verify_hash(None, hash, &[], ip, now, false);
        v.entry.filter(|_| v.code == VerifyCode::Valid)
    }

    fn verify_in(
        &self,
        verifier: Option<&Caller>,
        presented: &str,
        required_scopes: &[String],
        ip: Option<IpAddr>,
        now: Timestamp,
    ) -> Verification {
        let Some(hash) = presented_hash(presented) else {
            return Verification {
                code: VerifyCode::NotFound,
                entry: None,
                rotating: false,
            };
        };
        self.verify_hash(verifier, &hash, required_scopes, ip, now, true)
    }

    /// Verification past the format check; `stamp` records a `VALID` answer as a use.
    fn verify_hash(
        &self,
        verifier: Option<&Caller>,
        hash: &SecretHash,
        required_scopes: &[String],
        ip: Option<IpAddr>,
        now: Timestamp,
        stamp: bool,
    ) -> Verification {
        let not_found = Verification {
            code: VerifyCode::NotFound,
            entry: None,
            rotating: false,
        };
        let model = self.inner.model.read();
        let Some(m) = model.by_hash(hash) else {
            return not_found;
        };
        // The entry's own copies of the state's fields: fewer cache lines than `state`.
        let e = &m.entry;
        if verifier.is_some_and(|c| !c.sees(&e.state)) {
            return not_found;
        }
        // An old secret verifies only while its grace period lasts; a revoked key has none
        // (`evolve` drops it), so its old secret is unknown, not revoked.
        if m.previous
            && e.state
                .previous
                .as_ref()
                .is_none_or(|p| p.secret_hash != *hash || p.until <= now)
        {
            return not_found;
        }
        let refused = refusal(e.is_deleted(), e.is_enabled(), e.is_expired_at(now), || {
            e.allows_ip(ip)
        });
        let code = match refused {
            Some(code) => code,
            None if !required_scopes.iter().all(|r| e.state.has_scope(r)) => {
                VerifyCode::InsufficientScopes
            }
            None => {
                if stamp {
                    model.touch(&m.entry, now.millis());
                }
                VerifyCode::Valid
            }
        };
        Verification {
            code,
            entry: Some(m.entry),
            rotating: m.previous,
        }
    }

    /// Authenticates a caller of keyledger's own API, from `remote_ip`.
    pub fn authenticate(
        &self,
        presented: Option<&str>,
        remote_ip: Option<IpAddr>,
    ) -> Result<(Caller, Arc<KeyEntry>), AuthError> {
        let presented = presented.ok_or(AuthError::Missing)?;
        let hash = presented_hash(presented).ok_or(AuthError::Invalid(VerifyCode::NotFound))?;
        let v = self.verify_hash(None, &hash, &[], remote_ip, now(), true);
        match (v.code, v.entry) {
            (VerifyCode::Valid, Some(entry)) => {
                let caller = Caller {
                    rotating: v.rotating,
                    credential: Some(Credential {
                        hash,
                        ip: remote_ip,
                    }),
                    ..Caller::from_state(&entry.state)
                };
                Ok((caller, entry))
            }
            (code, _) => Err(AuthError::Invalid(code)),
        }
    }

    /// On an empty log, creates the first admin key. Uses `preset` when given, otherwise
    /// generates one and returns it (to be shown once). Does nothing on a non-empty log.
    pub async fn bootstrap(&self, preset: Option<Secret>) -> Result<Option<Secret>, ServiceError> {
        if self
            .inner
            .log
            .head()
            .map_err(|e| ServiceError::Unavailable(e.to_string()))?
            .0
            > 0
        {
            return Ok(None);
        }
        let generated = preset.is_none();
        let secret = match preset {
            Some(s) => s,
            None => generate_secret(DEFAULT_PREFIX)?,
        };
        let new = NewKey {
            name: "bootstrap admin".into(),
            account: DEFAULT_ACCOUNT.into(),
            owner: None,
            role: Some("owner".into()),
            scopes: vec![SCOPE_ADMIN.into()],
            allowed_ips: vec![],
            enabled: true,
            expires_at: None,
            metadata: None,
            prefix: secret.prefix().to_owned(),
            credential: secret.credential(),
        };
        self.submit(
            &Actor::System,
            Uuid::now_v7(),
            None,
            Action::Create(new),
            None,
        )
        .await?;
        Ok(generated.then_some(secret))
    }

    pub(crate) fn with_model<T>(&self, f: impl FnOnce(&ReadModel) -> T) -> T {
        f(&self.inner.model.read())
    }

    /// Persists pending `last_used_at` stamps now.
    pub fn flush_last_used(&self) {
        flush_last_used(&self.inner.log, &self.inner.model);
    }

    /// The in-memory key states, sorted by id (for consistency checks).
    pub fn snapshot(&self) -> Vec<keyledger_core::KeyState> {
        self.inner.model.read().snapshot()
    }
}

fn flush_last_used(log: &Log, model: &RwLock<ReadModel>) {
    let dirty = model.read().take_dirty_last_used();
    // On failure the log has reopened itself (`Log::write_aside`); the stamps wait for the next
    // flush.
    if let Err(e) = persisted::store_last_used(log, &dirty) {
        model.read().requeue_last_used(&dirty);
        tracing::warn!(error = %e, count = dirty.len(), "could not persist last_used_at; will retry");
    }
}

/// A new key from the OS CSPRNG.
pub fn generate_secret(prefix: &str) -> Result<Secret, ServiceError> {
    let mut random = zeroize::Zeroizing::new([0u8; 32]);
    getrandom::fill(random.as_mut())
        .map_err(|_| ServiceError::Unavailable("the OS random source failed".into()))?;
    Ok(Secret::generate(prefix, &random))
}
