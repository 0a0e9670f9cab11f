//! Deflate as the gateway writes it (`gateway::compression::deflate`), rebuilt with flate2 for
//! the decoders' tests: self-contained and chained pieces, stored blocks, the frames they
//! travel in.

use flate2::{Compress, Compression, FlushCompress};

/// The sync flush's empty stored block every piece ends with.
pub const SYNC_TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// The gateway's gzip header.
pub const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 0x08, 0, 0, 0, 0, 0, 0, 0xff];

/// `text` as a piece: a fresh compressor at `level`, fed `prev` first (sync-flushed, output
/// dropped) when chained after it, then `text`, sync-flushed (as `deflate::piece` without its
/// stored fallback, and `deflate::compressed_after`).
pub fn piece(prev: Option<&[u8]>, text: &[u8], level: u32) -> Vec<u8> {
    let mut c = Compress::new(Compression::new(level), false);
    let mut out = Vec::with_capacity(text.len() * 2 + 64);
    if let Some(prev) = prev {
        c.compress_vec(prev, &mut out, FlushCompress::Sync).unwrap();
        out.clear();
    }
    c.compress_vec(text, &mut out, FlushCompress::Sync).unwrap();
    assert!(out.ends_with(&SYNC_TAIL));
    out
}

/// A `permessage-deflate` message: [`piece`] at level 6 with `00 00 ff ff` stripped.
pub fn message(prev: Option<&[u8]>, text: &[u8]) -> Vec<u8> {
    let mut out = piece(prev, text, 6);
    out.truncate(out.len() - SYNC_TAIL.len());
    out
}

/// An unmasked final text frame of `payload`, as a server sends it, RSV1 set when `compressed`
/// (`payload` shorter than 64 KiB).
pub fn server_text_frame(payload: &[u8], compressed: bool) -> Vec<u8> {
    let mut out = vec![if compressed { 0xc1 } else { 0x81 }];
    match payload.len() {
        n if n < 126 => out.push(n as u8),
        n => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
    out
}

/// Appends `data` as stored blocks, none final (as `deflate::stored`).
pub fn stored(data: &[u8], out: &mut Vec<u8>) {
    for chunk in data.chunks(usize::from(u16::MAX)) {
        let len = chunk.len() as u16;
        out.push(0);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(chunk);
    }
}

/// `text` with every digit changed: as long, different wherever a back-reference copies one.
pub fn shifted(text: &[u8]) -> Vec<u8> {
    text.iter()
        .map(|&b| match b {
            b'0'..=b'8' => b + 1,
            b'9' => b'0',
            b => b,
        })
        .collect()
}
