//! The transport-agnostic core of a streaming connection: who may open one (`admit`), how a
//! channel is subscribed and resumed (`subscribe`), and how a request-scoped subscriber (SSE,
//! long poll) opens its channels (`open`). SSE, long poll and WebSocket call these and only
//! render the outcome (an HTTP error, a close code, an `error` reply); none decides anything
//! twice.

pub mod admit;
pub mod open;
pub mod subscribe;

pub use crate::state::Transport;
pub use admit::{Admitted, Refusal, admit};
pub use open::{Opened, open};
pub use subscribe::{Attached, Want, attach, join};
