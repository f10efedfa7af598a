//! # keyledger-e2e
//!
//! Black-box end-to-end tests of keyledger: each test starts the real service in-process
//! ([`keyledger::start`]) on a fresh temporary data dir and talks to it over real HTTP on
//! loopback, as any client would. Nothing here reaches into the server's internals.
//!
//! - [`Harness`]: one running server with a known admin key, request helpers, and
//!   [`Harness::restart`] on the same data dir.
//! - [`Resp`]: a buffered response with assertion helpers for status codes and the error
//!   envelope `{"error": {"code", "message", "request_id"}}`.
//! - [`eventually`]: polls a condition until a deadline (write-behind `last_used_at`, expiries,
//!   grace periods), so no test asserts on timing.
//!
//! The test files under `tests/` are grouped by area: `seeds.rs` walks every operation of the
//! four seed APIs, `auth.rs`, `keys.rs`, `list.rs`, `verify.rs`, `isolation.rs`, `restart.rs`,
//! `events.rs`, `stream.rs` (SSE), `nats.rs` (JetStream, with a real nats-server) and `ops.rs`.

pub mod nats;

use keyledger::ServeOptions;
use keyledger_core::{Secret, Timestamp};
use reqwest::Method;
use reqwest::header::{CONTENT_TYPE, HeaderMap};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use serde_json::{Value, json};

/// A well-formed keyledger key (prefix `kl`) built from a fixed byte; distinct `n` give
/// distinct keys. Used as the bootstrap admin key and as "a key the server never issued".
pub fn well_formed_key(n: u8) -> String {
    Secret::generate("kl", &[n; 32]).expose().to_string()
}

/// The admin key every default [`Harness`] is bootstrapped with.
pub fn admin_key() -> String {
    well_formed_key(7)
}

/// RFC 3339 (UTC, milliseconds) for now plus `secs` seconds (negative: the past).
pub fn rfc3339_in(secs: i64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64;
    Timestamp::from_millis(now + secs * 1000).to_rfc3339()
}

/// How a request presents its API key.
#[derive(Debug, Clone, Copy)]
pub enum Auth<'a> {
    None,
    Bearer(&'a str),
    XApiKey(&'a str),
    /// The `APIKEY` header of seed 000.
    ApiKeyHeader(&'a str),
    /// `?apikey=` (seed 002), honoured only with `allow_query_key`.
    Query(&'a str),
}

/// How a server is started; [`Harness::restart`] reuses it.
#[derive(Debug, Clone)]
pub struct Config {
    pub allow_query_key: bool,
    /// `None`: let the server generate the admin key on first start.
    pub bootstrap_key: Option<String>,
    /// Publish events to this NATS server (see [`nats::NatsServer`]).
    pub nats_url: Option<String>,
    /// Requests per second per API key.
    pub key_rate_limit: Option<u32>,
    /// Keys (not revoked) per account.
    pub max_keys_per_account: Option<usize>,
    /// A client must send its request head within this time.
    pub header_read_timeout: Option<Duration>,
    /// A whole request must be answered within this time (else 408).
    pub request_timeout: Option<Duration>,
    /// Connections one address may hold open.
    pub max_connections_per_ip: Option<usize>,
    /// Proxies whose `X-Forwarded-For` names the client.
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            allow_query_key: false,
            bootstrap_key: Some(admin_key()),
            nats_url: None,
            key_rate_limit: None,
            max_keys_per_account: None,
            header_read_timeout: None,
            request_timeout: None,
            max_connections_per_ip: None,
            trusted_proxies: Vec::new(),
        }
    }
}

/// One running keyledger on its own temporary data dir.
pub struct Harness {
    dir: tempfile::TempDir,
    config: Config,
    server: Option<keyledger::Server>,
    /// Where [`Harness::boot`] listens: an ephemeral loopback port unless a test keeps one.
    listen: std::net::SocketAddr,
    client: reqwest::Client,
    /// `http://127.0.0.1:<port>`; changes on restart.
    pub base: String,
    /// An admin key (`scopes: ["admin"]`) valid on this server.
    pub admin: String,
    /// What the last start reported as a generated bootstrap secret.
    pub bootstrap_secret: Option<String>,
}

impl Harness {
    /// A server bootstrapped with [`admin_key`].
    pub async fn start() -> Self {
        Self::start_with(Config::default()).await
    }

    /// A server bootstrapped with [`admin_key`] that publishes to this NATS server.
    pub async fn start_publishing_to(nats: &nats::NatsServer) -> Self {
        Self::start_with(Config {
            nats_url: Some(nats.url()),
            ..Config::default()
        })
        .await
    }

    pub async fn start_with(config: Config) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("http client");
        let mut h = Self {
            dir,
            config,
            server: None,
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            client,
            base: String::new(),
            admin: String::new(),
            bootstrap_secret: None,
        };
        h.boot().await;
        h.admin = match (&h.config.bootstrap_key, &h.bootstrap_secret) {
            (Some(k), _) => k.clone(),
            (None, Some(generated)) => generated.clone(),
            (None, None) => panic!("first start without bootstrap_key generated no admin secret"),
        };
        h
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    async fn boot(&mut self) {
        let mut opts = ServeOptions::new(self.dir.path());
        opts.listen = self.listen;
        opts.allow_query_key = self.config.allow_query_key;
        opts.bootstrap_key = self.config.bootstrap_key.clone();
        opts.nats_url = self.config.nats_url.clone();
        opts.key_rate_limit = self.config.key_rate_limit;
        opts.max_keys_per_account = self.config.max_keys_per_account;
        opts.trusted_proxies = self.config.trusted_proxies.clone();
        if let Some(t) = self.config.header_read_timeout {
            opts.limits.header_read_timeout = t;
        }
        if let Some(t) = self.config.request_timeout {
            opts.request_timeout = t;
        }
        if let Some(n) = self.config.max_connections_per_ip {
            opts.limits.max_connections_per_ip = n;
        }
        let server = keyledger::start(opts).await.expect("keyledger starts");
        self.base = format!("http://{}", server.addr);
        self.bootstrap_secret = server.bootstrap_secret.clone();
        self.server = Some(server);
    }

    /// Graceful shutdown, then a fresh start on the same data dir and settings.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.boot().await;
    }

    /// As [`Harness::restart`], listening on the same address again, so that clients that
    /// reconnect to [`Harness::base`] find the new server.
    pub async fn restart_on_the_same_address(&mut self) {
        let addr = self.base.strip_prefix("http://").expect("http base");
        self.listen = addr.parse().expect("socket address");
        self.restart().await;
    }

    /// Stops the service, rotates its signing key as `keyledger signing-key rotate` does, and
    /// starts it again on the same address: later events carry a new signer.
    pub async fn rotate_the_signing_key(&mut self) {
        self.stop().await;
        keyledger_store::SigningKeys::rotate(
            &self.data_dir().join("signing-keys.json"),
            keyledger_service::now(),
        )
        .expect("rotate the signing key");
        self.restart_on_the_same_address().await;
    }

    /// Graceful shutdown (flushes `last_used_at`, closes the log). Idempotent.
    pub async fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
    }

    /// The log's last seq, as `/readyz` reports it.
    pub async fn log_head(&self) -> u64 {
        self.get("/readyz", &self.admin).await.expect(200).json()["log_head"]
            .as_u64()
            .expect("log_head")
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// A raw request builder, for cases the helpers do not cover (odd bodies, headers).
    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.client.request(method, self.url(path))
    }

    /// Sends a request presenting `auth`, with an optional JSON body.
    pub async fn send_auth(
        &self,
        method: Method,
        path: &str,
        auth: Auth<'_>,
        body: Option<&Value>,
    ) -> Resp {
        let mut rb = self.request(method, path);
        rb = match auth {
            Auth::None => rb,
            Auth::Bearer(k) => rb.bearer_auth(k),
            Auth::XApiKey(k) => rb.header("X-API-Key", k),
            Auth::ApiKeyHeader(k) => rb.header("APIKEY", k),
            Auth::Query(k) => rb.query(&[("apikey", k)]),
        };
        if let Some(b) = body {
            rb = rb.json(b);
        }
        Resp::from(rb.send().await.expect("request reaches the server")).await
    }

    /// Sends with `Authorization: Bearer <key>`.
    pub async fn send(&self, method: Method, path: &str, key: &str, body: Option<&Value>) -> Resp {
        self.send_auth(method, path, Auth::Bearer(key), body).await
    }

    /// Sends `body` as written, as `application/json`, with `Authorization: Bearer <key>`: for
    /// JSON a `Value` cannot hold (integer literals beyond 64 bits, duplicate keys).
    pub async fn send_text(&self, method: Method, path: &str, key: &str, body: &str) -> Resp {
        let json = [("content-type", "application/json")];
        self.send_raw(method, path, key, &json, body.as_bytes().to_vec())
            .await
    }

    /// Sends `body` as it is, with these headers and `Authorization: Bearer <key>`: for bodies
    /// and headers the other helpers do not send (other media types, encodings, broken JSON).
    pub async fn send_raw(
        &self,
        method: Method,
        path: &str,
        key: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Resp {
        let mut rb = self.request(method, path).bearer_auth(key).body(body);
        for (name, value) in headers {
            rb = rb.header(*name, *value);
        }
        Resp::from(rb.send().await.expect("request reaches the server")).await
    }

    pub async fn get(&self, path: &str, key: &str) -> Resp {
        self.send(Method::GET, path, key, None).await
    }

    pub async fn post(&self, path: &str, key: &str, body: &Value) -> Resp {
        self.send(Method::POST, path, key, Some(body)).await
    }

    pub async fn patch(&self, path: &str, key: &str, body: &Value) -> Resp {
        self.send(Method::PATCH, path, key, Some(body)).await
    }

    pub async fn put(&self, path: &str, key: &str, body: &Value) -> Resp {
        self.send(Method::PUT, path, key, Some(body)).await
    }

    pub async fn delete(&self, path: &str, key: &str) -> Resp {
        self.send(Method::DELETE, path, key, None).await
    }

    /// Creates a key as admin; returns `(key resource, secret)`.
    pub async fn create_key(&self, body: Value) -> (Value, String) {
        self.create_key_as(&self.admin.clone(), body).await
    }

    /// Creates a key as `caller`, expecting 201.
    pub async fn create_key_as(&self, caller: &str, body: Value) -> (Value, String) {
        let v = self
            .post("/v1/keys", caller, &body)
            .await
            .expect(201)
            .json();
        let secret = v["secret"]
            .as_str()
            .expect("create returns the secret")
            .to_string();
        (v["key"].clone(), secret)
    }

    /// GET /v1/keys/{id} as admin, expecting 200.
    pub async fn get_key(&self, id: &str) -> Value {
        self.get(&format!("/v1/keys/{id}"), &self.admin)
            .await
            .expect(200)
            .json()
    }

    /// POST /v1/verify as admin with just the key; returns the verify result.
    pub async fn verify(&self, secret: &str) -> Value {
        self.verify_body(&json!({ "key": secret })).await
    }

    /// POST /v1/verify as admin with a full body, expecting 200.
    pub async fn verify_body(&self, body: &Value) -> Value {
        self.post("/v1/verify", &self.admin, body)
            .await
            .expect(200)
            .json()
    }

    /// The `code` of verifying `secret`.
    pub async fn verify_code(&self, secret: &str) -> String {
        self.verify(secret).await["code"]
            .as_str()
            .expect("verify has a code")
            .to_string()
    }
}

/// A fully buffered HTTP response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
}

impl Resp {
    pub async fn from(r: reqwest::Response) -> Self {
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let body = r.text().await.expect("response body");
        Self {
            status,
            headers,
            body,
        }
    }

    /// Asserts the status, showing the body when it differs.
    #[track_caller]
    pub fn expect(self, status: u16) -> Self {
        assert_eq!(
            self.status, status,
            "expected HTTP {status}, got {} with body: {}",
            self.status, self.body
        );
        self
    }

    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("ASCII header").to_string())
    }

    pub fn content_type(&self) -> String {
        self.header(CONTENT_TYPE.as_str()).unwrap_or_default()
    }

    /// Asserts an error response: the status, the envelope and its code; returns the `error`
    /// object (`code`, `message`, `request_id`).
    #[track_caller]
    pub fn expect_error(self, status: u16, code: &str) -> Value {
        let this = self.expect(status);
        let v = this.json();
        let err = &v["error"];
        assert!(err.is_object(), "no error envelope: {}", this.body);
        assert_eq!(err["code"], code, "error code in {}", this.body);
        assert!(
            err["message"].as_str().is_some_and(|m| !m.is_empty()),
            "error without message: {}",
            this.body
        );
        assert!(
            err["request_id"].as_str().is_some_and(|m| !m.is_empty()),
            "error without request_id: {}",
            this.body
        );
        err.clone()
    }

    /// Asserts a 400 `validation_failed` whose message starts with `field`.
    #[track_caller]
    pub fn expect_invalid_field(self, field: &str) -> Value {
        let err = self.expect_error(400, "validation_failed");
        let msg = err["message"].as_str().unwrap_or_default();
        assert!(
            msg.starts_with(field),
            "message should start with `{field}`: {msg}"
        );
        err
    }

    /// Asserts that `needle` (e.g. a plaintext secret) does not occur in the body.
    #[track_caller]
    pub fn assert_absent(&self, needle: &str) {
        assert!(
            !self.body.contains(needle),
            "response leaks {needle:?}: {}",
            self.body
        );
    }
}

/// Polls `f` until it returns `Some`, or panics after `timeout` naming `what`. For
/// eventually-consistent effects (write-behind `last_used_at`, expiry, grace periods); it
/// asserts the outcome, never the time it took.
pub async fn eventually<T>(
    what: &str,
    timeout: Duration,
    mut f: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// The `id` of a key resource.
#[track_caller]
pub fn id_of(key: &Value) -> String {
    key["id"].as_str().expect("key has an id").to_string()
}

/// Every field a key resource has (SPEC §2), secrets excluded.
pub const KEY_FIELDS: &[&str] = &[
    "id",
    "name",
    "account",
    "owner",
    "role",
    "scopes",
    "allowed_ips",
    "enabled",
    "expires_at",
    "metadata",
    "hint",
    "created_at",
    "updated_at",
    "last_used_at",
    "rotated_at",
    "version",
];

/// Asserts that `key` is a key resource: all fields present, no secret-bearing field.
#[track_caller]
pub fn assert_key_shape(key: &Value) {
    let obj = key
        .as_object()
        .unwrap_or_else(|| panic!("key is not an object: {key}"));
    for f in KEY_FIELDS {
        assert!(obj.contains_key(*f), "key resource lacks `{f}`: {key}");
    }
    for forbidden in ["secret", "secret_hash", "key", "token", "hash"] {
        assert!(
            !obj.contains_key(forbidden),
            "key resource has `{forbidden}`: {key}"
        );
    }
}
