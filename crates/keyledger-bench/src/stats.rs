//! Measuring instruments: latency histograms, the process's RSS, and a counting allocator for
//! the heap bytes a structure holds.

use hdrhistogram::Histogram;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering};
use std::time::Duration;

/// Latencies in nanoseconds (3 significant digits, up to 100 s).
pub struct Latency(Histogram<u64>);

impl Default for Latency {
    fn default() -> Self {
        Self::new()
    }
}

impl Latency {
    pub fn new() -> Self {
        Self(Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("valid bounds"))
    }

    pub fn record(&mut self, d: Duration) {
        self.0.saturating_record(d.as_nanos() as u64);
    }

    pub fn merge(&mut self, other: &Latency) {
        self.0.add(&other.0).expect("same bounds");
    }

    pub fn len(&self) -> u64 {
        self.0.len()
    }

    /// The `q` quantile (0..=1) in seconds.
    pub fn quantile(&self, q: f64) -> f64 {
        self.0.value_at_quantile(q) as f64 / 1e9
    }

    pub fn mean(&self) -> f64 {
        self.0.mean() / 1e9
    }
}

/// Resident set size of this process, in bytes.
pub fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// The system allocator, counting live bytes while [`Counting::measure`] runs.
pub struct Counting;

static ENABLED: AtomicBool = AtomicBool::new(false);
static LIVE: AtomicIsize = AtomicIsize::new(0);

impl Counting {
    /// Runs `f` and returns its result with the net heap bytes allocated meanwhile (by every
    /// thread: run it while the process is otherwise quiet).
    pub fn measure<T>(f: impl FnOnce() -> T) -> (T, isize) {
        LIVE.store(0, Ordering::SeqCst);
        ENABLED.store(true, Ordering::SeqCst);
        let out = f();
        ENABLED.store(false, Ordering::SeqCst);
        (out, LIVE.load(Ordering::SeqCst))
    }
}

// SAFETY: every call is forwarded unchanged to `System`; the counters have no effect on the
// memory handed out.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        let p = unsafe { System.alloc(layout) };
        if ENABLED.load(Ordering::Relaxed) && !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        let p = unsafe { System.alloc_zeroed(layout) };
        if ENABLED.load(Ordering::Relaxed) && !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if ENABLED.load(Ordering::Relaxed) {
            LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        }
        // SAFETY: `ptr` was allocated by `System` with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` was allocated by `System` with `layout`.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if ENABLED.load(Ordering::Relaxed) && !p.is_null() {
            LIVE.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
        }
        p
    }
}
