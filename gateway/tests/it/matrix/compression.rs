//! Compressed SSE streams (issue 15) on every arrival: the coding the client accepts, headers
//! that say so, and a stream whose every event (and heartbeat) decodes as soon as it arrives,
//! before the next one is published. `Events` undoes the coding chunk by chunk with flate2's
//! own gzip and zlib decoders.

use std::time::Duration;

use crate::common::arrival::*;

const ON: &[(&str, &str)] = &[
    ("GATEWAY__COMPRESSION__SSE", "true"),
    ("GATEWAY__SSE__HEARTBEAT_SECONDS", "1"),
];

/// A JSON update like real ones, about 1 KiB.
fn update(i: usize) -> String {
    let rows: Vec<String> = (0..12)
        .map(|r| {
            format!(
                r#"{{"symbol":"SYM{r}","bid":{}.{r},"ask":{}.{r},"venue":"XNAS"}}"#,
                100 + i,
                101 + i
            )
        })
        .collect();
    format!(r#"{{"seq":{i},"rows":[{}]}}"#, rows.join(","))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_streams_are_compressed_per_event_on_every_arrival() {
    each(&Arrival::ALL, |arrival| async move {
        let gw = arrival.gateway(ON).await;
        let mut control = Control::new(&gw);
        for (accept, coding, path) in [
            ("gzip, deflate, br", "gzip", "/sse?channel=z"),
            ("deflate", "deflate", "/sse?channel=z"),
            ("gzip", "gzip", "/sse?channel=z&channel=y"),
        ] {
            let reply = open_sse(arrival, &gw, path, &[("accept-encoding", accept)]).await;
            assert_eq!(
                reply.header("content-encoding").as_deref(),
                Some(coding),
                "{accept}"
            );
            assert_eq!(reply.header("vary").as_deref(), Some("accept-encoding"));
            let mut events = reply.events().await;
            events.ready().await;
            for i in 0..3 {
                let data = update(i);
                let id = control.publish("z", &data).await;
                // Decoded before the next event exists: nothing is held back.
                let e = events.next().await;
                assert_eq!(e.data, data, "{coding} {path}");
                assert!(e.id.ends_with(&id) || e.id == id, "{} vs {id}", e.id);
            }
            // Heartbeats go through the coding too.
            assert!(
                events
                    .next_within(Duration::from_millis(1500))
                    .await
                    .is_none()
            );
            assert!(
                events.tail().contains(": ping\n\n"),
                "{coding}: no heartbeat"
            );
        }
        // Uncompressed when the client accepts no coding the gateway offers.
        let reply = open_sse(arrival, &gw, "/sse?channel=z", &[("accept-encoding", "br")]).await;
        assert_eq!(reply.header("content-encoding"), None);
        let mut events = reply.events().await;
        events.ready().await;
        let id = control.publish("z", "plain").await;
        assert_eq!(events.next().await.id, id);
    })
    .await;
}

/// A frame as a self-contained piece (fresh compressor, sync flush), as the gateway sends an
/// event that cannot refer back to its predecessor.
fn alone(frame: &str) -> usize {
    let mut c = flate2::Compress::new(flate2::Compression::new(6), false);
    let mut out = Vec::with_capacity(frame.len() + 64);
    c.compress_vec(frame.as_bytes(), &mut out, flate2::FlushCompress::Sync)
        .expect("compress");
    out.len()
}

/// Consecutive events travel as pieces that refer back to the event before (what the stream
/// inflated last), and still decode exactly: across a heartbeat (which breaks the chain), from
/// history into live events on a resume, and written by fan-out itself or by the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consecutive_events_refer_back_and_decode_exactly_on_every_arrival() {
    each(&Arrival::ALL, |arrival| async move {
        let gw = arrival.gateway(ON).await;
        let mut control = Control::new(&gw);
        let mut ids = Vec::new();
        for i in 0..5 {
            ids.push(control.publish("chain", &update(i)).await);
        }
        // Resume after the first: four events from history, then live ones.
        let reply = open_sse(
            arrival,
            &gw,
            "/sse?channel=chain",
            &[("accept-encoding", "gzip"), ("last-event-id", &ids[0])],
        )
        .await;
        let mut events = reply.events().await;
        events.ready().await;
        let mut frames = 0;
        for (i, id) in ids.iter().enumerate().skip(1) {
            let e = events.next().await;
            assert_eq!(
                (e.id.as_str(), e.data.as_str()),
                (id.as_str(), update(i).as_str())
            );
        }
        let start = events.received();
        for i in 5..25 {
            let data = update(i);
            let id = control.publish("chain", &data).await;
            let e = events.next().await;
            assert_eq!(
                (e.id, e.data.as_str()),
                (id.clone(), data.as_str()),
                "[{arrival}]"
            );
            frames += alone(&format!("id: {id}\ndata: {data}\n\n"));
            if i == 14 {
                // A heartbeat between two events: the next piece stands alone.
                let ping = events.next_within(Duration::from_millis(1600)).await;
                assert!(ping.is_none(), "{ping:?}");
                assert!(
                    events.tail().ends_with(": ping\n\n"),
                    "[{arrival}] no heartbeat"
                );
            }
        }
        let sent = events.received() - start;
        // About half here (these updates compress well on their own too); without referring
        // back it would be all of it.
        assert!(
            sent * 4 < frames * 3,
            "[{arrival}] {sent} bytes for 20 events, {frames} as self-contained pieces"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_compression_is_off_by_default() {
    each(&Arrival::ALL, |arrival| async move {
        let gw = arrival.gateway(&[]).await;
        let reply = open_sse(
            arrival,
            &gw,
            "/sse?channel=z",
            &[("accept-encoding", "gzip")],
        )
        .await;
        assert_eq!(reply.header("content-encoding"), None);
        assert_eq!(reply.header("vary"), None);
        let mut events = reply.events().await;
        events.ready().await;
        let id = Control::new(&gw).publish("z", "plain").await;
        assert_eq!(events.next().await.id, id);
    })
    .await;
}

/// What one connection writes alone, in the coding too: on a compressed two-channel stream, a
/// resume from a trimmed position gets its `gap` (and cursor lines) between the shared event
/// pieces, and SIGTERM's closing comment ends the stream decodable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gaps_and_the_closing_comment_travel_compressed() {
    each(&Arrival::ALL, |arrival| async move {
        let gw = arrival
            .gateway(&[
                ("GATEWAY__COMPRESSION__SSE", "true"),
                ("GATEWAY__HISTORY__SIZE", "10"),
            ])
            .await;
        let mut ctl = Control::new(&gw);
        let first = ctl.publish("zfeed", "1").await;
        for i in 2..=30 {
            ctl.publish("zfeed", &i.to_string()).await;
        }
        // Channels sort as "zfeed", "zquiet": the cursor lists zfeed's position first.
        let quiet = ctl.publish("zquiet", "q").await;
        let cursor = format!("{first},{quiet}");
        let reply = open_sse(
            arrival,
            &gw,
            "/sse?channel=zfeed&channel=zquiet",
            &[("accept-encoding", "deflate"), ("last-event-id", &cursor)],
        )
        .await;
        assert_eq!(reply.header("content-encoding").as_deref(), Some("deflate"));
        let mut stream = reply.events().await;
        let gap = stream.next().await;
        assert_eq!(gap.event, "gap", "{gap:?}");
        let rest = stream.next().await;
        assert_eq!(rest.event, "message");
        assert!(rest.id.ends_with(&format!(",{quiet}")), "{}", rest.id);
        let terminated = tokio::task::spawn_blocking(move || {
            let mut gw = gw;
            gw.terminate()
        });
        let (_, ended) = stream.read_to_end(Duration::from_secs(8)).await;
        let tail = stream.tail();
        assert!(ended, "the stream did not end: {tail:?}");
        assert!(tail.contains("\n: closing: shutdown\n"), "{tail:?}");
        assert_eq!(terminated.await.expect("terminate"), Some(0));
    })
    .await;
}
