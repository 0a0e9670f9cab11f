//! How many Redis connections an instance opens: one per worker thread for requests, however
//! many requests arrive at once, plus pub/sub and a small pool for background work.

use crate::common::{Gateway, Redis, publish, unique};

/// Connections Redis has accepted since it started.
async fn accepted(conn: &mut redis::aio::MultiplexedConnection) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("stats")
        .query_async(conn)
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("total_connections_received:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap()
}

/// Redis clients other than the caller's own connection.
async fn clients(conn: &mut redis::aio::MultiplexedConnection) -> Vec<String> {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(conn)
        .await
        .unwrap();
    list.lines()
        .filter(|l| !l.contains("cmd=client|list"))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_publishes_opens_one_connection_per_worker() {
    let redis = Redis::start();
    let prefix = unique("conns");
    // Two workers (the harness default) and one pooled connection for background tasks.
    let gw = Gateway::on_redis(&redis, &prefix, &[("GATEWAY__REDIS__POOL_SIZE", "1")]);
    let base = gw.url("");
    let base = base.trim_end_matches('/');

    let mut conn = redis.conn().await;
    let before = accepted(&mut conn).await;

    // 200 publishes at once, spread over both workers by the accept loop.
    let channels: Vec<String> = (0..200).map(|i| format!("burst-{i}")).collect();
    let ids = futures_util::future::join_all(channels.iter().map(|c| publish(base, c, "x"))).await;
    assert_eq!(ids.len(), 200);
    for id in &ids {
        assert!(id.ends_with(":1"), "first event of its channel: {id}");
    }

    // Counted over the whole burst, so connections opened and closed meanwhile count too.
    let opened = accepted(&mut conn).await - before;
    assert!(
        opened <= 3,
        "the burst opened {opened} Redis connections; expected one per worker (and one spare)"
    );
    let others = clients(&mut conn).await;
    // pub/sub + at most one pooled + one per worker.
    assert!(
        others.len() <= 4,
        "{} Redis connections after a burst; expected at most 4:\n{}",
        others.len(),
        others.join("\n")
    );
    let command_conns = others.iter().filter(|l| l.contains("cmd=fcall")).count();
    assert!(
        (1..=2).contains(&command_conns),
        "publishes ran on {command_conns} connections; expected one per worker that served them"
    );
}
