//! How a [`super::FrameReader`] turns a compressed message (RFC 7692: the sender stripped the
//! trailing `00 00 ff ff`, appended back here) into text, by what the server answered and by
//! `--inflate-once`:
//!
//! - no server context: every message inflates from an empty window, so one inflater per
//!   thread, reset per message, serves every connection;
//! - server context: the connection's own inflater, never reset (about 43 KiB per connection,
//!   as real clients keep): exact for any server;
//! - `--inflate-once`: the thread's [`Memo`], keyed by the message's bytes and the connection's
//!   previous compressed message (none without server context), exact for a server whose
//!   messages refer back at most into the previous compressed message (see [`crate::memo`]).
//!
//! Uncompressed messages never enter the window: they leave the decoder as it is.

use std::cell::RefCell;

use flate2::Decompress;

use super::{MAX_MESSAGE, SYNC_TAIL};
use crate::memo::{Memo, Text};

/// Distinct messages remembered per thread with `--inflate-once`: enough for subscribers some
/// way behind one another (a few hundred KiB per thread).
const MEMO: usize = 128;

thread_local! {
    /// The thread's inflater and buffer, and with `--inflate-once` its recent messages.
    static THREAD: RefCell<Memo> = RefCell::new(Memo::new(MEMO));
}

/// One connection's way of inflating messages.
#[derive(Debug, Default)]
pub(super) enum Decoder {
    /// No server context: the thread's inflater, reset per message.
    #[default]
    Fresh,
    /// Server context: the connection's own inflater, created on its first compressed message.
    Own(Option<Box<Decompress>>),
    /// `--inflate-once`; `prev`: the text of the previous compressed message (kept only with
    /// server context: without, every message follows an empty window).
    Once { context: bool, prev: Option<Text> },
}

impl Decoder {
    /// The decoder for `--inflate-once` (`once`) and the server's answer (`context`: it keeps
    /// its compression context).
    pub(super) fn new(once: bool, context: bool) -> Self {
        match (once, context) {
            (true, _) => Self::Once {
                context,
                prev: None,
            },
            (false, true) => Self::Own(None),
            (false, false) => Self::Fresh,
        }
    }

    /// Whether the window survives messages: then every compressed message, binary ones too,
    /// must go through it.
    pub(super) fn keeps_context(&self) -> bool {
        match self {
            Self::Fresh => false,
            Self::Own(_) => true,
            Self::Once { context, .. } => *context,
        }
    }

    /// Inflates one compressed message and hands its text to `f`.
    pub(super) fn inflate<R>(
        &mut self,
        payload: &[u8],
        f: impl FnOnce(&[u8]) -> R,
    ) -> Result<R, String> {
        THREAD.with(|cell| {
            let m = &mut *cell.borrow_mut();
            match self {
                Self::Fresh => {
                    let (text, _) = m.fresh(payload, &SYNC_TAIL, MAX_MESSAGE)?;
                    Ok(f(text))
                }
                Self::Own(slot) => {
                    let d = slot.get_or_insert_with(|| Box::new(Decompress::new(false)));
                    let (text, ended) = m.with(d, payload, &SYNC_TAIL, MAX_MESSAGE)?;
                    let r = f(text);
                    if ended {
                        // A final block ends the server's deflate stream: the next message
                        // starts from an empty window (as the gateway's own inflater does).
                        *slot = None;
                    }
                    Ok(r)
                }
                Self::Once { context, prev } => {
                    let ctx = prev.as_ref().filter(|_| *context);
                    let got = m
                        .inflate(payload, &SYNC_TAIL, ctx, MAX_MESSAGE, |_| true)?
                        .ok_or_else(|| "message not inflated".to_owned())?;
                    if *context {
                        *prev = (!got.ended).then(|| got.text.clone());
                    }
                    Ok(f(&got.text))
                }
            }
        })
    }
}
