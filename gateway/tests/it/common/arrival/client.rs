//! hyper's client (HTTP/1.1 or HTTP/2) on one connection of one arrival.

use super::*;

/// A request body.
pub type ReqBody = UnsyncBoxBody<Bytes, Infallible>;

/// No body.
pub fn empty() -> ReqBody {
    Empty::new().boxed_unsync()
}

/// A body of `bytes`.
pub fn full(bytes: impl Into<Bytes>) -> ReqBody {
    Full::new(bytes.into()).boxed_unsync()
}

/// A body sent in pieces as they are pushed into the returned sender.
pub fn streamed() -> (tokio::sync::mpsc::Sender<Bytes>, ReqBody) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        let chunk = rx.recv().await?;
        Some((Ok::<_, Infallible>(Frame::data(chunk)), rx))
    });
    (tx, StreamBody::new(stream).boxed_unsync())
}

pub(super) enum Sender {
    H1(http1::SendRequest<ReqBody>),
    H2(http2::SendRequest<ReqBody>),
}

/// An HTTP client on one connection of one arrival (hyper's client, HTTP/1.1 or HTTP/2). The
/// connection closes when the client is dropped.
pub struct Client {
    arrival: Arrival,
    sender: Sender,
    authority: String,
    scheme: &'static str,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Client {
    /// A fresh connection for `arrival`; for the later arrivals, one `GET /healthz` has been
    /// served on it, so the next request is a later one.
    pub async fn connect(arrival: Arrival, gw: impl Into<Target>) -> Self {
        let gw: Target = gw.into();
        let io = TokioIo::new(connect(arrival, gw).await);
        let (sender, task) = if arrival.http2() {
            let (sender, conn) = http2::handshake(TokioExecutor::new(), io)
                .await
                .expect("HTTP/2 handshake");
            let task = tokio::spawn(async move {
                let _ = conn.await;
            });
            (Sender::H2(sender), task)
        } else {
            let (sender, conn) = http1::handshake(io).await.expect("HTTP/1.1 handshake");
            let task = tokio::spawn(async move {
                let _ = conn.await;
            });
            (Sender::H1(sender), task)
        };
        let mut client = Self {
            arrival,
            sender,
            authority: gw.addr.to_string(),
            scheme: gw.scheme,
            task,
        };
        if arrival.later() {
            let (status, body) = client
                .call(Method::GET, "/healthz", &[], empty())
                .await
                .expect("GET /healthz");
            assert_eq!(status, 200, "GET /healthz: {body}");
        }
        client
    }

    /// Whether the connection has closed.
    pub fn is_closed(&self) -> bool {
        match &self.sender {
            Sender::H1(s) => s.is_closed(),
            Sender::H2(s) => s.is_closed(),
        }
    }

    /// Sends a request; the response head, checked to have the arrival's HTTP version, or the
    /// client's error (e.g. the connection was closed or the stream reset).
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: ReqBody,
    ) -> Result<Response<Incoming>, String> {
        let mut req = Request::builder().method(method);
        req = if self.arrival.http2() {
            req.uri(format!("{}://{}{}", self.scheme, self.authority, path))
        } else {
            req.uri(path).header(http::header::HOST, &self.authority)
        };
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let req = req.body(body).expect("request");
        let sent = async {
            match &mut self.sender {
                Sender::H1(s) => {
                    s.ready().await?;
                    s.send_request(req).await
                }
                Sender::H2(s) => {
                    s.ready().await?;
                    s.send_request(req).await
                }
            }
        };
        let res = match tokio::time::timeout(WAIT, sent).await {
            Err(_) => return Err(format!("no response within {WAIT:?}")),
            Ok(Err(e)) => return Err(format!("{e:?}")),
            Ok(Ok(res)) => res,
        };
        assert_eq!(
            res.version(),
            self.arrival.version(),
            "{} answered in another HTTP version",
            self.arrival
        );
        Ok(res)
    }

    /// `GET <path>` as the next request on this connection, which must be served as an SSE
    /// stream (panics otherwise); the stream keeps the connection.
    pub async fn into_sse(mut self, path: &str, headers: &[(&str, &str)]) -> Events {
        let res = self
            .send(Method::GET, path, headers, empty())
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let status = res.status().as_u16();
        if status != 200 {
            let body = read_text(res.into_body()).await;
            panic!("GET {path} answered {status}: {body:?}");
        }
        let coding = res
            .headers()
            .get("content-encoding")
            .map(|v| v.to_str().expect("ASCII header").to_owned());
        Events::new(res.into_body(), self, coding.as_deref())
    }

    /// Sends a request and reads the whole answer: status and body text.
    pub async fn call(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: ReqBody,
    ) -> Result<(u16, String), String> {
        let res = self.send(method, path, headers, body).await?;
        let status = res.status().as_u16();
        let body = read_text(res.into_body()).await?;
        Ok((status, body))
    }
}

pub(super) async fn read_text(body: Incoming) -> Result<String, String> {
    let bytes = tokio::time::timeout(WAIT, body.collect())
        .await
        .map_err(|_| format!("no complete body within {WAIT:?}"))?
        .map_err(|e| format!("body: {e:?}"))?
        .to_bytes();
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// A response on a connection of its own.
pub struct Reply {
    /// How the request arrived.
    pub arrival: Arrival,
    /// The status code.
    pub status: u16,
    /// The response headers.
    pub headers: HeaderMap,
    body: Incoming,
    client: Client,
}

impl Reply {
    /// A header's value, if present (the first one).
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("ASCII header").to_owned())
    }

    /// The whole body, as text.
    pub async fn text(self) -> String {
        read_text(self.body)
            .await
            .unwrap_or_else(|e| panic!("reading the body: {e}"))
    }

    /// The whole body, as JSON.
    pub async fn json(self) -> serde_json::Value {
        let status = self.status;
        let text = self.text().await;
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{status}: not a JSON body ({e}): {text}"))
    }

    /// The SSE stream of a 200 answer (panics with the body otherwise), after checking it was
    /// served the arrival's way: raw and close-delimited for a first request (plain or TLS),
    /// chunked by hyper for a later one.
    pub async fn events(self) -> Events {
        if self.status != 200 {
            let status = self.status;
            panic!("SSE request answered {status}: {}", self.text().await);
        }
        assert_eq!(
            self.header("content-type").as_deref(),
            Some("text/event-stream")
        );
        let chunked = self.header("transfer-encoding").as_deref() == Some("chunked");
        match self.arrival {
            Arrival::First | Arrival::Tls => {
                assert!(
                    !chunked && self.header("connection").as_deref() == Some("close"),
                    "a first GET /sse is served raw, close-delimited: {:?}",
                    self.headers
                );
            }
            Arrival::KeepAlive | Arrival::TlsKeepAlive => {
                assert!(chunked, "served by hyper, chunked: {:?}", self.headers);
            }
            Arrival::Tls2 | Arrival::H2c => {}
        }
        let coding = self.header("content-encoding");
        Events::new(self.body, self.client, coding.as_deref())
    }
}

/// Sends one request on a fresh connection of `arrival` (after `GET /healthz` for the later
/// arrivals); the client's error if there is no response.
pub async fn request(
    arrival: Arrival,
    gw: &Gateway,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: ReqBody,
) -> Result<Reply, String> {
    let mut client = Client::connect(arrival, gw).await;
    let res = client.send(method, path, headers, body).await?;
    let (parts, body) = res.into_parts();
    Ok(Reply {
        arrival,
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
        client,
    })
}
