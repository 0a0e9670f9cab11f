//! WebSocket clients over any arrival.

use super::*;

/// Opens a WebSocket over `arrival` (`query`: `""` or `?token=...`) with extra request headers;
/// on a refused upgrade, the status and body.
pub async fn open_ws(
    arrival: Arrival,
    gw: &Gateway,
    query: &str,
    headers: &[(&str, &str)],
) -> Result<Ws, (u16, String)> {
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
        Ok(Ok((stream, _))) => Ok(Ws::from_stream(stream)),
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

impl Ws {
    /// The next event's `(id, data)`.
    pub async fn event(&mut self) -> (String, String) {
        let v = self.expect("event").await;
        let data = match &v["data"] {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        (v["id"].as_str().expect("event id").to_owned(), data)
    }
}
