use keyledger_core::DomainError;

/// Why a service call failed. Each variant maps to one HTTP status at the edge.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceError {
    /// A field is invalid (400); the message names the field.
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    /// Absent, or in another account (404).
    #[error("key not found")]
    NotFound,
    /// A write to a revoked key (409).
    #[error("the key has been revoked")]
    Deleted,
    /// The key id is taken, or a concurrent write won (409).
    #[error("{0}")]
    Conflict(String),
    /// The account has as many keys (not revoked) as the server allows one account, or more
    /// (the limit was lowered, or the offline CLI created keys) (409).
    #[error(
        "account: {account} has {count} keys that are not revoked, and this server allows at \
         most {limit} per account; revoke keys to make room"
    )]
    KeyLimit {
        account: String,
        count: usize,
        limit: usize,
    },
    /// `If-Match` did not match the key's version (412).
    #[error("version mismatch: expected {expected}, the key is at {actual}")]
    VersionMismatch { expected: u64, actual: u64 },
    /// The caller lacks a scope or tries to grant one it does not hold (403).
    #[error("{0}")]
    Forbidden(String),
    /// The `Idempotency-Key` was used within 24 h for a different request (422).
    #[error("Idempotency-Key: already used for a different request")]
    IdempotencyMismatch,
    /// The calling key no longer authenticated when its command was to commit: it was revoked,
    /// disabled, rotated away, … after the request was authenticated (401).
    #[error("invalid API key ({0}) by the time the request was to commit")]
    CallerInvalid(crate::VerifyCode),
    /// Storage failed or the service is shutting down (503); nothing was written.
    #[error("{0}")]
    Unavailable(String),
}

impl ServiceError {
    /// A storage read failed (503). The cause goes to the log; the caller gets a fixed message,
    /// as for a failed commit: no paths, no internals.
    pub(crate) fn storage(e: impl std::fmt::Display) -> Self {
        tracing::error!(error = %e, "storage read failed");
        Self::Unavailable("storage is unavailable; retry later".into())
    }
}

impl From<DomainError> for ServiceError {
    fn from(e: DomainError) -> Self {
        match e {
            DomainError::Invalid { field, message } => Self::Invalid { field, message },
            DomainError::AlreadyExists => {
                Self::Conflict("a key with this id already exists".into())
            }
            DomainError::NotFound => Self::NotFound,
            DomainError::Deleted => Self::Deleted,
            DomainError::VersionMismatch { expected, actual } => {
                Self::VersionMismatch { expected, actual }
            }
        }
    }
}

/// Why a presented key does not authenticate (401).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing API key")]
    Missing,
    #[error("invalid API key ({0})")]
    Invalid(crate::VerifyCode),
}

#[cfg(test)]
mod tests {
    use super::ServiceError;

    #[test]
    fn a_failed_storage_read_answers_without_its_internals() {
        let e = ServiceError::storage("I/O error: /var/lib/keyledger/keyledger.redb (os error 5)");
        assert_eq!(
            e,
            ServiceError::Unavailable("storage is unavailable; retry later".into())
        );
    }
}
