//! The NATS scenarios, each against a fresh `nats-server` started for it (its own free loopback
//! port and store dir on the measured disk, `-js`, stopped by its PID):
//!
//! - **Publish rate:** the real publisher ([`keyledger_nats::spawn_publisher`]) draining the
//!   data set's log, which it has never published: events acknowledged per second.
//! - **Ceiling:** raw JetStream publishes of as many messages, cycling through the data set's
//!   first 4,096 events (same payloads and header set, a stream configured as keyledger's, the
//!   same window of 1,024 unacknowledged publishes), with nothing of keyledger in the loop.
//!   Their subjects take a new key id every three messages, as the data set's events do, so
//!   that the server tracks as many subjects as for the drain. Both are timed from before
//!   they connect.
//! - **Commit→ack lag:** a fresh service taking creates at a fixed rate (in-process, so the
//!   HTTP stack does not compete) on a fresh `nats-server`, each event's lag from its commit
//!   (the writer's broadcast) to the stream's acknowledgement (the outbox's ack hook).

use crate::stats::Latency;
use anyhow::Context;
use async_nats::header::{NATS_EXPECTED_LAST_SEQUENCE, NATS_MESSAGE_ID};
use async_nats::jetstream::{self, stream};
use async_nats::{HeaderMap, HeaderName, HeaderValue};
use keyledger_e2e::nats::NatsServer;
use keyledger_nats::{PublisherConfig, spawn_publisher};
use keyledger_service::{Actor, Config, CreateKey, Service};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct Outcome {
    /// Raw JetStream publishes per second (the ceiling).
    pub raw_rate: f64,
    /// Events the publisher got acknowledged per second while draining the log.
    pub publish_rate: f64,
    pub published: u64,
    /// Commit→ack lag at `lag_rate` events/s.
    pub lag: Latency,
    pub lag_rate: f64,
    /// Events of the lag run without a measured lag (should be 0).
    pub lag_missing: u64,
}

/// Publishes in windows of this many unacknowledged messages, as the publisher does.
const WINDOW: usize = 1024;
/// Events per second of the lag scenario (issue 5's figure).
pub const LAG_RATE: u64 = 5_000;

pub fn run(data_dir: &Path, work_dir: &Path, duration: Duration) -> anyhow::Result<Outcome> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // Each scenario gets a nats-server of its own: a server slows down as its store and its
    // de-duplication map grow, so sharing one would handicap whichever scenario runs later.
    let fresh = || NatsServer::start_in(work_dir).context("starting nats-server (is it on PATH?)");
    let service = Service::open(Config::new(data_dir))?;
    eprintln!("NATS: the publisher draining the log ...");
    let nats = fresh()?;
    let (publish_rate, published) = rt.block_on(drain(&nats.url(), &service, duration))?;
    drop(nats);
    eprintln!("NATS: raw JetStream publishes of as many messages ...");
    let nats = fresh()?;
    let raw_rate = rt.block_on(raw_publish(&nats.url(), &service, published))?;
    drop(nats);
    service.shutdown();
    drop(service);
    eprintln!("NATS: commit→ack lag at {LAG_RATE} events/s ...");
    let nats = fresh()?;
    let dir = tempfile::tempdir_in(work_dir)?;
    let (lag, lag_rate, lag_missing) = rt.block_on(lag(&nats.url(), dir.path(), duration))?;
    Ok(Outcome {
        raw_rate,
        publish_rate,
        published,
        lag,
        lag_rate,
        lag_missing,
    })
}

/// Publishes `count` of the data set's messages (cycling through its first events) into a
/// stream configured as keyledger's, in windows as the publisher does; returns messages/s.
async fn raw_publish(url: &str, service: &Service, count: u64) -> anyhow::Result<f64> {
    // The messages are built before the clock starts; connecting and creating the stream count,
    // as they do for the publisher.
    let messages = sample_messages(service)?;
    let t = Instant::now();
    let js = jetstream::new(async_nats::connect(url).await?);
    js.get_or_create_stream(stream::Config {
        name: "BENCH".into(),
        subjects: vec!["bench.>".into()],
        ..keyledger_nats::stream_config()
    })
    .await?;
    const SEQ: HeaderName = HeaderName::from_static(keyledger_nats::HEADER_SEQ);
    const HASH: HeaderName = HeaderName::from_static(keyledger_nats::HEADER_HASH);
    const SIGNATURE: HeaderName = HeaderName::from_static(keyledger_nats::HEADER_SIGNATURE);
    let (mut sent, mut last) = (0u64, 0u64);
    while sent < count {
        let mut acks = Vec::with_capacity(WINDOW);
        for _ in 0..WINDOW.min((count - sent) as usize) {
            let (subject, payload, seq, hash, signature) =
                &messages[sent as usize % messages.len()];
            // The stream keeps state per subject, and the drain's subjects are one per key.
            let subject = with_key_id(subject, uuid::Uuid::from_u64_pair(0, sent / 3));
            // Header names parsed once and one allocation per value, as the publisher does.
            let mut h = HeaderMap::new();
            h.insert(NATS_MESSAGE_ID, HeaderValue::from(format!("raw-{sent}")));
            h.insert(
                NATS_EXPECTED_LAST_SEQUENCE,
                HeaderValue::from((last + acks.len() as u64).to_string()),
            );
            h.insert(SEQ, HeaderValue::from(seq.clone()));
            h.insert(HASH, HeaderValue::from(hash.clone()));
            h.insert(SIGNATURE, HeaderValue::from(signature.clone()));
            acks.push(js.publish_with_headers(subject, h, payload.clone()).await?);
            sent += 1;
        }
        for ack in acks {
            last = ack.await?.sequence;
        }
    }
    Ok(sent as f64 / t.elapsed().as_secs_f64())
}

type Message = (String, bytes::Bytes, String, String, String);

/// `subject` (`bench.keyledger.keys.<account>.<key id>.<type>`) with another key id.
fn with_key_id(subject: &str, key_id: uuid::Uuid) -> String {
    let mut dots = subject.match_indices('.').map(|(i, _)| i);
    match (dots.nth(3), dots.next()) {
        (Some(a), Some(b)) => format!("{}{key_id}{}", &subject[..=a], &subject[b..]),
        _ => subject.to_owned(),
    }
}

/// The data set's first events as raw publishes (subject, payload, seq, hash, signature), read
/// as the publisher reads them ([`keyledger_store::Log::read_raw`]): the stored bytes as payload.
fn sample_messages(service: &Service) -> anyhow::Result<Vec<Message>> {
    let messages: Vec<Message> = service
        .log()
        .read_raw(0, 4 * WINDOW)?
        .into_iter()
        .map(|e| {
            (
                format!("bench.{}", e.subject),
                e.bytes.into(),
                e.seq.to_string(),
                e.hash,
                e.signature,
            )
        })
        .collect();
    anyhow::ensure!(!messages.is_empty(), "the data set has no events");
    Ok(messages)
}

/// Runs the real publisher on the data set's log (never published before) for up to
/// `4 × duration` (at least 10 s), or until it has caught up.
async fn drain(url: &str, service: &Service, duration: Duration) -> anyhow::Result<(f64, u64)> {
    let head = service.head();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let t = Instant::now();
    let publisher = spawn_publisher(service.clone(), PublisherConfig::new(url), stopped);
    let budget = (duration * 4).max(Duration::from_secs(10));
    let mut published;
    loop {
        tokio::time::sleep(Duration::from_millis(5)).await;
        published = service.outbox().snapshot().published;
        if published >= head || t.elapsed() > budget {
            break;
        }
    }
    let secs = t.elapsed().as_secs_f64();
    let _ = stop.send(true);
    publisher.await?;
    anyhow::ensure!(published > 0, "the publisher published nothing");
    Ok((published as f64 / secs, published))
}

type Stamps = Arc<parking_lot::Mutex<HashMap<u64, Instant>>>;

/// Creates keys at [`LAG_RATE`] on a fresh service for `duration`, publishing into a fresh
/// stream; returns the commit→ack lags, the achieved rate and how many events had no lag.
async fn lag(url: &str, dir: &Path, duration: Duration) -> anyhow::Result<(Latency, f64, u64)> {
    let service = Service::open(Config::new(dir))?;
    let acked: Stamps = Arc::default();
    let sink = acked.clone();
    service.outbox().observe_acks(Arc::new(move |seq, _| {
        sink.lock().insert(seq, Instant::now());
    }));
    let committed: Stamps = Arc::default();
    let mut live = service.subscribe();
    let sink = committed.clone();
    let recorder = tokio::spawn(async move {
        while let Ok(env) = live.recv().await {
            sink.lock().insert(env.seq, Instant::now());
        }
    });
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let publisher = spawn_publisher(service.clone(), PublisherConfig::new(url), stopped);
    // Open loop: every millisecond, the creates due by then.
    let per_ms = LAG_RATE / 1000;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let t = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let mut n = 0u64;
    while t.elapsed() < duration {
        tick.tick().await;
        for _ in 0..per_ms {
            let s = service.clone();
            let input = CreateKey {
                name: format!("lag {n}"),
                scopes: vec!["keys:read".into()],
                ..CreateKey::default()
            };
            tasks.spawn(async move {
                let actor = Actor::Cli;
                s.create(&actor, input, None).await.map(|_| ())
            });
            n += 1;
        }
        while let Some(done) = tasks.try_join_next() {
            done??;
        }
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    let rate = n as f64 / t.elapsed().as_secs_f64();
    let head = service.head();
    let deadline = Instant::now() + Duration::from_secs(10);
    while service.outbox().snapshot().published < head && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let _ = stop.send(true);
    publisher.await?;
    recorder.abort();
    let (acked, committed) = (acked.lock(), committed.lock());
    let mut lat = Latency::new();
    let mut missing = 0;
    for seq in 1..=head {
        match (committed.get(&seq), acked.get(&seq)) {
            (Some(c), Some(a)) => lat.record(a.saturating_duration_since(*c)),
            _ => missing += 1,
        }
    }
    service.shutdown();
    Ok((lat, rate, missing))
}

#[cfg(test)]
mod tests {
    #[test]
    fn with_key_id_replaces_only_the_key_id_segment() {
        let id = uuid::Uuid::from_u64_pair(0, 7);
        assert_eq!(
            super::with_key_id("bench.keyledger.keys.acct.0192-old.created", id),
            format!("bench.keyledger.keys.acct.{id}.created")
        );
    }
}
