//! The transport-agnostic core of a streaming connection: who may open one (`admit`) and how a
//! channel is subscribed and resumed (`subscribe`). SSE and WebSocket call these and only render
//! the outcome (an HTTP error, a close code, an `error` reply); neither decides anything twice.

pub mod admit;
pub mod subscribe;

pub use crate::state::Transport;
pub use admit::{Admitted, Refusal, admit};
pub use subscribe::{Attached, attach, join};
