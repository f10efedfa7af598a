//! POST /v1/verify: every outcome code, the response shape, rotation grace periods, expiry, and
//! the `last_used_at` a successful verification records.

use keyledger_e2e::*;

const RESULT_FIELDS: &[&str] = &[
    "valid",
    "code",
    "key_id",
    "account",
    "owner",
    "scopes",
    "expires_at",
    "name",
    "role",
    "metadata",
    "rotating",
];

#[track_caller]
fn assert_result_shape(v: &Value) {
    for f in RESULT_FIELDS {
        assert!(v.get(*f).is_some(), "verify result lacks `{f}`: {v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_key_returns_its_identity() {
    let h = Harness::start().await;
    let (key, secret) = h
        .create_key(json!({
            "name": "svc", "account": "acme", "owner": "u9", "role": "member",
            "scopes": ["invoices:read"], "metadata": { "plan": "pro" },
        }))
        .await;
    let v = h.verify(&secret).await;
    assert_result_shape(&v);
    assert_eq!(v["valid"], true);
    assert_eq!(v["code"], "VALID");
    assert_eq!(v["key_id"], key["id"]);
    assert_eq!(v["account"], "acme");
    assert_eq!(v["owner"], "u9");
    assert_eq!(v["role"], "member");
    assert_eq!(v["name"], "svc");
    assert_eq!(v["scopes"], json!(["invoices:read"]));
    assert_eq!(v["metadata"], json!({ "plan": "pro" }));
    assert_eq!(v["expires_at"], Value::Null);
    assert_eq!(v["rotating"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_or_malformed_key_is_not_found_with_null_fields() {
    let h = Harness::start().await;
    for candidate in [
        well_formed_key(200),
        "hello".to_string(),
        String::new(),
        // A real key with one character changed: the checksum no longer matches.
        {
            let mut s = well_formed_key(201);
            s.replace_range(5..6, if &s[5..6] == "A" { "B" } else { "A" });
            s
        },
    ] {
        let v = h.verify(&candidate).await;
        assert_result_shape(&v);
        assert_eq!(v["valid"], false, "{candidate:?}: {v}");
        assert_eq!(v["code"], "NOT_FOUND", "{candidate:?}: {v}");
        for f in ["key_id", "account", "owner", "name", "role", "expires_at"] {
            assert!(v[f].is_null(), "{f} should be null for NOT_FOUND: {v}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_key_is_disabled_until_re_enabled() {
    let h = Harness::start().await;
    let (key, secret) = h.create_key(json!({ "name": "d" })).await;
    let path = format!("/v1/keys/{}", id_of(&key));
    h.patch(&path, &h.admin, &json!({ "enabled": false }))
        .await
        .expect(200);
    let v = h.verify(&secret).await;
    assert_eq!(v["code"], "DISABLED");
    assert_eq!(v["valid"], false);
    assert_eq!(v["key_id"], key["id"]);
    h.patch(&path, &h.admin, &json!({ "enabled": true }))
        .await
        .expect(200);
    assert_eq!(h.verify_code(&secret).await, "VALID");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_created_disabled_is_disabled() {
    let h = Harness::start().await;
    let (_, secret) = h
        .create_key(json!({ "name": "off", "enabled": false }))
        .await;
    assert_eq!(h.verify_code(&secret).await, "DISABLED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_key_is_revoked_at_once() {
    let h = Harness::start().await;
    let (key, secret) = h.create_key(json!({ "name": "gone" })).await;
    assert_eq!(h.verify_code(&secret).await, "VALID");
    h.delete(&format!("/v1/keys/{}", id_of(&key)), &h.admin)
        .await
        .expect(204);
    let v = h.verify(&secret).await;
    assert_eq!(v["code"], "REVOKED");
    assert_eq!(v["valid"], false);
}

/// API.md: a secret still in its grace period stops verifying with the key, as unknown
/// (`NOT_FOUND`, not rotating); the current secret says `REVOKED`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_ends_a_grace_period_and_the_old_secret_is_unknown() {
    let h = Harness::start().await;
    let (key, old) = h.create_key(json!({ "name": "rotated then gone" })).await;
    let path = format!("/v1/keys/{}", id_of(&key));
    let reset = h
        .post(
            &format!("{path}/reset"),
            &h.admin,
            &json!({ "grace_seconds": 3600 }),
        )
        .await
        .expect(200)
        .json();
    let new = reset["secret"].as_str().unwrap();
    assert_eq!(h.verify(&old).await["rotating"], true);
    h.delete(&path, &h.admin).await.expect(204);
    let o = h.verify(&old).await;
    assert_eq!(
        (&o["code"], &o["rotating"]),
        (&json!("NOT_FOUND"), &json!(false)),
        "{o}"
    );
    let n = h.verify(new).await;
    assert_eq!(
        (&n["code"], &n["rotating"]),
        (&json!("REVOKED"), &json!(false)),
        "{n}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_expires_when_expires_at_passes() {
    let h = Harness::start().await;
    let (key, secret) = h
        .create_key(json!({ "name": "short", "expires_at": rfc3339_in(2) }))
        .await;
    let v = eventually("the key to verify as EXPIRED", secs(10), async || {
        let v = h.verify(&secret).await;
        (v["code"] == "EXPIRED").then_some(v)
    })
    .await;
    assert_eq!(v["valid"], false);
    assert_eq!(v["key_id"], key["id"]);
    assert_eq!(v["expires_at"], key["expires_at"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn future_expiry_is_valid_and_reported() {
    let h = Harness::start().await;
    let expires = rfc3339_in(3600);
    let (_, secret) = h
        .create_key(json!({ "name": "later", "expires_at": expires }))
        .await;
    let v = h.verify(&secret).await;
    assert_eq!(v["code"], "VALID");
    assert_eq!(v["expires_at"], expires);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_ips_restrict_where_a_key_is_valid() {
    let h = Harness::start().await;
    let (_, secret) = h
        .create_key(
            json!({ "name": "net", "allowed_ips": ["10.0.0.0/8", "2001:db8::/32", "1.2.3.4"] }),
        )
        .await;
    let code = async |ip: Option<&str>| -> String {
        let mut body = json!({ "key": secret });
        if let Some(ip) = ip {
            body["ip"] = json!(ip);
        }
        h.verify_body(&body).await["code"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(code(Some("10.1.2.3")).await, "VALID");
    assert_eq!(code(Some("1.2.3.4")).await, "VALID");
    assert_eq!(code(Some("2001:db8::1")).await, "VALID");
    assert_eq!(
        code(Some("::ffff:10.0.0.1")).await,
        "VALID",
        "IPv4-mapped IPv6 is IPv4"
    );
    assert_eq!(code(Some("192.168.1.1")).await, "FORBIDDEN_IP");
    assert_eq!(code(Some("1.2.3.5")).await, "FORBIDDEN_IP");
    assert_eq!(code(Some("2001:db9::1")).await, "FORBIDDEN_IP");
    assert_eq!(
        code(None).await,
        "FORBIDDEN_IP",
        "no ip given to a restricted key"
    );

    let (_, open) = h.create_key(json!({ "name": "anywhere" })).await;
    let v = h
        .verify_body(&json!({ "key": open, "ip": "203.0.113.9" }))
        .await;
    assert_eq!(v["code"], "VALID", "empty allowed_ips means any IP");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_scopes_must_all_be_held() {
    let h = Harness::start().await;
    let (_, secret) = h
        .create_key(json!({ "name": "sc", "scopes": ["invoices:read", "clients:read"] }))
        .await;
    let code = async |scopes: Value| -> String {
        h.verify_body(&json!({ "key": secret, "scopes": scopes }))
            .await["code"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(code(json!([])).await, "VALID");
    assert_eq!(code(json!(["invoices:read"])).await, "VALID");
    assert_eq!(
        code(json!(["invoices:read", "clients:read"])).await,
        "VALID"
    );
    assert_eq!(code(json!(["invoices:write"])).await, "INSUFFICIENT_SCOPES");
    assert_eq!(
        code(json!(["invoices:read", "invoices:write"])).await,
        "INSUFFICIENT_SCOPES"
    );
    let v = h
        .verify_body(&json!({ "key": secret, "scopes": ["invoices:write"] }))
        .await;
    assert_eq!(v["valid"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_needs_keys_verify() {
    let h = Harness::start().await;
    let (_, target) = h.create_key(json!({ "name": "t" })).await;
    let (_, reader) = h
        .create_key(json!({ "name": "r", "scopes": ["keys:read", "keys:write"] }))
        .await;
    h.post("/v1/verify", &reader, &json!({ "key": target }))
        .await
        .expect_error(403, "forbidden");
    let (_, verifier) = h
        .create_key(json!({ "name": "v", "scopes": ["keys:verify"] }))
        .await;
    let v = h
        .post("/v1/verify", &verifier, &json!({ "key": target }))
        .await
        .expect(200)
        .json();
    assert_eq!(v["code"], "VALID");
    h.send_auth(
        reqwest::Method::POST,
        "/v1/verify",
        Auth::None,
        Some(&json!({ "key": target })),
    )
    .await
    .expect_error(401, "unauthorized");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_body_is_validated() {
    let h = Harness::start().await;
    let err = h
        .post("/v1/verify", &h.admin, &json!({}))
        .await
        .expect_error(400, "validation_failed");
    assert!(err["message"].as_str().unwrap().contains("key"), "{err}");
    let err = h
        .post(
            "/v1/verify",
            &h.admin,
            &json!({ "key": "x", "apikey": "y" }),
        )
        .await
        .expect_error(400, "validation_failed");
    assert!(err["message"].as_str().unwrap().contains("apikey"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_with_grace_keeps_old_secret_valid_and_rotating() {
    let h = Harness::start().await;
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
    let new = v["secret"].as_str().unwrap();

    let o = h.verify(&old).await;
    assert_eq!(o["code"], "VALID");
    assert_eq!(o["valid"], true);
    assert_eq!(o["rotating"], true);
    assert_eq!(o["key_id"], key["id"]);

    let n = h.verify(new).await;
    assert_eq!(n["code"], "VALID");
    assert_eq!(n["rotating"], false);
    assert_eq!(n["key_id"], key["id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_without_grace_invalidates_old_secret_at_once() {
    let h = Harness::start().await;
    let (key, old) = h.create_key(json!({ "name": "ng" })).await;
    let v = h
        .post(
            &format!("/v1/keys/{}/reset", id_of(&key)),
            &h.admin,
            &json!({}),
        )
        .await
        .expect(200)
        .json();
    let new = v["secret"].as_str().unwrap();
    let o = h.verify(&old).await;
    assert_eq!(o["code"], "NOT_FOUND");
    assert_eq!(o["valid"], false);
    assert!(o["key_id"].is_null());
    assert_eq!(h.verify_code(new).await, "VALID");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_secret_stops_working_when_grace_period_ends() {
    let h = Harness::start().await;
    let (key, old) = h.create_key(json!({ "name": "g1" })).await;
    let v = h
        .post(
            &format!("/v1/keys/{}/reset", id_of(&key)),
            &h.admin,
            &json!({ "grace_seconds": 1 }),
        )
        .await
        .expect(200)
        .json();
    let new = v["secret"].as_str().unwrap().to_string();
    eventually(
        "the rotated-away secret to be NOT_FOUND",
        secs(10),
        async || (h.verify_code(&old).await == "NOT_FOUND").then_some(()),
    )
    .await;
    assert_eq!(h.verify_code(&new).await, "VALID");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_reset_ends_the_first_grace_period() {
    // Only the secret rotated away last keeps a grace period; the one before is gone.
    let h = Harness::start().await;
    let (key, first) = h.create_key(json!({ "name": "g2" })).await;
    let path = format!("/v1/keys/{}/reset", id_of(&key));
    let v = h
        .post(&path, &h.admin, &json!({ "grace_seconds": 3600 }))
        .await
        .expect(200)
        .json();
    let second = v["secret"].as_str().unwrap().to_string();
    let v = h
        .post(&path, &h.admin, &json!({ "grace_seconds": 3600 }))
        .await
        .expect(200)
        .json();
    let third = v["secret"].as_str().unwrap().to_string();
    assert_eq!(h.verify_code(&first).await, "NOT_FOUND");
    let s = h.verify(&second).await;
    assert_eq!(
        (s["code"].as_str(), s["rotating"].as_bool()),
        (Some("VALID"), Some(true))
    );
    assert_eq!(h.verify_code(&third).await, "VALID");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_secret_is_not_revived_by_a_later_grace_rotation() {
    let h = Harness::start().await;
    let (key, first) = h.create_key(json!({ "name": "zombie" })).await;
    let path = format!("/v1/keys/{}/reset", id_of(&key));
    // first -> rotating (grace), then second reset without grace: first and second are dead.
    h.post(&path, &h.admin, &json!({ "grace_seconds": 3600 }))
        .await
        .expect(200);
    h.post(&path, &h.admin, &json!({ "grace_seconds": 0 }))
        .await
        .expect(200);
    assert_eq!(h.verify_code(&first).await, "NOT_FOUND");
    // A third reset with grace gives only the secret it rotates away a grace period.
    h.post(&path, &h.admin, &json!({ "grace_seconds": 3600 }))
        .await
        .expect(200);
    let v = h.verify(&first).await;
    assert_eq!(v["code"], "NOT_FOUND", "a dead secret came back: {v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn successful_verify_records_last_used_at() {
    let h = Harness::start().await;
    let (key, secret) = h.create_key(json!({ "name": "used" })).await;
    assert!(key["last_used_at"].is_null());
    assert_eq!(h.verify_code(&secret).await, "VALID");
    let id = id_of(&key);
    let got = eventually("last_used_at to be set after verify", secs(5), async || {
        let k = h.get_key(&id).await;
        k["last_used_at"].is_string().then_some(k)
    })
    .await;
    assert!(got["last_used_at"].as_str() >= got["created_at"].as_str());
    assert_eq!(got["version"], 1, "a use is not a new version");
}
