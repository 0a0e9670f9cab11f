//! `kill -HUP` re-reads the TLS certificate and key: new connections get the new certificate,
//! a stream opened before keeps flowing, and unusable files leave the previous certificate in
//! force.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::common::*;

/// A new self-signed certificate for `localhost` and `127.0.0.1`: (cert PEM, key PEM, DER).
fn certificate() -> (String, String, CertificateDer<'static>) {
    let c = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("certificate");
    (
        c.cert.pem(),
        c.signing_key.serialize_pem(),
        c.cert.der().clone(),
    )
}

fn install(dir: &Path, cert: &str, key: &str) {
    std::fs::write(dir.join("cert.pem"), cert).unwrap();
    std::fs::write(dir.join("key.pem"), key).unwrap();
}

/// A TLS connection that trusts only `trusted`; the handshake's error if the gateway presents
/// another certificate.
async fn connect(
    gw: &Gateway,
    trusted: &CertificateDer<'static>,
) -> Result<TlsStream<TcpStream>, std::io::Error> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(trusted.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = TcpStream::connect(gw.addr).await?;
    let name = ServerName::try_from("127.0.0.1").unwrap();
    TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
}

/// Reads from `s` until `done` holds for what arrived.
async fn read_until(s: &mut TlsStream<TcpStream>, buf: &mut Vec<u8>, done: impl Fn(&str) -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !done(&String::from_utf8_lossy(buf)) {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, s.read(&mut chunk))
            .await
            .expect("timed out")
            .expect("read");
        assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(buf));
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Publishes `data` on `channel` over a new TLS connection trusting `trusted`.
async fn publish_over(gw: &Gateway, trusted: &CertificateDer<'static>, channel: &str, data: &str) {
    let mut s = connect(gw, trusted)
        .await
        .expect("TLS with the current certificate");
    let body = format!(r#"{{"channel":"{channel}","data":"{data}"}}"#);
    let request = format!(
        "POST /publish HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(request.as_bytes()).await.unwrap();
    s.flush().await.unwrap();
    let mut buf = Vec::new();
    read_until(&mut s, &mut buf, |t| t.contains("\"id\"")).await;
    assert!(String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 200"));
}

fn hangup(gw: &Gateway) {
    let status = std::process::Command::new("kill")
        .args(["-HUP", &gw.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate_without_dropping_streams() {
    let dir = std::env::temp_dir().join(unique("gw-reload-"));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert_a, key_a, der_a) = certificate();
    let (cert_b, key_b, der_b) = certificate();
    install(&dir, &cert_a, &key_a);
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    let gw = Gateway::spawn(&[
        ("GATEWAY__SERVER__TLS_CERT", cert_path.to_str().unwrap()),
        ("GATEWAY__SERVER__TLS_KEY", key_path.to_str().unwrap()),
    ]);
    assert_eq!(gw.scheme, "https");

    // A stream opened with certificate A.
    let mut stream = connect(&gw, &der_a).await.expect("certificate A");
    stream
        .write_all(b"GET /sse?channel=reload HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    stream.flush().await.unwrap();
    let mut buf = Vec::new();
    read_until(&mut stream, &mut buf, |t| t.contains("retry:")).await;

    install(&dir, &cert_b, &key_b);
    hangup(&gw);
    // New connections get certificate B (once the signal is handled).
    let deadline = tokio::time::Instant::now() + WAIT;
    while connect(&gw, &der_b).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "certificate B never served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        connect(&gw, &der_a).await.is_err(),
        "certificate A is no longer presented"
    );
    // The stream opened before the reload is still served.
    publish_over(&gw, &der_b, "reload", "after-reload").await;
    read_until(&mut stream, &mut buf, |t| t.contains("data: after-reload")).await;

    // Unusable files: the reload fails and certificate B stays in force.
    std::fs::write(&cert_path, "not a certificate").unwrap();
    hangup(&gw);
    tokio::time::sleep(Duration::from_millis(300)).await;
    publish_over(&gw, &der_b, "reload", "still-b").await;
    read_until(&mut stream, &mut buf, |t| t.contains("data: still-b")).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A certificate that cannot be used stops start-up with exit code 2 and says why, before the
/// gateway listens.
#[test]
fn an_unusable_certificate_is_a_configuration_error() {
    let dir = std::env::temp_dir().join(unique("gw-badcert-"));
    std::fs::create_dir_all(&dir).unwrap();
    install(&dir, "not a certificate", "not a key");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .env_clear()
        .env("GATEWAY__SERVER__LISTEN", "127.0.0.1:0")
        .env("GATEWAY__SERVER__TLS_CERT", dir.join("cert.pem"))
        .env("GATEWAY__SERVER__TLS_KEY", dir.join("key.pem"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&output.stdout).is_empty(),
        "it never listened"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cert.pem"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}
