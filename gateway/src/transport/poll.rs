//! `GET /poll?channel=A&lastEventId=<cursor>&timeout=25`: the long-poll fallback for clients
//! behind proxies that break streaming. Stateless — the cursor is everything, so any instance
//! serves the next poll. Each poll is an SSE stream cut short: the same parsing, admission,
//! connection limits, resume and gap notices (`session::open`, `session::join`); it answers
//! at once with what follows the cursor, or waits up to `timeout` seconds (at most
//! `poll.max_timeout_seconds`) for the next event, or answers with no messages. A page holds
//! at most `limit` events (at most `history.max_page`); the rest come with the next poll.

use std::net::IpAddr;
use std::time::Duration;

use futures_util::FutureExt;
use http::header::HeaderMap;
use http::{Response, StatusCode};
use serde_json::{Value, json};
use shared::{Cursor, Position};
use tokio::time::Instant;

use crate::error::ApiError;
use crate::hub::queue::{CloseReason, Drained, Item};
use crate::hub::{Announce, HubError};
use crate::response::{self, Body};
use crate::session::{self, Opened, Transport};
use crate::state::AppState;
use crate::transport::{page, params, request};

/// How long a poll waits and how much it returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PollLimits {
    /// Longest wait for a first event once caught up.
    pub timeout: Duration,
    /// Most events in the answer.
    pub limit: usize,
}

/// Parses `timeout` (seconds) and `limit`, clamped to the configured bounds.
pub fn parse_limits(
    query: &str,
    max_timeout: u64,
    default_timeout: u64,
    max_page: usize,
) -> Result<PollLimits, ApiError> {
    let mut limits = PollLimits {
        timeout: Duration::from_secs(default_timeout.min(max_timeout)),
        limit: max_page,
    };
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        match &*key {
            "timeout" => {
                limits.timeout =
                    Duration::from_secs(params::bounded("timeout", &value, max_timeout)?)
            }
            "limit" => {
                let n = params::bounded("limit", &value, max_page as u64)?;
                limits.limit = usize::try_from(n).unwrap_or(max_page).max(1);
            }
            _ => {}
        }
    }
    Ok(limits)
}

/// Serves `GET /poll`.
pub async fn respond(
    state: &AppState,
    query: &str,
    headers: &HeaderMap,
    peer: IpAddr,
) -> Response<Body> {
    match answer(state, query, headers, peer).await {
        Ok(body) => {
            let mut res = response::json(StatusCode::OK, &body);
            res.headers_mut().insert(
                http::header::CACHE_CONTROL,
                http::HeaderValue::from_static("no-store"),
            );
            res
        }
        Err(e) => e.into_response(),
    }
}

async fn answer(
    state: &AppState,
    query: &str,
    headers: &HeaderMap,
    peer: IpAddr,
) -> Result<Value, ApiError> {
    let request = request::parse(state, query, headers)?;
    let settings = &state.settings;
    let limits = parse_limits(
        query,
        settings.poll.max_timeout_seconds,
        settings.poll.default_timeout_seconds,
        settings.history.max_page,
    )
    .inspect_err(|e| {
        state.metrics.rejected.with_label_values(&[e.code()]).inc();
    })?;
    let opened = session::open(
        state,
        Transport::Poll,
        headers,
        query,
        peer,
        &request.channels,
        &request.wants(),
    )
    .await?;
    let items = collect(state, &opened, request.cursor.is_some(), limits).await;
    // The channels' resumes end with the queue.
    opened.queue.close(CloseReason::Gone);
    let items = items?;
    let mut positions: Vec<Position> = opened.starts.iter().map(|s| s.requested).collect();
    let mut messages = Vec::new();
    let mut events = 0;
    for item in items {
        if events == limits.limit {
            break;
        }
        match item {
            Item::Event { slot, message, .. } => {
                if let Some(p) = positions.get_mut(slot as usize) {
                    *p = message.position();
                }
                messages.push(page::event(&message));
                events += 1;
            }
            Item::Gap {
                slot,
                first_available,
            } => {
                let (Some(p), Some(m)) = (
                    positions.get_mut(slot as usize),
                    opened.members.get(slot as usize),
                ) else {
                    continue;
                };
                *p = Position::new(
                    first_available.epoch,
                    first_available.offset.saturating_sub(1),
                );
                messages.push(page::gap(m.channel(), first_available));
            }
            // A long poll's queue is never armed (`hub::direct`): no tails.
            Item::Subscribed { .. } | Item::Tail(_) => {}
        }
    }
    state
        .metrics
        .delivered
        .with_label_values(&[Transport::Poll.label()])
        .inc_by(events as u64);
    Ok(json!({ "messages": messages, "next": Cursor(positions).to_string() }))
}

/// Runs every channel's resume while draining the queue: everything up to the head (at most
/// `limit` events) is taken at once; when there is nothing, the first live items are waited for
/// until the timeout.
async fn collect(
    state: &AppState,
    opened: &Opened,
    resumed: bool,
    limits: PollLimits,
) -> Result<Vec<Item>, ApiError> {
    let queue = &opened.queue;
    let joins = futures_util::future::join_all(
        opened
            .members
            .iter()
            .zip(&opened.starts)
            .map(|(m, start)| session::join(state, m, *start, resumed, Announce::Silent)),
    );
    tokio::pin!(joins);
    let deadline = Instant::now() + limits.timeout;
    let mut joined = false;
    let mut items = Vec::new();
    let mut batch = Vec::new();
    loop {
        let worth_answering = items.iter().any(|i| !matches!(i, Item::Subscribed { .. }));
        if joined && worth_answering || count_events(&items) >= limits.limit {
            // What is queued now belongs to this answer too.
            if let Some(Drained::Items) = queue.drain(&mut batch).now_or_never() {
                items.append(&mut batch);
            }
            return Ok(items);
        }
        tokio::select! {
            results = &mut joins, if !joined => {
                joined = true;
                for result in results {
                    match result {
                        Ok(()) | Err(HubError::Closed) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            drained = queue.drain(&mut batch) => match drained {
                Drained::Items => items.append(&mut batch),
                // Shutdown, or an overflow: answer with what is known; the next poll resumes.
                Drained::Closed(_) => return Ok(items),
            },
            _ = tokio::time::sleep_until(deadline), if joined => return Ok(items),
        }
    }
}

fn count_events(items: &[Item]) -> usize {
    items
        .iter()
        .filter(|i| matches!(i, Item::Event { .. }))
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::ErrorCode;

    #[test]
    fn limits_default_and_clamp() {
        let l = parse_limits("channel=a", 30, 25, 100).unwrap();
        assert_eq!(
            l,
            PollLimits {
                timeout: Duration::from_secs(25),
                limit: 100
            }
        );
        let l = parse_limits("timeout=600&limit=1000", 30, 25, 100).unwrap();
        assert_eq!(
            l,
            PollLimits {
                timeout: Duration::from_secs(30),
                limit: 100
            }
        );
        let l = parse_limits("timeout=0&limit=0", 30, 25, 100).unwrap();
        assert_eq!(
            l,
            PollLimits {
                timeout: Duration::ZERO,
                limit: 1
            }
        );
    }

    #[test]
    fn garbage_is_refused() {
        for q in ["timeout=x", "timeout=-1", "limit=1.5"] {
            let e = parse_limits(q, 30, 25, 100).unwrap_err();
            assert_eq!(e.code(), ErrorCode::InvalidParameter, "{q}");
        }
    }
}
