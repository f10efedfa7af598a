//! Measuring instruments: latency histograms, the process's RSS, and a counting allocator for
//! the heap bytes a structure holds.

use hdrhistogram::Histogram;
use mimalloc::MiMalloc;
use std::alloc::{GlobalAlloc, Layout};
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

/// CPU seconds (user + system) this process has used: in all (threads that ended included) and
/// by the service's writer thread. Time the hypervisor stole is in neither, so CPU per request
/// is steadier than throughput on a noisy machine.
#[derive(Debug, Default, Clone, Copy)]
pub struct CpuTime {
    pub total: f64,
    pub writer: f64,
}

impl CpuTime {
    pub fn now() -> Self {
        // Fields after the `(comm)`: state is the 1st, utime the 12th, stime the 13th; both in
        // clock ticks, which are 100 a second on Linux.
        fn ticks(stat: &str) -> Option<(&str, f64)> {
            let (head, rest) = stat.rsplit_once(')')?;
            let comm = head.split_once('(')?.1;
            let mut fields = rest.split_whitespace().skip(11);
            let utime: f64 = fields.next()?.parse().ok()?;
            let stime: f64 = fields.next()?.parse().ok()?;
            Some((comm, (utime + stime) / 100.0))
        }
        let mut out = CpuTime::default();
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat")
            && let Some((_, t)) = ticks(&stat)
        {
            out.total = t;
        }
        for task in std::fs::read_dir("/proc/self/task")
            .into_iter()
            .flatten()
            .flatten()
        {
            if let Ok(stat) = std::fs::read_to_string(task.path().join("stat"))
                && let Some(("keyledger-write", t)) = ticks(&stat)
            {
                out.writer += t;
            }
        }
        out
    }

    pub fn add(&mut self, other: CpuTime) {
        self.total += other.total;
        self.writer += other.writer;
    }

    pub fn since(self, earlier: CpuTime) -> CpuTime {
        CpuTime {
            total: self.total - earlier.total,
            writer: self.writer - earlier.writer,
        }
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

/// The `keyledger` binary's allocator (mimalloc), counting live bytes while
/// [`Counting::measure`] runs: the server under load allocates as it does in production.
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

// SAFETY: every call is forwarded unchanged to `MiMalloc`; the counters have no effect on the
// memory handed out.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        let p = unsafe { MiMalloc.alloc(layout) };
        if ENABLED.load(Ordering::Relaxed) && !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        let p = unsafe { MiMalloc.alloc_zeroed(layout) };
        if ENABLED.load(Ordering::Relaxed) && !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if ENABLED.load(Ordering::Relaxed) {
            LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        }
        // SAFETY: `ptr` was allocated by `MiMalloc` with `layout`.
        unsafe { MiMalloc.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` was allocated by `MiMalloc` with `layout`.
        let p = unsafe { MiMalloc.realloc(ptr, layout, new_size) };
        if ENABLED.load(Ordering::Relaxed) && !p.is_null() {
            LIVE.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
        }
        p
    }
}
