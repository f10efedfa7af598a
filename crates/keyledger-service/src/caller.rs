//! Who is calling, and what they may do.

use crate::ServiceError;
use keyledger_core::model::parse_net;
use keyledger_core::{KeyState, Timestamp};
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

    /// The scopes that bound what a non-admin key may grant or change; `None` for admins,
    /// the system and the CLI.
    pub fn scope_limit(&self) -> Option<&[String]> {
        match self {
            Actor::Key(c) if !c.is_admin() => Some(&c.scopes),
            _ => None,
        }
    }

    /// A non-admin key can only grant scopes it holds itself.
    pub fn may_grant(&self, scopes: &[String]) -> Result<(), ServiceError> {
        let Actor::Key(c) = self else { return Ok(()) };
        if c.is_admin() {
            return Ok(());
        }
        match scopes.iter().find(|s| !c.scopes.contains(s)) {
            Some(s) => Err(ServiceError::Forbidden(format!(
                "scopes: cannot grant `{s}`, which the calling key does not hold"
            ))),
            None => Ok(()),
        }
    }

    /// A non-admin key cannot make a key less restricted than itself, as it cannot grant a
    /// scope it lacks: the allowed IPs it sets must lie within its own (when it has any; none
    /// would allow every address), and an expiry it sets must not be later than its own (when
    /// it has one; none would never expire). `None` leaves a field as it is. Entries that are
    /// not addresses are left to the domain's validation (400).
    pub fn may_restrict(
        &self,
        allowed_ips: Option<&[String]>,
        expires_at: Option<Option<Timestamp>>,
    ) -> Result<(), ServiceError> {
        let Actor::Key(c) = self else { return Ok(()) };
        if c.is_admin() {
            return Ok(());
        }
        if let Some(ips) = allowed_ips
            && !c.allowed_ips.is_empty()
        {
            let within = |s: &String| {
                parse_net(s.trim()).is_none_or(|n| c.allowed_ips.iter().any(|own| own.contains(&n)))
            };
            if ips.is_empty() || !ips.iter().all(within) {
                let own: Vec<String> = c.allowed_ips.iter().map(ToString::to_string).collect();
                return Err(ServiceError::Forbidden(format!(
                    "allowed_ips: the calling key may be used only from {}, and cannot allow \
                     addresses beyond that (nor set none, which allows every address)",
                    own.join(", ")
                )));
            }
        }
        if let (Some(expiry), Some(own)) = (expires_at, c.expires_at)
            && expiry.is_none_or(|t| t > own)
        {
            return Err(ServiceError::Forbidden(format!(
                "expires_at: the calling key expires at {own}, and cannot set a later expiry \
                 (nor none)"
            )));
        }
        Ok(())
    }

    /// A secret rotated away but still in its grace period may go on working for its key, but
    /// not reset or revoke that key: whoever still holds only the old secret (after a leak,
    /// say) must not lock out the holder of the new one.
    pub fn may_replace(&self, id: Uuid) -> Result<(), ServiceError> {
        match self {
            Actor::Key(c) if c.rotating && c.key_id == id => Err(ServiceError::Forbidden(
                "the calling secret was rotated away (it is in its grace period): it cannot \
                 reset or revoke its own key; use the current secret"
                    .into(),
            )),
            _ => Ok(()),
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
    /// The key's own limits, which bound what it may set on keys (see [`Actor::may_restrict`]).
    pub allowed_ips: Vec<ipnet::IpNet>,
    pub expires_at: Option<Timestamp>,
    /// Authenticated by the previous secret, inside its grace period.
    pub rotating: bool,
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
        }
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
