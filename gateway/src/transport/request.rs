//! The request of a subscriber that names its channels in the query (`GET /sse`, and the long
//! poll `GET /poll`, which is an SSE stream cut short): the channels, sorted (the cursor's
//! order), the cursor to resume from (`Last-Event-ID` or `?lastEventId=`), and the
//! latest-value option (`latest=N`, `since=latest`).

use http::header::HeaderMap;
use shared::{ChannelName, Cursor, ErrorCode};

use crate::error::ApiError;
use crate::session::Want;
use crate::state::AppState;
use crate::transport::params;

/// A validated SSE (or long-poll) request.
#[derive(Debug, PartialEq, Eq)]
pub struct SseRequest {
    /// Distinct channels, sorted (the cursor's order).
    pub channels: Vec<ChannelName>,
    /// Where to resume, if the client sent a cursor.
    pub cursor: Option<Cursor>,
    /// `latest=N` / `since=latest`: start before each channel's last N events (a cursor wins:
    /// a reconnect resumes instead of replaying them again).
    pub latest: Option<u64>,
}

impl SseRequest {
    /// Where each channel starts, in channel order.
    pub fn wants(&self) -> Vec<Want> {
        (0..self.channels.len())
            .map(|i| match (&self.cursor, self.latest) {
                (Some(c), _) => Want::After(c.0[i]),
                (None, Some(n)) => Want::Latest(n),
                (None, None) => Want::Head,
            })
            .collect()
    }
}

/// Parses the query string and headers of an SSE request; `max_latest` bounds `latest=N`.
pub fn parse_request(
    query: &str,
    headers: &HeaderMap,
    max_channels: usize,
    max_latest: u64,
) -> Result<SseRequest, ApiError> {
    let mut channels: Vec<ChannelName> = Vec::new();
    let mut query_cursor = None;
    let (mut since, mut latest) = (None, None);
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        match &*key {
            "channel" => {
                for name in value.split(',').filter(|n| !n.is_empty()) {
                    let channel = ChannelName::new(name).map_err(|e| {
                        ApiError::bad_request(ErrorCode::InvalidChannel, e.to_string())
                    })?;
                    if !channels.contains(&channel) {
                        if channels.len() == max_channels {
                            return Err(ApiError::bad_request(
                                ErrorCode::TooManyChannels,
                                format!("at most {max_channels} channels per connection"),
                            ));
                        }
                        channels.push(channel);
                    }
                }
            }
            "lastEventId" | "lastEventID" | "last-event-id" => {
                query_cursor = Some(value.into_owned())
            }
            "since" => since = Some(value.into_owned()),
            "latest" => latest = Some(value.into_owned()),
            _ => {}
        }
    }
    if channels.is_empty() {
        return Err(ApiError::bad_request(
            ErrorCode::MissingChannel,
            "name at least one channel: /sse?channel=<name>",
        ));
    }
    channels.sort();
    let header_cursor = match headers.get("last-event-id") {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| {
                    ApiError::bad_request(
                        ErrorCode::BadCursor,
                        "Last-Event-ID is not visible ASCII",
                    )
                })?
                .to_owned(),
        ),
        None => None,
    };
    let cursor = header_cursor
        .or(query_cursor)
        .filter(|c| !c.trim().is_empty())
        .map(|text| Cursor::parse(&text, channels.len()))
        .transpose()
        .map_err(|e| ApiError::bad_request(ErrorCode::BadCursor, e.to_string()))?;
    let latest = params::latest(since.as_deref(), latest.as_deref(), max_latest)?;
    Ok(SseRequest {
        channels,
        cursor,
        latest,
    })
}

/// Parses an SSE or long-poll request, counting a refusal (and a bad cursor as a resume
/// outcome).
pub fn parse(state: &AppState, query: &str, headers: &HeaderMap) -> Result<SseRequest, ApiError> {
    let settings = &state.settings;
    let max_latest = settings.history.max_page as u64;
    parse_request(query, headers, settings.limits.max_channels, max_latest).inspect_err(|e| {
        if e.code() == ErrorCode::BadCursor {
            state
                .metrics
                .resume(crate::metrics::labels::ResumeOutcome::BadCursor);
        }
        state.metrics.rejected.with_label_values(&[e.code()]).inc();
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::{HeaderName, HeaderValue};

    fn parse(query: &str, last_event_id: Option<&str>) -> Result<SseRequest, ApiError> {
        let mut headers = HeaderMap::new();
        if let Some(v) = last_event_id {
            headers.insert(
                HeaderName::from_static("last-event-id"),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        parse_request(query, &headers, 3, 50)
    }

    #[test]
    fn channels_are_deduplicated_and_sorted() {
        let r = parse("channel=b&channel=a,c&channel=b", None).unwrap();
        let names: Vec<_> = r.channels.iter().map(|c| c.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert_eq!(r.cursor, None);
    }

    #[test]
    fn header_cursor_wins_over_query() {
        let r = parse("channel=a&lastEventId=1:5", Some("2:7")).unwrap();
        assert_eq!(r.cursor.unwrap().to_string(), "2:7");
        let r = parse("channel=a&lastEventId=1:5", None).unwrap();
        assert_eq!(r.cursor.unwrap().to_string(), "1:5");
    }

    #[test]
    fn bad_requests_have_codes() {
        let code = |q: &str, h: Option<&str>| parse(q, h).unwrap_err().code();
        assert_eq!(code("", None), ErrorCode::MissingChannel);
        assert_eq!(code("channel=a%7Bb", None), ErrorCode::InvalidChannel);
        assert_eq!(
            code("channel=a&channel=b&channel=c&channel=d", None),
            ErrorCode::TooManyChannels
        );
        assert_eq!(
            code("channel=a&channel=b", Some("1:1")),
            ErrorCode::BadCursor
        );
        assert_eq!(code("channel=a", Some("garbage")), ErrorCode::BadCursor);
        assert_eq!(
            code("channel=a&lastEventId=1:-1", None),
            ErrorCode::BadCursor
        );
        assert_eq!(code("channel=%FF", None), ErrorCode::InvalidChannel);
        assert_eq!(
            code("channel=a&latest=x", None),
            ErrorCode::InvalidParameter
        );
        assert_eq!(
            code("channel=a&since=1:1", None),
            ErrorCode::InvalidParameter
        );
    }

    #[test]
    fn latest_starts_every_channel_but_a_cursor_wins() {
        let r = parse("channel=a&channel=b&latest=3", None).unwrap();
        assert_eq!(r.wants(), [Want::Latest(3), Want::Latest(3)]);
        let r = parse("channel=a&since=latest", None).unwrap();
        assert_eq!(r.wants(), [Want::Latest(1)]);
        let r = parse("channel=a&latest=999", None).unwrap();
        assert_eq!(r.wants(), [Want::Latest(50)]);
        let r = parse("channel=a&latest=3", Some("1:5")).unwrap();
        assert_eq!(r.wants(), [Want::After("1:5".parse().unwrap())]);
        let r = parse("channel=a", None).unwrap();
        assert_eq!(r.wants(), [Want::Head]);
    }
}
