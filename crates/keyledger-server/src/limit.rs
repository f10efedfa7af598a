//! Token-bucket rate limits: failed authentications per client IP, and (optionally) requests
//! per API key. Memory is bounded: idle, full buckets are dropped when the table grows.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// `burst` tokens, refilled at `per_second`.
#[derive(Debug)]
pub struct RateLimiter<K> {
    burst: f64,
    per_second: f64,
    buckets: Mutex<HashMap<K, Bucket>>,
    /// Whether any bucket exists: lets the common case skip the lock.
    tracking: std::sync::atomic::AtomicBool,
}

const MAX_TRACKED: usize = 100_000;

/// The client block that per-address limits count against: an IPv4 address itself (also
/// when IPv4-mapped, as a dual-stack listener sees it), an IPv6 address's /64. One IPv6 host
/// commonly holds a whole /64, so counting single addresses would give it billions of fresh
/// limits.
pub fn client_block(ip: std::net::IpAddr) -> std::net::IpAddr {
    use std::net::IpAddr;
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
        v4 => v4,
    }
}

impl<K: Eq + Hash + Clone> RateLimiter<K> {
    pub fn new(burst: u32, per_second: f64) -> Self {
        Self {
            burst: f64::from(burst.max(1)),
            per_second: per_second.max(0.001),
            buckets: Mutex::new(HashMap::new()),
            tracking: false.into(),
        }
    }

    fn refill(&self, b: &mut Bucket, now: Instant) {
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.per_second).min(self.burst);
        b.at = now;
    }

    fn wait_for_one(&self, tokens: f64) -> Duration {
        Duration::from_secs_f64(((1.0 - tokens) / self.per_second).max(0.0))
    }

    /// Takes a token; `Err(wait)` when none is left.
    pub fn take(&self, key: &K, now: Instant) -> Result<(), Duration> {
        let mut map = self.buckets.lock();
        self.evict_if_large(&mut map, now);
        self.tracking
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let b = map.entry(key.clone()).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        self.refill(b, now);
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(self.wait_for_one(b.tokens))
        }
    }

    /// `Some(wait)` while `key` has no token left, without taking one.
    pub fn blocked(&self, key: &K, now: Instant) -> Option<Duration> {
        if !self.tracking.load(std::sync::atomic::Ordering::Relaxed) {
            return None;
        }
        let mut map = self.buckets.lock();
        let b = map.get_mut(key)?;
        self.refill(b, now);
        (b.tokens < 1.0).then(|| self.wait_for_one(b.tokens))
    }

    fn evict_if_large(&self, map: &mut HashMap<K, Bucket>, now: Instant) {
        if map.len() < MAX_TRACKED {
            return;
        }
        let (burst, rate) = (self.burst, self.per_second);
        map.retain(|_, b| {
            b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate < burst
        });
        if map.len() >= MAX_TRACKED {
            // Everyone is active: forget the lot rather than grow without bound.
            map.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_are_counted_by_their_64_ipv4_ones_alone() {
        let block = |s: &str| client_block(s.parse().unwrap()).to_string();
        assert_eq!(block("2001:db8:1:2:3:4:5:6"), "2001:db8:1:2::");
        assert_eq!(block("2001:db8:1:2::ffff"), "2001:db8:1:2::");
        assert_ne!(block("2001:db8:1:3::1"), "2001:db8:1:2::");
        assert_eq!(block("203.0.113.7"), "203.0.113.7");
        assert_eq!(block("::ffff:203.0.113.7"), "203.0.113.7");
        assert_eq!(block("::1"), "::");
    }

    #[test]
    fn a_burst_is_allowed_then_refused_until_refilled() {
        let l = RateLimiter::new(3, 1.0);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(l.take(&"ip", t0).is_ok());
        }
        let wait = l.take(&"ip", t0).unwrap_err();
        assert!(wait <= Duration::from_secs(1));
        assert!(l.blocked(&"ip", t0).is_some());
        assert!(l.blocked(&"other", t0).is_none());
        assert!(l.take(&"ip", t0 + Duration::from_millis(1001)).is_ok());
    }
}
