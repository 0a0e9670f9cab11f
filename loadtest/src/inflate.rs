//! Undoes a gzip-coded SSE stream (`--compressed`) as it arrives: the gateway's fixed 10-byte
//! gzip header, then raw deflate that is flushed after every event, so every read inflates to
//! whole events without waiting for more. A stream never ends, so there is no trailer to check.
//!
//! [`GzipStream`] keeps one inflater per stream (about 43 KiB) and inflates every byte; with
//! `--inflate-once`, [`once::GzipOnce`] cuts the stream into the gateway's pieces and inflates
//! each distinct one once per thread ([`crate::memo`]).

mod once;

use std::cell::RefCell;

use flate2::{Decompress, FlushDecompress};

pub use once::GzipOnce;

/// The gateway's gzip header: no name, comment or extra field.
const GZIP_HEADER: usize = 10;
/// Inflated bytes handed on per call.
const SCRATCH: usize = 64 * 1024;

thread_local! {
    static OUT: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(SCRATCH));
}

/// One stream's decoder: about 43 KiB of window and tables (miniz_oxide).
pub struct GzipStream {
    header_left: usize,
    inflater: Decompress,
}

impl Default for GzipStream {
    fn default() -> Self {
        Self {
            header_left: GZIP_HEADER,
            inflater: Decompress::new(false),
        }
    }
}

/// A compressed SSE stream's decoder, as `--inflate-once` chooses.
pub enum SseInflate {
    /// Every byte inflated by the stream's own inflater.
    Stream(GzipStream),
    /// Each distinct piece inflated once per thread.
    Once(GzipOnce),
}

impl SseInflate {
    /// The decoder of a new stream; `once`: `--inflate-once`.
    pub fn new(once: bool) -> Self {
        if once {
            Self::Once(GzipOnce::default())
        } else {
            Self::Stream(GzipStream::default())
        }
    }

    /// Inflates `input`, handing the plain bytes to `plain`.
    pub fn feed(&mut self, input: &[u8], plain: &mut impl FnMut(&[u8])) -> Result<(), String> {
        match self {
            Self::Stream(s) => s.feed(input, plain),
            Self::Once(s) => s.feed(input, plain),
        }
    }
}

/// `input` without what is left of the gzip header (`left` bytes, counted down); refuses a
/// stream that does not start with gzip's magic.
fn skip_header<'a>(left: &mut usize, input: &'a [u8]) -> Result<&'a [u8], String> {
    let skip = (*left).min(input.len());
    if skip > 0 && *left == GZIP_HEADER && input[..skip.min(2)] != [0x1f, 0x8b][..skip.min(2)] {
        return Err("not a gzip stream".into());
    }
    *left -= skip;
    Ok(&input[skip..])
}

impl GzipStream {
    /// Inflates `input`, handing the plain bytes to `plain` as they come.
    pub fn feed(&mut self, input: &[u8], plain: &mut impl FnMut(&[u8])) -> Result<(), String> {
        let mut input = skip_header(&mut self.header_left, input)?;
        OUT.with(|out| {
            let mut out = out.borrow_mut();
            loop {
                out.clear();
                let before = self.inflater.total_in();
                self.inflater
                    .decompress_vec(input, &mut out, FlushDecompress::Sync)
                    .map_err(|e| format!("bad deflate data: {e}"))?;
                let used = (self.inflater.total_in() - before) as usize;
                input = &input[used..];
                if !out.is_empty() {
                    plain(&out);
                }
                let room = out.len() < out.capacity();
                if (input.is_empty() && room) || (used == 0 && out.is_empty()) {
                    return Ok(());
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_gzip_stream_fed_in_pieces_inflates_whole() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        let mut text = Vec::new();
        for i in 0..200 {
            text.extend_from_slice(format!("id: a:{i}\ndata: {{\"seq\":{i}}}\n\n").as_bytes());
        }
        gz.write_all(&text).unwrap();
        gz.flush().unwrap();
        let wire = gz.get_ref().clone();
        for step in [1, 7, 100, wire.len()] {
            let mut s = GzipStream::default();
            let mut got = Vec::new();
            for piece in wire.chunks(step) {
                s.feed(piece, &mut |p| got.extend_from_slice(p)).unwrap();
            }
            assert_eq!(got, text, "in pieces of {step}");
        }
        assert!(GzipStream::default().feed(b"data: x", &mut |_| {}).is_err());
    }
}
