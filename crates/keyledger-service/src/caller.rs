//! Who is calling, and what they may do.

use crate::{ServiceError, VerifyCode, refusal};
use keyledger_core::model::parse_net;
use keyledger_core::{Action, KeyState, SecretHash, Timestamp};
use std::net::IpAddr;
use uuid::Uuid;

pub const SCOPE_READ: &str = "keys:read";
pub const SCOPE_WRITE: &str = "keys:write";
pub const SCOPE_VERIFY: &str = "keys:verify";
pub const SCOPE_EVENTS: &str = "events:read";
pub const SCOPE_ADMIN: &str = "admin";

/// The author of a command, as recorded in the event's `actor`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    Key(Caller),
    /// The service itself (bootstrap, scheduled events).
    System,
    /// An operator at the command line.
    Cli,
}

impl Actor {
    pub fn name(&self) -> String {
        match self {
            Actor::Key(c) => c.key_id.to_string(),
            Actor::System => "system".into(),
            Actor::Cli => "cli".into(),
        }
    }

    /// `None` when the actor may act in every account.
    pub fn account_limit(&self) -> Option<&str> {
        match self {
            Actor::Key(c) => c.account_limit(),
            _ => None,
        }
    }

    pub fn require(&self, scope: &str) -> Result<(), ServiceError> {
        match self {
            Actor::Key(c) => c.require(scope),
            _ => Ok(()),
        }
    }

    /// What a non-admin key may do to keys; `None` for admins, the system and the CLI.
    pub fn bounds(&self) -> Option<Bounds<'_>> {
        match self {
            Actor::Key(c) => c.bounds(),
            _ => None,
        }
    }

    /// Whether the actor can see a key (keys of other accounts are invisible, as if absent).
    pub fn sees(&self, state: &KeyState) -> bool {
        match self {
            Actor::Key(c) => c.sees(state),
            _ => true,
        }
    }
}

/// An authenticated API key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub key_id: Uuid,
    pub account: String,
    pub scopes: Vec<String>,
    /// The key's own limits, which bound what it may set on keys (see [`Bounds::check`]).
    pub allowed_ips: Vec<ipnet::IpNet>,
    pub expires_at: Option<Timestamp>,
    /// Authenticated by the previous secret, inside its grace period: it may go on reading and
    /// verifying, but not change keys, or whoever holds only the old secret (after a leak, say)
    /// could lock out the holder of the new one, directly or through a key it creates.
    pub rotating: bool,
    /// How it authenticated, to check again when its command commits; `None` for a caller made
    /// from a key's state alone.
    pub credential: Option<Credential>,
}

/// What a calling key presented, kept to ask again later whether it still authenticates: its
/// secret's hash (never the secret) and the client's address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    pub hash: SecretHash,
    pub ip: Option<IpAddr>,
}

impl Caller {
    pub fn from_state(s: &KeyState) -> Self {
        Self {
            key_id: s.id,
            account: s.account.clone(),
            scopes: s.scopes.clone(),
            allowed_ips: s.allowed_ips.clone(),
            expires_at: s.expires_at,
            rotating: false,
            credential: None,
        }
    }

    /// The calling key as it stands when its command commits, `state` being the key's state
    /// then: between authentication and commit it may have been revoked, disabled, narrowed or
    /// rotated away (by a command of the same batch, say). The checks are authentication's, in
    /// its order; without a credential, only the key's own standing is checked. `Ok(None)`: it
    /// stands as it authenticated (the common case, which costs the writer no allocation).
    pub(crate) fn at_commit(
        &self,
        state: Option<&KeyState>,
        now: Timestamp,
    ) -> Result<Option<Caller>, ServiceError> {
        let invalid = |code| Err(ServiceError::CallerInvalid(code));
        let Some(s) = state else {
            return invalid(VerifyCode::NotFound);
        };
        let in_grace = |hash: &SecretHash| {
            s.previous
                .as_ref()
                .is_some_and(|p| p.secret_hash == *hash && p.until > now)
        };
        let rotating = match &self.credential {
            None => self.rotating,
            Some(c) if c.hash == s.secret_hash => false,
            Some(c) if in_grace(&c.hash) => true,
            Some(_) => return invalid(VerifyCode::NotFound),
        };
        let ip_allowed = || self.credential.as_ref().is_none_or(|c| s.allows_ip(c.ip));
        if let Some(code) = refusal(s.is_deleted(), s.enabled, s.is_expired_at(now), ip_allowed) {
            invalid(code)
        } else if rotating == self.rotating
            && s.scopes == self.scopes
            && s.allowed_ips == self.allowed_ips
            && s.expires_at == self.expires_at
        {
            // A key's account never changes.
            Ok(None)
        } else {
            Ok(Some(Caller {
                rotating,
                credential: self.credential.clone(),
                ..Caller::from_state(s)
            }))
        }
    }

    /// What a non-admin key may do to keys; `None` for an admin.
    pub fn bounds(&self) -> Option<Bounds<'_>> {
        (!self.is_admin()).then_some(Bounds {
            scopes: &self.scopes,
            allowed_ips: &self.allowed_ips,
            expires_at: self.expires_at,
        })
    }

    pub fn is_admin(&self) -> bool {
        self.scopes.iter().any(|s| s == SCOPE_ADMIN)
    }

    /// `None` for an admin, which may act in every account; otherwise the key's own account.
    pub fn account_limit(&self) -> Option<&str> {
        (!self.is_admin()).then_some(self.account.as_str())
    }

    /// Whether this key can see a key (keys of other accounts are invisible, as if absent).
    pub fn sees(&self, state: &KeyState) -> bool {
        self.account_limit().is_none_or(|a| a == state.account)
    }

    pub fn require(&self, scope: &str) -> Result<(), ServiceError> {
        if self.is_admin() || self.scopes.iter().any(|s| s == scope) {
            Ok(())
        } else {
            Err(ServiceError::Forbidden(format!(
                "the calling key lacks the `{scope}` scope"
            )))
        }
    }
}

/// The powers and limits of a non-admin calling key (borrowed from its [`Caller`]), which
/// bound what it may do to keys. The writer checks them against the key's state at commit
/// (after an idempotent retry has got its first answer), as [`Bounds::check`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bounds<'a> {
    pub scopes: &'a [String],
    pub allowed_ips: &'a [ipnet::IpNet],
    pub expires_at: Option<Timestamp>,
}

impl Bounds<'_> {
    /// A non-admin key may change, reset or revoke only keys whose scopes it all holds, and
    /// grant only scopes it holds. Nor may it lift its own limits: the allowed IPs it sets
    /// must lie within its own (when it has any; none would allow every address), and an
    /// expiry it sets must not be later than its own (when it has one); and it may reset (and
    /// so obtain a secret of) only keys whose limits lie within its own.
    pub fn check(&self, action: &Action, current: Option<&KeyState>) -> Result<(), ServiceError> {
        match action {
            Action::Create(new) => self.may_grant(&new.scopes),
            Action::Update(patch) => patch.scopes.as_ref().map_or(Ok(()), |s| self.may_grant(s)),
            _ => Ok(()),
        }?;
        if let (Some(s), false) = (current, matches!(action, Action::Create(_)))
            && let Some(missing) = s.scopes.iter().find(|sc| !self.scopes.contains(sc))
        {
            return Err(ServiceError::Forbidden(format!(
                "the key holds the scope `{missing}`, which the calling key does not hold"
            )));
        }
        match action {
            Action::Create(new) => self.may_set(Some(&new.allowed_ips), Some(new.expires_at)),
            Action::Update(patch) => {
                let Some(s) = current else { return Ok(()) };
                // Only changes are bounded: a value the key already has grants nothing.
                let same_ips = |ips: &[String]| {
                    let parsed: Option<Vec<_>> =
                        ips.iter().map(|ip| parse_net(ip.trim())).collect();
                    parsed.is_some_and(|p| p == s.allowed_ips)
                };
                self.may_set(
                    patch.allowed_ips.as_deref().filter(|ips| !same_ips(ips)),
                    patch.expires_at.filter(|e| *e != s.expires_at),
                )?;
                // A key less limited than the caller (once patched) may be renamed, narrowed,
                // disabled or stripped of scopes; anything that gives it more (scopes, a later
                // expiry, enabled again) or says more about it to those who verify it (role,
                // owner, metadata) would let the caller act through it beyond its own limits.
                let more_scopes = patch
                    .scopes
                    .as_ref()
                    .is_some_and(|new| new.iter().any(|sc| !s.scopes.contains(sc)));
                let enabled_again = patch.enabled == Some(true) && !s.enabled;
                let later_expiry = match (s.expires_at, patch.expires_at) {
                    (Some(_), Some(None)) => true,
                    (Some(now), Some(Some(new))) => new > now,
                    _ => false,
                };
                // Only values that differ count: a PUT repeats what it does not change.
                let metadata_changes = patch
                    .metadata
                    .as_ref()
                    .is_some_and(|m| keyledger_core::metadata_differs(m, &s.metadata));
                let described = patch.role.as_ref().is_some_and(|r| *r != s.role)
                    || patch.owner.as_ref().is_some_and(|o| *o != s.owner)
                    || metadata_changes;
                let ips: Vec<ipnet::IpNet> = match &patch.allowed_ips {
                    Some(ips) => ips.iter().filter_map(|ip| parse_net(ip.trim())).collect(),
                    None => s.allowed_ips.clone(),
                };
                let expires_at = patch.expires_at.unwrap_or(s.expires_at);
                if (more_scopes || enabled_again || later_expiry || described)
                    && !self.covers(&ips, expires_at)
                {
                    return Err(ServiceError::Forbidden(
                        "the key may be used from more addresses or for longer than the \
                         calling key: it may rename, narrow, disable or revoke it, but not give \
                         it more scopes, a later expiry, another role, owner or metadata, or \
                         enable it again"
                            .into(),
                    ));
                }
                Ok(())
            }
            Action::Reset { .. } => match current {
                Some(s) if !self.covers(&s.allowed_ips, s.expires_at) => {
                    Err(ServiceError::Forbidden(
                        "the key may be used from more addresses or for longer than the calling \
                         key: resetting it would hand over a less limited secret"
                            .into(),
                    ))
                }
                _ => Ok(()),
            },
            _ => Ok(()),
        }
    }

    fn may_grant(&self, scopes: &[String]) -> Result<(), ServiceError> {
        match scopes.iter().find(|s| !self.scopes.contains(s)) {
            Some(s) => Err(ServiceError::Forbidden(format!(
                "scopes: cannot grant `{s}`, which the calling key does not hold"
            ))),
            None => Ok(()),
        }
    }

    /// `None` leaves a field as it is. Entries that are not addresses are left to the domain's
    /// validation (400).
    fn may_set(
        &self,
        allowed_ips: Option<&[String]>,
        expires_at: Option<Option<Timestamp>>,
    ) -> Result<(), ServiceError> {
        if let Some(ips) = allowed_ips
            && !self.allowed_ips.is_empty()
        {
            let within = |s: &String| parse_net(s.trim()).is_none_or(|n| self.within_ips(&n));
            if ips.is_empty() || !ips.iter().all(within) {
                let own: Vec<String> = self.allowed_ips.iter().map(ToString::to_string).collect();
                return Err(ServiceError::Forbidden(format!(
                    "allowed_ips: the calling key may be used only from {}, and cannot allow \
                     addresses beyond that (nor set none, which allows every address)",
                    own.join(", ")
                )));
            }
        }
        if let (Some(expiry), Some(own)) = (expires_at, self.expires_at)
            && expiry.is_none_or(|t| t > own)
        {
            return Err(ServiceError::Forbidden(format!(
                "expires_at: the calling key expires at {own}, and cannot set a later expiry \
                 (nor none)"
            )));
        }
        Ok(())
    }

    fn within_ips(&self, net: &ipnet::IpNet) -> bool {
        self.allowed_ips.iter().any(|own| own.contains(net))
    }

    /// Whether a key with these limits is no less limited than the calling key.
    fn covers(&self, allowed_ips: &[ipnet::IpNet], expires_at: Option<Timestamp>) -> bool {
        let ips = self.allowed_ips.is_empty()
            || (!allowed_ips.is_empty() && allowed_ips.iter().all(|n| self.within_ips(n)));
        let expiry = self
            .expires_at
            .is_none_or(|own| expires_at.is_some_and(|t| t <= own));
        ips && expiry
    }
}
