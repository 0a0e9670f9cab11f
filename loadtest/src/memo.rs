//! `--inflate-once`: each distinct piece of compressed input is inflated once per thread and its
//! text handed out again to every connection of the thread that receives the same bytes after
//! the same window, so the generator costs about what plain parsing costs and a saturate run
//! measures the server rather than the generator's inflating (~11 µs per delivery otherwise).
//!
//! A piece (a WebSocket message, a segment of a gzip SSE stream) may refer back into what the
//! receiver inflated before it, so the memo's key is (compressed bytes, window), where the
//! window is the text of the connection's previous piece — `None` for an empty window. On a miss
//! the thread's inflater is reset and primed with that text (a synthetic stored block carrying
//! its last 32 KiB, output discarded), then the piece is inflated. This is exact for a server
//! whose pieces refer back at most into the previous piece (the gateway's chained pieces refer
//! into the previous event's frame, self-contained ones into nothing); a reference further back
//! inflates wrong or fails, which the run reports (`malformed`, loss, a protocol error).
//!
//! A window is named by the identity of its shared [`Text`]: a connection keeps an `Arc` of its
//! previous piece's text, and entries keep a `Weak` of the window they were inflated after.
//! The `Weak` keeps that text's allocation, so its address cannot be reused for another text
//! while the entry lives, without keeping the text (and through it a chain of predecessors)
//! alive. Equal texts are shared — a new text equal to a remembered one is that one — so
//! connections that reached the same window by different pieces (one chained, one
//! self-contained after a reconnect) share what follows too.

use std::collections::VecDeque;
use std::sync::{Arc, Weak};

use flate2::{Decompress, FlushDecompress, Status};

/// Inflated bytes, shared by every connection of the thread that got them; its identity names
/// the window a following piece is inflated after. An `Arc`, not an `Rc`: a connection's task
/// may move to another thread of the runtime (whose memo then simply misses once).
pub type Text = Arc<Vec<u8>>;

/// How far back deflate refers: what priming replays of a window.
const WINDOW: usize = 32 * 1024;

/// One remembered piece.
struct Entry {
    /// Its compressed bytes.
    z: Box<[u8]>,
    /// The window it was inflated after (`None`: empty); see the module's notes on `Weak`.
    ctx: Option<Weak<Vec<u8>>>,
    /// What it inflated to.
    text: Text,
    /// It ended with a final block: what follows starts from an empty window.
    ended: bool,
}

impl Entry {
    fn is(&self, z: &[u8], ctx: Option<&Text>) -> bool {
        let same_ctx = match (&self.ctx, ctx) {
            (None, None) => true,
            (Some(w), Some(r)) => std::ptr::eq(w.as_ptr(), Arc::as_ptr(r)),
            _ => false,
        };
        same_ctx && self.z.len() == z.len() && *self.z == *z
    }
}

/// One thread's inflate-once state: the recent pieces, and the inflater and buffer for misses.
pub struct Memo {
    entries: VecDeque<Entry>,
    /// Most entries kept.
    cap: usize,
    d: Decompress,
    out: Vec<u8>,
}

/// What a piece inflated to.
pub struct Inflated {
    /// The text, shared.
    pub text: Text,
    /// The piece ended with a final block (the sender's deflate stream ended).
    pub ended: bool,
}

impl Memo {
    /// An empty memo keeping the `cap` most recent pieces (a few hundred KiB for 128 events
    /// of a few KiB).
    pub fn new(cap: usize) -> Self {
        Self {
            entries: VecDeque::with_capacity(cap),
            cap: cap.max(1),
            d: Decompress::new(false),
            out: Vec::with_capacity(64 * 1024),
        }
    }

    /// `z` then `tail` (not part of the key: the same for every piece of a kind) inflated after
    /// the window `ctx`, to at most `max` bytes: remembered, or inflated now. `whole` says
    /// whether an output is a complete piece; `None` when it is not (nothing is remembered).
    pub fn inflate(
        &mut self,
        z: &[u8],
        tail: &[u8],
        ctx: Option<&Text>,
        max: usize,
        whole: impl FnOnce(&[u8]) -> bool,
    ) -> Result<Option<Inflated>, String> {
        if let Some(e) = self.entries.iter().rev().find(|e| e.is(z, ctx)) {
            return Ok(Some(Inflated {
                text: e.text.clone(),
                ended: e.ended,
            }));
        }
        self.d.reset(false);
        if let Some(window) = ctx {
            prime(&mut self.d, window, &mut self.out)?;
        }
        self.out.clear();
        let ended = inflate(&mut self.d, &[z, tail], &mut self.out, max)?;
        if !ended && !whole(&self.out) {
            return Ok(None);
        }
        let text = self.shared(ctx);
        if self.entries.len() == self.cap {
            self.entries.pop_front();
        }
        self.entries.push_back(Entry {
            z: z.into(),
            ctx: ctx.map(Arc::downgrade),
            text: text.clone(),
            ended,
        });
        Ok(Some(Inflated { text, ended }))
    }

    /// The text just inflated as a shared [`Text`]: a remembered equal one if there is one.
    fn shared(&self, ctx: Option<&Text>) -> Text {
        let out = &self.out;
        let equal = |t: &Text| t.len() == out.len() && **t == *out;
        ctx.filter(|t| equal(t))
            .or_else(|| {
                self.entries
                    .iter()
                    .rev()
                    .map(|e| &e.text)
                    .find(|t| equal(t))
            })
            .cloned()
            .unwrap_or_else(|| Arc::new(out.clone()))
    }

    /// Inflates `z` then `tail` from an empty window with the thread's inflater, without
    /// remembering it (no `--inflate-once`): the text and whether a final block ended it.
    pub fn fresh(&mut self, z: &[u8], tail: &[u8], max: usize) -> Result<(&[u8], bool), String> {
        self.d.reset(false);
        self.out.clear();
        let ended = inflate(&mut self.d, &[z, tail], &mut self.out, max)?;
        Ok((&self.out, ended))
    }

    /// Inflates `z` then `tail` with a connection's own inflater `d` (context takeover: never
    /// reset here) into the thread's buffer.
    pub fn with(
        &mut self,
        d: &mut Decompress,
        z: &[u8],
        tail: &[u8],
        max: usize,
    ) -> Result<(&[u8], bool), String> {
        self.out.clear();
        let ended = inflate(d, &[z, tail], &mut self.out, max)?;
        Ok((&self.out, ended))
    }
}

/// Gives a freshly reset `d` the window `text` ends with: its last 32 KiB as one stored block.
fn prime(d: &mut Decompress, text: &[u8], scratch: &mut Vec<u8>) -> Result<(), String> {
    let window = &text[text.len().saturating_sub(WINDOW)..];
    let len = u16::try_from(window.len()).map_err(|_| "window too big".to_owned())?;
    let mut head = [0u8; 5];
    head[1..3].copy_from_slice(&len.to_le_bytes());
    head[3..].copy_from_slice(&(!len).to_le_bytes());
    scratch.clear();
    inflate(d, &[&head, window], scratch, WINDOW)?;
    scratch.clear();
    Ok(())
}

/// Inflates `parts` in order into `out` (appended), at most `max` bytes; `true` when a final
/// block ended the stream (input after it is ignored). Every byte of the parts is consumed
/// otherwise, or it is an error.
fn inflate(
    d: &mut Decompress,
    parts: &[&[u8]],
    out: &mut Vec<u8>,
    max: usize,
) -> Result<bool, String> {
    for input in parts {
        let start = d.total_in();
        loop {
            if out.len() == out.capacity() {
                out.reserve(out.capacity().clamp(4096, max.max(4096)));
            }
            let used = usize::try_from(d.total_in() - start).map_err(|e| e.to_string())?;
            let before = (d.total_in(), d.total_out());
            let status = d
                .decompress_vec(
                    input.get(used..).unwrap_or_default(),
                    out,
                    FlushDecompress::Sync,
                )
                .map_err(|e| format!("bad deflate data: {e}"))?;
            if out.len() > max {
                return Err("inflated data too big".into());
            }
            if status == Status::StreamEnd {
                return Ok(true);
            }
            let used = usize::try_from(d.total_in() - start).map_err(|e| e.to_string())?;
            let room = out.len() < out.capacity();
            if used == input.len() && room {
                break;
            }
            if before == (d.total_in(), d.total_out()) && room {
                return Err("deflate data stuck".into());
            }
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deflate_testing::piece as gateway_piece;
    use flate2::{Compress, Compression, FlushCompress};

    /// `text` as the gateway's self-contained (`prev` empty) or chained piece.
    fn piece(prev: &[u8], text: &[u8]) -> Vec<u8> {
        gateway_piece((!prev.is_empty()).then_some(prev), text, 6)
    }

    #[test]
    fn a_piece_is_remembered_per_window_and_equal_texts_are_shared() {
        let (a, b) = (
            &b"the same words, the same words: a"[..],
            &b"the same words!"[..],
        );
        let mut m = Memo::new(8);
        let all = |_: &[u8]| true;
        let first = m
            .inflate(&piece(b"", a), &[], None, 1 << 20, all)
            .unwrap()
            .unwrap();
        assert_eq!(*first.text, a);
        let chained = piece(a, b);
        let second = m
            .inflate(&chained, &[], Some(&first.text), 1024, all)
            .unwrap()
            .unwrap();
        assert_eq!(*second.text, b);
        let again = m
            .inflate(&chained, &[], Some(&first.text), 1024, all)
            .unwrap()
            .unwrap();
        assert!(Arc::ptr_eq(&again.text, &second.text), "a hit");
        // The same bytes after another window (with `a`'s text, not its `Arc`): a miss, inflated
        // after that window, whose equal text is the remembered one.
        let other = Arc::new(a.to_vec());
        let third = m
            .inflate(&chained, &[], Some(&other), 1024, all)
            .unwrap()
            .unwrap();
        assert!(Arc::ptr_eq(&third.text, &second.text), "shared equal text");
        assert_eq!(m.entries.len(), 3);
        // After an empty window the back-reference cannot be resolved: never the text.
        let wrong = m.inflate(&chained, &[], None, 1024, all);
        assert!(wrong.map_or(true, |w| w.is_some_and(|w| *w.text != b)));
    }

    #[test]
    fn priming_replays_only_the_last_32_kib() {
        let long: Vec<u8> = (0..40_000u32).map(|i| b'a' + (i % 23) as u8).collect();
        let mut d = Decompress::new(false);
        let mut scratch = Vec::new();
        prime(&mut d, &long, &mut scratch).unwrap();
        assert_eq!(d.total_out(), WINDOW as u64);
        let tail = &long[long.len() - 100..];
        let z = piece(&long, tail);
        let mut out = Vec::new();
        assert!(!inflate(&mut d, &[&z], &mut out, 1 << 20).unwrap());
        assert_eq!(out, tail);
    }

    #[test]
    fn incomplete_output_is_not_remembered_and_limits_hold() {
        let mut m = Memo::new(2);
        let z = piece(b"", b"data: 1\n\n");
        let got = m
            .inflate(&z, &[], None, 100, |t| t.ends_with(b"\n\n!"))
            .unwrap();
        assert!(got.is_none() && m.entries.is_empty());
        assert!(m.inflate(&z, &[], None, 4, |_| true).is_err(), "too big");
        assert!(m.inflate(&[0xff; 8], &[], None, 100, |_| true).is_err());
        for i in 0..3u8 {
            let z = piece(b"", &[b'x', i]);
            m.inflate(&z, &[], None, 100, |_| true).unwrap().unwrap();
        }
        assert_eq!(m.entries.len(), 2, "bounded");
        let mut fin = Vec::with_capacity(64);
        Compress::new(Compression::new(6), false)
            .compress_vec(b"end", &mut fin, FlushCompress::Finish)
            .unwrap();
        let got = m.inflate(&fin, &[], None, 100, |_| false).unwrap().unwrap();
        assert!(got.ended && *got.text == b"end");
    }
}
