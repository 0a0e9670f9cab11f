//! Several instances behind a real nginx (round robin, no stickiness): an instance killed under
//! load, a rolling restart, and a reconnect storm — every client gets every event exactly once.

use std::time::Duration;

use futures_util::future::join_all;

use crate::common::follow::{Followed, follow_sse, follow_ws};
use crate::common::nginx::Nginx;
use crate::common::*;

fn expected(n: usize) -> Vec<String> {
    (0..n).map(|i| i.to_string()).collect()
}

/// Open streaming connections across gateways (from their metrics).
async fn streams(gateways: &[&Gateway]) -> f64 {
    sum(
        gateways,
        &[
            r#"gateway_connections{transport="sse"}"#,
            r#"gateway_connections{transport="ws"}"#,
        ],
    )
    .await
}

/// Channel subscriptions held on `gateways`: a WebSocket is counted as a connection at its
/// upgrade, but receives an event only once its `subscribe` is through.
async fn subscriptions(gateways: &[&Gateway]) -> f64 {
    sum(gateways, &["gateway_subscriptions"]).await
}

async fn sum(gateways: &[&Gateway], series: &[&str]) -> f64 {
    let mut total = 0.0;
    for gw in gateways {
        if let Ok(res) = http().get(gw.url("/metrics")).send().await
            && let Ok(text) = res.text().await
        {
            total += series.iter().map(|s| metric(&text, s)).sum::<f64>();
        }
    }
    total
}

fn assert_exact(name: &str, followed: &[Followed], n: usize) {
    let want = expected(n);
    // One summary line per run, quoted in RELIABILITY.md.
    let delivered: usize = followed.iter().map(|f| f.data.len()).sum();
    let distinct: usize = followed
        .iter()
        .map(|f| {
            f.data
                .iter()
                .collect::<std::collections::HashSet<_>>()
                .len()
        })
        .sum();
    let lost = followed.len() * n - distinct.min(followed.len() * n);
    let reconnected = followed.iter().filter(|f| f.reconnects > 0).count();
    eprintln!(
        "outcome {name}: {} clients x {n} events published; delivered {delivered}, lost {lost}, duplicated {}, clients that reconnected {reconnected}",
        followed.len(),
        delivered - distinct
    );
    for (i, f) in followed.iter().enumerate() {
        assert_eq!(f.gaps, 0, "{name} client {i} got a gap");
        assert!(
            f.data == want,
            "{name} client {i}: {} events, first difference at {:?}",
            f.data.len(),
            f.data.iter().zip(&want).position(|(a, b)| a != b)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_an_instance_under_load_loses_nothing_for_200_sse_and_200_ws_clients() {
    let redis = Redis::start();
    let prefix = format!("{}:", unique("kill"));
    let mut a = Gateway::on_redis(&redis, &prefix, &[]);
    let b = Gateway::on_redis(&redis, &prefix, &[]);
    let lb = Nginx::start(&[a.addr, b.addr]);
    let n = 200;
    let deadline = Duration::from_secs(60);
    let sse: Vec<_> = (0..200)
        .map(|_| tokio::spawn(follow_sse(lb.url(""), "crowd".into(), n, deadline)))
        .collect();
    let ws: Vec<_> = (0..200)
        .map(|_| tokio::spawn(follow_ws(lb.ws_url(), "crowd".into(), n, deadline)))
        .collect();
    // Counted from one sample where the two instances hold exactly the 400 clients: a
    // connection a client already gave up on (a connect that timed out on a loaded machine)
    // may still be counted for a moment, and would inflate `on_a`.
    let mut on_a = 0.0;
    eventually(
        "400 clients connected and subscribed, each counted once",
        async || {
            on_a = streams(&[&a]).await;
            on_a + streams(&[&b]).await == 400.0 && subscriptions(&[&a, &b]).await == 400.0
        },
    )
    .await;
    assert!(
        on_a > 0.0,
        "round robin should have put clients on both instances"
    );

    let mut conn = redis.conn().await;
    for i in 0..n {
        fcall_publish(&mut conn, &prefix, "crowd", &i.to_string()).await;
        if i == n / 2 {
            a.kill();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let sse: Vec<Followed> = join_all(sse)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let ws: Vec<Followed> = join_all(ws).await.into_iter().map(Result::unwrap).collect();
    assert_exact("SSE", &sse, n);
    assert_exact("WS", &ws, n);
    let moved = sse.iter().chain(&ws).filter(|f| f.reconnects > 0).count();
    assert!(
        moved as f64 >= on_a,
        "{moved} clients reconnected but {on_a} were on the killed instance"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_three_instances_loses_and_repeats_nothing() {
    let redis = Redis::start();
    let prefix = format!("{}:", unique("roll"));
    let url = redis.url();
    let ports: Vec<String> = (0..3)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let spawn = |listen: &str| {
        Gateway::spawn(&[
            ("GATEWAY__REDIS__URL", url.as_str()),
            ("GATEWAY__REDIS__KEY_PREFIX", prefix.as_str()),
            ("GATEWAY__SERVER__LISTEN", listen),
            ("GATEWAY__SERVER__SHUTDOWN_TIMEOUT_SECONDS", "5"),
        ])
    };
    let mut gateways: Vec<Gateway> = ports.iter().map(|p| spawn(p)).collect();
    let lb = Nginx::start(&gateways.iter().map(|g| g.addr).collect::<Vec<_>>());
    let n = 900;
    let deadline = Duration::from_secs(90);
    let sse: Vec<_> = (0..100)
        .map(|_| tokio::spawn(follow_sse(lb.url(""), "deploy".into(), n, deadline)))
        .collect();
    let ws: Vec<_> = (0..100)
        .map(|_| tokio::spawn(follow_ws(lb.ws_url(), "deploy".into(), n, deadline)))
        .collect();
    let refs: Vec<&Gateway> = gateways.iter().collect();
    eventually("200 clients connected and subscribed", async || {
        streams(&refs).await >= 200.0 && subscriptions(&refs).await >= 200.0
    })
    .await;

    let publisher = {
        let mut conn = redis.conn().await;
        let prefix = prefix.clone();
        tokio::spawn(async move {
            for i in 0..n {
                fcall_publish(&mut conn, &prefix, "deploy", &i.to_string()).await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    for (i, listen) in ports.iter().enumerate() {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut old = std::mem::replace(&mut gateways[i], spawn_placeholder());
        let code = tokio::task::spawn_blocking(move || old.terminate())
            .await
            .unwrap();
        assert_eq!(code, Some(0), "instance {i} must drain and exit cleanly");
        gateways[i] = spawn(listen);
    }
    publisher.await.unwrap();
    let sse: Vec<Followed> = join_all(sse)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let ws: Vec<Followed> = join_all(ws).await.into_iter().map(Result::unwrap).collect();
    assert_exact("SSE", &sse, n);
    assert_exact("WS", &ws, n);
    assert!(
        sse.iter().chain(&ws).all(|f| f.reconnects >= 1),
        "every client lived through at least one restart"
    );
}

/// A stand-in while an instance is restarting (its process is already gone).
fn spawn_placeholder() -> Gateway {
    Gateway::spawn(&[])
}

/// `(fcall calls, total commands)` from INFO.
async fn command_counts(conn: &mut redis::aio::MultiplexedConnection) -> (u64, u64) {
    let info: String = redis::cmd("INFO")
        .arg("all")
        .query_async(conn)
        .await
        .unwrap();
    let fcalls = info
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_fcall:"))
        .and_then(|l| l.split(',').find_map(|kv| kv.strip_prefix("calls=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let total = info
        .lines()
        .find_map(|l| l.strip_prefix("total_commands_processed:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("total_commands_processed in INFO");
    (fcalls, total)
}

async fn storm(warm: bool) -> (usize, f64) {
    let redis = Redis::start();
    let prefix = format!("{}:", unique("storm"));
    let quiet = [
        ("GATEWAY__REDIS__PROBE_SECONDS", "600"),
        ("GATEWAY__REDIS__HEAD_CHECK_SECONDS", "0"),
    ];
    let b = Gateway::on_redis(&redis, &prefix, &quiet);
    let mut sentinel = None;
    if warm {
        // Another client already watches the channel on this instance.
        let mut s = Sse::connect(&b.url("/sse?channel=storm"), None).await;
        s.ready().await;
        sentinel = Some(s);
    }
    let mut conn = redis.conn().await;
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(fcall_publish(&mut conn, &prefix, "storm", &i.to_string()).await);
    }
    if let Some(s) = &mut sentinel {
        s.take(20).await;
    }
    // 2000 clients that last saw event 9 come back at once.
    let position = ids[9].clone();
    let (fcalls_before, commands_before) = command_counts(&mut conn).await;
    let clients = 2000;
    let started = std::time::Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let url = b.url("/sse?channel=storm");
            let position = position.clone();
            tokio::spawn(async move {
                let mut s = Sse::connect(&url, Some(&position)).await;
                data(&s.take(10).await)
            })
        })
        .collect();
    let want: Vec<String> = (10..20).map(|i| i.to_string()).collect();
    for t in join_all(tasks).await {
        assert_eq!(t.unwrap(), want);
    }
    let took = started.elapsed();
    let (fcalls_after, commands_after) = command_counts(&mut conn).await;
    // INFO itself counts once per call.
    let commands = commands_after.saturating_sub(commands_before + 1);
    eprintln!(
        "reconnect storm ({}): {clients} clients resumed in {:.2} s; Redis: {} FCALL, {commands} commands = {:.4} per client",
        if warm {
            "channel already watched"
        } else {
            "channel not yet watched"
        },
        took.as_secs_f64(),
        fcalls_after - fcalls_before,
        commands as f64 / clients as f64
    );
    (clients, commands as f64 / clients as f64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_2000_resumes_on_a_watched_channel_needs_no_redis_reads() {
    let (_, per_client) = storm(true).await;
    assert!(
        per_client <= 0.05,
        "{per_client} Redis commands per resumed client"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_2000_resumes_on_a_cold_channel_shares_its_history_reads() {
    let (_, per_client) = storm(false).await;
    assert!(
        per_client <= 0.05,
        "{per_client} Redis commands per resumed client"
    );
}
