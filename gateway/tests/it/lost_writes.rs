//! Redis losing acknowledged writes never becomes a silent skip. A restart from an older
//! snapshot and a failover to a replica that lagged both bring back an older offset counter
//! while clients have seen newer offsets; every client that saw a lost event gets a `gap`, then
//! every event published afterwards, once. A client at a position the store still holds gets
//! the same gap in place (events after it may be gone; continuity cannot be proven), unless
//! the operator declared Redis durable (`redis.durable`), and nothing is re-delivered. (See
//! README, "How it stays exact".)

use std::time::Duration;

use shared::Position;

use crate::common::relay::Relay;
use crate::common::*;

const OPTS: [(&str, &str); 2] = [
    ("GATEWAY__REDIS__TIMEOUT_SECONDS", "1"),
    ("GATEWAY__REDIS__PROBE_SECONDS", "1"),
];

async fn ready(gw: &Gateway) -> bool {
    matches!(http().get(gw.url("/readyz")).send().await, Ok(r) if r.status() == 200)
}

async fn publish_all(gw: &Gateway, prefix: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 1..=n {
        ids.push(publish(&gw.url(""), "news", &format!("{prefix}-{i}")).await);
    }
    ids
}

fn names(prefix: &str, n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("{prefix}-{i}")).collect()
}

fn position(id: &str) -> Position {
    id.parse().unwrap_or_else(|e| panic!("{id:?}: {e}"))
}

/// What every kind of client must see once the store lost `lost` (ids of events clients saw)
/// and `new` (ids) were published afterwards. `kept` is the newest id the store still holds.
async fn assert_everyone_told(
    gw: &Gateway,
    sse: &mut Sse,
    ws: &mut Ws,
    kept: &str,
    lost: &[String],
    new: &[String],
) {
    let first_new = position(&new[0]);
    for id in new {
        let p = position(id);
        assert_ne!(
            p.epoch,
            position(kept).epoch,
            "events after the loss must not reuse the old epoch's offsets"
        );
    }
    let expected = names("new", new.len());
    // Connected clients: a gap naming the first new event, then every new event once.
    let gap = assert_gap(&sse.next().await, "news");
    assert_eq!(gap, first_new);
    assert_eq!(data(&sse.take(new.len()).await), expected);
    let gap = ws.expect("gap").await;
    assert_eq!(gap["first_available"], new[0].as_str());
    assert_eq!(ws.event_data(new.len()).await, expected);

    // Resumes from every lost position: a gap, then every new event.
    for seen in lost {
        let mut late = Sse::connect(&gw.url("/sse?channel=news"), Some(seen)).await;
        assert_eq!(assert_gap(&late.next().await, "news"), first_new, "{seen}");
        assert_eq!(data(&late.take(new.len()).await), expected);
        late.assert_quiet(Duration::from_millis(100)).await;
    }
    let mut ws_late = Ws::connect(&ws_url(gw.addr)).await;
    let ack = ws_late
        .subscribe("news", lost.last().map(String::as_str))
        .await;
    assert_eq!(ack["recovered"], false);
    assert_eq!(
        ws_late.expect("gap").await["first_available"],
        new[0].as_str()
    );
    assert_eq!(ws_late.event_data(new.len()).await, expected);

    // The store still holds `kept`, but what followed it may be gone: a gap in place, then the
    // new events; nothing it had is delivered again.
    let mut exact = Sse::connect(&gw.url("/sse?channel=news"), Some(kept)).await;
    assert_eq!(assert_gap(&exact.next().await, "news"), first_new);
    assert_eq!(data(&exact.take(new.len()).await), expected);

    // And nothing arrives twice.
    tokio::join!(
        sse.assert_quiet(Duration::from_millis(300)),
        ws.assert_quiet(Duration::from_millis(300)),
        exact.assert_quiet(Duration::from_millis(300))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restored_from_an_older_snapshot_gives_gaps_then_every_new_event() {
    // No AOF: `SAVE` writes the snapshot a restart loads, as after a crash between snapshots.
    let mut redis = Redis::start();
    let prefix = format!("{}:", unique("rollback"));
    let gw = Gateway::on_redis(&redis, &prefix, &OPTS);
    let other = Gateway::on_redis(&redis, &prefix, &OPTS);
    let mut sse = Sse::connect(&gw.url("/sse?channel=news"), None).await;
    sse.ready().await;
    let mut ws = Ws::connect(&ws_url(gw.addr)).await;
    ws.subscribe("news", None).await;

    let kept = publish_all(&gw, "kept", 3).await;
    let mut admin = redis.conn().await;
    let _: () = redis::cmd("SAVE").query_async(&mut admin).await.unwrap();
    let lost = publish_all(&gw, "lost", 3).await;
    let mut seen = names("kept", 3);
    seen.extend(names("lost", 3));
    assert_eq!(data(&sse.take(6).await), seen);
    assert_eq!(ws.event_data(6).await, seen);

    redis.restart(); // SIGKILL, then start from the snapshot: the head is back at kept-3
    eventually("both gateways ready again", async || {
        ready(&gw).await && ready(&other).await
    })
    .await;
    // A client resuming beyond the restored head before anything new is published is told at
    // once (never a 400: EventSource would stop for good), on any instance.
    let mut early = Sse::connect(&other.url("/sse?channel=news"), Some(&lost[2])).await;
    let first_after = assert_gap(&early.next().await, "news");
    assert_eq!(first_after.offset, 4, "continues after the restored head");

    let new = publish_all(&gw, "new", 3).await;
    assert_eq!(position(&new[0]), first_after);
    assert_eq!(data(&early.take(3).await), names("new", 3));
    assert_everyone_told(&other, &mut sse, &mut ws, &kept[2], &lost, &new).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_replica_promoted_gives_gaps_then_every_new_event() {
    let primary = Redis::start();
    // The replica follows the primary through a link that can be cut (replication pauses),
    // and the gateway dials an address the operator moves at failover.
    let link = Relay::start(primary.port).await;
    let replica = Redis::start_args(&["--replicaof", "127.0.0.1", &link.port.to_string()]);
    let front = Relay::start(primary.port).await;
    let prefix = format!("{}:", unique("promote"));
    let url = front.url();
    let gw = Gateway::spawn(
        &[
            &[
                ("GATEWAY__REDIS__URL", url.as_str()),
                ("GATEWAY__REDIS__KEY_PREFIX", prefix.as_str()),
            ][..],
            &OPTS[..],
        ]
        .concat(),
    );
    gw.wait_ready();
    let mut sse = Sse::connect(&gw.url("/sse?channel=news"), None).await;
    sse.ready().await;
    let mut ws = Ws::connect(&ws_url(gw.addr)).await;
    ws.subscribe("news", None).await;

    let kept = publish_all(&gw, "kept", 3).await;
    let meta = format!("{prefix}{{news}}:meta");
    let mut on_replica = replica.conn().await;
    eventually("the replica to have kept-3", async || {
        let offset: Option<String> = redis::cmd("HGET")
            .arg(&meta)
            .arg("offset")
            .query_async(&mut on_replica)
            .await
            .unwrap_or(None);
        offset.as_deref() == Some("3")
    })
    .await;
    link.switch(free_port()); // replication stops: the replica lags from here on
    let lost = publish_all(&gw, "lost", 3).await;
    let mut seen = names("kept", 3);
    seen.extend(names("lost", 3));
    assert_eq!(data(&sse.take(6).await), seen);
    assert_eq!(ws.event_data(6).await, seen);

    // Failover to the lagging replica.
    let _: () = redis::cmd("REPLICAOF")
        .arg("NO")
        .arg("ONE")
        .query_async(&mut on_replica)
        .await
        .unwrap();
    front.switch(replica.port);
    drop(primary);
    eventually("the gateway on the promoted replica", async || {
        ready(&gw).await
    })
    .await;
    let new = publish_all(&gw, "new", 3).await;
    assert_everyone_told(&gw, &mut sse, &mut ws, &kept[2], &lost, &new).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_position_beyond_the_head_is_a_gap_and_the_store_never_reuses_it() {
    // Writes lost without any restart or failover the gateway could notice (or a forged
    // cursor): the client is told, and the next events are not handed out under offsets it
    // claims to have seen.
    let redis = Redis::start();
    let prefix = format!("{}:", unique("fence"));
    let gw = Gateway::on_redis(&redis, &prefix, &OPTS);
    let head = position(&publish(&gw.url(""), "news", "one").await);
    let beyond = Position::new(head.epoch, head.offset + 5).to_string();
    let mut sse = Sse::connect(&gw.url("/sse?channel=news"), Some(&beyond)).await;
    let first = assert_gap(&sse.next().await, "news");
    assert_eq!(first.offset, head.offset + 1);
    let next = position(&publish(&gw.url(""), "news", "two").await);
    assert_ne!(next.epoch, head.epoch, "the store moved to a new epoch");
    assert_eq!(next, first);
    assert_eq!(data(&sse.take(1).await), ["two"]);
    // A client at the old head is told too: the store cannot tell a forged cursor from lost
    // writes, so continuity past the head is not proven (fail closed).
    let mut exact = Sse::connect(&gw.url("/sse?channel=news"), Some(&head.to_string())).await;
    assert_eq!(assert_gap(&exact.next().await, "news"), first);
    assert_eq!(data(&exact.take(1).await), ["two"]);
    let metrics = metrics_text(&gw.url("")).await;
    assert_eq!(
        metric(&metrics, r#"gateway_history_lost_total{seen_by="client"}"#),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_lost_on_a_channel_nobody_watched_are_never_reused() {
    // No instance watches the channel while Redis restarts, so no gateway can notice the
    // rollback; backends publish straight through the function. The store itself must refuse to
    // hand the lost offsets out again, or a client resuming from one would skip new events.
    let mut redis = Redis::start();
    let prefix = format!("{}:", unique("quiet"));
    let mut conn = redis.conn().await;
    let gw = Gateway::on_redis(&redis, &prefix, &OPTS);
    let mut kept = String::new();
    for i in 1..=3 {
        kept = fcall_publish(&mut conn, &prefix, "quiet", &format!("kept-{i}")).await;
    }
    let _: () = redis::cmd("SAVE").query_async(&mut conn).await.unwrap();
    let mut lost = Vec::new();
    for i in 1..=3 {
        lost.push(fcall_publish(&mut conn, &prefix, "quiet", &format!("lost-{i}")).await);
    }
    redis.restart();
    let mut conn = redis.conn().await;
    let mut new = Vec::new();
    for i in 1..=3 {
        new.push(fcall_publish(&mut conn, &prefix, "quiet", &format!("new-{i}")).await);
    }
    assert_ne!(position(&new[0]).epoch, position(&kept).epoch);
    eventually("the gateway ready again", async || ready(&gw).await).await;
    for seen in &lost {
        let mut sse = Sse::connect(&gw.url("/sse?channel=quiet"), Some(seen)).await;
        assert_eq!(assert_gap(&sse.next().await, "quiet"), position(&new[0]));
        assert_eq!(data(&sse.take(3).await), names("new", 3), "{seen}");
    }
    let mut exact = Sse::connect(&gw.url("/sse?channel=quiet"), Some(&kept)).await;
    assert_eq!(assert_gap(&exact.next().await, "quiet"), position(&new[0]));
    assert_eq!(data(&exact.take(3).await), names("new", 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_without_the_durability_promise_is_a_gap_in_place_and_nothing_twice() {
    // Redis lost nothing here (AOF `always`), but without `redis.durable` the gateway cannot
    // know that: clients crossing the restart are told, and keep their place in history.
    let mut redis = Redis::start_persistent();
    let prefix = format!("{}:", unique("nodurable"));
    let gw = Gateway::on_redis(&redis, &prefix, &OPTS);
    let mut sse = Sse::connect(&gw.url("/sse?channel=news"), None).await;
    sse.ready().await;
    let kept = publish_all(&gw, "kept", 3).await;
    assert_eq!(data(&sse.take(3).await), names("kept", 3));
    redis.restart();
    eventually("the gateway ready again", async || ready(&gw).await).await;
    let new = publish_all(&gw, "new", 2).await;
    assert_eq!(assert_gap(&sse.next().await, "news"), position(&new[0]));
    assert_eq!(data(&sse.take(2).await), names("new", 2));
    sse.assert_quiet(Duration::from_millis(200)).await;
    // A client behind gets the gap where it stands, then what the store still holds, then the
    // new events: each once.
    let mut behind = Sse::connect(&gw.url("/sse?channel=news"), Some(&kept[0])).await;
    let gap = assert_gap(&behind.next().await, "news");
    assert_eq!(gap.offset, position(&kept[0]).offset + 1);
    let mut rest = names("kept", 3)[1..].to_vec();
    rest.extend(names("new", 2));
    assert_eq!(data(&behind.take(4).await), rest);
    behind.assert_quiet(Duration::from_millis(200)).await;
}
