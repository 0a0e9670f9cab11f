//! Publishing and `/metrics` for a gateway, whatever it serves.

use super::*;

/// Publishing and `/metrics` for a gateway, over one keep-alive HTTP/1.1 connection (TLS when
/// the gateway serves TLS), reopened when the gateway has closed it.
pub struct Control {
    arrival: Arrival,
    target: Target,
    client: Option<Client>,
}

impl Control {
    /// A control connection to `gw` (opened on first use).
    pub fn new(gw: &Gateway) -> Self {
        Self {
            arrival: if gw.is_tls() {
                Arrival::Tls
            } else {
                Arrival::First
            },
            target: gw.into(),
            client: None,
        }
    }

    /// A request; its status and body.
    pub async fn call(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: ReqBody,
    ) -> (u16, String) {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.client = Some(Client::connect(self.arrival, self.target).await);
        }
        let client = self.client.as_mut().expect("client");
        client
            .call(method, path, headers, body)
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// `POST /publish`; the event's id.
    pub async fn publish(&mut self, channel: &str, data: &str) -> String {
        let body = serde_json::json!({ "channel": channel, "data": data }).to_string();
        let (status, text) = self
            .call(
                Method::POST,
                "/publish",
                &[("content-type", "application/json")],
                full(body),
            )
            .await;
        assert_eq!(status, 200, "publish failed: {text}");
        let reply: serde_json::Value = serde_json::from_str(&text).expect("publish reply");
        reply["id"].as_str().expect("id").to_owned()
    }

    /// The `/metrics` text.
    pub async fn metrics(&mut self) -> String {
        let (status, text) = self.call(Method::GET, "/metrics", &[], empty()).await;
        assert_eq!(status, 200, "GET /metrics: {text}");
        text
    }
}
