//! A real `nats-server` with JetStream for the tests and the load generator: its own free
//! loopback port and store dir, stopped (or killed) by its PID.

use futures_util::StreamExt;
use serde_json::Value;
use std::collections::HashMap;
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct NatsServer {
    child: Option<Child>,
    pub port: u16,
    store: tempfile::TempDir,
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl NatsServer {
    /// Starts one with its store in the system's temp dir; panics if it cannot (for tests).
    pub fn start() -> Self {
        Self::start_in(&std::env::temp_dir()).expect("nats-server on PATH (.ci/run installs it)")
    }

    /// Starts `nats-server -js` on a free loopback port, with its store in a fresh dir under
    /// `parent` (the load generator puts it on the disk it measures).
    pub fn start_in(parent: &Path) -> std::io::Result<Self> {
        let mut s = Self {
            child: None,
            port: free_port()?,
            store: tempfile::tempdir_in(parent)?,
        };
        s.spawn()?;
        Ok(s)
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) -> std::io::Result<()> {
        let child = Command::new("nats-server")
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(self.store.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if Instant::now() >= deadline {
                self.kill();
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "nats-server did not start within 10 s",
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// SIGKILL, as a crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again on the same port with the same store.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn().expect("nats-server restarts");
    }

    /// Starts again on the same port with an empty store: every stream is gone.
    pub fn restart_empty(&mut self) {
        self.kill();
        self.store = tempfile::tempdir_in(self.store.path().parent().expect("a parent"))
            .expect("a new store dir");
        self.spawn().expect("nats-server restarts");
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Deletes the `KEYLEDGER` stream (as an operator might), leaving the server running.
pub async fn delete_stream(url: &str) {
    let client = async_nats::connect(url).await.expect("connect to NATS");
    async_nats::jetstream::new(client)
        .delete_stream("KEYLEDGER")
        .await
        .expect("delete the stream");
}

/// A message of the `KEYLEDGER` stream.
#[derive(Debug, Clone)]
pub struct StreamMessage {
    pub stream_seq: u64,
    pub subject: String,
    pub headers: HashMap<String, String>,
    pub envelope: Value,
}

/// Reads the whole `KEYLEDGER` stream once it holds at least `count` messages (waits up to
/// `wait`), with a plain async-nats ordered consumer.
pub async fn read_stream(url: &str, count: usize, wait: Duration) -> Vec<StreamMessage> {
    use async_nats::jetstream::{self, consumer::pull};
    let client = async_nats::connect(url).await.expect("connect to NATS");
    let js = jetstream::new(client);
    let deadline = Instant::now() + wait;
    let mut stream = loop {
        match js.get_stream("KEYLEDGER").await {
            Ok(s) => break s,
            Err(e) => {
                assert!(Instant::now() < deadline, "no KEYLEDGER stream: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    loop {
        let n = stream.info().await.expect("stream info").state.messages as usize;
        if n >= count {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "stream holds {n} of {count} messages"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let total = stream.info().await.expect("stream info").state.messages as usize;
    let consumer = stream
        .create_consumer(pull::OrderedConfig::default())
        .await
        .expect("ordered consumer");
    let mut messages = consumer.messages().await.expect("messages");
    let mut out = Vec::with_capacity(total);
    while out.len() < total {
        let msg = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .expect("message within 10 s")
            .expect("stream open")
            .expect("message");
        let headers = msg
            .headers
            .iter()
            .flat_map(|h| h.iter())
            .map(|(k, v)| {
                (
                    k.to_string(),
                    v.first().map(|v| v.as_str().to_owned()).unwrap_or_default(),
                )
            })
            .collect();
        out.push(StreamMessage {
            stream_seq: msg.info().expect("info").stream_sequence,
            subject: msg.subject.to_string(),
            headers,
            envelope: serde_json::from_slice(&msg.payload).expect("JSON payload"),
        });
    }
    out
}
