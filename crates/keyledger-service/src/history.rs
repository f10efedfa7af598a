//! Reading the history: the log, one key's stream, a key as of a point in time, and the
//! scheduler that records `key.expired` and `key.rotation_ended` when they fall due.

use crate::{Actor, SCOPE_EVENTS, SCOPE_READ, Service, ServiceError, now};
use keyledger_core::{Action, KeyState, Timestamp, evolve};
use keyledger_store::Envelope;
use std::time::Duration;
use uuid::Uuid;

/// A point in the history: a seq, or an instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AsOf {
    Seq(u64),
    Time(Timestamp),
}

impl AsOf {
    /// A number is a seq; anything else must be RFC 3339.
    pub fn parse(s: &str) -> Option<Self> {
        if let Ok(seq) = s.parse() {
            return Some(Self::Seq(seq));
        }
        Timestamp::parse_rfc3339(s).ok().map(Self::Time)
    }

    fn includes(&self, env: &Envelope) -> bool {
        match *self {
            AsOf::Seq(seq) => env.seq <= seq,
            AsOf::Time(t) => env.occurred_at <= t,
        }
    }
}

/// Filters of `GET /v1/events`.
#[derive(Debug, Clone, Default)]
pub struct EventQuery {
    pub after: u64,
    pub limit: usize,
    pub event_type: Option<String>,
    pub account: Option<String>,
}

/// How many events one page may examine (filters can skip many): bounds what one call costs.
/// A page may hold fewer than `limit` events, or none; `next_after` then goes on from there.
const MAX_SCAN: usize = 10_000;

/// Folds a stream's events (in version order) up to `as_of`.
pub fn fold_until(events: &[Envelope], as_of: AsOf) -> Option<KeyState> {
    events
        .iter()
        .take_while(|e| as_of.includes(e))
        .fold(None, |s, e| {
            Some(evolve(s, e.key_id, e.occurred_at, &e.event))
        })
}

impl Service {
    /// The account a listing by `actor` covers: the `requested` one (well-formed, and the
    /// actor's own unless it is an admin), or for non-admins their own; `None` = all.
    pub fn account_filter(
        &self,
        actor: &Actor,
        requested: Option<String>,
    ) -> Result<Option<String>, ServiceError> {
        if let Some(a) = &requested {
            keyledger_core::validate::account(a)?;
        }
        match (actor.account_limit(), requested) {
            (Some(limit), Some(a)) if a != limit => Err(ServiceError::Forbidden(
                "account: only admin keys may read other accounts".into(),
            )),
            (Some(limit), _) => Ok(Some(limit.to_owned())),
            (None, a) => Ok(a),
        }
    }

    /// A page of the log and the seq to continue after.
    pub fn events(
        &self,
        actor: &Actor,
        q: EventQuery,
    ) -> Result<(Vec<Envelope>, u64), ServiceError> {
        actor.require(SCOPE_EVENTS)?;
        let account = self.account_filter(actor, q.account)?;
        self.check_cursor("after", q.after)?;
        let mut out = Vec::new();
        let mut next_after = q.after;
        let mut scanned = 0usize;
        let filtered = account.is_some() || q.event_type.is_some();
        self.log()
            .scan_raw(q.after, |seq, bytes| {
                scanned += 1;
                next_after = seq;
                // Filters read only their fields; the whole envelope is built for kept events.
                let keep = !filtered || {
                    let r = keyledger_store::log::decode_routing(bytes)?;
                    account.as_ref().is_none_or(|a| *a == r.account)
                        && q.event_type.as_ref().is_none_or(|t| *t == r.event_type)
                };
                if keep {
                    out.push(keyledger_store::log::decode(bytes)?);
                }
                Ok(out.len() < q.limit && scanned < MAX_SCAN)
            })
            .map_err(ServiceError::storage)?;
        Ok((out, next_after))
    }

    /// Refuses a cursor beyond the log's last committed seq. No client can have seen such a
    /// seq, so it comes from another log or from before a restore, and following it would
    /// silently skip every event up to it.
    pub fn check_cursor(&self, field: &str, after: u64) -> Result<(), ServiceError> {
        let (head, _) = self.log().head().map_err(ServiceError::storage)?;
        if after > head {
            return Err(ServiceError::Invalid {
                field: field.into(),
                message: format!(
                    "{after} is beyond the log's last seq ({head}): a cursor from another log, \
                     or from before a restore"
                ),
            });
        }
        Ok(())
    }

    /// The full stream of a key the actor may see (also after its revocation).
    pub fn key_events(&self, actor: &Actor, id: Uuid) -> Result<Vec<Envelope>, ServiceError> {
        actor.require(SCOPE_EVENTS)?;
        self.visible_any(actor, id)?;
        self.log().stream(id).map_err(ServiceError::storage)
    }

    /// The key as it was at `as_of` (also for keys revoked since). 404 before its creation.
    pub fn get_as_of(
        &self,
        actor: &Actor,
        id: Uuid,
        as_of: AsOf,
    ) -> Result<KeyState, ServiceError> {
        actor.require(SCOPE_READ)?;
        if let AsOf::Seq(seq) = as_of {
            self.check_cursor("as_of", seq)?;
        }
        self.visible_any(actor, id)?;
        let events = self.log().stream(id).map_err(ServiceError::storage)?;
        fold_until(&events, as_of).ok_or(ServiceError::NotFound)
    }

    fn visible_any(&self, actor: &Actor, id: Uuid) -> Result<(), ServiceError> {
        self.visible(actor, id)
            .map(drop)
            .ok_or(ServiceError::NotFound)
    }

    /// Records every `key.expired` and `key.rotation_ended` that is due. Each fires once: the
    /// domain emits nothing when it was already recorded. Returns the number of events.
    pub async fn run_due(&self) -> usize {
        let t = now();
        let due: Vec<(Uuid, Action)> = self.with_model(|m| {
            m.due(t.millis())
                .into_iter()
                .filter_map(|id| m.get(&id))
                .flat_map(|e| {
                    let s = &e.state;
                    let expire = (s.is_expired_at(t) && !s.expired && !s.is_deleted())
                        .then_some((s.id, Action::Expire));
                    let end = s
                        .previous
                        .as_ref()
                        .filter(|p| p.until <= t)
                        .map(|_| (s.id, Action::EndRotation));
                    expire.into_iter().chain(end)
                })
                .collect()
        });
        let mut fired = 0;
        for (id, action) in due {
            match self.system(id, action).await {
                Ok(c) => fired += c.events.len(),
                Err(e) => {
                    tracing::warn!(key_id = %id, error = %e, "scheduled event not recorded; will retry")
                }
            }
        }
        fired
    }

    /// Runs [`Service::run_due`] now (catching up on what fell due while the service was down)
    /// and then every `every`, until the service shuts down.
    pub fn spawn_scheduler(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let service = self.clone();
        tokio::spawn(async move {
            loop {
                if !service.is_ready() {
                    break;
                }
                service.run_due().await;
                tokio::time::sleep(every).await;
            }
        })
    }
}
