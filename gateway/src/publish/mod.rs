//! Publishing: validation shared by every entry point (HTTP `POST /publish`, the CLI, and later
//! WebSocket clients), and the HTTP handler. Everything ends in [`Engine::publish`], the same
//! atomic store-and-push that external publishers reach with `FCALL gw_publish`.

use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};
use shared::ErrorCode;
use shared::{ChannelName, EventName, PayloadKind, Position};

use crate::browser;
use crate::engine::{Engine, PublishRequest};
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::response::{self, Body};
use crate::state::AppState;

pub mod batch;
mod keys;

pub use keys::{Caller, Publishers};

/// The `POST /publish` body.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PublishBody {
    /// Target channel.
    pub channel: String,
    /// Any JSON value: a string is delivered as-is, anything else as compact JSON text.
    pub data: serde_json::Value,
    /// Optional SSE event name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
}

/// Turns a JSON publish body into an engine request, or explains what is wrong with it.
pub fn validate(body: PublishBody) -> Result<PublishRequest, ApiError> {
    let channel = ChannelName::new(&body.channel)
        .map_err(|e| ApiError::bad_request(ErrorCode::InvalidChannel, e.to_string()))?;
    let name = body
        .event
        .filter(|e| !e.is_empty())
        .map(|e| EventName::new(&e))
        .transpose()
        .map_err(|e| ApiError::bad_request(ErrorCode::InvalidEvent, e.to_string()))?;
    let (kind, data) = match body.data {
        serde_json::Value::String(s) => (PayloadKind::Text, Bytes::from(s)),
        other => (PayloadKind::Json, Bytes::from(other.to_string())),
    };
    Ok(PublishRequest {
        channel,
        name,
        kind,
        data,
    })
}

/// The single publishing path inside the gateway (the HTTP handler, the WebSocket `publish`
/// command and binary frames, the CLI): a validated request into the engine's atomic
/// store-and-push, counted by where it came from (`None`: outside a serving instance).
pub async fn publish(
    engine: &Engine,
    request: PublishRequest,
    counted: Option<(&Metrics, &'static str)>,
) -> Result<Position, ApiError> {
    let position = engine.publish(request).await?;
    if let Some((metrics, via)) = counted {
        metrics.published.with_label_values(&[via]).inc();
    }
    Ok(position)
}

/// The `POST /publish` handler: a JSON body `{"channel", "data", "event"?}`, or a raw
/// `text/plain` / `application/octet-stream` body with `?channel=` (and `&event=`). The body is
/// refused from its `Content-Length` before any of it is read when too large, and must arrive
/// within `body_timeout` (a trickled body is a slowloris too).
pub async fn respond(
    state: &AppState,
    req: Request<Incoming>,
    body_timeout: Duration,
) -> Response<Body> {
    match handle(state, req, body_timeout).await {
        Ok(Published::One(position)) => response::json(
            StatusCode::OK,
            &serde_json::json!({ "id": position.to_string() }),
        ),
        Ok(Published::Batch(results)) => batch::answer(&results),
        Err(e) => e.into_response(),
    }
}

/// What a `POST /publish` stored: one event, or a batch's outcome per event.
enum Published {
    One(Position),
    Batch(Vec<Result<Position, ApiError>>),
}

async fn handle(
    state: &AppState,
    req: Request<Incoming>,
    body_timeout: Duration,
) -> Result<Published, ApiError> {
    // A browser's publish must come from an allowed origin (a cross-site `text/plain` POST
    // needs no preflight), then the caller is identified by its key and charged its rate.
    let host = browser::host_of(req.headers(), req.uri().authority().map(|a| a.as_str()));
    browser::check_origin(&state.settings, req.headers(), host, "publish")?;
    let caller = state.publishers.identify(req.headers())?;
    let limit = state.settings.publish.max_bytes;
    let content_type = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let query = req.uri().query().unwrap_or("").to_owned();
    let raw = read_limited(req, limit, body_timeout).await?;
    let request = if content_type.starts_with("application/octet-stream") {
        raw_request(&query, PayloadKind::Binary, raw)?
    } else if content_type.starts_with("text/plain") {
        if std::str::from_utf8(&raw).is_err() {
            return Err(ApiError::bad_request(
                ErrorCode::InvalidBody,
                "a text/plain body must be UTF-8",
            ));
        }
        raw_request(&query, PayloadKind::Text, raw)?
    } else if batch::is_batch(&raw) {
        let requests = batch::parse(&raw, state.settings.publish.max_batch)?;
        for r in &requests {
            caller.may_publish(&r.channel)?;
        }
        // The key's rate counts events: the first was charged when it was identified.
        caller.charge(requests.len().saturating_sub(1))?;
        let counted = Some((&state.metrics, "http"));
        let results = batch::publish(state.hub.engine(), &requests, counted).await?;
        return Ok(Published::Batch(results));
    } else {
        validate(parse_body(&raw)?)?
    };
    caller.may_publish(&request.channel)?;
    let counted = Some((&state.metrics, "http"));
    let position = publish(state.hub.engine(), request, counted).await?;
    Ok(Published::One(position))
}

/// Parses a publish body, which must be a JSON object (serde would also accept a positional
/// array, an accident nobody should come to rely on).
pub fn parse_body(raw: &[u8]) -> Result<PublishBody, ApiError> {
    let shape = || "the body must be a JSON object {\"channel\": ..., \"data\": ...}";
    let value: serde_json::Value = serde_json::from_slice(raw)
        .map_err(|e| ApiError::bad_request(ErrorCode::InvalidJson, format!("{}: {e}", shape())))?;
    if !value.is_object() {
        return Err(ApiError::bad_request(ErrorCode::InvalidJson, shape()));
    }
    serde_json::from_value(value)
        .map_err(|e| ApiError::bad_request(ErrorCode::InvalidJson, format!("{}: {e}", shape())))
}

/// A raw-body publish: channel and optional event name come from the query string.
fn raw_request(query: &str, kind: PayloadKind, data: Bytes) -> Result<PublishRequest, ApiError> {
    let mut channel = None;
    let mut event = None;
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        match &*key {
            "channel" => channel = Some(value.into_owned()),
            "event" => event = Some(value.into_owned()),
            _ => {}
        }
    }
    let channel = channel.ok_or_else(|| {
        ApiError::bad_request(
            ErrorCode::MissingChannel,
            "a raw publish names its channel: /publish?channel=<name>",
        )
    })?;
    let mut request = validate(PublishBody {
        channel,
        data: serde_json::Value::Null,
        event,
    })?;
    request.kind = kind;
    request.data = data;
    Ok(request)
}

/// The request's body, at most `limit` bytes, arriving within `timeout`: 413 from the
/// `Content-Length` header before reading, or as soon as more arrives; 408 when it trickles.
pub async fn read_limited(
    req: Request<Incoming>,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::BodyTooLarge,
            format!("the body exceeds {limit} bytes"),
        )
    };
    let announced = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let body = Limited::new(req.into_body(), limit);
    match tokio::time::timeout(timeout, body.collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Ok(Err(e)) => Err(ApiError::bad_request(ErrorCode::InvalidBody, e.to_string())),
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            ErrorCode::BodyTimeout,
            format!("the body did not arrive within {} s", timeout.as_secs()),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(json: &str) -> PublishBody {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn strings_are_text_and_other_values_compact_json() {
        let r = validate(body(r#"{"channel":"a","data":"hi\nthere"}"#)).unwrap();
        assert_eq!(
            (r.kind, &r.data[..]),
            (PayloadKind::Text, &b"hi\nthere"[..])
        );
        let r = validate(body(r#"{"channel":"a","data":{ "x" : [1, 2] }}"#)).unwrap();
        assert_eq!(
            (r.kind, &r.data[..]),
            (PayloadKind::Json, &br#"{"x":[1,2]}"#[..])
        );
        let r = validate(body(r#"{"channel":"a","data":null,"event":"up"}"#)).unwrap();
        assert_eq!(
            (&r.data[..], r.name.unwrap().as_str()),
            (&b"null"[..], "up")
        );
    }

    #[test]
    fn only_objects_are_publish_bodies() {
        assert!(parse_body(br#"{"channel":"a","data":1}"#).is_ok());
        assert_eq!(
            parse_body(br#"["a", 1]"#).unwrap_err().code(),
            ErrorCode::InvalidJson
        );
        assert_eq!(
            parse_body(b"nope").unwrap_err().code(),
            ErrorCode::InvalidJson
        );
    }

    #[test]
    fn bad_fields_have_codes() {
        assert_eq!(
            validate(body(r#"{"channel":"a b","data":1}"#))
                .unwrap_err()
                .code(),
            ErrorCode::InvalidChannel
        );
        assert_eq!(
            validate(body(r#"{"channel":"a","data":1,"event":"gap"}"#))
                .unwrap_err()
                .code(),
            ErrorCode::InvalidEvent
        );
        assert!(
            serde_json::from_str::<PublishBody>(r#"{"channel":"a"}"#).is_err(),
            "data is required"
        );
    }
}
