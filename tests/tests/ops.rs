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
        r.body.contains("keyledger_http_requests_total"),
        "{}",
        r.body
    );
    r.assert_absent(&h.admin);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_describes_the_key_api() {
    let h = Harness::start().await;
    let doc = h
        .send_auth(Method::GET, "/openapi.json", Auth::None, None)
        .await
        .expect(200)
        .json();
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
        "openapi version: {}",
        doc["openapi"]
    );
    let paths = doc["paths"].as_object().expect("paths object");
    for p in ["/v1/keys", "/v1/verify", "/v1/me"] {
        assert!(
            paths.contains_key(p),
            "{p} missing from {:?}",
            paths.keys().collect::<Vec<_>>()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_route_is_404_with_envelope() {
    let h = Harness::start().await;
    h.get("/v1/nothing-here", &h.admin)
        .await
        .expect_error(404, "not_found");
}
