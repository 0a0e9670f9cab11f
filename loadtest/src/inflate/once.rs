//! A gzip SSE stream with `--inflate-once`: cut into the pieces the gateway writes, each
//! distinct piece inflated once per thread ([`crate::memo`]) however many streams of the thread
//! carry it.
//!
//! After the gzip header the gateway writes raw deflate pieces: per event a piece compressed by
//! a fresh compressor, self-contained or chained (compressed after the previous event's frame,
//! referring back into it), each ending with a sync flush (`00 00 ff ff`); and what one
//! connection writes alone (preamble, heartbeats, gaps, cursor lines, closing comments) as
//! stored blocks, which do not end that way. So the stream is cut into segments, each ending
//! at a `00 00 ff ff`, inflated after the window of the previous segment's text. A
//! `00 00 ff ff` can also occur by chance inside compressed or stored data: a segment counts
//! only when its inflation consumed every byte without error and its text ends an SSE block
//! (`\n\n`: every piece the gateway writes does); otherwise the stream's bytes keep
//! accumulating (at most [`MAX_PENDING`]) and the longer segment is tried at the next marker.
//! Whole stored blocks left at the end of what arrived (a heartbeat, a gap, the closing
//! comment, an event stored because it did not compress) are a segment too once their text
//! ends a block: they inflate to themselves, so they are remembered after an empty window.
//!
//! Per stream this keeps the header state, the bytes not yet ending a segment, and the text of
//! the last segment (shared): no inflater. Exact for the gateway, whose pieces refer back at
//! most into the previous event's frame, which ends the previous segment (see [`crate::memo`]
//! for what happens otherwise).

use std::cell::RefCell;

use crate::memo::{Memo, Text};

use super::{GZIP_HEADER, skip_header};

/// The sync flush's empty stored block (its `LEN`, `NLEN`), which ends every piece.
const MARKER: [u8; 4] = [0x00, 0x00, 0xff, 0xff];
/// Most compressed bytes held while no segment ends: beyond that the stream is refused.
const MAX_PENDING: usize = 1 << 20;
/// Most bytes a segment may inflate to.
const MAX_TEXT: usize = 1 << 20;
/// Distinct segments remembered per thread.
const MEMO: usize = 128;

thread_local! {
    /// The thread's inflater for misses and its recent segments (not shared with WebSocket's).
    static THREAD: RefCell<Memo> = RefCell::new(Memo::new(MEMO));
}

/// One stream's decoder with `--inflate-once`.
#[derive(Debug)]
pub struct GzipOnce {
    /// Gzip header bytes still to skip.
    header_left: usize,
    /// Compressed bytes since the last segment's end.
    pending: Vec<u8>,
    /// How far `pending` was searched for a marker ending a segment (without finding one).
    searched: usize,
    /// The last segment's text: the window the next one is inflated after.
    prev: Option<Text>,
    /// A final block ended the deflate stream: what follows is ignored (the gzip trailer).
    /// The gateway never ends a stream so; a final block is noticed only in a segment that a
    /// marker ends.
    ended: bool,
}

impl Default for GzipOnce {
    fn default() -> Self {
        Self {
            header_left: GZIP_HEADER,
            pending: Vec::new(),
            searched: 0,
            prev: None,
            ended: false,
        }
    }
}

impl GzipOnce {
    /// Inflates the segments that `input` completes, handing each one's text to `plain`.
    pub fn feed(&mut self, input: &[u8], plain: &mut impl FnMut(&[u8])) -> Result<(), String> {
        let input = skip_header(&mut self.header_left, input)?;
        if self.pending.is_empty() {
            let used = self.segments(input, plain)?;
            self.pending.extend_from_slice(&input[used..]);
        } else {
            let mut buf = std::mem::take(&mut self.pending);
            buf.extend_from_slice(input);
            let used = self.segments(&buf, plain)?;
            buf.drain(..used);
            self.pending = buf;
        }
        if self.pending.len() > MAX_PENDING {
            return Err("no end of a deflate piece in 1 MiB".into());
        }
        if self.pending.is_empty() && self.pending.capacity() > 64 * 1024 {
            self.pending = Vec::new();
        }
        Ok(())
    }

    /// Hands on the segments that `data` (the pending bytes, then the new ones) completes;
    /// returns the bytes they took.
    fn segments(&mut self, data: &[u8], plain: &mut impl FnMut(&[u8])) -> Result<usize, String> {
        let mut start = 0;
        let mut from = self.searched;
        while !self.ended {
            let Some(at) = memchr::memmem::find(&data[from..], &MARKER) else {
                break;
            };
            let end = from + at + MARKER.len();
            let ctx = self.prev.clone();
            if self.segment(&data[start..end], ctx.as_ref(), plain)? {
                start = end;
            }
            from = end;
        }
        if self.ended {
            self.searched = 0;
            return Ok(data.len());
        }
        let rest = &data[start..];
        // Stored blocks inflate to themselves: the text ends as `rest` does.
        if rest.ends_with(b"\n\n") && whole_stored(rest) && self.segment(rest, None, plain)? {
            self.searched = 0;
            return Ok(data.len());
        }
        // A marker may straddle the end of what arrived: search its last 3 bytes again.
        self.searched = data.len().saturating_sub(MARKER.len() - 1).max(from) - start;
        Ok(start)
    }

    /// Inflates `z` after the window `ctx` (or remembers it); hands on its text and returns
    /// `true` when it is a whole segment.
    fn segment(
        &mut self,
        z: &[u8],
        ctx: Option<&Text>,
        plain: &mut impl FnMut(&[u8]),
    ) -> Result<bool, String> {
        let got = THREAD.with(|cell| {
            cell.borrow_mut()
                .inflate(z, &[], ctx, MAX_TEXT, |text| text.ends_with(b"\n\n"))
        })?;
        let Some(got) = got else {
            return Ok(false);
        };
        plain(&got.text);
        self.ended = got.ended;
        self.prev = Some(got.text);
        Ok(true)
    }
}

/// Whether `data` is one or more whole non-final stored blocks, exactly (read from a block
/// boundary, where a stored block's header is one byte: `BFINAL` 0, `BTYPE` 00, padding).
fn whole_stored(mut data: &[u8]) -> bool {
    if data.is_empty() {
        return false;
    }
    while let [head, l0, l1, n0, n1, rest @ ..] = data {
        let len = u16::from_le_bytes([*l0, *l1]);
        if head & 0x07 != 0 || !len != u16::from_le_bytes([*n0, *n1]) {
            return false;
        }
        let Some(after) = rest.get(usize::from(len)..) else {
            return false;
        };
        data = after;
    }
    data.is_empty()
}

#[cfg(test)]
mod tests;
