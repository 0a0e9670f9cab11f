//! `GET /history?channel=C&since=<id>&limit=N`: one page of a channel's history as JSON, with
//! the gap notice a resume from `since` would get (see `hub::range`). For backends with an API
//! key covering the channel, and for anyone who may subscribe to it (a token granting it, the
//! authorization hook, or nobody at all when authentication is off).

use http::header::HeaderMap;
use http::{Response, StatusCode};
use shared::{ChannelName, ErrorCode, Position};

use crate::error::ApiError;
use crate::response::{self, Body};
use crate::session::Transport;
use crate::session::admit::credentials;
use crate::state::AppState;
use crate::transport::{page, params};

/// A validated history request.
#[derive(Debug, PartialEq, Eq)]
pub struct HistoryRequest {
    /// The channel.
    pub channel: ChannelName,
    /// Events after this position; from the oldest kept when absent.
    pub since: Option<Position>,
    /// Most events in the page (1 to `history.max_page`).
    pub limit: usize,
}

/// Parses `channel`, `since` and `limit`; `max` bounds the limit (and is its default).
pub fn parse(query: &str, max: usize) -> Result<HistoryRequest, ApiError> {
    let (mut channel, mut since, mut limit) = (None, None, max);
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        match &*key {
            "channel" if channel.is_some() => {
                return Err(ApiError::bad_request(
                    ErrorCode::InvalidParameter,
                    "one channel per history request",
                ));
            }
            "channel" => {
                channel = Some(ChannelName::new(&value).map_err(|e| {
                    ApiError::bad_request(ErrorCode::InvalidChannel, e.to_string())
                })?);
            }
            "since" if value.trim().is_empty() => since = None,
            "since" => {
                since = Some(value.trim().parse::<Position>().map_err(|e| {
                    ApiError::bad_request(
                        ErrorCode::BadPosition,
                        format!("since is not a position: {e}"),
                    )
                })?);
            }
            "limit" => {
                let n = params::bounded("limit", &value, max as u64)?;
                limit = usize::try_from(n).unwrap_or(max).max(1);
            }
            _ => {}
        }
    }
    let channel = channel.ok_or_else(|| {
        ApiError::bad_request(
            ErrorCode::MissingChannel,
            "name a channel: /history?channel=<name>",
        )
    })?;
    Ok(HistoryRequest {
        channel,
        since,
        limit,
    })
}

/// Serves `GET /history`.
pub async fn respond(state: &AppState, query: &str, headers: &HeaderMap) -> Response<Body> {
    super::answered(state, answer(state, query, headers).await)
}

async fn answer(
    state: &AppState,
    query: &str,
    headers: &HeaderMap,
) -> Result<Response<Body>, ApiError> {
    let request = parse(query, state.settings.history.max_page)?;
    authorize(state, headers, query, &request.channel).await?;
    let range = state
        .hub
        .range(&request.channel, request.since, request.limit)
        .await?;
    let body = page::range(&request.channel, &range);
    let mut res = response::json(StatusCode::OK, &serde_json::Value::Object(body));
    res.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    Ok(res)
}

/// An API key must cover the channel; anyone else needs what subscribing to it needs (also
/// the rule of `GET /presence`).
pub(crate) async fn authorize(
    state: &AppState,
    headers: &HeaderMap,
    query: &str,
    channel: &ChannelName,
) -> Result<(), ApiError> {
    if state.publishers.holds_key(headers) {
        let caller = state.publishers.identify(headers)?;
        return caller.may_publish(channel).map_err(|_| {
            ApiError::new(
                StatusCode::FORBIDDEN,
                ErrorCode::Forbidden,
                format!("the API key does not cover channel {channel}"),
            )
        });
    }
    let channels = std::slice::from_ref(channel);
    let (grant, _) = credentials(state, Transport::Sse, headers, query, channels)
        .await
        .map_err(crate::session::Refusal::into_error)?;
    if grant.may_subscribe(channel) {
        Ok(())
    } else {
        Err(crate::session::open::forbidden(channel))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_bounds() {
        let r = parse("channel=a&since=1f:7&limit=5", 100).unwrap();
        assert_eq!(r.channel.as_str(), "a");
        assert_eq!(r.since, Some("1f:7".parse().unwrap()));
        assert_eq!(r.limit, 5);
        assert_eq!(parse("channel=a", 100).unwrap().limit, 100);
        assert_eq!(parse("channel=a&limit=5000", 100).unwrap().limit, 100);
        assert_eq!(parse("channel=a&limit=0", 100).unwrap().limit, 1);
        assert_eq!(parse("channel=a&since=", 100).unwrap().since, None);
    }

    #[test]
    fn refusals_have_codes() {
        let code = |q: &str| parse(q, 100).unwrap_err().code();
        assert_eq!(code(""), ErrorCode::MissingChannel);
        assert_eq!(code("channel=a%7B"), ErrorCode::InvalidChannel);
        assert_eq!(code("channel=a&channel=b"), ErrorCode::InvalidParameter);
        assert_eq!(code("channel=a&since=nope"), ErrorCode::BadPosition);
        assert_eq!(code("channel=a&limit=-1"), ErrorCode::InvalidParameter);
    }
}
