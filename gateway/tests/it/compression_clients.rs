//! Compression (issue 15) against real clients: curl's `--compressed` decoding gzip and
//! deflate SSE streams, and the Python `websockets` library negotiating `permessage-deflate`
//! (installed into a venv under the test target directory at test time).

use std::path::PathBuf;
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

use crate::common::*;

const CURL: &str = "/usr/bin/curl";

/// The next line of a child's output, within [`WAIT`].
async fn line(lines: &mut Lines<BufReader<ChildStdout>>, what: &str) -> String {
    tokio::time::timeout(WAIT, lines.next_line())
        .await
        .unwrap_or_else(|_| panic!("no {what} within {WAIT:?}"))
        .expect("read")
        .unwrap_or_else(|| panic!("output ended before {what}"))
}

fn piped(cmd: &mut Command) -> (Child, Lines<BufReader<ChildStdout>>) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn");
    let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    (child, lines)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_compressed_gets_exact_sse_payloads() {
    let gw = Gateway::spawn(&[("GATEWAY__COMPRESSION__SSE", "true")]);
    for accept in ["gzip", "deflate"] {
        let channel = unique("curl-z");
        let (_curl, mut lines) = piped(
            Command::new(CURL)
                .args(["-s", "-N", "-i", "--compressed", "--max-time", "20"])
                .args(["-H", &format!("Accept-Encoding: {accept}")])
                .arg(gw.url(&format!("/sse?channel={channel}"))),
        );
        let mut head = Vec::new();
        loop {
            let l = line(&mut lines, "the head").await;
            if l.trim().is_empty() {
                break;
            }
            head.push(l.trim().to_owned());
        }
        assert!(
            head.contains(&format!("content-encoding: {accept}")),
            "{head:?}"
        );
        assert_eq!(line(&mut lines, "retry").await, "retry: 2000");
        let start = line(&mut lines, "the starting id").await;
        assert!(
            start.starts_with("id: ") && start.ends_with(":0"),
            "{start}"
        );
        assert_eq!(line(&mut lines, "the prelude's end").await, "");
        for i in 0..3 {
            let data = format!("{{\"seq\":{i},\"text\":\"{}\"}}", "ACME ".repeat(50));
            let id = publish(&gw.url(""), &channel, &data).await;
            // Each event is decoded by curl before the next one is published.
            assert_eq!(line(&mut lines, "the id").await, format!("id: {id}"));
            assert_eq!(line(&mut lines, "the data").await, format!("data: {data}"));
            assert_eq!(line(&mut lines, "the event's end").await, "");
        }
    }
}

/// A venv with `websockets`, made once per target directory.
fn python_with_websockets() -> PathBuf {
    let venv = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("py-websockets");
    let python = venv.join("bin/python");
    let ready = |p: &PathBuf| {
        std::process::Command::new(p)
            .args(["-c", "import websockets.asyncio.client"])
            .status()
            .is_ok_and(|s| s.success())
    };
    if !ready(&python) {
        let ok = std::process::Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok,
            "python3 -m venv failed (scripts/test.sh installs python3-venv)"
        );
        let ok = std::process::Command::new(venv.join("bin/pip"))
            .args(["install", "-q", "websockets>=14"])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "pip install websockets failed");
        assert!(ready(&python), "websockets not importable after install");
    }
    python
}

/// Connects with `websockets`' defaults (permessage-deflate offered; with a third argument N,
/// offering `server_max_window_bits=N` instead), prints the extensions answer, subscribes, pings
/// three times (compressed by the client), then prints every message.
const CLIENT: &str = r#"
import asyncio, json, sys
from websockets.asyncio.client import connect
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory

async def main():
    options = {}
    if len(sys.argv) > 3:
        factory = ClientPerMessageDeflateFactory(server_max_window_bits=int(sys.argv[3]))
        options = {"compression": None, "extensions": [factory]}
    async with connect(sys.argv[1], max_size=2**20, **options) as ws:
        print("EXT", ws.response.headers.get("Sec-WebSocket-Extensions", ""), flush=True)
        await ws.send(json.dumps({"type": "subscribe", "channel": sys.argv[2], "req": "py"}))
        for _ in range(3):
            await ws.send(json.dumps({"type": "ping", "req": "the same ping again"}))
        while True:
            print("MSG", await ws.recv(), flush=True)

asyncio.run(main())
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_websockets_negotiates_permessage_deflate() {
    let python = tokio::task::spawn_blocking(python_with_websockets)
        .await
        .expect("venv");
    // `websockets`' default offer leaves the server's window alone: the gateway keeps its
    // context and events refer back; so it does when offered 15 (a full window, repeated in
    // the answer), but not with 10.
    for (takeover, window) in [
        ("false", None),
        ("true", None),
        ("false", Some("10")),
        ("false", Some("15")),
    ] {
        let gw = Gateway::spawn(&[
            ("GATEWAY__COMPRESSION__WS", "true"),
            ("GATEWAY__COMPRESSION__WS_CLIENT_CONTEXT_TAKEOVER", takeover),
        ]);
        let channel = unique("py-z");
        let (_client, mut lines) = piped(
            Command::new(&python)
                .args(["-c", CLIENT])
                .arg(format!("ws://{}/ws", gw.addr))
                .arg(&channel)
                .args(window),
        );
        let ext = line(&mut lines, "the extensions").await;
        assert_eq!(
            ext.contains("server_no_context_takeover"),
            window == Some("10"),
            "{ext}"
        );
        assert_eq!(
            ext.contains("client_no_context_takeover"),
            takeover == "false",
            "{ext}"
        );
        if let Some(bits) = window {
            assert!(
                ext.ends_with(&format!("; server_max_window_bits={bits}")),
                "{ext}"
            );
        }
        let mut replies = Vec::new();
        for _ in 0..4 {
            let l = line(&mut lines, "a reply").await;
            let v: serde_json::Value = serde_json::from_str(&l["MSG ".len()..]).expect(&l);
            replies.push(v["type"].as_str().unwrap_or_default().to_owned());
        }
        replies.sort();
        assert_eq!(
            replies,
            ["pong", "pong", "pong", "subscribed"],
            "{takeover}"
        );
        // Under and over the client's window (1 KiB when offered with 10 bits: longer ones go
        // uncompressed), and with a full window each compressed against the one before: all
        // arrive exactly.
        for size in [100, 1000, 6000, 1000, 1005] {
            let data = "news ".repeat(size / 5);
            let id = publish(&gw.url(""), &channel, &data).await;
            let l = line(&mut lines, "an event").await;
            let v: serde_json::Value = serde_json::from_str(&l["MSG ".len()..]).expect(&l);
            assert_eq!(v["id"], id.as_str());
            assert_eq!(v["data"], data.as_str());
        }
    }
}
