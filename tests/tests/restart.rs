//! Durability across a graceful restart on the same data dir: keys, versions, `last_used_at`,
//! revocations, rotations and verification all survive; the bootstrap key is made only once.

use keyledger_e2e::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_and_their_history_survive_a_restart() {
    let mut h = Harness::start().await;
    let (plain, plain_secret) = h
        .create_key(
            json!({ "name": "plain", "account": "acme", "scopes": ["x:y"],
                            "allowed_ips": ["10.0.0.0/8"], "metadata": { "a": 1 } }),
        )
        .await;
    let (updated, updated_secret) = h.create_key(json!({ "name": "before" })).await;
    h.patch(
        &format!("/v1/keys/{}", id_of(&updated)),
        &h.admin,
        &json!({ "name": "after" }),
    )
    .await
    .expect(200);
    let (rotated, _) = h.create_key(json!({ "name": "rotated" })).await;
    let v = h
        .post(
            &format!("/v1/keys/{}/reset", id_of(&rotated)),
            &h.admin,
            &json!({}),
        )
        .await
        .expect(200)
        .json();
    let rotated_secret = v["secret"].as_str().unwrap().to_string();
    let (deleted, deleted_secret) = h.create_key(json!({ "name": "deleted" })).await;
    h.delete(&format!("/v1/keys/{}", id_of(&deleted)), &h.admin)
        .await
        .expect(204);

    let before: Vec<Value> = {
        let mut v = Vec::new();
        for k in [&plain, &updated, &rotated] {
            v.push(h.get_key(&id_of(k)).await);
        }
        v
    };
    let list_before = h
        .get("/v1/keys?sort=created_at&limit=1000", &h.admin)
        .await
        .json();

    h.restart().await;

    for k in &before {
        let after = h.get_key(&id_of(k)).await;
        // The admin's own last_used_at moves; these keys were not used.
        assert_eq!(&after, k, "key {} changed across restart", k["id"]);
    }
    assert_eq!(before[1]["version"], 2);
    assert_eq!(before[2]["version"], 2);
    let r = h
        .get(&format!("/v1/keys/{}", id_of(&deleted)), &h.admin)
        .await;
    r.expect_error(404, "not_found");

    let list_after = h
        .get("/v1/keys?sort=created_at&limit=1000", &h.admin)
        .await
        .json();
    assert_eq!(list_after["total"], list_before["total"]);
    let ids = |v: &Value| -> Vec<Value> {
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["id"].clone())
            .collect()
    };
    assert_eq!(ids(&list_after), ids(&list_before));

    let ok = h
        .verify_body(&json!({ "key": plain_secret, "ip": "10.9.9.9", "scopes": ["x:y"] }))
        .await;
    assert_eq!(ok["code"], "VALID");
    assert_eq!(ok["metadata"], json!({ "a": 1 }));
    assert_eq!(h.verify_code(&updated_secret).await, "VALID");
    assert_eq!(h.verify_code(&rotated_secret).await, "VALID");
    assert_eq!(h.verify_code(&deleted_secret).await, "REVOKED");
    h.delete(&format!("/v1/keys/{}", id_of(&deleted)), &h.admin)
        .await
        .expect_error(409, "conflict");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_continue_after_a_restart() {
    let mut h = Harness::start().await;
    let (k, _) = h.create_key(json!({ "name": "v1" })).await;
    let id = id_of(&k);
    h.restart().await;
    let k = h
        .patch(
            &format!("/v1/keys/{id}"),
            &h.admin,
            &json!({ "name": "v2" }),
        )
        .await
        .expect(200)
        .json();
    assert_eq!(k["version"], 2);
    let (_, fresh) = h.create_key(json!({ "name": "after restart" })).await;
    h.restart().await;
    let k = h.get_key(&id).await;
    assert_eq!(
        (k["name"].as_str(), k["version"].as_u64()),
        (Some("v2"), Some(2))
    );
    assert_eq!(h.verify_code(&fresh).await, "VALID");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_used_at_is_persisted_by_shutdown() {
    let mut h = Harness::start().await;
    let (key, secret) = h.create_key(json!({ "name": "used" })).await;
    let id = id_of(&key);
    assert_eq!(h.verify_code(&secret).await, "VALID");
    let seen = eventually("last_used_at after verify", secs(5), async || {
        h.get_key(&id).await["last_used_at"]
            .as_str()
            .map(str::to_string)
    })
    .await;
    h.restart().await;
    let after = h.get_key(&id).await;
    assert_eq!(after["last_used_at"].as_str(), Some(seen.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_used_at_of_a_use_right_before_shutdown_survives() {
    // The use is flushed by the graceful shutdown, without waiting for write-behind.
    let mut h = Harness::start().await;
    let (key, secret) = h
        .create_key(json!({ "name": "late", "scopes": ["keys:read"] }))
        .await;
    h.get("/v1/me", &secret).await.expect(200);
    h.restart().await;
    let after = h.get_key(&id_of(&key)).await;
    assert!(after["last_used_at"].is_string(), "{after}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grace_period_survives_a_restart() {
    let mut h = Harness::start().await;
    let (key, old) = h.create_key(json!({ "name": "g" })).await;
    let v = h
        .post(
            &format!("/v1/keys/{}/reset", id_of(&key)),
            &h.admin,
            &json!({ "grace_seconds": 3600 }),
        )
        .await
        .expect(200)
        .json();
    let new = v["secret"].as_str().unwrap().to_string();
    h.restart().await;
    let o = h.verify(&old).await;
    assert_eq!(
        (o["code"].as_str(), o["rotating"].as_bool()),
        (Some("VALID"), Some(true))
    );
    assert_eq!(h.verify_code(&new).await, "VALID");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_bootstrap_key_is_made_once_and_survives() {
    let mut h = Harness::start_with(Config {
        bootstrap_key: None,
        ..Config::default()
    })
    .await;
    let generated = h
        .bootstrap_secret
        .clone()
        .expect("generated on first start");
    h.restart().await;
    assert_eq!(
        h.bootstrap_secret, None,
        "not generated again on a non-empty log"
    );
    let me = h.get("/v1/me", &generated).await.expect(200).json();
    assert_eq!(me["scopes"], json!(["admin"]));
    // Only one admin key exists.
    let page = h
        .get("/v1/keys?scope=admin", &generated)
        .await
        .expect(200)
        .json();
    assert_eq!(page["total"], 1, "{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_bootstrap_key_is_not_duplicated_by_restart() {
    let mut h = Harness::start().await;
    h.restart().await;
    h.restart().await;
    assert_eq!(h.bootstrap_secret, None);
    let page = h
        .get("/v1/keys?scope=admin", &h.admin)
        .await
        .expect(200)
        .json();
    assert_eq!(page["total"], 1, "{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_start_that_fails_leaves_the_bootstrap_key_to_the_next_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let mut taken = keyledger::ServeOptions::new(dir.path());
    taken.listen = busy.local_addr().expect("addr");
    let mut no_tls = keyledger::ServeOptions::new(dir.path());
    no_tls.tls = Some((dir.path().join("nope.crt"), dir.path().join("nope.key")));
    for (opts, cause) in [(taken, "binding"), (no_tls, "nope.crt")] {
        let err = keyledger::start(opts).await.err().expect("the start fails");
        assert!(format!("{err:#}").contains(cause), "{err:#}");
    }
    let server = keyledger::start(keyledger::ServeOptions::new(dir.path()))
        .await
        .expect("starts");
    let secret = server
        .bootstrap_secret
        .clone()
        .expect("the first start that serves makes the bootstrap key");
    let me = reqwest::Client::new()
        .get(format!("http://{}/v1/me", server.addr))
        .bearer_auth(&secret)
        .send()
        .await
        .expect("request");
    assert_eq!(me.status(), 200);
    let me: serde_json::Value = me.json().await.expect("json");
    assert_eq!(me["scopes"], serde_json::json!(["admin"]));
    server.shutdown().await;
}
