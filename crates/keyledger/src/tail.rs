//! `keyledger events tail`: follow the NATS stream, print events, optionally verify them.

use anyhow::{Context, bail};
use keyledger_nats::{TailFrom, TailMessage};
use keyledger_store::envelope::envelope_hash;
use keyledger_store::{PublicKeyInfo, SignatureVerifier};
use serde::Deserialize;
use serde_json::Value;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Options {
    #[arg(
        long,
        env = "KEYLEDGER_NATS_URL",
        hide_env_values = true,
        default_value = "nats://127.0.0.1:4222"
    )]
    pub nats_url: String,
    /// Subject filter, e.g. `keyledger.keys.acme.>` or `keyledger.keys.*.*.rotated`.
    #[arg(long, default_value = "keyledger.keys.>")]
    pub subject: String,
    /// `new` (default), `all`, or a stream sequence to start from.
    #[arg(long, default_value = "new")]
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
    /// ... or the service to fetch them from.
    #[arg(long, env = "KEYLEDGER_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Stop after this many events.
    #[arg(long)]
    pub limit: Option<u64>,
}

#[derive(Deserialize)]
struct Keys {
    keys: Vec<PublicKeyInfo>,
}

async fn verifier(opts: &Options) -> anyhow::Result<SignatureVerifier> {
    let body = match &opts.signing_keys {
        Some(path) => {
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
        }
        None => {
            let url = format!("{}/v1/signing-key", opts.url.trim_end_matches('/'));
            reqwest::get(&url)
                .await
                .and_then(|r| r.error_for_status())
                .with_context(|| format!("fetching {url}"))?
                .text()
                .await?
        }
    };
    let keys: Keys = serde_json::from_str(&body).context("parsing the signing keys")?;
    SignatureVerifier::from_public(&keys.keys).map_err(|e| anyhow::anyhow!(e))
}

/// Checks one message: the header hash equals the payload's recomputed hash, the signature
/// verifies, and (for consecutive seqs) `prev_hash` links to the previous event.
fn check(
    msg: &TailMessage,
    env: &Value,
    verifier: &SignatureVerifier,
    prev: &mut Option<(u64, String)>,
) -> Result<(), String> {
    let hash = envelope_hash(env).map_err(|e| e.to_string())?;
    let hex_hash: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    let field = |k: &str| {
        env.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    if field("hash") != hex_hash {
        return Err("hash does not match the payload".into());
    }
    let header = |k: &str| {
        msg.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.clone())
    };
    if header("Keyledger-Hash").as_deref() != Some(hex_hash.as_str()) {
        return Err("Keyledger-Hash header does not match the payload".into());
    }
    verifier.verify(&field("signer"), &hash, &field("signature"))?;
    let seq = env.get("seq").and_then(Value::as_u64).unwrap_or(0);
    if let Some((p_seq, p_hash)) = prev.as_ref()
        && *p_seq + 1 == seq
        && field("prev_hash") != *p_hash
    {
        return Err("prev_hash does not link to the previous event".into());
    }
    *prev = Some((seq, hex_hash));
    Ok(())
}

pub async fn run(opts: Options) -> anyhow::Result<()> {
    let from = match opts.from.as_str() {
        "new" => TailFrom::New,
        "all" => TailFrom::All,
        n => TailFrom::StreamSeq(n.parse().context("--from: new, all or a stream sequence")?),
    };
    let verifier = if opts.verify {
        Some(verifier(&opts).await?)
    } else {
        None
    };
    let mut seen = 0u64;
    let mut prev = None;
    let mut failed = None;
    keyledger_nats::tail(&opts.nats_url, &opts.subject, from, |msg| {
        let env: Value = match serde_json::from_slice(&msg.payload) {
            Ok(v) => v,
            Err(e) => {
                failed = Some(format!("stream seq {}: not JSON: {e}", msg.stream_seq));
                return false;
            }
        };
        let verdict = match &verifier {
            Some(v) => match check(&msg, &env, v, &mut prev) {
                Ok(()) => " ✓",
                Err(e) => {
                    failed = Some(format!("seq {}: {e}", env["seq"]));
                    return false;
                }
            },
            None => "",
        };
        if opts.json {
            println!("{env}");
        } else {
            println!(
                "{:>8} {:<22} {}/{} v{} by {} at {}{verdict}",
                env["seq"],
                env["type"].as_str().unwrap_or("?"),
                env["account"].as_str().unwrap_or("?"),
                env["key_id"].as_str().unwrap_or("?"),
                env["version"],
                env["actor"].as_str().unwrap_or("?"),
                env["occurred_at"].as_str().unwrap_or("?"),
            );
        }
        seen += 1;
        opts.limit.is_none_or(|l| seen < l)
    })
    .await?;
    if let Some(f) = failed {
        bail!("verification failed: {f}");
    }
    Ok(())
}
