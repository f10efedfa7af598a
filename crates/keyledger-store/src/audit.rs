//! Verification of the whole log: contiguous seqs, the hash chain, each hash recomputed from
//! the stored bytes, each signature, and each replay row (what rebuilds read) equal to the
//! signed event it stands for.

use crate::envelope::{GENESIS_HASH, ReplayEvent, envelope_hash};
use crate::signing::SignatureVerifier;
use crate::{Log, StoreError};
use serde_json::Value;

/// The first event that fails verification, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("seq {seq}: {reason}")]
pub struct AuditFailure {
    pub seq: u64,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuditError {
    #[error(transparent)]
    Failed(#[from] AuditFailure),
    #[error("{0}")]
    Store(String),
}

impl From<StoreError> for AuditError {
    fn from(e: StoreError) -> Self {
        Self::Store(e.to_string())
    }
}

/// Verifies every event; `progress(seq)` is called after each. Returns the number verified.
pub fn verify_log(
    log: &Log,
    verifier: &SignatureVerifier,
    mut progress: impl FnMut(u64),
) -> Result<u64, AuditError> {
    let mut expected_seq = 1u64;
    let mut prev_hash = GENESIS_HASH.to_string();
    let mut failure = None;
    log.scan_with_replay_rows(|key_seq, bytes, row| {
        let checked = check_one(key_seq, bytes, expected_seq, &prev_hash, verifier)
            .and_then(|hash| check_replay_row(key_seq, bytes, row).map(|()| hash));
        match checked {
            Ok(hash) => {
                prev_hash = hash;
                progress(expected_seq);
                expected_seq += 1;
                Ok(true)
            }
            Err(f) => {
                failure = Some(f);
                Ok(false)
            }
        }
    })?;
    if let Some(f) = failure {
        return Err(f.into());
    }
    let (head_seq, head_hash) = log.head()?;
    let last = expected_seq - 1;
    if head_seq != last {
        return Err(AuditFailure {
            seq: last + 1,
            reason: format!("the log head says seq {head_seq}, the last event is seq {last}"),
        }
        .into());
    }
    if last > 0 && head_hash != prev_hash {
        return Err(AuditFailure {
            seq: last,
            reason: "the log head's hash differs from the last event's".into(),
        }
        .into());
    }
    Ok(last)
}

/// The replay row of an event whose JSON already verified: present, and decoding to the same
/// folding members. A row that differs would make a rebuild disagree with the signed log.
fn check_replay_row(seq: u64, bytes: &[u8], row: Option<&[u8]>) -> Result<(), AuditFailure> {
    let fail = |reason: String| AuditFailure { seq, reason };
    let row = row.ok_or_else(|| fail("no replay row".into()))?;
    let from_row = ReplayEvent::decode_row(seq, row).map_err(|e| fail(e.to_string()))?;
    let signed = ReplayEvent::decode(bytes).map_err(|e| fail(format!("undecodable: {e}")))?;
    if from_row != signed {
        return Err(fail("the replay row differs from the signed event".into()));
    }
    Ok(())
}

fn check_one(
    key_seq: u64,
    bytes: &[u8],
    expected_seq: u64,
    prev_hash: &str,
    verifier: &SignatureVerifier,
) -> Result<String, AuditFailure> {
    let fail = |reason: String| AuditFailure {
        seq: expected_seq,
        reason,
    };
    if key_seq != expected_seq {
        return Err(fail(format!(
            "missing event (next stored is seq {key_seq})"
        )));
    }
    let v: Value =
        serde_json::from_slice(bytes).map_err(|e| fail(format!("not valid JSON: {e}")))?;
    let field = |name: &str| {
        v.get(name)
            .ok_or_else(|| fail(format!("no `{name}` field")))
    };
    if field("seq")?.as_u64() != Some(expected_seq) {
        return Err(fail(format!(
            "stored under seq {expected_seq} but says seq {}",
            field("seq")?
        )));
    }
    let str_field = |name: &str| {
        field(name)?
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| fail(format!("`{name}` is not a string")))
    };
    if str_field("prev_hash")? != prev_hash {
        return Err(fail(
            "prev_hash does not match the previous event's hash".into(),
        ));
    }
    let hash = envelope_hash(&v).map_err(|e| fail(e.to_string()))?;
    let stored = str_field("hash")?;
    if hex::encode(hash) != stored {
        return Err(fail(
            "hash does not match the event's canonical bytes".into(),
        ));
    }
    verifier
        .verify(&str_field("signer")?, &hash, &str_field("signature")?)
        .map_err(fail)?;
    Ok(stored)
}
