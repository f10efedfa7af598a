//! Every endpoint against every kind of caller: no key (401), a key missing the endpoint's
//! scope (403), and a fully scoped key of another account (404, or 403 for account filters).

use keyledger_e2e::*;
use reqwest::Method;

const ALL_BUT_ADMIN: [&str; 4] = ["keys:read", "keys:write", "keys:verify", "events:read"];

struct Endpoint {
    method: Method,
    /// `{id}` is replaced by the target key's id.
    path: &'static str,
    scope: &'static str,
    body: Option<Value>,
}

fn endpoints() -> Vec<Endpoint> {
    let e = |method, path, scope, body| Endpoint {
        method,
        path,
        scope,
        body,
    };
    vec![
        e(
            Method::POST,
            "/v1/keys",
            "keys:write",
            Some(json!({ "name": "n" })),
        ),
        e(Method::GET, "/v1/keys", "keys:read", None),
        e(Method::GET, "/v1/keys/{id}", "keys:read", None),
        e(Method::GET, "/v1/keys/{id}?as_of=1", "keys:read", None),
        e(
            Method::PATCH,
            "/v1/keys/{id}",
            "keys:write",
            Some(json!({ "name": "x" })),
        ),
        e(
            Method::PUT,
            "/v1/keys/{id}",
            "keys:write",
            Some(json!({ "name": "x" })),
        ),
        e(
            Method::POST,
            "/v1/keys/{id}/reset",
            "keys:write",
            Some(json!({})),
        ),
        e(Method::DELETE, "/v1/keys/{id}", "keys:write", None),
        e(Method::GET, "/v1/keys/{id}/events", "events:read", None),
        e(
            Method::POST,
            "/v1/verify",
            "keys:verify",
            Some(json!({ "key": "kl_x" })),
        ),
        e(Method::GET, "/v1/events", "events:read", None),
        e(Method::GET, "/v1/events/stream", "events:read", None),
    ]
}

async fn call(h: &Harness, ep: &Endpoint, id: &str, key: Option<&str>) -> u16 {
    let mut req = h.request(ep.method.clone(), &ep.path.replace("{id}", id));
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    if let Some(b) = &ep.body {
        req = req.json(b);
    }
    req.send().await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_requires_a_key_and_its_scope() {
    let h = Harness::start().await;
    let (target, _) = h.create_key(json!({ "name": "target" })).await;
    let id = id_of(&target);
    for ep in endpoints() {
        assert_eq!(
            call(&h, &ep, &id, None).await,
            401,
            "{} {}",
            ep.method,
            ep.path
        );
        let scopes: Vec<&str> = ALL_BUT_ADMIN
            .into_iter()
            .filter(|s| *s != ep.scope)
            .collect();
        let (_, lacking) = h
            .create_key(json!({ "name": "lacking", "scopes": scopes }))
            .await;
        assert_eq!(
            call(&h, &ep, &id, Some(&lacking)).await,
            403,
            "{} {} without {}",
            ep.method,
            ep.path,
            ep.scope
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_accounts_key_is_absent_on_every_endpoint() {
    let h = Harness::start().await;
    let (_, acme) = h
        .create_key(json!({ "name": "acme", "account": "acme", "scopes": ALL_BUT_ADMIN }))
        .await;
    let (globex, globex_secret) = h
        .create_key(json!({ "name": "g", "account": "globex" }))
        .await;
    let id = id_of(&globex);
    for ep in endpoints().into_iter().filter(|e| e.path.contains("{id}")) {
        assert_eq!(
            call(&h, &ep, &id, Some(&acme)).await,
            404,
            "{} {}",
            ep.method,
            ep.path
        );
    }
    for path in [
        "/v1/keys?account=globex",
        "/v1/events?account=globex",
        "/v1/events/stream?account=globex",
    ] {
        h.get(path, &acme).await.expect_error(403, "forbidden");
    }
    let events = h
        .get("/v1/events?limit=1000", &acme)
        .await
        .expect(200)
        .json();
    assert!(
        events["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["account"] == "acme"),
        "{events}"
    );
    let v = h
        .post("/v1/verify", &acme, &json!({ "key": globex_secret }))
        .await
        .expect(200)
        .json();
    assert_eq!(v["code"], "NOT_FOUND");
    // The globex key is untouched.
    assert_eq!(h.get_key(&id).await["version"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_endpoints_need_no_key() {
    let h = Harness::start().await;
    for path in [
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
        "/v1/signing-key",
    ] {
        let s = h.request(Method::GET, path).send().await.unwrap().status();
        assert_eq!(s, 200, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_query_parameter_is_400_on_every_api_endpoint_and_changes_nothing() {
    let h = Harness::start().await;
    let (target, secret) = h.create_key(json!({ "name": "target" })).await;
    let id = id_of(&target);
    let head = |h: &Harness| {
        let r = h.request(Method::GET, "/readyz").send();
        async move { r.await.unwrap().json::<Value>().await.unwrap()["log_head"].clone() }
    };
    let before = (h.get_key(&id).await, head(&h).await);
    let mut eps = endpoints();
    eps.push(Endpoint {
        method: Method::GET,
        path: "/v1/me",
        scope: "",
        body: None,
    });
    eps.push(Endpoint {
        method: Method::GET,
        path: "/v1/signing-key",
        scope: "",
        body: None,
    });
    for ep in eps {
        let path = ep.path.replace("{id}", &id);
        let sep = if path.contains('?') { '&' } else { '?' };
        let err = h
            .send(
                ep.method.clone(),
                &format!("{path}{sep}grace_seconds=3600"),
                &h.admin,
                ep.body.as_ref(),
            )
            .await
            .expect_error(400, "validation_failed");
        assert!(
            err["message"].as_str().unwrap().contains("grace_seconds"),
            "{} {path}: {err}",
            ep.method
        );
    }
    // Nothing was written: no rotation without its grace period, no deletion, no new key.
    assert_eq!((h.get_key(&id).await, head(&h).await), before);
    assert_eq!(h.verify_code(&secret).await, "VALID");
}
