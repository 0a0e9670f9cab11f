//! Metrics about the instance rather than its traffic: which build it runs, and the standard
//! process metrics (CPU, memory, descriptors).

use prometheus::{IntGaugeVec, Opts, Registry};

use super::register;

/// The commit the binary was built from (`gateway/build.rs`: git, `GATEWAY_COMMIT`, or
/// `unknown`), for `gateway_build_info`.
pub const COMMIT: &str = env!("GATEWAY_COMMIT");

/// The crate version, for `gateway_build_info`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// `gateway_build_info{version,commit} 1`: which build each instance runs, joinable onto any
/// other series by `instance`.
pub(super) fn register_build_info(r: &Registry) {
    let info = IntGaugeVec::new(
        Opts::new(
            "gateway_build_info",
            "Always 1; the labels say which build this instance runs.",
        ),
        &["version", "commit"],
    )
    .unwrap_or_else(|e| panic!("metric gateway_build_info: {e}"));
    let info = register(r, info);
    info.with_label_values(&[VERSION, COMMIT]).set(1);
}

/// The standard `process_*` metrics (CPU seconds, resident and virtual memory, open and maximum
/// file descriptors, start time, threads) read from /proc by the prometheus crate.
#[cfg(target_os = "linux")]
pub(super) fn register_process(r: &Registry) {
    let collector = prometheus::process_collector::ProcessCollector::for_self();
    r.register(Box::new(collector))
        .unwrap_or_else(|e| panic!("registering process metrics: {e}"));
}

/// No /proc: no `process_*` metrics.
#[cfg(not(target_os = "linux"))]
pub(super) fn register_process(_: &Registry) {}
