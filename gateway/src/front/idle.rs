//! Idle HTTP/2 connections are closed: hyper times out every HTTP/1.1 request head, but an
//! HTTP/2 connection with no stream open — idle, or trickling a HEADERS frame a byte at a time
//! (slowloris) — would otherwise hold its connection slot forever. A stream counts as open from
//! the moment its request reaches the service until its response body is done or dropped.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Response;
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::response::Body;

/// Open streams on one connection, and since when it has had none. (Shared with response
/// bodies, which must be `Send`, hence atomics; a connection's streams all run on its worker.)
struct Activity {
    open: AtomicUsize,
    idle_since: Mutex<Instant>,
}

/// Counts a connection's open streams.
#[derive(Clone)]
pub struct Tracker(Arc<Activity>);

impl Tracker {
    /// A connection with no stream yet: idle from now.
    pub fn new() -> Self {
        Self(Arc::new(Activity {
            open: AtomicUsize::new(0),
            idle_since: Mutex::new(Instant::now()),
        }))
    }

    /// A stream starts; it ends when the guard drops.
    pub fn enter(&self) -> Guard {
        self.0.open.fetch_add(1, Ordering::Relaxed);
        Guard(self.0.clone())
    }

    /// How long the connection has had no open stream; `None` while one is open.
    pub fn idle_for(&self) -> Option<Duration> {
        (self.0.open.load(Ordering::Relaxed) == 0).then(|| self.0.idle_since.lock().elapsed())
    }
}

/// One open stream.
pub struct Guard(Arc<Activity>);

impl Guard {
    /// Keeps the stream open until `response`'s body is finished or dropped.
    pub fn hold(self, response: Response<Body>) -> Response<Body> {
        response.map(|body| Tracked { body, _guard: self }.boxed_unsync())
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::Relaxed) == 1 {
            *self.0.idle_since.lock() = Instant::now();
        }
    }
}

/// A response body that holds its stream's guard.
struct Tracked {
    body: Body,
    _guard: Guard,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::response;

    #[tokio::test(start_paused = true)]
    async fn a_connection_is_idle_only_while_no_stream_is_open() {
        let tracker = Tracker::new();
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(tracker.idle_for(), Some(Duration::from_secs(2)));
        let guard = tracker.enter();
        assert_eq!(tracker.idle_for(), None);
        let res = guard.hold(Response::new(response::full("x")));
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(tracker.idle_for(), None, "the body is still to be sent");
        drop(res);
        assert_eq!(tracker.idle_for(), Some(Duration::ZERO));
    }
}
