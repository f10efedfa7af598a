//! Authentication (three headers, the opt-in query parameter, 401s), scopes (403s), GET /v1/me,
//! and the bootstrap admin key.

use keyledger_e2e::*;
use reqwest::Method;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_x_api_key_and_apikey_headers_all_authenticate() {
    let h = Harness::start().await;
    let (key, secret) = h.create_key(json!({ "name": "caller" })).await;
    for auth in [
        Auth::Bearer(&secret),
        Auth::XApiKey(&secret),
        Auth::ApiKeyHeader(&secret),
    ] {
        let me = h
            .send_auth(Method::GET, "/v1/me", auth, None)
            .await
            .expect(200)
            .json();
        assert_eq!(me["id"], key["id"], "{auth:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_key_is_401_unauthorized() {
    let h = Harness::start().await;
    for (method, path) in [
        (Method::GET, "/v1/me"),
        (Method::GET, "/v1/keys"),
        (Method::POST, "/v1/keys"),
        (Method::POST, "/v1/verify"),
        (Method::GET, "/v1/keys/01900000-0000-7000-8000-000000000000"),
    ] {
        let body = (method == Method::POST).then(|| json!({ "name": "x", "key": "y" }));
        h.send_auth(method.clone(), path, Auth::None, body.as_ref())
            .await
            .expect_error(401, "unauthorized");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_or_malformed_key_is_401_without_echoing_it() {
    let h = Harness::start().await;
    let unknown = well_formed_key(99);
    for bad in [unknown.as_str(), "kl_short", "not a key at all"] {
        for auth in [
            Auth::Bearer(bad),
            Auth::XApiKey(bad),
            Auth::ApiKeyHeader(bad),
        ] {
            let r = h.send_auth(Method::GET, "/v1/me", auth, None).await;
            r.assert_absent(bad);
            r.expect_error(401, "unauthorized");
        }
    }
    // An Authorization header that is not a Bearer token.
    let r = h
        .request(Method::GET, "/v1/me")
        .header("authorization", format!("Basic {}", h.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
}

/// The first key header present is the only one used, also when it holds nothing readable:
/// an empty `Bearer`, an empty `X-API-Key` or one that is not ASCII is a 401, even beside a
/// good `APIKEY`. An `Authorization` of another scheme (meant for a proxy) is no key header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_or_unreadable_key_header_is_refused_not_skipped() {
    let h = Harness::start().await;
    let unreadable = |v: &[u8]| reqwest::header::HeaderValue::from_bytes(v).unwrap();
    let tabbed = format!("Bearer\t{}", well_formed_key(97));
    let cases: [(&str, reqwest::header::HeaderValue, u16); 7] = [
        ("authorization", "Bearer".parse().unwrap(), 401),
        // A tab after the scheme is still Bearer (a lenient proxy would read it so).
        ("authorization", tabbed.parse().unwrap(), 401),
        ("authorization", "Bearer   ".parse().unwrap(), 401),
        ("authorization", unreadable(b"Bearer kl_\xe9"), 401),
        ("x-api-key", "".parse().unwrap(), 401),
        ("x-api-key", unreadable(b"kl_\xe9"), 401),
        ("authorization", "Basic dXNlcjpwdw==".parse().unwrap(), 200),
    ];
    for (name, value, status) in cases {
        let r = h
            .request(Method::GET, "/v1/me")
            .header(name, value.clone())
            .header("apikey", &h.admin)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), status, "{name}: {value:?}");
    }
}

/// Two values of one header are read differently by different proxies and frameworks (the
/// first, the last, or joined), so neither is acted on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_sent_twice_is_refused_not_read_either_way() {
    let h = Harness::start_with(Config {
        allow_query_key: true,
        ..Config::default()
    })
    .await;
    let (key, other) = h
        .create_key(json!({ "name": "other", "scopes": ["keys:read"] }))
        .await;
    let path = format!("/v1/keys/{}", id_of(&key));
    let twice = |name: &str, first: String, second: String| {
        let mut headers = reqwest::header::HeaderMap::new();
        let name = reqwest::header::HeaderName::from_bytes(name.as_bytes()).unwrap();
        headers.append(name.clone(), first.parse().unwrap());
        headers.append(name, second.parse().unwrap());
        headers
    };
    let bearer = |k: &str| format!("Bearer {k}");
    for (name, first, second) in [
        ("authorization", bearer(&h.admin), bearer(&other)),
        ("authorization", bearer(&other), bearer(&h.admin)),
        ("x-api-key", h.admin.clone(), other.clone()),
        ("apikey", other.clone(), h.admin.clone()),
    ] {
        let r = h
            .request(Method::GET, "/v1/me")
            .headers(twice(name, first, second))
            .send()
            .await
            .unwrap();
        let err = Resp::from(r).await.expect_error(400, "validation_failed");
        let message = err["message"].as_str().unwrap().to_lowercase();
        assert!(
            message.starts_with(&format!("{name}: sent more than once")),
            "{message}"
        );
    }
    // Authorization of another scheme is not a source: two of them are no repeat of one.
    let mut basic = twice("authorization", "Basic dTpw".into(), "Basic dTpx".into());
    basic.insert("x-api-key", other.parse().unwrap());
    let r = h.request(Method::GET, "/v1/me").headers(basic).send().await;
    let me = Resp::from(r.unwrap()).await.expect(200).json();
    assert_eq!(me["name"], "other");
    let mut mixed = twice("authorization", "Basic dTpw".into(), bearer(&h.admin));
    mixed.insert("x-api-key", other.parse().unwrap());
    let r = h.request(Method::GET, "/v1/me").headers(mixed).send().await;
    Resp::from(r.unwrap())
        .await
        .expect_invalid_field("Authorization");
    let query = format!("/v1/me?apikey={}&apikey={other}", h.admin);
    h.send_auth(Method::GET, &query, Auth::None, None)
        .await
        .expect_invalid_field("apikey");
    // On writes: nothing is written.
    let head = h.log_head().await;
    let idempotency = || twice("idempotency-key", "a".into(), "b".into());
    for (method, path, headers, body, field) in [
        (
            Method::PATCH,
            path.as_str(),
            twice("if-match", "\"1\"".into(), "\"7\"".into()),
            Some(json!({ "name": "renamed" })),
            "If-Match",
        ),
        (
            Method::POST,
            "/v1/keys",
            idempotency(),
            Some(json!({ "name": "twice" })),
            "Idempotency-Key",
        ),
        (
            Method::DELETE,
            path.as_str(),
            idempotency(),
            None,
            "Idempotency-Key",
        ),
    ] {
        let mut request = h
            .request(method, path)
            .bearer_auth(&h.admin)
            .headers(headers);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let r = request.send().await.unwrap();
        Resp::from(r).await.expect_invalid_field(field);
    }
    assert_eq!(h.log_head().await, head);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_key_is_ignored_without_the_opt_in() {
    let h = Harness::start().await;
    h.send_auth(Method::GET, "/v1/me", Auth::Query(&h.admin), None)
        .await
        .expect_error(401, "unauthorized");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_key_authenticates_with_the_opt_in() {
    let h = Harness::start_with(Config {
        allow_query_key: true,
        ..Config::default()
    })
    .await;
    let me = h
        .send_auth(Method::GET, "/v1/me", Auth::Query(&h.admin), None)
        .await
        .expect(200)
        .json();
    assert_eq!(me["scopes"], json!(["admin"]));
    // The apikey parameter is not an "unknown query parameter" of the list endpoint.
    let page = h
        .send_auth(Method::GET, "/v1/keys?limit=5", Auth::Query(&h.admin), None)
        .await
        .expect(200)
        .json();
    assert!(page["data"].is_array());
    // Still 401 for a bad key in the query.
    h.send_auth(
        Method::GET,
        "/v1/me",
        Auth::Query(&well_formed_key(98)),
        None,
    )
    .await
    .expect_error(401, "unauthorized");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_revoked_or_rotated_away_keys_cannot_authenticate() {
    let h = Harness::start().await;
    let (a, a_secret) = h
        .create_key(json!({ "name": "a", "scopes": ["keys:read"] }))
        .await;
    let (b, b_secret) = h
        .create_key(json!({ "name": "b", "scopes": ["keys:read"] }))
        .await;
    let (c, c_secret) = h
        .create_key(json!({ "name": "c", "scopes": ["keys:read"] }))
        .await;
    h.get("/v1/me", &a_secret).await.expect(200);

    h.patch(
        &format!("/v1/keys/{}", id_of(&a)),
        &h.admin,
        &json!({ "enabled": false }),
    )
    .await
    .expect(200);
    h.get("/v1/me", &a_secret)
        .await
        .expect_error(401, "unauthorized");

    h.delete(&format!("/v1/keys/{}", id_of(&b)), &h.admin)
        .await
        .expect(204);
    h.get("/v1/me", &b_secret)
        .await
        .expect_error(401, "unauthorized");

    let v = h
        .post(
            &format!("/v1/keys/{}/reset", id_of(&c)),
            &h.admin,
            &json!({}),
        )
        .await
        .expect(200)
        .json();
    h.get("/v1/me", &c_secret)
        .await
        .expect_error(401, "unauthorized");
    h.get("/v1/me", v["secret"].as_str().unwrap())
        .await
        .expect(200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_scope_is_403_forbidden() {
    let h = Harness::start().await;
    let (target, _) = h.create_key(json!({ "name": "target" })).await;
    let path = format!("/v1/keys/{}", id_of(&target));
    let (_, reader) = h
        .create_key(json!({ "name": "r", "scopes": ["keys:read"] }))
        .await;
    let (_, writer) = h
        .create_key(json!({ "name": "w", "scopes": ["keys:write"] }))
        .await;
    let (_, nothing) = h.create_key(json!({ "name": "n" })).await;

    // keys:read may read but not write.
    h.get("/v1/keys", &reader).await.expect(200);
    h.get(&path, &reader).await.expect(200);
    h.post("/v1/keys", &reader, &json!({ "name": "x" }))
        .await
        .expect_error(403, "forbidden");
    h.patch(&path, &reader, &json!({ "name": "x" }))
        .await
        .expect_error(403, "forbidden");
    h.put(&path, &reader, &json!({ "name": "x" }))
        .await
        .expect_error(403, "forbidden");
    h.post(&format!("{path}/reset"), &reader, &json!({}))
        .await
        .expect_error(403, "forbidden");
    h.delete(&path, &reader)
        .await
        .expect_error(403, "forbidden");

    // keys:write may write but not read.
    h.get("/v1/keys", &writer)
        .await
        .expect_error(403, "forbidden");
    h.get(&path, &writer).await.expect_error(403, "forbidden");
    h.patch(&path, &writer, &json!({ "name": "renamed" }))
        .await
        .expect(200);

    // A key without scopes reaches nothing but /v1/me.
    h.get("/v1/me", &nothing).await.expect(200);
    h.get("/v1/keys", &nothing)
        .await
        .expect_error(403, "forbidden");
    h.post("/v1/verify", &nothing, &json!({ "key": "x" }))
        .await
        .expect_error(403, "forbidden");

    assert_eq!(h.get_key(&id_of(&target)).await["name"], "renamed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn me_returns_the_calling_key_and_counts_as_a_use() {
    let h = Harness::start().await;
    let (key, secret) = h
        .create_key(json!({ "name": "whoami", "account": "acme", "scopes": ["keys:read"] }))
        .await;
    let r = h.get("/v1/me", &secret).await.expect(200);
    r.assert_absent(&secret);
    let me = r.json();
    assert_key_shape(&me);
    assert_eq!(me["id"], key["id"]);
    assert_eq!(me["name"], "whoami");
    assert_eq!(me["account"], "acme");
    assert_eq!(me["created_at"], key["created_at"]);
    // The call itself is a use; write-behind may lag, so poll.
    let id = id_of(&key);
    let stamp = eventually("/v1/me to show last_used_at", secs(5), async || {
        let me = h.get("/v1/me", &secret).await.expect(200).json();
        me["last_used_at"].as_str().map(str::to_string)
    })
    .await;
    assert!(stamp.as_str() >= key["created_at"].as_str().unwrap());
    assert_eq!(h.get_key(&id).await["id"], key["id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_authenticated_call_updates_last_used_at() {
    let h = Harness::start().await;
    let (key, secret) = h
        .create_key(json!({ "name": "lu", "scopes": ["keys:read"] }))
        .await;
    h.get("/v1/keys", &secret).await.expect(200);
    let id = id_of(&key);
    eventually("last_used_at after a list call", secs(5), async || {
        h.get_key(&id).await["last_used_at"]
            .is_string()
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_bootstrap_key_is_used_when_given() {
    let h = Harness::start().await;
    assert_eq!(
        h.bootstrap_secret, None,
        "a given bootstrap key is not reported as generated"
    );
    let me = h.get("/v1/me", &admin_key()).await.expect(200).json();
    assert_eq!(me["scopes"], json!(["admin"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_bootstrap_key_is_generated_when_absent() {
    let h = Harness::start_with(Config {
        bootstrap_key: None,
        ..Config::default()
    })
    .await;
    let generated = h
        .bootstrap_secret
        .clone()
        .expect("a generated admin secret");
    assert_eq!(keyledger_core::secret::check_format(&generated), Ok(()));
    let r = h.get("/v1/me", &generated).await.expect(200);
    r.assert_absent(&generated);
    assert_eq!(r.json()["scopes"], json!(["admin"]));
    // It really is an admin: it can act in any account.
    h.create_key_as(&generated, json!({ "name": "x", "account": "elsewhere" }))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_carry_a_request_id() {
    let h = Harness::start().await;
    let a = h
        .get("/v1/me", "nope")
        .await
        .expect_error(401, "unauthorized");
    let b = h
        .get("/v1/me", "nope")
        .await
        .expect_error(401, "unauthorized");
    assert_ne!(
        a["request_id"], b["request_id"],
        "request ids are per request"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_bootstrap_key_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = keyledger::ServeOptions::new(dir.path());
    opts.bootstrap_key = Some("kl_not-a-real-key".into());
    let err = keyledger::start(opts).await.err().expect("start must fail");
    assert!(!err.to_string().contains("kl_not-a-real-key"), "{err:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_bootstrap_key_is_ignored_once_the_log_has_events() {
    // README: the bootstrap key is "ignored once the log has events"; a stale value left in
    // the environment must not keep the service from starting.
    let mut h = Harness::start().await;
    h.stop().await;
    let mut opts = keyledger::ServeOptions::new(h.data_dir());
    opts.listen = "127.0.0.1:0".parse().unwrap();
    opts.bootstrap_key = Some("kl_not-a-real-key".into());
    let server = keyledger::start(opts).await.expect("the service starts");
    let me = reqwest::Client::new()
        .get(format!("http://{}/v1/me", server.addr))
        .bearer_auth(&h.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 200, "the first admin key still works");
    server.shutdown().await;
}

/// Requests of a key that is revoked while they wait for the writer are judged at commit: none
/// of them is written after the revocation, so the log never shows a key acting once revoked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_revoked_while_its_requests_wait_writes_nothing_after_its_revocation() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let h = Harness::start().await;
    let (k, secret) = h
        .create_key(json!({ "name": "k", "scopes": ["keys:read", "keys:write"] }))
        .await;
    let (t, _) = h.create_key(json!({ "name": "t", "scopes": [] })).await;
    let target = format!("/v1/keys/{}", id_of(&t));
    let written = AtomicUsize::new(0);
    let writers = (0..8).map(|w| {
        let (h, target, secret, written) = (&h, &target, &secret, &written);
        async move {
            for i in 0..500 {
                let body = json!({ "name": format!("w{w} {i}") });
                match h.patch(target, secret, &body).await.status {
                    200 => written.fetch_add(1, Ordering::Relaxed),
                    401 => return,
                    other => panic!("{other}"),
                };
            }
            panic!("the key still wrote 500 times");
        }
    });
    let revoke = async {
        while written.load(Ordering::Relaxed) < 40 {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        h.delete(&format!("/v1/keys/{}", id_of(&k)), &h.admin)
            .await
            .expect(204);
    };
    tokio::join!(futures_util::future::join_all(writers), revoke);

    let log = h
        .get("/v1/events?limit=1000", &h.admin)
        .await
        .expect(200)
        .json();
    let events = log["data"].as_array().unwrap();
    let revoked_at = events
        .iter()
        .find(|e| e["type"] == "key.deleted" && e["key_id"] == k["id"])
        .expect("the revocation")["seq"]
        .as_u64()
        .unwrap();
    let by_k: Vec<u64> = events
        .iter()
        .filter(|e| e["actor"] == k["id"])
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert!(by_k.len() >= 40, "{}", by_k.len());
    assert!(
        by_k.iter().all(|seq| *seq < revoked_at),
        "events by the key after its revocation at seq {revoked_at}: {:?}",
        by_k.iter()
            .filter(|seq| **seq > revoked_at)
            .collect::<Vec<_>>()
    );
}
