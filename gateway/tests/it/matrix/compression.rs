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
