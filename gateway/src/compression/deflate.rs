//! Raw deflate (RFC 1951) pieces that concatenate into one stream, with flate2 doing the
//! compressing and inflating.
//!
//! A piece is compressed by a fresh (reset) compressor and ended with a sync flush: it is
//! byte-aligned, ends with the empty stored block `00 00 ff ff`, has no final block and no
//! back-reference before its own start. So any sequence of pieces, whichever connection it was
//! built for, is a valid deflate stream: an SSE stream writes a gzip or zlib header once and
//! then pieces forever (a never-ending stream has no trailer), and a WebSocket message is one
//! piece with the trailing `00 00 ff ff` stripped (RFC 7692 §7.2.1).

use std::cell::RefCell;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The empty stored block a sync flush ends with; RFC 7692 strips it from every message and
/// the receiver appends it back before inflating.
pub const SYNC_TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// The gzip member header (RFC 1952): deflate, no flags, no time, unknown OS. Written once at
/// the start of a stream; the stream never ends, so no trailer (CRC, size) is ever due.
pub const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 0x08, 0, 0, 0, 0, 0, 0, 0xff];

/// The zlib header (RFC 1950) of HTTP's `deflate` coding: deflate, 32 KiB window, no
/// dictionary (`78 9c`, as zlib writes it). No Adler-32 trailer, as with gzip.
pub const ZLIB_HEADER: [u8; 2] = [0x78, 0x9c];

/// Most bytes one stored block carries.
const STORED_MAX: usize = u16::MAX as usize;

thread_local! {
    /// One compressor per worker thread, reset for every piece: a deflate compressor is a few
    /// hundred KiB of tables and buffers, too much to allocate per event.
    static COMPRESSOR: RefCell<Option<(u32, Compress)>> = const { RefCell::new(None) };
}

/// `data` as one self-contained piece for an SSE stream at `level` (0-9): compressed, or stored
/// when compressing would not make it smaller. Paid once per event, shared by every subscriber.
pub fn piece(data: &[u8], level: u32) -> Vec<u8> {
    match compressed(data, level) {
        Some(out) if out.len() < stored_len(data.len()) => out,
        _ => {
            let mut out = Vec::with_capacity(stored_len(data.len()));
            stored(data, &mut out);
            out
        }
    }
}

/// `data` compressed from scratch at `level` and sync-flushed, so it ends with [`SYNC_TAIL`];
/// `None` only if the compressor failed.
pub fn compressed(data: &[u8], level: u32) -> Option<Vec<u8>> {
    with_compressor(level, |c| compress(c, data))
}

/// `data` as a piece that follows `prev` in a stream: compressed with `prev` as the window it
/// may refer back into, so whatever `data` repeats of `prev` (keys, names, the unchanged part of
/// a state) costs a few bits. Valid only where the receiver's last inflated bytes are exactly
/// `prev` (see `hub::direct::Form::frame_after`); `None` if the compressor failed.
pub fn compressed_after(prev: &[u8], data: &[u8], level: u32) -> Option<Vec<u8>> {
    with_compressor(level, |c| {
        // `prev` goes through the compressor only to fill its window; its output is dropped.
        // After the sync flush the compressor is byte-aligned at a block boundary, exactly
        // where the receiver is after inflating `prev`'s own piece.
        compress(c, prev)?;
        compress(c, data)
    })
}

/// Runs `f` with this thread's compressor for `level` (0-9), reset: no piece depends on
/// what the compressor saw for another.
fn with_compressor<T>(level: u32, f: impl FnOnce(&mut Compress) -> T) -> T {
    let level = level.min(9);
    COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().is_some_and(|(l, _)| *l != level) {
            *slot = None;
        }
        let (_, c) =
            slot.get_or_insert_with(|| (level, Compress::new(Compression::new(level), false)));
        c.reset();
        f(c)
    })
}

fn compress(c: &mut Compress, data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(data.len() / 2 + 64);
    let start = c.total_in();
    loop {
        let used = usize::try_from(c.total_in() - start).ok()?;
        if out.len() == out.capacity() {
            out.reserve(out.capacity().max(64));
        }
        c.compress_vec(data.get(used..)?, &mut out, FlushCompress::Sync)
            .ok()?;
        let used = usize::try_from(c.total_in() - start).ok()?;
        // Done when every byte went in and the flush did not fill the output (nothing held).
        if used == data.len() && out.len() < out.capacity() {
            return Some(out);
        }
    }
}

/// What [`stored`] writes for `len` bytes.
pub fn stored_len(len: usize) -> usize {
    len + 5 * len.div_ceil(STORED_MAX).max(1)
}

/// Appends `data` as stored (uncompressed) deflate blocks, none final: for what one connection
/// writes alone (its preamble, cursor lines, heartbeats, closing comments), where compressing
/// would cost a compressor reset per write and save a few bytes at most. Starts byte-aligned,
/// as every piece ends.
pub fn stored(data: &[u8], out: &mut Vec<u8>) {
    for chunk in data.chunks(STORED_MAX) {
        // BFINAL 0, BTYPE 00, then LEN and its complement, little-endian (RFC 1951 §3.2.4).
        let len = chunk.len() as u16;
        out.push(0);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(chunk);
    }
}

/// Why a compressed client message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InflateError {
    /// It inflates to more than the limit (a deflate bomb, or just too big): refused as soon
    /// as the output passes the limit, never inflated further.
    TooBig,
    /// Not valid deflate data.
    Corrupt,
}

/// Inflates one connection's compressed messages. With context takeover the inflater (about
/// 42 KiB: a 32 KiB window and the decoding tables) stays for the connection's life, since each
/// message may refer back into earlier ones; without, it exists only while a message is
/// inflated.
#[derive(Debug)]
pub struct Inflater {
    takeover: bool,
    state: Option<Decompress>,
}

impl Inflater {
    /// An inflater for a connection; `takeover`: the client may refer back to earlier messages.
    pub fn new(takeover: bool) -> Self {
        Self {
            takeover,
            state: None,
        }
    }

    /// Whether window state is held right now (memory accounting, tests).
    pub fn holds_state(&self) -> bool {
        self.state.is_some()
    }

    /// One message (`00 00 ff ff` stripped, as sent), inflated to at most `max` bytes.
    pub fn inflate(&mut self, compressed: &[u8], max: usize) -> Result<Vec<u8>, InflateError> {
        let d = self.state.get_or_insert_with(|| Decompress::new(false));
        let result = inflate_into(d, compressed, max);
        let ended = matches!(result, Ok((_, true)));
        if !self.takeover || result.is_err() || ended {
            // A final block ends the sender's stream: the next message starts afresh.
            self.state = None;
        }
        result.map(|(out, _)| out)
    }
}

/// Inflates `compressed` then the sync tail; `true` once a final block ended the stream.
fn inflate_into(
    d: &mut Decompress,
    compressed: &[u8],
    max: usize,
) -> Result<(Vec<u8>, bool), InflateError> {
    let limit = max.saturating_add(1);
    // (Not `clamp`: it panics when the limit is below 64.)
    let mut out = Vec::with_capacity(compressed.len().saturating_mul(2).max(64).min(limit));
    for input in [compressed, &SYNC_TAIL[..]] {
        let start = d.total_in();
        loop {
            let used = usize::try_from(d.total_in() - start).map_err(|_| InflateError::Corrupt)?;
            if out.len() == out.capacity() {
                if out.len() >= limit {
                    return Err(InflateError::TooBig);
                }
                // Grow by doubling, never past one byte over the limit.
                let more = out.capacity().min(limit - out.len());
                out.reserve_exact(more);
            }
            let (in_before, out_before) = (d.total_in(), d.total_out());
            let status = d
                .decompress_vec(
                    input.get(used..).unwrap_or_default(),
                    &mut out,
                    FlushDecompress::Sync,
                )
                .map_err(|_| InflateError::Corrupt)?;
            if out.len() > max {
                return Err(InflateError::TooBig);
            }
            if status == Status::StreamEnd {
                return Ok((out, true));
            }
            let used = usize::try_from(d.total_in() - start).map_err(|_| InflateError::Corrupt)?;
            let stuck = d.total_in() == in_before && d.total_out() == out_before;
            if used == input.len() && out.len() < out.capacity() {
                break;
            }
            if stuck && out.len() < out.capacity() {
                return Err(InflateError::Corrupt);
            }
        }
    }
    Ok((out, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Inflates a whole raw deflate stream the way a client does.
    fn inflate_all(stream: &[u8]) -> Vec<u8> {
        let mut d = Decompress::new(false);
        let mut out = Vec::with_capacity(1 << 20);
        d.decompress_vec(stream, &mut out, FlushDecompress::Sync)
            .unwrap();
        assert_eq!(d.total_in() as usize, stream.len(), "all input consumed");
        out
    }

    fn event(i: usize) -> Vec<u8> {
        format!(
            "id: a:{i}\ndata: {{\"price\":{i},\"symbol\":\"ACME\",\"pad\":\"{}\"}}\n\n",
            "x".repeat(i % 300)
        )
        .into_bytes()
    }

    #[test]
    fn pieces_end_with_a_sync_flush_and_concatenate() {
        let mut stream = Vec::new();
        let mut plain = Vec::new();
        for i in 0..50 {
            let e = event(i);
            let p = piece(&e, 6);
            assert!(p.len() <= stored_len(e.len()));
            assert!(compressed(&e, 6).unwrap().ends_with(&SYNC_TAIL));
            stream.extend_from_slice(&p);
            plain.extend_from_slice(&e);
            // Stored pieces in between (what one connection writes alone).
            stored(b": ping\n\n", &mut stream);
            plain.extend_from_slice(b": ping\n\n");
        }
        assert_eq!(inflate_all(&stream), plain);
        // Any suffix starting at a piece boundary is a stream of its own (a late subscriber).
        let late = [piece(&event(7), 1), piece(&event(8), 9)].concat();
        assert_eq!(inflate_all(&late), [event(7), event(8)].concat());
    }

    #[test]
    fn a_piece_after_its_predecessor_refers_back_into_it_and_is_smaller() {
        let mut stream = Vec::new();
        let mut plain = Vec::new();
        let (mut alone, mut after) = (0, 0);
        for i in 0..40 {
            let e = event(i + 300);
            let own = compressed(&e, 6).unwrap();
            // Every fifth event follows a heartbeat: the chain is broken, the piece stands alone.
            let p = if i % 5 == 0 {
                stored(b": ping\n\n", &mut stream);
                plain.extend_from_slice(b": ping\n\n");
                own
            } else {
                let p = compressed_after(&event(i + 299), &e, 6).unwrap();
                assert!(p.ends_with(&SYNC_TAIL));
                (alone, after) = (alone + own.len(), after + p.len());
                p
            };
            stream.extend_from_slice(&p);
            plain.extend_from_slice(&e);
        }
        assert_eq!(inflate_all(&stream), plain);
        assert!(after * 2 < alone, "{after} bytes after vs {alone} alone");
    }

    #[test]
    fn a_repetitive_event_compresses_and_an_incompressible_one_is_stored() {
        let json = br#"{"symbol":"ACME","price":42.5,"volume":1000}"#.repeat(20);
        assert!(piece(&json, 6).len() < json.len() / 4);
        let noise: Vec<u8> = (0..2000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let p = piece(&noise, 6);
        assert!(p.len() <= stored_len(noise.len()));
        assert_eq!(inflate_all(&p), noise);
        assert_eq!(inflate_all(&piece(b"", 6)), b"");
    }

    #[test]
    fn stored_blocks_split_at_64_kib() {
        let big = vec![7u8; 70_000];
        let mut out = Vec::new();
        stored(&big, &mut out);
        assert_eq!(out.len(), stored_len(big.len()));
        assert_eq!(inflate_all(&out), big);
    }

    #[test]
    fn stream_headers_are_what_gzip_and_zlib_expect() {
        use std::io::Read;
        let body = [piece(b"hello ", 6), piece(b"world", 6)].concat();
        // A stream cut short (no trailer) still yields everything sent so far.
        let gzip = [&GZIP_HEADER[..], &body].concat();
        let mut gz = flate2::read::GzDecoder::new(&gzip[..]);
        let mut text = Vec::new();
        let _ = gz.read_to_end(&mut text);
        assert_eq!(text, b"hello world");
        let zlib = [&ZLIB_HEADER[..], &body].concat();
        let mut z = flate2::read::ZlibDecoder::new(&zlib[..]);
        let mut text = Vec::new();
        let _ = z.read_to_end(&mut text);
        assert_eq!(text, b"hello world");
    }

    fn message(data: &[u8]) -> Vec<u8> {
        let p = compressed(data, 6).unwrap();
        p[..p.len() - SYNC_TAIL.len()].to_vec()
    }

    #[test]
    fn messages_inflate_with_and_without_takeover() {
        let mut i = Inflater::new(false);
        for n in 0..5 {
            let e = event(n);
            assert_eq!(i.inflate(&message(&e), 1 << 20).unwrap(), e);
            assert!(!i.holds_state(), "no window kept between messages");
        }
        // With takeover, the second message refers back into the first.
        let mut c = Compress::new(Compression::new(6), false);
        let mut wire = Vec::new();
        for text in [
            &b"the same words again and again"[..],
            b"the same words again and again",
        ] {
            let mut out = Vec::with_capacity(256);
            c.compress_vec(text, &mut out, FlushCompress::Sync).unwrap();
            assert!(out.ends_with(&SYNC_TAIL));
            out.truncate(out.len() - 4);
            wire.push(out);
        }
        assert!(
            wire[1].len() < wire[0].len(),
            "the second message is a back-reference"
        );
        let mut i = Inflater::new(true);
        for w in &wire {
            assert_eq!(
                i.inflate(w, 1024).unwrap(),
                b"the same words again and again"
            );
            assert!(i.holds_state());
        }
        let mut fresh = Inflater::new(false);
        // Without the window the back-reference cannot be resolved (miniz reads an empty
        // window rather than failing): never the text.
        assert_ne!(
            fresh.inflate(&wire[1], 1024).ok().as_deref(),
            Some(&b"the same words again and again"[..])
        );
    }

    #[test]
    fn a_bomb_is_refused_at_the_limit() {
        let zeros = vec![0u8; 10 << 20];
        let bomb = message(&zeros);
        assert!(bomb.len() < 20_000, "{}", bomb.len());
        let mut i = Inflater::new(true);
        assert_eq!(i.inflate(&bomb, 1 << 20), Err(InflateError::TooBig));
        assert!(!i.holds_state(), "a refused message leaves nothing behind");
        assert_eq!(
            i.inflate(&message(&zeros[..1000]), 1000).unwrap().len(),
            1000
        );
        assert_eq!(
            i.inflate(&message(&zeros[..1001]), 1000),
            Err(InflateError::TooBig)
        );
        assert_eq!(i.inflate(&[0xff; 16], 1000), Err(InflateError::Corrupt));
        assert_eq!(i.inflate(&[], 1000).unwrap(), b"");
        // Limits below the first allocation (found by the ws_frames fuzz target). A fresh
        // inflater: the empty payload above is no valid deflate data, it left the window
        // waiting in the middle of a block.
        let mut i = Inflater::new(true);
        assert_eq!(i.inflate(&message(b"abc"), 3).unwrap(), b"abc");
        assert_eq!(i.inflate(&message(b"abc"), 2), Err(InflateError::TooBig));
        assert_eq!(i.inflate(&message(b""), 0).unwrap(), b"");
    }

    #[test]
    fn a_final_block_ends_the_message_and_resets_the_window() {
        let mut c = Compress::new(Compression::new(6), false);
        let mut out = Vec::with_capacity(256);
        c.compress_vec(b"last words", &mut out, FlushCompress::Finish)
            .unwrap();
        let mut i = Inflater::new(true);
        assert_eq!(i.inflate(&out, 100).unwrap(), b"last words");
        assert!(!i.holds_state());
    }
}
