//! Publishing: validation shared by every entry point (HTTP `POST /publish`, the CLI, and later
//! WebSocket clients), and the HTTP handler. Everything ends in [`Engine::publish`], the same
//! atomic store-and-push that external publishers reach with `FCALL gw_publish`.

use actix_web::http::StatusCode;
use actix_web::http::header::AUTHORIZATION;
use actix_web::{HttpRequest, HttpResponse, web};
use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use shared::{ChannelName, EventName, PayloadKind, Position};
use subtle::ConstantTimeEq;

use crate::engine::{Engine, PublishRequest};
use crate::error::ApiError;
use crate::state::AppState;

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
        .map_err(|e| ApiError::bad_request("invalid_channel", e.to_string()))?;
    let name = body
        .event
        .filter(|e| !e.is_empty())
        .map(|e| EventName::new(&e))
        .transpose()
        .map_err(|e| ApiError::bad_request("invalid_event", e.to_string()))?;
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

/// Validates and publishes; the single path for all publishers inside the gateway.
pub async fn publish(engine: &Engine, body: PublishBody) -> Result<Position, ApiError> {
    let request = validate(body)?;
    Ok(engine.publish(request).await?)
}

/// `POST /publish`: `{"channel", "data", "event"?}` → `{"id": "<position>"}`; or a raw
/// `application/octet-stream` (binary) or `text/plain` (text) body with `?channel=&event=`.
pub async fn handler(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    check_api_key(&req, state.settings.publish.api_key.as_deref())?;
    let raw = read_limited(payload, state.settings.publish.max_bytes).await?;
    let content_type = req
        .headers()
        .get(actix_web::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let request = if content_type.starts_with("application/octet-stream") {
        raw_request(req.query_string(), PayloadKind::Binary, raw)?
    } else if content_type.starts_with("text/plain") {
        if std::str::from_utf8(&raw).is_err() {
            return Err(ApiError::bad_request(
                "invalid_body",
                "a text/plain body must be UTF-8",
            ));
        }
        raw_request(req.query_string(), PayloadKind::Text, raw)?
    } else {
        validate(parse_body(&raw)?)?
    };
    let position = state.hub.engine().publish(request).await?;
    state.metrics.published.with_label_values(&["http"]).inc();
    Ok(HttpResponse::Ok().json(serde_json::json!({ "id": position.to_string() })))
}

/// Parses a publish body, which must be a JSON object (serde would also accept a positional
/// array, an accident nobody should come to rely on).
pub fn parse_body(raw: &[u8]) -> Result<PublishBody, ApiError> {
    let shape = || "the body must be a JSON object {\"channel\": ..., \"data\": ...}";
    let value: serde_json::Value = serde_json::from_slice(raw)
        .map_err(|e| ApiError::bad_request("invalid_json", format!("{}: {e}", shape())))?;
    if !value.is_object() {
        return Err(ApiError::bad_request("invalid_json", shape()));
    }
    serde_json::from_value(value)
        .map_err(|e| ApiError::bad_request("invalid_json", format!("{}: {e}", shape())))
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
            "missing_channel",
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

/// Requires `Authorization: Bearer <key>` when a key is configured (compared in constant time).
fn check_api_key(req: &HttpRequest, key: Option<&str>) -> Result<(), ApiError> {
    let Some(key) = key else { return Ok(()) };
    let given = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        // The scheme name is case-insensitive (RFC 9110, section 11.1).
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    match given {
        Some(given) if bool::from(given.as_bytes().ct_eq(key.as_bytes())) => Ok(()),
        Some(_) => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the API key is wrong",
        )),
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "publishing needs the header Authorization: Bearer <api key>",
        )),
    }
}

/// Reads a request body, refusing more than `limit` bytes with 413 before buffering it.
pub async fn read_limited(mut payload: web::Payload, limit: usize) -> Result<Bytes, ApiError> {
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_request("invalid_body", e.to_string()))?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("the body exceeds {limit} bytes"),
            ));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
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
            "invalid_json"
        );
        assert_eq!(parse_body(b"nope").unwrap_err().code(), "invalid_json");
    }

    #[test]
    fn bad_fields_have_codes() {
        assert_eq!(
            validate(body(r#"{"channel":"a b","data":1}"#))
                .unwrap_err()
                .code(),
            "invalid_channel"
        );
        assert_eq!(
            validate(body(r#"{"channel":"a","data":1,"event":"gap"}"#))
                .unwrap_err()
                .code(),
            "invalid_event"
        );
        assert!(
            serde_json::from_str::<PublishBody>(r#"{"channel":"a"}"#).is_err(),
            "data is required"
        );
    }
}
