//! Batch publishing: `POST /publish` with a JSON array of publish objects (or `gateway publish
//! --batch`) stores them all in one round trip to the store (`Engine::publish_batch`). Every
//! item is validated before any is stored, so a malformed batch publishes nothing; the store
//! then takes the batch all at once (on a Redis Cluster, all at once per hash slot), and the
//! answer lists the outcome of each event, in order.

use http::StatusCode;
use serde_json::Value;
use shared::{ErrorCode, Position};

use super::{PublishBody, validate};
use crate::engine::{Engine, PublishRequest};
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::response::{self, Body};

/// Whether a JSON body is a batch (an array) rather than one publish.
pub fn is_batch(raw: &[u8]) -> bool {
    raw.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[')
}

/// The requests of a batch body, each validated; the first bad item refuses the whole batch,
/// naming its index.
pub fn parse(raw: &[u8], max: usize) -> Result<Vec<PublishRequest>, ApiError> {
    let items: Vec<Value> = serde_json::from_slice(raw).map_err(|e| {
        ApiError::bad_request(
            ErrorCode::InvalidJson,
            format!("the batch is not JSON: {e}"),
        )
    })?;
    if items.is_empty() {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidJson,
            "the batch is empty",
        ));
    }
    if items.len() > max {
        return Err(ApiError::bad_request(
            ErrorCode::BatchTooLarge,
            format!("at most {max} events per batch (publish.max_batch)"),
        ));
    }
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            let at =
                |e: ApiError| ApiError::bad_request(e.code(), format!("item {i}: {}", e.detail()));
            if !item.is_object() {
                return Err(at(ApiError::bad_request(
                    ErrorCode::InvalidJson,
                    "each item must be a JSON object {\"channel\": ..., \"data\": ...}",
                )));
            }
            let body: PublishBody = serde_json::from_value(item)
                .map_err(|e| at(ApiError::bad_request(ErrorCode::InvalidJson, e.to_string())))?;
            validate(body).map_err(at)
        })
        .collect()
}

/// The batch half of the single publishing path (beside [`super::publish`]): a validated
/// batch into the engine's one-round-trip store-and-push, counted by where it came from
/// (`None`: outside a serving instance); each event's position or error, in order.
pub async fn publish(
    engine: &Engine,
    requests: &[PublishRequest],
    counted: Option<(&Metrics, &'static str)>,
) -> Result<Vec<Result<Position, ApiError>>, ApiError> {
    let results = engine.publish_batch(requests).await?;
    if let Some((metrics, via)) = counted {
        let stored = results.iter().filter(|r| r.is_ok()).count();
        metrics
            .published
            .with_label_values(&[via])
            .inc_by(stored as u64);
    }
    Ok(results
        .into_iter()
        .map(|r| r.map_err(ApiError::from))
        .collect())
}

/// The answer to a batch: `{"results": [{"id": ...} | {"error": code, "detail": text}]}`, 200
/// when every event was stored, else the status of the first failure (the body still says
/// which events were stored, so a retry can leave them out).
pub fn answer(results: &[Result<Position, ApiError>]) -> http::Response<Body> {
    let (status, body) = outcome(results);
    response::json(status, &body)
}

/// The status and body of [`answer`].
fn outcome(results: &[Result<Position, ApiError>]) -> (StatusCode, Value) {
    let status = results
        .iter()
        .find_map(|r| r.as_ref().err().map(ApiError::status))
        .unwrap_or(StatusCode::OK);
    let items: Vec<Value> = results
        .iter()
        .map(|r| match r {
            Ok(position) => serde_json::json!({ "id": position.to_string() }),
            Err(e) => serde_json::json!({ "error": e.code().as_str(), "detail": e.detail() }),
        })
        .collect();
    (status, serde_json::json!({ "results": items }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_told_from_single_publishes() {
        assert!(is_batch(b"  \n[{}]"));
        assert!(!is_batch(b"{\"channel\":\"a\"}"));
        assert!(!is_batch(b""));
    }

    #[test]
    fn a_bad_item_refuses_the_batch_naming_it() {
        let ok = br#"[{"channel":"a","data":1},{"channel":"b","data":"x","event":"e"}]"#;
        let requests = parse(ok, 10).unwrap();
        assert_eq!(requests.len(), 2);
        assert_eq!(requests[1].channel.as_str(), "b");
        let bad = br#"[{"channel":"a","data":1},{"channel":"a{b","data":1}]"#;
        let e = parse(bad, 10).unwrap_err();
        assert_eq!(e.code(), ErrorCode::InvalidChannel);
        assert!(e.detail().starts_with("item 1:"), "{}", e.detail());
        let e = parse(br#"[{"channel":"a","data":1}, 5]"#, 10).unwrap_err();
        assert_eq!(e.code(), ErrorCode::InvalidJson);
        assert_eq!(parse(b"[]", 10).unwrap_err().code(), ErrorCode::InvalidJson);
        assert_eq!(
            parse(b" [ ] ", 10).unwrap_err().code(),
            ErrorCode::InvalidJson
        );
        let e = parse(br#"[[{"channel":"a","data":1}]]"#, 10).unwrap_err();
        assert_eq!(
            (e.code(), e.detail().starts_with("item 0:")),
            (ErrorCode::InvalidJson, true)
        );
        let e = parse(br#"[{"channel":"a","data":1,"extra":1}]"#, 10).unwrap_err();
        assert_eq!(
            e.code(),
            ErrorCode::InvalidJson,
            "unknown fields are refused"
        );
        assert_eq!(parse(b"[{", 10).unwrap_err().code(), ErrorCode::InvalidJson);
        let big = format!("[{}]", [r#"{"channel":"a","data":1}"#; 3].join(","));
        assert_eq!(
            parse(big.as_bytes(), 2).unwrap_err().code(),
            ErrorCode::BatchTooLarge
        );
    }

    #[test]
    fn the_answer_lists_every_outcome_with_the_first_failure_status() {
        use shared::Epoch;
        let stored = Position::new(Epoch(0xab), 7);
        let (status, body) = outcome(&[Ok(stored), Ok(Position::new(Epoch(0xab), 8))]);
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            body,
            serde_json::json!({ "results": [{ "id": "ab:7" }, { "id": "ab:8" }] })
        );
        let down = ApiError::unavailable(ErrorCode::EngineUnavailable, "down", 1);
        let (status, body) = outcome(&[Ok(stored), Err(down)]);
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["results"][0]["id"], "ab:7");
        assert_eq!(body["results"][1]["error"], "engine_unavailable");
    }
}
