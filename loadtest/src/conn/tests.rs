//! Subscriber tests against fake servers.

use std::io;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::acct::End;
use super::{Phase, Shared, SubPlan, Transport, subscriber, subscribers, unix_micros};
use crate::net::TlsClient;
use crate::phase::PhaseTx;
use crate::publish::Book;
use crate::stats::Stats;

/// One subscriber's plan against `url`: plain HTTP/1.1, one stream, no reconnects, no
/// compression; tests change what they exercise.
pub(super) fn plan(url: &str, transport: Transport) -> SubPlan {
    SubPlan {
        transport,
        targets: vec![crate::target::parse_url(url).unwrap()],
        storm_targets: Vec::new(),
        template: false,
        sources: vec![Ipv4Addr::LOCALHOST],
        reconnect: false,
        tls: None,
        http2: false,
        streams_per_conn: 1,
        compressed: false,
        inflate_once: false,
        ws_no_server_context: false,
    }
}

fn chunk(out: &mut Vec<u8>, data: &[u8]) {
    out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// A fake gateway: one SSE response with a start frame, events 0, 1, 3 (2 skipped), 3
/// again, each in its own chunk, then a malformed chunk; the subscriber must account all of
/// it and survive the garbage.
#[tokio::test]
async fn sse_subscriber_accounts_a_misbehaving_stream() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut req = vec![0u8; 1024];
        let n = s.read(&mut req).await.unwrap();
        assert!(req[..n].starts_with(b"GET /sse?channel=c0 HTTP/1.1\r\n"));
        let mut out = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
        chunk(&mut out, b"retry: 2000\nid: ab:0\n\n");
        for (seq, offset) in [(0u64, 1u64), (1, 2), (3, 4), (3, 4)] {
            let mut frame = Vec::new();
            let mut payload = Vec::new();
            crate::payload::write_payload(&mut payload, seq, unix_micros(), 80);
            shared::sse::write_event(&mut frame, Some(&format!("ab:{offset}")), None, &payload);
            chunk(&mut out, &frame);
        }
        out.extend_from_slice(b"zz\r\n");
        s.write_all(&out).await.unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
    });
    let book = Arc::new(Book::new("c", 1));
    book.attempted[0].store(4, Ordering::Relaxed);
    let sh = Arc::new(Shared {
        plan: plan(&format!("http://{addr}"), Transport::Sse),
        stats: Stats::new(),
        book,
        storm_start: std::sync::OnceLock::new(),
        watch: std::sync::OnceLock::new(),
    });
    let phase = PhaseTx::new(Phase::Run);
    let task = tokio::spawn(subscriber(0, sh.clone(), phase.subscribe()));
    for _ in 0..200 {
        if Stats::get(&sh.stats.disconnects) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    phase.set(Phase::Stop);
    let result = task.await.unwrap().expect("established");
    let c = sh.stats.counters();
    assert_eq!(c.deliveries, 4);
    assert_eq!((c.in_order, c.lost, c.duplicated), (3, 1, 1));
    assert_eq!(c.id_jumps, 2, "offset 2 -> 4, then 4 again");
    assert_eq!(result.seq.final_lost(4, &[]), 1);
    assert_eq!(Stats::get(&sh.stats.established), 1);
    assert_eq!(
        Stats::get(&sh.stats.disconnects),
        1,
        "the bad chunk ends the session"
    );
    assert_eq!(sh.stats.latency(false).len(), 4);
}

/// SSE over HTTP/2 on TLS (ALPN h2) against hyper's server: three subscribers with
/// `--streams-per-conn 3` share one connection. The streams of channel c0 carry a start
/// frame and events 0, 1, 3, 3 split across DATA frames at odd places, then end; both
/// account exactly as over HTTP/1.1. Channel c1's stream is refused with 503 (HPACK-coded
/// by hyper), which counts as a failed connection with its status.
#[tokio::test]
async fn h2_streams_share_a_tls_connection_and_account_exactly() {
    use bytes::Bytes;
    use http_body_util::StreamBody;
    use hyper::body::Frame;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use std::convert::Infallible;
    use std::sync::atomic::AtomicUsize;

    let dir = std::env::temp_dir().join(format!("lt-h2-test-{}", std::process::id()));
    crate::net::gen_cert(&dir).unwrap();
    let chain = rustls::pki_types::pem::PemObject::pem_file_iter(dir.join("cert.pem"))
        .unwrap()
        .collect::<Result<Vec<rustls::pki_types::CertificateDer<'static>>, _>>()
        .unwrap();
    let key: rustls::pki_types::PrivateKeyDer<'static> =
        rustls::pki_types::pem::PemObject::from_pem_file(dir.join("key.pem")).unwrap();
    let mut server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    server.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            counter.fetch_add(1, Ordering::Relaxed);
            let tls = acceptor.accept(tcp).await.unwrap();
            let service = hyper::service::service_fn(|req: hyper::Request<_>| async move {
                assert_eq!(req.uri().path(), "/sse");
                assert_eq!(req.headers()["accept"], "text/event-stream");
                if req.uri().query() == Some("channel=c1") {
                    let mut refused = hyper::Response::new(StreamBody::new(
                        futures_util::stream::iter(Vec::new()),
                    ));
                    *refused.status_mut() = hyper::StatusCode::SERVICE_UNAVAILABLE;
                    return Ok::<_, Infallible>(refused);
                }
                assert_eq!(req.uri().query(), Some("channel=c0"));
                let mut all = b"retry: 2000\nid: ab:0\n\n".to_vec();
                for (seq, offset) in [(0u64, 1u64), (1, 2), (3, 4), (3, 4)] {
                    let mut payload = Vec::new();
                    crate::payload::write_payload(&mut payload, seq, unix_micros(), 80);
                    let id = format!("ab:{offset}");
                    shared::sse::write_event(&mut all, Some(&id), None, &payload);
                }
                let frames: Vec<Result<Frame<Bytes>, Infallible>> = all
                    .chunks(37)
                    .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
                    .collect();
                let body = StreamBody::new(futures_util::stream::iter(frames));
                Ok(hyper::Response::new(body))
            });
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service),
            );
        }
    });
    let book = Arc::new(Book::new("c", 2));
    book.attempted[0].store(4, Ordering::Relaxed);
    let sh = Arc::new(Shared {
        plan: SubPlan {
            tls: Some(TlsClient::new(Some(&dir.join("cert.pem")), false).unwrap()),
            http2: true,
            streams_per_conn: 3,
            ..plan(&format!("https://{addr}"), Transport::Sse)
        },
        stats: Stats::new(),
        book,
        storm_start: std::sync::OnceLock::new(),
        watch: std::sync::OnceLock::new(),
    });
    let phase = PhaseTx::new(Phase::Run);
    let task = tokio::spawn(subscribers(0, 3, sh.clone(), phase.subscribe()));
    for _ in 0..500 {
        if Stats::get(&sh.stats.disconnects) >= 2 && Stats::get(&sh.stats.failed) >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    phase.set(Phase::Stop);
    let results = task.await.unwrap();
    assert_eq!(results.len(), 2, "the refused stream is not a subscriber");
    for r in &results {
        assert_eq!(r.channel, 0);
        assert_eq!(r.seq.final_lost(4, &[]), 1);
    }
    let c = sh.stats.counters();
    assert_eq!(c.deliveries, 8);
    assert_eq!((c.in_order, c.lost, c.duplicated), (6, 2, 2));
    assert_eq!(c.id_jumps, 4, "offset 2 -> 4, then 4 again, per stream");
    assert_eq!(Stats::get(&sh.stats.established), 2);
    assert_eq!(Stats::get(&sh.stats.failed), 1);
    assert_eq!(
        crate::stats::lock(&sh.stats.failures).get("status_503"),
        Some(&1)
    );
    assert_eq!(Stats::get(&sh.stats.disconnects), 2, "each stream ended");
    assert_eq!(sh.stats.live.load(Ordering::Relaxed), 0);
    assert_eq!(Stats::get(&sh.stats.tcp_connections), 1);
    assert_eq!(accepted.load(Ordering::Relaxed), 1, "one shared connection");
    let _ = std::fs::remove_dir_all(&dir);
}

/// An HTTP/2 stream that the server ends is requested again 1-2 s later on the same
/// connection, resuming with `Last-Event-ID`; nothing is lost or duplicated.
#[tokio::test]
async fn h2_stream_resumes_on_the_same_connection() {
    use bytes::Bytes;
    use futures_util::StreamExt as _;
    use http_body_util::StreamBody;
    use hyper::body::Frame;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use std::convert::Infallible;
    use std::sync::atomic::AtomicUsize;

    fn events(out: &mut Vec<u8>, seqs: std::ops::Range<u64>) {
        for seq in seqs {
            let mut payload = Vec::new();
            crate::payload::write_payload(&mut payload, seq, unix_micros(), 60);
            let id = format!("ab:{}", seq + 1);
            shared::sse::write_event(out, Some(&id), None, &payload);
        }
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            counter.fetch_add(1, Ordering::Relaxed);
            let service = hyper::service::service_fn(|req: hyper::Request<_>| async move {
                let mut all = Vec::new();
                let resumed = match req.headers().get("last-event-id") {
                    None => {
                        all.extend_from_slice(b"retry: 2000\nid: ab:0\n\n");
                        events(&mut all, 0..2);
                        false
                    }
                    Some(id) => {
                        assert_eq!(id, "ab:2");
                        events(&mut all, 2..4);
                        true
                    }
                };
                let first = futures_util::stream::iter(vec![Ok::<_, Infallible>(Frame::data(
                    Bytes::from(all),
                ))]);
                // The first stream ends; the resumed one stays open.
                let body = if resumed {
                    first.chain(futures_util::stream::pending()).boxed()
                } else {
                    first.boxed()
                };
                Ok::<_, Infallible>(hyper::Response::new(StreamBody::new(body)))
            });
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), service),
            );
        }
    });
    let book = Arc::new(Book::new("c", 1));
    book.attempted[0].store(4, Ordering::Relaxed);
    let sh = Arc::new(Shared {
        plan: SubPlan {
            reconnect: true,
            http2: true,
            ..plan(&format!("http://{addr}"), Transport::Sse)
        },
        stats: Stats::new(),
        book,
        storm_start: std::sync::OnceLock::new(),
        watch: std::sync::OnceLock::new(),
    });
    let phase = PhaseTx::new(Phase::Run);
    let task = tokio::spawn(subscribers(0, 1, sh.clone(), phase.subscribe()));
    for _ in 0..400 {
        if sh.stats.counters().deliveries >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    phase.set(Phase::Stop);
    let results = task.await.unwrap();
    assert_eq!(results.len(), 1);
    assert_eq!(results[0].seq.final_lost(4, &[]), 0);
    let c = sh.stats.counters();
    assert_eq!(
        (c.deliveries, c.in_order, c.lost, c.duplicated),
        (4, 4, 0, 0)
    );
    assert_eq!(c.id_jumps, 0);
    assert_eq!(Stats::get(&sh.stats.disconnects), 1);
    assert_eq!(Stats::get(&sh.stats.reconnects), 1);
    assert_eq!(Stats::get(&sh.stats.tcp_connections), 1);
    assert_eq!(
        accepted.load(Ordering::Relaxed),
        1,
        "resumed on the same connection"
    );
}

#[test]
fn end_reasons_are_short_labels() {
    assert_eq!(End::Status(503).reason(), "status_503");
    assert_eq!(
        End::Connect(io::Error::from(io::ErrorKind::ConnectionRefused)).reason(),
        "connect_connectionrefused"
    );
    assert_eq!(
        End::WsError("bad_position".into()).reason(),
        "ws_error_bad_position"
    );
}
