//! Engine conformance: every check runs against both engines through the library API, so the
//! memory engine (single instance, dev default) can never drift from the Redis engine's
//! contract. Redis-only checks cover the pub/sub reconnect path and the external publish API
//! (`FCALL gw_publish`, `gateway redis-function`) that other languages rely on.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use gateway::engine::memory::MemoryEngine;
use gateway::engine::redis::RedisEngine;
use gateway::engine::{Engine, Listener, PublishRequest};
use shared::{ChannelName, Event, EventName, PayloadKind, Position};

use crate::common::*;

/// Records everything the engine's live path reports.
#[derive(Default)]
struct Collector {
    events: Mutex<Vec<Event>>,
    resubscribed: AtomicUsize,
    hints: Mutex<Vec<ChannelName>>,
    live: Mutex<Vec<bool>>,
}

impl Listener for Collector {
    fn on_event(&self, event: Event) {
        self.events.lock().unwrap().push(event);
    }
    fn on_hint(&self, channel: &ChannelName) {
        self.hints.lock().unwrap().push(channel.clone());
    }
    fn on_resubscribed(&self) {
        self.resubscribed.fetch_add(1, Ordering::SeqCst);
    }
    fn on_live_path(&self, up: bool) {
        self.live.lock().unwrap().push(up);
    }
}

impl Collector {
    /// Distinct live events of `channel` by position; the contract allows duplicates.
    fn positions_of(&self, channel: &ChannelName) -> Vec<Position> {
        let mut seen: Vec<Position> = Vec::new();
        for e in self.events.lock().unwrap().iter() {
            if &e.channel == channel && !seen.contains(&e.position) {
                seen.push(e.position);
            }
        }
        seen
    }

    fn event_at(&self, channel: &ChannelName, position: Position) -> Option<Event> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .find(|e| &e.channel == channel && e.position == position)
            .cloned()
    }
}

/// An engine under test, started with a [`Collector`]; owns its redis-server if any.
struct Subject {
    engine: Engine,
    listener: Arc<Collector>,
    redis: Option<Redis>,
    prefix: String,
}

impl Drop for Subject {
    fn drop(&mut self) {
        self.engine.stop();
    }
}

fn memory(history_size: usize, ttl_seconds: u64) -> Subject {
    let engine = Engine::Memory(MemoryEngine::new(
        history_size,
        Duration::from_secs(ttl_seconds),
    ));
    let listener = Arc::new(Collector::default());
    engine.start(listener.clone());
    Subject {
        engine,
        listener,
        redis: None,
        prefix: String::new(),
    }
}

fn redis_engine(redis: &Redis, prefix: &str, history_size: usize, ttl_seconds: u64) -> Engine {
    let size = history_size.to_string();
    let ttl = ttl_seconds.to_string();
    let settings = settings(
        Some((redis, prefix)),
        &[
            ("GATEWAY__HISTORY__SIZE", &size),
            ("GATEWAY__HISTORY__TTL_SECONDS", &ttl),
            ("GATEWAY__REDIS__TIMEOUT_SECONDS", "2"),
        ],
    );
    Engine::Redis(RedisEngine::new(&settings, gateway::metrics::Metrics::new()).unwrap())
}

fn redis(history_size: usize, ttl_seconds: u64) -> Subject {
    let server = Redis::start();
    let prefix = format!("{}:", unique("t"));
    let engine = redis_engine(&server, &prefix, history_size, ttl_seconds);
    let listener = Arc::new(Collector::default());
    engine.start(listener.clone());
    Subject {
        engine,
        listener,
        redis: Some(server),
        prefix,
    }
}

fn channel(prefix: &str) -> ChannelName {
    ChannelName::new(&unique(prefix)).unwrap()
}

fn text(channel: &ChannelName, data: &str) -> PublishRequest {
    PublishRequest {
        channel: channel.clone(),
        name: None,
        kind: PayloadKind::Text,
        data: Bytes::copy_from_slice(data.as_bytes()),
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

// ---------------------------------------------------------------------------------------------
// The checks, each written once for any engine.
// ---------------------------------------------------------------------------------------------

async fn offsets_are_contiguous_from_one(s: &Subject) {
    let ch = channel("contig");
    let mut positions = Vec::new();
    for i in 0..25 {
        positions.push(s.engine.publish(text(&ch, &format!("m{i}"))).await.unwrap());
    }
    let epoch = positions[0].epoch;
    for (i, p) in positions.iter().enumerate() {
        assert_eq!(*p, Position::new(epoch, i as u64 + 1), "publish #{i}");
        // The text form is what clients carry in Last-Event-ID; it must survive a round trip.
        assert_eq!(p.to_string().parse::<Position>().unwrap(), *p);
    }
    // Channels count independently.
    let other = channel("contig-other");
    let first = s.engine.publish(text(&other, "x")).await.unwrap();
    assert_eq!(first.offset, 1);
    let page = s.engine.read(&ch, 0, 1000).await.unwrap();
    assert_eq!(page.head(), *positions.last().unwrap());
}

async fn read_returns_events_after_the_offset_oldest_first(s: &Subject) {
    let ch = channel("read");
    let requests: Vec<PublishRequest> = (1..=10u64)
        .map(|i| match i % 3 {
            0 => PublishRequest {
                channel: ch.clone(),
                name: Some(EventName::new(&format!("update.{i}")).unwrap()),
                kind: PayloadKind::Json,
                data: Bytes::from(format!("{{\"n\":{i}}}")),
            },
            1 => PublishRequest {
                channel: ch.clone(),
                name: None,
                kind: PayloadKind::Text,
                data: Bytes::from(format!("line {i}\nsecond line\r\n")),
            },
            _ => PublishRequest {
                channel: ch.clone(),
                name: Some(EventName::new("bin").unwrap()),
                kind: PayloadKind::Binary,
                // Non-UTF-8 bytes, a NUL and a newline must all survive storage.
                data: Bytes::from(vec![0, 0xff, b'\n', i as u8, 0xfe]),
            },
        })
        .collect();
    let before = now_ms();
    let mut positions = Vec::new();
    for r in &requests {
        positions.push(s.engine.publish(r.clone()).await.unwrap());
    }
    let after = now_ms();
    let epoch = positions[0].epoch;

    let all = s.engine.read(&ch, 0, 100).await.unwrap();
    assert_eq!((all.epoch, all.top), (epoch, 10));
    assert_eq!(all.events.len(), 10);
    assert_eq!(all.first_available(), 1);
    for (i, (e, r)) in all.events.iter().zip(&requests).enumerate() {
        assert_eq!(e.position, positions[i]);
        assert_eq!(e.channel, ch);
        assert_eq!(e.kind, r.kind, "kind of #{i}");
        assert_eq!(e.name, r.name, "event name of #{i}");
        assert_eq!(e.data, r.data, "data of #{i}");
        // Redis stamps with its own clock at millisecond precision; same host here.
        assert!(
            e.published_ms + 50 >= before && e.published_ms <= after + 50,
            "published_ms {} outside [{before}, {after}]",
            e.published_ms
        );
    }

    let middle = s.engine.read(&ch, 3, 4).await.unwrap();
    let offsets: Vec<u64> = middle.events.iter().map(|e| e.position.offset).collect();
    assert_eq!(offsets, [4, 5, 6, 7]);
    assert_eq!(middle.top, 10);
    assert_eq!(middle.events[0], all.events[3]);

    let tail = s.engine.read(&ch, 8, 100).await.unwrap();
    let offsets: Vec<u64> = tail.events.iter().map(|e| e.position.offset).collect();
    assert_eq!(offsets, [9, 10]);

    let nothing = s.engine.read(&ch, 10, 100).await.unwrap();
    assert!(nothing.events.is_empty());
    assert_eq!(nothing.head(), Position::new(epoch, 10));
    assert_eq!(nothing.first_available(), 11);

    let none_wanted = s.engine.read(&ch, 0, 0).await.unwrap();
    assert!(none_wanted.events.is_empty());
    assert_eq!(none_wanted.head(), Position::new(epoch, 10));
}

async fn unknown_channel_gets_an_epoch_at_offset_zero(s: &Subject) {
    let ch = channel("fresh");
    let page = s.engine.read(&ch, 0, 10).await.unwrap();
    assert_eq!(page.top, 0);
    assert!(page.events.is_empty());
    assert_eq!(page.first_available(), 1);
    // The epoch is stable: a second read must not start yet another history.
    let again = s.engine.read(&ch, 0, 10).await.unwrap();
    assert_eq!(again.head(), Position::new(page.epoch, 0));
    let published = s.engine.publish(text(&ch, "first")).await.unwrap();
    assert_eq!(published, Position::new(page.epoch, 1));
    let after = s.engine.read(&ch, 0, 10).await.unwrap();
    assert_eq!(after.head(), published);
    assert_eq!(after.events.len(), 1);
}

/// History size 10: Redis trims with `MAXLEN ~` in whole 100-entry nodes, so only what the
/// contract promises is asserted: at least 10 newest kept, contiguous, and older ones gone.
async fn trimming_moves_first_available(s: &Subject) {
    const SIZE: usize = 10;
    let ch = channel("trim");
    let mut last = None;
    for i in 0..350 {
        last = Some(s.engine.publish(text(&ch, &format!("e{i}"))).await.unwrap());
    }
    let last = last.unwrap();
    assert_eq!(last.offset, 350);
    let page = s.engine.read(&ch, 0, 10_000).await.unwrap();
    assert_eq!(page.head(), last);
    assert!(
        page.events.len() >= SIZE,
        "kept {} < {SIZE}",
        page.events.len()
    );
    let first = page.first_available();
    assert!(first > 1, "nothing was trimmed");
    assert_eq!(first, page.events[0].position.offset);
    let offsets: Vec<u64> = page.events.iter().map(|e| e.position.offset).collect();
    let expected: Vec<u64> = (first..=350).collect();
    assert_eq!(
        offsets, expected,
        "what is kept must be the contiguous newest tail"
    );
    assert_eq!(page.events.last().unwrap().data, Bytes::from("e349"));

    // A reader far behind learns about the loss from first_available, even with a small limit.
    let behind = s.engine.read(&ch, 0, 3).await.unwrap();
    assert_eq!(behind.first_available(), first);
    assert_eq!(behind.events.len(), 3);
    // A reader inside the kept window reads on without a gap.
    let inside = s.engine.read(&ch, 345, 100).await.unwrap();
    let offsets: Vec<u64> = inside.events.iter().map(|e| e.position.offset).collect();
    assert_eq!(offsets, [346, 347, 348, 349, 350]);
}

/// TTL 1 s: after a quiet second the channel's history is gone and starts a new epoch.
async fn expiry_starts_a_new_epoch(s: &Subject) {
    let read_first = channel("exp-read");
    let publish_first = channel("exp-pub");
    let only_read = channel("exp-only-read");
    let a = s.engine.publish(text(&read_first, "old")).await.unwrap();
    let b = s.engine.publish(text(&publish_first, "old")).await.unwrap();
    s.engine
        .publish(text(&publish_first, "old2"))
        .await
        .unwrap();
    let c = s.engine.read(&only_read, 0, 10).await.unwrap().epoch;

    tokio::time::sleep(Duration::from_millis(1500)).await;

    let heads = s
        .engine
        .heads(&[read_first.clone(), publish_first.clone(), only_read.clone()])
        .await
        .unwrap();
    assert_eq!(heads, [None, None, None], "expired channels have no head");

    let page = s.engine.read(&read_first, 0, 10).await.unwrap();
    assert_ne!(
        page.epoch, a.epoch,
        "history expired but the epoch was kept"
    );
    assert_eq!(page.top, 0);
    assert!(page.events.is_empty());
    let next = s.engine.publish(text(&read_first, "new")).await.unwrap();
    assert_eq!(next, Position::new(page.epoch, 1));

    let next = s.engine.publish(text(&publish_first, "new")).await.unwrap();
    assert_ne!(
        next.epoch, b.epoch,
        "history expired but the epoch was kept"
    );
    assert_eq!(next.offset, 1);
    let page = s.engine.read(&publish_first, 0, 10).await.unwrap();
    assert_eq!(page.events.len(), 1);
    assert_eq!(page.events[0].data, Bytes::from("new"));

    let page = s.engine.read(&only_read, 0, 10).await.unwrap();
    assert_ne!(page.epoch, c, "an empty epoch expires too");
}

async fn heads_report_only_used_channels(s: &Subject) {
    let never = channel("never");
    let used = channel("used");
    let read_only = channel("read-only");
    assert!(s.engine.heads(&[]).await.unwrap().is_empty());
    assert_eq!(
        s.engine.heads(std::slice::from_ref(&never)).await.unwrap(),
        [None]
    );
    s.engine.publish(text(&used, "1")).await.unwrap();
    let head = s.engine.publish(text(&used, "2")).await.unwrap();
    let empty = s.engine.read(&read_only, 0, 1).await.unwrap().head();
    let heads = s
        .engine
        .heads(&[
            never.clone(),
            used.clone(),
            read_only.clone(),
            never.clone(),
        ])
        .await
        .unwrap();
    assert_eq!(heads, [None, Some(head), Some(empty), None]);
    // heads() only looks; it must not create the channel the way read() does.
    assert_eq!(s.engine.heads(&[never]).await.unwrap(), [None]);
}

async fn live_delivery_reaches_the_listener(s: &Subject) {
    let ch = channel("live");
    let quiet = channel("live-unwatched");
    s.engine.subscribe(&ch).await.unwrap();
    let mut published = Vec::new();
    for i in 0..20 {
        let req = PublishRequest {
            name: (i % 2 == 0).then(|| EventName::new("tick").unwrap()),
            ..text(&ch, &format!("live {i}\nwith a second line"))
        };
        published.push(s.engine.publish(req).await.unwrap());
    }
    s.engine.publish(text(&quiet, "not watched")).await.unwrap();
    eventually("all live events", async || {
        s.listener.positions_of(&ch).len() >= 20
    })
    .await;
    let mut got = s.listener.positions_of(&ch);
    got.sort_by_key(|p| p.offset);
    assert_eq!(got, published);
    for (i, p) in published.iter().enumerate() {
        let e = s.listener.event_at(&ch, *p).unwrap();
        assert_eq!(e.data, Bytes::from(format!("live {i}\nwith a second line")));
        assert_eq!(
            e.name.as_ref().map(EventName::as_str),
            (i % 2 == 0).then_some("tick")
        );
        assert_eq!(e.kind, PayloadKind::Text);
    }
    assert!(
        s.listener.hints.lock().unwrap().is_empty(),
        "our own payloads must decode"
    );
    assert_eq!(s.listener.live.lock().unwrap().last(), Some(&true));
}

async fn subscribe_again_after_unsubscribe_delivers(s: &Subject) {
    let ch = channel("resub");
    s.engine.subscribe(&ch).await.unwrap();
    s.engine.unsubscribe(&ch);
    // The hub may re-watch a channel right after its last client left; the engine must end up
    // subscribed, whatever order it batches the two commands in.
    s.engine.subscribe(&ch).await.unwrap();
    let p = s
        .engine
        .publish(text(&ch, "after resubscribe"))
        .await
        .unwrap();
    eventually("delivery after re-subscribing", async || {
        s.listener.positions_of(&ch).contains(&p)
    })
    .await;
}

macro_rules! conformance {
    ($($check:ident($size:expr, $ttl:expr);)*) => {
        /// The in-memory engine.
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    super::$check(&super::memory($size, $ttl)).await;
                }
            )*
        }
        /// The Redis engine on a private redis-server.
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    super::$check(&super::redis($size, $ttl)).await;
                }
            )*
        }
    };
}

conformance! {
    offsets_are_contiguous_from_one(1000, 3600);
    read_returns_events_after_the_offset_oldest_first(1000, 3600);
    unknown_channel_gets_an_epoch_at_offset_zero(1000, 3600);
    trimming_moves_first_available(10, 3600);
    expiry_starts_a_new_epoch(1000, 1);
    heads_report_only_used_channels(1000, 3600);
    live_delivery_reaches_the_listener(1000, 3600);
    subscribe_again_after_unsubscribe_delivers(1000, 3600);
}

// ---------------------------------------------------------------------------------------------
// Redis only.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_pubsub_kill_triggers_resubscribe_and_delivery_resumes() {
    let s = redis(1000, 3600);
    let ch = channel("killed");
    s.engine.subscribe(&ch).await.unwrap();
    let first = s.engine.publish(text(&ch, "before")).await.unwrap();
    eventually("delivery before the kill", async || {
        s.listener.positions_of(&ch).contains(&first)
    })
    .await;
    assert_eq!(s.listener.resubscribed.load(Ordering::SeqCst), 0);

    let mut admin = s.redis.as_ref().unwrap().conn().await;
    let killed = kill_pubsub(&mut admin).await;
    assert_eq!(
        killed, 1,
        "the engine should hold exactly one pub/sub connection"
    );
    eventually("on_resubscribed", async || {
        s.listener.resubscribed.load(Ordering::SeqCst) >= 1
    })
    .await;
    assert!(
        s.listener.live.lock().unwrap().contains(&false),
        "the outage must be reported to the listener"
    );

    let mut after = Vec::new();
    for i in 0..3 {
        after.push(
            s.engine
                .publish(text(&ch, &format!("after {i}")))
                .await
                .unwrap(),
        );
    }
    eventually("delivery after the reconnect", async || {
        let got = s.listener.positions_of(&ch);
        after.iter().all(|p| got.contains(p))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_reloads_a_lost_function_library() {
    // Not started: publish must load the library itself, and again after Redis forgets it
    // (e.g. a restart without persistence).
    let server = Redis::start();
    let prefix = format!("{}:", unique("t"));
    let engine = redis_engine(&server, &prefix, 1000, 3600);
    let ch = channel("reload");
    assert_eq!(engine.publish(text(&ch, "a")).await.unwrap().offset, 1);
    let mut admin = server.conn().await;
    let _: () = ::redis::cmd("FUNCTION")
        .arg("FLUSH")
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(engine.publish(text(&ch, "b")).await.unwrap().offset, 2);
    let _: () = ::redis::cmd("FUNCTION")
        .arg("FLUSH")
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(engine.read(&ch, 0, 10).await.unwrap().events.len(), 2);
}

async fn fcall(
    conn: &mut ::redis::aio::MultiplexedConnection,
    prefix: &str,
    channel: &str,
    args: &[&str],
) -> ::redis::RedisResult<String> {
    ::redis::cmd("FCALL")
        .arg("gw_publish")
        .arg(2)
        .arg(format!("{prefix}{{{channel}}}:stream"))
        .arg(format!("{prefix}{{{channel}}}:meta"))
        .arg(args)
        .query_async(conn)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_external_fcall_publish_is_the_documented_api() {
    let s = redis(1000, 3600);
    let server = s.redis.as_ref().unwrap();
    let Engine::Redis(engine) = &s.engine else {
        unreachable!()
    };
    engine.load_library().await.unwrap();
    let ch = channel("ext");
    s.engine.subscribe(&ch).await.unwrap();
    let mut conn = server.conn().await;

    let id = fcall(&mut conn, &s.prefix, ch.as_str(), &["plain"])
        .await
        .unwrap();
    let first: Position = id.parse().unwrap_or_else(|e| panic!("{id:?}: {e}"));
    assert_eq!(first.offset, 1);
    let id = fcall(
        &mut conn,
        &s.prefix,
        ch.as_str(),
        &["{\"a\":1}", "update", "json"],
    )
    .await
    .unwrap();
    assert_eq!(
        id.parse::<Position>().unwrap(),
        Position::new(first.epoch, 2)
    );
    let id = fcall(&mut conn, &s.prefix, ch.as_str(), &["named text", "note"])
        .await
        .unwrap();
    assert_eq!(
        id.parse::<Position>().unwrap(),
        Position::new(first.epoch, 3)
    );
    // An empty event name means none, as documented.
    let id = fcall(&mut conn, &s.prefix, ch.as_str(), &["raw", "", "binary"])
        .await
        .unwrap();
    assert_eq!(
        id.parse::<Position>().unwrap(),
        Position::new(first.epoch, 4)
    );

    // The names HTTP publishing refuses (shared::event), refused here too.
    for name in [
        "gap",
        "binary",
        "binary:x",
        "presence.join",
        "presence.leave",
    ] {
        let err = fcall(&mut conn, &s.prefix, ch.as_str(), &["x", name])
            .await
            .unwrap_err();
        assert!(err.to_string().contains("reserved"), "{name}: {err}");
    }
    let err = fcall(&mut conn, &s.prefix, ch.as_str(), &["x", "", "xml"])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("kind"), "{err}");
    let err = fcall(&mut conn, &s.prefix, ch.as_str(), &["x", "bad name"])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("event name"), "{err}");
    let err: ::redis::RedisError = ::redis::cmd("FCALL")
        .arg("gw_publish")
        .arg(2)
        .arg(format!("{}{{{ch}}}:wrong", s.prefix))
        .arg(format!("{}{{{ch}}}:meta", s.prefix))
        .arg("x")
        .query_async::<String>(&mut conn)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("keys must be"), "{err}");

    // Refused calls consume no offset, and what was accepted is what the engine reads back.
    let page = s.engine.read(&ch, 0, 100).await.unwrap();
    assert_eq!(page.head(), Position::new(first.epoch, 4));
    let summary: Vec<(Option<&str>, PayloadKind, &[u8])> = page
        .events
        .iter()
        .map(|e| (e.name.as_ref().map(EventName::as_str), e.kind, &e.data[..]))
        .collect();
    assert_eq!(
        summary,
        [
            (None, PayloadKind::Text, &b"plain"[..]),
            (Some("update"), PayloadKind::Json, &b"{\"a\":1}"[..]),
            (Some("note"), PayloadKind::Text, &b"named text"[..]),
            (None, PayloadKind::Binary, &b"raw"[..]),
        ]
    );
    // External publishes reach the live path like the gateway's own.
    eventually("live delivery of external publishes", async || {
        s.listener.positions_of(&ch).len() >= 4
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_function_subcommand_prints_a_loadable_library() {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .arg("redis-function")
        .env_clear()
        .env("GATEWAY__HISTORY__SIZE", "77")
        .env("GATEWAY__HISTORY__TTL_SECONDS", "60")
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let library = String::from_utf8(output.stdout).unwrap();
    assert!(
        library.starts_with("#!lua name=gateway_v1"),
        "{library:.80}"
    );
    assert!(!library.contains("__MAXLEN__") && !library.contains("__TTL_MS__"));

    let server = Redis::start();
    let mut conn = server.conn().await;
    let name: String = ::redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg("REPLACE")
        .arg(&library)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(name, "gateway_v1");
    let id = fcall(&mut conn, "gw:", "by-hand", &["hello"])
        .await
        .unwrap();
    assert_eq!(id.parse::<Position>().unwrap().offset, 1);
    // The printed library carries the configured defaults for callers that omit them.
    let ttl: i64 = ::redis::cmd("PTTL")
        .arg("gw:{by-hand}:meta")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!((50_000..=60_000).contains(&ttl), "PTTL {ttl}");
}
