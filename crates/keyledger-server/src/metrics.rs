//! Prometheus metrics: per-route request counts and latencies, verify outcomes, commit batches.

use keyledger_service::BatchStats;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    route: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: &'static str,
    route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabels {
    code: &'static str,
}

type HistogramFamily = Family<RouteLabels, Histogram, fn() -> Histogram>;

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: HistogramFamily,
    verify: Family<CodeLabels, Counter>,
    batch_commands: Histogram,
    batch_seconds: Histogram,
    committed_events: Counter,
    keys: Gauge,
    log_head: Gauge,
    worker_threads: Gauge,
    nats_connected: Gauge,
    nats_lag_events: Gauge,
    nats_lag_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    nats_publish_age: Histogram,
}

fn latency_histogram() -> Histogram {
    // 25 µs .. ~0.8 s
    Histogram::new(exponential_buckets(0.000_025, 2.0, 16))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let latency: HistogramFamily = Family::new_with_constructor(latency_histogram);
        let verify = Family::<CodeLabels, Counter>::default();
        let batch_commands = Histogram::new(exponential_buckets(1.0, 2.0, 12));
        let batch_seconds = Histogram::new(exponential_buckets(0.000_1, 2.0, 14));
        let committed_events = Counter::default();
        let keys = Gauge::default();
        let log_head = Gauge::default();
        let worker_threads = Gauge::default();
        let nats_connected = Gauge::default();
        let nats_lag_events = Gauge::default();
        let nats_lag_seconds = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        // 1 ms .. ~33 s
        let nats_publish_age = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register(
            "keyledger_http_requests",
            "HTTP requests by method, route and status",
            requests.clone(),
        );
        registry.register(
            "keyledger_http_request_duration_seconds",
            "HTTP request latency by method and route",
            latency.clone(),
        );
        registry.register(
            "keyledger_verify_outcomes",
            "Verify results by code",
            verify.clone(),
        );
        registry.register(
            "keyledger_commit_batch_commands",
            "Commands per group-commit write transaction",
            batch_commands.clone(),
        );
        registry.register(
            "keyledger_commit_batch_duration_seconds",
            "Time to decide, commit (fsync) and apply one batch",
            batch_seconds.clone(),
        );
        registry.register(
            "keyledger_committed_events",
            "Events appended to the log since start",
            committed_events.clone(),
        );
        registry.register("keyledger_keys", "Keys in the read model", keys.clone());
        registry.register(
            "keyledger_log_head_seq",
            "Seq of the last event",
            log_head.clone(),
        );
        registry.register(
            "keyledger_worker_threads",
            "Worker threads of the runtime that serves HTTP (serve --worker-threads)",
            worker_threads.clone(),
        );
        registry.register(
            "keyledger_nats_connected",
            "1 when the NATS publisher is connected (0 also when NATS is not configured)",
            nats_connected.clone(),
        );
        registry.register(
            "keyledger_nats_lag_events",
            "Committed events not yet acknowledged by the JetStream stream",
            nats_lag_events.clone(),
        );
        registry.register(
            "keyledger_nats_lag_seconds",
            "Age of the oldest event not yet acknowledged by the stream",
            nats_lag_seconds.clone(),
        );
        registry.register(
            "keyledger_nats_publish_age_seconds",
            "Age of each event (since its occurred_at) when the stream acknowledged it",
            nats_publish_age.clone(),
        );
        Self {
            registry,
            requests,
            latency,
            verify,
            batch_commands,
            batch_seconds,
            committed_events,
            keys,
            log_head,
            worker_threads,
            nats_connected,
            nats_lag_events,
            nats_lag_seconds,
            nats_publish_age,
        }
    }
}

impl Metrics {
    pub fn request(&self, method: &'static str, route: &'static str, status: u16, seconds: f64) {
        self.requests
            .get_or_create(&RequestLabels {
                method,
                route,
                status,
            })
            .inc();
        self.latency
            .get_or_create(&RouteLabels { method, route })
            .observe(seconds);
    }

    pub fn verify_outcome(&self, code: &'static str) {
        self.verify.get_or_create(&CodeLabels { code }).inc();
    }

    pub fn batch(&self, stats: BatchStats) {
        self.batch_commands.observe(stats.commands as f64);
        self.batch_seconds.observe(stats.seconds);
        self.committed_events.inc_by(stats.events as u64);
    }

    /// The stream acknowledged an event `age_seconds` after it occurred.
    pub fn published(&self, age_seconds: f64) {
        self.nats_publish_age.observe(age_seconds.max(0.0));
    }

    /// The text exposition format, with gauges set to the given current values.
    pub fn render(&self, keys: usize, head: u64, nats: Option<(bool, u64, f64)>) -> String {
        self.keys.set(keys as i64);
        self.log_head.set(head as i64);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            self.worker_threads.set(rt.metrics().num_workers() as i64);
        }
        if let Some((connected, lag_events, lag_seconds)) = nats {
            self.nats_connected.set(i64::from(connected));
            self.nats_lag_events.set(lag_events as i64);
            self.nats_lag_seconds.set(lag_seconds);
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}
