//! Wiring: builds the engine, hub and HTTP server from validated settings and runs them until the
//! shutdown future resolves, then drains.

use std::any::Any;
use std::future::Future;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_cors::Cors;
use actix_web::http::header;
use actix_web::middleware::Condition;
use actix_web::{App, HttpResponse, HttpServer, web};

use crate::auth::Authenticator;
use crate::config::Settings;
use crate::engine::Engine;
use crate::engine::memory::MemoryEngine;
use crate::engine::redis::RedisEngine;
use crate::error::ApiError;
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
    let origins = settings.cors.allow_origins.clone();
    let server = HttpServer::new(move || {
        // Runs on each worker thread: fan-out wakes this worker's connections in batches.
        crate::hub::worker::Worker::install();
        App::new()
            .app_data(web::Data::new(state.clone()))
            .wrap(Condition::new(!origins.is_empty(), cors(&origins)))
            .configure(routes)
    })
    .workers(workers)
    // Events are small frames that must leave at once; Nagle would hold them back for an ACK.
    .tcp_nodelay(true)
    .max_connections(per_worker)
    .client_request_timeout(Duration::from_secs(settings.server.request_timeout_seconds))
    .client_disconnect_timeout(Duration::from_secs(1))
    // A streaming client that closes its side is gone; don't keep writing until a write fails.
    .h1_allow_half_closed(false)
    .shutdown_timeout(settings.server.shutdown_timeout_seconds)
    .disable_signals()
    .on_connect(move |conn, _| tune_socket(conn, user_timeout))
    .listen(listener)?
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
    Err(ApiError::new(
        actix_web::http::StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint",
    ))
}

async fn not_allowed() -> Result<HttpResponse, ApiError> {
    Err(ApiError::new(
        actix_web::http::StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not accept that method",
    ))
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

/// Lets the kernel drop peers that stop acknowledging our writes: actix stops polling a body
/// whose write buffer is full, so a stalled client would otherwise hold its socket forever.
fn tune_socket(conn: &dyn Any, user_timeout: Option<Duration>) {
    if let Some(stream) = conn.downcast_ref::<actix_web::rt::net::TcpStream>() {
        let sock = socket2::SockRef::from(stream);
        if let Err(e) = sock.set_tcp_user_timeout(user_timeout) {
            tracing::debug!(error = %e, "could not set TCP_USER_TIMEOUT");
        }
    }
}
