//! Key CRUD over HTTP: create, get, update (PATCH and PUT), reset, delete; field validation and
//! the error envelope; secrets appear only in create and reset responses.

use keyledger_core::secret::check_format;
use keyledger_e2e::*;
use reqwest::Method;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_returns_201_with_key_resource_and_one_time_secret() {
    let h = Harness::start().await;
    let r = h
        .post("/v1/keys", &h.admin, &json!({ "name": "billing worker" }))
        .await
        .expect(201);
    let v = r.json();
    let key = &v["key"];
    let secret = v["secret"].as_str().expect("secret");
    assert_key_shape(key);

    assert!(secret.starts_with("kl_"), "{secret}");
    assert_eq!(secret.len(), 53, "kl_ + 44 random + 6 checksum: {secret}");
    assert!(
        secret[3..].bytes().all(|b| b.is_ascii_alphanumeric()),
        "{secret}"
    );
    assert_eq!(check_format(secret), Ok(()), "checksum of {secret}");

    assert_eq!(key["name"], "billing worker");
    assert_eq!(key["account"], "default");
    assert_eq!(key["enabled"], true);
    assert_eq!(key["version"], 1);
    assert_eq!(key["scopes"], json!([]));
    assert_eq!(key["allowed_ips"], json!([]));
    assert_eq!(key["owner"], Value::Null);
    assert_eq!(key["role"], Value::Null);
    assert_eq!(key["expires_at"], Value::Null);
    assert_eq!(key["last_used_at"], Value::Null);
    assert_eq!(key["rotated_at"], Value::Null);
    assert_eq!(key["metadata"], json!({}));
    assert_eq!(
        key["hint"],
        format!("kl_...{}", &secret[secret.len() - 4..])
    );
    assert!(key["created_at"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(key["updated_at"].as_str().is_some_and(|s| !s.is_empty()));
    // A UUID (v7) string.
    let id = id_of(key);
    assert_eq!(id.len(), 36, "{id}");
    assert_eq!(&id[14..15], "7", "UUID v7: {id}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_stores_every_optional_field() {
    let h = Harness::start().await;
    let expires = rfc3339_in(3600);
    let (key, _) = h
        .create_key(json!({
            "name": "full",
            "account": "acme",
            "owner": "user_42",
            "role": "member",
            "scopes": ["invoices:read", "invoices:write"],
            "allowed_ips": ["10.0.0.0/8"],
            "enabled": false,
            "expires_at": expires,
            "metadata": { "team": "billing", "n": 3 },
        }))
        .await;
    assert_eq!(key["account"], "acme");
    assert_eq!(key["owner"], "user_42");
    assert_eq!(key["role"], "member");
    assert_eq!(key["scopes"], json!(["invoices:read", "invoices:write"]));
    assert_eq!(key["allowed_ips"], json!(["10.0.0.0/8"]));
    assert_eq!(key["enabled"], false);
    assert_eq!(key["expires_at"], expires);
    assert_eq!(key["metadata"], json!({ "team": "billing", "n": 3 }));

    let got = h.get_key(&id_of(&key)).await;
    assert_eq!(got, key, "GET returns what create returned");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_prefix_shapes_secret_and_hint() {
    let h = Harness::start().await;
    let (key, secret) = h
        .create_key(json!({ "name": "p", "prefix": "acme1" }))
        .await;
    assert!(secret.starts_with("acme1_"), "{secret}");
    assert_eq!(secret.len(), "acme1_".len() + 50);
    assert_eq!(check_format(&secret), Ok(()));
    assert_eq!(
        key["hint"],
        format!("acme1_...{}", &secret[secret.len() - 4..])
    );
    assert_eq!(h.verify_code(&secret).await, "VALID");

    h.post(
        "/v1/keys",
        &h.admin,
        &json!({ "name": "p", "prefix": "Bad!" }),
    )
    .await
    .expect_invalid_field("prefix");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_ips_come_back_normalised() {
    let h = Harness::start().await;
    let (key, _) = h
        .create_key(json!({
            "name": "ips",
            "allowed_ips": ["1.2.3.4", "10.0.0.0/8", "2001:db8::/32", "::1"],
        }))
        .await;
    let mut got: Vec<String> = key["allowed_ips"]
        .as_array()
        .expect("array")
        .iter()
        .map(|v| v.as_str().expect("string").to_string())
        .collect();
    got.sort();
    let mut want = vec!["1.2.3.4/32", "10.0.0.0/8", "2001:db8::/32", "::1/128"];
    want.sort();
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn name_is_required_and_at_most_255_characters() {
    let h = Harness::start().await;
    h.post("/v1/keys", &h.admin, &json!({ "name": "x".repeat(255) }))
        .await
        .expect(201);
    let err = h
        .post("/v1/keys", &h.admin, &json!({ "name": "x".repeat(256) }))
        .await
        .expect_invalid_field("name");
    assert_eq!(err["message"], "name: at most 255 characters");
    // Characters, not bytes: 255 two-byte characters are fine.
    h.post("/v1/keys", &h.admin, &json!({ "name": "é".repeat(255) }))
        .await
        .expect(201);
    h.post("/v1/keys", &h.admin, &json!({ "name": "" }))
        .await
        .expect_invalid_field("name");
    let err = h
        .post("/v1/keys", &h.admin, &json!({ "scopes": [] }))
        .await
        .expect_error(400, "validation_failed");
    assert!(err["message"].as_str().unwrap().contains("name"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_fields_are_rejected_naming_the_field() {
    let h = Harness::start().await;
    let err = h
        .post(
            "/v1/keys",
            &h.admin,
            &json!({ "name": "a", "colour": "red" }),
        )
        .await
        .expect_error(400, "validation_failed");
    assert!(err["message"].as_str().unwrap().contains("colour"), "{err}");

    let (key, _) = h.create_key(json!({ "name": "a" })).await;
    let err = h
        .patch(
            &format!("/v1/keys/{}", id_of(&key)),
            &h.admin,
            &json!({ "flavour": 1 }),
        )
        .await
        .expect_error(400, "validation_failed");
    assert!(
        err["message"].as_str().unwrap().contains("flavour"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_types_name_the_field_path() {
    let h = Harness::start().await;
    let err = h
        .post("/v1/keys", &h.admin, &json!({ "name": 5 }))
        .await
        .expect_error(400, "validation_failed");
    assert!(err["message"].as_str().unwrap().contains("name"), "{err}");

    let err = h
        .post(
            "/v1/keys",
            &h.admin,
            &json!({ "name": "a", "scopes": ["ok", 5] }),
        )
        .await
        .expect_error(400, "validation_failed");
    assert!(err["message"].as_str().unwrap().contains("scopes"), "{err}");

    let err = h
        .post(
            "/v1/keys",
            &h.admin,
            &json!({ "name": "a", "enabled": "yes" }),
        )
        .await
        .expect_error(400, "validation_failed");
    assert!(
        err["message"].as_str().unwrap().contains("enabled"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn field_rules_are_enforced_with_the_field_named() {
    let h = Harness::start().await;
    let cases = [
        (json!({ "name": "a", "account": "bad account!" }), "account"),
        (
            json!({ "name": "a", "allowed_ips": ["not-an-ip"] }),
            "allowed_ips",
        ),
        (
            json!({ "name": "a", "expires_at": rfc3339_in(-60) }),
            "expires_at",
        ),
        (
            json!({ "name": "a", "expires_at": "tomorrow" }),
            "expires_at",
        ),
        (json!({ "name": "a", "metadata": [1, 2] }), "metadata"),
        (
            json!({ "name": "a", "metadata": { "blob": "x".repeat(9 * 1024) } }),
            "metadata",
        ),
    ];
    for (body, field) in cases {
        let r = h.post("/v1/keys", &h.admin, &body).await;
        let err = r.expect_error(400, "validation_failed");
        assert!(
            err["message"].as_str().unwrap().contains(field),
            "{field} not named for {body}: {err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_is_400_invalid_json() {
    let h = Harness::start().await;
    h.send_text(Method::POST, "/v1/keys", &h.admin, "{\"name\": ")
        .await
        .expect_error(400, "invalid_json");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_integers_beyond_a_double_are_refused_as_written_not_stored_rounded() {
    let h = Harness::start().await;
    // Literals beyond i64/u64 reach the server's parser as floats; they must not be stored as one.
    for n in [
        "9007199254740992",
        "18446744073709551616",
        "-123456789012345678901",
    ] {
        let body = format!(r#"{{"name":"a","metadata":{{"deep":[{{"n":{n}}}]}}}}"#);
        let err = h
            .send_text(Method::POST, "/v1/keys", &h.admin, &body)
            .await
            .expect_error(400, "validation_failed");
        assert_eq!(
            err["message"], "metadata: integers must lie within ±9007199254740991",
            "{n}"
        );
    }
    // Not an object: refused as that, whatever number it is.
    let err = h
        .send_text(
            Method::POST,
            "/v1/keys",
            &h.admin,
            r#"{"name":"a","metadata":123456789012345678901}"#,
        )
        .await
        .expect_error(400, "validation_failed");
    assert_eq!(err["message"], "metadata: must be a JSON object");
    let (key, _) = h.create_key(json!({ "name": "b" })).await;
    let body = r#"{"metadata":{"n":99999999999999999999999}}"#;
    let path = format!("/v1/keys/{}", key["id"].as_str().unwrap());
    h.send_text(Method::PATCH, &path, &h.admin, body)
        .await
        .expect_invalid_field("metadata");
    let list = h.get("/v1/keys", &h.admin).await.expect(200).json();
    assert_eq!(list["total"], 2, "the admin and b only: {list}");
    let b = h.get(&path, &h.admin).await.expect(200).json();
    assert_eq!(
        (&b["metadata"], &b["version"]),
        (&json!({}), &json!(1)),
        "{b}"
    );
    // The largest exact integer and a large float written as one are kept as they are.
    let body = r#"{"name":"a","metadata":{"n":-9007199254740991,"f":1e21}}"#;
    let created = h
        .send_text(Method::POST, "/v1/keys", &h.admin, body)
        .await
        .expect(201)
        .json();
    assert_eq!(
        created["key"]["metadata"],
        json!({"n": -9007199254740991i64, "f": 1e21}),
        "{created}"
    );
}

/// A `metadata` object `levels` deep, itself the first level.
fn nested(levels: usize) -> Value {
    (1..levels).fold(json!({ "leaf": 1 }), |inner, _| json!({ "a": inner }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_nested_to_the_limit_keeps_the_history_readable_and_deeper_is_refused() {
    let h = Harness::start().await;
    // Created and updated at the limit: their events must read back (a stored event that
    // JSON parsers refuse would make the history unreadable from there on).
    let (key, _) = h
        .create_key(json!({ "name": "deep", "metadata": nested(32) }))
        .await;
    let path = format!("/v1/keys/{}", id_of(&key));
    let mut deeper = nested(32);
    deeper["b"] = json!(2);
    h.patch(&path, &h.admin, &json!({ "metadata": deeper }))
        .await
        .expect(200);
    let history = h
        .get(&format!("{path}/events"), &h.admin)
        .await
        .expect(200)
        .json();
    assert_eq!(history["data"][0]["data"]["metadata"], nested(32));
    let all = h.get("/v1/events", &h.admin).await.expect(200).json();
    assert_eq!(all["data"].as_array().unwrap().len(), 3, "{all}");
    h.get(&format!("{path}?as_of=2"), &h.admin)
        .await
        .expect(200);
    // One level more is refused, on create and on update, and nothing is written.
    let err = h
        .send(
            Method::POST,
            "/v1/keys",
            &h.admin,
            Some(&json!({ "name": "x", "metadata": nested(33) })),
        )
        .await
        .expect_invalid_field("metadata");
    assert_eq!(err["message"], "metadata: at most 32 levels of nesting");
    h.patch(&path, &h.admin, &json!({ "metadata": nested(33) }))
        .await
        .expect_invalid_field("metadata");
    assert_eq!(h.log_head().await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_json_content_type_is_415() {
    let h = Harness::start().await;
    let text = [("content-type", "text/plain")];
    h.send_raw(
        Method::POST,
        "/v1/keys",
        &h.admin,
        &text,
        br#"{"name": "a"}"#.to_vec(),
    )
    .await
    .expect_error(415, "unsupported_media_type");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compressed_body_is_415_naming_content_encoding() {
    let h = Harness::start().await;
    let send = |encoding: &'static str, body: &'static [u8]| {
        let headers = [
            ("content-type", "application/json"),
            ("content-encoding", encoding),
        ];
        let h = &h;
        async move {
            h.send_raw(Method::POST, "/v1/keys", &h.admin, &headers, body.to_vec())
                .await
        }
    };
    let err = send("gzip", b"\x1f\x8b\x08\x00")
        .await
        .expect_error(415, "unsupported_media_type");
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .starts_with("Content-Encoding"),
        "{err}"
    );
    send("identity, br", br#"{"name":"plain"}"#)
        .await
        .expect_error(415, "unsupported_media_type");
    for identity in ["identity", "", "Identity, identity"] {
        send(identity, br#"{"name":"plain"}"#).await.expect(201);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_over_64_kib_is_413() {
    let h = Harness::start().await;
    let body = json!({ "name": "a", "metadata": { "blob": "x".repeat(70 * 1024) } });
    h.post("/v1/keys", &h.admin, &body)
        .await
        .expect_error(413, "payload_too_large");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_returns_key_with_quoted_version_etag() {
    let h = Harness::start().await;
    let (key, secret) = h.create_key(json!({ "name": "e" })).await;
    let r = h
        .get(&format!("/v1/keys/{}", id_of(&key)), &h.admin)
        .await
        .expect(200);
    assert_eq!(r.header("etag").as_deref(), Some("\"1\""));
    r.assert_absent(&secret);
    assert_key_shape(&r.json());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_unknown_key_is_404_not_found() {
    let h = Harness::start().await;
    h.get("/v1/keys/01900000-0000-7000-8000-000000000000", &h.admin)
        .await
        .expect_error(404, "not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patch_updates_fields_and_bumps_version() {
    let h = Harness::start().await;
    let (key, _) = h
        .create_key(json!({ "name": "old", "role": "member" }))
        .await;
    let path = format!("/v1/keys/{}", id_of(&key));
    let updated = h
        .patch(
            &path,
            &h.admin,
            &json!({
                "name": "new",
                "owner": "u1",
                "role": "owner",
                "scopes": ["a:b"],
                "allowed_ips": ["192.168.0.0/16"],
                "enabled": false,
                "metadata": { "k": "v" },
            }),
        )
        .await
        .expect(200)
        .json();
    assert_key_shape(&updated);
    assert_eq!(updated["name"], "new");
    assert_eq!(updated["owner"], "u1");
    assert_eq!(updated["role"], "owner");
    assert_eq!(updated["scopes"], json!(["a:b"]));
    assert_eq!(updated["allowed_ips"], json!(["192.168.0.0/16"]));
    assert_eq!(updated["enabled"], false);
    assert_eq!(updated["metadata"], json!({ "k": "v" }));
    assert_eq!(updated["version"], 2);
    assert_eq!(updated["created_at"], key["created_at"]);
    assert!(updated["updated_at"].as_str() >= key["updated_at"].as_str());

    let r = h.get(&path, &h.admin).await.expect(200);
    assert_eq!(r.header("etag").as_deref(), Some("\"2\""));
    assert_eq!(r.json(), updated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_is_a_partial_update_too() {
    let h = Harness::start().await;
    let (key, _) = h
        .create_key(json!({ "name": "old", "role": "member", "owner": "o" }))
        .await;
    let updated = h
        .put(
            &format!("/v1/keys/{}", id_of(&key)),
            &h.admin,
            &json!({ "name": "renamed" }),
        )
        .await
        .expect(200)
        .json();
    assert_eq!(updated["name"], "renamed");
    assert_eq!(updated["role"], "member", "untouched fields stay");
    assert_eq!(updated["owner"], "o");
    assert_eq!(updated["version"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn null_clears_owner_role_and_expires_at() {
    let h = Harness::start().await;
    let (key, _) = h
        .create_key(json!({
            "name": "n", "owner": "o", "role": "r", "expires_at": rfc3339_in(3600),
        }))
        .await;
    let updated = h
        .patch(
            &format!("/v1/keys/{}", id_of(&key)),
            &h.admin,
            &json!({ "owner": null, "role": null, "expires_at": null }),
        )
        .await
        .expect(200)
        .json();
    assert_eq!(updated["owner"], Value::Null);
    assert_eq!(updated["role"], Value::Null);
    assert_eq!(updated["expires_at"], Value::Null);
    assert_eq!(updated["name"], "n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_that_changes_nothing_keeps_the_version() {
    let h = Harness::start().await;
    let (key, _) = h.create_key(json!({ "name": "same", "role": "r" })).await;
    let path = format!("/v1/keys/{}", id_of(&key));
    let same = h
        .patch(&path, &h.admin, &json!({ "name": "same", "role": "r" }))
        .await
        .expect(200)
        .json();
    assert_eq!(same["version"], 1);
    let empty = h
        .patch(&path, &h.admin, &json!({}))
        .await
        .expect(200)
        .json();
    assert_eq!(empty["version"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn if_match_guards_updates() {
    let h = Harness::start().await;
    let (key, _) = h.create_key(json!({ "name": "v1" })).await;
    let path = format!("/v1/keys/{}", id_of(&key));

    let r = h
        .request(Method::PATCH, &path)
        .bearer_auth(&h.admin)
        .header("if-match", "\"1\"")
        .json(&json!({ "name": "v2" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);

    // Stale version.
    let r = h
        .request(Method::PATCH, &path)
        .bearer_auth(&h.admin)
        .header("if-match", "\"1\"")
        .json(&json!({ "name": "v3" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 412);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "precondition_failed", "{v}");
    assert_eq!(
        h.get_key(&id_of(&key)).await["name"],
        "v2",
        "rejected write not applied"
    );

    // PUT honours If-Match as well.
    let r = h
        .request(Method::PUT, &path)
        .bearer_auth(&h.admin)
        .header("if-match", "\"7\"")
        .json(&json!({ "name": "v3" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 412);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_validates_fields() {
    let h = Harness::start().await;
    let (key, _) = h.create_key(json!({ "name": "ok" })).await;
    let path = format!("/v1/keys/{}", id_of(&key));
    h.patch(&path, &h.admin, &json!({ "name": "y".repeat(256) }))
        .await
        .expect_invalid_field("name");
    h.patch(&path, &h.admin, &json!({ "expires_at": rfc3339_in(-10) }))
        .await
        .expect_invalid_field("expires_at");
    h.patch(&path, &h.admin, &json!({ "allowed_ips": ["300.1.1.1"] }))
        .await
        .expect_invalid_field("allowed_ips");
    assert_eq!(h.get_key(&id_of(&key)).await["version"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_of_unknown_key_is_404() {
    let h = Harness::start().await;
    h.patch(
        "/v1/keys/01900000-0000-7000-8000-000000000000",
        &h.admin,
        &json!({ "name": "x" }),
    )
    .await
    .expect_error(404, "not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_rotates_the_secret() {
    let h = Harness::start().await;
    let (key, old) = h.create_key(json!({ "name": "rot" })).await;
    let id = id_of(&key);
    let v = h
        .post(&format!("/v1/keys/{id}/reset"), &h.admin, &json!({}))
        .await
        .expect(200)
        .json();
    let new = v["secret"].as_str().expect("reset returns the new secret");
    assert_ne!(new, old);
    assert_eq!(check_format(new), Ok(()));
    let k = &v["key"];
    assert_key_shape(k);
    assert_eq!(k["id"], id.as_str());
    assert_eq!(k["hint"], format!("kl_...{}", &new[new.len() - 4..]));
    assert!(k["rotated_at"].is_string(), "rotated_at set: {k}");
    assert_eq!(k["version"], 2);
    assert_eq!(h.get_key(&id).await, *k);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_accepts_an_empty_body() {
    let h = Harness::start().await;
    let (key, old) = h.create_key(json!({ "name": "rot" })).await;
    let r = h
        .request(Method::POST, &format!("/v1/keys/{}/reset", id_of(&key)))
        .bearer_auth(&h.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let v: Value = r.json().await.unwrap();
    assert!(v["secret"].as_str().is_some_and(|s| s != old), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_grace_seconds_must_be_within_a_week() {
    let h = Harness::start().await;
    let (key, _) = h.create_key(json!({ "name": "rot" })).await;
    let path = format!("/v1/keys/{}/reset", id_of(&key));
    for bad in [json!(604_801), json!(-1), json!("soon")] {
        let err = h
            .post(&path, &h.admin, &json!({ "grace_seconds": bad }))
            .await
            .expect_error(400, "validation_failed");
        assert!(
            err["message"].as_str().unwrap().contains("grace_seconds"),
            "{err}"
        );
    }
    h.post(&path, &h.admin, &json!({ "grace_seconds": 604_800 }))
        .await
        .expect(200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_of_unknown_key_is_404() {
    let h = Harness::start().await;
    h.post(
        "/v1/keys/01900000-0000-7000-8000-000000000000/reset",
        &h.admin,
        &json!({}),
    )
    .await
    .expect_error(404, "not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_revokes_and_later_writes_conflict() {
    let h = Harness::start().await;
    let (key, secret) = h.create_key(json!({ "name": "doomed" })).await;
    let path = format!("/v1/keys/{}", id_of(&key));

    let r = h.delete(&path, &h.admin).await.expect(204);
    assert!(r.body.is_empty(), "204 has no body: {}", r.body);

    h.get(&path, &h.admin).await.expect_error(404, "not_found");
    h.delete(&path, &h.admin)
        .await
        .expect_error(409, "conflict");
    h.patch(&path, &h.admin, &json!({ "name": "zombie" }))
        .await
        .expect_error(409, "conflict");
    h.put(&path, &h.admin, &json!({ "name": "zombie" }))
        .await
        .expect_error(409, "conflict");
    let r = h.post(&format!("{path}/reset"), &h.admin, &json!({})).await;
    r.assert_absent("kl_");
    r.expect_error(409, "conflict");
    assert_eq!(h.verify_code(&secret).await, "REVOKED");
}

/// A field sent to DELETE (Unkey's `permanent`, say) is refused like anywhere else, not ignored
/// while the key is revoked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_refuses_a_body_with_fields_and_revokes_nothing() {
    let h = Harness::start().await;
    let (key, secret) = h.create_key(json!({ "name": "kept" })).await;
    let path = format!("/v1/keys/{}", id_of(&key));
    let err = h
        .send_text(Method::DELETE, &path, &h.admin, r#"{"permanent":true}"#)
        .await
        .expect_error(400, "validation_failed");
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .starts_with("unknown field `permanent`"),
        "{err}"
    );
    h.send_text(Method::DELETE, &path, &h.admin, "[]")
        .await
        .expect_invalid_field("body");
    assert_eq!(h.verify_code(&secret).await, "VALID");
    h.send_text(Method::DELETE, &path, &h.admin, " {} ")
        .await
        .expect(204);
    assert_eq!(h.verify_code(&secret).await, "REVOKED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_of_unknown_key_is_404() {
    let h = Harness::start().await;
    h.delete("/v1/keys/01900000-0000-7000-8000-000000000000", &h.admin)
        .await
        .expect_error(404, "not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_appears_only_in_create_and_reset_responses() {
    let h = Harness::start().await;
    let (key, secret) = h
        .create_key(json!({ "name": "leaky?", "scopes": ["keys:read", "keys:write"] }))
        .await;
    let id = id_of(&key);
    let path = format!("/v1/keys/{id}");

    h.get(&path, &h.admin)
        .await
        .expect(200)
        .assert_absent(&secret);
    h.get("/v1/keys", &h.admin)
        .await
        .expect(200)
        .assert_absent(&secret);
    h.get("/v1/me", &secret)
        .await
        .expect(200)
        .assert_absent(&secret);
    h.patch(&path, &h.admin, &json!({ "name": "still fine" }))
        .await
        .expect(200)
        .assert_absent(&secret);
    // Error bodies never echo the secret, neither the caller's nor a submitted one.
    let r = h
        .post("/v1/verify", &secret, &json!({ "key": secret }))
        .await;
    assert_eq!(r.status, 403, "the key lacks keys:verify: {}", r.body);
    r.assert_absent(&secret);
    let r = h.patch(&path, &h.admin, &json!({ "bogus": secret })).await;
    assert_eq!(r.status, 400);
    r.assert_absent(&secret);

    let reset = h
        .post(
            &format!("{path}/reset"),
            &h.admin,
            &json!({ "grace_seconds": 60 }),
        )
        .await
        .expect(200)
        .json();
    let new = reset["secret"].as_str().unwrap().to_string();
    for p in [path.as_str(), "/v1/keys"] {
        let r = h.get(p, &h.admin).await.expect(200);
        r.assert_absent(&secret);
        r.assert_absent(&new);
    }
    // The hash must not leak either, in any usual form.
    let listed = h.get("/v1/keys", &h.admin).await.json();
    for k in listed["data"].as_array().unwrap() {
        assert_key_shape(k);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_and_prefix_cannot_be_changed_by_update() {
    let h = Harness::start().await;
    let (key, _) = h
        .create_key(json!({ "name": "fixed", "account": "acme" }))
        .await;
    let path = format!("/v1/keys/{}", id_of(&key));
    for (body, field) in [
        (json!({ "account": "globex" }), "account"),
        (json!({ "prefix": "zz" }), "prefix"),
        (json!({ "secret": well_formed_key(3) }), "secret"),
    ] {
        let err = h
            .patch(&path, &h.admin, &body)
            .await
            .expect_error(400, "validation_failed");
        assert!(err["message"].as_str().unwrap().contains(field), "{err}");
    }
    assert_eq!(h.get_key(&id_of(&key)).await["account"], "acme");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_content_type_with_charset_is_accepted() {
    let h = Harness::start().await;
    let r = h
        .request(Method::POST, "/v1/keys")
        .bearer_auth(&h.admin)
        .header("content-type", "application/json; charset=utf-8")
        .body(r#"{"name": "charset"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_all_land_with_distinct_ids_and_secrets() {
    let h = std::sync::Arc::new(Harness::start().await);
    let mut tasks = Vec::new();
    for i in 0..40 {
        let h = h.clone();
        tasks.push(tokio::spawn(async move {
            h.create_key(json!({ "name": format!("c{i}"), "account": "conc" }))
                .await
        }));
    }
    let mut ids = std::collections::HashSet::new();
    let mut secrets = std::collections::HashSet::new();
    for t in tasks {
        let (k, s) = t.await.unwrap();
        assert_eq!(k["version"], 1);
        ids.insert(id_of(&k));
        secrets.insert(s);
    }
    assert_eq!(ids.len(), 40);
    assert_eq!(secrets.len(), 40);
    let page = h
        .get("/v1/keys?account=conc&limit=1000", &h.admin)
        .await
        .expect(200)
        .json();
    assert_eq!(page["total"], 40);
    for s in &secrets {
        assert_eq!(h.verify_code(s).await, "VALID");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_updates_with_the_same_if_match_let_exactly_one_win() {
    let h = std::sync::Arc::new(Harness::start().await);
    let (key, _) = h.create_key(json!({ "name": "race" })).await;
    let path = format!("/v1/keys/{}", id_of(&key));
    let mut tasks = Vec::new();
    for i in 0..10 {
        let h = h.clone();
        let path = path.clone();
        tasks.push(tokio::spawn(async move {
            let r = h
                .request(Method::PATCH, &path)
                .bearer_auth(&h.admin)
                .header("if-match", "\"1\"")
                .json(&json!({ "name": format!("writer {i}") }))
                .send()
                .await
                .unwrap();
            (i, r.status().as_u16())
        }));
    }
    let mut winners = Vec::new();
    for t in tasks {
        let (i, status) = t.await.unwrap();
        match status {
            200 => winners.push(i),
            412 => {}
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(winners.len(), 1, "winners: {winners:?}");
    let k = h.get_key(&id_of(&key)).await;
    assert_eq!(k["version"], 2);
    assert_eq!(k["name"], format!("writer {}", winners[0]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_updates_without_if_match_are_all_applied() {
    let h = std::sync::Arc::new(Harness::start().await);
    let (key, _) = h.create_key(json!({ "name": "many" })).await;
    let path = format!("/v1/keys/{}", id_of(&key));
    let mut tasks = Vec::new();
    for i in 0..20 {
        let h = h.clone();
        let path = path.clone();
        tasks.push(tokio::spawn(async move {
            h.patch(&path, &h.admin, &json!({ "metadata": { "i": i } }))
                .await
                .status
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    let k = h.get_key(&id_of(&key)).await;
    // Every write changes metadata relative to whichever write preceded it.
    assert_eq!(k["version"], 21, "one event per distinct update: {k}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_replays_the_first_create_without_a_second_key() {
    let h = Harness::start().await;
    let send = async |body: Value| {
        let r = h
            .request(Method::POST, "/v1/keys")
            .bearer_auth(&h.admin)
            .header("idempotency-key", "create-once-1")
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json::<Value>().await.unwrap())
    };
    let body = json!({ "name": "idem", "account": "idem" });
    let (s1, first) = send(body.clone()).await;
    let (s2, second) = send(body).await;
    assert_eq!(s1, 201, "{first}");
    assert_eq!(s2, 201, "the replay answers like the first: {second}");
    assert_eq!(second["key"]["id"], first["key"]["id"]);
    let page = h
        .get("/v1/keys?account=idem", &h.admin)
        .await
        .expect(200)
        .json();
    assert_eq!(page["total"], 1, "one key, not two: {page}");
    // The same Idempotency-Key with another body is refused.
    let (s3, third) = send(json!({ "name": "other", "account": "idem" })).await;
    assert_eq!(s3, 422, "{third}");
    assert_eq!(
        h.get("/v1/keys?account=idem", &h.admin).await.json()["total"],
        1
    );
}
