//! Request extractors that answer bad input with the error envelope, naming the field.

use crate::AppState;
use crate::error::ApiError;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use keyledger_core::model::canonical_ip;
use keyledger_service::{Actor, Caller, Idempotency, KeyEntry};
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// A JSON body: `Content-Type` must be JSON (415), size within the limit (413), syntax valid
/// (400 `invalid_json`), fields known and well-typed (400 `validation_failed`, naming the path).
/// An empty body deserializes from `{}`. Carries the request's `Idempotency-Key`, if any,
/// fingerprinted over method, path and the canonical body.
pub struct JsonBody<T>(pub T, pub Option<Idempotency>);

pub const MAX_IDEMPOTENCY_KEY: usize = 255;
const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// Checks an `Idempotency-Key` value (1..=255 visible ASCII characters) and fingerprints the
/// request.
fn idempotency(
    v: &HeaderValue,
    method: &axum::http::Method,
    path: &str,
    canonical_body: &[u8],
) -> Result<Idempotency, ApiError> {
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
    Ok(Idempotency {
        key: key.to_owned(),
        fingerprint: hex::encode(h.finalize()),
    })
}

/// The one value of `values` (a header's, a query parameter's), named `label`. Sent more than
/// once it is ambiguous (one proxy or framework reads the first, another the last), so it is
/// refused rather than read one way.
fn at_most_one<T>(mut values: impl Iterator<Item = T>, label: &str) -> Result<Option<T>, ApiError> {
    let first = values.next();
    if values.next().is_some() {
        return Err(ApiError::validation(format!(
            "{label}: sent more than once; send it once"
        )));
    }
    Ok(first)
}

/// Header `name`'s value, sent at most once ([`at_most_one`]).
fn single<'a>(
    headers: &'a HeaderMap,
    name: &'static str,
    label: &str,
) -> Result<Option<&'a HeaderValue>, ApiError> {
    at_most_one(headers.get_all(name).iter(), label)
}

/// A command without a body (DELETE): the body must be blank or `{}`, so that a field sent to
/// it is refused as on every other endpoint rather than ignored. Carries the request's
/// `Idempotency-Key`, fingerprinted over method and path.
pub struct NoBody(pub Option<Idempotency>);

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NoFields {}

impl FromRequest<AppState> for NoBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let (mut parts, body) = req.into_parts();
        // Taken out, so that the body check below does not fingerprint it a second time.
        let idem = single(&parts.headers, IDEMPOTENCY_KEY, "Idempotency-Key")?
            .map(|v| idempotency(v, &parts.method, parts.uri.path(), b""))
            .transpose()?;
        parts.headers.remove(IDEMPOTENCY_KEY);
        let JsonBody(NoFields {}, _) =
            JsonBody::from_request(Request::from_parts(parts, body), state).await?;
        Ok(NoBody(idem))
    }
}

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        // What the fingerprint needs, copied only when there is a key (the body consumes `req`).
        let idem = single(req.headers(), IDEMPOTENCY_KEY, "Idempotency-Key")?
            .map(|v| (v.clone(), req.method().clone(), req.uri().path().to_owned()));
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(is_json_media_type);
        // Bodies are read as sent: a compressed one would otherwise be refused as invalid JSON.
        let encoded = req
            .headers()
            .get_all(header::CONTENT_ENCODING)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
            .any(|coding| !coding.is_empty() && !coding.eq_ignore_ascii_case(b"identity"));
        let too_large = || {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "request body exceeds 64 KiB",
            )
        };
        // A declared length beyond the limit is refused before waiting for a body that would be
        // refused anyway (or that never comes).
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > crate::MAX_BODY_BYTES as u64) {
            return Err(too_large());
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                too_large()
            } else {
                ApiError::validation("could not read the request body")
            }
        })?;
        let fingerprint = |canonical: &[u8]| {
            idem.as_ref()
                .map(|(v, method, path)| idempotency(v, method, path, canonical))
                .transpose()
        };
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(JsonBody(parse_body(b"")?, fingerprint(b"{}")?));
        }
        if encoded {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "Content-Encoding is not supported: send the body uncompressed",
            ));
        }
        if is_json != Some(true) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "Content-Type must be application/json (UTF-8)",
            ));
        }
        let value = parse_body(&bytes)?;
        let canonical = if idem.is_some() {
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

/// `application/json` or a `type/prefix+json` type, in any case; a `charset` parameter, if
/// any, must be UTF-8 (JSON is UTF-8), other parameters are ignored. Compared without
/// lowercasing into a new string: every body passes here.
fn is_json_media_type(content_type: &str) -> bool {
    let mut parts = content_type.split(';');
    let mime = parts.next().unwrap_or("").trim();
    let Some((kind, subtype)) = mime.split_once('/') else {
        return false;
    };
    let json = mime.eq_ignore_ascii_case("application/json")
        || (!kind.is_empty()
            && subtype.len().checked_sub(5).is_some_and(|at| {
                at > 0 && subtype.as_bytes()[at..].eq_ignore_ascii_case(b"+json")
            }));
    let utf8 = parts.all(|param| match param.split_once('=') {
        Some((name, value)) if name.trim().eq_ignore_ascii_case("charset") => {
            let value = value.trim().trim_matches('"');
            value.eq_ignore_ascii_case("utf-8") || value.eq_ignore_ascii_case("utf8")
        }
        _ => true,
    });
    json && utf8
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
    // The plain parse is the fast path; only a refused body is parsed again to name the field.
    if let Ok(value) = serde_json::from_slice(bytes) {
        return Ok(value);
    }
    let invalid_json = |inner: serde_json::Error| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("body is not valid JSON: {inner}"),
        )
    };
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            invalid_json(inner)
        } else {
            ApiError::validation(field_message(&path, &inner.to_string()))
        }
    })?;
    // Anything after the object but whitespace (`{...} junk`) is not JSON either.
    de.end().map_err(invalid_json)?;
    Ok(value)
}

/// `path: message`, where serde's "at line.. column.." suffix is dropped and Rust's names for
/// numbers are said in words. Unknown-field errors already name the field.
fn field_message(path: &str, message: &str) -> String {
    let message = message.split(" at line ").next().unwrap_or(message);
    let message = plain_numbers(message);
    if path.is_empty() || path == "." || message.starts_with("unknown field") {
        message
    } else {
        format!("{path}: {message}")
    }
}

/// serde and `str::parse` name Rust's integer types (`expected u64`) or say nothing of what was
/// wanted (`invalid digit found in string`, from a query parameter).
fn plain_numbers(message: &str) -> String {
    const WANTED: &str = "a non-negative integer";
    for rust in ["u64", "usize", "u32", "u16", "u8"] {
        if let Some(head) = message.strip_suffix(rust)
            && head.ends_with("expected ")
        {
            return format!("{head}{WANTED}");
        }
    }
    match message {
        "invalid digit found in string" | "cannot parse integer from empty string" => {
            format!("expected {WANTED}")
        }
        "number too large to fit in target type" => format!("expected {WANTED} below 2^64"),
        _ => message.to_owned(),
    }
}

/// The query's parameters of the endpoint itself: `apikey` is the credential (see `Auth`),
/// never one of them.
fn endpoint_params(parts: &Parts) -> impl Iterator<Item = (Cow<'_, str>, Cow<'_, str>)> {
    form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes())
        .filter(|(k, _)| k != "apikey")
}

/// Query parameters: unknown ones and ill-typed values are 400s naming the parameter.
pub struct QueryParams<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let q: String = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(endpoint_params(parts))
            .finish();
        let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(q.as_bytes()));
        serde_path_to_error::deserialize(de)
            .map(QueryParams)
            .map_err(|e| {
                let path = e.path().to_string();
                let message = field_message(&path, &e.into_inner().to_string());
                // serde's word is for a body's fields; here the caller sent a query parameter.
                ApiError::validation(message.replacen(
                    "unknown field",
                    "unknown query parameter",
                    1,
                ))
            })
    }
}

/// For API endpoints that take no query parameters: any parameter (but the `apikey`
/// credential) is a 400 naming it, never silently dropped (`reset?grace_seconds=3600` must not
/// rotate without a grace period).
pub struct NoQuery;

impl<S: Send + Sync> FromRequestParts<S> for NoQuery {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        match endpoint_params(parts).next() {
            None => Ok(NoQuery),
            Some((name, _)) => Err(ApiError::validation(format!(
                "unknown query parameter `{name}`: this endpoint takes none"
            ))),
        }
    }
}

/// `If-Match: "<version>"` (also accepted unquoted or weak `W/"n"`); `*` means any.
pub struct IfMatch(pub Option<u64>);

impl<S: Send + Sync> FromRequestParts<S> for IfMatch {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let Some(v) = single(&parts.headers, header::IF_MATCH.as_str(), "If-Match")? else {
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

/// The presented key, borrowed from the request where it can be (a header), decoded where it
/// must be (the query). A source given twice is refused: which of two keys would act?
pub(crate) fn presented_key(
    parts: &Parts,
    allow_query: bool,
) -> Result<Option<Cow<'_, str>>, ApiError> {
    // A header that is present is the source, even empty or not ASCII (then it presents "",
    // which no key matches): a later source must not stand in for a broken earlier one.
    let h = &parts.headers;
    // `Authorization` of another scheme is not a source (it may be meant for a proxy), so it
    // is a repeat only when one of the values is a Bearer token.
    let authorization = h.get_all(header::AUTHORIZATION);
    if let Some(token) = authorization.iter().find_map(bearer_token) {
        at_most_one(authorization.iter(), "Authorization")?;
        return Ok(Some(Cow::Borrowed(token)));
    }
    for (name, label) in [("x-api-key", "X-API-Key"), ("apikey", "APIKEY")] {
        if let Some(v) = single(h, name, label)? {
            return Ok(Some(Cow::Borrowed(header_text(v))));
        }
    }
    if allow_query {
        let q = parts.uri.query().unwrap_or("");
        let keys = form_urlencoded::parse(q.as_bytes()).filter(|(k, _)| k == "apikey");
        return Ok(at_most_one(keys, "apikey")?.map(|(_, v)| Cow::Owned(v.into_owned())));
    }
    Ok(None)
}

/// The token of an `Authorization: Bearer <token>` value; `None` for another scheme. The
/// scheme is read from the bytes: a Bearer token that is not ASCII is still one (and presents
/// "", which no key matches).
fn bearer_token(v: &HeaderValue) -> Option<&str> {
    let bytes = v.as_bytes().trim_ascii();
    let scheme = bytes
        .split(|&b| b == b' ' || b == b'\t')
        .next()
        .unwrap_or_default();
    scheme.eq_ignore_ascii_case(b"bearer").then(|| {
        header_text(v)
            .get(scheme.len()..)
            .unwrap_or_default()
            .trim()
    })
}

fn header_text(v: &HeaderValue) -> &str {
    v.to_str().unwrap_or("").trim()
}

/// The client's address: the TCP peer, or, when the peer is a trusted proxy, the right-most
/// address of `X-Forwarded-For` that is not itself a trusted proxy. Proxies append the address
/// they received from, so entries left of the first untrusted one may be forged and are never
/// read; an unreadable entry ends the walk at the last address that could be trusted. Entries
/// are split from the raw bytes: a line is not dropped whole for bytes that are not ASCII,
/// since a proxy may append the client's address to the line the client sent.
/// IPv4-mapped addresses (a dual-stack listener's IPv4 peers) are compared and returned as IPv4.
pub fn client_ip(parts: &Parts, trusted: &[ipnet::IpNet]) -> Option<IpAddr> {
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| canonical_ip(c.0.ip()))?;
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return Some(peer);
    }
    let mut client = peer;
    let hops = parts
        .headers
        .get_all("x-forwarded-for")
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','));
    for hop in hops.rev() {
        let ip = std::str::from_utf8(hop.trim_ascii())
            .ok()
            .and_then(|h| h.parse::<IpAddr>().ok())
            .map(canonical_ip);
        match ip {
            Some(ip) if is_trusted(&ip) => client = ip,
            Some(ip) => return Some(ip),
            None => break,
        }
    }
    Some(client)
}

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let key = presented_key(parts, state.allow_query_key)?;
        let ip = client_ip(parts, &state.trusted_proxies);
        let now = std::time::Instant::now();
        // What the failed-authentication limit counts against (an IPv6 client's /64).
        let block = ip.map(crate::limit::client_block);
        // A client that keeps presenting bad keys is slowed down before any lookup.
        if let Some(block) = &block
            && let Some(wait) = state.limits.failed_auth.blocked(block, now)
        {
            return Err(ApiError::rate_limited(
                "too many failed authentication attempts from this address",
                wait,
            ));
        }
        let (caller, entry) = match state.service.authenticate(key.as_deref(), ip) {
            Ok(ok) => ok,
            Err(e) => {
                if let (Some(block), true) = (&block, key.is_some()) {
                    let _ = state.limits.failed_auth.take(block, now);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(peer: &str, forwarded: &[&str]) -> Parts {
        let mut req = axum::http::Request::builder().uri("/v1/me");
        for v in forwarded {
            req = req.header("x-forwarded-for", *v);
        }
        let (mut parts, ()) = req.body(()).unwrap().into_parts();
        let peer = SocketAddr::new(peer.parse().unwrap(), 4000);
        parts.extensions.insert(ConnectInfo(peer));
        parts
    }

    #[test]
    fn json_media_types_match_in_any_case_with_parameters() {
        for ct in [
            "application/json",
            "Application/JSON",
            " application/json ; charset=utf-8",
            "application/merge-patch+json",
            "application/VND.API+JSON;v=1",
            "application/json; charset=\"UTF-8\"",
            "application/json;charset=utf8",
        ] {
            assert!(is_json_media_type(ct), "{ct}");
        }
        for ct in [
            "",
            "text/plain",
            "application/jsonx",
            "json",
            "application/json-seq",
            "+json",
            "/+json",
            "application/+json",
            "application/json; charset=latin1",
            "application/vnd.api+json; charset=utf-16",
        ] {
            assert!(!is_json_media_type(ct), "{ct}");
        }
    }

    #[test]
    fn a_body_is_one_json_object_and_a_refusal_names_the_field() {
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Body {
            #[allow(dead_code)]
            name: String,
        }
        let code = |body: &str| match parse_body::<Body>(body.as_bytes()) {
            Ok(_) => "ok".to_string(),
            Err(e) => format!("{} {}", e.code, e.message),
        };
        assert_eq!(code(r#" {"name":"a"} "#), "ok");
        assert!(code(r#"{"name":"a"} junk"#).starts_with("invalid_json "));
        assert!(code(r#"{"name":"a"}{}"#).starts_with("invalid_json "));
        assert!(code(r#"{"name":"a""#).starts_with("invalid_json "));
        assert_eq!(
            code(r#"{"name":1}"#),
            "validation_failed name: invalid type: integer `1`, expected a string"
        );
        assert!(code(r#"{"name":"a","x":1}"#).starts_with("validation_failed unknown field `x`"));
        assert_eq!(code("[]"), "validation_failed body: must be a JSON object");
    }

    #[test]
    fn refusals_say_which_number_was_wanted_in_words_not_rust_types() {
        #[derive(Debug, serde::Deserialize)]
        struct Body {
            #[allow(dead_code)]
            n: u64,
        }
        let message = |body: &str| parse_body::<Body>(body.as_bytes()).unwrap_err().message;
        assert_eq!(
            message(r#"{"n":-1}"#),
            "n: invalid value: integer `-1`, expected a non-negative integer"
        );
        assert_eq!(
            message(r#"{"n":"x"}"#),
            "n: invalid type: string \"x\", expected a non-negative integer"
        );
        for (query, expected) in [
            ("n=abc", "n: expected a non-negative integer"),
            ("n=", "n: expected a non-negative integer"),
            (
                "n=99999999999999999999",
                "n: expected a non-negative integer below 2^64",
            ),
        ] {
            let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
            let e = serde_path_to_error::deserialize::<_, Body>(de).unwrap_err();
            let got = field_message(&e.path().to_string(), &e.into_inner().to_string());
            assert_eq!(got, expected, "{query}");
        }
    }

    #[test]
    fn the_client_address_comes_from_x_forwarded_for_only_through_trusted_proxies() {
        let trusted: Vec<ipnet::IpNet> = vec![
            "10.0.0.0/8".parse().unwrap(),
            "192.0.2.1/32".parse().unwrap(),
        ];
        let cases: &[(&str, &[&str], &[ipnet::IpNet], &str)] = &[
            // Nothing trusted: the peer, whatever the header says.
            ("203.0.113.9", &["198.51.100.1"], &[], "203.0.113.9"),
            // An untrusted peer cannot name another client.
            ("203.0.113.9", &["198.51.100.1"], &trusted, "203.0.113.9"),
            // A trusted proxy names its client.
            ("10.1.2.3", &["198.51.100.1"], &trusted, "198.51.100.1"),
            // Forged entries left of the first untrusted hop are never read.
            (
                "10.1.2.3",
                &["1.1.1.1, 198.51.100.1, 192.0.2.1"],
                &trusted,
                "198.51.100.1",
            ),
            // Several header lines are one list, in order.
            (
                "10.1.2.3",
                &["1.1.1.1", "198.51.100.1"],
                &trusted,
                "198.51.100.1",
            ),
            // Only trusted hops: the left-most of them.
            ("10.1.2.3", &["10.9.9.9, 192.0.2.1"], &trusted, "10.9.9.9"),
            // No header, or an unreadable hop: the last address that could be trusted.
            ("10.1.2.3", &[], &trusted, "10.1.2.3"),
            ("10.1.2.3", &["198.51.100.1, junk"], &trusted, "10.1.2.3"),
            ("10.1.2.3", &["junk, 10.4.4.4"], &trusted, "10.4.4.4"),
            ("10.1.2.3", &[" 2001:db8::7 "], &trusted, "2001:db8::7"),
            // A dual-stack listener sees IPv4 peers as IPv4-mapped: compared as IPv4.
            (
                "::ffff:10.1.2.3",
                &["198.51.100.1"],
                &trusted,
                "198.51.100.1",
            ),
            (
                "::ffff:203.0.113.9",
                &["198.51.100.1"],
                &trusted,
                "203.0.113.9",
            ),
            (
                "10.1.2.3",
                &["198.51.100.1, ::ffff:192.0.2.1"],
                &trusted,
                "198.51.100.1",
            ),
        ];
        for (peer, forwarded, trusted, expected) in cases {
            let got = client_ip(&parts(peer, forwarded), trusted);
            assert_eq!(
                got,
                Some(expected.parse().unwrap()),
                "peer {peer}, X-Forwarded-For {forwarded:?}"
            );
        }
    }

    /// A client that puts a byte outside ASCII in its own `X-Forwarded-For` must not make the
    /// line its proxy appended to unreadable, and so pass for the proxy.
    #[test]
    fn bytes_that_are_not_ascii_in_a_forged_entry_do_not_hide_the_appended_client() {
        let trusted = ["10.0.0.0/8".parse().unwrap()];
        for line in [
            &b"\xff, 198.51.100.1"[..],
            "1.2.3.4\u{e9}, 198.51.100.1".as_bytes(),
        ] {
            let mut p = parts("10.1.2.3", &[]);
            let value = axum::http::HeaderValue::from_bytes(line).unwrap();
            p.headers.append("x-forwarded-for", value);
            assert_eq!(
                client_ip(&p, &trusted),
                Some("198.51.100.1".parse().unwrap()),
                "{line:?}"
            );
        }
    }
}
