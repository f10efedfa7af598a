//! Field rules shared by every command. Each error names the field it is about.

use crate::DomainError;
use crate::time::Timestamp;
use ipnet::IpNet;
use serde_json::{Map, Value};

pub const MAX_NAME: usize = 255;
pub const MAX_OWNER: usize = 255;
pub const MAX_ROLE: usize = 64;
pub const MAX_SCOPE: usize = 128;
pub const MAX_SCOPES: usize = 100;
pub const MAX_IPS: usize = 100;
pub const MAX_METADATA_BYTES: usize = 8 * 1024;
/// Levels of nesting in `metadata`, itself the first. Far below the 128 that JSON parsers
/// (ours included) accept, so that every event carrying it, a few levels deeper, stays readable.
pub const MAX_METADATA_DEPTH: usize = 32;
pub const MAX_GRACE_SECONDS: u64 = 7 * 24 * 3600;
pub const DEFAULT_ACCOUNT: &str = "default";

fn invalid(field: impl Into<String>, message: impl Into<String>) -> DomainError {
    DomainError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// Display text (a name): not blank, no control characters or line breaks. Invisible
/// characters inside are kept (emoji sequences join with U+200D).
fn text(field: &str, value: &str, max: usize) -> Result<(), DomainError> {
    let len = value.chars().count();
    if value.chars().all(|c| c.is_whitespace() || is_invisible(c)) {
        return Err(invalid(field, "must not be empty"));
    }
    if len > max {
        return Err(invalid(field, format!("at most {max} characters")));
    }
    if value
        .chars()
        .any(|c| c.is_control() || is_line_separator(c))
    {
        return Err(invalid(
            field,
            "must not contain control characters or line breaks",
        ));
    }
    Ok(())
}

/// A label that consumers compare and filter on (owner, role): display text without invisible
/// characters, so that no label reads as another (`own\u{200b}er` would show as `owner`).
fn label(field: &str, value: &str, max: usize) -> Result<(), DomainError> {
    text(field, value, max)?;
    if value.chars().any(is_invisible) {
        return Err(invalid(field, "must not contain invisible characters"));
    }
    Ok(())
}

/// U+2028 and U+2029 end a line as `\n` does, though they are not control characters.
fn is_line_separator(c: char) -> bool {
    matches!(c, '\u{2028}' | '\u{2029}')
}

/// Characters that show nothing and are not whitespace (Unicode's default-ignorable code points,
/// the Hangul fillers and U+2800 BRAILLE PATTERN BLANK): a name of only these would list as
/// blank, a scope or label with one would read as another. The server's OpenAPI patterns are
/// built from this list.
pub const INVISIBLE: [std::ops::RangeInclusive<char>; 18] = [
    '\u{ad}'..='\u{ad}',
    '\u{34f}'..='\u{34f}',
    '\u{61c}'..='\u{61c}',
    '\u{115f}'..='\u{1160}',
    '\u{17b4}'..='\u{17b5}',
    '\u{180b}'..='\u{180f}',
    '\u{200b}'..='\u{200f}',
    '\u{202a}'..='\u{202e}',
    '\u{2060}'..='\u{206f}',
    '\u{2800}'..='\u{2800}',
    '\u{3164}'..='\u{3164}',
    '\u{fe00}'..='\u{fe0f}',
    '\u{feff}'..='\u{feff}',
    '\u{ffa0}'..='\u{ffa0}',
    '\u{fff0}'..='\u{fff8}',
    '\u{1bca0}'..='\u{1bca3}',
    '\u{1d173}'..='\u{1d17a}',
    '\u{e0000}'..='\u{e0fff}',
];

fn is_invisible(c: char) -> bool {
    INVISIBLE.iter().any(|r| r.contains(&c))
}

pub fn name(value: &str) -> Result<(), DomainError> {
    text("name", value, MAX_NAME)
}

pub fn owner(value: Option<&str>) -> Result<(), DomainError> {
    value.map_or(Ok(()), |v| label("owner", v, MAX_OWNER))
}

pub fn role(value: Option<&str>) -> Result<(), DomainError> {
    value.map_or(Ok(()), |v| label("role", v, MAX_ROLE))
}

/// `[A-Za-z0-9_-]{1,64}`.
pub fn account(value: &str) -> Result<(), DomainError> {
    let ok = (1..=64).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(invalid("account", "must match [A-Za-z0-9_-]{1,64}"))
    }
}

pub fn prefix(value: &str) -> Result<(), DomainError> {
    if crate::secret::is_valid_prefix(value) {
        Ok(())
    } else {
        Err(invalid("prefix", "must match [a-z0-9]{1,16}"))
    }
}

/// Scopes keep their order; duplicates are dropped after the limit, which counts them (as the
/// OpenAPI document's `maxItems` does).
pub fn scopes(values: &[String]) -> Result<Vec<String>, DomainError> {
    if values.len() > MAX_SCOPES {
        return Err(invalid(
            "scopes",
            format!("at most {MAX_SCOPES} scopes, duplicates included"),
        ));
    }
    let mut out: Vec<String> = Vec::with_capacity(values.len());
    for (i, s) in values.iter().enumerate() {
        let field = format!("scopes[{i}]");
        if s.is_empty() || s.chars().count() > MAX_SCOPE {
            return Err(invalid(field, format!("1 to {MAX_SCOPE} characters")));
        }
        // Invisible characters too: `admin\u{200b}` would read as `admin` wherever it is shown.
        if s.chars()
            .any(|c| c.is_whitespace() || c.is_control() || is_invisible(c))
        {
            return Err(invalid(
                field,
                "must not contain whitespace or invisible characters",
            ));
        }
        if !out.contains(s) {
            out.push(s.clone());
        }
    }
    Ok(out)
}

/// Accepts addresses (`10.0.0.1`, `::1`) and CIDR blocks (`10.0.0.0/8`, `2001:db8::/32`);
/// duplicates are dropped after the limit, which counts them.
pub fn allowed_ips(values: &[String]) -> Result<Vec<IpNet>, DomainError> {
    if values.len() > MAX_IPS {
        return Err(invalid(
            "allowed_ips",
            format!("at most {MAX_IPS} entries, duplicates included"),
        ));
    }
    let mut out: Vec<IpNet> = Vec::with_capacity(values.len());
    for (i, v) in values.iter().enumerate() {
        let net = crate::model::parse_net(v).ok_or_else(|| {
            invalid(
                format!("allowed_ips[{i}]"),
                "not an IP address or CIDR block",
            )
        })?;
        if !out.contains(&net) {
            out.push(net);
        }
    }
    Ok(out)
}

pub fn expires_at(value: Option<Timestamp>, now: Timestamp) -> Result<(), DomainError> {
    match value {
        Some(t) if t <= now => Err(invalid("expires_at", "must lie in the future")),
        _ => Ok(()),
    }
}

pub fn metadata(value: Option<&Value>) -> Result<Map<String, Value>, DomainError> {
    match value {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(map)) => {
            let size = serde_json::to_vec(map)
                .map(|v| v.len())
                .unwrap_or(usize::MAX);
            if size > MAX_METADATA_BYTES {
                Err(invalid(
                    "metadata",
                    format!("at most {MAX_METADATA_BYTES} bytes as JSON"),
                ))
            } else if map.values().any(|v| depth(v) >= MAX_METADATA_DEPTH) {
                Err(invalid(
                    "metadata",
                    format!("at most {MAX_METADATA_DEPTH} levels of nesting"),
                ))
            } else if !map.values().all(exact_as_double) {
                // The event hash reads numbers as IEEE doubles (RFC 8785): a larger integer
                // could be altered without changing the hash.
                Err(invalid(
                    "metadata",
                    format!("integers must lie within ±{MAX_SAFE_INTEGER}"),
                ))
            } else {
                Ok(map.clone())
            }
        }
        Some(_) => Err(invalid("metadata", "must be a JSON object")),
    }
}

/// Levels of objects and arrays in `v` (0 for a scalar).
fn depth(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// 2^53 − 1: the largest integer every JSON implementation reads exactly.
pub const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

fn exact_as_double(v: &Value) -> bool {
    match v {
        Value::Number(n) => {
            n.as_u64().is_none_or(|u| u <= MAX_SAFE_INTEGER)
                && n.as_i64()
                    .is_none_or(|i| i.unsigned_abs() <= MAX_SAFE_INTEGER)
        }
        Value::Array(a) => a.iter().all(exact_as_double),
        Value::Object(o) => o.values().all(exact_as_double),
        _ => true,
    }
}

pub fn grace_seconds(value: u64) -> Result<u32, DomainError> {
    if value > MAX_GRACE_SECONDS {
        return Err(invalid(
            "grace_seconds",
            format!("must be between 0 and {MAX_GRACE_SECONDS}"),
        ));
    }
    Ok(value as u32)
}
