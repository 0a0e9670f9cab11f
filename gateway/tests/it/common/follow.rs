//! Clients that behave like a browser's EventSource or the JS WebSocket client: they reconnect
//! by themselves after any failure and resume from the last id they saw. Each follows one
//! channel until it has a given number of events or a deadline passes, and reports everything
//! it received, so a test can check exactly-once delivery per client.

use std::time::Duration;

use futures_util::StreamExt;
use shared::sse::SseDecoder;
use tokio::time::Instant;

use super::{Ws, WsItem};

/// What a follower saw.
#[derive(Debug, Default, Clone)]
pub struct Followed {
    /// Event data in arrival order (gaps excluded).
    pub data: Vec<String>,
    /// Gap notices received.
    pub gaps: usize,
    /// Connections opened after the first.
    pub reconnects: usize,
}

fn jitter() -> Duration {
    Duration::from_millis(20 + fastrand::u64(..80))
}

/// Follows `channel` over SSE at `base` (e.g. through nginx) until `want` events arrived.
pub async fn follow_sse(
    base: String,
    channel: String,
    want: usize,
    deadline: Duration,
) -> Followed {
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(2))
        .build()
        .expect("client");
    let end = Instant::now() + deadline;
    let mut out = Followed::default();
    let mut last_id = String::new();
    let mut first = true;
    while out.data.len() < want && Instant::now() < end {
        if !first {
            out.reconnects += 1;
            tokio::time::sleep(jitter()).await;
        }
        first = false;
        let mut req = client.get(format!("{base}/sse?channel={channel}"));
        if !last_id.is_empty() {
            req = req.header("Last-Event-ID", &last_id);
        }
        let Ok(res) = req.send().await else { continue };
        if res.status() != 200 {
            continue;
        }
        let mut stream = res.bytes_stream();
        let mut decoder = SseDecoder::new();
        while out.data.len() < want {
            let chunk = match tokio::time::timeout_at(end, stream.next()).await {
                Ok(Some(Ok(chunk))) => chunk,
                _ => break,
            };
            decoder.feed(&chunk);
            while let Some(e) = decoder.next_event() {
                if e.event == "gap" {
                    out.gaps += 1;
                } else {
                    out.data.push(e.data);
                }
            }
            last_id = decoder.last_event_id().to_owned();
        }
    }
    out
}

/// Follows `channel` over WebSocket at `ws_url` until `want` events arrived, re-subscribing with
/// `since` after every reconnect.
pub async fn follow_ws(
    ws_url: String,
    channel: String,
    want: usize,
    deadline: Duration,
) -> Followed {
    let end = Instant::now() + deadline;
    let mut out = Followed::default();
    let mut since: Option<String> = None;
    let mut first = true;
    while out.data.len() < want && Instant::now() < end {
        if !first {
            out.reconnects += 1;
            tokio::time::sleep(jitter()).await;
        }
        first = false;
        let Ok(mut ws) = Ws::try_connect(&ws_url, &[]).await else {
            continue;
        };
        let mut cmd = serde_json::json!({"type": "subscribe", "channel": channel});
        if let Some(since) = &since {
            cmd["since"] = since.clone().into();
        }
        ws.send(cmd).await;
        while out.data.len() < want {
            let left = end.saturating_duration_since(Instant::now());
            match ws.recv_within(left).await {
                Some(WsItem::Json(v)) => match v["type"].as_str() {
                    Some("event") => {
                        since = v["id"].as_str().map(str::to_owned);
                        out.data.push(
                            v["data"]
                                .as_str()
                                .map_or_else(|| v["data"].to_string(), str::to_owned),
                        );
                    }
                    Some("gap") => out.gaps += 1,
                    Some("subscribed") if since.is_none() => {
                        since = v["position"].as_str().map(str::to_owned);
                    }
                    Some("error") => break,
                    _ => {}
                },
                Some(WsItem::Binary(_)) => {}
                Some(WsItem::Closed(_)) | None => break,
            }
        }
    }
    out
}
