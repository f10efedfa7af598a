//! # keyledger-server
//!
//! keyledger's HTTP API on axum. The only crate that knows HTTP and the JSON wire format.
//!
//! - [`router`]: every route of SPEC §3 under `/v1`, plus `/healthz`, `/readyz`, `/metrics`
//!   and `/openapi.json` (generated from the handlers by utoipa, see [`ApiDoc`]).
//! - [`extract`]: authentication (`Authorization: Bearer`, `X-API-Key`, `APIKEY`, and
//!   `?apikey=` only when allowed), JSON bodies and query strings that reject unknown fields
//!   naming them, `If-Match`.
//! - [`error::ApiError`]: the error envelope `{"error": {"code", "message", "request_id"}}`.
//! - [`metrics::Metrics`]: Prometheus counters and histograms.
//!
//! **API boundary:** handlers translate between the wire format ([`dto`]) and
//! `keyledger-service`; no domain rule lives here.

pub mod dto;
pub mod error;
pub mod events;
pub mod extract;
pub mod handlers;
pub mod limit;
pub mod metrics;
pub mod serve;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use error::{ApiError, REQUEST_ID};
use keyledger_service::Service;
use std::sync::Arc;
use std::time::Instant;
use utoipa::OpenApi;

/// Largest accepted request body.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The server's state, as every handler and extractor receives it. A request clones it three
/// times (metrics middleware, `Auth`, handler); as one `Arc`, each clone is one shared count,
/// not one per member.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What [`AppState`] shares: the service, metrics, limits and settings of a running server.
pub struct Shared {
    pub service: Service,
    pub metrics: Arc<metrics::Metrics>,
    pub allow_query_key: bool,
    /// Peers whose `X-Forwarded-For` names the client (see [`extract::client_ip`]).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Becomes `true` when the server shuts down: ends the live event streams.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    pub limits: RateLimits,
}

/// The rate limiters of a running server.
#[derive(Debug)]
pub struct RateLimits {
    /// Failed authentications per client IP.
    pub failed_auth: limit::RateLimiter<std::net::IpAddr>,
    /// Requests per API key, when configured.
    pub per_key: Option<limit::RateLimiter<uuid::Uuid>>,
}

#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Accept `?apikey=` (keys in URLs end up in logs; off by default).
    pub allow_query_key: bool,
    /// Failed authentications an IP may make in a burst; then one more per second.
    pub failed_auth_burst: u32,
    /// Requests per second each API key may make (burst: twice that); `None`: unlimited.
    pub key_rate_limit: Option<u32>,
    /// Longest time to receive a request and produce its response head.
    pub request_timeout: std::time::Duration,
    /// Reverse proxies in front of the server: for requests from these addresses the client
    /// address (for the failed-authentication limit and a key's `allowed_ips`) is taken from
    /// `X-Forwarded-For`. Empty: the header is ignored. Taken in canonical form
    /// ([`keyledger_core::model::canonical_net`]): an IPv4-mapped net matches IPv4 peers.
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            allow_query_key: false,
            failed_auth_burst: 20,
            key_rate_limit: None,
            request_timeout: std::time::Duration::from_secs(30),
            trusted_proxies: Vec::new(),
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "keyledger", description = "Event-sourced API-key lifecycle service"),
    paths(
        handlers::create_key, handlers::list_keys, handlers::get_key, handlers::update_key,
        handlers::reset_key, handlers::delete_key, handlers::me, handlers::verify,
        handlers::signing_key, handlers::healthz, handlers::readyz, render_metrics, openapi,
        events::list_events, events::key_events, events::stream_events
    ),
    modifiers(&Authentication, &CommonResponses, &CommandHeaders, &OptionalResetBody, &TextPatterns),
    tags((name = "keys"), (name = "verify"), (name = "events"), (name = "ops"))
)]
pub struct ApiDoc;

/// The three ways to present a key (`?apikey=` is left out: it is off unless
/// `--allow-query-key`): every operation that takes `bearer` takes the headers too.
struct Authentication;

impl utoipa::Modify for Authentication {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{
            ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
        };
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        let headers = [("x_api_key", "X-API-Key"), ("apikey_header", "APIKEY")];
        for (scheme, header) in headers {
            components.add_security_scheme(
                scheme,
                SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new(header))),
            );
        }
        for item in openapi.paths.paths.values_mut() {
            for (_, op) in operations_mut(item) {
                if let Some(security) = op.security.as_mut()
                    && !security.is_empty()
                {
                    security.extend(
                        headers
                            .map(|(scheme, _)| SecurityRequirement::new::<_, _, &str>(scheme, [])),
                    );
                }
            }
        }
    }
}

/// The headers every command takes: `Idempotency-Key` (create, update, reset, delete) and
/// `If-Match` (all but create), with the syntax the server accepts.
struct CommandHeaders;

impl utoipa::Modify for CommandHeaders {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::path::{ParameterBuilder, ParameterIn};
        use utoipa::openapi::{ObjectBuilder, Required, schema::Type};
        let header = |name: &str, pattern: &str, description: &str| {
            ParameterBuilder::new()
                .name(name)
                .parameter_in(ParameterIn::Header)
                .required(Required::False)
                .description(Some(description))
                .schema(Some(
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .pattern(Some(pattern)),
                ))
                .build()
        };
        let idempotency = header(
            "Idempotency-Key",
            "^[\\x21-\\x7e]{1,255}$",
            "1 to 255 visible ASCII characters; a repeat of the same request with the same key \
             returns the first result (24 h)",
        );
        let if_match = header(
            "If-Match",
            r#"^(\*|(W/)?"?[0-9]{1,19}"?)$"#,
            "the expected version, quoted as in `ETag` (`\"3\"`; also `W/\"3\"` or `3`); `*` for any",
        );
        let paths = &mut openapi.paths.paths;
        let key = paths.get_mut("/v1/keys/{id}");
        let key_ops = key
            .into_iter()
            .flat_map(|i| [&mut i.patch, &mut i.put, &mut i.delete]);
        for op in key_ops.flatten() {
            let params = op.parameters.get_or_insert_with(Vec::new);
            params.extend([if_match.clone(), idempotency.clone()]);
        }
        if let Some(op) = paths
            .get_mut("/v1/keys/{id}/reset")
            .and_then(|i| i.post.as_mut())
        {
            let params = op.parameters.get_or_insert_with(Vec::new);
            params.extend([if_match.clone(), idempotency.clone()]);
        }
        if let Some(op) = paths.get_mut("/v1/keys").and_then(|i| i.post.as_mut()) {
            op.parameters.get_or_insert_with(Vec::new).push(idempotency);
        }
    }
}

/// Reset's body may be left out (no grace period), which the handler's `Option` declares; but it
/// also makes the schema `null | ResetKeyRequest`, and a `null` body is refused like on every
/// other endpoint: a body, when sent, is a JSON object.
struct OptionalResetBody;

impl utoipa::Modify for OptionalResetBody {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let body = openapi
            .paths
            .paths
            .get_mut("/v1/keys/{id}/reset")
            .and_then(|i| i.post.as_mut())
            .and_then(|op| op.request_body.as_mut());
        for content in body.into_iter().flat_map(|b| b.content.values_mut()) {
            content.schema = Some(utoipa::openapi::Ref::from_schema_name("ResetKeyRequest").into());
        }
    }
}

/// The rules for names ([`dto::text_pattern`]) and for owners and roles ([`dto::label_pattern`])
/// on both request schemas.
struct TextPatterns;

impl utoipa::Modify for TextPatterns {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{RefOr, Schema};
        let Some(components) = openapi.components.as_mut() else {
            return;
        };
        let (text, label) = (dto::text_pattern(), dto::label_pattern());
        for name in ["CreateKeyRequest", "UpdateKeyRequest"] {
            let Some(RefOr::T(Schema::Object(request))) = components.schemas.get_mut(name) else {
                continue;
            };
            for (field, pattern) in [("name", &text), ("owner", &label), ("role", &label)] {
                if let Some(RefOr::T(Schema::Object(schema))) = request.properties.get_mut(field) {
                    schema.pattern = Some(pattern.clone());
                }
            }
        }
    }
}

/// The operations of a path item that the API uses, with their methods.
fn operations_mut(
    item: &mut utoipa::openapi::PathItem,
) -> impl Iterator<
    Item = (
        utoipa::openapi::HttpMethod,
        &mut utoipa::openapi::path::Operation,
    ),
> {
    use utoipa::openapi::HttpMethod;
    [
        (HttpMethod::Get, &mut item.get),
        (HttpMethod::Post, &mut item.post),
        (HttpMethod::Put, &mut item.put),
        (HttpMethod::Patch, &mut item.patch),
        (HttpMethod::Delete, &mut item.delete),
    ]
    .into_iter()
    .filter_map(|(method, op)| Some((method, op.as_mut()?)))
}

/// What the handlers' annotations leave out because every operation of a kind shares it:
/// 408 everywhere (the request time limit), 400 on every `/v1` operation (unknown query
/// parameters), 429 on every authenticated operation (the failed-authentication limit and
/// `--key-rate-limit` apply to all of them), 503 where storage is touched (commands, the event
/// log and `?as_of=`; other key reads are served from memory), and `PUT /v1/keys/{id}`, which
/// is PATCH under another method.
struct CommonResponses;

impl utoipa::Modify for CommonResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{HttpMethod, Ref, ResponseBuilder, header::HeaderBuilder};
        let error = |description: &str, retry_after: bool| {
            let mut r = ResponseBuilder::new().description(description).content(
                "application/json",
                utoipa::openapi::ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorBody")))
                    .build(),
            );
            if retry_after {
                r = r.header(
                    "Retry-After",
                    HeaderBuilder::new()
                        .schema(
                            utoipa::openapi::ObjectBuilder::new()
                                .schema_type(utoipa::openapi::schema::Type::Integer),
                        )
                        .description(Some("seconds to wait"))
                        .build(),
                );
            }
            r.build()
        };
        for (path, item) in openapi.paths.paths.iter_mut() {
            if path == "/v1/keys/{id}" && item.put.is_none() {
                item.put = item.patch.clone().map(|mut op| {
                    op.operation_id = Some("replace_key".into());
                    op.summary =
                        Some("Update some fields (PUT is PATCH under another name)".into());
                    op
                });
            }
            let storage = path.starts_with("/v1/events")
                || path.ends_with("/events")
                || path == "/v1/keys/{id}";
            let v1 = path.starts_with("/v1/");
            for (method, op) in operations_mut(item) {
                let responses = &mut op.responses.responses;
                responses.entry("408".into()).or_insert_with(|| {
                    error(
                        "the request did not arrive, or could not be answered, in time",
                        false,
                    )
                    .into()
                });
                if v1 {
                    responses.entry("400".into()).or_insert_with(|| {
                        error(
                            "invalid request; the message names the parameter or field",
                            false,
                        )
                        .into()
                    });
                }
                if op.security.as_ref().is_none_or(Vec::is_empty) {
                    continue;
                }
                responses
                    .entry("429".into())
                    .or_insert_with(|| error("rate limited", true).into());
                if storage || !matches!(method, HttpMethod::Get) {
                    responses
                        .entry("503".into())
                        .or_insert_with(|| error("storage unavailable; retry", true).into());
                }
            }
        }
    }
}

/// The full router with its state.
pub fn router(
    service: Service,
    config: ServerConfig,
    metrics: Arc<metrics::Metrics>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> Router {
    let limits = RateLimits {
        failed_auth: limit::RateLimiter::new(config.failed_auth_burst, 1.0),
        per_key: config
            .key_rate_limit
            .map(|rps| limit::RateLimiter::new(rps.saturating_mul(2), f64::from(rps))),
    };
    let state = AppState(Arc::new(Shared {
        service,
        metrics,
        allow_query_key: config.allow_query_key,
        // As `--trusted-proxy` parses them, also when given in code: `::ffff:10.0.0.0/104` must
        // match the IPv4 peers `client_ip` compares.
        trusted_proxies: config
            .trusted_proxies
            .into_iter()
            .map(keyledger_core::model::canonical_net)
            .collect(),
        shutdown,
        limits,
    }));
    let request_timeout = config.request_timeout;
    Router::new()
        .route(
            "/v1/keys",
            post(handlers::create_key).get(handlers::list_keys),
        )
        .route(
            "/v1/keys/{id}",
            get(handlers::get_key)
                .patch(handlers::update_key)
                .put(handlers::update_key)
                .delete(handlers::delete_key),
        )
        .route("/v1/keys/{id}/reset", post(handlers::reset_key))
        .route("/v1/keys/{id}/events", get(events::key_events))
        .route("/v1/events", get(events::list_events))
        .route("/v1/events/stream", get(events::stream_events))
        .route("/v1/me", get(handlers::me))
        .route("/v1/verify", post(handlers::verify))
        .route("/v1/signing-key", get(handlers::signing_key))
        .route("/healthz", get(handlers::healthz))
        .route("/readyz", get(handlers::readyz))
        .route("/metrics", get(render_metrics))
        .route("/openapi.json", get(openapi))
        .fallback(handlers::not_found_fallback)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn(move |req: Request, next: Next| {
            time_limit(request_timeout, req, next)
        }))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// A request whose body trickles in too slowly, or whose handler hangs, gets 408.
async fn time_limit(limit: std::time::Duration, req: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            "the request took too long to arrive or to answer",
        )
        .into_response(),
    }
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this endpoint",
    )
}

/// Metrics in the Prometheus / OpenMetrics text format (see API.md for the series).
#[utoipa::path(get, path = "/metrics", tag = "ops", operation_id = "metrics",
    responses((status = 200, description = "OpenMetrics text",
               content_type = "application/openmetrics-text", body = String)))]
async fn render_metrics(State(st): State<AppState>) -> impl IntoResponse {
    let head = st.service.head();
    let o = st.service.outbox().snapshot();
    let nats = o.enabled.then(|| {
        (
            o.connected,
            head.saturating_sub(o.published),
            handlers::lag_seconds(o.oldest_pending_ms),
        )
    });
    let body = st.metrics.render(st.service.key_count(), head, nats);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "ops",
    responses((status = 200, description = "the OpenAPI document", body = Object)))]
async fn openapi() -> impl IntoResponse {
    axum::Json(ApiDoc::openapi())
}

/// Every route the router serves, as request metrics name it (`&'static`, so that labelling
/// a request allocates nothing). A unit test checks it against the OpenAPI document's paths.
const ROUTES: &[&str] = &[
    "/v1/keys",
    "/v1/keys/{id}",
    "/v1/keys/{id}/reset",
    "/v1/keys/{id}/events",
    "/v1/events",
    "/v1/events/stream",
    "/v1/me",
    "/v1/verify",
    "/v1/signing-key",
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
];

/// The metrics label of a request's matched route: `unmatched` for the 404 fallback.
fn route_label(matched: Option<&str>) -> &'static str {
    matched.map_or("unmatched", |p| {
        ROUTES.iter().find(|r| **r == p).copied().unwrap_or("other")
    })
}

fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Gives each request an id (`X-Request-Id`, and `request_id` in errors), and records its
/// route, status and latency (5xx at `warn`, the rest at `debug`). Never logs headers or bodies
/// (they carry keys).
async fn observe(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = uuid::Uuid::now_v7();
    let method = method_label(req.method());
    let route = route_label(
        req.extensions()
            .get::<MatchedPath>()
            .map(MatchedPath::as_str),
    );
    let mut resp = REQUEST_ID.scope(id, next.run(req)).await;
    let status = resp.status().as_u16();
    let secs = started.elapsed().as_secs_f64();
    st.metrics.request(method, route, status, secs);
    let micros = (secs * 1e6) as u64;
    // Server-side failures are logged at the default level, so that an id a user quotes can be
    // found; every other request only at `debug` (a gateway verifies at up to ~100k/s).
    if status >= 500 {
        tracing::warn!(%method, %route, status, micros, request_id = %id, "request failed");
    } else {
        tracing::debug!(%method, %route, status, micros, request_id = %id, "request");
    }
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let text = id.hyphenated().encode_lower(&mut text);
    if let Ok(v) = HeaderValue::from_str(text) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

pub use serve::{Limits, load_tls, serve};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_path_is_labelled_as_itself() {
        let doc = ApiDoc::openapi();
        assert!(doc.paths.paths.len() >= 10);
        for path in doc.paths.paths.keys() {
            assert_eq!(route_label(Some(path)), path);
        }
        assert_eq!(route_label(Some("/metrics")), "/metrics");
        assert_eq!(route_label(Some("/v2/nothing")), "other");
        assert_eq!(route_label(None), "unmatched");
    }
}
