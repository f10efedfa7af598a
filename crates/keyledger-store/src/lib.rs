//! # keyledger-store
//!
//! The append-only event log of keyledger, in one redb file.
//!
//! - [`Log`]: append with optimistic concurrency per key stream (also for a stream's first
//!   event), group commit via [`Log::append_batch`], reads by seq and by stream.
//! - [`Envelope`]: the stored and published form of an event: seq, id, type, data, key, version,
//!   time, actor, and its link in the hash chain with an ed25519 signature.
//! - [`SigningKeys`] / [`SignatureVerifier`]: the keys that sign the chain.
//! - [`audit::verify_log`]: checks contiguity, chain, hashes and signatures.
//! - [`faults`]: a storage backend that fails on demand, for tests.
//! - [`Projector`]: the hook through which read models are updated in the append's own write
//!   transaction, so that a read model never runs ahead of or behind the durable log.
//!
//! **Invariants:** seqs are 1, 2, 3, ... with no gaps; an append is visible only once durably
//! committed; a stream's events have versions 1, 2, 3, ...; nothing in the log holds a plaintext
//! secret or signing key.

pub mod audit;
pub mod canonical;
pub mod envelope;
pub mod faults;
pub mod log;
pub mod signing;

pub use envelope::{Envelope, GENESIS_HASH, RawEvent, ReplayEvent};
pub use log::{
    AppendRequest, AppendResult, DEFAULT_CACHE_BYTES, Db, IdempotencyRecord, Log, NoProjection,
    Opener, Projector,
};
pub use signing::{PublicKeyInfo, SignatureVerifier, SigningError, SigningKeys};

use uuid::Uuid;

/// A failure of the storage itself: the whole operation failed and wrote nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("storage error: {0}")]
    Storage(String),
    #[error("corrupt log: {0}")]
    Corrupt(String),
    #[error("cannot encode event: {0}")]
    Encode(String),
}

impl StoreError {
    fn encode(e: serde_json::Error) -> Self {
        Self::Encode(e.to_string())
    }
}

macro_rules! storage_from {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                Self::Storage(e.to_string())
            }
        }
    )*};
}
storage_from!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// Why one request of a batch was not appended (the rest of the batch is unaffected).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppendError {
    #[error("stream {key_id} is at version {actual}, expected {expected}")]
    Conflict {
        key_id: Uuid,
        expected: u64,
        actual: u64,
    },
    #[error("event id {event_id} was already used for a different event")]
    IdReused { event_id: Uuid },
}

#[cfg(test)]
mod tests;
