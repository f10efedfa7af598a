//! The history endpoints: the log, one key's events, and the live Server-Sent Events tail.

use crate::AppState;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{Auth, NoQuery, QueryParams};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::Stream;
use keyledger_service::{Caller, EventQuery, SCOPE_EVENTS, Service, ServiceError};
use keyledger_store::Envelope;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, watch};
use utoipa::{IntoParams, ToSchema};

pub const MAX_EVENTS_LIMIT: usize = 1000;

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventParams {
    /// Return events with seq greater than this (default 0); at most the log's last seq.
    pub after: Option<u64>,
    /// 1..=1000, default 100.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
    /// Only this type, e.g. `key.rotated`.
    #[serde(rename = "type")]
    #[param(
        rename = "type",
        pattern = "^key\\.(created|updated|rotated|deleted|expired|rotation_ended)$"
    )]
    pub event_type: Option<String>,
    /// Admin only: one account.
    pub account: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EventPage {
    /// Envelopes as described in docs/EVENTS.md.
    #[schema(value_type = Vec<Object>)]
    pub data: Vec<Envelope>,
    /// Pass as `after` for the next page (the last seq examined).
    pub next_after: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct KeyEvents {
    #[schema(value_type = Vec<Object>)]
    pub data: Vec<Envelope>,
}

fn check_type(t: &Option<String>) -> Result<(), ApiError> {
    match t {
        Some(t) if !keyledger_core::Event::ALL_TYPES.contains(&t.as_str()) => {
            Err(ApiError::validation(format!(
                "type: one of {}",
                keyledger_core::Event::ALL_TYPES.join(", ")
            )))
        }
        _ => Ok(()),
    }
}

/// The event log, in seq order.
#[utoipa::path(get, path = "/v1/events", tag = "events", params(EventParams),
    responses((status = 200, body = EventPage), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_events(
    State(st): State<AppState>,
    auth: Auth,
    QueryParams(p): QueryParams<EventParams>,
) -> Result<Json<EventPage>, ApiError> {
    let limit = p.limit.unwrap_or(100);
    if !(1..=MAX_EVENTS_LIMIT).contains(&limit) {
        return Err(ApiError::validation(format!(
            "limit: must be between 1 and {MAX_EVENTS_LIMIT}"
        )));
    }
    check_type(&p.event_type)?;
    let service = st.service.clone();
    let actor = auth.actor();
    let query = EventQuery {
        after: p.after.unwrap_or(0),
        limit,
        event_type: p.event_type,
        account: p.account,
    };
    let (data, next_after) = tokio::task::spawn_blocking(move || service.events(&actor, query))
        .await
        .map_err(|_| ApiError::from(ServiceError::Unavailable("reader failed".into())))??;
    Ok(Json(EventPage { data, next_after }))
}

/// A key's full history, also after its revocation.
#[utoipa::path(get, path = "/v1/keys/{id}/events", tag = "events",
    params(("id" = uuid::Uuid, Path, description = "key id")),
    responses((status = 200, body = KeyEvents), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn key_events(
    State(st): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    _: NoQuery,
) -> Result<Json<KeyEvents>, ApiError> {
    let id = uuid::Uuid::parse_str(&id).map_err(|_| ApiError::not_found())?;
    Ok(Json(KeyEvents {
        data: st.service.key_events(&auth.actor(), id)?,
    }))
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StreamParams {
    /// Start after this seq (default 0 = from the beginning; at most the log's last seq). A
    /// `Last-Event-ID` header wins: an EventSource reconnecting to the same URL resumes where
    /// it left off.
    pub after: Option<u64>,
    /// Only this type, e.g. `key.rotated`.
    #[serde(rename = "type")]
    #[param(
        rename = "type",
        pattern = "^key\\.(created|updated|rotated|deleted|expired|rotation_ended)$"
    )]
    pub event_type: Option<String>,
    /// Admin only: one account.
    pub account: Option<String>,
}

/// Live tail as Server-Sent Events: every event after `Last-Event-ID` (or else `after`) once,
/// in order, then new ones as they are committed. `id` is the seq, `event` the type, `data` the
/// envelope. A comment line is sent every 15 s as a heartbeat. The stream ends once the
/// caller's key no longer authenticates (revoked, disabled, expired, rotated away, outside its
/// allowed IPs) or loses `events:read` or admin: every such change is an event of that key,
/// which the stream sees.
#[utoipa::path(get, path = "/v1/events/stream", tag = "events", params(StreamParams),
    responses((status = 200, content_type = "text/event-stream", description = "event stream"),
              (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn stream_events(
    State(st): State<AppState>,
    auth: Auth,
    headers: HeaderMap,
    QueryParams(p): QueryParams<StreamParams>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    auth.caller.require(SCOPE_EVENTS)?;
    check_type(&p.event_type)?;
    let account = st.service.account_filter(&auth.actor(), p.account)?;
    // A resume point that cannot be read is refused: skipping it would replay the whole log.
    // An empty one is no resume point (SSE: an empty last event id is not sent).
    let last_event_id = headers
        .get("last-event-id")
        .filter(|v| !v.as_bytes().trim_ascii().is_empty())
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    ApiError::validation("Last-Event-ID: expected a non-negative integer (a seq)")
                })
        })
        .transpose()?;
    let last = last_event_id.or(p.after).unwrap_or(0);
    let field = if last_event_id.is_some() {
        "Last-Event-ID"
    } else {
        "after"
    };
    st.service.check_cursor(field, last)?;
    let tail = Tail {
        // Subscribe before reading the log, so that nothing falls between the two.
        live: st.service.subscribe(),
        service: st.service.clone(),
        last,
        backlog: VecDeque::new(),
        catch_up: true,
        account,
        event_type: p.event_type,
        shutdown: st.shutdown.clone(),
        caller: auth.caller,
    };
    let stream =
        futures_util::stream::unfold(
            tail,
            |mut t| async move { t.next().await.map(|ev| (Ok(ev), t)) },
        );
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// Reads the log until it has caught up, then follows the live broadcast; goes back to the log
/// whenever it lags or sees a gap. The writer never waits for a slow client.
struct Tail {
    service: Service,
    live: broadcast::Receiver<Arc<Envelope>>,
    last: u64,
    backlog: VecDeque<Envelope>,
    catch_up: bool,
    account: Option<String>,
    event_type: Option<String>,
    shutdown: watch::Receiver<bool>,
    /// The key as it authenticated, with its credential (the secret's hash, never the secret).
    caller: Caller,
}

impl Tail {
    fn wanted(&self, env: &Envelope) -> bool {
        self.account.as_ref().is_none_or(|a| *a == env.account)
            && self
                .event_type
                .as_ref()
                .is_none_or(|t| t == env.event.type_name())
    }

    /// Whether the caller may still read, checked before each envelope of its own key, wanted
    /// or not: every change that can end its access (revoked, disabled, expired, rotated away,
    /// new allowed IPs or scopes) is such an envelope, which it is then not sent.
    fn authorized(&self, env: &Envelope) -> bool {
        if env.key_id != self.caller.key_id {
            return true;
        }
        let Some(entry) = self.caller.credential.as_ref().and_then(|c| {
            self.service
                .still_authenticates(&c.hash, c.ip, keyledger_service::now())
        }) else {
            return false;
        };
        // A catching-up stream reads the log, which may hold an envelope the key table has
        // not applied yet: it ends rather than judge that envelope by the state before it.
        let now = Caller::from_state(&entry.state);
        entry.state.version >= env.version
            && now.require(SCOPE_EVENTS).is_ok()
            && now.account_limit() == self.caller.account_limit()
    }

    /// Advances past `env`; the SSE event when the client wants it.
    fn emit(&mut self, env: &Envelope) -> Option<SseEvent> {
        if env.seq <= self.last {
            return None;
        }
        self.last = env.seq;
        if !self.wanted(env) {
            return None;
        }
        let data = serde_json::to_string(env).ok()?;
        Some(
            SseEvent::default()
                .id(env.seq.to_string())
                .event(env.event.type_name())
                .data(data),
        )
    }

    async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if *self.shutdown.borrow() {
                return None;
            }
            if let Some(env) = self.backlog.pop_front() {
                if !self.authorized(&env) {
                    return None;
                }
                if let Some(ev) = self.emit(&env) {
                    return Some(ev);
                }
                continue;
            }
            if self.catch_up {
                let (log, after) = (self.service.log().clone(), self.last);
                let page = tokio::task::spawn_blocking(move || log.read(after, 512))
                    .await
                    .ok()?
                    .ok()?;
                if page.is_empty() {
                    self.catch_up = false;
                } else {
                    self.backlog.extend(page);
                }
                continue;
            }
            let received = tokio::select! {
                r = self.live.recv() => r,
                _ = self.shutdown.changed() => return None,
            };
            match received {
                Ok(env) if env.seq == self.last + 1 => {
                    if !self.authorized(&env) {
                        return None;
                    }
                    if let Some(ev) = self.emit(&env) {
                        return Some(ev);
                    }
                }
                Ok(env) if env.seq <= self.last => {}
                // A gap or a lag: the log holds everything that was broadcast.
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => self.catch_up = true,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}
