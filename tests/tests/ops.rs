//! Operational endpoints that need no key: health, readiness, Prometheus metrics, OpenAPI.

use keyledger_e2e::*;
use reqwest::Method;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_and_readyz_answer_200_without_auth() {
    let h = Harness::start().await;
    for path in ["/healthz", "/readyz"] {
        h.send_auth(Method::GET, path, Auth::None, None)
            .await
            .expect(200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_expose_http_request_counter() {
    let h = Harness::start().await;
    h.get("/v1/me", &h.admin).await.expect(200);
    let r = h
        .send_auth(Method::GET, "/metrics", Auth::None, None)
        .await
        .expect(200);
    let ct = r.content_type();
    assert!(
        ct.starts_with("text/plain") || ct.starts_with("application/openmetrics-text"),
        "a Prometheus exposition format: {ct}"
    );
    assert!(
        r.body.contains(
            r#"keyledger_http_requests_total{method="GET",route="/v1/me",status="200"} 1"#
        ),
        "the /v1/me request, labelled with its route: {}",
        r.body
    );
    r.assert_absent(&h.admin);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_labels_cannot_be_grown_by_clients() {
    let h = Harness::start().await;
    // Made-up methods and paths each land in one fixed label, not a new time series.
    for (method, path) in [
        ("BREW", "/v1/keys"),
        ("WHEN", "/v1/keys"),
        ("GET", "/v9/x1"),
    ] {
        let m = Method::from_bytes(method.as_bytes()).unwrap();
        let r = h.send_auth(m, path, Auth::None, None).await;
        assert!(
            r.status == 404 || r.status == 405,
            "{method} {path}: {}",
            r.status
        );
    }
    let r = h
        .send_auth(Method::GET, "/metrics", Auth::None, None)
        .await
        .expect(200);
    for absent in ["BREW", "WHEN", "/v9/x1"] {
        assert!(!r.body.contains(absent), "{absent} in {}", r.body);
    }
    assert!(
        r.body
            .contains(r#"method="other",route="/v1/keys",status="405"} 2"#),
        "{}",
        r.body
    );
    assert!(
        r.body
            .contains(r#"method="GET",route="unmatched",status="404"} 1"#),
        "{}",
        r.body
    );
}

/// The served OpenAPI document, fetched without credentials.
async fn openapi(h: &Harness) -> serde_json::Value {
    h.send_auth(Method::GET, "/openapi.json", Auth::None, None)
        .await
        .expect(200)
        .json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_describes_the_key_api() {
    let h = Harness::start().await;
    let doc = openapi(&h).await;
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
        "openapi version: {}",
        doc["openapi"]
    );
    let paths = doc["paths"].as_object().expect("paths object");
    for p in [
        "/v1/keys",
        "/v1/verify",
        "/v1/me",
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
    ] {
        assert!(
            paths.contains_key(p),
            "{p} missing from {:?}",
            paths.keys().collect::<Vec<_>>()
        );
    }
}

/// Found by schemathesis against the served document: every answer the API can give is
/// declared (408 everywhere, 400 on `/v1`, 401 and 429 where a key is needed, 503 where
/// storage is read or written), and the declared limits are the ones the server enforces.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_declares_rate_limits_put_and_the_enforced_bounds() {
    let h = Harness::start().await;
    let doc = openapi(&h).await;
    let mut authenticated = 0;
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            let secured = op["security"].as_array().is_some_and(|s| !s.is_empty());
            let codes = op["responses"].as_object().expect("responses");
            assert!(codes.contains_key("408"), "{method} {path} lacks 408");
            if path.starts_with("/v1/") {
                assert!(codes.contains_key("400"), "{method} {path} lacks 400");
            }
            if secured {
                assert!(codes.contains_key("401"), "{method} {path} lacks 401");
                authenticated += 1;
                assert!(codes.contains_key("429"), "{method} {path} lacks 429");
            }
            if secured && (method != "get" || path.contains("events") || path == "/v1/keys/{id}") {
                assert!(codes.contains_key("503"), "{method} {path} lacks 503");
            }
        }
    }
    assert!(
        authenticated >= 10,
        "only {authenticated} secured operations"
    );

    let key = &doc["paths"]["/v1/keys/{id}"];
    assert_eq!(key["put"]["requestBody"], key["patch"]["requestBody"]);
    assert_eq!(key["put"]["operationId"], "replace_key");

    // Every command declares the headers it honours, and every secured operation the three
    // ways to present a key.
    let headers = |op: &serde_json::Value| -> Vec<String> {
        op["parameters"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["in"] == "header")
            .map(|p| p["name"].as_str().unwrap().to_owned())
            .collect()
    };
    let paths = &doc["paths"];
    assert_eq!(headers(&paths["/v1/keys"]["post"]), ["Idempotency-Key"]);
    for op in [
        &key["patch"],
        &key["put"],
        &key["delete"],
        &paths["/v1/keys/{id}/reset"]["post"],
    ] {
        assert_eq!(headers(op), ["If-Match", "Idempotency-Key"], "{op}");
    }
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["x_api_key"]["name"], "X-API-Key");
    assert_eq!(schemes["apikey_header"]["name"], "APIKEY");
    let me = paths["/v1/me"]["get"]["security"].to_string();
    for scheme in ["bearer", "x_api_key", "apikey_header"] {
        assert!(me.contains(scheme), "{me}");
    }

    let limit = doc["paths"]["/v1/keys"]["get"]["parameters"]
        .as_array()
        .expect("parameters")
        .iter()
        .find(|p| p["name"] == "limit")
        .expect("limit parameter");
    assert_eq!(limit["schema"]["minimum"], 1);
    assert_eq!(limit["schema"]["maximum"], 1000);
    let create = &doc["components"]["schemas"]["CreateKeyRequest"]["properties"];
    assert_eq!(create["name"]["maxLength"], 255);
    assert_eq!(create["prefix"]["pattern"], "^[a-z0-9]{1,16}$");
    // The bounds are the server's: one past them is refused.
    h.get("/v1/keys?limit=0", &h.admin)
        .await
        .expect_error(400, "validation_failed");
    h.get("/v1/keys?limit=1000", &h.admin).await.expect(200);
}

/// schemathesis warned that PATCH and PUT "mostly rejected generated data": `If-Match` had no
/// pattern. The documented pattern admits the values the server accepts (versions up to 19
/// digits) and no others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_if_match_pattern_admits_exactly_what_the_server_accepts() {
    let h = Harness::start().await;
    let doc = openapi(&h).await;
    let (k, _) = h.create_key(serde_json::json!({ "name": "guarded" })).await;
    let path = format!("/v1/keys/{}", id_of(&k));
    for (method, verb) in [("patch", Method::PATCH), ("put", Method::PUT)] {
        let param = doc["paths"]["/v1/keys/{id}"][method]["parameters"]
            .as_array()
            .expect("parameters")
            .iter()
            .find(|p| p["name"] == "If-Match")
            .expect("If-Match parameter")
            .clone();
        let pattern = param["schema"]["pattern"].as_str().expect("a pattern");
        let re = regex::Regex::new(pattern).unwrap();
        for value in [
            "\"1\"",
            "W/\"1\"",
            "1",
            "*",
            "\"99\"",
            "abc",
            "\"x\"",
            "-1",
            "1.0",
            "\"\"",
            "W/",
            "99999999999999999999999",
        ] {
            let r = h
                .request(verb.clone(), &path)
                .bearer_auth(&h.admin)
                .header("If-Match", value)
                .json(&serde_json::json!({}))
                .send()
                .await
                .unwrap();
            let accepted = r.status() != 400;
            assert_eq!(
                re.is_match(value),
                accepted,
                "{method} If-Match {value}: pattern vs server ({})",
                r.status()
            );
        }
    }
}

/// A scope the document admits is one the server accepts, and the other way round (but for the
/// few invisible characters outside the BMP, which the pattern cannot name for every regex
/// dialect; the server refuses them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scope_schema_admits_exactly_what_the_server_accepts() {
    let h = Harness::start().await;
    let doc = openapi(&h).await;
    let scope = &doc["components"]["schemas"]["Scope"];
    let create = &doc["components"]["schemas"]["CreateKeyRequest"]["properties"]["scopes"];
    assert_eq!(create["items"]["$ref"], "#/components/schemas/Scope");
    let re = regex::Regex::new(scope["pattern"].as_str().expect("a pattern")).unwrap();
    let (min, max) = (scope["minLength"].as_u64(), scope["maxLength"].as_u64());
    for value in [
        "invoices:write".to_string(),
        "é".repeat(128),
        "é".repeat(129),
        String::new(),
        "a b".into(),
        " a".into(),
        "a\u{1}".into(),
        "a\u{85}".into(),
        "a\u{3000}".into(),
        "a\u{7f}".into(),
        "admin\u{200b}".into(),
        "a\u{feff}b".into(),
        "\u{2060}".into(),
        "admin\u{2800}".into(),
        "ü:ß".into(),
    ] {
        let chars = value.chars().count() as u64;
        let admitted = re.is_match(&value)
            && min.is_some_and(|m| chars >= m)
            && max.is_some_and(|m| chars <= m);
        let r = h
            .post(
                "/v1/keys",
                &h.admin,
                &serde_json::json!({ "name": "s", "scopes": [value] }),
            )
            .await;
        assert_eq!(admitted, r.status == 201, "{value:?}: {}", r.body);
    }
}

/// The same for names, owners and roles: no control character or line break, not only
/// whitespace or invisible characters, and owners and roles no invisible character at all; on
/// both request schemas (but for the invisible characters outside the BMP, as for scopes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_name_and_label_patterns_admit_exactly_what_the_server_accepts() {
    let h = Harness::start().await;
    let doc = openapi(&h).await;
    let schemas = &doc["components"]["schemas"];
    let pattern = |schema: &str, field: &str| {
        schemas[schema]["properties"][field]["pattern"]
            .as_str()
            .unwrap_or_else(|| panic!("{schema}.{field} has no pattern"))
            .to_owned()
    };
    let (name, label) = (
        pattern("CreateKeyRequest", "name"),
        pattern("CreateKeyRequest", "owner"),
    );
    assert_ne!(name, label);
    for (schema, field, expected) in [
        ("CreateKeyRequest", "role", &label),
        ("UpdateKeyRequest", "name", &name),
        ("UpdateKeyRequest", "owner", &label),
        ("UpdateKeyRequest", "role", &label),
    ] {
        assert_eq!(&pattern(schema, field), expected, "{schema}.{field}");
    }
    for (field, pattern) in [("name", &name), ("owner", &label), ("role", &label)] {
        let re = regex::Regex::new(pattern).unwrap();
        for value in [
            "billing gateway",
            " a ",
            "é",
            "a\u{200b}b",
            "own\u{200b}er",
            "",
            "   ",
            "\u{200b}",
            "\u{2800}",
            " \u{feff}\u{3164} ",
            "a\u{1}",
            "a\tb",
            "a\u{85}",
            "a\u{2028}b",
            "a\u{2029}",
        ] {
            let mut body = serde_json::json!({ "name": "n" });
            body[field] = value.into();
            let r = h.post("/v1/keys", &h.admin, &body).await;
            let admitted = re.is_match(value);
            assert_eq!(admitted, r.status == 201, "{field} {value:?}: {}", r.body);
            if !admitted {
                r.expect_invalid_field(field);
            }
        }
    }
    // Invisible characters outside the BMP (tags, U+1BCA0…) cannot be named in a pattern for
    // every regex dialect, so the patterns admit them: the server refuses them as it does the
    // BMP's, in owners and roles anywhere, in names when there is nothing else.
    for (field, value, status) in [
        ("owner", "a\u{e0001}b", 400),
        ("role", "x\u{1bca0}", 400),
        ("name", "\u{e0020}\u{1d173}", 400),
        ("name", "a\u{e0001}b", 201),
    ] {
        let mut body = serde_json::json!({ "name": "n" });
        body[field] = value.into();
        let r = h.post("/v1/keys", &h.admin, &body).await;
        assert_eq!(r.status, status, "{field} {value:?}: {}", r.body);
    }
}

/// schemathesis warned on reset: its body was declared `null | ResetKeyRequest`, and a `null`
/// body is refused. The declaration now says what the server takes: no body, or the object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_declares_an_optional_object_body_and_takes_exactly_that() {
    let h = Harness::start().await;
    let doc = openapi(&h).await;
    let body = &doc["paths"]["/v1/keys/{id}/reset"]["post"]["requestBody"];
    assert_eq!(
        body["content"]["application/json"]["schema"],
        serde_json::json!({ "$ref": "#/components/schemas/ResetKeyRequest" }),
        "{body}"
    );
    assert_ne!(body["required"], true, "{body}");
    let (k, _) = h.create_key(serde_json::json!({ "name": "rotated" })).await;
    let path = format!("/v1/keys/{}/reset", id_of(&k));
    h.send(Method::POST, &path, &h.admin, None)
        .await
        .expect(200);
    h.send_text(Method::POST, &path, &h.admin, "{}")
        .await
        .expect(200);
    let err = h
        .send_text(Method::POST, &path, &h.admin, "null")
        .await
        .expect_error(400, "validation_failed");
    assert_eq!(err["message"], "body: must be a JSON object");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_route_is_404_with_envelope() {
    let h = Harness::start().await;
    h.get("/v1/nothing-here", &h.admin)
        .await
        .expect_error(404, "not_found");
}
