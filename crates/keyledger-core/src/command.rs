//! Commands: what a caller asks for. Inputs are raw (as received); [`crate::decide`] validates.

use crate::secret::SecretHash;
use crate::time::Timestamp;
use serde_json::Value;

/// A command against one key's stream, decided at `now`.
#[derive(Debug, Clone)]
pub struct Command {
    pub now: Timestamp,
    /// Optimistic concurrency from the caller (`If-Match`): the key's current version.
    pub if_version: Option<u64>,
    pub action: Action,
}

#[derive(Debug, Clone)]
pub enum Action {
    Create(NewKey),
    Update(KeyPatch),
    Reset {
        credential: Credential,
        grace_seconds: u64,
    },
    Delete,
    /// System: record `key.expired` once `expires_at` has passed.
    Expire,
    /// System: record `key.rotation_ended` once the grace period has passed.
    EndRotation,
}

/// The stored form of a freshly generated secret. The plaintext stays with the caller.
#[derive(Debug, Clone)]
pub struct Credential {
    pub secret_hash: SecretHash,
    pub hint: String,
}

#[derive(Debug, Clone)]
pub struct NewKey {
    pub name: String,
    pub account: String,
    pub owner: Option<String>,
    pub role: Option<String>,
    pub scopes: Vec<String>,
    pub allowed_ips: Vec<String>,
    pub enabled: bool,
    pub expires_at: Option<Timestamp>,
    pub metadata: Option<Value>,
    pub prefix: String,
    pub credential: Credential,
}

/// Absent fields stay unchanged; `Some(None)` clears an optional field.
#[derive(Debug, Clone, Default)]
pub struct KeyPatch {
    pub name: Option<String>,
    pub owner: Option<Option<String>>,
    pub role: Option<Option<String>>,
    pub scopes: Option<Vec<String>>,
    pub allowed_ips: Option<Vec<String>>,
    pub enabled: Option<bool>,
    pub expires_at: Option<Option<Timestamp>>,
    pub metadata: Option<Value>,
}
