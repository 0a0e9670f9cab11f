//! The HTTP surface as a client sees it: status codes, the JSON error shape, SSE headers and
//! framing, heartbeats, the connection limit, readiness and metrics. Black-box against the real
//! binary (memory engine unless a test needs Redis).

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};
use shared::Position;
use shared::sse::SseDecoder;

use crate::common::*;

/// Asserts the documented error shape: `status` and exactly `{"error": code, "detail": text}`.
async fn expect_error(
    res: reqwest::Response,
    status: u16,
    code: &str,
) -> reqwest::header::HeaderMap {
    let got = res.status().as_u16();
    let headers = res.headers().clone();
    let body = res.text().await.unwrap();
    assert_eq!(got, status, "expected {status} {code}, got {got}: {body}");
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    assert!(
        content_type.starts_with("application/json"),
        "content-type {content_type:?} for {body}"
    );
    let json: Value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
    let obj = json
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {body}"));
    assert_eq!(obj.get("error"), Some(&json!(code)), "{body}");
    let detail = obj.get("detail").and_then(Value::as_str).unwrap_or("");
    assert!(!detail.is_empty(), "detail must explain: {body}");
    assert_eq!(obj.len(), 2, "only error and detail: {body}");
    headers
}

async fn post_raw(gw: &Gateway, body: impl Into<reqwest::Body>) -> reqwest::Response {
    http()
        .post(gw.url("/publish"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
}

async fn sse_get(url: &str, last_event_id: Option<&str>) -> reqwest::Response {
    let mut req = http().get(url);
    if let Some(id) = last_event_id {
        req = req.header("Last-Event-ID", id);
    }
    req.send().await.unwrap()
}

/// A streaming response read as raw text (for wire-level checks the decoder hides).
struct RawSse {
    stream: futures_util::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    text: String,
    decoder: SseDecoder,
}

impl RawSse {
    fn new(res: reqwest::Response) -> Self {
        Self {
            stream: res.bytes_stream().boxed(),
            text: String::new(),
            decoder: SseDecoder::new(),
        }
    }

    /// Reads until `done(text)` holds; panics after [`WAIT`].
    async fn read_until(&mut self, what: &str, done: impl Fn(&str) -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !done(&self.text) {
            match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Ok(Some(Ok(chunk))) => {
                    self.decoder.feed(&chunk);
                    self.text.push_str(&String::from_utf8_lossy(&chunk));
                }
                other => panic!(
                    "stream ended or stalled before {what}: {other:?}; got {:?}",
                    self.text
                ),
            }
        }
    }
}

async fn metrics(gw: &Gateway) -> String {
    metrics_text(&gw.url("")).await
}

/// Waits until the series has the value (metrics are updated by background tasks).
async fn metric_becomes(gw: &Gateway, series: &str, value: f64) {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let now = metric(&metrics(gw).await, series);
        if now == value {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {series} == {value} (now {now})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// POST /publish
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_rejects_bad_bodies_with_json_errors() {
    let gw = Gateway::spawn(&[("GATEWAY__PUBLISH__MAX_BYTES", "1024")]);

    expect_error(post_raw(&gw, "not json").await, 400, "invalid_json").await;
    expect_error(post_raw(&gw, "").await, 400, "invalid_json").await;
    expect_error(
        post_raw(&gw, r#"{"channel":"a"}"#).await,
        400,
        "invalid_json",
    )
    .await;
    expect_error(post_raw(&gw, r#"{"data":"x"}"#).await, 400, "invalid_json").await;
    expect_error(
        post_raw(&gw, r#"{"channel":"a","data":"x","extra":1}"#).await,
        400,
        "invalid_json",
    )
    .await;

    let long = "x".repeat(10_000);
    for bad in [
        "a{b",
        "a}b",
        "{a}",
        "a b",
        " a",
        "",
        "a,b",
        "é",
        long.as_str(),
    ] {
        let body = json!({ "channel": bad, "data": "x" }).to_string();
        // The 10 kB name does not fit the 1 kB body limit; it gets its own gateway below.
        if body.len() < 1024 {
            expect_error(post_raw(&gw, body).await, 400, "invalid_channel").await;
        }
    }
    for bad in ["gap", "a b", "line\nbreak", &"e".repeat(65)] {
        let body = json!({ "channel": "a", "data": "x", "event": bad }).to_string();
        expect_error(post_raw(&gw, body).await, 400, "invalid_event").await;
    }

    let big = json!({ "channel": "a", "data": "y".repeat(2000) }).to_string();
    expect_error(post_raw(&gw, big).await, 413, "body_too_large").await;
    // Just under the limit is fine.
    let fits = json!({ "channel": "a", "data": "y".repeat(900) }).to_string();
    assert!(fits.len() <= 1024);
    let res = post_raw(&gw, fits).await;
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());

    let roomy = Gateway::spawn(&[]);
    let body = json!({ "channel": long, "data": "x" }).to_string();
    expect_error(post_raw(&roomy, body).await, 400, "invalid_channel").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_body_must_be_an_object() {
    // serde's derive also reads structs from JSON arrays, so without a guard a positional
    // `["channel", "data"]` is accepted: an undocumented second syntax whose meaning would
    // silently change if the struct's fields were ever reordered.
    let gw = Gateway::spawn(&[]);
    expect_error(post_raw(&gw, r#"["a","x"]"#).await, 400, "invalid_json").await;
    expect_error(
        post_raw(&gw, r#"["a","x","up"]"#).await,
        400,
        "invalid_json",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_refuses_a_large_streamed_body_with_413() {
    // A body far beyond the limit, sent without waiting: the client must still get the JSON 413
    // rather than a reset connection.
    let gw = Gateway::spawn(&[("GATEWAY__PUBLISH__MAX_BYTES", "1024")]);
    let big = json!({ "channel": "a", "data": "z".repeat(1 << 20) }).to_string();
    expect_error(post_raw(&gw, big).await, 413, "body_too_large").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_with_api_key_needs_the_bearer() {
    let gw = Gateway::spawn(&[("GATEWAY__PUBLISH__API_KEY", "s3cret-key")]);
    let body = json!({ "channel": "news", "data": "hello" });
    let send = |auth: Option<&'static str>| {
        let mut req = http().post(gw.url("/publish")).json(&body);
        if let Some(auth) = auth {
            req = req.header("Authorization", auth);
        }
        req.send()
    };
    for auth in [
        None,
        Some("Bearer wrong"),
        Some("Bearer s3cret-ke"),
        Some("Bearer s3cret-key2"),
        Some("s3cret-key"),
        Some("Basic czNjcmV0LWtleQ=="),
    ] {
        let headers = expect_error(send(auth).await.unwrap(), 401, "unauthorized").await;
        assert_eq!(
            headers
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok()),
            Some("Bearer"),
            "auth {auth:?}"
        );
    }
    let res = send(Some("Bearer s3cret-key")).await.unwrap();
    assert_eq!(res.status(), 200);
    let reply: Value = res.json().await.unwrap();
    let obj = reply.as_object().unwrap();
    assert_eq!(obj.len(), 1, "{reply}");
    let id: Position = reply["id"].as_str().unwrap().parse().unwrap();
    assert_eq!(id.offset, 1);
    // SSE needs no key: the key guards publishing only.
    let mut sse = Sse::connect(&gw.url("/sse?channel=news"), None).await;
    sse.ready().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_api_key_scheme_is_case_insensitive() {
    // RFC 7235 section 2.1: the auth scheme is a case-insensitive token; some HTTP libraries
    // send "bearer".
    let gw = Gateway::spawn(&[("GATEWAY__PUBLISH__API_KEY", "s3cret-key")]);
    for auth in ["bearer s3cret-key", "BEARER s3cret-key"] {
        let res = http()
            .post(gw.url("/publish"))
            .header("Authorization", auth)
            .json(&json!({ "channel": "news", "data": "hello" }))
            .send()
            .await
            .unwrap();
        let status = res.status();
        assert_eq!(status, 200, "{auth:?}: {}", res.text().await.unwrap());
    }
}

// ---------------------------------------------------------------------------------------------
// GET /sse request validation
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_rejects_bad_requests_with_json_errors() {
    let gw = Gateway::spawn(&[("GATEWAY__LIMITS__MAX_CHANNELS", "3")]);
    let url = |q: &str| gw.url(&format!("/sse{q}"));

    expect_error(sse_get(&url(""), None).await, 400, "missing_channel").await;
    expect_error(
        sse_get(&url("?channel="), None).await,
        400,
        "missing_channel",
    )
    .await;
    expect_error(
        sse_get(&url("?other=1"), None).await,
        400,
        "missing_channel",
    )
    .await;

    let long = format!("?channel={}", "x".repeat(10_000));
    for q in [
        "?channel=a%7Bb",
        "?channel=a%7Db",
        "?channel=%7Ba%7D",
        "?channel=a%20b",
        "?channel=a+b",
        "?channel=%FF",
        long.as_str(),
    ] {
        expect_error(sse_get(&url(q), None).await, 400, "invalid_channel").await;
    }

    expect_error(
        sse_get(&url("?channel=a&channel=b&channel=c&channel=d"), None).await,
        400,
        "too_many_channels",
    )
    .await;
    expect_error(
        sse_get(&url("?channel=a,b,c,d"), None).await,
        400,
        "too_many_channels",
    )
    .await;
    // Duplicates are one channel, so exactly the limit is admitted.
    let res = sse_get(&url("?channel=a&channel=b&channel=c&channel=a"), None).await;
    assert_eq!(res.status(), 200);
    drop(res);

    // Long, but within the 16 KiB head limit (in the header and in the query).
    let long = "1:1".repeat(3_000);
    for cursor in [
        "garbage",
        "1:-1",
        "1:x",
        "zz:1",
        ":",
        "1:1,1:2",
        "1:18446744073709551616",
        long.as_str(),
    ] {
        expect_error(
            sse_get(&url("?channel=a"), Some(cursor)).await,
            400,
            "bad_cursor",
        )
        .await;
        let q: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("channel", "a")
            .append_pair("lastEventId", cursor)
            .finish();
        expect_error(
            sse_get(&url(&format!("?{q}")), None).await,
            400,
            "bad_cursor",
        )
        .await;
    }
    // A head beyond 16 KiB is refused before it is parsed.
    let huge = "1:1".repeat(100_000 / 3);
    assert_eq!(
        sse_get(&url("?channel=a"), Some(&huge))
            .await
            .status()
            .as_u16(),
        431
    );
    // Two channels need two positions.
    expect_error(
        sse_get(&url("?channel=a&channel=b"), Some("1:1")).await,
        400,
        "bad_cursor",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_answers_a_cursor_ahead_of_the_channel_with_a_gap_not_an_error() {
    // EventSource gives up for good on a non-200, so a position beyond the head (lost writes,
    // or a forged cursor) gets a stream that starts with a gap. Malformed cursors still get 400.
    let gw = Gateway::spawn(&[]);
    publish(&gw.url(""), "ahead", "one").await;
    let id: Position = publish(&gw.url(""), "ahead", "two").await.parse().unwrap();
    let url = gw.url("/sse?channel=ahead");

    for forged in [
        Position::new(id.epoch, id.offset + 1).to_string(),
        Position::new(id.epoch, u64::MAX).to_string(),
    ] {
        let mut sse = Sse::connect(&url, Some(&forged)).await;
        let first = assert_gap(&sse.next().await, "ahead");
        assert_eq!(first, id.next(), "continues after the real head");
        sse.assert_quiet(Duration::from_millis(100)).await;
    }
    let q = format!("{url}&lastEventId={}", Position::new(id.epoch, 99));
    let mut sse = Sse::connect(&q, None).await;
    assert_gap(&sse.next().await, "ahead");
    expect_error(sse_get(&url, Some("zz:1")).await, 400, "bad_cursor").await;

    // At the head is fine, and nothing is replayed.
    let mut sse = Sse::connect(&url, Some(&id.to_string())).await;
    sse.ready().await;
    assert_eq!(sse.last_event_id(), id.to_string());
    sse.assert_quiet(Duration::from_millis(200)).await;
}

// ---------------------------------------------------------------------------------------------
// Routing
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_paths_and_wrong_methods_get_json_errors() {
    let gw = Gateway::spawn(&[]);
    for path in ["/nope", "/sse/extra", "/publish/x", "/metrics2"] {
        expect_error(
            http().get(gw.url(path)).send().await.unwrap(),
            404,
            "not_found",
        )
        .await;
    }
    expect_error(
        http().get(gw.url("/publish")).send().await.unwrap(),
        405,
        "method_not_allowed",
    )
    .await;
    expect_error(
        http().put(gw.url("/publish")).send().await.unwrap(),
        405,
        "method_not_allowed",
    )
    .await;
    expect_error(
        http().post(gw.url("/sse?channel=a")).send().await.unwrap(),
        405,
        "method_not_allowed",
    )
    .await;
    let res = http().get(gw.url("/healthz")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<Value>().await.unwrap()["status"], "ok");
}

// ---------------------------------------------------------------------------------------------
// Engine availability
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_redis_gives_503_but_stays_alive() {
    let closed = format!("redis://127.0.0.1:{}/", free_port());
    let gw = Gateway::spawn(&[
        ("GATEWAY__REDIS__URL", closed.as_str()),
        ("GATEWAY__REDIS__TIMEOUT_SECONDS", "1"),
        ("GATEWAY__LIMITS__SUBSCRIBE_TIMEOUT_SECONDS", "2"),
        // Connection-refused warnings are expected here; keep the test output readable.
        ("RUST_LOG", "error"),
    ]);

    let res = http()
        .post(gw.url("/publish"))
        .json(&json!({ "channel": "a", "data": "x" }))
        .send()
        .await
        .unwrap();
    let headers = expect_error(res, 503, "engine_unavailable").await;
    assert!(headers.contains_key("retry-after"), "{headers:?}");

    let res = http().get(gw.url("/readyz")).send().await.unwrap();
    assert_eq!(res.status(), 503);
    assert!(res.headers().contains_key("retry-after"));
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"], "not_ready", "{body}");
    assert!(
        body["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "{body}"
    );

    let res = http().get(gw.url("/sse?channel=a")).send().await.unwrap();
    let headers = expect_error(res, 503, "engine_unavailable").await;
    assert!(headers.contains_key("retry-after"));

    let res = http().get(gw.url("/healthz")).send().await.unwrap();
    assert_eq!(res.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_200_with_redis_and_with_memory() {
    let redis = Redis::start();
    let on_redis = Gateway::on_redis(&redis, &format!("{}:", unique("t")), &[]);
    eventually("redis gateway ready", async || {
        http()
            .get(on_redis.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status()
            == 200
    })
    .await;
    let body: Value = http()
        .get(on_redis.url("/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["engine"], "redis");

    let memory = Gateway::spawn(&[]);
    let res = http().get(memory.url("/readyz")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(
        (body["status"].as_str(), body["engine"].as_str()),
        (Some("ready"), Some("memory"))
    );
}

// ---------------------------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_connections_publishes_deliveries_and_resumes() {
    let gw = Gateway::spawn(&[]);
    let res = http().get(gw.url("/metrics")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let content_type = res.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let text = res.text().await.unwrap();
    for series in [
        "gateway_connections{transport=\"sse\"}",
        "gateway_messages_published_total{api=\"http\"}",
        "gateway_messages_delivered_total{transport=\"sse\"}",
        "gateway_resumes_total{outcome=\"fresh\"}",
        "gateway_resumes_total{outcome=\"recovered\"}",
        "gateway_resumes_total{outcome=\"gap\"}",
        "gateway_resumes_total{outcome=\"bad_cursor\"}",
    ] {
        assert_eq!(metric(&text, series), 0.0, "{series} at start");
    }

    let mut sse = Sse::connect(&gw.url("/sse?channel=m"), None).await;
    sse.ready().await;
    metric_becomes(&gw, "gateway_connections{transport=\"sse\"}", 1.0).await;
    metric_becomes(&gw, "gateway_resumes_total{outcome=\"fresh\"}", 1.0).await;

    publish(&gw.url(""), "m", "one").await;
    assert_eq!(
        metric(
            &metrics(&gw).await,
            "gateway_messages_published_total{api=\"http\"}"
        ),
        1.0
    );
    assert_eq!(sse.next().await.data, "one");
    metric_becomes(
        &gw,
        "gateway_messages_delivered_total{transport=\"sse\"}",
        1.0,
    )
    .await;
    let last = sse.last_event_id();
    drop(sse);
    metric_becomes(&gw, "gateway_connections{transport=\"sse\"}", 0.0).await;

    expect_error(
        sse_get(&gw.url("/sse?channel=m"), Some("nonsense")).await,
        400,
        "bad_cursor",
    )
    .await;
    metric_becomes(&gw, "gateway_resumes_total{outcome=\"bad_cursor\"}", 1.0).await;

    publish(&gw.url(""), "m", "two").await;
    let mut resumed = Sse::connect(&gw.url("/sse?channel=m"), Some(&last)).await;
    assert_eq!(resumed.next().await.data, "two");
    metric_becomes(&gw, "gateway_resumes_total{outcome=\"recovered\"}", 1.0).await;
    metric_becomes(
        &gw,
        "gateway_messages_delivered_total{transport=\"sse\"}",
        2.0,
    )
    .await;
    let text = metrics(&gw).await;
    assert_eq!(
        metric(&text, "gateway_messages_published_total{api=\"http\"}"),
        2.0
    );
    assert_eq!(
        metric(&text, "gateway_resumes_total{outcome=\"fresh\"}"),
        1.0
    );
    assert_eq!(metric(&text, "gateway_resumes_total{outcome=\"gap\"}"), 0.0);
}

// ---------------------------------------------------------------------------------------------
// SSE wire format
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_headers_and_prelude() {
    let gw = Gateway::spawn(&[("GATEWAY__SSE__RETRY_MS", "1234")]);
    let id: Position = publish(&gw.url(""), "wire", "before")
        .await
        .parse()
        .unwrap();
    let res = sse_get(&gw.url("/sse?channel=wire"), None).await;
    assert_eq!(res.status(), 200);
    let header = |name: &str| {
        res.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    assert_eq!(header("content-type").as_deref(), Some("text/event-stream"));
    assert_eq!(header("cache-control").as_deref(), Some("no-cache"));
    assert_eq!(header("x-accel-buffering").as_deref(), Some("no"));

    let mut raw = RawSse::new(res);
    raw.read_until("the prelude", |t| t.contains("\n\n")).await;
    let prelude = raw.text.split("\n\n").next().unwrap().to_owned();
    assert!(raw.text.starts_with("retry: 1234\n"), "{:?}", raw.text);
    assert!(
        prelude.lines().any(|l| l == format!("id: {id}")),
        "prelude {prelude:?} must carry the start cursor"
    );
    assert!(
        !prelude.contains("data"),
        "the prelude must not fire an event: {prelude:?}"
    );
    assert_eq!(raw.decoder.retry(), Some(1234));
    assert_eq!(raw.decoder.last_event_id(), id.to_string());
    assert!(
        raw.decoder.next_event().is_none(),
        "the event before connecting is not replayed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_data_event_names_and_multiline_payloads() {
    let gw = Gateway::spawn(&[]);
    let res = sse_get(&gw.url("/sse?channel=fmt"), None).await;
    let mut raw = RawSse::new(res);
    raw.read_until("the prelude", |t| t.contains("\n\n")).await;

    for body in [
        r#"{"channel":"fmt","data":"plain text"}"#,
        r#"{"channel":"fmt","data":"one\ntwo\r\nthree\rfour"}"#,
        "{\"channel\":\"fmt\",\n \"data\": { \"a\" : 1 ,\n \"b\" : [1, 2, {\"c\": null}] }}",
        r#"{"channel":"fmt","data":"  spaced  ","event":"update.v2"}"#,
        r#"{"channel":"fmt","data":42}"#,
        r#"{"channel":"fmt","data":"\"quoted\""}"#,
        r#"{"channel":"fmt","data":""}"#,
    ] {
        let res = post_raw(&gw, body).await;
        assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    }

    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while events.len() < 7 {
        match raw.decoder.next_event() {
            Some(e) => events.push(e),
            None => {
                let chunk = tokio::time::timeout_at(deadline, raw.stream.next())
                    .await
                    .unwrap()
                    .unwrap()
                    .unwrap();
                raw.decoder.feed(&chunk);
                raw.text.push_str(&String::from_utf8_lossy(&chunk));
            }
        }
    }
    let got: Vec<(&str, &str)> = events
        .iter()
        .map(|e| (e.event.as_str(), e.data.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("message", "plain text"),
            ("message", "one\ntwo\nthree\nfour"),
            ("message", r#"{"a":1,"b":[1,2,{"c":null}]}"#),
            ("update.v2", "  spaced  "),
            ("message", "42"),
            ("message", "\"quoted\""),
            ("message", ""),
        ]
    );
    assert!(
        raw.text
            .contains("data: one\ndata: two\ndata: three\ndata: four\n\n"),
        "multi-line data must be split into data: lines: {:?}",
        raw.text
    );
    assert!(raw.text.contains("event: update.v2\n"), "{:?}", raw.text);
    // Every event carries the resumable cursor.
    let offsets: Vec<u64> = events
        .iter()
        .map(|e| e.id.parse::<Position>().unwrap().offset)
        .collect();
    assert_eq!(offsets, [1, 2, 3, 4, 5, 6, 7]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sse_stream_gets_heartbeats() {
    let gw = Gateway::spawn(&[("GATEWAY__SSE__HEARTBEAT_SECONDS", "1")]);
    let mut sse = Sse::connect(&gw.url("/sse?channel=idle"), None).await;
    sse.ready().await;
    assert_eq!(sse.comments(), 0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while sse.comments() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} heartbeats in 5 s",
            sse.comments()
        );
        sse.assert_quiet(Duration::from_millis(100)).await;
    }
    // Heartbeats are comments: they never surface as events.
    publish(&gw.url(""), "idle", "real").await;
    assert_eq!(sse.next().await.data, "real");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sse_stream_is_never_silent_longer_than_the_heartbeat() {
    // The heartbeat setting is documented as the spacing of pings on an idle stream, to keep
    // proxies (idle timeout ~60 s) from cutting it; a silence of twice the setting defeats that.
    let gw = Gateway::spawn(&[("GATEWAY__SSE__HEARTBEAT_SECONDS", "1")]);
    let mut sse = Sse::connect(&gw.url("/sse?channel=silence"), None).await;
    sse.ready().await;
    let start = tokio::time::Instant::now();
    while sse.comments() == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "no heartbeat at all"
        );
        sse.assert_quiet(Duration::from_millis(20)).await;
    }
    let silence = start.elapsed();
    assert!(
        silence < Duration::from_millis(1750),
        "first heartbeat after {silence:?} of silence with heartbeat_seconds = 1"
    );
}

// ---------------------------------------------------------------------------------------------
// Connection limit
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limit_refuses_then_admits_after_a_close() {
    let gw = Gateway::spawn(&[("GATEWAY__SERVER__MAX_CONNECTIONS", "2")]);
    let url = gw.url("/sse?channel=limited");
    let mut first = Sse::connect(&url, None).await;
    first.ready().await;
    let mut second = Sse::connect(&url, None).await;
    second.ready().await;

    let headers = expect_error(sse_get(&url, None).await, 503, "connection_limit").await;
    assert!(headers.contains_key("retry-after"), "{headers:?}");
    // Non-streaming endpoints are not counted.
    assert_eq!(
        http()
            .get(gw.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    publish(&gw.url(""), "limited", "still works").await;
    assert_eq!(first.next().await.data, "still works");

    drop(first);
    let mut third = None;
    eventually("a slot to free up", async || {
        let res = sse_get(&url, None).await;
        match res.status().as_u16() {
            200 => {
                third = Some(RawSse::new(res));
                true
            }
            503 => false,
            other => panic!("unexpected status {other}"),
        }
    })
    .await;
    let mut third = third.unwrap();
    third
        .read_until("the prelude", |t| t.contains("\n\n"))
        .await;
    // Still at the limit with the new one admitted.
    expect_error(sse_get(&url, None).await, 503, "connection_limit").await;
    assert_eq!(second.next().await.data, "still works");
}

/// A JSON array publishes a batch in one call, on both engines: every event in order with its
/// id; a bad item refuses the whole batch with nothing stored; a batch beyond
/// `publish.max_batch` is refused; after Redis lost its library, the batch loads it and goes
/// through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_batches_in_one_call() {
    let redis = Redis::start();
    let on_redis = Gateway::on_redis(
        &redis,
        &format!("{}:", unique("batch")),
        &[("GATEWAY__PUBLISH__MAX_BATCH", "4")],
    );
    let in_memory = Gateway::spawn(&[("GATEWAY__PUBLISH__MAX_BATCH", "4")]);
    for gw in [&on_redis, &in_memory] {
        let mut a = Sse::connect(&gw.url("/sse?channel=a"), None).await;
        a.ready().await;
        let mut b = Sse::connect(&gw.url("/sse?channel=b"), None).await;
        b.ready().await;
        let batch = json!([
            { "channel": "a", "data": "a1" },
            { "channel": "b", "data": { "n": 1 }, "event": "tick" },
            { "channel": "a", "data": "a2" },
        ]);
        let res = http()
            .post(gw.url("/publish"))
            .json(&batch)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let reply: Value = res.json().await.unwrap();
        let results = reply["results"].as_array().expect("results");
        let ids: Vec<Position> = results
            .iter()
            .map(|r| r["id"].as_str().expect("id").parse().unwrap())
            .collect();
        assert_eq!(
            ids.iter().map(|p| p.offset).collect::<Vec<_>>(),
            [1, 1, 2],
            "{reply}"
        );
        let got: Vec<String> = a.take(2).await.into_iter().map(|e| e.data).collect();
        assert_eq!(got, ["a1", "a2"]);
        let tick = b.next().await;
        assert_eq!(
            (tick.event.as_str(), tick.data.as_str()),
            ("tick", r#"{"n":1}"#)
        );

        // A bad item: nothing of the batch is stored.
        let bad = json!([{ "channel": "a", "data": "never" }, { "channel": "a{", "data": 1 }]);
        let res = http()
            .post(gw.url("/publish"))
            .json(&bad)
            .send()
            .await
            .unwrap();
        expect_error(res, 400, "invalid_channel").await;
        let five = Value::Array(vec![json!({ "channel": "a", "data": 0 }); 5]);
        let res = http()
            .post(gw.url("/publish"))
            .json(&five)
            .send()
            .await
            .unwrap();
        expect_error(res, 400, "batch_too_large").await;
        a.assert_quiet(Duration::from_millis(300)).await;
    }

    let mut admin = redis.conn().await;
    let _: () = ::redis::cmd("FUNCTION")
        .arg("FLUSH")
        .query_async(&mut admin)
        .await
        .unwrap();
    let batch = json!([{ "channel": "a", "data": "a3" }, { "channel": "c", "data": "c1" }]);
    let res = http()
        .post(on_redis.url("/publish"))
        .json(&batch)
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        200,
        "the library is loaded again for the batch"
    );
    let reply: Value = res.json().await.unwrap();
    assert_eq!(
        reply["results"][0]["id"]
            .as_str()
            .map(|id| id.ends_with(":3")),
        Some(true),
        "{reply}"
    );
}

/// `redis.password_file`: a Redis that requires a password is reached with the one from the
/// file (the URL carries none), and the password appears in no printed setting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_password_comes_from_a_file() {
    let redis = Redis::start();
    let mut admin = redis.conn().await;
    let _: () = ::redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg("pw from a file")
        .query_async(&mut admin)
        .await
        .unwrap();
    let dir = std::env::temp_dir().join(unique("gw-redis-pw-"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("password");
    std::fs::write(&file, "pw from a file\n").unwrap();
    let file = file.to_str().unwrap().to_owned();
    let gw = Gateway::on_redis(
        &redis,
        &format!("{}:", unique("pw")),
        &[("GATEWAY__REDIS__PASSWORD_FILE", &file)],
    );
    let res = http()
        .post(gw.url("/publish"))
        .json(&json!({ "channel": "a", "data": "x" }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    std::fs::remove_dir_all(dir).ok();
}
