//! The HTTP service hyper runs for every request it reads, on HTTP/1.1 and HTTP/2 alike: the
//! head rules, routing, CORS, and the hand-off of WebSocket upgrades to the connection.

use std::cell::Cell;
use std::convert::Infallible;
use std::net::IpAddr;
use std::rc::Rc;
use std::time::Duration;

use futures_util::future::LocalBoxFuture;
use http::header::ORIGIN;
use http::{Method, Request, Response};
use hyper::body::Incoming;
use shared::ErrorCode;

use super::idle::Tracker;
use super::{Front, cors, limits, upgraded};
use crate::browser;
use crate::error::ApiError;
use crate::response::{self, Body};
use crate::state::AppState;
use crate::transport::ws::Upgrade;
use crate::{admin, ops, publish, transport};

/// Where a WebSocket handler leaves its accepted upgrade for the connection to run once hyper
/// has handed the socket back.
#[derive(Clone, Default)]
pub struct UpgradeSlot(Rc<Cell<Option<Upgrade>>>);

impl UpgradeSlot {
    /// An empty slot.
    pub fn new() -> Self {
        Self::default()
    }

    /// The upgrade accepted on this connection, if any, as the session to run.
    pub fn take(&self) -> Option<LocalBoxFuture<'static, ()>> {
        self.0.take().map(upgraded::run)
    }
}

/// hyper's service for one connection.
pub struct Service {
    inner: Rc<Inner>,
}

struct Inner {
    state: AppState,
    upgrade: UpgradeSlot,
    /// Counts open streams (HTTP/2, where idle connections are closed by it).
    tracker: Option<Tracker>,
    body_timeout: Duration,
    /// The connection's peer (the client, or the proxy that names it).
    peer: IpAddr,
}

impl Service {
    /// The service for one connection; with a tracker, every stream counts as open until its
    /// response is done.
    pub fn new(
        state: AppState,
        upgrade: UpgradeSlot,
        tracker: Option<Tracker>,
        front: &Front,
        peer: IpAddr,
    ) -> Self {
        Self {
            inner: Rc::new(Inner {
                state,
                upgrade,
                tracker,
                body_timeout: front.request_timeout,
                peer,
            }),
        }
    }
}

impl hyper::service::Service<Request<Incoming>> for Service {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = LocalBoxFuture<'static, Result<Response<Body>, Infallible>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let inner = self.inner.clone();
        let guard = inner.tracker.as_ref().map(Tracker::enter);
        Box::pin(async move {
            let res = handle(&inner, req).await;
            Ok(match guard {
                Some(guard) => guard.hold(res),
                None => res,
            })
        })
    }
}

/// Checks the head, routes, and adds CORS headers to whatever the answer is.
async fn handle(inner: &Inner, req: Request<Incoming>) -> Response<Body> {
    let state = &inner.state;
    let started = std::time::Instant::now();
    let access = state.settings.log.access.then(|| {
        let client = state.trusted.client(inner.peer, req.headers());
        (req.method().clone(), req.uri().path().to_owned(), client)
    });
    let allowed = &state.settings.cors.allow_origins;
    let origin = req.headers().get(ORIGIN).cloned();
    let host = browser::host_of(req.headers(), req.uri().authority().map(|a| a.as_str()));
    let checked = limits::check_head(req.version(), req.headers())
        .and_then(|()| browser::check_host(&state.settings, req.uri().path(), host));
    let mut res = match checked {
        Ok(()) => route(inner, req).await,
        Err(e) => {
            if e.code() == ErrorCode::BadRequestHead {
                crate::telemetry::malformed("head", &e);
            }
            state.metrics.rejected.with_label_values(&[e.code()]).inc();
            e.into_response()
        }
    };
    cors::apply(allowed, origin.as_ref(), res.headers_mut());
    if let Some((method, path, client)) = access {
        crate::telemetry::access(&method, &path, res.status(), started, client);
    }
    res
}

async fn route(inner: &Inner, mut req: Request<Incoming>) -> Response<Body> {
    let state = &inner.state;
    if let Some(res) = cors::preflight(
        &state.settings.cors.allow_origins,
        req.method(),
        req.headers(),
    ) {
        return res;
    }
    let get = req.method() == Method::GET;
    match req.uri().path() {
        "/sse" if get => {
            let query = req.uri().query().unwrap_or("");
            transport::sse::respond(state, query, req.headers(), inner.peer).await
        }
        "/history" if get => {
            let query = req.uri().query().unwrap_or("");
            transport::history::respond(state, query, req.headers()).await
        }
        "/presence" | "/presence/stats" if get => {
            let query = req.uri().query().unwrap_or("");
            let stats = req.uri().path() == "/presence/stats";
            transport::presence::respond(state, query, req.headers(), stats).await
        }
        "/poll" if get => {
            let query = req.uri().query().unwrap_or("");
            transport::poll::respond(state, query, req.headers(), inner.peer).await
        }
        "/ws" if get => {
            let (res, upgrade) = transport::ws::respond(state, &mut req, inner.peer).await;
            if let Some(upgrade) = upgrade {
                inner.upgrade.0.set(Some(upgrade));
            }
            res
        }
        "/publish" if req.method() == Method::POST => {
            publish::respond(state, req, inner.body_timeout).await
        }
        "/admin" | "/admin/feed" if !state.settings.admin.enabled => not_found().into_response(),
        "/admin" if get => admin::page(),
        "/admin/feed" if get => admin::feed(state, req.headers()),
        "/healthz" if get => ops::healthz(),
        "/readyz" if get => ops::readyz(state).await,
        "/metrics" if get => ops::metrics(state),
        "/" if get => response::page(
            "text/html; charset=utf-8",
            include_str!("../../static/index.html"),
        ),
        "/client.js" if get => response::page(
            "text/javascript; charset=utf-8",
            include_str!("../../static/client.js"),
        ),
        "/client-poll.js" if get => response::page(
            "text/javascript; charset=utf-8",
            include_str!("../../static/client-poll.js"),
        ),
        "/sse" | "/ws" | "/publish" | "/history" | "/presence" | "/presence/stats" | "/poll"
        | "/healthz" | "/readyz" | "/metrics" | "/" | "/client.js" | "/client-poll.js"
        | "/admin" | "/admin/feed" => method_not_allowed().into_response(),
        _ => not_found().into_response(),
    }
}

/// The answer to a request for a path the gateway does not serve.
pub fn not_found() -> ApiError {
    ApiError::new(
        http::StatusCode::NOT_FOUND,
        ErrorCode::NotFound,
        "no such endpoint",
    )
}

/// The answer to a known path asked with the wrong method.
pub fn method_not_allowed() -> ApiError {
    ApiError::new(
        http::StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::MethodNotAllowed,
        "this endpoint does not accept that method",
    )
}
