//! Who is let in: tokens, origins and CORS, the connection limit, and WebSockets (which need
//! HTTP/1.1), on every arrival.

use std::time::{Duration, Instant};

use http::Method;

use super::{CLOSE_UNAUTHORIZED, SECRET, WS_KEY, assert_error, token};
use crate::common::arrival::*;

/// With authentication on, an SSE request without a (valid) token is 401 with the JSON error
/// shape; a WebSocket is upgraded, then closed with 4500; a valid token is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn missing_tokens_are_refused_alike_on_every_arrival() {
    each(&Arrival::ALL, |arrival| async move {
        let gw = arrival
            .gateway(&[
                ("GATEWAY__AUTH__JWT_SECRET", SECRET),
                ("GATEWAY__PUBLISH__ALLOW_ANONYMOUS", "true"),
                ("GATEWAY__WS__AUTH_TIMEOUT_SECONDS", "1"),
            ])
            .await;
        for (headers, code) in [
            (&[][..], "unauthorized"),
            (
                &[("authorization", "Bearer not.a.token")][..],
                "token_malformed",
            ),
        ] {
            let reply = open_sse(arrival, &gw, "/sse?channel=news", headers).await;
            assert_eq!(reply.status, 401, "with {headers:?}");
            assert_eq!(reply.header("www-authenticate").as_deref(), Some("Bearer"));
            assert_eq!(
                reply.header("content-type").as_deref(),
                Some("application/json")
            );
            assert_error(&reply.json().await, code);
        }
        let token = token(&["news"]);
        let bearer = format!("Bearer {token}");
        let mut stream = sse(
            arrival,
            &gw,
            "/sse?channel=news",
            &[("authorization", &bearer)],
        )
        .await;
        stream.ready().await;

        if arrival.websocket() {
            // A bad token is told right after the upgrade; none at all once no `auth` message
            // came within the auth timeout.
            for query in ["?token=not.a.token", ""] {
                let mut ws = open_ws(arrival, &gw, query, &[])
                    .await
                    .expect("a refused token is told after the upgrade");
                assert_eq!(ws.closed().await, Some(CLOSE_UNAUTHORIZED), "{query}");
            }
            let mut ws = open_ws(arrival, &gw, &format!("?token={token}"), &[])
                .await
                .expect("upgrade");
            ws.subscribe("news", None).await;
        }
    })
    .await;
}

/// CORS grants listed origins only, on every arrival; a WebSocket from an unlisted origin is
/// refused 403 before the upgrade.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn origins_are_judged_alike_on_every_arrival() {
    each(&Arrival::ALL, |arrival| async move {
        let gw = arrival
            .gateway(&[("GATEWAY__CORS__ALLOW_ORIGINS", "https://app.example")])
            .await;
        let listed = open_sse(
            arrival,
            &gw,
            "/sse?channel=c",
            &[("origin", "https://app.example")],
        )
        .await;
        assert_eq!(
            listed.header("access-control-allow-origin").as_deref(),
            Some("https://app.example")
        );
        assert!(
            listed.header("vary").is_some_and(|v| v.contains("Origin")),
            "{:?}",
            listed.headers
        );
        listed.events().await.ready().await;

        let unlisted = open_sse(
            arrival,
            &gw,
            "/sse?channel=c",
            &[("origin", "https://evil.example")],
        )
        .await;
        assert!(
            !unlisted.headers.contains_key("access-control-allow-origin"),
            "no grant for an unlisted origin: {:?}",
            unlisted.headers
        );
        assert!(
            unlisted
                .header("vary")
                .is_some_and(|v| v.contains("Origin"))
        );
        unlisted.events().await.ready().await;

        if arrival.websocket() {
            let (status, body) = open_ws(arrival, &gw, "", &[("origin", "https://evil.example")])
                .await
                .err()
                .expect("a WebSocket from an unlisted origin is refused");
            assert_eq!(status, 403, "{body}");
            assert_error(
                &serde_json::from_str(&body).expect("JSON"),
                "origin_not_allowed",
            );
            let mut ws = open_ws(arrival, &gw, "", &[("origin", "https://app.example")])
                .await
                .expect("a listed origin is upgraded");
            ws.subscribe("c", None).await;
            // The gateway's own origin on a loopback name is its own page...
            let own = format!("http://{}", gw.addr);
            open_ws(arrival, &gw, "", &[("origin", &own)])
                .await
                .expect("the gateway's own origin is upgraded");
            // ...but a rebound DNS name that matches Host is not (DNS rebinding).
            let rebound = [
                ("host", "rebind.example:8080"),
                ("origin", "http://rebind.example:8080"),
            ];
            let (status, body) = open_ws(arrival, &gw, "", &rebound)
                .await
                .err()
                .expect("a rebound origin is refused");
            assert_eq!(status, 403, "{body}");
        }
    })
    .await;
}

/// At `server.max_connections`, a further stream is refused 503 `connection_limit` with
/// `Retry-After`, and admitted again once a slot frees up.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_connection_limit_is_the_same_on_every_arrival() {
    each(&Arrival::ALL, |arrival| async move {
        let gw = arrival
            .gateway(&[("GATEWAY__SERVER__MAX_CONNECTIONS", "1")])
            .await;
        let mut first = sse(arrival, &gw, "/sse?channel=c", &[]).await;
        first.ready().await;
        let second = open_sse(arrival, &gw, "/sse?channel=c", &[]).await;
        assert_eq!(second.status, 503);
        assert!(
            second
                .header("retry-after")
                .is_some_and(|v| v.parse::<u32>().is_ok()),
            "Retry-After: {:?}",
            second.headers
        );
        assert_error(&second.json().await, "connection_limit");
        if arrival.websocket() {
            let (status, body) = open_ws(arrival, &gw, "", &[])
                .await
                .err()
                .expect("no WebSocket beyond the limit");
            assert_eq!(status, 503, "{body}");
            assert_error(
                &serde_json::from_str(&body).expect("JSON"),
                "connection_limit",
            );
        }
        drop(first);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let again = open_sse(arrival, &gw, "/sse?channel=c", &[]).await;
            if again.status == 200 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the slot was not freed: still {}",
                again.status
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

/// A WebSocket cannot arrive over HTTP/2 (no extended CONNECT): `GET /ws` is an ordinary
/// request without a handshake, answered 400 `not_websocket`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_over_http2_are_refused_as_not_websocket() {
    each(&Arrival::HTTP2, |arrival| async move {
        let gw = arrival.gateway(&[]).await;
        let reply = request(
            arrival,
            &gw,
            Method::GET,
            "/ws",
            &[
                ("sec-websocket-version", "13"),
                ("sec-websocket-key", WS_KEY),
            ],
            empty(),
        )
        .await
        .expect("an answer");
        assert_eq!(reply.status, 400);
        assert_error(&reply.json().await, "not_websocket");
    })
    .await;
}
