//! The handlers of `/v1`.

use crate::AppState;
use crate::dto::*;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{Auth, IfMatch, JsonBody, NoBody, NoQuery, QueryParams};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use keyledger_service::{AsOf, Cursor, ListQuery, SCOPE_VERIFY, SortField, SortValue};
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use uuid::Uuid;

pub const MAX_LIMIT: usize = 1000;
pub const DEFAULT_LIMIT: usize = 50;

fn parse_id(id: &str) -> Result<Uuid, ApiError> {
    // A malformed id cannot name a key: answer as for an absent one.
    Uuid::parse_str(id).map_err(|_| ApiError::not_found())
}

fn etag(version: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{version}\"")).expect("digits are a valid header")
}

/// `Idempotent-Replayed: true` on an answer repeated for an `Idempotency-Key`.
fn replay_header(replayed: bool) -> HeaderMap {
    let mut h = HeaderMap::new();
    if replayed {
        h.insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    h
}

fn with_etag<T: Serialize>(version: u64, body: T) -> impl IntoResponse {
    let mut headers = HeaderMap::new();
    headers.insert(header::ETAG, etag(version));
    (headers, Json(body))
}

/// Create a key. The response is the only time the secret is shown (besides a reset).
#[utoipa::path(post, path = "/v1/keys", tag = "keys", request_body = CreateKeyRequest,
    responses((status = 201, body = KeyWithSecret), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 409, body = ErrorBody, description = "`key_limit_reached`: the account \
               has as many keys as `--max-keys-per-account` allows"),
              (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
              (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_key(
    State(st): State<AppState>,
    auth: Auth,
    _: NoQuery,
    JsonBody(req, idem): JsonBody<CreateKeyRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let (committed, secret) = st.service.create(&auth.actor(), req.into(), idem).await?;
    let mut headers = replay_header(committed.replayed);
    headers.insert(header::ETAG, etag(committed.entry.state.version));
    if let Ok(loc) = HeaderValue::from_str(&format!("/v1/keys/{}", committed.entry.state.id)) {
        headers.insert(header::LOCATION, loc);
    }
    let body = KeyWithSecret {
        key: KeyResource::from(&*committed.entry),
        secret: secret.map(|s| s.expose().to_owned()),
    };
    Ok((StatusCode::CREATED, headers, Json(body)))
}

#[derive(Serialize, Deserialize)]
struct CursorToken {
    sort: String,
    desc: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    t: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    n: Option<String>,
    id: Uuid,
}

fn encode_cursor(sort: &str, desc: bool, c: &Cursor) -> String {
    let (t, n) = match &c.value {
        SortValue::Time(t) => (Some(*t), None),
        SortValue::Text(n) => (None, Some(n.clone())),
    };
    let tok = CursorToken {
        sort: sort.into(),
        desc,
        t,
        n,
        id: c.id,
    };
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(&tok).expect("serializable"))
}

fn decode_cursor(s: &str, sort: &str, desc: bool) -> Result<Cursor, ApiError> {
    let bad =
        || ApiError::validation("cursor: not a cursor of this listing (sort and order must match)");
    let bytes = URL_SAFE_NO_PAD.decode(s).map_err(|_| bad())?;
    let tok: CursorToken = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    if tok.sort != sort || tok.desc != desc {
        return Err(bad());
    }
    let value = match (tok.t, tok.n) {
        (Some(t), None) => SortValue::Time(t),
        (None, Some(n)) => SortValue::Text(n),
        _ => return Err(bad()),
    };
    Ok(Cursor { value, id: tok.id })
}

/// List keys, with filters, sorting and offset or cursor pagination.
#[utoipa::path(get, path = "/v1/keys", tag = "keys", params(ListParams),
    responses((status = 200, body = KeyList), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_keys(
    State(st): State<AppState>,
    auth: Auth,
    QueryParams(p): QueryParams<ListParams>,
) -> Result<Json<KeyList>, ApiError> {
    let limit = p.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::validation(format!(
            "limit: must be between 1 and {MAX_LIMIT}"
        )));
    }
    let sort_name = p.sort.as_deref().unwrap_or("created_at");
    let sort = SortField::parse(sort_name).ok_or_else(|| {
        ApiError::validation("sort: one of created_at, updated_at, name, last_used_at")
    })?;
    let descending = match p.order.as_deref() {
        None | Some("asc") => false,
        Some("desc") => true,
        Some(_) => return Err(ApiError::validation("order: one of asc, desc")),
    };
    if p.cursor.is_some() && p.offset.is_some() {
        return Err(ApiError::validation(
            "cursor: cannot be combined with offset",
        ));
    }
    let cursor = p
        .cursor
        .as_deref()
        .map(|c| decode_cursor(c, sort_name, descending))
        .transpose()?;
    let query = ListQuery {
        account: p.account,
        limit,
        offset: p.offset.unwrap_or(0),
        cursor,
        sort,
        descending,
        search: p.search.map(|s| s.to_lowercase()),
        role: p.role,
        enabled: p.enabled,
        owner: p.owner,
        scope: p.scope,
    };
    let page = st.service.list(&auth.actor(), query)?;
    Ok(Json(KeyList {
        data: page.items.iter().map(|e| KeyResource::from(&**e)).collect(),
        total: page.total,
        next_cursor: page
            .next_cursor
            .map(|c| encode_cursor(sort_name, descending, &c)),
    }))
}

/// One key; `ETag` is its version.
#[utoipa::path(get, path = "/v1/keys/{id}", tag = "keys",
    params(("id" = Uuid, Path, description = "key id"), GetParams),
    responses((status = 200, body = KeyResource), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_key(
    State(st): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    QueryParams(p): QueryParams<GetParams>,
) -> Result<impl IntoResponse, ApiError> {
    let id = parse_id(&id)?;
    if let Some(as_of) = p.as_of {
        let as_of = AsOf::parse(&as_of)
            .ok_or_else(|| ApiError::validation("as_of: a seq or an RFC 3339 date-time"))?;
        let state = st.service.get_as_of(&auth.actor(), id, as_of)?;
        return Ok(with_etag(
            state.version,
            KeyResource::from_state(&state, None),
        ));
    }
    let entry = st.service.get(&auth.actor(), id)?;
    Ok(with_etag(entry.state.version, KeyResource::from(&*entry)))
}

/// Update some fields (PATCH and PUT alike). `If-Match: "<version>"` guards against lost
/// updates.
#[utoipa::path(patch, path = "/v1/keys/{id}", tag = "keys", request_body = UpdateKeyRequest,
    params(("id" = Uuid, Path, description = "key id")),
    responses((status = 200, body = KeyResource), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
              (status = 412, body = ErrorBody), (status = 413, body = ErrorBody),
              (status = 415, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn update_key(
    State(st): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    IfMatch(if_version): IfMatch,
    _: NoQuery,
    JsonBody(req, idem): JsonBody<UpdateKeyRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let c = st
        .service
        .update(&auth.actor(), parse_id(&id)?, req.into(), if_version, idem)
        .await?;
    Ok((
        replay_header(c.replayed),
        with_etag(c.entry.state.version, KeyResource::from(&*c.entry)),
    ))
}

/// Rotate the secret. With `grace_seconds`, the old secret keeps verifying that long.
#[utoipa::path(post, path = "/v1/keys/{id}/reset", tag = "keys", request_body(content = Option<ResetKeyRequest>),
    params(("id" = Uuid, Path, description = "key id")),
    responses((status = 200, body = KeyWithSecret), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
              (status = 412, body = ErrorBody), (status = 413, body = ErrorBody),
              (status = 415, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn reset_key(
    State(st): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    IfMatch(if_version): IfMatch,
    _: NoQuery,
    JsonBody(req, idem): JsonBody<ResetKeyRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let (c, secret) = st
        .service
        .reset(
            &auth.actor(),
            parse_id(&id)?,
            req.grace_seconds,
            if_version,
            idem,
        )
        .await?;
    Ok((
        replay_header(c.replayed),
        with_etag(
            c.entry.state.version,
            KeyWithSecret {
                key: KeyResource::from(&*c.entry),
                secret: secret.map(|s| s.expose().to_owned()),
            },
        ),
    ))
}

/// Revoke a key for good: verification fails at once.
#[utoipa::path(delete, path = "/v1/keys/{id}", tag = "keys",
    params(("id" = Uuid, Path, description = "key id")),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 412, body = ErrorBody),
              (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
              (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn delete_key(
    State(st): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    IfMatch(if_version): IfMatch,
    _: NoQuery,
    NoBody(idem): NoBody,
) -> Result<impl IntoResponse, ApiError> {
    let c = st
        .service
        .delete(&auth.actor(), parse_id(&id)?, if_version, idem)
        .await?;
    Ok((replay_header(c.replayed), StatusCode::NO_CONTENT))
}

/// The calling key ("who am I").
#[utoipa::path(get, path = "/v1/me", tag = "keys",
    responses((status = 200, body = KeyResource), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn me(auth: Auth, _: NoQuery) -> impl IntoResponse {
    with_etag(auth.entry.state.version, KeyResource::from(&*auth.entry))
}

/// Verify a presented key. Always 200; `code` says why a key is not valid.
#[utoipa::path(post, path = "/v1/verify", tag = "verify", request_body = VerifyRequest,
    responses((status = 200, body = VerifyResponse), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 413, body = ErrorBody), (status = 415, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn verify(
    State(st): State<AppState>,
    auth: Auth,
    _: NoQuery,
    JsonBody(req, _): JsonBody<VerifyRequest>,
) -> Result<Response, ApiError> {
    auth.caller.require(SCOPE_VERIFY)?;
    let ip = req
        .ip
        .as_deref()
        .map(|s| s.trim().parse::<IpAddr>())
        .transpose()
        .map_err(|_| ApiError::validation("ip: not an IP address"))?;
    // Another account's key is as absent to a non-admin verifier (and not stamped as used).
    let v = st.service.verify_for(
        &auth.caller,
        &req.key,
        &req.scopes,
        ip,
        keyledger_service::now(),
    );
    st.metrics.verify_outcome(v.code.as_str());
    // Serialized here, while the answer can still borrow from `v`.
    Ok(Json(VerifyResponse::from(&v)).into_response())
}

/// The public keys that sign the event log.
#[utoipa::path(get, path = "/v1/signing-key", tag = "events",
    responses((status = 200, body = SigningKeys)))]
pub async fn signing_key(State(st): State<AppState>, _: NoQuery) -> Json<SigningKeys> {
    Json(SigningKeys {
        keys: st
            .service
            .public_keys()
            .into_iter()
            .map(|k| SigningKeyInfo {
                id: k.id,
                algorithm: k.algorithm,
                public_key: k.public_key,
                created_at: k.created_at,
            })
            .collect(),
    })
}

/// Liveness.
#[utoipa::path(get, path = "/healthz", tag = "ops", responses((status = 200, body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

/// Readiness: the writer accepts commands. With NATS configured, also the publisher's state
/// (commands succeed while NATS is down, so it does not make the service unready).
#[utoipa::path(get, path = "/readyz", tag = "ops",
    responses((status = 200, body = Readiness), (status = 503, body = Readiness)))]
pub async fn readyz(State(st): State<AppState>) -> impl IntoResponse {
    let ready = st.service.is_ready();
    let o = st.service.outbox().snapshot();
    let head = st.service.head();
    let nats = o.enabled.then(|| NatsStatus {
        connected: o.connected,
        published_seq: o.published,
        lag_events: head.saturating_sub(o.published),
        lag_seconds: lag_seconds(o.oldest_pending_ms),
    });
    let body = Readiness {
        status: if ready { "ready" } else { "shutting down" }.into(),
        log_head: head,
        nats,
    };
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body))
}

/// Seconds since the oldest unpublished event occurred (0 when caught up).
pub fn lag_seconds(oldest_pending_ms: i64) -> f64 {
    if oldest_pending_ms == 0 {
        return 0.0;
    }
    let now = keyledger_service::now().millis();
    ((now - oldest_pending_ms).max(0) as f64) / 1000.0
}

pub async fn not_found_fallback() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}
