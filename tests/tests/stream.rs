//! `GET /v1/events/stream`: every event once, in order, from any `after` or `Last-Event-ID`,
//! then live events as they are committed.

use keyledger_e2e::*;
use reqwest::Method;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// A Server-Sent Events reader over a streaming response.
struct Sse {
    resp: reqwest::Response,
    buf: String,
}

#[derive(Debug)]
struct Frame {
    id: u64,
    event: String,
    data: Value,
}

impl Sse {
    async fn open(h: &Harness, query: &str, last_event_id: Option<u64>) -> Self {
        Self::open_as(h, &h.admin, query, last_event_id).await
    }

    async fn open_as(h: &Harness, key: &str, query: &str, last_event_id: Option<u64>) -> Self {
        let mut req = h
            .request(Method::GET, &format!("/v1/events/stream{query}"))
            .bearer_auth(key);
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id.to_string());
        }
        let resp = req.send().await.expect("stream opens");
        assert_eq!(resp.status(), 200);
        let ct = resp.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(ct.starts_with("text/event-stream"), "{ct}");
        Self {
            resp,
            buf: String::new(),
        }
    }

    /// The next event frame (heartbeat comments are skipped); panics after 10 s.
    async fn next(&mut self) -> Frame {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let (mut id, mut event, mut data) = (None, String::new(), String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = v.trim().parse().ok();
                    } else if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if let Some(id) = id {
                    return Frame {
                        id,
                        event,
                        data: serde_json::from_str(&data).expect("data is JSON"),
                    };
                }
                continue;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let chunk = tokio::time::timeout(left, self.resp.chunk())
                .await
                .expect("an event within 10 s")
                .expect("stream readable")
                .expect("stream still open");
            self.buf.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }
}

impl Sse {
    /// The event frames (ids) the server sends until it ends the stream; panics if it is still
    /// open after 10 s.
    async fn ids_until_closed(mut self) -> Vec<u64> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let chunk = tokio::time::timeout(left, self.resp.chunk())
                .await
                .expect("the stream ends within 10 s")
                .expect("stream readable");
            match chunk {
                Some(c) => self.buf.push_str(std::str::from_utf8(&c).unwrap()),
                None => break,
            }
        }
        self.buf
            .lines()
            .filter_map(|l| l.strip_prefix("id:")?.trim().parse().ok())
            .collect()
    }
}

/// A task of its own that creates keys with these names one after the other, each a 201.
fn spawn_creates(h: &Harness, names: Vec<String>) -> tokio::task::JoinHandle<()> {
    let (client, url, admin) = (reqwest::Client::new(), h.url("/v1/keys"), h.admin.clone());
    tokio::spawn(async move {
        for name in names {
            let r = client
                .post(&url)
                .bearer_auth(&admin)
                .json(&json!({ "name": name }))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201);
        }
    })
}

/// Creates keys and changes them: returns the log's head seq.
async fn history(h: &Harness, keys: usize) -> u64 {
    for i in 0..keys {
        let (k, _) = h.create_key(json!({ "name": format!("k{i}") })).await;
        let path = format!("/v1/keys/{}", id_of(&k));
        h.patch(&path, &h.admin, &json!({ "role": "member" }))
            .await
            .expect(200);
    }
    let page = h
        .get("/v1/events?limit=1000", &h.admin)
        .await
        .expect(200)
        .json();
    page["next_after"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_delivers_every_event_once_in_order_from_any_after() {
    let h = Harness::start().await;
    let mut head = history(&h, 5).await; // bootstrap + 10
    for after in [0, 1, 4, head - 1, head] {
        let mut s = Sse::open(&h, &format!("?after={after}"), None).await;
        for expected in after + 1..=head {
            let f = s.next().await;
            assert_eq!(f.id, expected, "from after={after}");
            assert_eq!(f.data["seq"], expected);
            assert_eq!(f.event, f.data["type"].as_str().unwrap());
        }
        // Then live: the new event arrives next, with no duplicate before it.
        let (k, _) = h
            .create_key(json!({ "name": format!("live{after}") }))
            .await;
        head += 1;
        let f = s.next().await;
        assert_eq!(f.id, head, "after={after}");
        assert_eq!(f.data["key_id"], k["id"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_resumes_from_last_event_id() {
    let h = Harness::start().await;
    let head = history(&h, 3).await;
    let mut s = Sse::open(&h, "", Some(head - 2)).await;
    assert_eq!(s.next().await.id, head - 1);
    assert_eq!(s.next().await.id, head);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_to_a_stream_opened_with_after_resumes_from_last_event_id() {
    // An EventSource reconnects to the same URL, adding `Last-Event-ID`: it must not be sent
    // again what it already has.
    let h = Harness::start().await;
    let head = history(&h, 3).await;
    let mut s = Sse::open(&h, "?after=0", Some(head - 1)).await;
    assert_eq!(s.next().await.id, head);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_keeps_order_while_writes_race_it() {
    let h = Harness::start().await;
    let mut s = Sse::open(&h, "?after=0", None).await;
    let writes = 60;
    let creates: Vec<_> = (0..writes)
        .map(|i| spawn_creates(&h, vec![format!("race{i}")]))
        .collect();
    for expected in 1..=writes + 1 {
        assert_eq!(s.next().await.id, expected as u64);
    }
    for c in creates {
        c.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_filters_by_type_and_needs_events_read() {
    let h = Harness::start().await;
    let head = history(&h, 2).await;
    let mut s = Sse::open(&h, "?type=key.updated", None).await;
    let first = s.next().await;
    assert_eq!(first.event, "key.updated");
    assert_eq!(s.next().await.event, "key.updated");
    assert!(head >= 5);
    let (_, secret) = h
        .create_key(json!({ "name": "r", "scopes": ["keys:read"] }))
        .await;
    h.get("/v1/events/stream", &secret)
        .await
        .expect_error(403, "forbidden");
    h.get("/v1/events/stream?type=key.nope", &h.admin)
        .await
        .expect_error(400, "validation_failed");
}

/// More events than the live broadcast holds (8,192) plus what socket buffers absorb, written
/// while a client with a small receive buffer has its stream open but reads nothing: every
/// write succeeds, and the client, when it reads at last, gets every event once and in order
/// (its stream fell behind the broadcast and went back to the log).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_stream_reader_neither_blocks_writers_nor_loses_events() {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let h = Harness::start().await;
    let addr: std::net::SocketAddr = h.url("").trim_start_matches("http://").parse().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    let request = format!(
        "GET /v1/events/stream?after=0 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
        h.admin
    );
    stream.write_all(request.as_bytes()).await.unwrap();

    let (tasks, per_task) = (32, 500);
    let writers: Vec<_> = (0..tasks)
        .map(|t| spawn_creates(&h, (0..per_task).map(|i| format!("w{t}-{i}")).collect()))
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    let head = (tasks * per_task + 1) as u64;

    // Now read: the response head, then the chunked body, collecting the `id:` lines.
    let mut r = BufReader::new(stream);
    let mut line = String::new();
    loop {
        line.clear();
        r.read_line(&mut line).await.unwrap();
        if line == "\r\n" {
            break;
        }
    }
    let (mut body, mut next) = (String::new(), 1u64);
    while next <= head {
        line.clear();
        r.read_line(&mut line).await.unwrap();
        let size = usize::from_str_radix(line.trim(), 16).expect("a chunk size");
        let mut chunk = vec![0; size + 2];
        r.read_exact(&mut chunk).await.unwrap();
        body.push_str(std::str::from_utf8(&chunk[..size]).unwrap());
        while let Some(end) = body.find('\n') {
            let l: String = body.drain(..=end).collect();
            if let Some(id) = l.strip_prefix("id:") {
                assert_eq!(
                    id.trim().parse::<u64>().unwrap(),
                    next,
                    "every event once, in order"
                );
                next += 1;
            }
        }
    }
}

/// A stream is an authenticated call that lasts: once its key is revoked, disabled, loses
/// `events:read` or the client's address, the stream ends, without that change or anything
/// after it; a rename of the key does not end it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_ends_when_its_key_stops_authenticating() {
    let h = Harness::start().await;
    let changes = [
        (Method::DELETE, None),
        (Method::PATCH, Some(json!({ "enabled": false }))),
        (Method::PATCH, Some(json!({ "scopes": ["keys:read"] }))),
        (
            Method::PATCH,
            Some(json!({ "allowed_ips": ["192.0.2.0/24"] })),
        ),
    ];
    for (method, body) in changes {
        let (reader, secret) = h
            .create_key(json!({ "name": "reader", "account": "acme", "scopes": ["events:read"] }))
            .await;
        let head = h.log_head().await;
        let mut s = Sse::open_as(&h, &secret, &format!("?after={head}"), None).await;
        h.create_key(json!({ "name": "seen", "account": "acme" }))
            .await;
        assert_eq!(s.next().await.id, head + 1);
        // A change that leaves its access as it was does not end it, and is sent.
        let path = format!("/v1/keys/{}", id_of(&reader));
        h.patch(&path, &h.admin, &json!({ "name": "reader, renamed" }))
            .await
            .expect(200);
        assert_eq!(s.next().await.id, head + 2);
        h.send(method.clone(), &path, &h.admin, body.as_ref())
            .await
            .expect(if method == Method::DELETE { 204 } else { 200 });
        h.create_key(json!({ "name": "unseen", "account": "acme" }))
            .await;
        assert_eq!(
            s.ids_until_closed().await,
            Vec::<u64>::new(),
            "{method} {body:?}"
        );
    }
}
