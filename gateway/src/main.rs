//! `gateway`: read settings, then serve or run a subcommand. Exit codes: 0 ok, 1 runtime
//! failure, 2 invalid configuration.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use gateway::cli::{Cli, Command};
use gateway::config::Settings;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("gateway: {e}");
            return ExitCode::from(2);
        }
    };
    gateway::telemetry::init(&settings.log);
    gateway::telemetry::log_panics();
    // Every client is a file descriptor: use all the process may have.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "file descriptor limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the file descriptor limit"),
    }
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(settings),
        Command::Publish(args) => {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("gateway: {e}");
                    return ExitCode::from(1);
                }
            };
            match runtime.block_on(gateway::cli::publish(&settings, args)) {
                Ok(id) => {
                    println!("{id}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("gateway: publish failed: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
        Command::RedisFunction => {
            print!(
                "{}",
                gateway::engine::redis::library::source(
                    gateway::engine::redis::library::Flavour::of(&settings)
                )
            );
            ExitCode::SUCCESS
        }
        Command::CheckConfig => match toml::to_string_pretty(&settings) {
            // The effective settings as a TOML file would give them; secrets print as
            // "<redacted>" (`config::Secret`, URL passwords).
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("gateway: cannot print the settings: {e}");
                ExitCode::from(1)
            }
        },
    }
}

fn serve(settings: Settings) -> ExitCode {
    let addr = match settings.listen_addr() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("gateway: {e}");
            return ExitCode::from(2);
        }
    };
    let listener = match gateway::server::bind(addr, settings.server.backlog) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(address = %addr, error = %e, "cannot listen");
            return ExitCode::from(1);
        }
    };
    let local = listener
        .local_addr()
        .map_or_else(|_| addr.to_string(), |a| a.to_string());
    let engine = if settings.redis.enabled() {
        "redis"
    } else {
        "memory"
    };
    // A bad certificate or key is a configuration error, told before anything listens.
    if let Err(e) = gateway::server::load_tls(&settings) {
        eprintln!("gateway: {e}");
        return ExitCode::from(2);
    }
    let scheme = if settings.server.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    actix_rt::System::new().block_on(async move {
        // Signals are listened for before anything announces the address: a SIGTERM sent as
        // soon as the address is known must drain the gateway, not kill it.
        let signals = Signals::install();
        // The banner is a log line like any other (format and filter from `log`); scripts and
        // tests that start on port 0 read the address from `server.address_file` instead.
        if let Err(e) = gateway::telemetry::banner(
            scheme,
            &local,
            engine,
            settings.server.address_file.as_deref(),
        ) {
            tracing::error!(error = %e, "cannot write server.address_file");
            return ExitCode::from(1);
        }
        let run = gateway::run(
            settings,
            listener,
            signals.shutdown(),
            gateway::RunOptions::default(),
        );
        match run.await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %e, "gateway failed");
                ExitCode::from(1)
            }
        }
    })
}

/// SIGTERM and SIGINT, listened for from the moment this is made.
struct Signals {
    term: Option<tokio::signal::unix::Signal>,
    int: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn install() -> Self {
        use tokio::signal::unix::{SignalKind, signal};
        let listen = |kind, name: &str| match signal(kind) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(error = %e, signal = name, "cannot listen for this signal");
                None
            }
        };
        Self {
            term: listen(SignalKind::terminate(), "SIGTERM"),
            int: listen(SignalKind::interrupt(), "SIGINT"),
        }
    }

    /// The next SIGTERM or SIGINT.
    async fn next(&mut self) {
        let term = async {
            match &mut self.term {
                Some(s) => s.recv().await,
                None => std::future::pending().await,
            }
        };
        let int = async {
            match &mut self.int {
                Some(s) => s.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = term => {}
            _ = int => {}
        }
    }

    /// Resolves on the first signal; a second one during the drain exits at once.
    async fn shutdown(mut self) {
        self.next().await;
        actix_rt::spawn(async move {
            self.next().await;
            tracing::warn!("second signal, exiting without draining");
            std::process::exit(130);
        });
    }
}
