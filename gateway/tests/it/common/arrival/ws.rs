//! WebSocket clients over any arrival.

use super::*;

/// A WebSocket over any [`Io`], speaking the gateway's protocol.
pub struct WsConn {
    stream: WebSocketStream<BoxIo>,
}

/// Opens a WebSocket over `arrival` (`query`: `""` or `?token=...`) with extra request headers;
/// on a refused upgrade, the status and body.
pub async fn open_ws(
    arrival: Arrival,
    gw: &Gateway,
    query: &str,
    headers: &[(&str, &str)],
) -> Result<WsConn, (u16, String)> {
    use tungstenite::client::IntoClientRequest;
    assert!(arrival.websocket(), "no WebSocket over {arrival}");
    let scheme = if arrival.tls() { "wss" } else { "ws" };
    let mut request = format!("{scheme}://{}/ws{query}", gw.addr)
        .into_client_request()
        .expect("ws request");
    for (name, value) in headers {
        request.headers_mut().insert(
            http::HeaderName::from_bytes(name.as_bytes()).expect("header name"),
            value.parse().expect("header value"),
        );
    }
    let io = raw(arrival, gw).await;
    match tokio::time::timeout(WAIT, tokio_tungstenite::client_async(request, io)).await {
        Err(_) => panic!("no WebSocket handshake answer within {WAIT:?}"),
        Ok(Ok((stream, _))) => Ok(WsConn { stream }),
        Ok(Err(tungstenite::Error::Http(res))) => {
            let body = res
                .body()
                .as_deref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            Err((res.status().as_u16(), body))
        }
        Ok(Err(e)) => panic!("WebSocket handshake failed: {e}"),
    }
}

impl WsConn {
    /// Sends a JSON command.
    pub async fn send(&mut self, value: serde_json::Value) {
        self.stream
            .send(Message::text(value.to_string()))
            .await
            .expect("ws send");
    }

    /// The next message within `wait` (pings are answered by the library and skipped).
    pub async fn recv_within(&mut self, wait: Duration) -> Option<WsItem> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let msg = match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Err(_) => return None,
                Ok(None) | Ok(Some(Err(_))) => return Some(WsItem::Closed(None)),
                Ok(Some(Ok(msg))) => msg,
            };
            return Some(match msg {
                Message::Text(t) => {
                    WsItem::Json(serde_json::from_str(t.as_str()).expect("server sent JSON"))
                }
                Message::Binary(b) => WsItem::Binary(b.to_vec()),
                Message::Close(frame) => {
                    WsItem::Closed(frame.map(|f| (u16::from(f.code), f.reason.to_string())))
                }
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
            });
        }
    }

    /// The next message; panics after [`WAIT`].
    pub async fn recv(&mut self) -> WsItem {
        self.recv_within(WAIT)
            .await
            .expect("expected a WebSocket message")
    }

    /// The next JSON message, which must have `"type": kind`.
    pub async fn expect(&mut self, kind: &str) -> serde_json::Value {
        match self.recv().await {
            WsItem::Json(v) if v["type"] == kind => v,
            other => panic!("expected a {kind} message, got {other:?}"),
        }
    }

    /// Subscribes (from `since` if given) and returns the `subscribed` reply.
    pub async fn subscribe(&mut self, channel: &str, since: Option<&str>) -> serde_json::Value {
        let mut cmd = serde_json::json!({"type": "subscribe", "channel": channel});
        if let Some(since) = since {
            cmd["since"] = since.into();
        }
        self.send(cmd).await;
        self.expect("subscribed").await
    }

    /// The next event's `(id, data)`.
    pub async fn event(&mut self) -> (String, String) {
        let v = self.expect("event").await;
        let data = match &v["data"] {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        (v["id"].as_str().expect("event id").to_owned(), data)
    }

    /// Waits for the server to close; its close code (`None`: no close frame).
    pub async fn closed(&mut self) -> Option<u16> {
        loop {
            if let WsItem::Closed(frame) = self.recv().await {
                return frame.map(|(code, _)| code);
            }
        }
    }

    /// Asserts nothing arrives for `wait`.
    pub async fn assert_quiet(&mut self, wait: Duration) {
        if let Some(item) = self.recv_within(wait).await {
            panic!("unexpected WebSocket message {item:?}");
        }
    }
}
