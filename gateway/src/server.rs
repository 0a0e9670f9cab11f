//! Wiring: builds the engine, hub and HTTP server from validated settings and runs them until the
//! shutdown future resolves, then drains.

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use actix_codec::Framed;
use actix_cors::Cors;
use actix_http::{HttpService, Protocol, h1};
use actix_service::{Service, ServiceFactory, fn_factory, fn_service, map_config};
use actix_web::body::MessageBody;
use actix_web::dev::{AppConfig, ServiceRequest, ServiceResponse};
use actix_web::http::header;
use actix_web::middleware::Condition;
use actix_web::rt::net::TcpStream;
use actix_web::{App, HttpResponse, web};
use futures_util::FutureExt;

use crate::auth::Authenticator;
use crate::config::Settings;
use crate::engine::Engine;
use crate::engine::memory::MemoryEngine;
use crate::engine::redis::RedisEngine;
use crate::error::ApiError;
use crate::front::{self, Front, Prefixed};
use crate::hub::{Hook, Hub, HubConfig};
use crate::metrics::Metrics;
use crate::state::{AppState, ConnectionLimiter};
use crate::{ops, publish, transport};

/// Extras for embedding the gateway (tests).
#[derive(Default, Clone)]
pub struct RunOptions {
    /// Called at the hub's race points; see [`crate::hub::HookPoint`].
    #[doc(hidden)]
    pub hook: Option<Hook>,
}

/// Builds the configured engine (no I/O yet).
pub fn build_engine(
    settings: &Settings,
    metrics: &Metrics,
) -> Result<Engine, crate::engine::EngineError> {
    Ok(match &settings.redis.url {
        Some(_) => Engine::Redis(RedisEngine::new(settings, metrics.clone())?),
        None => Engine::Memory(MemoryEngine::new(
            settings.history.size,
            settings.history_ttl(),
        )),
    })
}

fn hub_config(settings: &Settings) -> HubConfig {
    HubConfig {
        queue_size: settings.limits.queue_size,
        channel_cache: settings.limits.channel_cache,
        page_size: 500,
        subscribe_timeout: Duration::from_secs(settings.limits.subscribe_timeout_seconds),
        shards: 64,
        // The memory engine delivers synchronously and cannot lose a live message.
        head_check: match (&settings.redis.url, settings.redis.head_check_seconds) {
            (Some(_), secs) if secs > 0 => Some(Duration::from_secs(secs)),
            _ => None,
        },
    }
}

/// Serves on `listener` until `shutdown` resolves, then stops accepting, tells streaming clients
/// to reconnect elsewhere and drains for at most `server.shutdown_timeout_seconds`. Must run
/// inside an actix system (e.g. `#[actix_web::main]` or `actix_rt::System::new().block_on`).
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + 'static,
    options: RunOptions,
) -> std::io::Result<()> {
    let settings = Arc::new(settings);
    let metrics = Metrics::new();
    let engine = build_engine(&settings, &metrics).map_err(std::io::Error::other)?;
    let hub = Hub::new(
        engine.clone(),
        hub_config(&settings),
        metrics.clone(),
        options.hook,
    );
    let state = AppState {
        hub: hub.clone(),
        settings: settings.clone(),
        metrics,
        limiter: ConnectionLimiter::new(settings.server.max_connections),
        auth: Arc::new(Authenticator::new(&settings.auth)),
    };
    let workers = match settings.server.workers {
        0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
        n => n,
    };
    // actix counts per worker; keep its limit above ours so excess clients get our 503.
    let per_worker = settings.server.max_connections.div_ceil(workers) + 256;
    let user_timeout = match settings.server.tcp_user_timeout_seconds {
        0 => None,
        s => Some(Duration::from_secs(s)),
    };
    let request_timeout = Duration::from_secs(settings.server.request_timeout_seconds);
    let addr = listener.local_addr()?;
    let mut builder = actix_server::Server::build();
    let graceful = builder.graceful_shutdown_signal();
    builder = builder
        .workers(workers)
        .max_concurrent_connections(per_worker)
        .shutdown_timeout(settings.server.shutdown_timeout_seconds)
        .disable_signals();
    let server = builder
        .listen("gateway", listener, move || {
            // Runs on each worker thread: fan-out wakes this worker's connections in batches.
            crate::hub::worker::Worker::install();
            let graceful = graceful.clone();
            let upgrade_state = state.clone();
            let http = HttpService::<Prefixed, _, _>::build()
                .client_request_timeout(request_timeout)
                .client_disconnect_timeout(Duration::from_secs(1))
                // A streaming client that closes its side is gone; don't keep writing to it.
                .h1_allow_half_closed(false)
                .local_addr(addr)
                .graceful_shutdown_signal(move || {
                    let signal = graceful.clone();
                    async move { signal.notified().await }
                })
                // Every request that takes over its connection (WebSocket upgrades) is served on
                // the raw socket, as a first request is; see `front::upgrade`.
                .upgrade(fn_service(
                    move |(req, framed): (actix_http::Request, Framed<Prefixed, h1::Codec>)| {
                        front::upgrade::serve(upgrade_state.clone(), req, framed)
                            .map(Ok::<_, std::convert::Infallible>)
                    },
                ))
                .finish(map_config(app(state.clone()), |_| AppConfig::default()));
            let state = state.clone();
            fn_factory(move || {
                let init = ServiceFactory::<(Prefixed, Protocol, Option<SocketAddr>)>::new_service(
                    &http,
                    (),
                );
                let state = state.clone();
                async move {
                    let handler = Rc::new(init.await.map_err(|e| {
                        tracing::error!(error = ?e, "cannot start the HTTP service");
                    })?);
                    let legacy: front::Legacy = Rc::new(move |io, peer| {
                        let handler = handler.clone();
                        Box::pin(async move {
                            if let Err(e) = handler.call((io, Protocol::Http1, peer)).await {
                                tracing::debug!(error = %e, "HTTP connection ended with an error");
                            }
                        })
                    });
                    let front = Rc::new(Front {
                        state,
                        legacy,
                        request_timeout,
                        user_timeout,
                    });
                    Ok::<_, ()>(fn_service(move |stream: TcpStream| {
                        front::serve(front.clone(), stream).map(Ok::<_, ()>)
                    }))
                }
            })
        })?
        .run();
    let handle = server.handle();
    actix_web::rt::spawn(async move {
        shutdown.await;
        tracing::info!(
            "shutting down: refusing new connections and asking clients to reconnect elsewhere"
        );
        handle.pause().await;
        hub.shutdown();
        handle.stop(true).await;
    });
    let result = server.await;
    engine.stop();
    tracing::info!("stopped");
    result
}

/// The actix-web app: every route, with CORS where configured.
fn app(
    state: AppState,
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    let origins = state.settings.cors.allow_origins.clone();
    App::new()
        .app_data(web::Data::new(state))
        .wrap(Condition::new(!origins.is_empty(), cors(&origins)))
        .configure(routes)
}

/// Binds the listening socket with a real backlog: `std::net::TcpListener::bind` listens with
/// 128, which overflows when thousands of clients reconnect at once (an instance restart or a
/// storm), and actix's own backlog setting does not apply to a listener it is handed.
pub fn bind(addr: std::net::SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    Ok(socket.into())
}

/// Registers every route.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/ws")
            .route(web::get().to(transport::ws::handler))
            .default_service(web::to(not_allowed)),
    )
    .service(
        web::resource("/sse")
            .route(web::get().to(transport::sse::handler))
            .default_service(web::to(not_allowed)),
    )
    .service(
        web::resource("/publish")
            .route(web::post().to(publish::handler))
            .default_service(web::to(not_allowed)),
    )
    .service(web::resource("/healthz").route(web::get().to(ops::healthz)))
    .service(web::resource("/readyz").route(web::get().to(ops::readyz)))
    .service(web::resource("/metrics").route(web::get().to(ops::metrics)))
    .service(web::resource("/").route(web::get().to(index)))
    .service(web::resource("/client.js").route(web::get().to(client_js)))
    .default_service(web::to(not_found));
}

/// The demo page: the first thing a new user sees after starting the gateway.
async fn index() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(include_str!("../static/index.html"))
}

/// The JavaScript client, an ES module with no dependencies.
async fn client_js() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/javascript; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(include_str!("../static/client.js"))
}

async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(not_found_error())
}

async fn not_allowed() -> Result<HttpResponse, ApiError> {
    Err(method_not_allowed())
}

/// The answer to a request for a path the gateway does not serve.
pub(crate) fn not_found_error() -> ApiError {
    ApiError::new(
        actix_web::http::StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint",
    )
}

/// The answer to a known path asked with the wrong method.
pub(crate) fn method_not_allowed() -> ApiError {
    ApiError::new(
        actix_web::http::StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not accept that method",
    )
}

fn cors(origins: &[String]) -> Cors {
    let mut cors = Cors::default()
        .allowed_methods(["GET", "POST"])
        .allowed_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::HeaderName::from_static("last-event-id"),
        ])
        .block_on_origin_mismatch(false)
        .max_age(3600);
    if origins.iter().any(|o| o == "*") {
        cors = cors.allow_any_origin().send_wildcard();
    } else {
        for origin in origins {
            cors = cors.allowed_origin(origin);
        }
    }
    cors
}
