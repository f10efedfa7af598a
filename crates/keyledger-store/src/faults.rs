//! Fault injection for tests: a redb [`StorageBackend`] over a real file that fails its writes
//! and syncs on demand, or after a budget of operations, as a dying disk would.

use redb::StorageBackend;
use redb::backends::FileBackend;
use std::fs::File;
use std::io;
use std::ops::Bound;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

/// Shared switch of a [`FaultyBackend`]: how many more writes/syncs succeed (negative: all).
#[derive(Debug, Clone, Default)]
pub struct FaultSwitch(Arc<AtomicI64>);

impl FaultSwitch {
    pub fn new() -> Self {
        Self(Arc::new(AtomicI64::new(-1)))
    }

    /// Fail every write and sync from now on.
    pub fn fail_now(&self) {
        self.0.store(0, Ordering::SeqCst);
    }

    /// Let `n` more writes/syncs succeed, then fail.
    pub fn fail_after(&self, n: i64) {
        self.0.store(n, Ordering::SeqCst);
    }

    /// The fault clears: everything succeeds again.
    pub fn heal(&self) {
        self.0.store(-1, Ordering::SeqCst);
    }

    fn take(&self) -> io::Result<()> {
        let prev = self
            .0
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                Some(if n > 0 { n - 1 } else { n })
            })
            .expect("closure never refuses");
        if prev == 0 {
            Err(io::Error::other("injected I/O fault"))
        } else {
            Ok(())
        }
    }
}

/// A file backend whose `write`, `set_len` and `sync_data` fail while the switch says so.
#[derive(Debug)]
pub struct FaultyBackend {
    inner: FileBackend,
    switch: FaultSwitch,
}

impl FaultyBackend {
    pub fn new(file: File, switch: FaultSwitch) -> Result<Self, redb::DatabaseError> {
        Ok(Self {
            inner: FileBackend::new(file)?,
            switch,
        })
    }
}

impl StorageBackend for FaultyBackend {
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        self.inner.read(offset, out)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.switch.take()?;
        self.inner.set_len(len)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.switch.take()?;
        self.inner.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.switch.take()?;
        self.inner.write(offset, data)
    }

    fn close(&self) -> io::Result<()> {
        self.inner.close()
    }

    fn try_lock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<bool, redb::BackendError> {
        self.inner.try_lock_range(s, e)
    }

    fn try_lock_shared_range(
        &self,
        s: Bound<u64>,
        e: Bound<u64>,
    ) -> Result<bool, redb::BackendError> {
        self.inner.try_lock_shared_range(s, e)
    }

    fn lock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<(), redb::BackendError> {
        self.inner.lock_range(s, e)
    }

    fn lock_shared_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<(), redb::BackendError> {
        self.inner.lock_shared_range(s, e)
    }

    fn unlock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<(), redb::BackendError> {
        self.inner.unlock_range(s, e)
    }

    fn query_lock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<bool, redb::BackendError> {
        self.inner.query_lock_range(s, e)
    }
}

/// An [`crate::log::Opener`] for a log file on a [`FaultyBackend`].
pub fn faulty_opener(path: std::path::PathBuf, switch: FaultSwitch) -> crate::log::Opener {
    Arc::new(move || {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| crate::StoreError::Storage(e.to_string()))?;
        let backend = FaultyBackend::new(file, switch.clone())?;
        Ok(redb::Database::builder().create_with_backend(backend)?)
    })
}
