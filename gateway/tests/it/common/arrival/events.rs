//! SSE streams over any arrival, decoded as a browser would.

use super::*;

/// `GET <path>` (an SSE request) over `arrival` with extra headers (`Last-Event-ID`,
/// `Authorization`, `Origin`...); panics if there is no response.
pub async fn open_sse(
    arrival: Arrival,
    gw: &Gateway,
    path: &str,
    headers: &[(&str, &str)],
) -> Reply {
    request(arrival, gw, Method::GET, path, headers, empty())
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// An SSE stream over `arrival`; panics unless it is served.
pub async fn sse(arrival: Arrival, gw: &Gateway, path: &str, headers: &[(&str, &str)]) -> Events {
    open_sse(arrival, gw, path, headers).await.events().await
}

pub(super) fn body_stream(body: Incoming) -> BoxStream<'static, Result<Bytes, String>> {
    futures_util::stream::unfold(Some(body), |state| async move {
        let mut body = state?;
        loop {
            match body.frame().await {
                None => return None,
                Some(Err(e)) => return Some((Err(format!("{e:?}")), None)),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        return Some((Ok(data), Some(body)));
                    }
                }
            }
        }
    })
    .boxed()
}

/// Bytes of the stream's end kept for [`Events::tail`].
pub(super) const TAIL: usize = 64 * 1024;

/// A compressed stream's decoder (`Content-Encoding: gzip` or `deflate`), fed chunk by chunk as
/// they arrive, so each event must be decodable without the bytes of the next.
enum Inflate {
    Gzip(flate2::write::GzDecoder<Vec<u8>>),
    Zlib(flate2::write::ZlibDecoder<Vec<u8>>),
}

impl Inflate {
    fn of(content_encoding: Option<&str>) -> Option<Self> {
        match content_encoding? {
            "gzip" => Some(Self::Gzip(flate2::write::GzDecoder::new(Vec::new()))),
            "deflate" => Some(Self::Zlib(flate2::write::ZlibDecoder::new(Vec::new()))),
            other => panic!("unexpected content-encoding {other}"),
        }
    }

    /// Everything `chunk` decodes to now.
    fn feed(&mut self, chunk: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let out = match self {
            Self::Gzip(d) => {
                d.write_all(chunk).and_then(|()| d.flush()).expect("gzip");
                d.get_mut()
            }
            Self::Zlib(d) => {
                d.write_all(chunk).and_then(|()| d.flush()).expect("zlib");
                d.get_mut()
            }
        };
        std::mem::take(out)
    }
}

/// A served SSE stream, decoded as a browser would.
pub struct Events {
    body: BoxStream<'static, Result<Bytes, String>>,
    /// The stream's content coding, undone before decoding.
    inflate: Option<Inflate>,
    decoder: SseDecoder,
    tail: Vec<u8>,
    /// Body bytes received as sent (before the content coding is undone).
    received: usize,
    _client: Client,
}

impl Events {
    /// Decodes `body`, keeping its connection (`client`) open as long as the stream.
    pub(super) fn new(body: Incoming, client: Client, content_encoding: Option<&str>) -> Self {
        Self {
            body: body_stream(body),
            inflate: Inflate::of(content_encoding),
            decoder: SseDecoder::new(),
            tail: Vec::new(),
            received: 0,
            _client: client,
        }
    }

    /// Reads one more chunk: false if the stream ended (or failed) or `deadline` passed.
    async fn pull(&mut self, deadline: tokio::time::Instant) -> Option<bool> {
        match tokio::time::timeout_at(deadline, self.body.next()).await {
            Err(_) => None,
            Ok(Some(Ok(chunk))) => {
                self.received += chunk.len();
                let chunk = match &mut self.inflate {
                    Some(inflate) => Bytes::from(inflate.feed(&chunk)),
                    None => chunk,
                };
                self.decoder.feed(&chunk);
                self.tail.extend_from_slice(&chunk);
                if self.tail.len() > TAIL {
                    self.tail.drain(..self.tail.len() - TAIL);
                }
                Some(true)
            }
            Ok(Some(Err(_)) | None) => Some(false),
        }
    }

    /// The next event, or `None` if none arrives within `wait` (or the stream ends).
    pub async fn next_within(&mut self, wait: Duration) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(e) = self.decoder.next_event() {
                return Some(e);
            }
            if self.pull(deadline).await != Some(true) {
                return None;
            }
        }
    }

    /// The next event; panics if none arrives within [`WAIT`].
    pub async fn next(&mut self) -> SseEvent {
        self.next_within(WAIT)
            .await
            .expect("expected an SSE event within the wait")
    }

    /// Exactly `n` events.
    pub async fn take(&mut self, n: usize) -> Vec<SseEvent> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.next().await);
        }
        out
    }

    /// Asserts nothing else arrives for `wait`.
    pub async fn assert_quiet(&mut self, wait: Duration) {
        if let Some(e) = self.next_within(wait).await {
            panic!("unexpected event {e:?}");
        }
    }

    /// Waits until the prelude (`retry:` and the starting id) has been read.
    pub async fn ready(&mut self) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.decoder.retry().is_none() {
            assert_eq!(
                self.pull(deadline).await,
                Some(true),
                "SSE prelude not received: {:?}",
                self.tail()
            );
        }
    }

    /// Reads until the stream ends (or `wait` passes); the events seen meanwhile and whether it
    /// ended.
    pub async fn read_to_end(&mut self, wait: Duration) -> (Vec<SseEvent>, bool) {
        let deadline = tokio::time::Instant::now() + wait;
        let mut events = Vec::new();
        loop {
            while let Some(e) = self.decoder.next_event() {
                events.push(e);
            }
            match self.pull(deadline).await {
                Some(true) => {}
                Some(false) => return (events, true),
                None => return (events, false),
            }
        }
    }

    /// What a browser would send as `Last-Event-ID` if it reconnected now.
    pub fn last_event_id(&self) -> String {
        self.decoder.last_event_id().to_owned()
    }

    /// Body bytes received so far, as they came (compressed when the stream is).
    pub fn received(&self) -> usize {
        self.received
    }

    /// The last bytes received (up to 64 KiB, after the content coding is undone), as text.
    pub fn tail(&self) -> String {
        String::from_utf8_lossy(&self.tail).into_owned()
    }
}

/// Sends SIGTERM to `gw` and asserts the drain: `stream` gets the closing comment and ends, and
/// the process exits 0 within `shutdown_timeout` (what it was started with).
pub async fn assert_sigterm_drains(gw: Gateway, mut stream: Events, shutdown_timeout: Duration) {
    let terminated = tokio::task::spawn_blocking(move || {
        let mut gw = gw;
        let started = std::time::Instant::now();
        let code = gw.terminate();
        (code, started.elapsed())
    });
    let (_, ended) = stream.read_to_end(Duration::from_secs(8)).await;
    let tail = stream.tail();
    assert!(ended, "the stream did not end: {tail:?}");
    assert!(
        tail.contains("\n: closing: shutdown\n"),
        "no closing comment: {tail:?}"
    );
    let (code, took) = terminated.await.expect("terminate");
    assert_eq!(code, Some(0), "exit code");
    assert!(
        took < shutdown_timeout,
        "the gateway took {took:?} to exit (shutdown timeout {shutdown_timeout:?})"
    );
}
