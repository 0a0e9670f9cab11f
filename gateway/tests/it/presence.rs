//! Presence (`GET /presence`, `/presence/stats`, the WebSocket `presence` command): one roster
//! per channel shared by every instance on one Redis, SSE and WebSocket connections joining and
//! leaving, entries of a SIGKILLed instance expiring within the TTL, the bound, the in-memory
//! engine, and the refusals.

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::*;

const SECRET: &str = "a-presence-test-secret-0123456789";
const KEY: &str = "a-presence-test-api-key";

fn token(sub: &str, channels: &[&str]) -> String {
    jwt::hs256(
        SECRET,
        &json!({"sub": sub, "info": {"name": sub.to_uppercase()}, "channels": channels,
                "exp": jwt::now() + 600}),
    )
}

/// `GET <url>` with an optional bearer: status and JSON body.
pub async fn get(url: &str, bearer: Option<&str>) -> (u16, Value) {
    let mut req = http().get(url);
    if let Some(b) = bearer {
        req = req.bearer_auth(b);
    }
    let res = req.send().await.expect("request");
    let status = res.status().as_u16();
    (status, res.json().await.expect("JSON body"))
}

/// The roster's subs, sorted.
fn subs(body: &Value) -> Vec<String> {
    let mut subs: Vec<String> = body["clients"]
        .as_array()
        .unwrap_or_else(|| panic!("clients in {body}"))
        .iter()
        .map(|c| c["sub"].as_str().unwrap_or("null").to_owned())
        .collect();
    subs.sort();
    subs
}

/// Waits until every gateway's `/presence?channel=room` lists exactly `want`.
async fn every_instance_lists(gws: &[&Gateway], want: &[&str]) {
    for gw in gws {
        let url = gw.url("/presence?channel=room");
        eventually(&format!("{want:?} on {}", gw.addr), async || {
            let (status, body) = get(&url, Some(KEY)).await;
            status == 200 && subs(&body) == want && body["count"] == want.len()
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_is_shared_by_every_instance_and_expires_with_a_dead_one() {
    let redis = Redis::start();
    let prefix = format!("{}:", unique("pres"));
    let env = [
        ("GATEWAY__AUTH__JWT_SECRET", SECRET),
        ("GATEWAY__PUBLISH__API_KEY", KEY),
        ("GATEWAY__PRESENCE__TTL_SECONDS", "2"),
        ("GATEWAY__PRESENCE__CHANNELS", "room,oth*"),
    ];
    let (gw1, mut gw2, gw3) = (
        Gateway::on_redis(&redis, &prefix, &env),
        Gateway::on_redis(&redis, &prefix, &env),
        Gateway::on_redis(&redis, &prefix, &env),
    );
    // u1 over SSE on the first, u2 and u3 over WebSocket on the second and third.
    let t1 = token("u1", &["room"]);
    let sse = Sse::connect(&gw1.url(&format!("/sse?channel=room&token={t1}")), None).await;
    let mut ws2 = Ws::connect(&format!(
        "{}?token={}",
        ws_url(gw2.addr),
        token("u2", &["room"])
    ))
    .await;
    ws2.subscribe("room", None).await;
    let mut ws3 = Ws::connect(&format!(
        "{}?token={}",
        ws_url(gw3.addr),
        token("u3", &["room", "other"])
    ))
    .await;
    ws3.subscribe("room", None).await;
    ws3.subscribe("other", None).await;
    every_instance_lists(&[&gw1, &gw2, &gw3], &["u1", "u2", "u3"]).await;

    // Entries carry sub, info and a connection id unique across instances.
    let (_, body) = get(&gw1.url("/presence?channel=room"), Some(KEY)).await;
    let clients = body["clients"].as_array().expect("clients");
    let u1 = clients.iter().find(|c| c["sub"] == "u1").expect("u1");
    assert_eq!(u1["info"], json!({"name": "U1"}));
    let mut conns: Vec<&str> = clients.iter().filter_map(|c| c["conn"].as_str()).collect();
    conns.sort_unstable();
    conns.dedup();
    assert_eq!(conns.len(), 3, "{body}");

    // The WebSocket command answers the same, for a token allowing the channel.
    ws3.send(json!({"type": "presence", "channel": "room", "req": 7}))
        .await;
    let reply = ws3.expect("presence").await;
    assert_eq!(
        (reply["count"].clone(), reply["req"].clone()),
        (json!(3), json!(7))
    );
    assert_eq!(subs(&reply), ["u1", "u2", "u3"]);
    let (_, other) = get(&gw2.url("/presence/stats?channel=other"), Some(KEY)).await;
    assert_eq!(other, json!({"channel": "other", "count": 1}));

    // Heartbeats keep entries alive past several TTLs.
    tokio::time::sleep(Duration::from_secs(5)).await;
    every_instance_lists(&[&gw1, &gw2, &gw3], &["u1", "u2", "u3"]).await;

    // Leaving: an unsubscribe, then an SSE stream closed.
    ws3.send(json!({"type": "unsubscribe", "channel": "room"}))
        .await;
    ws3.expect("unsubscribed").await;
    every_instance_lists(&[&gw1, &gw2, &gw3], &["u1", "u2"]).await;
    drop(sse);
    every_instance_lists(&[&gw1, &gw2, &gw3], &["u2"]).await;

    // An instance killed without goodbye: its entries are gone within the TTL (2 s), plus a
    // refresh period and slack.
    gw2.kill();
    let killed = std::time::Instant::now();
    every_instance_lists(&[&gw1, &gw3], &[]).await;
    assert!(
        killed.elapsed() < Duration::from_secs(4),
        "{:?}",
        killed.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_refusals_follow_the_history_rule() {
    let redis = Redis::start();
    let prefix = format!("{}:", unique("pres-auth"));
    let gw = Gateway::on_redis(
        &redis,
        &prefix,
        &[
            ("GATEWAY__AUTH__JWT_SECRET", SECRET),
            ("GATEWAY__PUBLISH__API_KEY", KEY),
            ("GATEWAY__PRESENCE__CHANNELS", "room"),
        ],
    );
    let url = gw.url("/presence?channel=room");
    let (status, body) = get(&url, None).await;
    assert_eq!(
        (status, body["error"].clone()),
        (401, json!("unauthorized")),
        "{body}"
    );
    let (status, body) = get(&url, Some("not-a-key-nor-a-token")).await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = get(&url, Some(&token("u", &["elsewhere"]))).await;
    assert_eq!(
        (status, body["error"].clone()),
        (403, json!("forbidden")),
        "{body}"
    );
    let (status, body) = get(&url, Some(&token("u", &["room"]))).await;
    assert_eq!(
        (status, body),
        (200, json!({"channel": "room", "count": 0, "clients": []}))
    );
    let (status, body) = get(&gw.url("/presence"), Some(KEY)).await;
    assert_eq!(
        (status, body["error"].clone()),
        (400, json!("missing_channel"))
    );
    let (status, _) = get(&gw.url("/presence?channel=a%7B"), Some(KEY)).await;
    assert_eq!(status, 400);
    // A channel presence.channels does not name is not tracked.
    let (status, body) = get(&gw.url("/presence/stats?channel=untracked"), Some(KEY)).await;
    assert_eq!(
        (status, body["error"].clone()),
        (404, json!("presence_off"))
    );
    // Over WebSocket, a channel the token does not allow is refused.
    let mut ws = Ws::connect(&format!(
        "{}?token={}",
        ws_url(gw.addr),
        token("u", &["room"])
    ))
    .await;
    ws.send(json!({"type": "presence", "channel": "elsewhere", "req": 1}))
        .await;
    let err = ws.expect("error").await;
    assert_eq!(
        (err["code"].clone(), err["req"].clone()),
        (json!("forbidden"), json!(1))
    );
    // Subscribers of untracked channels are not recorded.
    let t = token("u", &["*"]);
    let mut ws = Ws::connect(&format!("{}?token={t}", ws_url(gw.addr))).await;
    ws.subscribe("untracked", None).await;
    ws.send(json!({"type": "presence", "channel": "untracked", "req": 2}))
        .await;
    let err = ws.expect("error").await;
    assert_eq!(
        (err["code"].clone(), err["req"].clone()),
        (json!("presence_off"), json!(2))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_engine_presence_counts_anonymous_connections_and_bounds_the_list() {
    let gw = InProcess::start(
        settings(
            None,
            &[
                ("GATEWAY__PRESENCE__MAX_ENTRIES", "2"),
                ("GATEWAY__PRESENCE__CHANNELS", "*"),
            ],
        ),
        gateway::RunOptions::default(),
    );
    let url = gw.url("/presence?channel=room");
    let a = Sse::connect(&gw.url("/sse?channel=room"), None).await;
    let mut ws = Ws::connect(&ws_url(gw.addr)).await;
    ws.subscribe("room", None).await;
    let (status, body) = get(&url, None).await;
    assert_eq!((status, body["count"].clone()), (200, json!(2)), "{body}");
    // Anonymous connections count, with a null sub and info.
    assert!(
        body["clients"]
            .as_array()
            .expect("clients")
            .iter()
            .all(|c| c["sub"].is_null() && c["info"].is_null())
    );
    // Beyond presence.max_entries: the count only.
    let b = Sse::connect(&gw.url("/sse?channel=room"), None).await;
    let (_, body) = get(&url, None).await;
    assert_eq!(
        body,
        json!({"channel": "room", "count": 3, "max_entries": 2})
    );
    let (_, stats) = get(&gw.url("/presence/stats?channel=room"), None).await;
    assert_eq!(stats, json!({"channel": "room", "count": 3}));
    ws.send(json!({"type": "presence", "channel": "room"}))
        .await;
    let reply = ws.expect("presence").await;
    assert_eq!(
        reply,
        json!({"type": "presence", "channel": "room", "count": 3})
    );
    drop((a, b));
    eventually("the streams to leave", async || {
        get(&url, None).await.1["count"] == 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_and_leave_events_are_published_in_order_with_positions() {
    let redis = Redis::start();
    let prefix = format!("{}:", unique("pres-ev"));
    let env = [
        ("GATEWAY__AUTH__JWT_SECRET", SECRET),
        ("GATEWAY__PUBLISH__API_KEY", KEY),
        ("GATEWAY__PRESENCE__CHANNELS", "chat*,quiet"),
        ("GATEWAY__PRESENCE__EVENTS", "chat*"),
    ];
    let (gw1, gw2) = (
        Gateway::on_redis(&redis, &prefix, &env),
        Gateway::on_redis(&redis, &prefix, &env),
    );
    let t = token("a", &["chat", "quiet"]);
    let mut a = Ws::connect(&format!("{}?token={t}", ws_url(gw1.addr))).await;
    // quiet first: a's own join on chat may come right after chat's `subscribed`.
    a.subscribe("quiet", None).await;
    a.subscribe("chat", None).await;
    // b comes over SSE on the other instance, then goes. (a's own join was published as its
    // subscription started: it may or may not be delivered to a itself; it is in history.)
    let history = gw2.url("/history?channel=chat");
    eventually("a's join in history", async || {
        get(&history, Some(KEY)).await.1["events"]
            .as_array()
            .is_some_and(|e| e.len() == 1)
    })
    .await;
    let tb = token("b", &["chat"]);
    let sse = Sse::connect(&gw2.url(&format!("/sse?channel=chat&token={tb}")), None).await;
    let mut seen: Vec<Value> = Vec::new();
    while !seen.iter().any(|e| e["data"]["sub"] == "b") {
        seen.push(a.expect("event").await);
    }
    drop(sse);
    seen.push(a.expect("event").await);
    let from_b: Vec<&Value> = seen.iter().filter(|e| e["data"]["sub"] == "b").collect();
    let names: Vec<&str> = from_b.iter().filter_map(|e| e["event"].as_str()).collect();
    assert_eq!(names, ["presence.join", "presence.leave"], "{seen:?}");
    assert_eq!(from_b[0]["data"]["conn"], from_b[1]["data"]["conn"]);
    // History holds a's join, then b's join and leave, at contiguous positions: they resume
    // like any other event, with the ids a was given.
    let (status, page) = get(&history, Some(KEY)).await;
    assert_eq!(status, 200, "{page}");
    let stored = page["events"].as_array().expect("events");
    let subs_and_names: Vec<(Value, Value)> = stored
        .iter()
        .map(|e| (e["data"]["sub"].clone(), e["event"].clone()))
        .collect();
    assert_eq!(
        subs_and_names,
        [
            (json!("a"), json!("presence.join")),
            (json!("b"), json!("presence.join")),
            (json!("b"), json!("presence.leave"))
        ]
    );
    let stored_ids: Vec<&str> = stored.iter().filter_map(|e| e["id"].as_str()).collect();
    let seen_ids: Vec<&str> = seen.iter().filter_map(|e| e["id"].as_str()).collect();
    assert!(
        stored_ids.ends_with(&seen_ids),
        "{stored_ids:?} {seen_ids:?}"
    );
    let offsets: Vec<u64> = stored_ids
        .iter()
        .map(|i| i.parse::<shared::Position>().expect("position").offset)
        .collect();
    assert_eq!(offsets, [1, 2, 3]);
    // Channels tracked without events get none; publishers may not forge them.
    a.assert_quiet(Duration::from_millis(300)).await;
    let res = http()
        .post(gw1.url("/publish"))
        .bearer_auth(KEY)
        .json(&json!({"channel": "chat", "event": "presence.join", "data": "x"}))
        .send()
        .await
        .expect("publish");
    assert_eq!(res.status().as_u16(), 400);
    let body: Value = res.json().await.expect("JSON body");
    assert_eq!(body["error"], "invalid_event");
}
