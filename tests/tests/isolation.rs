//! Tenant isolation: a non-admin key acts only inside its own account (other accounts' keys
//! answer 404 as if absent) and never grants scopes it does not hold (403).

use keyledger_e2e::*;
use reqwest::Method;

/// An admin-made non-admin key in `acme` with read+write, and a key in `globex`.
async fn tenants(h: &Harness) -> (String, Value, String) {
    let (_, acme) = h
        .create_key(json!({ "name": "acme ops", "account": "acme",
                            "scopes": ["keys:read", "keys:write"] }))
        .await;
    let (globex_key, globex_secret) = h
        .create_key(json!({ "name": "globex svc", "account": "globex" }))
        .await;
    (acme, globex_key, globex_secret)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_accounts_keys_answer_404_to_every_operation() {
    let h = Harness::start().await;
    let (acme, globex_key, globex_secret) = tenants(&h).await;
    let path = format!("/v1/keys/{}", id_of(&globex_key));

    h.get(&path, &acme).await.expect_error(404, "not_found");
    h.patch(&path, &acme, &json!({ "name": "pwned" }))
        .await
        .expect_error(404, "not_found");
    h.put(&path, &acme, &json!({ "name": "pwned" }))
        .await
        .expect_error(404, "not_found");
    let r = h.post(&format!("{path}/reset"), &acme, &json!({})).await;
    r.assert_absent("\"secret\"");
    r.expect_error(404, "not_found");
    h.delete(&path, &acme).await.expect_error(404, "not_found");

    // Nothing happened to the globex key.
    let k = h.get_key(&id_of(&globex_key)).await;
    assert_eq!(k["version"], 1);
    assert_eq!(k["name"], "globex svc");
    assert_eq!(h.verify_code(&globex_secret).await, "VALID");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_admin_creates_in_its_own_account_only() {
    let h = Harness::start().await;
    let (acme, _, _) = tenants(&h).await;
    let (k, _) = h.create_key_as(&acme, json!({ "name": "child" })).await;
    assert_eq!(
        k["account"], "acme",
        "a created key lands in the caller's account"
    );
    let (k, _) = h
        .create_key_as(&acme, json!({ "name": "explicit", "account": "acme" }))
        .await;
    assert_eq!(k["account"], "acme");
    h.post(
        "/v1/keys",
        &acme,
        &json!({ "name": "escape", "account": "globex" }),
    )
    .await
    .expect_error(403, "forbidden");
    h.post(
        "/v1/keys",
        &acme,
        &json!({ "name": "escape", "account": "default" }),
    )
    .await
    .expect_error(403, "forbidden");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_admin_cannot_grant_scopes_it_lacks() {
    let h = Harness::start().await;
    let (acme, _, _) = tenants(&h).await;
    for scopes in [
        json!(["admin"]),
        json!(["keys:verify"]),
        json!(["keys:read", "events:read"]),
    ] {
        h.post("/v1/keys", &acme, &json!({ "name": "x", "scopes": scopes }))
            .await
            .expect_error(403, "forbidden");
    }
    // Held scopes may be passed on.
    let (child, _) = h
        .create_key_as(&acme, json!({ "name": "reader", "scopes": ["keys:read"] }))
        .await;
    assert_eq!(child["scopes"], json!(["keys:read"]));

    // Nor escalate an existing key by update.
    let path = format!("/v1/keys/{}", id_of(&child));
    h.patch(&path, &acme, &json!({ "scopes": ["keys:read", "admin"] }))
        .await
        .expect_error(403, "forbidden");
    h.put(&path, &acme, &json!({ "scopes": ["keys:verify"] }))
        .await
        .expect_error(403, "forbidden");
    assert_eq!(
        h.get_key(&id_of(&child)).await["scopes"],
        json!(["keys:read"])
    );
    h.patch(
        &path,
        &acme,
        &json!({ "scopes": ["keys:read", "keys:write"] }),
    )
    .await
    .expect(200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_admin_lists_only_its_own_account() {
    let h = Harness::start().await;
    let (acme, globex_key, _) = tenants(&h).await;
    h.create_key_as(&acme, json!({ "name": "child" })).await;
    let page = h.get("/v1/keys?limit=1000", &acme).await.expect(200).json();
    let data = page["data"].as_array().unwrap();
    assert_eq!(data.len(), 2, "acme ops + child: {page}");
    assert_eq!(page["total"], 2);
    for k in data {
        assert_eq!(k["account"], "acme");
        assert_ne!(k["id"], globex_key["id"]);
    }
    h.get("/v1/keys?account=acme", &acme).await.expect(200);
    h.get("/v1/keys?account=globex", &acme)
        .await
        .expect_error(403, "forbidden");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_admin_manages_keys_of_its_own_account() {
    let h = Harness::start().await;
    let (acme, _, _) = tenants(&h).await;
    let (child, child_secret) = h.create_key_as(&acme, json!({ "name": "child" })).await;
    let path = format!("/v1/keys/{}", id_of(&child));
    h.get(&path, &acme).await.expect(200);
    let k = h
        .patch(&path, &acme, &json!({ "name": "child2" }))
        .await
        .expect(200)
        .json();
    assert_eq!(k["name"], "child2");
    let v = h
        .post(&format!("{path}/reset"), &acme, &json!({}))
        .await
        .expect(200)
        .json();
    assert!(v["secret"].as_str().is_some_and(|s| s != child_secret));
    h.delete(&path, &acme).await.expect(204);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_acts_across_accounts() {
    let h = Harness::start().await;
    let (_, globex_key, _) = tenants(&h).await;
    let path = format!("/v1/keys/{}", id_of(&globex_key));
    h.get(&path, &h.admin).await.expect(200);
    h.patch(&path, &h.admin, &json!({ "role": "member" }))
        .await
        .expect(200);
    let page = h
        .get("/v1/keys?account=globex", &h.admin)
        .await
        .expect(200)
        .json();
    assert_eq!(page["total"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_admin_verifier_does_not_see_other_accounts_keys() {
    // SPEC §2: "A non-admin key acts only inside its own account (another account's key
    // answers ... as if absent)"; for verify, "absent" is NOT_FOUND.
    let h = Harness::start().await;
    let (_, globex_key, globex_secret) = tenants(&h).await;
    let (_, acme_verifier) = h
        .create_key(json!({ "name": "gate", "account": "acme", "scopes": ["keys:verify"] }))
        .await;
    let (_, acme_target) = h
        .create_key(json!({ "name": "t", "account": "acme" }))
        .await;
    let ok = h
        .post("/v1/verify", &acme_verifier, &json!({ "key": acme_target }))
        .await
        .expect(200)
        .json();
    assert_eq!(ok["code"], "VALID");
    let v = h
        .post(
            "/v1/verify",
            &acme_verifier,
            &json!({ "key": globex_secret }),
        )
        .await
        .expect(200)
        .json();
    assert_eq!(v["code"], "NOT_FOUND", "{v}");
    assert_eq!(v["valid"], false);
    assert_ne!(v["key_id"], globex_key["id"]);
    // Nor is the other account's key stamped as used: once a VALID verification made after
    // that one shows, the globex key still has no `last_used_at`.
    let acme_id = h
        .post("/v1/verify", &acme_verifier, &json!({ "key": acme_target }))
        .await
        .expect(200)
        .json()["key_id"]
        .as_str()
        .unwrap()
        .to_owned();
    eventually("the acme key's last_used_at", secs(5), async || {
        h.get_key(&acme_id).await["last_used_at"]
            .is_string()
            .then_some(())
    })
    .await;
    assert_eq!(
        h.get_key(&id_of(&globex_key)).await["last_used_at"],
        Value::Null
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_admin_cannot_change_a_key_holding_scopes_it_lacks() {
    // A key manages only keys within its own powers: otherwise a `keys:write` key could
    // disable, revoke or rename its way around a more powerful key (docs/API.md).
    let h = Harness::start().await;
    let (acme, _, _) = tenants(&h).await;
    let (gate, _) = h
        .create_key(json!({ "name": "gate", "account": "acme", "scopes": ["keys:verify"] }))
        .await;
    let path = format!("/v1/keys/{}", id_of(&gate));
    h.patch(&path, &acme, &json!({ "name": "gate 2" }))
        .await
        .expect_error(403, "forbidden");
    h.patch(&path, &acme, &json!({ "enabled": false }))
        .await
        .expect_error(403, "forbidden");
    let k = h.get_key(&id_of(&gate)).await;
    assert_eq!(k["name"], "gate");
    assert_eq!(k["enabled"], true);
}

/// A stale `If-Match` is refused first, with 412, whoever asks: a non-admin key is not told
/// 409 (revoked) or 403 (beyond its powers) where an admin key is told 412.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_if_match_answers_412_to_admin_and_non_admin_keys_alike() {
    let h = Harness::start().await;
    let (acme, _, _) = tenants(&h).await;
    let (open, _) = h
        .create_key(json!({ "name": "open", "account": "acme", "scopes": ["keys:read"] }))
        .await;
    let (gate, _) = h
        .create_key(json!({ "name": "gate", "account": "acme", "scopes": ["keys:verify"] }))
        .await;
    let patch_at_version_7 = |key: &str, target: &Value| {
        let path = format!("/v1/keys/{}", id_of(target));
        let key = key.to_owned();
        let h = &h;
        async move {
            let json = [("content-type", "application/json"), ("if-match", "\"7\"")];
            h.send_raw(
                Method::PATCH,
                &path,
                &key,
                &json,
                br#"{"name":"x"}"#.to_vec(),
            )
            .await
        }
    };
    // Beyond the caller's powers (it lacks keys:verify): 412 before 403.
    for caller in [&h.admin, &acme] {
        patch_at_version_7(caller, &gate)
            .await
            .expect_error(412, "precondition_failed");
    }
    // Revoked: 412 before 409.
    h.delete(&format!("/v1/keys/{}", id_of(&open)), &h.admin)
        .await
        .expect(204);
    for caller in [&h.admin, &acme] {
        patch_at_version_7(caller, &open)
            .await
            .expect_error(412, "precondition_failed");
    }
    assert_eq!(h.get_key(&id_of(&gate)).await["name"], "gate");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_admin_cannot_obtain_a_more_privileged_secret_by_reset() {
    // SPEC §2: a non-admin key "can never grant scopes it does not hold itself (403)".
    // Resetting a key returns its new secret, so resetting a key with scopes the caller lacks
    // (here: the admin key, in the same account) would hand those scopes to the caller.
    let h = Harness::start().await;
    let (_, ops) = h
        .create_key(json!({ "name": "default ops", "scopes": ["keys:read", "keys:write"] }))
        .await;
    let admin_id = h.get("/v1/me", &h.admin).await.expect(200).json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = h
        .post(&format!("/v1/keys/{admin_id}/reset"), &ops, &json!({}))
        .await;
    r.assert_absent("\"secret\"");
    r.expect_error(403, "forbidden");
    h.get("/v1/me", &h.admin).await.expect(200);
}

/// As with scopes, a non-admin key cannot lift the limits it has itself: a key that may be used
/// only from some addresses, or only until some time, cannot widen them on itself or on other
/// keys, nor obtain (by a reset) the secret of a key without them; keys it creates without
/// limits get its own (SECURITY.md: a leaked key acts only "from addresses its `allowed_ips`
/// admit, until it expires").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_admin_cannot_set_wider_allowed_ips_or_a_later_expiry_than_its_own() {
    let h = Harness::start().await;
    let until = rfc3339_in(3600);
    let (me, ops) = h
        .create_key(json!({ "name": "limited ops", "account": "acme",
                            "scopes": ["keys:read", "keys:write"],
                            "allowed_ips": ["127.0.0.1"], "expires_at": until }))
        .await;
    let own = format!("/v1/keys/{}", id_of(&me));
    for body in [
        json!({ "allowed_ips": [] }),
        json!({ "allowed_ips": ["127.0.0.0/8"] }),
        json!({ "expires_at": null }),
        json!({ "expires_at": rfc3339_in(7200) }),
    ] {
        let field = body.as_object().unwrap().keys().next().unwrap().clone();
        let err = h
            .patch(&own, &ops, &body)
            .await
            .expect_error(403, "forbidden");
        assert!(
            err["message"].as_str().unwrap().starts_with(&field),
            "{err}"
        );
        // On create, an empty list or `null` is no limit given: the caller's own applies.
        if !(body[&field].is_null() || body[&field] == json!([])) {
            h.post(
                "/v1/keys",
                &ops,
                &json!({ "name": "wider", field.clone(): body[&field] }),
            )
            .await
            .expect_error(403, "forbidden");
        }
    }
    let k = h.get_key(&id_of(&me)).await;
    assert_eq!(k["allowed_ips"], json!(["127.0.0.1/32"]));
    assert_eq!(k["expires_at"], until.as_str());

    // A key it creates without limits gets its own; within them it may set what it likes.
    let child = h
        .post("/v1/keys", &ops, &json!({ "name": "child" }))
        .await
        .expect(201)
        .json()["key"]
        .clone();
    assert_eq!(child["allowed_ips"], json!(["127.0.0.1/32"]));
    assert_eq!(child["expires_at"], until.as_str());

    // A sibling an admin made without limits: renaming it is harmless, resetting it would
    // hand over an unlimited secret.
    let (sibling, _) = h
        .create_key(json!({ "name": "sibling", "account": "acme",
                            "scopes": ["keys:read"] }))
        .await;
    let sibling = format!("/v1/keys/{}", id_of(&sibling));
    h.patch(&sibling, &ops, &json!({ "name": "renamed" }))
        .await
        .expect(200);
    let r = h.post(&format!("{sibling}/reset"), &ops, &json!({})).await;
    r.assert_absent("\"secret\"");
    r.expect_error(403, "forbidden");
    // Nor may it act through it: give it more scopes, or enable it again once disabled.
    h.patch(
        &sibling,
        &ops,
        &json!({ "scopes": ["keys:read", "keys:write"] }),
    )
    .await
    .expect_error(403, "forbidden");
    h.patch(&sibling, &ops, &json!({ "enabled": false }))
        .await
        .expect(200);
    h.patch(&sibling, &ops, &json!({ "enabled": true }))
        .await
        .expect_error(403, "forbidden");
    for body in [
        json!({ "role": "owner" }),
        json!({ "owner": "cus_other" }),
        json!({ "metadata": { "plan": "enterprise" } }),
    ] {
        h.patch(&sibling, &ops, &body)
            .await
            .expect_error(403, "forbidden");
    }
    // Repeating the values it has (as a PUT does) is no change, its unlimited address list
    // and expiry included: a form sends back what it read.
    h.put(
        &sibling,
        &ops,
        &json!({ "name": "renamed again", "role": null, "owner": null, "metadata": {},
                 "allowed_ips": [], "expires_at": null }),
    )
    .await
    .expect(200);
    // An expiry is no way around it: a key an admin made to expire soon, but usable from
    // anywhere, may not be given a later one (nor none), which would bring it back.
    let (brief, _) = h
        .create_key(
            json!({ "name": "brief", "account": "acme", "scopes": ["keys:read"],
                            "expires_at": rfc3339_in(600) }),
        )
        .await;
    let brief = format!("/v1/keys/{}", id_of(&brief));
    for body in [
        json!({ "expires_at": null }),
        json!({ "expires_at": rfc3339_in(1200) }),
    ] {
        h.patch(&brief, &ops, &body)
            .await
            .expect_error(403, "forbidden");
    }
    h.patch(&brief, &ops, &json!({ "expires_at": rfc3339_in(300) }))
        .await
        .expect(200);
    // A key that does not exist answers 404 before any of these checks, as it would to anyone.
    let missing = format!("/v1/keys/{}", uuid_v7_like());
    h.patch(&missing, &ops, &json!({ "allowed_ips": ["0.0.0.0/0"] }))
        .await
        .expect_error(404, "not_found");
    h.post(
        &format!("/v1/keys/{}/reset", id_of(&child)),
        &ops,
        &json!({}),
    )
    .await
    .expect(200);
    // It may always narrow its own limits.
    h.patch(&own, &ops, &json!({ "expires_at": rfc3339_in(1800) }))
        .await
        .expect(200);
}

/// Who holds only a secret that was rotated away (leaked, say) must not lock out the holder of
/// the new one, directly or through a key it makes: in its grace period the old secret may read
/// and verify, but not change keys. A retry of its own reset still gets the first answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_in_its_grace_period_may_read_but_not_change_keys() {
    let h = Harness::start().await;
    let (key, old) = h
        .create_key(json!({ "name": "ops", "scopes": ["keys:read", "keys:write"] }))
        .await;
    let path = format!("/v1/keys/{}", id_of(&key));
    let reset = |secret: &str| {
        h.request(reqwest::Method::POST, &format!("{path}/reset"))
            .bearer_auth(secret.to_owned())
            .header("Idempotency-Key", "rotate-1")
            .json(&json!({ "grace_seconds": 3600 }))
            .send()
    };
    let first = reset(&old).await.unwrap();
    assert_eq!(first.status(), 200);
    let new = first.json::<Value>().await.unwrap()["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    let retry = reset(&old).await.unwrap();
    assert_eq!(retry.status(), 200, "a retry is answered as the first");
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    h.get("/v1/me", &old).await.expect(200);
    h.post(&format!("{path}/reset"), &old, &json!({}))
        .await
        .expect_error(403, "forbidden");
    h.patch(&path, &old, &json!({ "allowed_ips": ["192.0.2.1"] }))
        .await
        .expect_error(403, "forbidden");
    h.delete(&path, &old).await.expect_error(403, "forbidden");
    h.post("/v1/keys", &old, &json!({ "name": "outlives the grace" }))
        .await
        .expect_error(403, "forbidden");
    h.get("/v1/keys", &old).await.expect(200);
    assert_eq!(h.verify_code(&new).await, "VALID");
    h.post(&format!("{path}/reset"), &new, &json!({}))
        .await
        .expect(200);
}

/// An id that no key has.
fn uuid_v7_like() -> String {
    "01a20f85-390d-704a-ab3d-9f2131ac8237".into()
}
