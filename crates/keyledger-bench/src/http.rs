//! A minimal closed-loop HTTP/1.1 load generator on raw tokio TCP with keep-alive: each of N
//! connections sends a request, reads the whole response (`Content-Length` framing), records the
//! latency, and sends the next. Requests are prebuilt bytes, so the client's own cost per request
//! is two syscalls and a header scan: it leaves the cores to the server.

use crate::stats::{CpuTime, Latency};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Builds one raw request.
pub fn request(method: &str, path: &str, bearer: Option<&str>, body: Option<&str>) -> Vec<u8> {
    let mut r = format!("{method} {path} HTTP/1.1\r\nHost: bench\r\n");
    if let Some(k) = bearer {
        r.push_str(&format!("Authorization: Bearer {k}\r\n"));
    }
    if let Some(b) = body {
        r.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}",
            b.len()
        ));
    } else {
        r.push_str("\r\n");
    }
    r.into_bytes()
}

/// What one load run sends and expects.
#[derive(Clone)]
pub struct Load {
    /// Cycled through; connection `c` starts at variant `c`.
    pub requests: Arc<Vec<Vec<u8>>>,
    pub status: u16,
    /// A substring every response body must contain.
    pub expect: Option<&'static [u8]>,
    pub connections: usize,
    pub warmup: Duration,
    pub duration: Duration,
}

/// The outcome of a load run.
pub struct Outcome {
    pub ok: u64,
    /// Responses over the whole run, warm-up included (for CPU time per request).
    pub completed: u64,
    pub errors: u64,
    pub secs: f64,
    pub latency: Latency,
    /// CPU the whole process (server, load generator) used during the run.
    pub cpu: CpuTime,
}

impl Outcome {
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.secs
    }

    /// Adds another run's counts, time, latencies and CPU, as if both were one run.
    pub fn merge(&mut self, other: &Outcome) {
        self.ok += other.ok;
        self.completed += other.completed;
        self.errors += other.errors;
        self.secs += other.secs;
        self.latency.merge(&other.latency);
        self.cpu.add(other.cpu);
    }
}

struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn content_length(head: &[u8]) -> Option<usize> {
    let text = std::str::from_utf8(head).ok()?;
    text.split("\r\n").find_map(|line| {
        let (k, v) = line.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse().ok())?
    })
}

impl Conn {
    async fn open(addr: SocketAddr) -> std::io::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            buf: Vec::with_capacity(8192),
        })
    }

    /// Sends `req`, returns the status and whether the body contains `expect`.
    async fn roundtrip(
        &mut self,
        req: &[u8],
        expect: Option<&[u8]>,
    ) -> std::io::Result<(u16, bool)> {
        let (status, body) = self.exchange(req).await?;
        Ok((status, expect.is_none_or(|e| find(body, e).is_some())))
    }

    /// Sends `req`, returns the status and the body.
    async fn exchange(&mut self, req: &[u8]) -> std::io::Result<(u16, &[u8])> {
        self.stream.write_all(req).await?;
        self.buf.clear();
        loop {
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            let Some(end) = find(&self.buf, b"\r\n\r\n") else {
                continue;
            };
            let head = &self.buf[..end];
            let status = std::str::from_utf8(head.get(9..12).unwrap_or_default())
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let len = content_length(head).ok_or_else(|| {
                std::io::Error::other("response without Content-Length (chunked?)")
            })?;
            let total = end + 4 + len;
            while self.buf.len() < total {
                if self.stream.read_buf(&mut self.buf).await? == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
            }
            return Ok((status, &self.buf[end + 4..total]));
        }
    }
}

/// One `GET path` on a fresh connection: the status and the body.
pub async fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, Vec<u8>)> {
    let mut conn = Conn::open(addr).await?;
    let (status, body) = conn.exchange(&request("GET", path, None, None)).await?;
    Ok((status, body.to_vec()))
}

/// Runs `load` against `addr` on the current tokio runtime.
pub async fn run(addr: SocketAddr, load: Load) -> anyhow::Result<Outcome> {
    let cpu = CpuTime::now();
    let start = Instant::now() + Duration::from_millis(50);
    let measure_from = start + load.warmup;
    let end = measure_from + load.duration;
    let mut tasks = Vec::with_capacity(load.connections);
    for c in 0..load.connections {
        let load = load.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(addr).await?;
            let mut latency = Latency::new();
            let (mut ok, mut errors, mut completed) = (0u64, 0u64, 0u64);
            tokio::time::sleep_until(start.into()).await;
            let n = load.requests.len();
            let mut i = c % n;
            loop {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                let res = conn.roundtrip(&load.requests[i], load.expect).await;
                let t1 = Instant::now();
                i = (i + 1) % n;
                completed += u64::from(res.is_ok());
                let good = matches!(res, Ok((s, true)) if s == load.status);
                if res.is_err() {
                    conn = Conn::open(addr).await?;
                }
                if t0 < measure_from {
                    continue;
                }
                if good {
                    ok += 1;
                    latency.record(t1 - t0);
                } else {
                    errors += 1;
                }
            }
            anyhow::Ok((ok, errors, completed, latency))
        }));
    }
    let mut out = Outcome {
        ok: 0,
        completed: 0,
        errors: 0,
        secs: load.duration.as_secs_f64(),
        latency: Latency::new(),
        cpu: CpuTime::default(),
    };
    for t in tasks {
        let (ok, errors, completed, latency) = t.await??;
        out.ok += ok;
        out.completed += completed;
        out.errors += errors;
        out.latency.merge(&latency);
    }
    out.cpu = CpuTime::now().since(cpu);
    Ok(out)
}
