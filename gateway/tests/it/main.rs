//! Integration tests: real redis-server and gateway processes (or in-process gateways where a
//! test needs hooks), each test on its own free ports.

mod admin;
mod auth_hook;
mod auth_tokens;
mod batch_api;
mod batch_race;
mod cli;
mod client_ip;
mod cluster;
mod common;
mod connections;
mod engine;
mod fanout;
mod faults;
mod front;
mod gap;
mod history;
mod hostile;
mod http_api;
mod logs;
mod lost_writes;
mod matrix;
mod operator;
mod poll;
mod presence;
mod pubsub_drop;
mod race;
mod redis_cluster;
mod redis_tls;
mod resume;
mod sentinel;
mod shipped;
mod tls_reload;
mod topology;
mod ws;
mod ws_upgrade;
