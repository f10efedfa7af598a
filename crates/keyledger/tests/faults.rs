//! Failing storage: with a disk that fails its writes, a command gets 503 with a clear error,
//! nothing half-written becomes visible, reads keep working, and the service recovers when
//! the fault clears.

use keyledger::{ServeOptions, start_with};
use keyledger_core::{Secret, Timestamp};
use keyledger_server::metrics::Metrics;
use keyledger_service::{Config, Service};
use keyledger_store::faults::{FaultSwitch, faulty_opener};
use keyledger_store::{Log, SigningKeys};
use serde_json::{Value, json};
use std::sync::Arc;

struct Client {
    http: reqwest::Client,
    base: String,
    key: String,
}

impl Client {
    async fn send(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.key);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn create(&self, name: &str) -> (u16, Value) {
        self.send(
            reqwest::Method::POST,
            "/v1/keys",
            Some(json!({ "name": name })),
        )
        .await
    }

    async fn total(&self) -> u64 {
        let (s, list) = self.send(reqwest::Method::GET, "/v1/keys", None).await;
        assert_eq!(s, 200);
        list["total"].as_u64().unwrap()
    }
}

async fn faulty_server(dir: &std::path::Path, switch: &FaultSwitch) -> (keyledger::Server, Client) {
    let config = Config::new(dir);
    let keys = SigningKeys::load_or_create(&config.signing_key_path(), Timestamp(0)).unwrap();
    let log = Log::open_with(faulty_opener(config.log_path(), switch.clone()), keys).unwrap();
    let service = Service::open_with_log(config, log).unwrap();
    let admin = Secret::generate("kl", &[1; 32]).expose().to_owned();
    let mut opts = ServeOptions::new(dir);
    opts.bootstrap_key = Some(admin.clone());
    let server = start_with(service, Arc::new(Metrics::default()), opts)
        .await
        .unwrap();
    let client = Client {
        http: reqwest::Client::new(),
        base: format!("http://{}", server.addr),
        key: admin,
    };
    (server, client)
}

fn assert_log_intact(dir: &std::path::Path, expected_events: u64) {
    let log = keyledger_service::open_log(&Config::new(dir)).unwrap();
    let verifier = log.signing_keys().verifier();
    assert_eq!(
        keyledger_store::audit::verify_log(&log, &verifier, |_| {}),
        Ok(expected_events)
    );
    let live = keyledger_projections::open_read_model(&log)
        .unwrap()
        .snapshot();
    assert_eq!(
        keyledger_projections::fold_log(&log).unwrap().snapshot(),
        live
    );
}

/// What the service logs at the default level (`info`), for the tests to read.
static LOG: Captured = Captured(std::sync::Mutex::new(Vec::new()));

struct Captured(std::sync::Mutex<Vec<u8>>);

impl Captured {
    /// Installs the capture as this test binary's subscriber (once).
    fn install(&'static self) {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            tracing_subscriber::fmt()
                .with_ansi(false)
                .with_env_filter("info")
                .with_writer(move || self)
                .init();
        });
    }

    fn lines(&self) -> Vec<String> {
        let bytes = self.0.lock().unwrap().clone();
        String::from_utf8_lossy(&bytes)
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl std::io::Write for &Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_disk_answers_503_writes_nothing_and_recovers() {
    LOG.install();
    let dir = tempfile::tempdir().unwrap();
    let switch = FaultSwitch::new();
    let (server, c) = faulty_server(dir.path(), &switch).await;
    let (s, a) = c.create("before").await;
    assert_eq!(s, 201);
    let a_secret = a["secret"].as_str().unwrap().to_owned();

    switch.fail_now();
    let (s, err) = c.create("during").await;
    assert_eq!(s, 503, "{err}");
    assert_eq!(err["error"]["code"], "unavailable");
    // The id a user would quote is in the log at the default level.
    let id = err["error"]["request_id"].as_str().unwrap();
    let line = LOG.lines().into_iter().find(|l| l.contains(id));
    let line = line.expect("a warning names the failed request's id");
    assert!(
        line.contains("WARN") && line.contains("status=503"),
        "{line}"
    );
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("nothing was written")
    );
    // Reads are served from memory and show nothing of the failed command.
    assert_eq!(c.total().await, 2);
    let (s, v) = c
        .send(
            reqwest::Method::POST,
            "/v1/verify",
            Some(json!({ "key": a_secret })),
        )
        .await;
    assert_eq!((s, v["code"].as_str()), (200, Some("VALID")));

    switch.heal();
    let (s, _) = c.create("after").await;
    assert_eq!(s, 201, "recovers once the fault clears");
    assert_eq!(c.total().await, 3);
    server.shutdown().await;
    assert_log_intact(dir.path(), 3);
}

/// The fault strikes in the middle of a commit, after some pages were written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fault_in_the_middle_of_a_commit_leaves_nothing_half_written() {
    let dir = tempfile::tempdir().unwrap();
    let switch = FaultSwitch::new();
    let (server, c) = faulty_server(dir.path(), &switch).await;
    let mut refused = 0;
    for budget in [0, 1, 2, 3, 5, 8] {
        switch.fail_after(budget);
        let (s, _) = c.create(&format!("during{budget}")).await;
        switch.heal();
        assert!(s == 201 || s == 503, "budget {budget}: status {s}");
        refused += usize::from(s == 503);
        let (s, _) = c.create(&format!("after{budget}")).await;
        assert_eq!(s, 201, "budget {budget}: recovers");
    }
    assert!(
        refused >= 3,
        "the injected faults hit commits ({refused} refused)"
    );
    let total = c.total().await;
    server.shutdown().await;
    assert_log_intact(dir.path(), total);
}
