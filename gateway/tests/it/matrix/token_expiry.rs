//! Tokens that end, on every arrival: an SSE stream ends at `exp` with an `error` event and
//! resumes exactly with a fresh token; a WebSocket is warned, refreshes in place without losing
//! or repeating an event, or is closed with 4501; a WebSocket may send its token as its first
//! message instead of in the URL.

use std::time::Duration;

use super::{SECRET, token, token_until, unix_now};
use crate::common::arrival::*;
use crate::common::{Gateway, WsItem};

/// A gateway with tokens on, warning `warning` seconds before expiry.
async fn gateway(arrival: Arrival, warning: &str) -> Gateway {
    arrival
        .gateway(&[
            ("GATEWAY__AUTH__JWT_SECRET", SECRET),
            ("GATEWAY__PUBLISH__ALLOW_ANONYMOUS", "true"),
            ("GATEWAY__WS__TOKEN_WARNING_SECONDS", warning),
            ("GATEWAY__WS__AUTH_TIMEOUT_SECONDS", "2"),
        ])
        .await
}

/// The next message that is not an event, after `events` (collected meanwhile).
async fn until_not_event(ws: &mut crate::common::Ws, events: &mut Vec<String>) -> WsItem {
    loop {
        match ws.recv().await {
            WsItem::Json(v) if v["type"] == "event" => {
                events.push(v["data"].as_str().expect("text").to_owned())
            }
            other => return other,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_sse_stream_ends_at_exp_and_resumes_with_a_fresh_token() {
    each(&Arrival::ALL, |arrival| async move {
        let gw = gateway(arrival, "60").await;
        let mut control = Control::new(&gw);
        let short = format!("Bearer {}", token_until(&["c"], unix_now() + 2));
        let mut stream = sse(arrival, &gw, "/sse?channel=c", &[("authorization", &short)]).await;
        stream.ready().await;
        control.publish("c", "before").await;
        assert_eq!(stream.next().await.data, "before");
        let (events, ended) = stream.read_to_end(Duration::from_secs(6)).await;
        assert!(ended, "the stream ends at exp: {}", stream.tail());
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0].event, "error");
        let body: serde_json::Value = serde_json::from_str(&events[0].data).expect("JSON");
        assert_eq!(body["code"], "token_expired", "{body}");
        assert!(stream.tail().contains(": closing: token_expired"));

        // Published while the client fetches a fresh token: delivered exactly once after it.
        control.publish("c", "between").await;
        let last = stream.last_event_id();
        let fresh = format!("Bearer {}", token(&["c"]));
        let headers = [("authorization", fresh.as_str()), ("last-event-id", &last)];
        let mut resumed = sse(arrival, &gw, "/sse?channel=c", &headers).await;
        assert_eq!(resumed.next().await.data, "between");
        control.publish("c", "after").await;
        assert_eq!(resumed.next().await.data, "after");
        resumed.assert_quiet(Duration::from_millis(300)).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_websocket_refreshes_its_token_in_place_without_loss() {
    each(&Arrival::WS, |arrival| async move {
        // Warned 2 s before a token that lives 4 s.
        let gw = gateway(arrival, "2").await;
        let exp = unix_now() + 4;
        let query = format!("?token={}", token_until(&["a", "b"], exp));
        let mut ws = open_ws(arrival, &gw, &query, &[]).await.expect("upgraded");
        ws.subscribe("a", None).await;
        ws.subscribe("b", None).await;
        let publisher = {
            let mut control = Control::new(&gw);
            tokio::spawn(async move {
                for i in 0..60 {
                    control.publish("a", &i.to_string()).await;
                    tokio::time::sleep(Duration::from_millis(75)).await;
                }
            })
        };
        let mut events = Vec::new();
        let warning = until_not_event(&mut ws, &mut events).await;
        let WsItem::Json(warning) = warning else {
            panic!("expected token_expiring, got {warning:?}");
        };
        assert_eq!(warning["type"], "token_expiring", "{warning}");
        assert_eq!(warning["exp"], exp);
        // The fresh token no longer covers `b`: that subscription ends, `a` goes on.
        let fresh = token(&["a"]);
        ws.send(serde_json::json!({"type": "auth", "token": fresh, "req": 7}))
            .await;
        let mut replies = Vec::new();
        while replies.len() < 2 {
            match until_not_event(&mut ws, &mut events).await {
                WsItem::Json(v) => replies.push(v),
                other => panic!("expected auth replies, got {other:?}"),
            }
        }
        assert_eq!(replies[0]["type"], "unsubscribed", "{replies:?}");
        assert_eq!(replies[0]["channel"], "b");
        assert_eq!(replies[0]["reason"], "forbidden");
        assert_eq!(replies[1]["type"], "authenticated", "{replies:?}");
        assert_eq!(replies[1]["req"], 7);
        publisher.await.expect("publisher");
        // Past the old token's expiry, every event arrives exactly once, in order.
        while events.len() < 60 {
            let v = ws.expect("event").await;
            events.push(v["data"].as_str().expect("text").to_owned());
        }
        let expected: Vec<String> = (0..60).map(|i| i.to_string()).collect();
        assert_eq!(events, expected);
        assert!(
            ws.recv_within(Duration::from_millis(300)).await.is_none(),
            "still open, nothing more"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_websocket_without_a_fresh_token_closes_at_exp_with_4501() {
    each(&Arrival::WS, |arrival| async move {
        let gw = gateway(arrival, "1").await;
        let exp = unix_now() + 3;
        let query = format!("?token={}", token_until(&["a"], exp));
        let mut ws = open_ws(arrival, &gw, &query, &[]).await.expect("upgraded");
        ws.subscribe("a", None).await;
        let warning = ws.expect("token_expiring").await;
        assert_eq!(warning["exp"], exp);
        // A refresh that is refused leaves the old token in force.
        ws.send(serde_json::json!({"type": "auth", "token": "not.a.token"}))
            .await;
        let refused = ws.expect("error").await;
        assert_ne!(refused["code"], "", "{refused}");
        match ws.recv_within(Duration::from_secs(4)).await {
            Some(WsItem::Closed(Some((code, reason)))) => {
                assert_eq!(code, 4501, "{reason}");
                assert!(reason.contains("expired"), "{reason}");
            }
            other => panic!("expected close 4501, got {other:?}"),
        }
        assert!(
            unix_now() >= exp,
            "closed at exp, not before: {} < {exp}",
            unix_now()
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_websocket_may_send_its_token_as_the_first_message() {
    each(&Arrival::WS, |arrival| async move {
        let gw = gateway(arrival, "60").await;
        let mut ws = open_ws(arrival, &gw, "", &[]).await.expect("upgraded");
        // Nothing but auth is served before it.
        ws.send(serde_json::json!({"type": "subscribe", "channel": "a"}))
            .await;
        assert_eq!(ws.expect("error").await["code"], "unauthorized");
        ws.send(serde_json::json!({"type": "auth", "token": token(&["a"])}))
            .await;
        assert_eq!(ws.expect("authenticated").await["exp"], 4_000_000_000u64);
        ws.subscribe("a", None).await;
        let mut control = Control::new(&gw);
        control.publish("a", "hello").await;
        assert_eq!(ws.event().await.1, "hello");

        // No token in time: 4500.
        let mut late = open_ws(arrival, &gw, "", &[]).await.expect("upgraded");
        match late.recv_within(Duration::from_secs(5)).await {
            Some(WsItem::Closed(Some((code, _)))) => assert_eq!(code, 4500),
            other => panic!("expected close 4500, got {other:?}"),
        }
        // A bad first token: 4500 at once.
        let mut bad = open_ws(arrival, &gw, "", &[]).await.expect("upgraded");
        bad.send(serde_json::json!({"type": "auth", "token": "not.a.token"}))
            .await;
        match bad.recv_within(Duration::from_secs(1)).await {
            Some(WsItem::Closed(Some((code, _)))) => assert_eq!(code, 4500),
            other => panic!("expected close 4500, got {other:?}"),
        }
    })
    .await;
}
