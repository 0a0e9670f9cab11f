//! Wiring: builds the engine, hub and server from validated settings and runs them until the
//! shutdown future resolves, then drains.

use std::future::Future;
use std::net::TcpListener;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use actix_service::fn_service;
use futures_util::FutureExt;
use tokio::net::TcpStream;

use crate::auth::Authenticator;
use crate::auth_hook::AuthHook;
use crate::client_ip::TrustedProxies;
use crate::config::Settings;
use crate::engine::Engine;
use crate::engine::memory::MemoryEngine;
use crate::engine::redis::RedisEngine;
use crate::front::publish_thread::PublishThread;
use crate::front::{self, Front, tls::Tls};
use crate::hub::{Hook, Hub, HubConfig};
use crate::ip_limits::IpLimits;
use crate::metrics::Metrics;
use crate::publish::Publishers;
use crate::state::{AppState, ConnectionLimiter};

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
    Ok(if settings.redis.enabled() {
        Engine::Redis(RedisEngine::new(settings, metrics.clone())?)
    } else {
        Engine::Memory(MemoryEngine::new(
            settings.history.size,
            settings.history_ttl(),
        ))
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
        head_check: match (settings.redis.enabled(), settings.redis.head_check_seconds) {
            (true, secs) if secs > 0 => Some(Duration::from_secs(secs)),
            _ => None,
        },
        presence: settings.presence.clone(),
    }
}

/// Loads the TLS configuration when `server.tls_cert` is set.
pub fn load_tls(settings: &Settings) -> std::io::Result<Option<Tls>> {
    match (&settings.server.tls_cert, &settings.server.tls_key) {
        (Some(cert), Some(key)) => {
            Tls::load(Path::new(cert), Path::new(key), settings.server.http2)
                .map(Some)
                .map_err(std::io::Error::other)
        }
        _ => Ok(None),
    }
}

/// Serves on `listener` until `shutdown` resolves, then stops accepting, tells streaming clients
/// to reconnect elsewhere and drains for at most `server.shutdown_timeout_seconds`. Must run
/// inside an actix system (e.g. `actix_rt::System::new().block_on`).
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + 'static,
    options: RunOptions,
) -> std::io::Result<()> {
    let settings = Arc::new(settings);
    let tls = load_tls(&settings)?;
    let metrics = Metrics::new();
    let engine = build_engine(&settings, &metrics).map_err(std::io::Error::other)?;
    let mut publish_thread = PublishThread::spawn(Duration::from_secs(
        settings.server.shutdown_timeout_seconds,
    ))?;
    // The hub's background work, the engine's pub/sub reader included, runs on the publish
    // thread: a publish made there reads its reply and its pub/sub message in one wake-up, and
    // no other thread has to wake for every event before the workers do.
    let hub = {
        let _on = publish_thread.runtime().enter();
        Hub::new(
            engine.clone(),
            hub_config(&settings),
            metrics.clone(),
            options.hook,
        )
    };
    let auth = Arc::new(Authenticator::new(&settings.auth).map_err(std::io::Error::other)?);
    auth.start().await.map_err(std::io::Error::other)?;
    let state = AppState {
        hub: hub.clone(),
        settings: settings.clone(),
        metrics,
        limiter: ConnectionLimiter::new(settings.server.max_connections),
        auth,
        publishers: Arc::new(Publishers::new(&settings.publish)),
        hook: AuthHook::new(&settings.auth).map(Arc::new),
        // Validated with the settings.
        trusted: Arc::new(
            TrustedProxies::parse(&settings.server.trusted_proxies).unwrap_or_default(),
        ),
        ip_limits: IpLimits::new(
            settings.limits.max_connections_per_ip,
            settings.limits.new_connections_per_ip_per_second,
        ),
        admin_feeds: crate::admin::Feeds::new(settings.admin.max_feeds),
    };
    let presence = hub.presence().clone();
    presence.start();
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
    if let Some(tls) = &tls {
        actix_rt::spawn(reload_on_sighup(tls.clone()));
    }
    let mut template = Front {
        state: state.clone(),
        request_timeout,
        user_timeout,
        tls: tls.clone(),
        http2: settings.server.http2,
        proxy_protocol: settings.server.proxy_protocol,
        handoff: None,
    };
    publish_thread.serve(template.clone());
    template.handoff = Some(publish_thread.handoff());
    let pace = settings.server.delivery_pace;
    let server = actix_server::Server::build()
        .workers(workers)
        .max_concurrent_connections(per_worker)
        .shutdown_timeout(settings.server.shutdown_timeout_seconds)
        .disable_signals()
        .listen("gateway", listener, move || {
            // Runs on each worker thread: fan-out wakes this worker's connections in batches.
            crate::hub::worker::Worker::install(pace);
            let front = Rc::new(template.clone());
            fn_service(move |stream: TcpStream| {
                front::serve(front.clone(), stream).map(Ok::<_, ()>)
            })
        })?
        .run();
    let handle = server.handle();
    actix_rt::spawn(async move {
        shutdown.await;
        tracing::info!(
            "shutting down: refusing new connections and asking clients to reconnect elsewhere"
        );
        handle.pause().await;
        hub.shutdown();
        handle.stop(true).await;
    });
    let result = server.await;
    publish_thread.join().await;
    presence.stop(Duration::from_secs(2)).await;
    engine.stop();
    tracing::info!("stopped");
    result
}

/// Re-reads the certificate and key on every SIGHUP (e.g. after a renewal).
async fn reload_on_sighup(tls: Tls) {
    let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; TLS files are not reloaded");
            return;
        }
    };
    while hup.recv().await.is_some() {
        match tls.reload() {
            Ok(()) => tracing::info!("TLS certificate and key reloaded"),
            Err(e) => {
                tracing::error!(error = %e, "TLS reload failed; keeping the previous certificate")
            }
        }
    }
}

/// Binds the listening socket with a real backlog: `std::net::TcpListener::bind` listens with
/// 128, which overflows when thousands of clients reconnect at once (an instance restart or a
/// storm).
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
