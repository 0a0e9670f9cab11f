//! Presence on every arrival: `GET /presence` and `/presence/stats` answer the same (body,
//! `Cache-Control`, JSON errors) whether they come first on a connection or on a keep-alive
//! one, over TLS or HTTP/2, and so are the SSE streams they count; the WebSocket `presence`
//! command answers the same over ws and wss, first or after a served request.

use http::Method;
use serde_json::{Value, json};

use super::{SECRET, assert_error, token};
use crate::common::WsItem;
use crate::common::arrival::*;

const KEY: &str = "a-matrix-presence-api-key";
const ENV: [(&str, &str); 3] = [
    ("GATEWAY__AUTH__JWT_SECRET", SECRET),
    ("GATEWAY__PUBLISH__API_KEY", KEY),
    ("GATEWAY__PRESENCE__CHANNELS", "room"),
];

/// `GET <path>` over `arrival` with a bearer token: status, `Cache-Control`, JSON body.
async fn get(
    arrival: Arrival,
    gw: &crate::common::Gateway,
    path: &str,
    bearer: Option<&str>,
) -> (u16, Option<String>, Value) {
    let auth = bearer.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", &**a)).collect();
    let reply = request(arrival, gw, Method::GET, path, &headers, empty())
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let (status, cache) = (reply.status, reply.header("cache-control"));
    (status, cache, reply.json().await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn presence_reads_on_every_arrival() {
    each(&Arrival::ALL, |arrival| async move {
        let gw = arrival.gateway(&ENV).await;
        let t = token(&["room"]);
        // A stream arriving this way is tracked.
        let mut stream = sse(arrival, &gw, &format!("/sse?channel=room&token={t}"), &[]).await;
        stream.ready().await;
        let (status, cache, body) = get(arrival, &gw, "/presence?channel=room", Some(&t)).await;
        assert_eq!(
            (status, cache.as_deref()),
            (200, Some("no-store")),
            "{body}"
        );
        assert_eq!(body["channel"], "room");
        assert_eq!(body["count"], 1);
        let clients = body["clients"].as_array().expect("clients");
        assert_eq!(clients.len(), 1, "{body}");
        assert_eq!(clients[0]["sub"], "matrix");
        assert!(clients[0]["conn"].as_str().is_some_and(|c| c.contains('-')));
        // A publish API key reads the same.
        let (status, _, by_key) = get(arrival, &gw, "/presence?channel=room", Some(KEY)).await;
        assert_eq!((status, &by_key), (200, &body));
        let (status, _, stats) = get(arrival, &gw, "/presence/stats?channel=room", Some(&t)).await;
        assert_eq!(
            (status, stats),
            (200, json!({"channel": "room", "count": 1}))
        );
        for (path, bearer, want, code) in [
            ("/presence", Some(&*t), 400, "missing_channel"),
            (
                "/presence?channel=a&channel=b",
                Some(&*t),
                400,
                "invalid_parameter",
            ),
            ("/presence?channel=room", None, 401, "unauthorized"),
            (
                "/presence/stats?channel=elsewhere",
                Some(&*t),
                403,
                "forbidden",
            ),
        ] {
            let (status, _, body) = get(arrival, &gw, path, bearer).await;
            assert_eq!(status, want, "{path}: {body}");
            assert_error(&body, code);
        }
        let all = token(&["*"]);
        let (status, _, body) = get(arrival, &gw, "/presence?channel=other", Some(&all)).await;
        assert_eq!(status, 404, "{body}");
        assert_error(&body, "presence_off");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_websocket_presence_command_on_every_websocket_arrival() {
    each(&Arrival::WS, |arrival| async move {
        let gw = arrival.gateway(&ENV).await;
        let query = format!("?token={}", token(&["room"]));
        let mut ws = open_ws(arrival, &gw, &query, &[]).await.expect("upgraded");
        ws.subscribe("room", None).await;
        ws.send(json!({"type": "presence", "channel": "room", "req": 3}))
            .await;
        let reply = ws.expect("presence").await;
        assert_eq!(
            (&reply["channel"], &reply["count"], &reply["req"]),
            (&json!("room"), &json!(1), &json!(3)),
            "{reply}"
        );
        assert_eq!(reply["clients"][0]["sub"], "matrix", "{reply}");
        ws.send(json!({"type": "presence", "channel": "elsewhere", "req": 4}))
            .await;
        match ws.recv().await {
            WsItem::Json(err) => {
                assert_eq!(
                    (&err["code"], &err["req"]),
                    (&json!("forbidden"), &json!(4))
                );
            }
            other => panic!("expected an error, got {other:?}"),
        }
    })
    .await;
}
