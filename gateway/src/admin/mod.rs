//! The operators' live status page (`[admin]`, off by default): `GET /admin` is a static,
//! self-contained page (its charts are drawn by its own script, nothing is loaded from
//! elsewhere) that holds no data; everything it shows comes from `GET /admin/feed`, one JSON
//! snapshot a second over Server-Sent Events.
//!
//! The feed is protected by the publish API key, checked by the same code as `POST /publish`
//! ([`crate::publish::Publishers::identify`]: constant-time, charged to the key's rate) and
//! sent by the page as `Authorization: Bearer` on a `fetch()`, so the key never appears in a
//! URL, a log line or a cookie. The key must cover every channel (`*`), since the page names
//! the busiest ones. With `admin.enabled = false` both paths answer 404 like any unknown path.

mod feed;
mod snapshot;
mod topology;

use http::header::{CACHE_CONTROL, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use shared::ErrorCode;

use crate::error::ApiError;
use crate::response::{self, Body};
use crate::state::AppState;

pub use feed::{FeedSlot, Feeds};
pub use snapshot::{Snapshot, quantile};
pub use topology::{Health, Topology};

/// The page: one HTML file with its script and styles inline.
const PAGE: &str = include_str!("page.html");

/// What the page may do: run its own inline script and styles, talk to this origin, and be
/// framed by nobody.
const PAGE_POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; \
     style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; \
     frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// `GET /admin`: the page (it asks for the key and then opens the feed).
pub fn page() -> Response<Body> {
    let mut res = response::page("text/html; charset=utf-8", PAGE);
    let headers = res.headers_mut();
    headers.insert(
        HeaderName::from_static("content-security-policy"),
        HeaderValue::from_static(PAGE_POLICY),
    );
    headers.insert(
        HeaderName::from_static("referrer-policy"),
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        HeaderName::from_static("x-content-type-options"),
        HeaderValue::from_static("nosniff"),
    );
    res
}

/// `GET /admin/feed`: the snapshot stream for a caller whose key covers every channel, or the
/// refusal (401 without a valid key, 403 for a key limited to some channels, 429 over the key's
/// rate, 503 when `admin.max_feeds` feeds are open).
pub fn feed(state: &AppState, headers: &HeaderMap) -> Response<Body> {
    let slot = authorize(state, headers).and_then(|()| state.admin_feeds.admit());
    match slot {
        Ok(slot) => {
            let frames = futures_util::StreamExt::map(feed::stream(state, slot), |bytes| {
                Ok(Frame::data(bytes))
            });
            let mut res = Response::new(StreamBody::new(frames).boxed_unsync());
            let headers = res.headers_mut();
            for (name, value) in crate::transport::sse::STREAM_HEADERS {
                headers.insert(
                    HeaderName::from_static(name),
                    HeaderValue::from_static(value),
                );
            }
            headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
            res
        }
        Err(e) => e.into_response(),
    }
}

/// The caller presents a publish API key that covers every channel.
fn authorize(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let caller = state.publishers.identify(headers)?;
    if caller.covers_every_channel() {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            "the status page needs an API key that may publish to every channel (`*`)",
        ))
    }
}
