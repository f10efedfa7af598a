//! A gateway that keeps a local cache of API keys fresh from keyledger's NATS stream.
//!
//! It binds a durable JetStream consumer (so a restart resumes where it stopped, and a lost
//! consumer is bound again), checks every event's hash and ed25519 signature against the public
//! keys of `GET /v1/signing-key` (fetched again when an event names a signer it does not know
//! yet), and drops cached verifications when a key is updated, rotated, revoked or expires.
//!
//! ```text
//! cargo run -p keyledger-nats --example gateway -- \
//!     nats://127.0.0.1:4222 http://127.0.0.1:8080 my-gateway [start-seq]
//! ```
//! `start-seq` (a stream sequence) applies only when the durable consumer is first created;
//! without it the consumer starts at the beginning of the stream.

use async_nats::jetstream::{self, consumer::DeliverPolicy, consumer::pull};
use futures_util::StreamExt;
use keyledger_store::envelope::envelope_hash;
use keyledger_store::{PublicKeyInfo, SignatureVerifier};
use serde_json::Value;

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().collect();
    let nats_url = args.get(1).map_or("nats://127.0.0.1:4222", String::as_str);
    let keyledger = args.get(2).map_or("http://127.0.0.1:8080", String::as_str);
    let name = args.get(3).map_or("gateway", String::as_str);
    let start: Option<u64> = args.get(4).and_then(|s| s.parse().ok());

    // 1. The public keys that sign the log (no authentication needed).
    let mut verifier = signing_keys(keyledger).await?;

    // 2. Consume. A lost consumer (the stream deleted, say) is bound again: a revocation
    // missed while the gateway is down would leave a revoked key in its cache.
    let js = jetstream::new(async_nats::connect(nats_url).await?);
    let mut start = start;
    loop {
        if let Err(e) = consume(&js, name, start, keyledger, &mut verifier).await {
            eprintln!("consumer lost ({e}); binding it again in 1 s");
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
        // A consumer made again (in a stream made anew) starts at its beginning.
        start = None;
    }
}

/// Binds the durable pull consumer `name` on every key event (creating it if needed, e.g. in a
/// stream made anew, where it starts at the beginning) and reacts to each event until an error.
async fn consume(
    js: &jetstream::Context,
    name: &str,
    start: Option<u64>,
    keyledger: &str,
    verifier: &mut SignatureVerifier,
) -> Result<(), Error> {
    let stream = js.get_stream("KEYLEDGER").await?;
    let consumer = stream
        .get_or_create_consumer(
            name,
            pull::Config {
                durable_name: Some(name.to_owned()),
                filter_subject: "keyledger.keys.>".into(),
                deliver_policy: start.map_or(DeliverPolicy::All, |start_sequence| {
                    DeliverPolicy::ByStartSequence { start_sequence }
                }),
                ..Default::default()
            },
        )
        .await?;
    // Short pulls with a heartbeat every second: a lost consumer (a nats-server restarted on
    // an empty store, say) shows within seconds, not after the default 30 s pull.
    let mut messages = consumer
        .stream()
        .expires(std::time::Duration::from_secs(2))
        .heartbeat(std::time::Duration::from_secs(1))
        .messages()
        .await?;
    while let Some(msg) = messages.next().await {
        let msg = msg?;
        let env: Value = serde_json::from_slice(&msg.payload)?;
        // 3. Trust nothing unverified: recompute the hash, check the signature.
        let hash = envelope_hash(&env)?;
        let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
        let signer = env["signer"].as_str().unwrap_or_default();
        let signature = env["signature"].as_str().unwrap_or_default();
        if !verifier.knows(signer) {
            // The service's signing key was rotated since: fetch its keys again (an error
            // leaves the message unacknowledged, to come again once keyledger answers).
            *verifier = signing_keys(keyledger).await?;
        }
        if env["hash"] != hex.as_str() || verifier.verify(signer, &hash, signature).is_err() {
            eprintln!("REJECTED seq {}: bad hash or signature", env["seq"]);
            msg.ack().await?;
            continue;
        }
        // 4. React (idempotently: a consumer bound anew may deliver an event again). Everything
        // but a creation invalidates what the gateway cached for the key.
        let key = env["key_id"].as_str().unwrap_or_default();
        match env["type"].as_str().unwrap_or_default() {
            "key.created" => println!("seq {}: new key {key}", env["seq"]),
            "key.deleted" => println!("seq {}: REVOKE {key} now", env["seq"]),
            "key.rotated" => println!(
                "seq {}: {key} rotated; old secret valid until {}",
                env["seq"], env["data"]["grace_until"]
            ),
            other => println!(
                "seq {}: {other} on {key}: drop cached verification",
                env["seq"]
            ),
        }
        msg.ack().await?;
    }
    Err("the message stream ended".into())
}

/// The public keys of `GET /v1/signing-key` (no authentication needed).
async fn signing_keys(keyledger: &str) -> Result<SignatureVerifier, Error> {
    let body = fetch(&format!("{keyledger}/v1/signing-key")).await?;
    let keys: Vec<PublicKeyInfo> =
        serde_json::from_value(serde_json::from_str::<Value>(&body)?["keys"].clone())?;
    Ok(SignatureVerifier::from_public(&keys)?)
}

/// A minimal HTTP GET (keeps the example free of an HTTP client dependency).
async fn fetch(url: &str) -> Result<String, Error> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").ok_or("only http:// URLs")?;
    let (host, path) = rest.split_once('/').map_or((rest, "/"), |(h, p)| (h, p));
    let mut s = tokio::net::TcpStream::connect(host).await?;
    s.write_all(
        format!(
            "GET /{} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n",
            path.trim_start_matches('/')
        )
        .as_bytes(),
    )
    .await?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).await?;
    let (head, body) = resp.split_once("\r\n\r\n").ok_or("bad HTTP response")?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!("GET {url}: {}", head.lines().next().unwrap_or_default()).into());
    }
    Ok(body.to_owned())
}
