//! `GET /presence?channel=C`: who is subscribed to a channel right now, on every instance, as
//! `{channel, count, clients}`; past `presence.max_entries` connections, `clients` is left out
//! and `max_entries` says why (the count stays exact). `GET /presence/stats?channel=C` answers
//! `{channel, count}` alone, for channels too big to list. Authorized like `GET /history`.

use http::header::HeaderMap;
use http::{Response, StatusCode};
use serde_json::{Map, Value, json};
use shared::{ChannelName, ErrorCode};

use crate::error::ApiError;
use crate::presence::Roster;
use crate::response::{self, Body};
use crate::state::AppState;
use crate::transport::history::authorize;

/// Parses the one `channel` a presence request names.
pub fn parse(query: &str) -> Result<ChannelName, ApiError> {
    let mut channel = None;
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        if key != "channel" {
            continue;
        }
        if channel.is_some() {
            return Err(ApiError::bad_request(
                ErrorCode::InvalidParameter,
                "one channel per presence request",
            ));
        }
        channel = Some(
            ChannelName::new(&value)
                .map_err(|e| ApiError::bad_request(ErrorCode::InvalidChannel, e.to_string()))?,
        );
    }
    channel.ok_or_else(|| {
        ApiError::bad_request(
            ErrorCode::MissingChannel,
            "name a channel: /presence?channel=<name>",
        )
    })
}

/// The 404 for a channel whose subscribers are not tracked.
pub fn off(channel: &ChannelName) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        ErrorCode::PresenceOff,
        format!("presence is not tracked on channel {channel} (see presence.channels)"),
    )
}

/// The JSON body of a roster (also the fields of the WebSocket `presence` reply).
pub fn body(channel: &ChannelName, roster: &Roster, max_entries: usize) -> Map<String, Value> {
    let mut body = Map::new();
    body.insert("channel".into(), json!(channel.as_str()));
    body.insert("count".into(), json!(roster.count));
    match &roster.clients {
        Some(clients) => body.insert("clients".into(), Value::Array(clients.clone())),
        None => body.insert("max_entries".into(), json!(max_entries)),
    };
    body
}

/// Serves `GET /presence` (`stats`: `GET /presence/stats`).
pub async fn respond(
    state: &AppState,
    query: &str,
    headers: &HeaderMap,
    stats: bool,
) -> Response<Body> {
    super::answered(state, answer(state, query, headers, stats).await)
}

async fn answer(
    state: &AppState,
    query: &str,
    headers: &HeaderMap,
    stats: bool,
) -> Result<Response<Body>, ApiError> {
    let channel = parse(query)?;
    authorize(state, headers, query, &channel).await?;
    let presence = state.hub.presence();
    let max = if stats { 0 } else { presence.max_entries() };
    let roster = presence
        .roster(&channel, max)
        .await?
        .ok_or_else(|| off(&channel))?;
    let body = if stats {
        json!({"channel": channel.as_str(), "count": roster.count})
    } else {
        Value::Object(body(&channel, &roster, presence.max_entries()))
    };
    let mut res = response::json(StatusCode::OK, &body);
    res.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_one_channel() {
        assert_eq!(parse("channel=a&x=1").unwrap().as_str(), "a");
        let code = |q: &str| parse(q).unwrap_err().code();
        assert_eq!(code(""), ErrorCode::MissingChannel);
        assert_eq!(code("channel=a%7B"), ErrorCode::InvalidChannel);
        assert_eq!(code("channel=a&channel=b"), ErrorCode::InvalidParameter);
    }

    #[test]
    fn lists_or_counts() {
        let ch = ChannelName::new("a").unwrap();
        let listed = Roster {
            count: 1,
            clients: Some(vec![json!({"conn": "x-1", "sub": "u", "info": null})]),
        };
        assert_eq!(
            Value::Object(body(&ch, &listed, 5)),
            json!({"channel": "a", "count": 1, "clients": [{"conn": "x-1", "sub": "u", "info": null}]})
        );
        let counted = Roster {
            count: 9,
            clients: None,
        };
        assert_eq!(
            Value::Object(body(&ch, &counted, 5)),
            json!({"channel": "a", "count": 9, "max_entries": 5})
        );
    }
}
