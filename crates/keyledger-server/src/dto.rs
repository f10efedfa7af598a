//! The wire format of the HTTP API. Only this crate knows it.

use keyledger_core::Timestamp;
use keyledger_core::event::present;
use keyledger_core::validate::MAX_SAFE_INTEGER;
use keyledger_service::{KeyEntry, Verification};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

/// A key. Never contains its secret or the secret's hash.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyResource {
    pub id: Uuid,
    pub name: String,
    pub account: String,
    pub owner: Option<String>,
    pub role: Option<String>,
    pub scopes: Vec<String>,
    /// Normalised CIDR blocks (a single address as `/32` or `/128`).
    pub allowed_ips: Vec<String>,
    pub enabled: bool,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<Timestamp>,
    #[schema(value_type = Object)]
    pub metadata: Value,
    /// Prefix and last four characters, e.g. `kl_...x9Qa`.
    pub hint: String,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_used_at: Option<Timestamp>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub rotated_at: Option<Timestamp>,
    /// Number of events in the key's stream; the `ETag`.
    pub version: u64,
    /// Only for a revoked key seen through `as_of`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub deleted_at: Option<Timestamp>,
}

impl From<&KeyEntry> for KeyResource {
    fn from(e: &KeyEntry) -> Self {
        Self::from_state(&e.state, e.last_used_at().map(Timestamp::from_millis))
    }
}

impl KeyResource {
    pub fn from_state(s: &keyledger_core::KeyState, last_used_at: Option<Timestamp>) -> Self {
        Self {
            id: s.id,
            name: s.name.clone(),
            account: s.account.clone(),
            owner: s.owner.clone(),
            role: s.role.clone(),
            scopes: s.scopes.clone(),
            allowed_ips: s.allowed_ips.iter().map(ToString::to_string).collect(),
            enabled: s.enabled,
            expires_at: s.expires_at,
            metadata: Value::Object(s.metadata.clone()),
            hint: s.hint.clone(),
            created_at: s.created_at,
            updated_at: s.updated_at,
            last_used_at,
            rotated_at: s.rotated_at,
            version: s.version,
            deleted_at: s.deleted_at,
        }
    }
}

/// A key with its plaintext secret: only in create and reset responses.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyWithSecret {
    pub key: KeyResource,
    /// The plaintext key. Shown once; store it now. `null` when the response replays an earlier
    /// request with the same `Idempotency-Key` (secrets are never stored).
    pub secret: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKeyRequest {
    /// 1 to 255 characters, not all blank, no control characters or line breaks. (Invisible
    /// characters outside the BMP, such as tags, count as blank too; the pattern cannot name
    /// them for every regex dialect.)
    #[schema(min_length = 1, max_length = 255)]
    pub name: String,
    /// `[A-Za-z0-9_-]{1,64}`; default: the caller's account (`default` for admins).
    #[schema(pattern = r"^[A-Za-z0-9_-]{1,64}$")]
    pub account: Option<String>,
    /// Not blank, no control, line-break or invisible characters (also those outside the BMP,
    /// such as tags, which the pattern cannot name for every regex dialect).
    #[schema(min_length = 1, max_length = 255)]
    pub owner: Option<String>,
    /// As `owner`.
    #[schema(min_length = 1, max_length = 64)]
    pub role: Option<String>,
    /// At most 100, duplicates included; duplicates are then dropped.
    #[serde(default)]
    #[schema(value_type = Vec<Scope>, max_items = 100)]
    pub scopes: Vec<String>,
    /// IPs or CIDR blocks, v4 or v6; empty = any. At most 100.
    #[serde(default)]
    #[schema(max_items = 100)]
    pub allowed_ips: Vec<String>,
    pub enabled: Option<bool>,
    /// RFC 3339, in the future.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<Timestamp>,
    /// A JSON object of at most 8 KiB; integers within ±(2^53 − 1).
    #[serde(default, deserialize_with = "metadata")]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    /// `[a-z0-9]{1,16}`, default `kl`.
    #[schema(pattern = r"^[a-z0-9]{1,16}$")]
    pub prefix: Option<String>,
}

impl From<CreateKeyRequest> for keyledger_service::CreateKey {
    fn from(r: CreateKeyRequest) -> Self {
        Self {
            name: r.name,
            account: r.account,
            owner: r.owner,
            role: r.role,
            scopes: r.scopes,
            allowed_ips: r.allowed_ips,
            enabled: r.enabled,
            expires_at: r.expires_at,
            metadata: r.metadata,
            prefix: r.prefix,
        }
    }
}

impl From<UpdateKeyRequest> for keyledger_core::KeyPatch {
    fn from(r: UpdateKeyRequest) -> Self {
        Self {
            name: r.name,
            owner: r.owner,
            role: r.role,
            scopes: r.scopes,
            allowed_ips: r.allowed_ips,
            enabled: r.enabled,
            expires_at: r.expires_at,
            metadata: r.metadata,
        }
    }
}

/// A regex class body naming the invisible characters of the BMP (`validate::INVISIBLE`); those
/// outside it cannot be named for every regex dialect (the server refuses them all).
fn invisible_class() -> String {
    keyledger_core::validate::INVISIBLE
        .iter()
        .filter(|r| *r.end() <= '\u{ffff}')
        .map(|r| {
            let (start, end) = (u32::from(*r.start()), u32::from(*r.end()));
            if start == end {
                format!(r"\u{start:04x}")
            } else {
                format!(r"\u{start:04x}-\u{end:04x}")
            }
        })
        .collect()
}

/// A name: no control character or line break, and at least one character that is neither
/// whitespace nor invisible. Set on the schemas by a modifier (`TextPatterns`): utoipa's
/// `pattern` attribute takes only a literal.
pub(crate) fn text_pattern() -> String {
    text_pattern_without("")
}

/// An owner or role: a name without invisible characters.
pub(crate) fn label_pattern() -> String {
    text_pattern_without(&invisible_class())
}

fn text_pattern_without(class: &str) -> String {
    let invisible = invisible_class();
    let other = format!(r"[^\x00-\x1f\x7f-\x9f\u2028\u2029{class}]");
    format!(r"^{other}*[^\s\x00-\x1f\x7f-\x9f{invisible}]{other}*$")
}

/// A scope as the domain accepts it, for the document only: requests carry plain strings.
pub struct Scope;

impl utoipa::PartialSchema for Scope {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use keyledger_core::validate::MAX_SCOPE;
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .description(Some(format!(
                "1 to {MAX_SCOPE} characters, no whitespace, control or invisible characters"
            )))
            .min_length(Some(1))
            .max_length(Some(MAX_SCOPE))
            .pattern(Some(format!(
                r"^[^\s\x00-\x1f\x7f-\x9f{}]+$",
                invisible_class()
            )))
            .into()
    }
}

impl ToSchema for Scope {}

/// Absent fields stay unchanged; `null` clears `owner`, `role` and `expires_at`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateKeyRequest {
    /// As on create. A value the key already has is taken as it is.
    #[schema(min_length = 1, max_length = 255)]
    pub name: Option<String>,
    /// As on create. A value the key already has is taken as it is.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, min_length = 1, max_length = 255)]
    pub owner: Option<Option<String>>,
    /// As on create. A value the key already has is taken as it is.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, min_length = 1, max_length = 64)]
    pub role: Option<Option<String>>,
    /// At most 100, duplicates included; duplicates are then dropped.
    #[schema(value_type = Option<Vec<Scope>>, max_items = 100)]
    pub scopes: Option<Vec<String>>,
    #[schema(max_items = 100)]
    pub allowed_ips: Option<Vec<String>>,
    pub enabled: Option<bool>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<Option<Timestamp>>,
    /// Replaces the whole object.
    #[serde(default, deserialize_with = "metadata")]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
}

/// `metadata` as written: serde_json reads an integer literal beyond u64/i64 as a float, so the
/// domain's check on the parsed value would see `123456789012345678901` only as the different
/// number `1.2345678901234568e20`, and store that. Such literals are refused here instead.
fn metadata<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    let Some(raw) = Option::<Box<RawValue>>::deserialize(d)? else {
        return Ok(None);
    };
    let value: Value = serde_json::from_str(raw.get()).map_err(D::Error::custom)?;
    // Anything but an object is the domain's to refuse ("must be a JSON object").
    if value.is_object() && inexact_integer(raw.get()).is_some() {
        // The domain's message for the integers serde_json does read as integers.
        return Err(D::Error::custom(format_args!(
            "integers must lie within ±{MAX_SAFE_INTEGER}"
        )));
    }
    Ok(Some(value))
}

/// The first integer literal (no fraction, no exponent) in valid JSON `text` whose magnitude
/// exceeds 2^53 − 1, skipping strings; returned so that tests can tell which one was found.
fn inexact_integer(text: &str) -> Option<&str> {
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'"' => {
                i += 1;
                while let Some(&c) = bytes.get(i) {
                    i += if c == b'\\' { 2 } else { 1 };
                    if c == b'"' {
                        break;
                    }
                }
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                while bytes
                    .get(i)
                    .is_some_and(|c| matches!(c, b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'))
                {
                    i += 1;
                }
                let literal = &text[start..i];
                let is_integer = !literal.contains(['.', 'e', 'E']);
                let exact = literal
                    .trim_start_matches('-')
                    .parse::<u64>()
                    .is_ok_and(|n| n <= MAX_SAFE_INTEGER);
                if is_integer && !exact {
                    return Some(literal);
                }
            }
            _ => i += 1,
        }
    }
    None
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResetKeyRequest {
    /// How long the old secret stays valid, 0..=604800 seconds (default 0).
    #[serde(default)]
    #[schema(maximum = 604_800)]
    pub grace_seconds: u64,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    /// The presented key.
    pub key: String,
    /// Scopes the key must all hold.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// The client's address, checked against `allowed_ips`.
    pub ip: Option<String>,
}

// Borrows from the key's entry: a verify answer copies no strings before it is serialized.
#[derive(Debug, Serialize, ToSchema)]
pub struct VerifyResponse<'a> {
    pub valid: bool,
    /// `VALID`, `NOT_FOUND`, `DISABLED`, `EXPIRED`, `REVOKED`, `FORBIDDEN_IP`,
    /// `INSUFFICIENT_SCOPES`.
    #[schema(value_type = String)]
    pub code: &'static str,
    pub key_id: Option<Uuid>,
    #[schema(value_type = Option<String>)]
    pub account: Option<&'a str>,
    #[schema(value_type = Option<String>)]
    pub owner: Option<&'a str>,
    #[schema(value_type = Option<String>)]
    pub name: Option<&'a str>,
    #[schema(value_type = Option<String>)]
    pub role: Option<&'a str>,
    #[schema(value_type = Option<Vec<String>>)]
    pub scopes: Option<&'a [String]>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<Timestamp>,
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<&'a serde_json::Map<String, Value>>,
    pub enabled: Option<bool>,
    /// The presented secret was rotated away and is inside its grace period.
    pub rotating: bool,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub rotation_ends_at: Option<Timestamp>,
}

impl<'a> From<&'a Verification> for VerifyResponse<'a> {
    fn from(v: &'a Verification) -> Self {
        let s = v.entry.as_ref().map(|e| &e.state);
        Self {
            valid: v.code == keyledger_service::VerifyCode::Valid,
            code: v.code.as_str(),
            key_id: s.map(|s| s.id),
            account: s.map(|s| s.account.as_str()),
            owner: s.and_then(|s| s.owner.as_deref()),
            name: s.map(|s| s.name.as_str()),
            role: s.and_then(|s| s.role.as_deref()),
            scopes: s.map(|s| s.scopes.as_slice()),
            expires_at: s.and_then(|s| s.expires_at),
            metadata: s.map(|s| &s.metadata),
            enabled: s.map(|s| s.enabled),
            rotating: v.rotating,
            rotation_ends_at: s
                .filter(|_| v.rotating)
                .and_then(|s| s.previous.as_ref().map(|p| p.until)),
        }
    }
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct GetParams {
    /// A seq or an RFC 3339 instant: the key as it was then (also if revoked since).
    /// `last_used_at` is not part of the history and is `null` in such answers.
    #[param(pattern = "^([0-9]+|[0-9]{4}-[0-9]{2}-[0-9]{2}T.+)$")]
    pub as_of: Option<String>,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// 1..=1000, default 50.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
    /// Keys to skip; not together with `cursor` (even `0`).
    pub offset: Option<usize>,
    /// `next_cursor` of the previous page; not together with `offset`.
    pub cursor: Option<String>,
    /// `created_at` (default), `updated_at`, `name`, `last_used_at`.
    #[param(pattern = "^(created_at|updated_at|name|last_used_at)$")]
    pub sort: Option<String>,
    /// `asc` (default) or `desc`.
    #[param(pattern = "^(asc|desc)$")]
    pub order: Option<String>,
    /// Case-insensitive substring of the name.
    pub search: Option<String>,
    pub role: Option<String>,
    pub enabled: Option<bool>,
    pub owner: Option<String>,
    /// Keys holding this scope.
    pub scope: Option<String>,
    /// Admin only: one account (default: all).
    pub account: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct KeyList {
    pub data: Vec<KeyResource>,
    /// Keys matching the filters, over all pages.
    pub total: usize,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SigningKeys {
    pub keys: Vec<SigningKeyInfo>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SigningKeyInfo {
    pub id: String,
    pub algorithm: String,
    /// Standard base64 of the 32-byte ed25519 public key.
    pub public_key: String,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    pub status: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    pub status: String,
    /// Seq of the last committed event.
    pub log_head: u64,
    /// Present when events are published to NATS.
    pub nats: Option<NatsStatus>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct NatsStatus {
    pub connected: bool,
    /// Seq of the last event the stream acknowledged.
    pub published_seq: u64,
    /// Committed events not yet in the stream.
    pub lag_events: u64,
    /// Age of the oldest event not yet in the stream.
    pub lag_seconds: f64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extract::parse_body;

    #[test]
    fn integer_literals_a_double_cannot_hold_are_found_outside_strings_only() {
        let cases = [
            (r#"{"a":9007199254740991,"b":-9007199254740991}"#, None),
            (r#"{"a":9007199254740992}"#, Some("9007199254740992")),
            (
                r#"{"a":[1,-123456789012345678901]}"#,
                Some("-123456789012345678901"),
            ),
            (r#"{"a":1e21,"b":123456789012345678901.5,"c":-0}"#, None),
            (
                r#"{"a":"123456789012345678901","b\"99999999999999999999":2}"#,
                None,
            ),
            (
                r#"{"a":"\\","b":99999999999999999999}"#,
                Some("99999999999999999999"),
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(inexact_integer(text), expected, "{text}");
        }
    }

    fn refusal<T: serde::de::DeserializeOwned>(body: &str) -> String {
        match parse_body::<T>(body.as_bytes()) {
            Ok(_) => "ok".into(),
            Err(e) => format!("{} {}", e.code, e.message),
        }
    }

    #[test]
    fn metadata_with_an_integer_beyond_u64_is_refused_not_stored_as_another_number() {
        assert_eq!(
            refusal::<CreateKeyRequest>(r#"{"name":"n","metadata":{"n":123456789012345678901}}"#),
            "validation_failed metadata: integers must lie within ±9007199254740991"
        );
        assert_eq!(
            refusal::<UpdateKeyRequest>(r#"{"metadata":{"n":[18446744073709551616]}}"#),
            "validation_failed metadata: integers must lie within ±9007199254740991"
        );
    }

    #[test]
    fn metadata_keeps_its_values_and_null_or_absence_still_mean_none() {
        let r: CreateKeyRequest =
            parse_body(br#"{"name":"n","metadata":{"n":9007199254740991,"f":1e21,"s":"x"}}"#)
                .unwrap();
        assert_eq!(
            r.metadata,
            Some(serde_json::json!({"n":9007199254740991u64,"f":1e21,"s":"x"}))
        );
        let r: UpdateKeyRequest = parse_body(br#"{"metadata":null}"#).unwrap();
        assert_eq!(r.metadata, None);
        let r: UpdateKeyRequest = parse_body(b"{}").unwrap();
        assert_eq!(r.metadata, None);
    }
}
