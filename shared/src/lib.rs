//! Protocol types shared by the gateway and the load generator.
//!
//! Everything here is pure: no I/O, no runtime, no actix or Redis. The gateway uses these types
//! to validate input and frame output; the load generator and the tests use the same types to
//! parse what the gateway sends, so both sides can never disagree about the wire format.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod channel;
pub mod disconnect;
pub mod error_code;
pub mod event;
pub mod lineage;
pub mod position;
pub mod sse;
pub mod ws;

pub use channel::{ChannelError, ChannelName, pattern_matches};
pub use disconnect::Disconnect;
pub use error_code::ErrorCode;
pub use event::{Event, EventName, EventNameError, PayloadKind};
pub use lineage::{Ancestor, Continuity, Lineage};
pub use position::{Cursor, CursorError, Epoch, Position, PositionError};
