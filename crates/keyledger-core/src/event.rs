//! Domain events: what happened to a key. Serialized as the `type` and `data` of the log's
//! envelope (docs/EVENTS.md); never contain a plaintext secret.

use crate::secret::SecretHash;
use crate::time::Timestamp;
use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

/// Version of every event's `data` schema.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum Event {
    #[serde(rename = "key.created")]
    Created(Created),
    #[serde(rename = "key.updated")]
    Updated(Updated),
    #[serde(rename = "key.rotated")]
    Rotated(Rotated),
    #[serde(rename = "key.deleted")]
    Deleted(Deleted),
    #[serde(rename = "key.expired")]
    Expired(Expired),
    #[serde(rename = "key.rotation_ended")]
    RotationEnded(RotationEnded),
}

impl Event {
    /// The wire name, e.g. `key.rotated`.
    pub fn type_name(&self) -> &'static str {
        match self {
            Event::Created(_) => "key.created",
            Event::Updated(_) => "key.updated",
            Event::Rotated(_) => "key.rotated",
            Event::Deleted(_) => "key.deleted",
            Event::Expired(_) => "key.expired",
            Event::RotationEnded(_) => "key.rotation_ended",
        }
    }

    /// Serializes only the type-specific payload (the envelope's `data`).
    pub fn serialize_data<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Event::Created(d) => d.serialize(s),
            Event::Updated(d) => d.serialize(s),
            Event::Rotated(d) => d.serialize(s),
            Event::Deleted(d) => d.serialize(s),
            Event::Expired(d) => d.serialize(s),
            Event::RotationEnded(d) => d.serialize(s),
        }
    }

    /// Parses the payload of an event of type `type_name` from its JSON text.
    pub fn from_data(type_name: &str, data: &str) -> Result<Self, serde_json::Error> {
        use serde::de::Error;
        Ok(match type_name {
            "key.created" => Event::Created(serde_json::from_str(data)?),
            "key.updated" => Event::Updated(serde_json::from_str(data)?),
            "key.rotated" => Event::Rotated(serde_json::from_str(data)?),
            "key.deleted" => Event::Deleted(serde_json::from_str(data)?),
            "key.expired" => Event::Expired(serde_json::from_str(data)?),
            "key.rotation_ended" => Event::RotationEnded(serde_json::from_str(data)?),
            other => {
                return Err(serde_json::Error::custom(format!(
                    "unknown event type `{other}`"
                )));
            }
        })
    }

    pub const ALL_TYPES: [&'static str; 6] = [
        "key.created",
        "key.updated",
        "key.rotated",
        "key.deleted",
        "key.expired",
        "key.rotation_ended",
    ];
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Created {
    pub account: String,
    pub name: String,
    pub owner: Option<String>,
    pub role: Option<String>,
    pub scopes: Vec<String>,
    pub allowed_ips: Vec<IpNet>,
    pub enabled: bool,
    pub expires_at: Option<Timestamp>,
    pub metadata: Map<String, Value>,
    pub prefix: String,
    pub hint: String,
    pub secret_hash: SecretHash,
}

/// Only the fields that changed; `null` clears an optional field.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Updated {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub owner: Option<Option<String>>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub role: Option<Option<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_ips: Option<Vec<IpNet>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub expires_at: Option<Option<Timestamp>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Map<String, Value>>,
}

impl Updated {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// Deserializes a field that is present (possibly `null`) as `Some(..)`; absent fields take
/// the `default` of `None`. Lets `null` mean "clear" and absence mean "unchanged".
pub fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rotated {
    pub secret_hash: SecretHash,
    pub hint: String,
    pub previous_secret_hash: SecretHash,
    pub grace_seconds: u32,
    /// When the previous secret stops verifying; `null` when it stopped at once.
    pub grace_until: Option<Timestamp>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deleted {}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expired {
    pub expires_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotationEnded {
    pub secret_hash: SecretHash,
}
