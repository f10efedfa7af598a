//! Request extractors that answer bad input with the error envelope, naming the field.

use crate::AppState;
use crate::error::ApiError;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use keyledger_service::{Actor, Caller, Idempotency, KeyEntry};
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::sync::Arc;

/// A JSON body: `Content-Type` must be JSON (415), size within the limit (413), syntax valid
/// (400 `invalid_json`), fields known and well-typed (400 `validation_failed`, naming the path).
/// An empty body deserializes from `{}`. Carries the request's `Idempotency-Key`, if any,
/// fingerprinted over method, path and the canonical body.
pub struct JsonBody<T>(pub T, pub Option<Idempotency>);

pub const MAX_IDEMPOTENCY_KEY: usize = 255;

/// Reads `Idempotency-Key` (1..=255 visible ASCII characters) and fingerprints the request.
fn idempotency(
    headers: &axum::http::HeaderMap,
    method: &axum::http::Method,
    path: &str,
    canonical_body: &[u8],
) -> Result<Option<Idempotency>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = v
        .to_str()
        .ok()
        .filter(|k| {
            (1..=MAX_IDEMPOTENCY_KEY).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_graphic())
        })
        .ok_or_else(|| {
            ApiError::validation("Idempotency-Key: 1 to 255 visible ASCII characters")
        })?;
    let mut h = Sha256::new();
    h.update(method.as_str().as_bytes());
    h.update(b" ");
    h.update(path.as_bytes());
    h.update(b"\n");
    h.update(canonical_body);
    Ok(Some(Idempotency {
        key: key.to_owned(),
        fingerprint: hex::encode(h.finalize()),
    }))
}

/// The `Idempotency-Key` of a request without a body (DELETE).
pub struct IdempotencyKey(pub Option<Idempotency>);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        idempotency(&parts.headers, &parts.method, parts.uri.path(), b"").map(IdempotencyKey)
    }
}

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let (method, path) = (req.method().clone(), req.uri().path().to_owned());
        let wants_idempotency = req.headers().contains_key("idempotency-key");
        let headers = req.headers().clone();
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|ct| {
                let mime = ct
                    .split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase();
                mime == "application/json" || mime.ends_with("+json")
            });
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    "request body exceeds 64 KiB",
                )
            } else {
                ApiError::validation("could not read the request body")
            }
        })?;
        let fingerprint = |canonical: &[u8]| {
            if wants_idempotency {
                idempotency(&headers, &method, &path, canonical)
            } else {
                Ok(None)
            }
        };
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(JsonBody(parse_body(b"")?, fingerprint(b"{}")?));
        }
        if is_json != Some(true) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "Content-Type must be application/json",
            ));
        }
        let value = parse_body(&bytes)?;
        let canonical = if wants_idempotency {
            // Same JSON, same fingerprint: key order and whitespace do not matter.
            let v: serde_json::Value = serde_json::from_slice(&bytes)
                .map_err(|_| ApiError::validation("body is not valid JSON"))?;
            serde_json::to_vec(&v).unwrap_or_default()
        } else {
            Vec::new()
        };
        Ok(JsonBody(value, fingerprint(&canonical)?))
    }
}

/// Parses a request body as the server does: a blank body reads as `{}`; anything but a JSON
/// object is refused (serde would otherwise fill a struct from an array, by position); syntax
/// errors are `invalid_json`; unknown, missing or ill-typed fields are `validation_failed`,
/// naming the field.
pub fn parse_body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        None => return parse(b"{}"),
        Some(b'{') => {}
        Some(_) => {
            return Err(
                match serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
                    Ok(_) => ApiError::validation("body: must be a JSON object"),
                    Err(e) => ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "invalid_json",
                        format!("body is not valid JSON: {e}"),
                    ),
                },
            );
        }
    }
    parse(bytes)
}

fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                format!("body is not valid JSON: {inner}"),
            )
        } else {
            ApiError::validation(field_message(&path, &inner.to_string()))
        }
    })
}

/// `path: message`, where serde's "at line.. column.." suffix is dropped. Unknown-field errors
/// already name the field.
fn field_message(path: &str, message: &str) -> String {
    let message = message
        .split(" at line ")
        .next()
        .unwrap_or(message)
        .to_string();
    if path.is_empty() || path == "." || message.starts_with("unknown field") {
        message
    } else {
        format!("{path}: {message}")
    }
}

/// Query parameters: unknown ones and ill-typed values are 400s naming the parameter.
pub struct QueryParams<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        // `apikey` is the credential (see `Auth`), never a parameter of the endpoint.
        let q: String = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(
                form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes())
                    .filter(|(k, _)| k != "apikey"),
            )
            .finish();
        let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(q.as_bytes()));
        serde_path_to_error::deserialize(de)
            .map(QueryParams)
            .map_err(|e| {
                let path = e.path().to_string();
                ApiError::validation(field_message(&path, &e.into_inner().to_string()))
            })
    }
}

/// `If-Match: "<version>"` (also accepted unquoted or weak `W/"n"`); `*` means any.
pub struct IfMatch(pub Option<u64>);

impl<S: Send + Sync> FromRequestParts<S> for IfMatch {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let Some(v) = parts.headers.get(header::IF_MATCH) else {
            return Ok(IfMatch(None));
        };
        let s = v.to_str().unwrap_or("").trim();
        if s == "*" {
            return Ok(IfMatch(None));
        }
        let s = s.trim_start_matches("W/").trim_matches('"');
        s.parse()
            .map(|n| IfMatch(Some(n)))
            .map_err(|_| ApiError::validation("If-Match: expected a quoted version, e.g. \"3\""))
    }
}

/// The authenticated caller: the key from `Authorization: Bearer`, `X-API-Key`, `APIKEY`, or
/// (only with `--allow-query-key`) `?apikey=`.
pub struct Auth {
    pub caller: Caller,
    pub entry: Arc<KeyEntry>,
}

impl Auth {
    pub fn actor(&self) -> Actor {
        Actor::Key(self.caller.clone())
    }
}

pub(crate) fn presented_key(parts: &Parts, allow_query: bool) -> Option<String> {
    let h = &parts.headers;
    if let Some(v) = h.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        let mut it = v.trim().splitn(2, ' ');
        if let (Some(scheme), Some(token)) = (it.next(), it.next())
            && scheme.eq_ignore_ascii_case("bearer")
        {
            return Some(token.trim().to_owned());
        }
    }
    for name in ["x-api-key", "apikey"] {
        if let Some(v) = h.get(name).and_then(|v| v.to_str().ok()) {
            return Some(v.trim().to_owned());
        }
    }
    if allow_query {
        let q = parts.uri.query().unwrap_or("");
        return form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "apikey")
            .map(|(_, v)| v.into_owned());
    }
    None
}

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let key = presented_key(parts, state.allow_query_key);
        let ip = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        let now = std::time::Instant::now();
        // A client that keeps presenting bad keys is slowed down before any lookup.
        if let Some(ip) = ip
            && let Some(wait) = state.limits.failed_auth.blocked(&ip, now)
        {
            return Err(ApiError::rate_limited(
                "too many failed authentication attempts from this address",
                wait,
            ));
        }
        let (caller, entry) = match state.service.authenticate(key.as_deref(), ip) {
            Ok(ok) => ok,
            Err(e) => {
                if let (Some(ip), true) = (ip, key.is_some()) {
                    let _ = state.limits.failed_auth.take(&ip, now);
                }
                return Err(e.into());
            }
        };
        if let Some(per_key) = &state.limits.per_key
            && let Err(wait) = per_key.take(&caller.key_id, now)
        {
            return Err(ApiError::rate_limited(
                "rate limit of this API key exceeded",
                wait,
            ));
        }
        Ok(Auth { caller, entry })
    }
}
