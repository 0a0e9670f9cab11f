//! `loadtest`: measures how many connections one box holds, how many messages per second it fans
//! out, how fast, and checks every event for loss, duplication and order — for the gateway, and
//! through URL templates for other push servers (e.g. Nchan) with the same code.
//!
//! Built to be cheap, since it shares the machine with the server under test: subscribers are
//! raw TCP connections speaking SSE by hand (no allocation per event, no JSON parsing on the hot
//! path; over HTTP/1.1, or over HTTP/2 framed by hand too; TLS through rustls) or WebSocket
//! through tokio-tungstenite, on a single-threaded runtime by default.
//! Only loopback targets are accepted; every run is bounded and stops by itself.
#![deny(clippy::unwrap_used, clippy::expect_used)]

mod account;
mod cli;
mod conn;
#[cfg(test)]
mod deflate_testing;
mod failover;
mod h2;
mod http;
mod inflate;
mod memo;
mod net;
mod payload;
mod phase;
mod procfs;
mod publish;
mod redis_nodes;
mod report;
mod scenario;
mod sse;
mod stats;
mod target;
mod ws_wire;

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::GenCert(a) = &cli.command {
        return match net::gen_cert(&a.out) {
            Ok(()) => {
                println!("{}", a.out.join("cert.pem").display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("loadtest: gen-cert: {e:#}");
                ExitCode::from(2)
            }
        };
    }
    if let Command::Combine(a) = &cli.command {
        return match scenario::combine(&a.files) {
            Ok(v) => {
                println!("{v}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("loadtest: {e:#}");
                ExitCode::from(2)
            }
        };
    }
    // Every run stops by itself: a watchdog ends the process at the cap whatever happens.
    std::thread::spawn(|| {
        std::thread::sleep(scenario::MAX_RUN);
        eprintln!(
            "loadtest: the {} s time cap was reached; stopping",
            scenario::MAX_RUN.as_secs()
        );
        std::process::exit(3);
    });
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) if n < 1024 => eprintln!("loadtest: warning: only {n} file descriptors allowed"),
        Ok(_) => {}
        Err(e) => eprintln!("loadtest: warning: could not raise the file-descriptor limit: {e}"),
    }
    let (threads, quiet, report_dir) = match &cli.command {
        Command::Idle(a) => (a.common.threads, a.common.quiet, a.common.report.clone()),
        Command::Fanout(a) => (a.common.threads, a.common.quiet, a.common.report.clone()),
        Command::Channels(a) => (a.common.threads, a.common.quiet, a.common.report.clone()),
        Command::Saturate(a) => (a.common.threads, a.common.quiet, a.common.report.clone()),
        Command::Storm(a) => (a.common.threads, a.common.quiet, a.common.report.clone()),
        Command::Publish(a) => (a.common.threads, a.common.quiet, a.common.report.clone()),
        Command::Failover(a) => (a.common.threads, a.common.quiet, a.common.report.clone()),
        Command::Combine(_) | Command::GenCert(_) => (1, true, None),
    };
    let runtime = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("loadtest: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Idle(a) => scenario::idle(a).await,
            Command::Fanout(a) => scenario::fanout(a).await,
            Command::Channels(a) => scenario::channels(a).await,
            Command::Saturate(a) => scenario::saturate(a).await,
            Command::Storm(a) => scenario::storm(a).await,
            Command::Publish(a) => scenario::publish_scenario(a).await,
            Command::Failover(a) => failover::failover(a).await,
            Command::Combine(_) | Command::GenCert(_) => unreachable!("handled above"),
        }
    });
    // Don't wait for stragglers (e.g. a hung connect) when shutting the runtime down.
    runtime.shutdown_timeout(Duration::from_secs(1));
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            eprintln!("loadtest: {e:#}");
            return ExitCode::from(2);
        }
    };
    println!("{}", report.to_json());
    eprintln!("\n{}", report.markdown());
    if let Some(dir) = report_dir {
        if let Err(e) = report.write_dir(&dir) {
            eprintln!("loadtest: writing the report to {}: {e:#}", dir.display());
            return ExitCode::from(2);
        }
        if !quiet {
            eprintln!("report written to {}", dir.display());
        }
    }
    ExitCode::SUCCESS
}
