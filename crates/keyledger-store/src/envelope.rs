//! The event envelope, its canonical bytes and its hash (docs/EVENTS.md is the normative text).

use keyledger_core::{Event, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// `prev_hash` of the first event.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One event as stored in the log and published: the domain event plus its position, its
/// author, and its link in the signed hash chain.
///
/// Serialized by hand (see the wire structs below) as the members of docs/EVENTS.md, with the
/// event's `type` and `data` side by side; decoding parses `data` straight into the type's
/// struct, without an intermediate tree.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    pub seq: u64,
    pub id: Uuid,
    pub event: Event,
    pub schema: u32,
    pub key_id: Uuid,
    pub account: String,
    pub version: u64,
    pub occurred_at: Timestamp,
    pub actor: String,
    pub prev_hash: String,
    pub hash: String,
    pub signature: String,
    pub signer: String,
}

struct Data<'a>(&'a Event);

impl Serialize for Data<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize_data(s)
    }
}

#[derive(Serialize)]
struct WireOut<'a> {
    seq: u64,
    id: Uuid,
    #[serde(rename = "type")]
    event_type: &'static str,
    data: Data<'a>,
    schema: u32,
    key_id: Uuid,
    account: &'a str,
    version: u64,
    occurred_at: Timestamp,
    actor: &'a str,
    prev_hash: &'a str,
    hash: &'a str,
    signature: &'a str,
    signer: &'a str,
}

#[derive(Deserialize)]
struct WireIn {
    seq: u64,
    id: Uuid,
    #[serde(rename = "type")]
    event_type: String,
    data: Box<serde_json::value::RawValue>,
    schema: u32,
    key_id: Uuid,
    account: String,
    version: u64,
    occurred_at: Timestamp,
    actor: String,
    prev_hash: String,
    hash: String,
    signature: String,
    signer: String,
}

impl Serialize for Envelope {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        WireOut {
            seq: self.seq,
            id: self.id,
            event_type: self.event.type_name(),
            data: Data(&self.event),
            schema: self.schema,
            key_id: self.key_id,
            account: &self.account,
            version: self.version,
            occurred_at: self.occurred_at,
            actor: &self.actor,
            prev_hash: &self.prev_hash,
            hash: &self.hash,
            signature: &self.signature,
            signer: &self.signer,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Envelope {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let w = WireIn::deserialize(d)?;
        let event =
            Event::from_data(&w.event_type, w.data.get()).map_err(serde::de::Error::custom)?;
        Ok(Self {
            seq: w.seq,
            id: w.id,
            event,
            schema: w.schema,
            key_id: w.key_id,
            account: w.account,
            version: w.version,
            occurred_at: w.occurred_at,
            actor: w.actor,
            prev_hash: w.prev_hash,
            hash: w.hash,
            signature: w.signature,
            signer: w.signer,
        })
    }
}

/// What folding an event into a state needs: its position, its key, its time and the event.
/// [`ReplayEvent::decode`] skips the other members without allocating them.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplayEvent {
    pub seq: u64,
    pub key_id: Uuid,
    pub occurred_at: Timestamp,
    pub event: Event,
}

#[derive(Deserialize)]
struct WireReplay<'a> {
    seq: u64,
    #[serde(rename = "type", borrow)]
    event_type: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    data: &'a serde_json::value::RawValue,
    key_id: Uuid,
    occurred_at: Timestamp,
}

impl ReplayEvent {
    /// Decodes the folding members of a stored envelope.
    pub fn decode(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        let w: WireReplay = serde_json::from_slice(bytes)?;
        Ok(Self {
            seq: w.seq,
            key_id: w.key_id,
            occurred_at: w.occurred_at,
            event: Event::from_data(&w.event_type, w.data.get())?,
        })
    }
}

/// Format of a replay row (its first byte); a row of another format is refused as corrupt.
const REPLAY_ROW_FORMAT: u8 = 1;

/// The folding members of an event as its replay row stores them (the log's `replay` table,
/// beside the signed JSON): the format byte, the event type as a byte, the key id's 16 bytes,
/// `occurred_at` in milliseconds (8 bytes, little-endian), then the type's `data` in
/// MessagePack with field names (hashes as raw bytes). ~144 bytes against ~700 of JSON, and
/// ~3× faster to read and decode: a rebuild reads these rows, never the JSON.
pub fn encode_replay_row(
    key_id: Uuid,
    occurred_at: Timestamp,
    event: &Event,
) -> Result<Vec<u8>, crate::StoreError> {
    let mut out = Vec::with_capacity(160);
    out.push(REPLAY_ROW_FORMAT);
    out.push(replay_tag(event));
    out.extend_from_slice(key_id.as_bytes());
    out.extend_from_slice(&occurred_at.millis().to_le_bytes());
    let data = match event {
        Event::Created(d) => rmp_serde::encode::write_named(&mut out, d),
        Event::Updated(d) => rmp_serde::encode::write_named(&mut out, d),
        Event::Rotated(d) => rmp_serde::encode::write_named(&mut out, d),
        Event::Deleted(d) => rmp_serde::encode::write_named(&mut out, d),
        Event::Expired(d) => rmp_serde::encode::write_named(&mut out, d),
        Event::RotationEnded(d) => rmp_serde::encode::write_named(&mut out, d),
    };
    data.map_err(|e| crate::StoreError::Encode(format!("replay row: {e}")))?;
    Ok(out)
}

fn replay_tag(event: &Event) -> u8 {
    match event {
        Event::Created(_) => 0,
        Event::Updated(_) => 1,
        Event::Rotated(_) => 2,
        Event::Deleted(_) => 3,
        Event::Expired(_) => 4,
        Event::RotationEnded(_) => 5,
    }
}

impl ReplayEvent {
    /// Decodes a row written by [`encode_replay_row`] for the event at `seq`.
    pub fn decode_row(seq: u64, row: &[u8]) -> Result<Self, crate::StoreError> {
        let corrupt = |why: &str| crate::StoreError::Corrupt(format!("replay row {seq}: {why}"));
        if row.len() < 26 || row[0] != REPLAY_ROW_FORMAT {
            return Err(corrupt("unknown format"));
        }
        let key_id = Uuid::from_slice(&row[2..18]).map_err(|_| corrupt("key id"))?;
        let at = i64::from_le_bytes(row[18..26].try_into().map_err(|_| corrupt("time"))?);
        let data = &row[26..];
        let bad = |e: rmp_serde::decode::Error| corrupt(&e.to_string());
        let event = match row[1] {
            0 => Event::Created(rmp_serde::from_slice(data).map_err(bad)?),
            1 => Event::Updated(rmp_serde::from_slice(data).map_err(bad)?),
            2 => Event::Rotated(rmp_serde::from_slice(data).map_err(bad)?),
            3 => Event::Deleted(rmp_serde::from_slice(data).map_err(bad)?),
            4 => Event::Expired(rmp_serde::from_slice(data).map_err(bad)?),
            5 => Event::RotationEnded(rmp_serde::from_slice(data).map_err(bad)?),
            _ => return Err(corrupt("unknown event type")),
        };
        Ok(Self {
            seq,
            key_id,
            occurred_at: Timestamp(at),
            event,
        })
    }
}

impl From<Envelope> for ReplayEvent {
    fn from(env: Envelope) -> Self {
        Self {
            seq: env.seq,
            key_id: env.key_id,
            occurred_at: env.occurred_at,
            event: env.event,
        }
    }
}

/// A stored event as it is published: its stored bytes untouched (they are the envelope's JSON),
/// and the few members a publisher needs, read without decoding `data`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawEvent {
    pub seq: u64,
    pub id: Uuid,
    /// As [`Envelope::subject`].
    pub subject: String,
    pub occurred_at: Timestamp,
    pub hash: String,
    pub signature: String,
    pub bytes: Vec<u8>,
}

#[derive(Deserialize)]
struct RawHead<'a> {
    seq: u64,
    id: Uuid,
    #[serde(rename = "type", borrow)]
    event_type: std::borrow::Cow<'a, str>,
    key_id: Uuid,
    #[serde(borrow)]
    account: std::borrow::Cow<'a, str>,
    occurred_at: Timestamp,
    hash: String,
    signature: String,
}

impl RawEvent {
    pub fn from_stored(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        let h: RawHead<'_> = serde_json::from_slice(bytes)?;
        Ok(Self {
            seq: h.seq,
            id: h.id,
            subject: subject(&h.account, h.key_id, &h.event_type),
            occurred_at: h.occurred_at,
            hash: h.hash,
            signature: h.signature,
            bytes: bytes.to_vec(),
        })
    }
}

fn subject(account: &str, key_id: Uuid, event_type: &str) -> String {
    format!(
        "keyledger.keys.{account}.{key_id}.{}",
        event_type.strip_prefix("key.").unwrap_or(event_type)
    )
}

impl Envelope {
    /// `keyledger.keys.<account>.<key_id>.<type without "key.">`.
    pub fn subject(&self) -> String {
        subject(&self.account, self.key_id, self.event.type_name())
    }

    /// [`envelope_hash`] of this envelope's JSON, on the writer's path: the members are written
    /// in canonical order directly, and `data` is serialized straight to its canonical form.
    pub fn chain_hash(&self) -> Result<[u8; 32], serde_json::Error> {
        use crate::canonical::write_serialize;
        let mut out = Vec::with_capacity(512);
        // RFC 8785 order: the names are ASCII, so UTF-16 order is byte order.
        text_member(&mut out, "{\"account\":", self.account.as_str())?;
        text_member(&mut out, ",\"actor\":", self.actor.as_str())?;
        out.extend_from_slice(b",\"data\":");
        write_serialize(&Data(&self.event), &mut out)?;
        text_member(&mut out, ",\"id\":", &self.id)?;
        text_member(&mut out, ",\"key_id\":", &self.key_id)?;
        text_member(&mut out, ",\"occurred_at\":", &self.occurred_at)?;
        text_member(&mut out, ",\"prev_hash\":", self.prev_hash.as_str())?;
        out.extend_from_slice(b",\"schema\":");
        write_serialize(&self.schema, &mut out)?;
        out.extend_from_slice(b",\"seq\":");
        write_serialize(&self.seq, &mut out)?;
        text_member(&mut out, ",\"signer\":", self.signer.as_str())?;
        text_member(&mut out, ",\"type\":", self.event.type_name())?;
        out.extend_from_slice(b",\"version\":");
        write_serialize(&self.version, &mut out)?;
        out.push(b'}');
        Ok(Sha256::digest(&out).into())
    }

    /// The stored JSON of this envelope: the same bytes as `serde_json::to_vec(self)` (a
    /// property test pins this), written member by member on the writer's path, where only
    /// `data` goes through serde_json.
    pub fn to_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        let mut out = Vec::with_capacity(1024);
        number_member(&mut out, "{\"seq\":", self.seq);
        text_member(&mut out, ",\"id\":", &self.id)?;
        text_member(&mut out, ",\"type\":", self.event.type_name())?;
        out.extend_from_slice(b",\"data\":");
        serde_json::to_writer(&mut out, &Data(&self.event))?;
        number_member(&mut out, ",\"schema\":", self.schema.into());
        text_member(&mut out, ",\"key_id\":", &self.key_id)?;
        text_member(&mut out, ",\"account\":", self.account.as_str())?;
        number_member(&mut out, ",\"version\":", self.version);
        text_member(&mut out, ",\"occurred_at\":", &self.occurred_at)?;
        text_member(&mut out, ",\"actor\":", self.actor.as_str())?;
        text_member(&mut out, ",\"prev_hash\":", self.prev_hash.as_str())?;
        text_member(&mut out, ",\"hash\":", self.hash.as_str())?;
        text_member(&mut out, ",\"signature\":", self.signature.as_str())?;
        text_member(&mut out, ",\"signer\":", self.signer.as_str())?;
        out.push(b'}');
        Ok(out)
    }
}

/// Appends `prefix` and `n` as serde_json writes it (every integer as is, unlike the canonical
/// form).
fn number_member(out: &mut Vec<u8>, prefix: &str, n: u64) {
    use std::io::Write as _;
    out.extend_from_slice(prefix.as_bytes());
    write!(out, "{n}").expect("writing to a Vec cannot fail");
}

/// Appends `prefix` and the canonical form of `value`; for a value that serializes as a JSON
/// string, that is also serde_json's form.
fn text_member<T: Serialize + ?Sized>(
    out: &mut Vec<u8>,
    prefix: &str,
    value: &T,
) -> Result<(), serde_json::Error> {
    out.extend_from_slice(prefix.as_bytes());
    crate::canonical::write_serialize(value, out)
}

/// The RFC 8785 (JCS) bytes of an envelope given as JSON, without `hash` and `signature`.
pub fn canonical_bytes(envelope: &Value) -> Result<Vec<u8>, serde_json::Error> {
    let mut out = Vec::with_capacity(1024);
    match envelope {
        Value::Object(map) => {
            crate::canonical::write_object(map, &["hash", "signature"], &mut out)?
        }
        other => crate::canonical::write_canonical(other, &mut out)?,
    }
    Ok(out)
}

/// SHA-256 of [`canonical_bytes`].
pub fn envelope_hash(envelope: &Value) -> Result<[u8; 32], serde_json::Error> {
    Ok(Sha256::digest(canonical_bytes(envelope)?).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 8785 §3.2.2 example input and its canonical form: the crate must agree.
    #[test]
    fn canonicalization_matches_rfc8785_example() {
        let input = r#"{
          "numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],
          "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
          "literals": [null, true, false]
        }"#;
        let v: Value = serde_json::from_str(input).unwrap();
        let out = String::from_utf8(serde_json_canonicalizer::to_vec(&v).unwrap()).unwrap();
        assert_eq!(
            out,
            r#"{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],"string":"€$\u000f\nA'B\"\\\\\"/"}"#
        );
    }

    #[test]
    fn hash_ignores_hash_and_signature_fields_only() {
        let a = serde_json::json!({"seq": 1, "hash": "x", "signature": "y"});
        let b = serde_json::json!({"seq": 1});
        let c = serde_json::json!({"seq": 2});
        assert_eq!(envelope_hash(&a).unwrap(), envelope_hash(&b).unwrap());
        assert_ne!(envelope_hash(&b).unwrap(), envelope_hash(&c).unwrap());
    }
}

#[cfg(test)]
mod number_vectors {
    /// RFC 8785 Appendix B: numbers are serialized as ECMAScript doubles.
    #[test]
    fn numbers_follow_rfc8785_appendix_b() {
        let cases = [
            ("0", "0"),
            ("-0.0", "0"),
            ("1e21", "1e+21"),
            ("1e20", "100000000000000000000"),
            ("9007199254740993", "9007199254740992"),
            ("0.000001", "0.000001"),
            ("1e-7", "1e-7"),
            ("295147905179352830000", "295147905179352830000"),
            ("-1.5e-10", "-1.5e-10"),
            ("123456789012345680000", "123456789012345680000"),
        ];
        for (input, want) in cases {
            let v: serde_json::Value = serde_json::from_str(input).unwrap();
            let got = String::from_utf8(serde_json_canonicalizer::to_vec(&v).unwrap()).unwrap();
            assert_eq!(got, want, "input {input}");
        }
    }
}
