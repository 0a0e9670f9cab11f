//! Client transports: thin adapters that parse requests, attach connections to the hub and
//! write frames. No engine code lives here.

pub mod history;
pub mod page;
pub mod params;
pub mod poll;
pub mod presence;
pub mod request;
pub mod sse;
pub mod ws;
