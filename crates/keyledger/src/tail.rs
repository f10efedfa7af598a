//! `keyledger events tail`: follow events, from the NATS stream or from the log (through the
//! server's `/v1/events/stream`), print them, and optionally verify each hash, signature and
//! chain link.

use anyhow::{Context, bail};
use futures_util::StreamExt;
use keyledger_nats::TailFrom;
use keyledger_store::envelope::envelope_hash;
use keyledger_store::{PublicKeyInfo, SignatureVerifier};
use serde::Deserialize;
use serde_json::Value;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";
const DEFAULT_URL: &str = "http://127.0.0.1:8080";
const DEFAULT_FROM: &str = "new";

/// Where events are followed from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Source {
    /// The JetStream stream `KEYLEDGER` (needs `serve --nats-url`).
    Nats,
    /// The log itself, through the server's `GET /v1/events/stream` (needs an API key with
    /// `events:read`; works without NATS).
    Log,
}

#[derive(clap::Args, Debug, Clone)]
pub struct Options {
    /// `nats` or `log`.
    #[arg(long, value_enum, default_value = "nats")]
    pub source: Source,
    #[arg(
        long,
        env = "KEYLEDGER_NATS_URL",
        hide_env_values = true,
        default_value = DEFAULT_NATS_URL
    )]
    pub nats_url: String,
    /// NATS only: subject filter, e.g. `keyledger.keys.acme.>` or `keyledger.keys.*.*.rotated`
    /// (default `keyledger.keys.>`).
    #[arg(long)]
    pub subject: Option<String>,
    /// Log only: one account's events (admin keys; other keys see only their own account).
    #[arg(long)]
    pub account: Option<String>,
    /// Log only: one event type, e.g. `key.rotated`.
    #[arg(long = "type")]
    pub event_type: Option<String>,
    /// Log only: an API key with the `events:read` scope.
    #[arg(long, env = "KEYLEDGER_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// `new` (default), `all`, or the seq to start from: the log seq, or on NATS the stream
    /// sequence (the same number unless the stream was emptied or recreated).
    #[arg(long, default_value = DEFAULT_FROM)]
    pub from: String,
    /// Print each envelope as one JSON line.
    #[arg(long)]
    pub json: bool,
    /// Check each event's hash and signature (and the chain between consecutive events).
    #[arg(long)]
    pub verify: bool,
    /// Public keys for --verify: a file holding the body of `GET /v1/signing-key` ...
    #[arg(long)]
    pub signing_keys: Option<PathBuf>,
    /// ... or the service to fetch them from; with `--source log`, also the service to follow.
    #[arg(long, env = "KEYLEDGER_URL", default_value = DEFAULT_URL)]
    pub url: String,
    /// Stop after this many events.
    #[arg(long)]
    pub limit: Option<u64>,
}

impl Options {
    /// The defaults of the command line, as `keyledger events tail` alone would have them.
    pub fn new(source: Source) -> Self {
        Self {
            source,
            nats_url: DEFAULT_NATS_URL.into(),
            subject: None,
            account: None,
            event_type: None,
            api_key: None,
            from: DEFAULT_FROM.into(),
            json: false,
            verify: false,
            signing_keys: None,
            url: DEFAULT_URL.into(),
            limit: None,
        }
    }
}

/// `--from`, parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Start {
    New,
    All,
    Seq(u64),
}

fn parse_from(s: &str) -> anyhow::Result<Start> {
    Ok(match s {
        "new" => Start::New,
        "all" => Start::All,
        n => match n.parse() {
            Ok(seq) if seq > 0 => Start::Seq(seq),
            _ => bail!("--from: `new`, `all` or a seq from 1 on, not `{n}`"),
        },
    })
}

/// Follows events until `--limit` is reached (or forever), writing one line per event to `out`.
/// Fails on the first event that does not verify (with `--verify`).
pub async fn run(opts: Options, out: &mut (impl Write + Send)) -> anyhow::Result<()> {
    let from = parse_from(&opts.from)?;
    check_options(&opts)?;
    if opts.limit == Some(0) {
        return Ok(());
    }
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .build()?;
    let verifier = if opts.verify {
        Some(verifier(&opts, &client).await?)
    } else {
        None
    };
    let mut printer = Printer {
        out,
        json: opts.json,
        verifier,
        prev: None,
        seen: 0,
        limit: opts.limit,
    };
    match opts.source {
        Source::Nats => follow_nats(&opts, from, &client, &mut printer).await,
        Source::Log => follow_log(&opts, from, &client, &mut printer).await,
    }
}

/// An event signed by a key the tail does not know: the service may have rotated its signing
/// key since the tail fetched them.
#[derive(Debug)]
struct UnknownSigner {
    seq: u64,
    signer: String,
}

impl std::fmt::Display for UnknownSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "verification failed: seq {}: unknown signer {}",
            self.seq, self.signer
        )
    }
}

impl std::error::Error for UnknownSigner {}

/// Each source's filters, and the log's API key, before anything is fetched.
fn check_options(opts: &Options) -> anyhow::Result<()> {
    match opts.source {
        Source::Nats if opts.account.is_some() || opts.event_type.is_some() => {
            bail!("--account and --type filter the log source; on NATS use --subject")
        }
        Source::Log if opts.subject.is_some() => {
            bail!("--subject filters NATS subjects; on the log use --account and --type")
        }
        Source::Log if opts.api_key.is_none() => {
            bail!("--source log needs --api-key (or KEYLEDGER_API_KEY), a key with events:read")
        }
        _ => Ok(()),
    }
}

#[derive(Deserialize)]
struct Keys {
    keys: Vec<PublicKeyInfo>,
}

/// The public keys in `path`, a saved answer of `GET /v1/signing-key` (or of `keyledger
/// signing-key list`).
pub fn read_public_keys(path: &std::path::Path) -> anyhow::Result<Vec<PublicKeyInfo>> {
    let body =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse_public_keys(&body, &path.display().to_string())
}

/// The public keys in `body` (from `source`), as `GET /v1/signing-key` answers.
fn parse_public_keys(body: &str, source: &str) -> anyhow::Result<Vec<PublicKeyInfo>> {
    let keys: Keys = serde_json::from_str(body).with_context(|| {
        format!(
            "{source}: not a list of public keys as `GET /v1/signing-key` or `keyledger \
             signing-key list` print them"
        )
    })?;
    Ok(keys.keys)
}

async fn verifier(opts: &Options, client: &reqwest::Client) -> anyhow::Result<SignatureVerifier> {
    let keys = match &opts.signing_keys {
        Some(path) => read_public_keys(path)?,
        None => {
            let url = format!("{}/v1/signing-key", opts.url.trim_end_matches('/'));
            let body = client
                .get(&url)
                .send()
                .await
                .and_then(|r| r.error_for_status())
                .with_context(|| format!("fetching {url}"))?
                .text()
                .await?;
            parse_public_keys(&body, &url)?
        }
    };
    SignatureVerifier::from_public(&keys).map_err(|e| anyhow::anyhow!(e))
}

/// Prints events and checks them; shared by both sources.
struct Printer<'a, W> {
    out: &'a mut W,
    json: bool,
    verifier: Option<SignatureVerifier>,
    /// The seq and hash of the last event printed, for the chain check.
    prev: Option<(u64, String)>,
    seen: u64,
    limit: Option<u64>,
}

impl<W: Write> Printer<'_, W> {
    /// Fetches the signing keys from the service again, where they came from it (not from
    /// `--signing-keys`); `Ok(false)` where they cannot be reloaded.
    async fn reload_keys(
        &mut self,
        opts: &Options,
        client: &reqwest::Client,
    ) -> anyhow::Result<bool> {
        if opts.signing_keys.is_some() || self.verifier.is_none() {
            return Ok(false);
        }
        self.verifier = Some(verifier(opts, client).await?);
        Ok(true)
    }

    /// Prints one envelope (after checking it, with `--verify`); `Ok(false)` once the limit is
    /// reached. `header_hash` is the hash a transport that carries one sent beside the payload
    /// (NATS's `Keyledger-Hash`); `None` where there is none (the event stream).
    fn event(&mut self, payload: &[u8], header_hash: Option<&str>) -> anyhow::Result<bool> {
        let env: Value = serde_json::from_slice(payload).context("an event that is not JSON")?;
        let seq = env.get("seq").and_then(Value::as_u64).unwrap_or(0);
        let verdict = match &self.verifier {
            Some(v) => {
                let failed = |e: String| anyhow::anyhow!("verification failed: seq {seq}: {e}");
                let hash = check_hash(&env, header_hash).map_err(failed)?;
                // Only an intact event may send the tail to fetch the signing keys again.
                let signer = env.get("signer").and_then(Value::as_str);
                if let Some(signer) = signer.filter(|s| !v.knows(s)) {
                    let signer = signer.to_owned();
                    return Err(UnknownSigner { seq, signer }.into());
                }
                check_signed_and_linked(&env, &hash, v, &mut self.prev).map_err(failed)?;
                " ✓"
            }
            None => "",
        };
        if self.json {
            writeln!(self.out, "{env}")?;
        } else {
            writeln!(
                self.out,
                "{:>8} {:<22} {}/{} v{} by {} at {}{verdict}",
                seq,
                env["type"].as_str().unwrap_or("?"),
                env["account"].as_str().unwrap_or("?"),
                env["key_id"].as_str().unwrap_or("?"),
                env["version"],
                env["actor"].as_str().unwrap_or("?"),
                env["occurred_at"].as_str().unwrap_or("?"),
            )?;
        }
        self.out.flush()?;
        self.seen += 1;
        Ok(self.limit.is_none_or(|l| self.seen < l))
    }
}

/// Checks one envelope's `hash`: it is the recomputed hash of the payload (and equals
/// `header_hash`, where the transport carries one). The hash, as bytes.
fn check_hash(env: &Value, header_hash: Option<&str>) -> Result<[u8; 32], String> {
    let hash = envelope_hash(env).map_err(|e| e.to_string())?;
    let hex_hash = hex::encode(hash);
    if env.get("hash").and_then(Value::as_str) != Some(hex_hash.as_str()) {
        return Err("hash does not match the payload".into());
    }
    if header_hash.is_some_and(|h| h != hex_hash) {
        return Err("Keyledger-Hash header does not match the payload".into());
    }
    Ok(hash)
}

/// Checks the rest of an envelope whose `hash` checked out: the signature verifies, and for
/// consecutive seqs `prev_hash` links to the previous event.
fn check_signed_and_linked(
    env: &Value,
    hash: &[u8; 32],
    verifier: &SignatureVerifier,
    prev: &mut Option<(u64, String)>,
) -> Result<(), String> {
    let field = |k: &str| env.get(k).and_then(Value::as_str).unwrap_or_default();
    verifier.verify(field("signer"), hash, field("signature"))?;
    let seq = env.get("seq").and_then(Value::as_u64).unwrap_or(0);
    if let Some((p_seq, p_hash)) = prev.as_ref()
        && *p_seq + 1 == seq
        && field("prev_hash") != p_hash
    {
        return Err("prev_hash does not link to the previous event".into());
    }
    *prev = Some((seq, hex::encode(hash)));
    Ok(())
}

async fn follow_nats<W: Write>(
    opts: &Options,
    from: Start,
    client: &reqwest::Client,
    printer: &mut Printer<'_, W>,
) -> anyhow::Result<()> {
    let mut from = match from {
        Start::New => TailFrom::New,
        Start::All => TailFrom::All,
        Start::Seq(n) => TailFrom::StreamSeq(n),
    };
    let subject = opts.subject.as_deref().unwrap_or("keyledger.keys.>");
    // The stream seq at which the keys were last reloaded: an event still unknown after a
    // reload fails instead of reloading again.
    let mut reloaded_at = None;
    loop {
        let mut failed = None;
        let mut unknown_at = None;
        keyledger_nats::tail(
            &opts.nats_url,
            subject,
            from,
            |msg| {
                // The publisher always sends the header: a message without it fails verification.
                let hash = msg
                    .headers
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case("Keyledger-Hash"))
                    .map_or("", |(_, v)| v.as_str());
                match printer.event(&msg.payload, Some(hash)) {
                    Ok(more) => more,
                    // Resuming needs the message's stream seq (0 when its metadata was unreadable).
                    Err(e)
                        if e.is::<UnknownSigner>()
                            && msg.stream_seq > 0
                            && reloaded_at != Some(msg.stream_seq) =>
                    {
                        unknown_at = Some((msg.stream_seq, e));
                        false
                    }
                    Err(e) => {
                        failed = Some(e.context(format!("stream seq {}", msg.stream_seq)));
                        false
                    }
                }
            },
            |e, next| {
                eprintln!("keyledger: the NATS stream broke ({e}); resuming at stream seq {next}");
            },
        )
        .await?;
        match unknown_at {
            Some((stream_seq, e)) => {
                if !printer.reload_keys(opts, client).await? {
                    return Err(e.context(format!("stream seq {stream_seq}")));
                }
                // Resume at the event that failed, with the keys the service has now.
                reloaded_at = Some(stream_seq);
                from = TailFrom::StreamSeq(stream_seq);
            }
            None => return failed.map_or(Ok(()), Err),
        }
    }
}

/// Why a stream from the server ended.
enum Ended {
    /// `--limit` was reached.
    Done,
    /// The connection closed or broke (the server restarted, say): resume after the last seq.
    Closed(String),
}

async fn follow_log<W: Write>(
    opts: &Options,
    from: Start,
    client: &reqwest::Client,
    printer: &mut Printer<'_, W>,
) -> anyhow::Result<()> {
    let api_key = opts.api_key.as_deref().unwrap_or_default();
    let base = opts.url.trim_end_matches('/');
    let mut after = match from {
        Start::All => 0,
        Start::Seq(n) => n - 1,
        Start::New => log_head(client, base).await?,
    };
    let mut connected_once = false;
    let mut backoff = Duration::from_millis(250);
    loop {
        let mut req = client
            .get(format!("{base}/v1/events/stream"))
            .bearer_auth(api_key)
            .header("Last-Event-ID", after.to_string());
        if let Some(a) = &opts.account {
            req = req.query(&[("account", a)]);
        }
        if let Some(t) = &opts.event_type {
            req = req.query(&[("type", t)]);
        }
        let ended = match req.send().await {
            Ok(resp) if resp.status().is_success() => {
                connected_once = true;
                backoff = Duration::from_millis(250);
                read_stream(resp, &mut after, printer, opts, client).await?
            }
            // A restarting service may answer 503 for a moment.
            Ok(resp) if connected_once && resp.status().is_server_error() => {
                Ended::Closed(format!("{} answered {}", base, resp.status()))
            }
            Ok(resp) => {
                let status = resp.status();
                let body: Value = resp.json().await.unwrap_or(Value::Null);
                let message = body["error"]["message"].as_str().unwrap_or("");
                // The resume point is sent as `Last-Event-ID`; a first one beyond the log is
                // the operator's `--from`, so say that.
                if let (false, Start::Seq(n), true) =
                    (connected_once, from, message.starts_with("Last-Event-ID"))
                {
                    let head = log_head(client, base).await?;
                    bail!("--from {n}: beyond the log, whose last seq is {head}");
                }
                bail!("{base}/v1/events/stream answered {status}: {message}");
            }
            // The first connection must work: a wrong URL is not worth waiting on.
            Err(e) if !connected_once => {
                return Err(e).with_context(|| format!("connecting to {base}"));
            }
            Err(e) => Ended::Closed(e.to_string()),
        };
        match ended {
            Ended::Done => return Ok(()),
            Ended::Closed(why) => {
                eprintln!("keyledger: the event stream ended ({why}); resuming after seq {after}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// The log's last seq, from `/readyz` (which needs no key).
async fn log_head(client: &reqwest::Client, base: &str) -> anyhow::Result<u64> {
    let url = format!("{base}/readyz");
    let body: Value = client
        .get(&url)
        .send()
        .await
        .with_context(|| format!("connecting to {base}"))?
        .json()
        .await
        .with_context(|| format!("reading {url}"))?;
    body["log_head"]
        .as_u64()
        .with_context(|| format!("{url} names no log_head"))
}

/// Prints the stream's events until the limit or the end of the connection, advancing `after`.
/// An event by an unknown signer is checked once more after reloading the signing keys.
async fn read_stream<W: Write>(
    resp: reqwest::Response,
    after: &mut u64,
    printer: &mut Printer<'_, W>,
    opts: &Options,
    client: &reqwest::Client,
) -> anyhow::Result<Ended> {
    use eventsource_stream::Eventsource;
    let mut events = resp.bytes_stream().eventsource();
    while let Some(ev) = events.next().await {
        let ev = match ev {
            Ok(ev) => ev,
            Err(e) => return Ok(Ended::Closed(e.to_string())),
        };
        if ev.data.is_empty() {
            continue;
        }
        let seq: u64 = ev
            .id
            .parse()
            .with_context(|| format!("an event whose id `{}` is not a seq", ev.id))?;
        let more = match printer.event(ev.data.as_bytes(), None) {
            Err(e) if e.is::<UnknownSigner>() => {
                if !printer.reload_keys(opts, client).await? {
                    return Err(e);
                }
                printer.event(ev.data.as_bytes(), None)?
            }
            printed => printed?,
        };
        *after = seq;
        if !more {
            return Ok(Ended::Done);
        }
    }
    Ok(Ended::Closed("the server closed it".into()))
}

#[cfg(test)]
mod tests {
    use super::{Start, parse_from};

    #[test]
    fn from_takes_new_all_or_a_positive_seq() {
        assert_eq!(parse_from("new").unwrap(), Start::New);
        assert_eq!(parse_from("all").unwrap(), Start::All);
        assert_eq!(parse_from("42").unwrap(), Start::Seq(42));
        for bad in ["0", "-1", "x", ""] {
            let e = parse_from(bad).unwrap_err().to_string();
            assert!(e.contains("--from"), "{e}");
        }
    }
}
