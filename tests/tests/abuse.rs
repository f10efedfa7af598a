//! Hostile clients: brute-forcing keys, flooding with one key, slow-loris connections, and
//! malformed bodies are refused without harming other clients.

use keyledger_e2e::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_failed_authentication_from_one_address_gets_429_with_retry_after() {
    let h = Harness::start().await;
    let wrong = well_formed_key(99);
    let mut limited = None;
    for i in 0..40 {
        let r = h.get("/v1/me", &wrong).await;
        match r.status {
            401 => continue,
            429 => {
                limited = Some((i, r));
                break;
            }
            s => panic!("unexpected status {s}"),
        }
    }
    let (attempt, r) = limited.expect("bad keys are limited within 40 attempts");
    assert!(
        attempt >= 10,
        "a few mistakes are forgiven (limited at attempt {attempt})"
    );
    let retry: u64 = r
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry));
    r.expect_error(429, "rate_limited");
    // While the address is limited, even a valid key from it waits.
    h.get("/v1/me", &h.admin)
        .await
        .expect_error(429, "rate_limited");
    // Verification of presented keys (gateways) is not authentication and is not limited.
    let mut v = h
        .request(reqwest::Method::GET, "/healthz")
        .send()
        .await
        .unwrap();
    assert_eq!(v.status(), 200);
    v = h
        .request(reqwest::Method::GET, "/readyz")
        .send()
        .await
        .unwrap();
    assert_eq!(v.status(), 200);
}

/// `/v1/me` presenting `key` through a proxy that says the client is `client`.
async fn me_via(h: &Harness, key: &str, client: &str) -> u16 {
    h.request(reqwest::Method::GET, "/v1/me")
        .bearer_auth(key)
        .header("X-Forwarded-For", client)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Sends up to 40 bad keys, attempt `i` "from" `client(i)`, until answered 429; returns the
/// attempts that took.
async fn fail_until_limited(h: &Harness, client: impl Fn(usize) -> String) -> Option<usize> {
    let wrong = well_formed_key(98);
    for i in 0..40 {
        match me_via(h, &wrong, &client(i)).await {
            401 => continue,
            429 => return Some(i),
            s => panic!("unexpected status {s}"),
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_limits_and_allowed_ips_apply_to_the_forwarded_client() {
    let h = Harness::start_with(Config {
        trusted_proxies: vec!["127.0.0.1/32".parse().unwrap()],
        ..Config::default()
    })
    .await;
    assert!(
        fail_until_limited(&h, |_| "203.0.113.7".into())
            .await
            .is_some()
    );
    assert_eq!(me_via(&h, &h.admin, "203.0.113.7").await, 429);
    // Another client behind the same proxy is not locked out.
    assert_eq!(me_via(&h, &h.admin, "203.0.113.8").await, 200);

    let (_, secret) = h
        .create_key(serde_json::json!({"name": "office only", "allowed_ips": ["198.51.100.0/24"]}))
        .await;
    assert_eq!(me_via(&h, &secret, "198.51.100.20").await, 200);
    assert_eq!(me_via(&h, &secret, "192.0.2.20").await, 401);
    assert_eq!(
        h.get("/v1/me", &secret).await.status,
        401,
        "the proxy itself is not allowed"
    );
    // A byte outside ASCII in the client's own part of the line, to which the proxy appended
    // the address it saw, must not make the server take the client for the proxy.
    let (_, internal) = h
        .create_key(
            serde_json::json!({"name": "proxy's network only", "allowed_ips": ["127.0.0.0/8"]}),
        )
        .await;
    let forged = reqwest::header::HeaderValue::from_bytes(b"\xff, 192.0.2.20").unwrap();
    let status = h
        .request(reqwest::Method::GET, "/v1/me")
        .bearer_auth(&internal)
        .header("X-Forwarded-For", forged)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_proxy_given_in_ipv4_mapped_form_matches_its_ipv4_peer() {
    // Options built in code skip the CLI's parser; the server canonicalizes them itself.
    let h = Harness::start_with(Config {
        trusted_proxies: vec!["::ffff:127.0.0.1/128".parse().unwrap()],
        ..Config::default()
    })
    .await;
    let (_, secret) = h
        .create_key(serde_json::json!({"name": "office only", "allowed_ips": ["198.51.100.0/24"]}))
        .await;
    assert_eq!(me_via(&h, &secret, "198.51.100.20").await, 200);
    assert_eq!(me_via(&h, &secret, "192.0.2.20").await, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_trusted_proxies_x_forwarded_for_is_ignored() {
    let h = Harness::start().await;
    // A brute-forcer cannot dodge the limit by naming a new client each time.
    let limited = fail_until_limited(&h, |i| format!("203.0.113.{i}")).await;
    assert!(
        limited.is_some(),
        "bad keys are limited by the peer address"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_key_rate_limit_answers_429_to_that_key_only() {
    let h = Harness::start_with(Config {
        key_rate_limit: Some(5),
        ..Config::default()
    })
    .await;
    let (_, other) = h
        .create_key(json!({ "name": "other", "scopes": ["keys:read"] }))
        .await;
    let mut statuses = Vec::new();
    for _ in 0..30 {
        statuses.push(h.get("/v1/me", &h.admin).await.status);
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    assert!(statuses.iter().take(5).all(|s| *s == 200), "{statuses:?}");
    h.get("/v1/me", &other).await.expect(200);
}

/// `--max-keys-per-account`: one account's creates stop at the limit (revoked keys do not
/// count, the admin is bound too, other accounts are not affected), across a restart, and
/// concurrent creates do not overshoot it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_at_its_key_limit_gets_409_until_a_key_is_revoked() {
    let mut h = Harness::start_with(Config {
        max_keys_per_account: Some(3),
        ..Config::default()
    })
    .await;
    let (_, acme) = h
        .create_key(json!({ "name": "acme ops", "account": "acme",
                            "scopes": ["keys:read", "keys:write"] }))
        .await;
    let bodies: Vec<Value> = (0..6).map(|i| json!({ "name": format!("k{i}") })).collect();
    let creates: Vec<_> = bodies
        .iter()
        .map(|b| h.post("/v1/keys", &acme, b))
        .collect();
    let statuses: Vec<u16> = futures_util::future::join_all(creates)
        .await
        .into_iter()
        .map(|r| r.status)
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        2,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 409).count(),
        4,
        "{statuses:?}"
    );

    let refused = h
        .post(
            "/v1/keys",
            &h.admin,
            &json!({ "name": "one more", "account": "acme" }),
        )
        .await;
    refused.assert_absent("\"secret\"");
    let e = refused.expect_error(409, "key_limit_reached");
    assert!(
        e["message"].as_str().unwrap().starts_with("account: acme"),
        "{e}"
    );
    let list = h
        .get("/v1/keys?account=acme", &h.admin)
        .await
        .expect(200)
        .json();
    assert_eq!(list["data"].as_array().unwrap().len(), 3);

    // Other accounts have their own count.
    h.create_key(json!({ "name": "globex svc", "account": "globex" }))
        .await;

    // A revoked key makes room; a restart keeps the count.
    let victim = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] != "acme ops")
        .unwrap();
    h.delete(&format!("/v1/keys/{}", id_of(victim)), &acme)
        .await
        .expect(204);
    h.restart().await;
    h.post("/v1/keys", &acme, &json!({ "name": "k after" }))
        .await
        .expect(201);
    h.post("/v1/keys", &acme, &json!({ "name": "k too many" }))
        .await
        .expect_error(409, "key_limit_reached");
}

fn raw(h: &Harness) -> TcpStream {
    let addr = h.base.strip_prefix("http://").unwrap();
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_length_beyond_the_body_limit_is_413_without_waiting_for_the_body() {
    // Were the server to wait for the 999,999 bytes that never come, it would answer 408 when
    // the request's time is up.
    let h = Harness::start_with(Config {
        request_timeout: Some(Duration::from_secs(2)),
        ..Config::default()
    })
    .await;
    let head = h.log_head().await;
    let mut s = raw(&h);
    let request = format!(
        "POST /v1/keys HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 999999\r\n\r\n{{\"name\":",
        h.admin
    );
    s.write_all(request.as_bytes()).unwrap();
    let mut answer = [0u8; 12];
    s.read_exact(&mut answer).unwrap();
    assert_eq!(&answer, b"HTTP/1.1 413");
    assert_eq!(h.log_head().await, head);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_loris_connections_are_cut_and_do_not_block_others() {
    let h = Harness::start_with(Config {
        header_read_timeout: Some(Duration::from_millis(800)),
        ..Config::default()
    })
    .await;
    let mut slow: Vec<TcpStream> = (0..50)
        .map(|_| {
            let mut s = raw(&h);
            s.write_all(b"GET /v1/me HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                .unwrap();
            s
        })
        .collect();
    // Others are served meanwhile (on fresh connections: the harness's pooled ones idle out
    // under this short timeout too).
    let fresh = || async {
        reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap()
            .get(h.url("/v1/me"))
            .bearer_auth(&h.admin)
            .send()
            .await
            .unwrap()
            .status()
    };
    assert_eq!(fresh().await, 200);
    for s in &mut slow {
        let mut buf = Vec::new();
        // The server closes the connection (possibly after a 408) once the head is overdue; a
        // connection it kept open would end this read with the socket's 10 s timeout instead.
        s.read_to_end(&mut buf)
            .expect("the server closed the slow connection");
        let text = String::from_utf8_lossy(&buf);
        assert!(buf.is_empty() || text.starts_with("HTTP/1.1 408"), "{text}");
    }
    assert_eq!(fresh().await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_take_every_connection_slot() {
    let h = Harness::start_with(Config {
        max_connections_per_ip: Some(8),
        ..Config::default()
    })
    .await;
    let held: Vec<TcpStream> = (0..8).map(|_| raw(&h)).collect();
    let mut extra = raw(&h);
    let mut buf = [0u8; 16];
    assert_eq!(
        extra.read(&mut buf).unwrap_or(0),
        0,
        "the ninth connection is closed at once"
    );
    drop(held);
    eventually("a slot to free up", Duration::from_secs(5), async || {
        let r = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap()
            .get(h.url("/healthz"))
            .send()
            .await
            .ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_bodies_get_clear_400s_and_lose_nothing() {
    let h = Harness::start().await;
    // A fresh connection per request: after refusing an oversized body the server closes the
    // connection without reading the rest, so a pooled one may be dead.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let send = |body: Vec<u8>| {
        client
            .post(h.url("/v1/keys"))
            .bearer_auth(&h.admin)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    // Deeply nested JSON: refused by the parser's depth limit, not by a stack overflow.
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let r = send(deep.into_bytes()).await.unwrap();
    assert_eq!(r.status(), 413, "100 KiB exceeds the body limit");
    let deep = format!(
        r#"{{"name":"x","metadata":{}{}}}"#,
        r#"{"a":"#.repeat(5000),
        "}".repeat(5000)
    );
    let r = send(deep.into_bytes()).await.unwrap();
    assert_eq!(r.status(), 400);
    // Not UTF-8.
    let r = send(vec![b'{', b'"', 0xff, 0xfe, b'"', b':', b'1', b'}'])
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_json");
    // Nothing was created by any of it.
    let list = h.get("/v1/keys", &h.admin).await.expect(200).json();
    assert_eq!(list["total"], 1);
}
