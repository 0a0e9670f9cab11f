//! Followers that read one channel until a final event arrives, reconnecting and resuming
//! the way a browser's EventSource or the JS WebSocket client would, and the check that each
//! got every acknowledged event exactly once or was told about a gap. For failover tests,
//! where the publisher retries and cannot know in advance how many events there will be.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::StreamExt;
use shared::sse::SseDecoder;
use tokio::time::Instant;

use super::{Ws, WsItem, http};

/// The last event the publisher sends, once it has stopped: every client must get it.
pub const END: &str = "end";

/// One `POST /publish` attempt; the id when acknowledged.
pub async fn try_publish(base: &str, channel: &str, data: &str) -> Option<String> {
    let res = http()
        .post(format!("{base}/publish"))
        .json(&serde_json::json!({ "channel": channel, "data": data }))
        .send()
        .await
        .ok()?;
    if res.status() != 200 {
        return None;
    }
    let body: serde_json::Value = res.json().await.ok()?;
    body["id"].as_str().map(str::to_owned)
}

/// What a client received: event data in order, and gap notices.
#[derive(Debug, Default)]
pub struct Seen {
    /// Event data in arrival order (gap notices excluded).
    pub data: Vec<String>,
    /// Gap notices received.
    pub gaps: usize,
    /// Connections opened after the first.
    pub reconnects: usize,
}

impl Seen {
    /// Whether the final event arrived.
    pub fn done(&self) -> bool {
        self.data.last().is_some_and(|d| d == END)
    }
}

/// Follows `channel` over SSE like a browser (reconnecting with `Last-Event-ID`) from `after`
/// until [`END`] arrives or `limit` passes.
pub async fn follow_sse(base: String, channel: String, after: String, limit: Duration) -> Seen {
    let end = Instant::now() + limit;
    let mut seen = Seen::default();
    let mut last_id = after;
    while !seen.done() && Instant::now() < end {
        let res = http_client()
            .get(format!("{base}/sse?channel={channel}"))
            .header("Last-Event-ID", &last_id)
            .send()
            .await;
        let res = match res {
            Ok(res) if res.status() == 200 => res,
            _ => {
                seen.reconnects += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let mut stream = res.bytes_stream();
        let mut decoder = SseDecoder::new();
        while !seen.done() {
            match tokio::time::timeout_at(end, stream.next()).await {
                Ok(Some(Ok(chunk))) => decoder.feed(&chunk),
                _ => break,
            }
            while let Some(e) = decoder.next_event() {
                match e.event.as_str() {
                    "gap" => seen.gaps += 1,
                    _ => seen.data.push(e.data),
                }
            }
            last_id = decoder.last_event_id().to_owned();
        }
    }
    seen
}

/// Follows `channel` over WebSocket like the JS client (re-subscribing with `since`).
pub async fn follow_ws(url: String, channel: String, after: String, limit: Duration) -> Seen {
    let end = Instant::now() + limit;
    let mut seen = Seen::default();
    let mut since = after;
    while !seen.done() && Instant::now() < end {
        let Ok(mut ws) = Ws::try_connect(&url, &[]).await else {
            seen.reconnects += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        ws.send(serde_json::json!({"type": "subscribe", "channel": channel, "since": since}))
            .await;
        while !seen.done() {
            let left = end.saturating_duration_since(Instant::now());
            let Some(WsItem::Json(v)) = ws.recv_within(left).await else {
                break;
            };
            match v["type"].as_str() {
                Some("event") => {
                    since = v["id"].as_str().unwrap_or_default().to_owned();
                    seen.data
                        .push(v["data"].as_str().unwrap_or_default().to_owned());
                }
                Some("gap") => seen.gaps += 1,
                Some("error") => break,
                _ => {}
            }
        }
        seen.reconnects += 1;
    }
    seen
}

fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(2))
        .build()
        .expect("client")
}

/// Every acknowledged event exactly once (or at most once after a gap notice), nothing twice,
/// and the final event received: the client never went silent.
pub fn check(client: &str, seen: &Seen, acked: &[String]) {
    assert!(seen.done(), "{client} went silent: {seen:?}");
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for d in &seen.data {
        *counts.entry(d.as_str()).or_default() += 1;
    }
    if let Some((twice, _)) = counts.iter().find(|(_, n)| **n > 1) {
        panic!("{client} received {twice:?} more than once");
    }
    let missing: Vec<&String> = acked
        .iter()
        .filter(|a| !counts.contains_key(a.as_str()))
        .collect();
    assert!(
        missing.is_empty() || seen.gaps > 0,
        "{client} lost {} acknowledged events without a gap notice: {missing:?}",
        missing.len()
    );
}
