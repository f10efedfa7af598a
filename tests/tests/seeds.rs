//! Every operation of the four seed APIs (/work/shared/seeds/README.md), walked through
//! keyledger's own API, plus the seed mistakes keyledger must not copy.

use keyledger_e2e::*;
use reqwest::Method;

// ---- 000: invoicing SaaS, `GET api_key_info` ("who am I") with an `APIKEY` header --------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_000_who_am_i_by_apikey_header() {
    let h = Harness::start().await;
    let (key, secret) = h.create_key(json!({ "name": "Integration API Key" })).await;
    let r = h
        .send_auth(Method::GET, "/v1/me", Auth::ApiKeyHeader(&secret), None)
        .await
        .expect(200);
    // Seed 000 returns the key itself in "who am I"; keyledger does not.
    r.assert_absent(&secret);
    let me = r.json();
    assert_eq!(me["id"], key["id"]);
    assert_eq!(me["name"], "Integration API Key");
    assert_eq!(me["created_at"], key["created_at"]);
    assert!(me.get("last_used_at").is_some(), "{me}");
    let stamp = eventually("who-am-i to report last_used_at", secs(5), async || {
        let me = h
            .send_auth(Method::GET, "/v1/me", Auth::ApiKeyHeader(&secret), None)
            .await
            .expect(200)
            .json();
        me["last_used_at"].as_str().map(str::to_string)
    })
    .await;
    assert!(!stamp.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_000_invalid_apikey_is_401() {
    let h = Harness::start().await;
    h.send_auth(
        Method::GET,
        "/v1/me",
        Auth::ApiKeyHeader("abcdef1234567890"),
        None,
    )
    .await
    .expect_error(401, "unauthorized");
}

// ---- 001: JSON:API settings API: list, get, create (name <= 255, secret once), delete ----------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_001_list_get_create_delete() {
    let h = Harness::start().await;
    // Create: the secret is shown once; name at most 255 characters.
    let (key, secret) = h.create_key(json!({ "name": "Mobile app" })).await;
    h.post("/v1/keys", &h.admin, &json!({ "name": "m".repeat(256) }))
        .await
        .expect_invalid_field("name");

    // List: never the secret; last_used_at is null ("Never") until used.
    let r = h
        .get("/v1/keys?account=default", &h.admin)
        .await
        .expect(200);
    r.assert_absent(&secret);
    let page = r.json();
    let listed = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == key["id"])
        .cloned()
        .expect("created key is listed");
    assert_eq!(listed["name"], "Mobile app");
    assert!(listed["last_used_at"].is_null(), "never used: {listed}");
    assert!(listed["created_at"].is_string() && listed["updated_at"].is_string());

    // Get one: no secret either (seed 001's "get" returns it; keyledger does not).
    let r = h
        .get(&format!("/v1/keys/{}", id_of(&key)), &h.admin)
        .await
        .expect(200);
    r.assert_absent(&secret);
    assert_eq!(r.json()["name"], "Mobile app");

    // Delete.
    h.delete(&format!("/v1/keys/{}", id_of(&key)), &h.admin)
        .await
        .expect(204);
    let page = h
        .get("/v1/keys?account=default", &h.admin)
        .await
        .expect(200)
        .json();
    assert!(
        page["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|k| k["id"] != key["id"])
    );
    assert_eq!(h.verify_code(&secret).await, "REVOKED");
}

// ---- 002: scraping SaaS: create (name, role), reset, get, update, list, delete, is_enabled -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_002_full_lifecycle_with_query_key_opt_in() {
    let h = Harness::start_with(Config {
        allow_query_key: true,
        ..Config::default()
    })
    .await;
    let admin = h.admin.clone();
    let q = Auth::Query(&admin);

    // Create with name and role.
    let v = h
        .send_auth(
            Method::POST,
            "/v1/keys",
            q,
            Some(&json!({ "name": "Key 1", "role": "Owner" })),
        )
        .await
        .expect(201)
        .json();
    let k1 = v["key"].clone();
    let s1 = v["secret"].as_str().unwrap().to_string();
    assert_eq!(k1["role"], "Owner");
    assert_eq!(k1["enabled"], true);
    let (k2, _) = h
        .create_key(json!({ "name": "Key 2", "role": "Owner" }))
        .await;
    let p1 = format!("/v1/keys/{}", id_of(&k1));

    // Reset by id (POST, not GET), returning the new secret.
    let v = h
        .send_auth(Method::POST, &format!("{p1}/reset"), q, None)
        .await
        .expect(200)
        .json();
    let s1b = v["secret"].as_str().unwrap().to_string();
    assert_ne!(s1b, s1);
    assert_eq!(h.verify_code(&s1).await, "NOT_FOUND");
    assert_eq!(h.verify_code(&s1b).await, "VALID");

    // Get by id: no secret (seed 002 returns it).
    let r = h.send_auth(Method::GET, &p1, q, None).await.expect(200);
    r.assert_absent(&s1b);
    assert_eq!(r.json()["name"], "Key 1");

    // Update name and role with PUT; disable (is_enabled).
    let u = h
        .send_auth(
            Method::PUT,
            &p1,
            q,
            Some(&json!({ "name": "updated Key 1", "role": "Owner", "enabled": false })),
        )
        .await
        .expect(200)
        .json();
    assert_eq!(u["name"], "updated Key 1");
    assert_eq!(u["enabled"], false);

    // List with offset/limit/sort/order and a total.
    let page = h
        .send_auth(
            Method::GET,
            "/v1/keys?account=default&role=Owner&offset=0&limit=1&sort=created_at&order=desc",
            q,
            None,
        )
        .await
        .expect(200)
        .json();
    assert_eq!(page["total"], 2);
    assert_eq!(page["data"].as_array().unwrap().len(), 1);
    assert_eq!(page["data"][0]["id"], k2["id"], "newest first");
    let page = h
        .send_auth(
            Method::GET,
            "/v1/keys?account=default&role=Owner&offset=1&limit=1&sort=created_at&order=desc",
            q,
            None,
        )
        .await
        .expect(200)
        .json();
    assert_eq!(page["data"][0]["id"], k1["id"]);
    assert_eq!(page["data"][0]["enabled"], false);

    // Delete.
    h.send_auth(Method::DELETE, &p1, q, None).await.expect(204);
    h.send_auth(Method::GET, &p1, q, None)
        .await
        .expect_error(404, "not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_002_mistake_reset_by_get_does_not_rotate() {
    let h = Harness::start().await;
    let (key, secret) = h.create_key(json!({ "name": "k" })).await;
    let r = h
        .get(&format!("/v1/keys/{}/reset", id_of(&key)), &h.admin)
        .await;
    assert!(
        r.status == 404 || r.status == 405,
        "GET reset must not be a route: {} {}",
        r.status,
        r.body
    );
    r.assert_absent("kl_");
    assert_eq!(h.verify_code(&secret).await, "VALID");
    assert_eq!(h.get_key(&id_of(&key)).await["version"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_002_mistake_query_key_needs_the_opt_in() {
    let h = Harness::start().await;
    h.send_auth(Method::GET, "/v1/keys", Auth::Query(&h.admin), None)
        .await
        .expect_error(401, "unauthorized");
}

// ---- 003: mail SaaS: list with page/size/search/sort/filters, create with allowedIp, name,
// ---- permissions; get; update (allowedIp, name, permissions, permissionType); delete; errors --

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_003_create_get_update_delete_with_ip_allow_list_and_permissions() {
    let h = Harness::start().await;
    // Create with allowedIp, name, permissions.
    let (key, secret) = h
        .create_key(json!({
            "name": "mailer",
            "account": "sub1",
            "allowed_ips": ["123.123.123.123"],
            "scopes": ["mail:send"],
            "role": "full",
        }))
        .await;
    assert_eq!(key["allowed_ips"], json!(["123.123.123.123/32"]));
    let path = format!("/v1/keys/{}", id_of(&key));

    // Get detail.
    let r = h.get(&path, &h.admin).await.expect(200);
    r.assert_absent(&secret);
    let d = r.json();
    assert_eq!(d["scopes"], json!(["mail:send"]));
    assert_eq!(d["account"], "sub1");

    // Verification honours the allow-list and the permissions.
    let ok = h
        .verify_body(&json!({ "key": secret, "ip": "123.123.123.123", "scopes": ["mail:send"] }))
        .await;
    assert_eq!(ok["code"], "VALID");
    let v = h
        .verify_body(&json!({ "key": secret, "ip": "1.1.1.1" }))
        .await;
    assert_eq!(v["code"], "FORBIDDEN_IP");

    // Update allowedIp, name, permissions and permission type (role).
    let u = h
        .put(
            &path,
            &h.admin,
            &json!({
                "name": "mailer v2",
                "allowed_ips": ["1.1.1.0/24"],
                "scopes": ["mail:send", "mail:read"],
                "role": "restricted",
            }),
        )
        .await
        .expect(200)
        .json();
    assert_eq!(u["name"], "mailer v2");
    assert_eq!(u["allowed_ips"], json!(["1.1.1.0/24"]));
    assert_eq!(u["scopes"], json!(["mail:send", "mail:read"]));
    assert_eq!(u["role"], "restricted");
    let v = h
        .verify_body(&json!({ "key": secret, "ip": "1.1.1.1", "scopes": ["mail:read"] }))
        .await;
    assert_eq!(v["code"], "VALID");

    // Delete.
    h.delete(&path, &h.admin).await.expect(204);
    h.get(&path, &h.admin).await.expect_error(404, "not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_003_list_with_paging_search_sort_and_filters() {
    let h = Harness::start().await;
    for (name, acct, role, scopes) in [
        ("Newsletter", "sub1", "full", json!(["mail:send"])),
        (
            "newsroom digest",
            "sub1",
            "restricted",
            json!(["mail:read"]),
        ),
        ("Billing", "sub1", "full", json!(["mail:send"])),
        ("News other tenant", "sub2", "full", json!(["mail:send"])),
    ] {
        h.create_key(json!({ "name": name, "account": acct, "role": role, "scopes": scopes }))
            .await;
    }
    // page=2,size=1 is offset=1,limit=1 here; search is case-insensitive.
    let page = h
        .get(
            "/v1/keys?account=sub1&search=news&sort=name&order=asc&limit=1&offset=1",
            &h.admin,
        )
        .await
        .expect(200)
        .json();
    assert_eq!(page["total"], 2);
    assert_eq!(page["data"].as_array().unwrap().len(), 1);
    assert_eq!(page["data"][0]["name"], "newsroom digest");

    // Filter by sub-account and permission type.
    let page = h
        .get("/v1/keys?account=sub1&role=full", &h.admin)
        .await
        .expect(200)
        .json();
    assert_eq!(page["total"], 2);
    let page = h
        .get("/v1/keys?account=sub1&scope=mail:read", &h.admin)
        .await
        .expect(200)
        .json();
    assert_eq!(page["total"], 1);
    assert_eq!(page["data"][0]["name"], "newsroom digest");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_003_errors_are_400_and_401_with_an_envelope() {
    let h = Harness::start().await;
    let err = h
        .post(
            "/v1/keys",
            &h.admin,
            &json!({ "name": "x", "allowed_ips": ["123.123.123.123,"] }),
        )
        .await
        .expect_error(400, "validation_failed");
    assert!(
        err["message"].as_str().unwrap().starts_with("allowed_ips"),
        "{err}"
    );
    h.get("/v1/keys", "wrong")
        .await
        .expect_error(401, "unauthorized");
}
