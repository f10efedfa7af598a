//! # keyledger-projections
//!
//! Read models of keyledger, all derived from the event log:
//!
//! - [`persisted`]: the key table in the log's redb file, updated by [`KeyTableProjector`] in
//!   the same write transaction as each append, with its checkpoint. On start it is caught up
//!   from its checkpoint (or rebuilt), so start-up never needs a full replay.
//! - [`ReadModel`]: the in-memory model loaded from that table and then fed with each committed
//!   envelope: keys by id, the O(1) verification index (secret hash -> key), listing
//!   ([`ListQuery`]) and live `last_used_at` stamps (persisted write-behind).
//!
//! **Invariant:** read models are fed only from committed log entries, never from the command
//! path, and applying an envelope twice is a no-op (`seq <= head` is skipped).

pub mod list;
pub mod memory;
mod names;
pub mod persisted;

pub use list::{Cursor, ListPage, ListQuery, SortField, SortValue};
pub use memory::{HashMatch, KeyEntry, ReadModel};
pub use persisted::KeyTableProjector;

use keyledger_store::{Log, StoreError};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProjectionError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The persisted key table is not what folding the log gives ([`persisted::verify_table`]).
    #[error("key table: {0}")]
    TableMismatch(String),
}

/// Catches the persisted table up with the log and loads it into a fresh [`ReadModel`].
pub fn open_read_model(log: &Log) -> Result<ReadModel, ProjectionError> {
    persisted::catch_up(log, false, |_, _| {})?;
    let mut model = ReadModel::default();
    model.reserve(persisted::key_count(log)? as usize);
    let checkpoint = persisted::load_all(log, |state, used| model.load(state, used))?;
    model.set_head(checkpoint);
    Ok(model)
}

/// A read model built by folding the whole log from seq 1, ignoring every persisted table.
pub fn fold_log(log: &Log) -> Result<ReadModel, ProjectionError> {
    let mut model = ReadModel::default();
    model.reserve(usize::try_from(log.stream_count()?).unwrap_or(0));
    log.replay(0, |ev| {
        model.apply_replayed(ev);
        Ok(())
    })?;
    Ok(model)
}
