//! # keyledger-nats
//!
//! The only crate that knows NATS.
//!
//! - [`spawn_publisher`]: the outbox publisher. The log itself is the outbox: the publisher
//!   reads events after the last one the stream holds, publishes them with pipelined acks to
//!   `keyledger.keys.<account>.<key_id>.<type>` in the JetStream stream `KEYLEDGER`, and records
//!   a durable "published up to" cursor. Commands never wait for NATS.
//! - [`tail`]: follows the stream (for `keyledger events tail`).
//!
//! **Exactly once, in order.** Each publish carries `Nats-Msg-Id` (the event id) and
//! `Nats-Expected-Last-Sequence` (the stream sequence it must follow). The server therefore
//! stores an event only directly after its predecessor, and never twice. After any failure the
//! publisher reconnects and resumes after the `Keyledger-Seq` of the stream's last message, so
//! a crash between publishing and writing the cursor, or an outage of any length, neither
//! loses nor duplicates an event, independently of the de-duplication window.

use async_nats::jetstream::{self, stream};
use async_nats::{HeaderMap, HeaderName, HeaderValue};
use keyledger_service::Service;
use keyledger_store::{Log, RawEvent, StoreError};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, watch};

pub const STREAM: &str = "KEYLEDGER";
pub const SUBJECTS: &str = "keyledger.keys.>";
/// Name of the log cursor that records what the stream holds.
pub const CURSOR: &str = "nats";

pub const HEADER_SEQ: &str = "Keyledger-Seq";
pub const HEADER_HASH: &str = "Keyledger-Hash";
pub const HEADER_SIGNATURE: &str = "Keyledger-Signature";

#[derive(Debug, Clone)]
pub struct PublisherConfig {
    pub url: String,
    /// Events published before their acks are awaited.
    pub max_in_flight: usize,
    /// Longest wait between reconnection attempts.
    pub max_backoff: Duration,
}

impl PublisherConfig {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            max_in_flight: 1024,
            max_backoff: Duration::from_secs(5),
        }
    }
}

/// `url` (one server or a comma-separated list) with any credentials replaced by `***`, for
/// logs: `nats://user:pass@host:4222` and `nats://token@host` carry secrets.
pub fn redacted_url(url: &str) -> String {
    url.split(',')
        .map(|server| {
            let host_from = server.find("://").map_or(0, |i| i + 3);
            match server.rfind('@') {
                Some(at) if at >= host_from => {
                    format!("{}***{}", &server[..host_from], &server[at..])
                }
                _ => server.to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    #[error("connecting to NATS: {0}")]
    Connect(String),
    #[error("JetStream stream {STREAM}: {0}")]
    Stream(String),
    #[error("publishing: {0}")]
    Publish(String),
    #[error("reading the log: {0}")]
    Log(String),
}

fn err<E: std::fmt::Display>(f: fn(String) -> NatsError) -> impl Fn(E) -> NatsError {
    move |e| f(e.to_string())
}

/// How long the stream keeps message ids for de-duplication. Exactly-once rests on
/// `Nats-Expected-Last-Sequence`, not on this window; the server holds every id of the window in
/// memory (measured: ~190 B of its RSS per id, ~1.1 GB at 50,000 events/s over JetStream's
/// default 2 minutes).
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(30);

/// The stream configuration keyledger creates when the stream is missing.
pub fn stream_config() -> stream::Config {
    stream::Config {
        name: STREAM.into(),
        subjects: vec![SUBJECTS.into()],
        storage: stream::StorageType::File,
        duplicate_window: DUPLICATE_WINDOW,
        ..Default::default()
    }
}

/// Starts the publisher; it runs until `shutdown` becomes `true`.
pub fn spawn_publisher(
    service: Service,
    config: PublisherConfig,
    shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    service.outbox().set_enabled();
    tokio::spawn(run(service, config, shutdown))
}

async fn run(service: Service, config: PublisherConfig, mut shutdown: watch::Receiver<bool>) {
    let status = service.outbox().clone();
    // Until a session learns the stream's position, the log's cursor says how far publishing got.
    if let Ok(cursor) = service.log().cursor(CURSOR) {
        status.set_published(cursor);
    }
    let mut backoff = Backoff::new(Duration::from_millis(100), config.max_backoff);
    let mut stalled = false;
    loop {
        if *shutdown.borrow() {
            return;
        }
        match session(&service, &config, &mut shutdown, &mut stalled).await {
            Ok(()) => return,
            Err(e) => {
                // A session that connected cleared `stalled`: the waits start over.
                let wait = backoff.next(!stalled);
                status.set_connected(false);
                note_oldest_pending(&service).await;
                let backlog = service.head().saturating_sub(status.snapshot().published);
                if !stalled {
                    tracing::warn!(error = %e, backlog, "publishing to NATS stalled; commands continue, events wait in the log");
                    stalled = true;
                } else {
                    tracing::debug!(error = %e, backlog, "NATS still unavailable");
                }
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.changed() => return,
                }
            }
        }
    }
}

/// Waits between reconnection attempts: from `first`, doubling up to `max` while attempts fail,
/// and from `first` again after one that worked (else a long-lived publisher or tail would,
/// after a few outages, wait the longest time at every later one).
#[derive(Debug)]
struct Backoff {
    first: Duration,
    max: Duration,
    wait: Duration,
}

impl Backoff {
    fn new(first: Duration, max: Duration) -> Self {
        Self {
            first,
            max,
            wait: first,
        }
    }

    /// The wait after an attempt that failed; `worked`: it got somewhere first (connected,
    /// delivered) before it failed.
    fn next(&mut self, worked: bool) -> Duration {
        if worked {
            self.wait = self.first;
        }
        let wait = self.wait;
        self.wait = (self.wait * 2).min(self.max);
        wait
    }
}

/// The seq after which publishing resumes: the `Keyledger-Seq` of the stream's last message.
async fn resume_point(stream: &mut stream::Stream, cursor: u64) -> Result<(u64, u64), NatsError> {
    let info = stream.info().await.map_err(err(NatsError::Stream))?;
    let last = info.state.last_sequence;
    if info.state.messages == 0 {
        if cursor > 0 {
            tracing::warn!(
                cursor,
                "the NATS stream is empty but the log says events up to seq {cursor} were published (stream recreated?); publishing from there"
            );
        }
        return Ok((cursor, last));
    }
    let msg = stream
        .get_raw_message(last)
        .await
        .map_err(err(NatsError::Stream))?;
    let seq = msg
        .headers
        .get(HEADER_SEQ)
        .and_then(|v| v.as_str().parse().ok())
        .ok_or_else(|| {
            NatsError::Stream(format!(
                "message {last} has no {HEADER_SEQ} header: the stream must hold only keyledger's events"
            ))
        })?;
    Ok((seq, last))
}

/// While no session runs (NATS unreachable, perhaps since start-up), the lag is measured from
/// the first event after the last one known to be published.
async fn note_oldest_pending(service: &Service) {
    let status = service.outbox();
    let known = status.snapshot();
    if known.oldest_pending_ms != 0 || service.head() <= known.published {
        return;
    }
    if let Ok(Ok(events)) = read_window(service.log(), known.published, 1).await
        && let Some(first) = events.first()
    {
        status.set_oldest_pending(first.occurred_at.millis());
    }
}

async fn session(
    service: &Service,
    config: &PublisherConfig,
    shutdown: &mut watch::Receiver<bool>,
    stalled: &mut bool,
) -> Result<(), NatsError> {
    let status = service.outbox().clone();
    let log = service.log().clone();
    let client = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(3))
        .connect(config.url.as_str())
        .await
        .map_err(err(NatsError::Connect))?;
    let js = jetstream::new(client.clone());
    let mut stream = js
        .get_or_create_stream(stream_config())
        .await
        .map_err(err(NatsError::Stream))?;
    let stored = log.cursor(CURSOR).map_err(err(NatsError::Log))?;
    let (mut published, mut stream_last) = resume_point(&mut stream, stored).await?;
    let mut cursor = Cursor::new(stored);
    cursor.record(&log, published, true).await?;
    status.set_connected(true);
    status.set_published(published);
    let backlog = service.head().saturating_sub(published);
    if std::mem::take(stalled) {
        tracing::info!(
            from_seq = published + 1,
            backlog,
            "publishing to NATS resumed"
        );
    } else {
        tracing::info!(
            from_seq = published + 1,
            backlog,
            url = %redacted_url(&config.url),
            "publishing to NATS"
        );
    }
    let mut live = service.subscribe();
    // The next window, read while the current one is being acknowledged.
    let mut prefetch: Option<Window> = None;
    loop {
        if *shutdown.borrow() {
            break;
        }
        let mut batch = prefetch
            .take()
            .unwrap_or_else(|| read_window(&log, published, config.max_in_flight))
            .await
            .map_err(err(NatsError::Log))?
            .map_err(err(NatsError::Log))?;
        let Some(first) = batch.first() else {
            status.set_oldest_pending(0);
            cursor.record(&log, published, false).await?;
            tokio::select! {
                r = live.recv() => if let Err(broadcast::error::RecvError::Closed) = r { break },
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.changed() => break,
            }
            // With nothing to publish, only the client's own view shows an outage (it
            // reconnects by itself; a publish that fails meanwhile ends the session).
            status.set_connected(
                client.connection_state() == async_nats::connection::State::Connected,
            );
            continue;
        };
        status.set_oldest_pending(first.occurred_at.millis());
        let mut acks = Vec::with_capacity(batch.len());
        for (i, ev) in batch.iter_mut().enumerate() {
            let ack = js
                .publish_with_headers(
                    std::mem::take(&mut ev.subject),
                    headers(ev, stream_last + i as u64),
                    bytes::Bytes::from(std::mem::take(&mut ev.bytes)),
                )
                .await
                .map_err(err(NatsError::Publish))?;
            acks.push(ack);
        }
        let last = batch[batch.len() - 1].seq;
        prefetch = Some(read_window(&log, last, config.max_in_flight));
        for (ev, ack) in batch.iter().zip(acks) {
            let ack = ack.await.map_err(err(NatsError::Publish))?;
            stream_last = ack.sequence;
            published = ev.seq;
            status.acked(ev.seq, ev.occurred_at.millis());
        }
        // Acknowledged: connected, whatever the idle check saw while the client reconnected.
        status.set_connected(true);
        status.set_published(published);
        cursor.record(&log, published, false).await?;
    }
    cursor.record(&log, published, true).await
}

type Window = tokio::task::JoinHandle<Result<Vec<RawEvent>, StoreError>>;

/// Reads up to `n` events after seq `after`, on a blocking thread.
fn read_window(log: &Log, after: u64, n: usize) -> Window {
    let log = log.clone();
    tokio::task::spawn_blocking(move || log.read_raw(after, n))
}

/// How often the publisher records its cursor in the log while it is busy.
const CURSOR_EVERY: Duration = Duration::from_secs(1);

/// The `nats` cursor as last written to the log. It only matters when the stream was emptied
/// (the resume point is read from the stream itself), so it is written at most once every
/// [`CURSOR_EVERY`] and at the end of a session, not per window: each write is a durable commit
/// that would compete with the command writer. While publishing, the write runs beside the
/// loop (one at a time), so a slow commit never holds events back.
struct Cursor {
    at: u64,
    written: Instant,
    pending: Option<tokio::task::JoinHandle<Result<(), StoreError>>>,
}

impl Cursor {
    fn new(at: u64) -> Self {
        Self {
            at,
            written: Instant::now(),
            pending: None,
        }
    }

    /// Writes `published` if it moved: when `now`, before returning; otherwise in the
    /// background when due and no earlier write is still running. A failed background write
    /// surfaces at the next call.
    async fn record(&mut self, log: &Log, published: u64, now: bool) -> Result<(), NatsError> {
        if let Some(write) = self.pending.take_if(|w| now || w.is_finished()) {
            finished(write).await?;
        }
        if self.pending.is_some()
            || published == self.at
            || !(now || self.written.elapsed() >= CURSOR_EVERY)
        {
            return Ok(());
        }
        let l = log.clone();
        let write = tokio::task::spawn_blocking(move || l.set_cursor(CURSOR, published));
        self.at = published;
        self.written = Instant::now();
        if now {
            finished(write).await
        } else {
            self.pending = Some(write);
            Ok(())
        }
    }
}

/// Waits for a cursor write and passes on its error.
async fn finished(write: tokio::task::JoinHandle<Result<(), StoreError>>) -> Result<(), NatsError> {
    write
        .await
        .map_err(err(NatsError::Log))?
        .map_err(err(NatsError::Log))
}

/// `Nats-Msg-Id`, `Keyledger-Seq`, `Keyledger-Hash`, `Keyledger-Signature`, and the stream
/// sequence this message must follow. Takes the event's hash and signature (the publisher needs
/// neither once the message is built), so each header costs at most one allocation.
fn headers(env: &mut RawEvent, expected_last: u64) -> HeaderMap {
    use async_nats::header::{NATS_EXPECTED_LAST_SEQUENCE, NATS_MESSAGE_ID};
    const SEQ: HeaderName = HeaderName::from_static(HEADER_SEQ);
    const HASH: HeaderName = HeaderName::from_static(HEADER_HASH);
    const SIGNATURE: HeaderName = HeaderName::from_static(HEADER_SIGNATURE);
    let mut h = HeaderMap::new();
    h.insert(NATS_MESSAGE_ID, HeaderValue::from(env.id.to_string()));
    h.insert(
        NATS_EXPECTED_LAST_SEQUENCE,
        HeaderValue::from(expected_last.to_string()),
    );
    h.insert(SEQ, HeaderValue::from(env.seq.to_string()));
    h.insert(HASH, HeaderValue::from(std::mem::take(&mut env.hash)));
    h.insert(
        SIGNATURE,
        HeaderValue::from(std::mem::take(&mut env.signature)),
    );
    h
}

/// Where [`tail`] starts in the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TailFrom {
    /// Only messages published from now on.
    New,
    /// The whole stream.
    All,
    /// From this stream sequence on.
    StreamSeq(u64),
}

/// One message of the stream.
#[derive(Debug, Clone)]
pub struct TailMessage {
    pub stream_seq: u64,
    pub subject: String,
    pub headers: Vec<(String, String)>,
    pub payload: Vec<u8>,
}

/// Follows the stream with an ordered consumer on `filter` (a subject under
/// `keyledger.keys.>`), calling `on_message` until it returns `false`.
///
/// The first connection must work (a wrong URL or a missing stream is not worth waiting on).
/// After that, a broken connection or a lost consumer (the NATS server restarted, say) is
/// resumed after the last message delivered; `on_resume` is told why and at which stream seq.
/// No message is delivered twice (see [`Position`]). A stream deleted and created again
/// numbers from 1: the tail notices by its creation time (checked before the first message of
/// each consumer the NATS client creates, and after 2 s without a message), then goes on at its
/// first message, also told to `on_resume`; events that were only in the old stream are not in
/// NATS any more.
pub async fn tail(
    url: &str,
    filter: &str,
    from: TailFrom,
    mut on_message: impl FnMut(TailMessage) -> bool,
    mut on_resume: impl FnMut(&NatsError, u64),
) -> Result<(), NatsError> {
    let mut at = Position::default();
    let mut start = from;
    let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(5));
    let mut started = false;
    loop {
        let (mut consuming, mut delivered) = (false, false);
        let result = tail_session(
            url,
            filter,
            start,
            &mut at,
            (&mut consuming, &mut delivered),
            &mut on_message,
            &mut on_resume,
        )
        .await;
        started |= consuming;
        match result {
            Ok(()) => return Ok(()),
            // Until a consumer has worked once, an error is the caller's (a wrong URL or
            // subject, no stream): nothing to resume.
            Err(e) if !started => return Err(e),
            Err(e) => {
                let wait = backoff.next(delivered);
                on_resume(&e, at.next);
                start = TailFrom::StreamSeq(at.next);
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// Where a tail stands, so that a resumed one neither skips nor repeats a message.
#[derive(Debug, Default, Clone, PartialEq)]
struct Position {
    /// The stream seq to go on at.
    next: u64,
    /// The `Keyledger-Seq` of the last message delivered. One at or below it is a repeat: an
    /// ordered consumer that re-creates itself before its first message starts over.
    last_event: u64,
    /// When the stream read was created; another time means it was deleted and made again.
    stream: Option<String>,
}

impl Position {
    /// Connected to the stream created at `created`, asked to start at `first`: where to
    /// start, and whether the stream is another one than before (numbering from 1 again).
    fn connect(&mut self, created: String, first: u64) -> (u64, bool) {
        let recreated = self.stream.as_ref().is_some_and(|s| *s != created);
        self.stream = Some(created);
        self.next = if recreated { 1 } else { first.max(1) };
        (self.next, recreated)
    }

    /// Whether a message is new yet numbered before the resume point: a consumer that started
    /// over from the stream's first message (a repeat carries an event seq already delivered).
    fn went_back(&self, stream_seq: u64, event_seq: Option<u64>) -> bool {
        stream_seq > 0 && stream_seq < self.next && event_seq.is_some_and(|s| s > self.last_event)
    }

    /// Whether a message is to be delivered; moves past it either way.
    fn admit(&mut self, stream_seq: u64, event_seq: Option<u64>) -> bool {
        if stream_seq > 0 {
            self.next = self.next.max(stream_seq + 1);
        }
        match event_seq {
            Some(seq) if seq <= self.last_event => false,
            Some(seq) => {
                self.last_event = seq;
                true
            }
            None => true,
        }
    }
}

/// One connection of [`tail`], from `start`, keeping `at` current; sets `consuming` once its
/// consumer exists and `delivered` once a message went to `on_message`.
async fn tail_session(
    url: &str,
    filter: &str,
    start: TailFrom,
    at: &mut Position,
    (consuming, delivered): (&mut bool, &mut bool),
    on_message: &mut impl FnMut(TailMessage) -> bool,
    on_resume: &mut impl FnMut(&NatsError, u64),
) -> Result<(), NatsError> {
    use futures_util::StreamExt;
    use jetstream::consumer::{DeliverPolicy, pull};
    let client = async_nats::connect(url)
        .await
        .map_err(err(NatsError::Connect))?;
    let js = jetstream::new(client);
    let stream = js
        .get_stream(STREAM)
        .await
        .map_err(err(NatsError::Stream))?;
    let info = stream.cached_info();
    // "New" is pinned to a seq, so that a resumed tail does not skip what came in between.
    let first = match start {
        TailFrom::New => info.state.last_sequence + 1,
        TailFrom::All => 1,
        TailFrom::StreamSeq(n) => n,
    };
    let (first, recreated) = at.connect(info.created.to_string(), first);
    if recreated {
        on_resume(
            &NatsError::Stream(
                "deleted and created again since the last message; events that were only in \
                 the old stream are in the log (--source log)"
                    .into(),
            ),
            first,
        );
    }
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: filter.to_owned(),
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: first,
            },
            // Pulls expire after 2 s, so the server's idle heartbeat comes every second and a
            // lost consumer (the server restarted) is noticed within seconds, not ~30.
            max_expires: Duration::from_secs(2),
            ..Default::default()
        })
        .await
        .map_err(err(NatsError::Stream))?;
    let mut messages = consumer.messages().await.map_err(err(NatsError::Stream))?;
    *consuming = true;
    // The consumer whose messages were checked to come from this session's stream.
    let mut checked_consumer: Option<String> = None;
    let same_stream = async |at: &Position| {
        let info = stream.get_info().await.map_err(err(NatsError::Stream))?;
        match at.stream.as_deref() == Some(info.created.to_string().as_str()) {
            true => Ok(()),
            false => Err(stream_recreated()),
        }
    };
    loop {
        let msg = tokio::select! {
            msg = messages.next() => match msg {
                Some(msg) => msg.map_err(err(NatsError::Stream))?,
                None => break,
            },
            // A consumer re-created in a new stream at the old stream seq delivers nothing until
            // that stream grows so far; a quiet tail checks its stream now and then.
            () = tokio::time::sleep(IDLE_CHECK) => {
                same_stream(at).await?;
                continue;
            }
        };
        let (stream_seq, consumer) = msg
            .info()
            .map_or((0, ""), |i| (i.stream_sequence, i.consumer));
        // The ordered consumer re-creates itself (under a new name) when it is lost, at the old
        // stream seq, also in a stream deleted and made again: there it would skip the new
        // stream's first messages. So the first message of each consumer waits until the
        // stream is known to be the one this session started on. Once one is, no later
        // message of that consumer can come from another stream.
        if checked_consumer.as_deref() != Some(consumer) {
            same_stream(at).await?;
            checked_consumer = Some(consumer.to_owned());
        }
        let event_seq = msg
            .headers
            .as_ref()
            .and_then(|h| h.get(HEADER_SEQ))
            .and_then(|v| v.as_str().parse().ok());
        if at.went_back(stream_seq, event_seq) {
            // A consumer re-created before it delivered anything starts at the stream's first
            // message: go on where this tail stands instead.
            return Err(NatsError::Stream(format!(
                "the consumer started over before stream seq {}",
                at.next
            )));
        }
        if !at.admit(stream_seq, event_seq) {
            continue;
        }
        let headers = msg
            .headers
            .iter()
            .flat_map(|h| h.iter())
            .flat_map(|(k, vs)| {
                vs.iter()
                    .map(move |v| (k.to_string(), v.as_str().to_owned()))
            })
            .collect();
        let m = TailMessage {
            stream_seq,
            subject: msg.subject.to_string(),
            headers,
            payload: msg.payload.to_vec(),
        };
        *delivered = true;
        if !on_message(m) {
            return Ok(());
        }
    }
    Err(NatsError::Stream(
        "the consumer's message stream ended".into(),
    ))
}

/// How long a tail waits for a message before it checks that its stream is still the one it
/// started on.
const IDLE_CHECK: Duration = Duration::from_secs(2);

fn stream_recreated() -> NatsError {
    NatsError::Stream("the stream was deleted and created again under the tail".into())
}

#[cfg(test)]
mod tests {
    use super::{Backoff, Position, redacted_url};
    use std::time::Duration;

    #[test]
    fn a_tail_skips_repeats_and_starts_a_recreated_stream_from_its_first_message() {
        let mut at = Position::default();
        assert_eq!(at.connect("t0".into(), 5), (5, false));
        assert!(at.admit(5, Some(5)));
        assert!(at.admit(6, Some(6)));
        assert_eq!(at.next, 7);
        // A consumer that re-creates itself from the start repeats 1..=6: none is delivered,
        // and the resume point stays after the last one seen.
        for seq in 1..=6 {
            assert!(!at.admit(seq, Some(seq)), "{seq}");
        }
        assert_eq!(at.next, 7);
        // The same stream after a restart: go on where it stood.
        assert_eq!(at.connect("t0".into(), at.next), (7, false));
        // Deleted and made again: it numbers from 1, its events go on after 6.
        assert_eq!(at.connect("t1".into(), at.next), (1, true));
        assert!(at.admit(1, Some(7)));
        assert_eq!(at.next, 2);
        // With a subject filter, events are sparse: only order matters.
        assert!(at.admit(5, Some(12)));
        assert!(!at.admit(6, Some(12)));
    }

    #[test]
    fn only_a_new_event_numbered_before_the_resume_point_means_the_consumer_started_over() {
        let mut at = Position::default();
        at.connect("t0".into(), 1);
        for seq in 1..=6 {
            assert!(!at.went_back(seq, Some(seq)));
            assert!(at.admit(seq, Some(seq)));
        }
        // A repeat (the consumer started over) is not; a new event at stream seq 2 is.
        assert!(!at.went_back(3, Some(3)));
        assert!(at.went_back(2, Some(7)));
        assert!(!at.went_back(7, Some(7)));
        // A message without seqs tells nothing.
        assert!(!at.went_back(0, Some(9)));
        assert!(!at.went_back(2, None));
    }

    #[test]
    fn waits_double_while_attempts_fail_and_start_over_after_one_that_worked() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(100), ms(500));
        let waits: Vec<_> = [false, false, false, false, false, true, false]
            .into_iter()
            .map(|worked| b.next(worked))
            .collect();
        assert_eq!(
            waits,
            [
                ms(100),
                ms(200),
                ms(400),
                ms(500),
                ms(500),
                ms(100),
                ms(200)
            ]
        );
    }

    #[test]
    fn logged_urls_carry_no_credentials() {
        assert_eq!(
            redacted_url("nats://127.0.0.1:4222"),
            "nats://127.0.0.1:4222"
        );
        assert_eq!(
            redacted_url("nats://user:s3cret@nats.internal:4222"),
            "nats://***@nats.internal:4222"
        );
        assert_eq!(redacted_url("tls://t0ken@host"), "tls://***@host");
        assert_eq!(redacted_url("u:p@host:4222"), "***@host:4222");
        assert_eq!(
            redacted_url("nats://a:b@one:4222,nats://two:4222,c:d@three"),
            "nats://***@one:4222,nats://two:4222,***@three"
        );
    }
}
