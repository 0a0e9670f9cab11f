//! A real HTTP/2 client: Debian's curl, over TLS (ALPN) and cleartext with prior knowledge.

use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};

use crate::common::arrival::*;

const CURL: &str = "/usr/bin/curl";

/// curl's `--http2` over TLS and `--http2-prior-knowledge` cleartext: both speak HTTP/2 with the
/// gateway, for a plain request and an SSE stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_speaks_http2_over_tls_and_h2c() {
    assert!(
        std::path::Path::new(CURL).exists(),
        "{CURL} is missing: install Debian's curl (scripts/test.sh does)"
    );
    each(&Arrival::HTTP2, |arrival| async move {
        let gw = arrival.gateway(&[]).await;
        let flags: &[&str] = if arrival.tls() {
            &["--http2", "-k"]
        } else {
            &["--http2-prior-knowledge"]
        };
        let out = tokio::process::Command::new(CURL)
            .args(flags)
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_version} %{http_code}",
            ])
            .args(["--max-time", "5"])
            .arg(gw.url("/healthz"))
            .kill_on_drop(true)
            .output()
            .await
            .expect("run curl");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "2 200",
            "curl {flags:?} /healthz: {}",
            String::from_utf8_lossy(&out.stderr)
        );

        let mut curl = tokio::process::Command::new(CURL)
            .args(flags)
            .args(["-s", "-N", "-i", "--max-time", "10"])
            .arg(gw.url("/sse?channel=curl"))
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("run curl");
        let mut lines = BufReader::new(curl.stdout.take().expect("stdout")).lines();
        let mut seen = Vec::new();
        curl_lines(&mut lines, &mut seen, "the prelude", |l| {
            l.starts_with("retry:")
        })
        .await;
        assert_eq!(seen[0], "HTTP/2 200", "{seen:?}");
        assert!(
            seen.iter().any(|l| l == "content-type: text/event-stream"),
            "{seen:?}"
        );
        Control::new(&gw).publish("curl", "via curl").await;
        curl_lines(&mut lines, &mut seen, "the event", |l| {
            l == "data: via curl"
        })
        .await;
        let _ = curl.kill().await;
    })
    .await;
}

/// Reads curl's output lines into `seen` until one satisfies `done`.
async fn curl_lines(
    lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    seen: &mut Vec<String>,
    what: &str,
    done: impl Fn(&str) -> bool,
) {
    let deadline = tokio::time::Instant::now() + crate::common::WAIT;
    loop {
        let line = tokio::time::timeout_at(deadline, lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("curl printed no {what}: {seen:?}"))
            .expect("curl output")
            .unwrap_or_else(|| panic!("curl ended before {what}: {seen:?}"));
        let line = line.trim_end().to_owned();
        seen.push(line.clone());
        if done(&line) {
            return;
        }
    }
}
