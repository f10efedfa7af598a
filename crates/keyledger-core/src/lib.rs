//! # keyledger-core
//!
//! The pure domain of keyledger: what a key is, what may be done to it, and what happened to it.
//!
//! - [`KeyState`]: one key, folded from its events.
//! - [`Command`] / [`Action`]: requests against one key's stream, carrying their own `now`.
//! - [`Event`]: `key.created`, `key.updated`, `key.rotated`, `key.deleted`, `key.expired`,
//!   `key.rotation_ended`.
//! - [`decide`]`(state, command) -> events` and [`evolve`]`(state, event) -> state`.
//! - [`secret`]: the key format (`<prefix>_<random><checksum>`) and its SHA-256 [`SecretHash`].
//! - [`Timestamp`]: milliseconds, serialized as RFC 3339.
//!
//! **Invariant:** this crate does no I/O, reads no clock and draws no randomness. Time and random
//! bytes come in through commands; the same inputs always give the same events.

pub mod command;
pub mod event;
pub mod model;
pub mod secret;
pub mod time;
pub mod validate;

pub use command::{Action, Command, Credential, KeyPatch, NewKey};
pub use event::Event;
pub use model::{KeyState, PreviousSecret};
pub use secret::{Secret, SecretHash};
pub use time::Timestamp;

use event::{Created, Deleted, Expired, Rotated, RotationEnded, Updated};
use uuid::Uuid;

/// Why a command was refused. Validation errors name their field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("a key with this id already exists")]
    AlreadyExists,
    #[error("key not found")]
    NotFound,
    #[error("the key has been revoked")]
    Deleted,
    #[error("version mismatch: expected {expected}, the key is at {actual}")]
    VersionMismatch { expected: u64, actual: u64 },
}

/// Refuses a command made against another version of the key (`If-Match`). It is the first
/// check of [`decide`]; callers that refuse commands before it call it first too, so that a
/// stale version answers the same to everyone.
pub fn check_version(state: Option<&KeyState>, if_version: Option<u64>) -> Result<(), DomainError> {
    match (if_version, state) {
        (Some(expected), Some(s)) if expected != s.version => Err(DomainError::VersionMismatch {
            expected,
            actual: s.version,
        }),
        _ => Ok(()),
    }
}

/// Decides which events a command produces against the key's current state (`None`: no stream).
/// An empty list means "nothing to do" (e.g. an update that changes nothing).
pub fn decide(state: Option<&KeyState>, cmd: &Command) -> Result<Vec<Event>, DomainError> {
    check_version(state, cmd.if_version)?;
    if let Action::Create(new) = &cmd.action {
        if state.is_some() {
            return Err(DomainError::AlreadyExists);
        }
        return create(new, cmd.now).map(|e| vec![e]);
    }
    let state = state.ok_or(DomainError::NotFound)?;
    if state.is_deleted() {
        // System commands on a revoked key are simply moot.
        return match cmd.action {
            Action::Expire | Action::EndRotation => Ok(vec![]),
            _ => Err(DomainError::Deleted),
        };
    }
    match &cmd.action {
        Action::Create(_) => unreachable!("handled above"),
        Action::Update(patch) => update(state, patch, cmd.now),
        Action::Reset {
            credential,
            grace_seconds,
        } => {
            let grace_seconds = validate::grace_seconds(*grace_seconds)?;
            Ok(vec![Event::Rotated(Rotated {
                secret_hash: credential.secret_hash,
                hint: credential.hint.clone(),
                previous_secret_hash: state.secret_hash,
                grace_seconds,
                grace_until: (grace_seconds > 0)
                    .then(|| cmd.now.plus_seconds(i64::from(grace_seconds))),
            })])
        }
        Action::Delete => Ok(vec![Event::Deleted(Deleted {})]),
        Action::Expire => Ok(match state.expires_at {
            Some(at) if at <= cmd.now && !state.expired => {
                vec![Event::Expired(Expired { expires_at: at })]
            }
            _ => vec![],
        }),
        Action::EndRotation => Ok(match &state.previous {
            Some(p) if p.until <= cmd.now => vec![Event::RotationEnded(RotationEnded {
                secret_hash: p.secret_hash,
            })],
            _ => vec![],
        }),
    }
}

fn create(new: &NewKey, now: Timestamp) -> Result<Event, DomainError> {
    validate::name(&new.name)?;
    validate::account(&new.account)?;
    validate::owner(new.owner.as_deref())?;
    validate::role(new.role.as_deref())?;
    validate::prefix(&new.prefix)?;
    let scopes = validate::scopes(&new.scopes)?;
    let allowed_ips = validate::allowed_ips(&new.allowed_ips)?;
    validate::expires_at(new.expires_at, now)?;
    let metadata = validate::metadata(new.metadata.as_ref())?;
    Ok(Event::Created(Created {
        account: new.account.clone(),
        name: new.name.clone(),
        owner: new.owner.clone(),
        role: new.role.clone(),
        scopes,
        allowed_ips,
        enabled: new.enabled,
        expires_at: new.expires_at,
        metadata,
        prefix: new.prefix.clone(),
        hint: new.credential.hint.clone(),
        secret_hash: new.credential.secret_hash,
    }))
}

/// Whether `metadata` sent in a patch (`null` = `{}`) differs from a key's `current` one.
pub fn metadata_differs(
    metadata: &serde_json::Value,
    current: &serde_json::Map<String, serde_json::Value>,
) -> bool {
    match metadata {
        serde_json::Value::Object(m) => m != current,
        serde_json::Value::Null => !current.is_empty(),
        _ => true,
    }
}

/// Keeps only the fields whose new value differs from the current one. A field sent with the
/// value the key already has changes nothing and is not validated again: a key stored under
/// older rules (or an expiry since passed) can be sent back as it was read.
fn update(state: &KeyState, patch: &KeyPatch, now: Timestamp) -> Result<Vec<Event>, DomainError> {
    fn changed<T: PartialEq>(new: Option<T>, old: &T) -> Option<T> {
        new.filter(|n| n != old)
    }
    let name = changed(patch.name.clone(), &state.name);
    if let Some(name) = &name {
        validate::name(name)?;
    }
    let owner = changed(patch.owner.clone(), &state.owner);
    if let Some(owner) = &owner {
        validate::owner(owner.as_deref())?;
    }
    let role = changed(patch.role.clone(), &state.role);
    if let Some(role) = &role {
        validate::role(role.as_deref())?;
    }
    let scopes = changed(patch.scopes.as_ref(), &&state.scopes)
        .map(|s| validate::scopes(s))
        .transpose()?;
    let ips = patch
        .allowed_ips
        .as_deref()
        .map(validate::allowed_ips)
        .transpose()?;
    let expires_at = changed(patch.expires_at, &state.expires_at);
    if let Some(expires_at) = expires_at {
        validate::expires_at(expires_at, now)?;
    }
    let metadata = patch
        .metadata
        .as_ref()
        .filter(|m| metadata_differs(m, &state.metadata))
        .map(|m| validate::metadata(Some(m)))
        .transpose()?;
    let changes = Updated {
        name,
        owner,
        role,
        scopes: changed(scopes, &state.scopes),
        allowed_ips: changed(ips, &state.allowed_ips),
        enabled: changed(patch.enabled, &state.enabled),
        expires_at,
        metadata: changed(metadata, &state.metadata),
    };
    Ok(if changes.is_empty() {
        vec![]
    } else {
        vec![Event::Updated(changes)]
    })
}

/// Folds one event into a key's state. `key_id` and `at` come from the event's envelope.
///
/// # Panics
/// On an event that cannot follow the state (e.g. `key.updated` before `key.created`): the log
/// only ever holds events that [`decide`] produced, so this is a corrupted log.
pub fn evolve(state: Option<KeyState>, key_id: Uuid, at: Timestamp, event: &Event) -> KeyState {
    evolve_owned(state, key_id, at, event.clone())
}

/// [`evolve`] taking the event by value: its strings move into the state instead of being
/// copied (replays, which drop each event after folding it).
pub fn evolve_owned(
    state: Option<KeyState>,
    key_id: Uuid,
    at: Timestamp,
    event: Event,
) -> KeyState {
    if let Event::Created(c) = event {
        assert!(state.is_none(), "key.created on an existing stream");
        return KeyState {
            id: key_id,
            account: c.account,
            name: c.name,
            owner: c.owner,
            role: c.role,
            scopes: c.scopes,
            allowed_ips: c.allowed_ips,
            enabled: c.enabled,
            expires_at: c.expires_at,
            metadata: c.metadata,
            prefix: c.prefix,
            hint: c.hint,
            secret_hash: c.secret_hash,
            previous: None,
            created_at: at,
            updated_at: at,
            rotated_at: None,
            deleted_at: None,
            expired: false,
            version: 1,
        };
    }
    let mut s = state.expect("event on a key without key.created");
    evolve_in_place(&mut s, at, event);
    s
}

/// [`evolve_owned`] for an event that follows an existing state, applied where the state
/// lies: a replay holding a million states then moves none of them per event.
///
/// # Panics
/// On `key.created`, which cannot follow a state.
pub fn evolve_in_place(s: &mut KeyState, at: Timestamp, event: Event) {
    s.version += 1;
    match event {
        Event::Created(_) => panic!("key.created on an existing stream"),
        Event::Updated(u) => {
            s.updated_at = at;
            if let Some(v) = u.name {
                s.name = v;
            }
            if let Some(v) = u.owner {
                s.owner = v;
            }
            if let Some(v) = u.role {
                s.role = v;
            }
            if let Some(v) = u.scopes {
                s.scopes = v;
            }
            if let Some(v) = u.allowed_ips {
                s.allowed_ips = v;
            }
            if let Some(v) = u.enabled {
                s.enabled = v;
            }
            if let Some(v) = u.expires_at {
                s.expires_at = v;
                s.expired = false;
            }
            if let Some(v) = u.metadata {
                s.metadata = v;
            }
        }
        Event::Rotated(r) => {
            s.updated_at = at;
            s.rotated_at = Some(at);
            s.previous = r.grace_until.map(|until| PreviousSecret {
                secret_hash: r.previous_secret_hash,
                until,
            });
            s.secret_hash = r.secret_hash;
            s.hint = r.hint;
        }
        Event::Deleted(_) => {
            s.updated_at = at;
            s.deleted_at = Some(at);
            s.previous = None;
        }
        Event::Expired(_) => s.expired = true,
        Event::RotationEnded(_) => s.previous = None,
    }
}

#[cfg(test)]
mod tests;
