//! # keyledger
//!
//! The binary's library half: wires the crates together. [`start`] opens the data dir, runs the
//! service and the HTTP server, and creates the bootstrap admin key on an empty log; the CLI in
//! `main.rs` parses arguments and calls into here. Tests start servers in-process through the
//! same [`start`]. [`tail`] is `keyledger events tail`, here so that tests can run it in-process.

pub mod tail;

use anyhow::Context;
use keyledger_core::Secret;
use keyledger_server::metrics::Metrics;
use keyledger_server::{Limits, ServerConfig, router, serve};
use keyledger_service::{Config, Service};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The runtime of `keyledger serve` (and of the load generator's server, so that both run
/// alike): `worker_threads` workers, default one per core.
pub fn runtime_builder(worker_threads: Option<u16>) -> tokio::runtime::Builder {
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = worker_threads {
        rt.worker_threads(usize::from(n));
    }
    rt.enable_all();
    rt
}

/// Everything `keyledger serve` needs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// Accept `?apikey=`.
    pub allow_query_key: bool,
    /// The first admin key on an empty log (a well-formed keyledger key); generated if `None`.
    pub bootstrap_key: Option<String>,
    pub signing_key_file: Option<PathBuf>,
    /// Publish every event to this NATS server's JetStream (`KEYLEDGER` stream).
    pub nats_url: Option<String>,
    /// Serve HTTPS with this PEM certificate chain and private key.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Requests per second each API key may make; `None`: unlimited.
    pub key_rate_limit: Option<u32>,
    /// Most keys (not revoked) per account; `None`: unlimited.
    pub max_keys_per_account: Option<usize>,
    /// Reverse proxies whose `X-Forwarded-For` names the client.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Connection-level limits (header read timeout, connection cap).
    pub limits: Limits,
    /// Longest time to receive a request and produce its response head (else 408).
    pub request_timeout: std::time::Duration,
}

impl ServeOptions {
    /// Loopback on an ephemeral port, everything else off.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            allow_query_key: false,
            bootstrap_key: None,
            signing_key_file: None,
            nats_url: None,
            tls: None,
            key_rate_limit: None,
            max_keys_per_account: None,
            trusted_proxies: Vec::new(),
            limits: Limits::default(),
            request_timeout: ServerConfig::default().request_timeout,
        }
    }
}

/// A running server.
pub struct Server {
    /// The bound address (the real port when asked for port 0).
    pub addr: SocketAddr,
    /// The generated bootstrap admin key, only on the first start of an empty log.
    pub bootstrap_secret: Option<String>,
    service: Service,
    stop: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
    scheduler: JoinHandle<()>,
    publisher: Option<JoinHandle<()>>,
}

impl Server {
    pub fn service(&self) -> &Service {
        &self.service
    }

    /// Stops accepting connections, drains in-flight requests, lets the writer finish, and
    /// persists `last_used_at`.
    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        match self.task.await {
            Ok(Err(e)) => tracing::error!(error = %e, "HTTP server failed"),
            Err(e) => tracing::error!(error = %e, "HTTP server task failed"),
            Ok(Ok(())) => {}
        }
        self.scheduler.abort();
        let _ = self.scheduler.await;
        if let Some(p) = self.publisher {
            let _ = p.await;
        }
        let service = self.service;
        let _ = tokio::task::spawn_blocking(move || service.shutdown()).await;
    }
}

/// Opens the data dir, starts the service and serves HTTP on `opts.listen`.
pub async fn start(opts: ServeOptions) -> anyhow::Result<Server> {
    let metrics = Arc::new(Metrics::default());
    let mut config = Config::new(&opts.data_dir);
    config.signing_key_file = opts.signing_key_file.clone();
    config.max_keys_per_account = opts.max_keys_per_account;
    let observer = metrics.clone();
    config.on_batch = Some(Arc::new(move |s| observer.batch(s)));
    // A new data dir's bootstrap key is checked before anything is created, so that a typo
    // leaves no empty log and signing key behind (`start_with` checks it again on any log).
    if let Some(k) = &opts.bootstrap_key
        && !config.log_path().exists()
    {
        bootstrap_preset(k)?;
    }
    let data_dir = opts.data_dir.clone();
    let service = tokio::task::spawn_blocking(move || Service::open(config))
        .await
        .context("opening the data dir")?
        .with_context(|| format!("opening data dir {}", data_dir.display()))?;
    start_with(service, metrics, opts).await
}

fn bootstrap_preset(key: &str) -> anyhow::Result<Secret> {
    Secret::parse(key.trim()).map_err(|e| {
        anyhow::anyhow!(
            "--bootstrap-key (KEYLEDGER_BOOTSTRAP_KEY) is not a well-formed keyledger key: {e}"
        )
    })
}

/// Serves an already opened service (e.g. one on a fault-injecting storage backend in tests).
/// `opts.data_dir`, `opts.signing_key_file` and `opts.max_keys_per_account` are not used (they
/// are the service's [`Config`]).
pub async fn start_with(
    service: Service,
    metrics: Arc<Metrics>,
    opts: ServeOptions,
) -> anyhow::Result<Server> {
    let front = async {
        // Only an empty log takes the preset: once it has events, a stale or mistyped value
        // left in the environment must not keep the service from starting.
        let preset = opts
            .bootstrap_key
            .as_deref()
            .filter(|_| service.head() == 0)
            .map(bootstrap_preset)
            .transpose()?;
        // Everything that can still fail comes before the bootstrap key: a start that failed
        // after creating it would leave a log whose only admin key was never shown.
        let tls = opts
            .tls
            .as_ref()
            .map(|(cert, key)| keyledger_server::load_tls(cert, key))
            .transpose()?;
        let listener = tokio::net::TcpListener::bind(opts.listen)
            .await
            .with_context(|| format!("binding {}", opts.listen))?;
        let addr = listener.local_addr()?;
        let bootstrap_secret = service
            .bootstrap(preset)
            .await
            .context("creating the bootstrap admin key")?
            .map(|s| s.expose().to_owned());
        anyhow::Ok((tls, listener, addr, bootstrap_secret))
    };
    let (tls, listener, addr, bootstrap_secret) = match front.await {
        Ok(front) => front,
        Err(e) => {
            // Closes the log, so that the data dir can be opened again in this process.
            let service = service.clone();
            let _ = tokio::task::spawn_blocking(move || service.shutdown()).await;
            return Err(e);
        }
    };
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let shutdown_watch = shutdown_rx.clone();
    if opts.nats_url.is_some() {
        let m = metrics.clone();
        service
            .outbox()
            .observe_acks(Arc::new(move |_, occurred_ms| {
                let age_ms = keyledger_service::now().millis() - occurred_ms;
                m.published(age_ms as f64 / 1000.0);
            }));
    }
    let app = router(
        service.clone(),
        ServerConfig {
            allow_query_key: opts.allow_query_key,
            key_rate_limit: opts.key_rate_limit,
            trusted_proxies: opts.trusted_proxies.clone(),
            request_timeout: opts.request_timeout,
            ..ServerConfig::default()
        },
        metrics,
        shutdown_rx,
    );
    let (stop, stopped) = oneshot::channel::<()>();
    let shutdown = async move {
        let _ = stopped.await;
        let _ = shutdown_tx.send(true);
    };
    let task = tokio::spawn(serve(listener, app, shutdown, opts.limits.clone(), tls));
    let scheduler = service.spawn_scheduler(std::time::Duration::from_secs(1));
    let publisher = opts.nats_url.as_ref().map(|url| {
        keyledger_nats::spawn_publisher(
            service.clone(),
            keyledger_nats::PublisherConfig::new(url.clone()),
            shutdown_watch.clone(),
        )
    });
    tracing::info!(%addr, data_dir = %opts.data_dir.display(), keys = service.key_count(), head = service.head(), "keyledger serving");
    Ok(Server {
        addr,
        bootstrap_secret,
        service,
        stop,
        task,
        scheduler,
        publisher,
    })
}
