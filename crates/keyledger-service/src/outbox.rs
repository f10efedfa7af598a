//! The state of the event outbox (publishing to NATS), shared between the publisher, which
//! writes it, and the HTTP layer, which reports it in `/readyz` and `/metrics`.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

/// Called with `(seq, occurred_at ms)` of each event as the stream acknowledges it.
pub type AckObserver = Arc<dyn Fn(u64, i64) + Send + Sync>;

#[derive(Default)]
struct AckHook(OnceLock<AckObserver>);

impl std::fmt::Debug for AckHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "AckHook(set)"
        } else {
            "AckHook(none)"
        })
    }
}

#[derive(Debug, Default)]
pub struct OutboxStatus {
    enabled: AtomicBool,
    connected: AtomicBool,
    /// Seq of the last event acknowledged by the stream.
    published: AtomicU64,
    /// `occurred_at` (ms) of the oldest event not yet acknowledged; 0 when caught up.
    oldest_pending_ms: AtomicI64,
    on_ack: AckHook,
}

/// A point-in-time copy of [`OutboxStatus`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxSnapshot {
    pub enabled: bool,
    pub connected: bool,
    pub published: u64,
    pub oldest_pending_ms: i64,
}

impl OutboxStatus {
    pub fn set_enabled(&self) {
        self.enabled.store(true, Ordering::Relaxed);
    }

    pub fn set_connected(&self, connected: bool) {
        self.connected.store(connected, Ordering::Relaxed);
    }

    pub fn set_published(&self, seq: u64) {
        self.published.store(seq, Ordering::Relaxed);
    }

    pub fn set_oldest_pending(&self, ms: i64) {
        self.oldest_pending_ms.store(ms, Ordering::Relaxed);
    }

    /// Installs the observer of acknowledgements (metrics, benchmarks); only the first call
    /// takes effect. Returns whether this one did.
    pub fn observe_acks(&self, observer: AckObserver) -> bool {
        self.on_ack.0.set(observer).is_ok()
    }

    /// The stream acknowledged the event `seq`, which occurred at `occurred_ms`.
    pub fn acked(&self, seq: u64, occurred_ms: i64) {
        if let Some(observe) = self.on_ack.0.get() {
            observe(seq, occurred_ms);
        }
    }

    pub fn snapshot(&self) -> OutboxSnapshot {
        OutboxSnapshot {
            enabled: self.enabled.load(Ordering::Relaxed),
            connected: self.connected.load(Ordering::Relaxed),
            published: self.published.load(Ordering::Relaxed),
            oldest_pending_ms: self.oldest_pending_ms.load(Ordering::Relaxed),
        }
    }
}
