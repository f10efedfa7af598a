//! The `keyledger` command line: parses arguments, then calls into the library crates.

use anyhow::{Context, anyhow, bail};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use keyledger::{ServeOptions, start};
use keyledger_service::{
    Actor, Config, CreateKey, ListQuery, Service, open_log, open_log_read_only,
};
use keyledger_store::{SignatureVerifier, SigningKeys};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

/// mimalloc rather than glibc's malloc: the writer's commits allocate and free page-sized
/// buffers (redb's pages, the stored envelopes), which glibc serves outside its thread caches;
/// see docs/BENCHMARKS.md ("Fourth round").
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "keyledger",
    version,
    about = "Event-sourced API-key lifecycle service"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct DataArgs {
    /// Where the log (redb) and the signing keys live.
    #[arg(long, env = "KEYLEDGER_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,
    /// Read the signing keys from this file instead of `<data-dir>/signing-keys.json`.
    #[arg(long, env = "KEYLEDGER_SIGNING_KEY_FILE")]
    signing_key_file: Option<PathBuf>,
}

impl DataArgs {
    fn config(&self) -> Config {
        let mut c = Config::new(&self.data_dir);
        c.signing_key_file = self.signing_key_file.clone();
        c
    }

    /// The config of a data dir that holds a log. Only `serve` and `keys create` start one: the
    /// commands that read or change a log fail on a mistyped `--data-dir` rather than start an
    /// empty log (and a new signing key) there, which `audit verify` would then call "ok".
    fn existing(&self) -> anyhow::Result<Config> {
        let c = self.config();
        let log = c.log_path();
        if !log.is_file() {
            bail!(
                "no keyledger log at {}: check --data-dir (or KEYLEDGER_DATA_DIR); \
                 `keyledger serve` creates one",
                log.display()
            );
        }
        Ok(c)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP service.
    Serve {
        #[command(flatten)]
        data: DataArgs,
        /// Address to listen on.
        #[arg(long, env = "KEYLEDGER_LISTEN", default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Accept keys in the `?apikey=` query parameter (they end up in access logs).
        #[arg(long, env = "KEYLEDGER_ALLOW_QUERY_KEY", action = clap::ArgAction::SetTrue,
              value_parser = clap::builder::BoolishValueParser::new())]
        allow_query_key: bool,
        /// The first admin key on an empty log (else one is generated and printed once).
        #[arg(long, env = "KEYLEDGER_BOOTSTRAP_KEY", hide_env_values = true)]
        bootstrap_key: Option<String>,
        /// Publish every event to this NATS server's JetStream (stream `KEYLEDGER`).
        #[arg(long, env = "KEYLEDGER_NATS_URL", hide_env_values = true)]
        nats_url: Option<String>,
        /// Serve HTTPS: PEM certificate chain (with --tls-key).
        #[arg(long, env = "KEYLEDGER_TLS_CERT", requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// Serve HTTPS: PEM private key (with --tls-cert).
        #[arg(long, env = "KEYLEDGER_TLS_KEY", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Requests per second each API key may make (burst: twice that); 429 beyond. Leave it
        /// out for no limit.
        #[arg(long, env = "KEYLEDGER_KEY_RATE_LIMIT",
              value_parser = clap::value_parser!(u32).range(1..))]
        key_rate_limit: Option<u32>,
        /// Most keys one account may have (revoked keys do not count); a create beyond is 409
        /// `key_limit_reached`. Leave it out for no limit.
        #[arg(long, env = "KEYLEDGER_MAX_KEYS_PER_ACCOUNT",
              value_parser = clap::value_parser!(u32).range(1..))]
        max_keys_per_account: Option<u32>,
        /// A reverse proxy (address or CIDR; repeat or separate with commas) whose
        /// `X-Forwarded-For` names the client, for the failed-authentication limit and keys'
        /// allowed IPs. Without it the header is ignored.
        #[arg(long = "trusted-proxy", env = "KEYLEDGER_TRUSTED_PROXIES", value_delimiter = ',',
              value_parser = parse_net)]
        trusted_proxies: Vec<ipnet::IpNet>,
        /// Threads that serve HTTP (and publish to NATS); default: one per core. Fewer than
        /// the cores steadies verify's latency tail when other busy processes (a gateway, a
        /// load generator) share the cores, at some throughput (see docs/BENCHMARKS.md).
        #[arg(long, env = "KEYLEDGER_WORKER_THREADS",
              value_parser = clap::value_parser!(u16).range(1..))]
        worker_threads: Option<u16>,
    },
    /// Rebuild every read model from the log.
    Replay {
        #[command(flatten)]
        data: DataArgs,
    },
    /// Audit the log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Manage keys offline (the service must not be running on the same data dir).
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Manage the keys that sign the log.
    SigningKey {
        #[command(subcommand)]
        command: SigningKeyCommand,
    },
    /// Read the event log.
    Events {
        #[command(subcommand)]
        command: EventsCommand,
    },
}

#[derive(Subcommand)]
enum EventsCommand {
    /// Print every event after `--after` as JSON lines, exactly as stored (for auditors and
    /// docs/examples/verify_log.py).
    Export {
        #[command(flatten)]
        data: DataArgs,
        #[arg(long, default_value_t = 0)]
        after: u64,
    },
    /// Follow events from the NATS stream or, with `--source log`, from the log through the
    /// running service.
    Tail(keyledger::tail::Options),
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check seqs, the hash chain, every signature and every replay row, without changing the
    /// log; exit 1 naming the first bad seq.
    Verify {
        #[command(flatten)]
        data: DataArgs,
        /// Also trust these public keys (a saved `GET /v1/signing-key` or `signing-key list`;
        /// repeatable): for events signed by keys no longer in the key file. With it, the key
        /// file is not needed at all.
        #[arg(long, value_name = "FILE")]
        public_keys: Vec<PathBuf>,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a key and print its secret once.
    Create {
        #[command(flatten)]
        data: DataArgs,
        #[arg(long)]
        name: String,
        #[arg(long)]
        account: Option<String>,
        /// Repeatable.
        #[arg(long = "scope")]
        scopes: Vec<String>,
    },
    /// List keys as JSON lines.
    List {
        #[command(flatten)]
        data: DataArgs,
        #[arg(long)]
        account: Option<String>,
    },
    /// Revoke a key.
    Revoke {
        #[command(flatten)]
        data: DataArgs,
        id: uuid::Uuid,
    },
}

#[derive(Subcommand)]
enum SigningKeyCommand {
    /// Add a new signing key; earlier keys stay for verifying old events. Restart the service
    /// to sign with it.
    Rotate {
        #[command(flatten)]
        data: DataArgs,
        /// Start a new key file if there is none (when the keys are lost: events signed before
        /// then verify only against their published public keys).
        #[arg(long)]
        create: bool,
    },
    /// Print the public keys as `GET /v1/signing-key` does.
    List {
        #[command(flatten)]
        data: DataArgs,
    },
    /// Add public keys (a saved `GET /v1/signing-key` or `signing-key list`) that the file
    /// lacks, as retired keys that verify but never sign: after the secret keys were lost, the
    /// service then still publishes the keys of earlier events and audits accept them.
    /// Restart the service to publish them.
    ImportPublic {
        #[command(flatten)]
        data: DataArgs,
        /// The saved public keys.
        file: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    match run() {
        // A reader that stops early (`keyledger keys list | head`) is not a failure.
        Err(e)
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) =>
        {
            Ok(())
        }
        result => result,
    }
}

fn run() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KEYLEDGER_LOG")
                .unwrap_or_else(|_| "info,async_nats=warn".into()),
        )
        .init();
    let cli = Cli::parse();
    let worker_threads = match &cli.command {
        Command::Serve { worker_threads, .. } => *worker_threads,
        _ => None,
    };
    let rt = keyledger::runtime_builder(worker_threads).build()?;
    match cli.command {
        Command::Serve {
            data,
            listen,
            allow_query_key,
            bootstrap_key,
            nats_url,
            tls_cert,
            tls_key,
            key_rate_limit,
            max_keys_per_account,
            trusted_proxies,
            worker_threads: _,
        } => rt.block_on(serve(ServeOptions {
            listen,
            allow_query_key,
            bootstrap_key,
            signing_key_file: data.signing_key_file,
            nats_url,
            tls: tls_cert.zip(tls_key),
            key_rate_limit,
            max_keys_per_account: max_keys_per_account.map(|n| n as usize),
            trusted_proxies,
            ..ServeOptions::new(data.data_dir)
        })),
        Command::Replay { data } => replay(&data),
        Command::Audit {
            command: AuditCommand::Verify { data, public_keys },
        } => audit_verify(&data, &public_keys),
        Command::Keys { command } => rt.block_on(keys(command)),
        Command::SigningKey {
            command: SigningKeyCommand::Rotate { data, create },
        } => {
            let path = data.config().signing_key_path();
            let now = keyledger_service::now();
            let info = match (path.exists(), create) {
                (true, _) => SigningKeys::rotate(&path, now)?,
                (false, true) => {
                    let keys = SigningKeys::create(&path, now)?;
                    eprintln!("created {} with a new key", path.display());
                    keys.public_keys().pop().expect("one key")
                }
                (false, false) => return Err(no_key_file(&path, "--create starts a new one")),
            };
            println!("{}", serde_json::to_string(&info)?);
            Ok(())
        }
        Command::SigningKey {
            command: SigningKeyCommand::List { data },
        } => {
            let keys = SigningKeys::load(&data.config().signing_key_path())?;
            println!("{}", serde_json::json!({ "keys": keys.public_keys() }));
            Ok(())
        }
        Command::SigningKey {
            command: SigningKeyCommand::ImportPublic { data, file },
        } => {
            let keys = keyledger::tail::read_public_keys(&file)?;
            let path = data.config().signing_key_path();
            if !path.exists() {
                return Err(no_key_file(
                    &path,
                    "`keyledger signing-key rotate --create` starts a new one first",
                ));
            }
            let added = SigningKeys::import_public(&path, &keys)
                .map_err(|e| anyhow!("importing {}: {e}", file.display()))?;
            match added.as_slice() {
                [] => eprintln!(
                    "{} holds every key of {} already",
                    path.display(),
                    file.display()
                ),
                ids => eprintln!(
                    "added {} retired public key(s) to {}: {}",
                    ids.len(),
                    path.display(),
                    ids.join(", ")
                ),
            }
            Ok(())
        }
        Command::Events {
            command: EventsCommand::Export { data, after },
        } => export(&data, after),
        Command::Events {
            command: EventsCommand::Tail(opts),
        } => rt.block_on(keyledger::tail::run(opts, &mut std::io::stdout())),
    }
}

/// A `signing-key` command found no key file at `path`; `remedy` says how to make one.
fn no_key_file(path: &std::path::Path, remedy: &str) -> anyhow::Error {
    anyhow!(
        "no signing key file at {}: pass --signing-key-file (or KEYLEDGER_SIGNING_KEY_FILE) if \
         it lives elsewhere; {remedy}",
        path.display()
    )
}

async fn serve(opts: ServeOptions) -> anyhow::Result<()> {
    let scheme = if opts.tls.is_some() { "https" } else { "http" };
    // Installed before "listening" is printed: a SIGTERM that follows it must stop cleanly.
    let shutdown = shutdown_signal()?;
    let server = start(opts).await?;
    if let Some(secret) = &server.bootstrap_secret {
        eprintln!(
            "\nkeyledger: created the bootstrap admin key. It is shown this once; store it now:\n\n    {secret}\n"
        );
    }
    eprintln!("keyledger: listening on {scheme}://{}", server.addr);
    shutdown.await;
    tracing::info!("shutting down");
    server.shutdown().await;
    Ok(())
}

/// An address (a /32 or /128) or a CIDR network.
fn parse_net(s: &str) -> Result<ipnet::IpNet, String> {
    let s = s.trim();
    keyledger_core::model::parse_net(s)
        .ok_or_else(|| format!("`{s}` is neither an IP address nor a CIDR network"))
}

/// Registers the SIGTERM and SIGINT handlers now; the future completes at the first signal.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        Ok(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}

fn bar(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len).with_prefix(what.to_owned());
    pb.set_style(
        ProgressStyle::with_template("{prefix} {bar:40} {pos}/{len} events ({rate}, eta {eta})")
            .expect("valid template")
            // indicatif's own {per_sec} prints four decimals ("13,396.1255/s").
            .with_key(
                "rate",
                |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = write!(w, "{:.0}/s", state.per_sec());
                },
            ),
    );
    pb
}

fn replay(data: &DataArgs) -> anyhow::Result<()> {
    let log = open_log(&data.existing()?)?;
    let (head, _) = log.head()?;
    let pb = bar(head, "replay");
    let started = std::time::Instant::now();
    let n = keyledger_projections::persisted::catch_up(&log, true, |done, _| pb.set_position(done))
        .context("replaying the log")?;
    pb.finish();
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    eprintln!(
        "replayed {n} events in {secs:.2} s ({:.0} events/s)",
        n as f64 / secs
    );
    Ok(())
}

fn export(data: &DataArgs, after: u64) -> anyhow::Result<()> {
    // Exports neither sign nor verify: no key file needed.
    let log = open_log_read_only(&data.existing()?, false)?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut failed = None;
    log.scan_raw(after, |_, bytes| {
        let ok = out.write_all(bytes).and_then(|()| out.write_all(b"\n"));
        if let Err(e) = ok {
            failed = Some(e);
            return Ok(false);
        }
        Ok(true)
    })?;
    if let Some(e) = failed {
        return Err(e.into());
    }
    out.flush()?;
    Ok(())
}

fn audit_verify(data: &DataArgs, public_keys: &[PathBuf]) -> anyhow::Result<()> {
    let config = data.existing()?;
    let log = open_log_read_only(&config, public_keys.is_empty())?;
    let (head, _) = log.head()?;
    let pb = bar(head, "verify");
    let mut trusted = Vec::new();
    for path in public_keys {
        trusted.extend(keyledger::tail::read_public_keys(path)?);
    }
    let mut verifier = SignatureVerifier::from_public(&trusted).map_err(|e| anyhow!(e))?;
    if config.signing_key_path().exists() {
        verifier.extend(log.signing_keys().verifier());
    }
    let result = keyledger_store::audit::verify_log(&log, &verifier, |seq| {
        if seq % 1024 == 0 {
            pb.set_position(seq);
        }
    })
    .map_err(|e| e.to_string())
    .and_then(|n| {
        // The key table is folded from the replay rows, which verify_log has just checked.
        pb.reset();
        pb.set_prefix("key table");
        keyledger_projections::persisted::verify_table(&log, |done, _| pb.set_position(done))
            .map(|keys| (n, keys))
            .map_err(|e| e.to_string())
    });
    pb.finish_and_clear();
    match result {
        Ok((n, keys)) => {
            println!(
                "ok: {n} events, chain, signatures and replay rows verified; \
                 the key table ({keys} keys) matches the log"
            );
            Ok(())
        }
        Err(e) => {
            eprintln!("audit failed: {e}");
            drop(log);
            std::process::exit(1);
        }
    }
}

async fn keys(cmd: KeysCommand) -> anyhow::Result<()> {
    // Like `serve`, `keys create` may start a log (to provision keys before the first start).
    let config = match &cmd {
        KeysCommand::Create { data, .. } => data.config(),
        KeysCommand::List { data, .. } | KeysCommand::Revoke { data, .. } => data.existing()?,
    };
    let service = tokio::task::spawn_blocking(move || Service::open(config)).await??;
    let result = run_keys(&service, cmd).await;
    tokio::task::spawn_blocking(move || service.shutdown()).await?;
    result
}

async fn run_keys(service: &Service, cmd: KeysCommand) -> anyhow::Result<()> {
    match cmd {
        KeysCommand::Create {
            name,
            account,
            scopes,
            ..
        } => {
            let input = CreateKey {
                name,
                account,
                scopes,
                ..Default::default()
            };
            let (c, secret) = service.create(&Actor::Cli, input, None).await?;
            eprintln!("created key {} ({})", c.entry.state.id, c.entry.state.hint);
            if let Some(secret) = secret {
                println!("{}", secret.expose());
            }
        }
        KeysCommand::List { account, .. } => {
            let page = service.list(
                &Actor::Cli,
                ListQuery {
                    account,
                    limit: usize::MAX,
                    ..Default::default()
                },
            )?;
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            // Each line as `GET /v1/keys/{id}` answers it.
            for e in page.items {
                let key = keyledger_server::dto::KeyResource::from(&*e);
                writeln!(out, "{}", serde_json::to_string(&key)?)?;
            }
            out.flush()?;
        }
        KeysCommand::Revoke { id, .. } => {
            if let Err(e) = service.delete(&Actor::Cli, id, None, None).await {
                bail!("cannot revoke {id}: {e}");
            }
            eprintln!("revoked {id}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_net;

    #[test]
    fn a_trusted_proxy_is_an_address_or_a_network() {
        assert_eq!(parse_net("10.0.0.1").unwrap().to_string(), "10.0.0.1/32");
        assert_eq!(parse_net(" 10.0.0.0/8 ").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(parse_net("::1").unwrap().to_string(), "::1/128");
        // As keys' allow-lists read them: truncated, and IPv4-mapped given as IPv4.
        assert_eq!(parse_net("10.1.2.3/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(
            parse_net("::ffff:10.0.0.0/104").unwrap().to_string(),
            "10.0.0.0/8"
        );
        let err = parse_net("proxy.local").unwrap_err();
        assert!(err.contains("`proxy.local`"), "{err}");
    }
}
