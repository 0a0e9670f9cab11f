//! Client addresses and per-address limits: `X-Forwarded-For` believed only from trusted
//! proxies (on every arrival), the PROXY protocol by hand and through a real HAProxy
//! (`send-proxy-v2`), and the per-address stream count and rate.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::common::arrival::*;
use crate::common::{Gateway, WAIT, unique};
use crate::matrix::assert_error;

/// A stream refused for its address: 429 with `Retry-After` and the code.
async fn assert_refused(reply: Reply, code: &str) {
    assert_eq!(reply.status, 429);
    assert_eq!(reply.header("retry-after").as_deref(), Some("1"));
    assert_error(&reply.json().await, code);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forwarded_addresses_count_only_from_trusted_proxies_on_every_arrival() {
    each(&Arrival::ALL, |arrival| async move {
        let limit = ("GATEWAY__LIMITS__MAX_CONNECTIONS_PER_IP", "1");
        let trusting = arrival
            .gateway(&[limit, ("GATEWAY__SERVER__TRUSTED_PROXIES", "127.0.0.1/32")])
            .await;
        let xff = |ip: &'static str| [("x-forwarded-for", ip)];
        let mut first = sse(arrival, &trusting, "/sse?channel=c", &xff("198.51.100.1")).await;
        first.ready().await;
        let again = open_sse(arrival, &trusting, "/sse?channel=c", &xff("198.51.100.1")).await;
        assert_refused(again, "too_many_connections").await;
        let other = sse(arrival, &trusting, "/sse?channel=c", &xff("198.51.100.2")).await;
        drop(other);
        if arrival.websocket() {
            let refused = open_ws(arrival, &trusting, "", &xff("198.51.100.1")).await;
            assert_eq!(refused.err().map(|(status, _)| status), Some(429));
            let mut ws = open_ws(arrival, &trusting, "", &xff("198.51.100.3"))
                .await
                .expect("another address is upgraded");
            ws.subscribe("c", None).await;
        }
        // The slot frees with the stream.
        drop(first);
        tokio::time::sleep(Duration::from_millis(200)).await;
        sse(arrival, &trusting, "/sse?channel=c", &xff("198.51.100.1"))
            .await
            .ready()
            .await;

        // Nobody trusted: a spoofed header changes nothing, the peer is the client.
        let plain = arrival.gateway(&[limit]).await;
        let mut held = sse(arrival, &plain, "/sse?channel=c", &xff("198.51.100.1")).await;
        held.ready().await;
        let spoofed = open_sse(arrival, &plain, "/sse?channel=c", &xff("203.0.113.9")).await;
        assert_refused(spoofed, "too_many_connections").await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn new_streams_per_address_are_rate_limited_on_every_arrival() {
    each(&Arrival::ALL, |arrival| async move {
        let gw = arrival
            .gateway(&[("GATEWAY__LIMITS__NEW_CONNECTIONS_PER_IP_PER_SECOND", "2")])
            .await;
        for _ in 0..2 {
            sse(arrival, &gw, "/sse?channel=c", &[]).await.ready().await;
        }
        let third = open_sse(arrival, &gw, "/sse?channel=c", &[]).await;
        assert_refused(third, "connection_rate_limited").await;
        tokio::time::sleep(Duration::from_millis(1100)).await;
        sse(arrival, &gw, "/sse?channel=c", &[]).await.ready().await;
    })
    .await;
}

/// Connects to `to` from `from` (a loopback address of its own), sends `bytes`, and returns the
/// status of the answer's head (`None` when the connection closed without one), keeping the
/// connection open in the returned stream.
async fn status_from(from: [u8; 4], to: SocketAddr, bytes: &[u8]) -> (Option<u16>, TcpStream) {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::from((from, 0)))
        .expect("bind a loopback source");
    let mut tcp = socket.connect(to).await.expect("connect");
    tcp.write_all(bytes).await.expect("write");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    let read = async {
        while !head.ends_with(b"\r\n\r\n") {
            if tcp.read(&mut byte).await.unwrap_or(0) == 0 {
                return;
            }
            head.push(byte[0]);
        }
    };
    let _ = tokio::time::timeout(WAIT, read).await;
    let status = String::from_utf8_lossy(&head)
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok());
    (status, tcp)
}

const GET_SSE: &[u8] = b"GET /sse?channel=c HTTP/1.1\r\nHost: gw\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_protocol_header_names_the_client() {
    let gw = Gateway::spawn(&[
        ("GATEWAY__SERVER__PROXY_PROTOCOL", "true"),
        ("GATEWAY__SERVER__TRUSTED_PROXIES", "127.0.0.1"),
        ("GATEWAY__LIMITS__MAX_CONNECTIONS_PER_IP", "1"),
    ]);
    let v1 = |ip: &str| {
        [
            format!("PROXY TCP4 {ip} 127.0.0.1 40000 80\r\n").as_bytes(),
            GET_SSE,
        ]
        .concat()
    };
    let (status, _held) = status_from([127, 0, 0, 1], gw.addr, &v1("198.51.100.1")).await;
    assert_eq!(status, Some(200));
    let (status, _) = status_from([127, 0, 0, 1], gw.addr, &v1("198.51.100.1")).await;
    assert_eq!(status, Some(429), "the same client, whatever the socket");
    let (status, _other) = status_from([127, 0, 0, 1], gw.addr, &v1("198.51.100.2")).await;
    assert_eq!(status, Some(200));
    // Without a header the trusted peer is its own client; a broken header is dropped.
    let (status, _own) = status_from([127, 0, 0, 1], gw.addr, GET_SSE).await;
    assert_eq!(status, Some(200));
    let (status, _) = status_from([127, 0, 0, 1], gw.addr, b"PROXY TCP4 nonsense\r\n").await;
    assert_eq!(status, None);
    // From an untrusted peer a PROXY header is not believed: it is not HTTP either.
    let (status, _) = status_from([127, 0, 0, 5], gw.addr, &v1("198.51.100.3")).await;
    assert_eq!(status, Some(400));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_send_proxy_v2_gives_the_gateway_the_client_address() {
    let gw = Gateway::spawn(&[
        ("GATEWAY__SERVER__PROXY_PROTOCOL", "true"),
        ("GATEWAY__SERVER__TRUSTED_PROXIES", "127.0.0.1"),
        ("GATEWAY__LIMITS__MAX_CONNECTIONS_PER_IP", "1"),
    ]);
    let haproxy = Haproxy::start(gw.addr).await;
    let (status, _held) = status_from([127, 0, 0, 2], haproxy.addr, GET_SSE).await;
    assert_eq!(status, Some(200));
    let (status, _) = status_from([127, 0, 0, 2], haproxy.addr, GET_SSE).await;
    assert_eq!(status, Some(429), "127.0.0.2 already holds its stream");
    let (status, _other) = status_from([127, 0, 0, 3], haproxy.addr, GET_SSE).await;
    assert_eq!(status, Some(200), "127.0.0.3 is another client");
    // Direct, without a header: the peer is its own client.
    let (status, _) = status_from([127, 0, 0, 4], gw.addr, GET_SSE).await;
    assert_eq!(status, Some(200));
}

/// A real HAProxy in HTTP mode sending PROXY v2 to one gateway.
struct Haproxy {
    addr: SocketAddr,
    child: std::process::Child,
    dir: std::path::PathBuf,
}

impl Haproxy {
    async fn start(gateway: SocketAddr) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let dir = std::env::temp_dir().join(unique("gw-haproxy-"));
        std::fs::create_dir_all(&dir).expect("dir");
        let config = dir.join("haproxy.cfg");
        std::fs::write(
            &config,
            format!(
                "defaults\n  mode http\n  timeout connect 2s\n  timeout client 30s\n  \
                 timeout server 30s\n\nfrontend fe\n  bind 127.0.0.1:{port}\n  \
                 default_backend be\n\nbackend be\n  \
                 server gw {gateway} send-proxy-v2\n"
            ),
        )
        .expect("config");
        let binary = ["/usr/sbin/haproxy", "haproxy"]
            .into_iter()
            .find(|b| std::process::Command::new(b).arg("-v").output().is_ok())
            .expect("haproxy is installed by the test command");
        let child = std::process::Command::new(binary)
            .arg("-db")
            .arg("-f")
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start haproxy");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = tokio::time::Instant::now() + WAIT;
        while TcpStream::connect(addr).await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "haproxy did not listen"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self { addr, child, dir }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::fs::remove_dir_all(&self.dir).ok();
    }
}
