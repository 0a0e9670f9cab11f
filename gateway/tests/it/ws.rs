//! The WebSocket transport: protocol, resume, limits and every close code.

use std::collections::BTreeSet;
use std::time::Duration;

use base64::Engine as _;
use serde_json::json;
use shared::ws::close;

use crate::common::*;

fn memory_gateway(env: &[(&str, &str)]) -> InProcess {
    InProcess::start(settings(None, env), Default::default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_channels_on_one_connection_subscribe_and_unsubscribe() {
    let gw = memory_gateway(&[]);
    let mut ws = Ws::connect(&ws_url(gw.addr)).await;
    ws.send(json!({"type": "subscribe", "channel": "a", "req": 1}))
        .await;
    let sub = ws.expect("subscribed").await;
    assert_eq!(
        (
            sub["channel"].as_str(),
            sub["recovered"].as_bool(),
            &sub["req"]
        ),
        (Some("a"), Some(false), &json!(1))
    );
    ws.subscribe("b", None).await;

    publish(&gw.url(""), "a", "a1").await;
    publish(&gw.url(""), "b", "b1").await;
    let got: BTreeSet<String> = ws.event_data(2).await.into_iter().collect();
    assert_eq!(got, BTreeSet::from(["a1".to_owned(), "b1".to_owned()]));

    ws.send(json!({"type": "unsubscribe", "channel": "a", "req": "u"}))
        .await;
    let unsub = ws.expect("unsubscribed").await;
    assert_eq!(
        (unsub["channel"].as_str(), &unsub["req"]),
        (Some("a"), &json!("u"))
    );
    publish(&gw.url(""), "a", "a2").await;
    publish(&gw.url(""), "b", "b2").await;
    assert_eq!(ws.event_data(1).await, ["b2"]);
    ws.assert_quiet(Duration::from_millis(200)).await;

    ws.send(json!({"type": "unsubscribe", "channel": "a"}))
        .await;
    assert_eq!(ws.expect("error").await["code"], "not_subscribed");
    ws.send(json!({"type": "subscribe", "channel": "b", "req": 9}))
        .await;
    let err = ws.expect("error").await;
    assert_eq!(
        (err["code"].as_str(), &err["req"]),
        (Some("already_subscribed"), &json!(9))
    );
    ws.send(json!({"type": "subscribe", "channel": "bad channel"}))
        .await;
    assert_eq!(ws.expect("error").await["code"], "invalid_channel");
    ws.send(json!({"type": "subscribe", "channel": "c", "since": "nope"}))
        .await;
    assert_eq!(ws.expect("error").await["code"], "bad_position");
    // Errors leave the connection usable.
    ws.send(json!({"type": "ping", "req": [1, 2]})).await;
    assert_eq!(ws.expect("pong").await["req"], json!([1, 2]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_with_since_on_another_instance() {
    let redis = Redis::start();
    let prefix = format!("{}:", unique("ws"));
    let a = Gateway::on_redis(&redis, &prefix, &[]);
    let b = Gateway::on_redis(&redis, &prefix, &[]);
    let mut ws = Ws::connect(&ws_url(a.addr)).await;
    ws.subscribe("room", None).await;
    for i in 1..=3 {
        publish(&a.url(""), "room", &format!("m{i}")).await;
    }
    let mut last = String::new();
    for i in 1..=3 {
        let e = ws.expect("event").await;
        assert_eq!(e["data"], format!("m{i}"));
        last = e["id"].as_str().unwrap().to_owned();
    }
    ws.close(close::NORMAL).await;
    for i in 4..=6 {
        publish(&b.url(""), "room", &format!("m{i}")).await;
    }
    let mut resumed = Ws::connect(&ws_url(b.addr)).await;
    let sub = resumed.subscribe("room", Some(&last)).await;
    assert_eq!(
        (sub["recovered"].as_bool(), sub["position"].as_str()),
        (Some(true), Some(last.as_str()))
    );
    assert_eq!(resumed.event_data(3).await, ["m4", "m5", "m6"]);
    resumed.assert_quiet(Duration::from_millis(300)).await;
    publish(&a.url(""), "room", "m7").await;
    assert_eq!(resumed.event_data(1).await, ["m7"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trimmed_history_gives_subscribed_unrecovered_then_gap_then_the_rest() {
    let gw = memory_gateway(&[("GATEWAY__HISTORY__SIZE", "10")]);
    let first = publish(&gw.url(""), "feed", "1").await;
    for i in 2..=30 {
        publish(&gw.url(""), "feed", &i.to_string()).await;
    }
    let mut ws = Ws::connect(&ws_url(gw.addr)).await;
    let sub = ws.subscribe("feed", Some(&first)).await;
    assert_eq!(sub["recovered"], false);
    let gap = ws.expect("gap").await;
    assert_eq!(gap["channel"], "feed");
    assert!(gap["first_available"].as_str().unwrap().ends_with(":21"));
    let expected: Vec<String> = (21..=30).map(|i| i.to_string()).collect();
    assert_eq!(ws.event_data(10).await, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_position_ahead_of_the_channel_is_a_gap() {
    let gw = memory_gateway(&[]);
    let id = publish(&gw.url(""), "feed", "1").await;
    let ahead = format!("{}:99", id.split(':').next().unwrap());
    let mut ws = Ws::connect(&ws_url(gw.addr)).await;
    ws.send(json!({"type": "subscribe", "channel": "feed", "since": ahead, "req": 5}))
        .await;
    let ack = ws.expect("subscribed").await;
    assert_eq!((&ack["req"], &ack["recovered"]), (&json!(5), &json!(false)));
    let gap = ws.expect("gap").await;
    assert!(gap["first_available"].as_str().unwrap().ends_with(":2"));
    publish(&gw.url(""), "feed", "2").await;
    assert_eq!(ws.event_data(1).await, ["2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_close_is_answered_with_1000() {
    let gw = memory_gateway(&[]);
    let mut ws = Ws::connect(&ws_url(gw.addr)).await;
    ws.subscribe("a", None).await;
    ws.close(close::NORMAL).await;
    assert_eq!(ws.closed().await, Some(close::NORMAL));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_with_1001() {
    let mut gw = Gateway::spawn(&[]);
    let mut idle = Ws::connect(&ws_url(gw.addr)).await;
    let mut busy = Ws::connect(&ws_url(gw.addr)).await;
    busy.subscribe("a", None).await;
    let exit = tokio::task::spawn_blocking(move || gw.terminate());
    assert_eq!(busy.closed().await, Some(close::GOING_AWAY));
    assert_eq!(idle.closed().await, Some(close::GOING_AWAY));
    assert_eq!(exit.await.unwrap(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_get_errors_then_1008_past_the_limit() {
    let gw = memory_gateway(&[("GATEWAY__WS__MAX_PROTOCOL_ERRORS", "3")]);
    let mut ws = Ws::connect(&ws_url(gw.addr)).await;
    for (text, code) in [
        ("{not json", "bad_json"),
        (r#"{"type":"dance","req":"r"}"#, "unknown_type"),
        (r#"{"type":"subscribe"}"#, "invalid_message"),
    ] {
        ws.send_text(text).await;
        assert_eq!(ws.expect("error").await["code"], code, "{text}");
    }
    ws.send(json!({"type": "ping"})).await;
    ws.expect("pong").await;
    ws.send_text("[]").await;
    assert_eq!(ws.expect("error").await["code"], "missing_type");
    assert_eq!(ws.closed().await, Some(close::POLICY));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_floods_are_rate_limited_then_closed() {
    let gw = memory_gateway(&[
        ("GATEWAY__WS__COMMANDS_PER_SECOND", "5"),
        ("GATEWAY__WS__MAX_PROTOCOL_ERRORS", "5"),
    ]);
    let mut ws = Ws::connect(&ws_url(gw.addr)).await;
    for i in 0..40 {
        ws.send(json!({"type": "subscribe", "channel": format!("c{i}")}))
            .await;
    }
    let mut limited = 0;
    let code = loop {
        match ws.recv().await {
            WsItem::Json(v) if v["type"] == "error" && v["code"] == "rate_limited" => limited += 1,
            WsItem::Json(_) => {}
            WsItem::Binary(_) => panic!("unexpected binary frame"),
            WsItem::Closed(frame) => break frame.map(|(c, _)| c),
        }
    };
    assert!(limited >= 5, "only {limited} commands were rate limited");
    assert_eq!(code, Some(close::POLICY));
    assert_disconnects_counted(&gw.url(""), "policy").await;
}

/// Every close the gateway decides is in `gateway_disconnects_total` by reason, once.
async fn assert_disconnects_counted(base: &str, reason: &str) {
    let name = format!(r#"gateway_disconnects_total{{reason="{reason}"}}"#);
    let mut text = String::new();
    for _ in 0..50 {
        text = metrics_text(base).await;
        if metric(&text, &name) >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(metric(&text, &name), 1.0, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_messages_close_with_1009() {
    let gw = memory_gateway(&[("GATEWAY__WS__MAX_MESSAGE_BYTES", "1024")]);
    let mut ws = Ws::connect(&ws_url(gw.addr)).await;
    ws.send(json!({"type": "ping", "req": "x".repeat(900)}))
        .await;
    ws.expect("pong").await;
    ws.send(json!({"type": "ping", "req": "x".repeat(2000)}))
        .await;
    assert_eq!(ws.closed().await, Some(close::TOO_BIG));
    assert_disconnects_counted(&gw.url(""), "too_big").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_peers_are_closed_with_4002() {
    let gw = memory_gateway(&[
        ("GATEWAY__WS__PING_SECONDS", "1"),
        ("GATEWAY__WS__TIMEOUT_SECONDS", "2"),
    ]);
    let mut ws = Ws::connect(&ws_url(gw.addr)).await;
    // Not reading means not answering pings either.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert_eq!(ws.closed().await, Some(close::HEARTBEAT_TIMEOUT));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_store_closes_with_4001() {
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}/");
    let gw = Gateway::spawn(&[
        ("GATEWAY__REDIS__URL", url.as_str()),
        ("GATEWAY__REDIS__TIMEOUT_SECONDS", "1"),
        ("GATEWAY__LIMITS__SUBSCRIBE_TIMEOUT_SECONDS", "1"),
    ]);
    let mut ws = Ws::connect(&ws_url(gw.addr)).await;
    ws.send(json!({"type": "subscribe", "channel": "a"})).await;
    assert_eq!(ws.closed().await, Some(close::UNAVAILABLE));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumers_are_closed_with_4000_and_counted() {
    let gw = memory_gateway(&[
        ("GATEWAY__LIMITS__QUEUE_SIZE", "16"),
        ("GATEWAY__WS__PING_SECONDS", "1"),
        ("GATEWAY__WS__TIMEOUT_SECONDS", "30"),
    ]);
    let mut ws = Ws::connect(&ws_url(gw.addr)).await;
    ws.subscribe("firehose", None).await;
    // Far more than socket buffers hold, while the client does not read.
    let payload = "x".repeat(16 * 1024);
    for _ in 0..600 {
        publish(&gw.url(""), "firehose", &payload).await;
    }
    assert_eq!(ws.closed().await, Some(close::SLOW_CONSUMER));
    assert_disconnects_counted(&gw.url(""), "slow_consumer").await;
    let metrics = metrics_text(&gw.url("")).await;
    assert!(
        metric(&metrics, "gateway_slow_consumer_disconnects_total") >= 1.0,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_site_origins_are_refused_before_the_upgrade() {
    let gw = memory_gateway(&[("GATEWAY__CORS__ALLOW_ORIGINS", "https://app.example")]);
    let url = ws_url(gw.addr);
    assert_eq!(
        Ws::try_connect(&url, &[("Origin", "https://evil.example")])
            .await
            .err()
            .as_deref(),
        Some("HTTP 403")
    );
    assert_eq!(
        Ws::try_connect(&url, &[("Origin", "null")])
            .await
            .err()
            .as_deref(),
        Some("HTTP 403")
    );
    assert!(
        Ws::try_connect(&url, &[("Origin", "https://app.example")])
            .await
            .is_ok()
    );
    let same_origin = format!("http://{}", gw.addr);
    assert!(
        Ws::try_connect(&url, &[("Origin", same_origin.as_str())])
            .await
            .is_ok()
    );
    assert!(
        Ws::try_connect(&url, &[]).await.is_ok(),
        "non-browser clients send no Origin"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_publishing_is_refused_unless_enabled() {
    let gw = memory_gateway(&[]);
    let mut ws = Ws::connect(&ws_url(gw.addr)).await;
    ws.send(json!({"type": "publish", "channel": "a", "data": "hi", "req": 1}))
        .await;
    let err = ws.expect("error").await;
    assert_eq!(
        (err["code"].as_str(), &err["req"]),
        (Some("publish_forbidden"), &json!(1))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enabled_client_publishing_reaches_every_transport() {
    let gw = memory_gateway(&[("GATEWAY__WS__ALLOW_PUBLISH", "true")]);
    let mut listener = Ws::connect(&ws_url(gw.addr)).await;
    listener.subscribe("chat", None).await;
    let mut sse = Sse::connect(&gw.url("/sse?channel=chat"), None).await;
    sse.ready().await;
    let mut writer = Ws::connect(&ws_url(gw.addr)).await;
    writer
        .send(json!({"type": "publish", "channel": "chat", "data": {"text": "hello"}, "event": "msg", "req": "p1"}))
        .await;
    let ack = writer.expect("published").await;
    assert_eq!(
        (ack["channel"].as_str(), &ack["req"]),
        (Some("chat"), &json!("p1"))
    );
    let e = listener.expect("event").await;
    assert_eq!(
        (&e["data"], e["event"].as_str(), &e["id"]),
        (&json!({"text": "hello"}), Some("msg"), &ack["id"])
    );
    let s = sse.next().await;
    assert_eq!(
        (s.event.as_str(), s.data.as_str()),
        ("msg", r#"{"text":"hello"}"#)
    );
    writer
        .send(json!({"type": "publish", "channel": "chat", "data": 1, "event": "gap"}))
        .await;
    assert_eq!(writer.expect("error").await["code"], "invalid_event");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_payloads_are_binary_frames_on_ws_and_base64_on_sse() {
    let gw = memory_gateway(&[("GATEWAY__WS__ALLOW_PUBLISH", "true")]);
    let mut ws = Ws::connect(&ws_url(gw.addr)).await;
    ws.subscribe("bin", None).await;
    let mut sse = Sse::connect(&gw.url("/sse?channel=bin"), None).await;
    sse.ready().await;
    let payload: Vec<u8> = vec![0, 1, 2, 0xff, b'\n', 0x80];

    // Over HTTP, as a backend would.
    let res = http()
        .post(gw.url("/publish?channel=bin&event=img"))
        .header("Content-Type", "application/octet-stream")
        .body(payload.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    // Over WebSocket, as a client would.
    let frame = shared::ws::encode_binary_publish("bin", None, Some("r1"), &payload).unwrap();
    ws.send_binary(frame).await;

    let mut frames = Vec::new();
    let mut acked = false;
    while frames.len() < 2 || !acked {
        match ws.recv().await {
            WsItem::Binary(b) => frames.push(b),
            WsItem::Json(v) if v["type"] == "published" => {
                assert_eq!(v["req"], "r1");
                acked = true;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    for (frame, name) in frames.iter().zip([Some("img"), None]) {
        match shared::ws::decode_binary(frame).unwrap() {
            shared::ws::BinaryFrame::Event {
                channel,
                event,
                data,
                ..
            } => {
                assert_eq!((channel, event, data), ("bin", name, payload.as_slice()));
            }
            other => panic!("expected an event frame, got {other:?}"),
        }
    }
    let b64 = base64::engine::general_purpose::STANDARD.encode(&payload);
    let first = sse.next().await;
    assert_eq!(
        (first.event.as_str(), first.data.as_str()),
        ("binary:img", b64.as_str())
    );
    let second = sse.next().await;
    assert_eq!(
        (second.event.as_str(), second.data.as_str()),
        ("binary", b64.as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_limit_channels_and_publishing() {
    use jsonwebtoken::{EncodingKey, Header};
    const SECRET: &str = "a-test-secret-of-enough-length";
    let gw = memory_gateway(&[
        ("GATEWAY__AUTH__JWT_SECRET", SECRET),
        ("GATEWAY__PUBLISH__ALLOW_ANONYMOUS", "true"),
        ("GATEWAY__WS__ALLOW_PUBLISH", "true"),
        ("GATEWAY__WS__AUTH_TIMEOUT_SECONDS", "1"),
    ]);
    let claims = gateway::auth::Claims {
        sub: Some("u1".into()),
        exp: 4_000_000_000,
        channels: vec!["user:u1:*".into(), "news".into()],
        publish: vec!["user:u1:*".into()],
        info: None,
    };
    let token = jsonwebtoken::encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();

    // Browsers cannot see the status of a refused upgrade, so the refusal is a close code
    // (for a WebSocket without a token, once it has not sent one within the auth timeout).
    let mut anonymous = Ws::connect(&ws_url(gw.addr)).await;
    assert_eq!(anonymous.closed().await, Some(close::UNAUTHORIZED));
    let mut forged = Ws::connect(&format!("{}?token=not.a.token", ws_url(gw.addr))).await;
    assert_eq!(forged.closed().await, Some(close::UNAUTHORIZED));
    let mut ws = Ws::connect(&format!("{}?token={token}", ws_url(gw.addr))).await;
    ws.subscribe("news", None).await;
    ws.send(json!({"type": "subscribe", "channel": "admin"}))
        .await;
    assert_eq!(ws.expect("error").await["code"], "forbidden");
    ws.send(json!({"type": "publish", "channel": "news", "data": 1}))
        .await;
    assert_eq!(ws.expect("error").await["code"], "publish_forbidden");
    ws.subscribe("user:u1:inbox", None).await;
    ws.send(json!({"type": "publish", "channel": "user:u1:inbox", "data": "note"}))
        .await;
    let mut saw = (false, false);
    while saw != (true, true) {
        let v = match ws.recv().await {
            WsItem::Json(v) => v,
            other => panic!("unexpected {other:?}"),
        };
        match v["type"].as_str() {
            Some("published") => saw.0 = true,
            Some("event") => {
                assert_eq!(v["data"], "note");
                saw.1 = true;
            }
            _ => panic!("unexpected {v}"),
        }
    }

    let sse = http()
        .get(gw.url("/sse?channel=news"))
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), 401);
    let sse = http()
        .get(gw.url(&format!("/sse?channel=admin&token={token}")))
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), 403);
    let mut ok = Sse::connect(&gw.url(&format!("/sse?channel=news&token={token}")), None).await;
    ok.ready().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusing_well_formed_commands_never_ends_the_connection() {
    let gw = memory_gateway(&[("GATEWAY__WS__MAX_PROTOCOL_ERRORS", "3")]);
    let mut ws = Ws::connect(&ws_url(gw.addr)).await;
    for i in 0..10 {
        ws.send(json!({"type": "publish", "channel": "a", "data": i, "req": i}))
            .await;
        let err = ws.expect("error").await;
        assert_eq!(
            (err["code"].as_str(), &err["req"]),
            (Some("publish_forbidden"), &json!(i))
        );
        ws.send(json!({"type": "unsubscribe", "channel": "a"}))
            .await;
        assert_eq!(ws.expect("error").await["code"], "not_subscribed");
    }
    ws.send(json!({"type": "ping"})).await;
    ws.expect("pong").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_client_publish_is_refused_without_closing() {
    let gw = memory_gateway(&[
        ("GATEWAY__WS__ALLOW_PUBLISH", "true"),
        ("GATEWAY__PUBLISH__MAX_BYTES", "1024"),
    ]);
    let mut ws = Ws::connect(&ws_url(gw.addr)).await;
    ws.send(json!({"type": "publish", "channel": "a", "data": "x".repeat(5000), "req": "big"}))
        .await;
    let err = ws.expect("error").await;
    assert_eq!(
        (err["code"].as_str(), &err["req"]),
        (Some("too_large"), &json!("big"))
    );
    ws.send(json!({"type": "publish", "channel": "a", "data": "small", "req": "ok"}))
        .await;
    assert_eq!(ws.expect("published").await["req"], "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_payloads_keep_their_key_order() {
    let gw = memory_gateway(&[]);
    let mut sse = Sse::connect(&gw.url("/sse?channel=q"), None).await;
    sse.ready().await;
    let mut ws = Ws::connect(&ws_url(gw.addr)).await;
    ws.subscribe("q", None).await;
    let res = http()
        .post(gw.url("/publish"))
        .header("Content-Type", "application/json")
        .body(r#"{"channel": "q", "data": {"symbol": "ACME", "price": 42, "at": [3, 1]}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        sse.next().await.data,
        r#"{"symbol":"ACME","price":42,"at":[3,1]}"#
    );
    let WsItem::Json(raw) = ws.recv().await else {
        panic!("expected an event")
    };
    let keys: Vec<&String> = raw["data"].as_object().unwrap().keys().collect();
    assert_eq!(keys, ["symbol", "price", "at"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_framing_closes_with_1002() {
    use std::io::{Read, Write};
    let gw = memory_gateway(&[]);
    let addr = gw.addr;
    let code = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        s.write_all(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut byte).unwrap();
            head.push(byte[0]);
        }
        assert!(
            head.starts_with(b"HTTP/1.1 101"),
            "{}",
            String::from_utf8_lossy(&head)
        );
        // Clients must mask their frames; this one is not masked.
        s.write_all(&[0x81, 0x02, b'h', b'i']).unwrap();
        let mut frame = [0u8; 4];
        s.read_exact(&mut frame).unwrap();
        assert_eq!(frame[0], 0x88, "expected a close frame");
        u16::from_be_bytes([frame[2], frame[3]])
    })
    .await
    .unwrap();
    assert_eq!(code, close::PROTOCOL);
}
