//! TLS to Redis (`rediss://`): a redis-server with only a TLS port and a CA made at test time;
//! the gateway trusts that CA (and presents a client certificate when Redis requires one).
//! Publishing and receiving work end to end; a CA that does not match, or a missing client
//! certificate, leaves the gateway running and not ready instead of crashing it.

use std::time::Duration;

use crate::common::sentinel::Node;
use crate::common::test_ca::TestCa;
use crate::common::*;

/// A Redis listening only on a TLS port with `ca`'s server certificate; `clients_need_certs`
/// sets `--tls-auth-clients`.
fn tls_redis(ca: &TestCa, clients_need_certs: bool) -> Node {
    let port = free_port();
    let (cert, key) = ca.server();
    let (port_text, cert, key, ca_file) = (
        port.to_string(),
        cert.display().to_string(),
        key.display().to_string(),
        ca.ca().display().to_string(),
    );
    Node::start(
        port,
        None,
        &[
            "--port",
            "0",
            "--tls-port",
            &port_text,
            "--bind",
            "127.0.0.1",
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--tls-ca-cert-file",
            &ca_file,
            "--tls-auth-clients",
            if clients_need_certs { "yes" } else { "no" },
            "--save",
            "",
            "--appendonly",
            "no",
        ],
    )
}

fn rediss(node: &Node) -> String {
    format!("rediss://127.0.0.1:{}/", node.port)
}

async fn status(gw: &Gateway, path: &str) -> u16 {
    http()
        .get(gw.url(path))
        .send()
        .await
        .map_or(0, |r| r.status().as_u16())
}

/// Publishes over HTTP and checks an SSE and a WebSocket subscriber both get it.
async fn round_trip(gw: &Gateway, channel: &str) {
    let mut sse = Sse::connect(&gw.url(&format!("/sse?channel={channel}")), None).await;
    sse.ready().await;
    let mut ws = Ws::connect(&ws_url(gw.addr)).await;
    ws.subscribe(channel, None).await;
    for i in 1..=3 {
        publish(&gw.url(""), channel, &format!("secure-{i}")).await;
    }
    let want = ["secure-1", "secure-2", "secure-3"];
    assert_eq!(data(&sse.take(3).await), want);
    assert_eq!(ws.event_data(3).await, want);
}

/// Asserts the gateway stays up (`/healthz` 200) but not ready (`/readyz` 503) for a while.
async fn stays_unready(gw: &Gateway) {
    eventually("/healthz", async || status(gw, "/healthz").await == 200).await;
    for _ in 0..10 {
        assert_eq!(status(gw, "/readyz").await, 503);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        status(gw, "/healthz").await,
        200,
        "the gateway must not crash"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_a_private_ca_publishes_and_delivers() {
    let ca = TestCa::new();
    let redis = tls_redis(&ca, false);
    let (url, ca_file) = (rediss(&redis), ca.ca().display().to_string());
    let prefix = format!("{}:", unique("tls"));
    let gw = Gateway::spawn(&[
        ("GATEWAY__REDIS__URL", url.as_str()),
        ("GATEWAY__REDIS__TLS_CA", ca_file.as_str()),
        ("GATEWAY__REDIS__KEY_PREFIX", prefix.as_str()),
    ]);
    gw.wait_ready();
    round_trip(&gw, "secure").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_is_presented_when_redis_requires_one() {
    let ca = TestCa::new();
    let redis = tls_redis(&ca, true);
    let (cert, key) = ca.client();
    let (url, ca_file, cert, key) = (
        rediss(&redis),
        ca.ca().display().to_string(),
        cert.display().to_string(),
        key.display().to_string(),
    );
    let prefix = format!("{}:", unique("mtls"));
    let with_cert = Gateway::spawn(&[
        ("GATEWAY__REDIS__URL", url.as_str()),
        ("GATEWAY__REDIS__TLS_CA", ca_file.as_str()),
        ("GATEWAY__REDIS__TLS_CERT", cert.as_str()),
        ("GATEWAY__REDIS__TLS_KEY", key.as_str()),
        ("GATEWAY__REDIS__KEY_PREFIX", prefix.as_str()),
    ]);
    with_cert.wait_ready();
    round_trip(&with_cert, "mutual").await;

    // Without a client certificate, Redis refuses the handshake: not ready, still running.
    let without = Gateway::spawn(&[
        ("GATEWAY__REDIS__URL", url.as_str()),
        ("GATEWAY__REDIS__TLS_CA", ca_file.as_str()),
        ("GATEWAY__REDIS__KEY_PREFIX", prefix.as_str()),
        ("GATEWAY__REDIS__TIMEOUT_SECONDS", "1"),
    ]);
    stays_unready(&without).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_that_does_not_match_makes_the_gateway_unready_not_dead() {
    let ca = TestCa::new();
    let other = TestCa::new();
    let redis = tls_redis(&ca, false);
    let (url, wrong) = (rediss(&redis), other.ca().display().to_string());
    let prefix = format!("{}:", unique("wrongca"));
    let mut gw = Gateway::spawn(&[
        ("GATEWAY__REDIS__URL", url.as_str()),
        ("GATEWAY__REDIS__TLS_CA", wrong.as_str()),
        ("GATEWAY__REDIS__KEY_PREFIX", prefix.as_str()),
        ("GATEWAY__REDIS__TIMEOUT_SECONDS", "1"),
    ]);
    stays_unready(&gw).await;
    let res = http()
        .post(gw.url("/publish"))
        .json(&serde_json::json!({ "channel": "x", "data": "y" }))
        .send()
        .await
        .expect("publish request");
    assert_eq!(res.status(), 503, "an unverifiable Redis is unavailable");
    // It still stops cleanly.
    assert_eq!(gw.terminate(), Some(0));
}
