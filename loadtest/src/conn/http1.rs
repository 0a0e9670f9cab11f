//! SSE over HTTP/1.1: request, response head, body framing, reads into a shared buffer.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};

use super::acct::End;
use super::sub::{LiveGuard, Sub};
use super::{CONNECT_TIMEOUT, READ_BUF, Shared, establish, unix_micros};
use crate::http::{BodyKind, ChunkedDecoder, parse_head};
use crate::inflate::SseInflate;
use crate::net::Stream;
use crate::sse::{SseItem, SseParser};
use crate::target::{Url, fill};

/// The body framing state of one SSE response.
pub(super) enum Body {
    Chunked(ChunkedDecoder),
    Length(u64),
    UntilClose,
}

thread_local! {
    static READ_BUFFER: RefCell<Box<[u8]>> = RefCell::new(vec![0; READ_BUF].into_boxed_slice());
}

/// Waits for data and hands it to `f` within the same poll, in the thread's shared buffer.
/// `Ok(None)` is end of stream.
pub(super) async fn read_shared<R>(
    stream: &mut Stream,
    mut f: impl FnMut(&[u8]) -> R,
) -> io::Result<Option<R>> {
    std::future::poll_fn(|cx| {
        let shared = READ_BUFFER.try_with(|cell| match cell.try_borrow_mut() {
            Ok(mut buf) => poll_into(stream, cx, &mut buf, &mut f),
            Err(_) => poll_into(stream, cx, &mut [0u8; 4096], &mut f),
        });
        match shared {
            Ok(poll) => poll,
            Err(_) => poll_into(stream, cx, &mut [0u8; 4096], &mut f),
        }
    })
    .await
}

pub(super) fn poll_into<R>(
    stream: &mut Stream,
    cx: &mut Context<'_>,
    buf: &mut [u8],
    f: &mut impl FnMut(&[u8]) -> R,
) -> Poll<io::Result<Option<R>>> {
    let mut rb = ReadBuf::new(buf);
    match Pin::new(stream).poll_read(cx, &mut rb) {
        Poll::Pending => Poll::Pending,
        Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        Poll::Ready(Ok(())) if rb.filled().is_empty() => Poll::Ready(Ok(None)),
        Poll::Ready(Ok(())) => Poll::Ready(Ok(Some(f(rb.filled())))),
    }
}

pub(super) async fn sse_session(
    sh: &Shared,
    sub: &mut Sub,
    url: &Url,
    mut stream: Stream,
    storm: bool,
    live: &mut LiveGuard<'_>,
) -> End {
    let path = sse_path(sh, sub, url);
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n",
        url.host
    );
    if sh.plan.compressed {
        req.push_str("Accept-Encoding: gzip\r\n");
    }
    let last_id = sub.sse.last_id();
    if !last_id.is_empty() {
        req.push_str("Last-Event-ID: ");
        req.push_str(&String::from_utf8_lossy(last_id));
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    let head = tokio::time::timeout(CONNECT_TIMEOUT, async {
        stream.write_all(req.as_bytes()).await.map_err(End::Io)?;
        // TLS: make sure the record left rustls' buffer.
        stream.flush().await.map_err(End::Io)?;
        read_head(&mut stream).await
    })
    .await;
    let (head, rest) = match head {
        Err(_) => return End::Timeout,
        Ok(Err(e)) => return e,
        Ok(Ok(h)) => h,
    };
    if head.status != 200 {
        return End::Status(head.status);
    }
    let mut body = match head.body {
        BodyKind::Chunked => Body::Chunked(ChunkedDecoder::new()),
        BodyKind::Length(n) => Body::Length(n),
        BodyKind::UntilClose => Body::UntilClose,
    };
    // A new stream: keep the last id, drop any partial line of the old one.
    sub.sse = SseParser::with_last_id(sub.sse.last_id());
    sub.gzip = sh
        .plan
        .compressed
        .then(|| Box::new(SseInflate::new(sh.plan.inflate_once)));
    if sh.plan.template {
        establish(sh, sub, storm, live);
    }
    if !rest.is_empty() {
        match process_sse(sh, sub, &mut body, &rest, storm, live) {
            Ok(true) => return End::Closed,
            Ok(false) => {}
            Err(e) => return e,
        }
    }
    loop {
        let read = read_shared(&mut stream, |bytes| {
            process_sse(sh, sub, &mut body, bytes, storm, live)
        })
        .await;
        match read {
            Ok(Some(Ok(false))) => {}
            Ok(Some(Ok(true))) | Ok(None) => return End::Closed,
            Ok(Some(Err(e))) => return e,
            Err(e) => return End::Io(e),
        }
    }
}

/// Handles one read of an SSE response body; returns whether the body is complete.
pub(super) fn process_sse(
    sh: &Shared,
    sub: &mut Sub,
    body: &mut Body,
    bytes: &[u8],
    storm: bool,
    live: &mut LiveGuard<'_>,
) -> Result<bool, End> {
    let now = unix_micros();
    let mut any = false;
    let Sub {
        sse, acct, gzip, ..
    } = sub;
    acct.batch.c.reads += 1;
    let mut sink = |item: SseItem<'_>| acct.on_sse(item, now, sh);
    let mut bad_gzip = None;
    // The body's bytes, inflated first on a compressed stream.
    let mut feed = |data: &[u8]| match gzip {
        Some(z) => {
            if let Err(e) = z.feed(data, &mut |plain| sse.feed(plain, &mut sink)) {
                bad_gzip = Some(e);
            }
        }
        None => sse.feed(data, &mut sink),
    };
    let done = match body {
        Body::Chunked(d) => d
            .feed(bytes, |data| {
                any = true;
                feed(data);
            })
            .map_err(|e| End::Protocol(e.to_string())),
        Body::Length(left) => {
            let n = bytes
                .len()
                .min(usize::try_from(*left).unwrap_or(usize::MAX));
            any = n > 0;
            feed(&bytes[..n]);
            *left -= n as u64;
            Ok(*left == 0)
        }
        Body::UntilClose => {
            any = true;
            feed(bytes);
            Ok(false)
        }
    };
    if let Some(e) = bad_gzip {
        // What could not be inflated counts against the run, not only as a reconnect.
        sub.acct.batch.c.malformed += 1;
        return Err(End::Protocol(e));
    }
    sh.stats.flush(sub.acct.shard, &mut sub.acct.batch);
    // Established by any body byte, even if garbage follows in the same read.
    if any && !sub.up {
        establish(sh, sub, storm, live);
    }
    done
}

pub(super) async fn read_head(
    stream: &mut Stream,
) -> Result<(crate::http::ResponseHead, Vec<u8>), End> {
    read_head_raw(stream)
        .await
        .map(|(head, _, rest)| (head, rest))
}

/// Like [`read_head`], also handing back the head's bytes (for the headers it does not parse).
pub(super) async fn read_head_raw(
    stream: &mut Stream,
) -> Result<(crate::http::ResponseHead, Vec<u8>, Vec<u8>), End> {
    let mut buf = Vec::with_capacity(1024);
    loop {
        buf.reserve(1024);
        let n = stream.read_buf(&mut buf).await.map_err(End::Io)?;
        if n == 0 {
            return Err(End::Closed);
        }
        match parse_head(&buf) {
            Ok(Some(head)) => {
                let rest = buf.split_off(head.len);
                return Ok((head, buf, rest));
            }
            Ok(None) => {}
            Err(e) => return Err(End::Protocol(e.to_string())),
        }
    }
}

/// The SSE request path of a subscriber (gateway `/sse?channel=C`, or the `--sub-url` template).
pub(super) fn sse_path(sh: &Shared, sub: &Sub, url: &Url) -> String {
    let channel = &sh.book.names[sub.acct.channel];
    if sh.plan.template {
        fill(&url.path, channel)
    } else {
        format!("/sse?channel={channel}")
    }
}
