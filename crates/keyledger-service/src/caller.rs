//! Who is calling, and what they may do.

use crate::ServiceError;
use keyledger_core::KeyState;
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
}

impl Caller {
    pub fn from_state(s: &KeyState) -> Self {
        Self {
            key_id: s.id,
            account: s.account.clone(),
            scopes: s.scopes.clone(),
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
