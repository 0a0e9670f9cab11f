//! The gateway library: everything `main` wires together, usable in-process by tests.
#![forbid(unsafe_code)]
#![deny(clippy::unwrap_used, clippy::expect_used)]

pub mod admin;
pub mod auth;
pub mod auth_hook;
pub mod backoff;
pub mod browser;
pub mod bucket;
pub mod cli;
pub mod client_ip;
pub mod compression;
pub mod config;
pub mod engine;
pub mod error;
pub mod front;
pub mod hub;
pub mod ip_limits;
pub mod metrics;
pub mod ops;
pub mod presence;
pub mod publish;
pub mod response;
pub mod rt;
pub mod server;
pub mod session;
pub mod state;
pub mod telemetry;
pub mod transport;

pub use server::{RunOptions, run};
