//! The raw socket's head sniffer (`gateway::front::head::HeadSniffer`) on arbitrary first bytes
//! arriving in arbitrary pieces, as reads deliver them (never more than the sniffer has room
//! for). Properties:
//!
//! - any bytes get a decision once the limit is reached, and a decision hands over exactly the
//!   bytes read (nothing lost, nothing invented);
//! - the decision depends on the bytes, not on how they were split: it is made at the first read
//!   that completes what a byte-at-a-time feed needed, and is the same, except that a `GET /sse`
//!   head followed by more bytes in the same read goes to hyper;
//! - a connection goes to the publish thread only if its first bytes are `POST /publish`
//!   followed by a space or `?`;
//! - a head is served raw only if it is complete, within the limit, a `GET /sse` with the query
//!   it names, and breaks no head rule (one `Host`, no body).
//!
//! Input: byte 0 picks the limit (0: the gateway's 16 KiB, else twice its value), byte 1 the
//! number of piece sizes that follow (mod 8; none: all at once), then the bytes themselves.
#![no_main]

use gateway::front::head::{HeadSniffer, RequestHead, Sniffed};
use gateway::front::limits::MAX_HEAD;
use libfuzzer_sys::fuzz_target;

/// What one feed decided, and after how many bytes.
struct Run {
    /// Bytes pushed in all.
    fed: usize,
    /// Bytes pushed before the read that decided (or the last read).
    before_last: usize,
    decided: Option<Sniffed>,
}

/// Feeds `data` in pieces cycling through `sizes` (each at least 1 byte, at most the room).
fn run(data: &[u8], sizes: &[usize], limit: usize) -> Run {
    let mut sniffer = HeadSniffer::new(limit);
    let (mut fed, mut before_last) = (0, 0);
    let mut i = 0;
    while fed < data.len() && sniffer.room() > 0 {
        let size = sizes
            .get(i % sizes.len().max(1))
            .copied()
            .unwrap_or(usize::MAX);
        i += 1;
        let n = size.max(1).min(sniffer.room()).min(data.len() - fed);
        before_last = fed;
        sniffer.push(&data[fed..fed + n]);
        fed += n;
        if let Some(decided) = sniffer.decide() {
            return Run {
                fed,
                before_last,
                decided: Some(decided),
            };
        }
    }
    Run {
        fed,
        before_last,
        decided: None,
    }
}

fn kind(decided: &Option<Sniffed>) -> &'static str {
    match decided {
        None => "undecided",
        Some(Sniffed::Sse(_)) => "sse",
        Some(Sniffed::Http2(_)) => "h2",
        Some(Sniffed::Publish(_)) => "publish",
        Some(Sniffed::Other(_)) => "other",
        Some(Sniffed::TimedOut) => "timed out",
        Some(Sniffed::Closed) => "closed",
    }
}

/// The query the request line names, read independently of the sniffer.
fn query_of(head: &[u8]) -> &[u8] {
    let line = head.split(|&b| b == b'\n').next().unwrap_or(&[]);
    let target = line.split(|&b| b == b' ').nth(1).unwrap_or(&[]);
    target.splitn(2, |&b| b == b'?').nth(1).unwrap_or(&[])
}

/// Every property of one run over `data` with `limit`.
fn check(data: &[u8], run: &Run, limit: usize) {
    assert!(
        run.fed <= data.len() && run.fed <= limit,
        "read past the data or the limit"
    );
    match &run.decided {
        None => {
            assert_eq!(run.fed, data.len(), "stopped before the bytes ran out");
            assert!(run.fed < limit, "the limit was reached without a decision");
        }
        Some(Sniffed::Other(bytes)) => assert_eq!(bytes[..], data[..run.fed]),
        Some(Sniffed::Publish(bytes)) => {
            assert_eq!(bytes[..], data[..run.fed]);
            assert!(bytes.starts_with(b"POST /publish ") || bytes.starts_with(b"POST /publish?"));
        }
        Some(Sniffed::Http2(bytes)) => {
            assert_eq!(bytes[..], data[..run.fed]);
            assert!(bytes.starts_with(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"));
        }
        Some(Sniffed::Sse(head)) => check_served(&data[..run.fed], head),
        Some(Sniffed::TimedOut | Sniffed::Closed) => panic!("the sniffer has no socket"),
    }
}

/// A head served raw is a whole, rule-abiding `GET /sse` head and nothing else.
fn check_served(bytes: &[u8], head: &RequestHead) {
    assert!(bytes.len() <= MAX_HEAD);
    assert!(bytes.starts_with(b"GET /sse ") || bytes.starts_with(b"GET /sse?"));
    assert!(
        bytes.ends_with(b"\n\r\n") || bytes.ends_with(b"\n\n"),
        "not a whole head"
    );
    assert_eq!(head.query.as_bytes(), query_of(bytes));
    assert!(head.headers.get_all("host").iter().count() <= 1);
    assert!(!head.headers.contains_key("transfer-encoding"));
    assert!(
        head.headers
            .get("content-length")
            .is_none_or(|v| v.as_bytes() == b"0")
    );
}

fn same_head(a: &RequestHead, b: &RequestHead) -> bool {
    a.query == b.query && a.headers == b.headers
}

fuzz_target!(|input: &[u8]| {
    let [limit, count, rest @ ..] = input else {
        return;
    };
    let limit = if *limit == 0 {
        MAX_HEAD
    } else {
        usize::from(*limit) * 2
    };
    let count = usize::from(*count % 8).min(rest.len());
    let (sizes, data) = rest.split_at(count);
    let sizes: Vec<usize> = sizes.iter().map(|&s| usize::from(s)).collect();

    // The finest split decides first: its decision point is where the bytes settle it.
    let fine = run(data, &[1], limit);
    check(data, &fine, limit);
    for sizes in [&sizes[..], &[]] {
        let split = run(data, sizes, limit);
        check(data, &split, limit);
        let Some(_) = &fine.decided else {
            assert!(split.decided.is_none(), "decided only because of the split");
            continue;
        };
        // Decided by the read that reached the fine decision point, not earlier or later.
        assert!(split.before_last < fine.fed && fine.fed <= split.fed);
        match (&fine.decided, &split.decided) {
            (Some(Sniffed::Sse(a)), Some(Sniffed::Sse(b))) => {
                assert_eq!(split.fed, fine.fed);
                assert!(same_head(a, b));
            }
            // Bytes after a whole head, in the same read: hyper's business.
            (Some(Sniffed::Sse(_)), Some(Sniffed::Other(_))) => assert!(split.fed > fine.fed),
            (a, b) => assert_eq!(kind(a), kind(b), "the split changed the decision"),
        }
    }
});
