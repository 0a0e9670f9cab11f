//! A minimal HTTP/1.1 response reader: the response head, and a streaming decoder for
//! `Transfer-Encoding: chunked` bodies that hands out slices of the input (no copies).

use memchr::memmem;

/// Largest response head accepted; a server sending more is misbehaving.
pub const MAX_HEAD: usize = 16 * 1024;

/// How the response body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyKind {
    /// `Transfer-Encoding: chunked` (the gateway's streams, via actix).
    Chunked,
    /// `Content-Length: n`.
    Length(u64),
    /// Neither: the body runs until the server closes the connection.
    UntilClose,
}

/// The parts of a response head the load generator needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseHead {
    /// Status code.
    pub status: u16,
    /// Body framing.
    pub body: BodyKind,
    /// Whether the server will close the connection after this response.
    pub close: bool,
    /// Bytes of the input the head took, including the blank line.
    pub len: usize,
}

/// Why a response head was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeadError {
    /// No blank line within [`MAX_HEAD`] bytes.
    TooLong,
    /// The status line is not `HTTP/1.x NNN ...`.
    BadStatusLine,
    /// A `Content-Length` that is not a number.
    BadLength,
}

impl std::fmt::Display for HeadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::TooLong => "response head too long",
            Self::BadStatusLine => "malformed status line",
            Self::BadLength => "malformed Content-Length",
        })
    }
}

/// Parses a response head from the start of `buf`; `Ok(None)` means more bytes are needed.
pub fn parse_head(buf: &[u8]) -> Result<Option<ResponseHead>, HeadError> {
    let Some(end) = memmem::find(buf, b"\r\n\r\n").map(|i| i + 4) else {
        if buf.len() > MAX_HEAD {
            return Err(HeadError::TooLong);
        }
        return Ok(None);
    };
    if end > MAX_HEAD {
        return Err(HeadError::TooLong);
    }
    let head = &buf[..end - 4];
    let mut lines = head.split(|&b| b == b'\n').map(trim_cr);
    let status_line = lines.next().ok_or(HeadError::BadStatusLine)?;
    let (status, http10) = parse_status_line(status_line)?;
    let mut chunked = false;
    let mut length = None;
    let mut close = http10;
    for line in lines {
        let Some(colon) = memchr::memchr(b':', line) else {
            continue;
        };
        let name = &line[..colon];
        let value = trim(&line[colon + 1..]);
        if name.eq_ignore_ascii_case(b"transfer-encoding") {
            chunked = contains_token(value, b"chunked");
        } else if name.eq_ignore_ascii_case(b"content-length") {
            length = Some(parse_decimal(value).ok_or(HeadError::BadLength)?);
        } else if name.eq_ignore_ascii_case(b"connection") {
            if contains_token(value, b"close") {
                close = true;
            } else if contains_token(value, b"keep-alive") {
                close = false;
            }
        }
    }
    let body = if chunked {
        BodyKind::Chunked
    } else if status == 204 || status == 304 || (100..200).contains(&status) {
        BodyKind::Length(0)
    } else if let Some(n) = length {
        BodyKind::Length(n)
    } else {
        BodyKind::UntilClose
    };
    Ok(Some(ResponseHead {
        status,
        body,
        close: close || body == BodyKind::UntilClose,
        len: end,
    }))
}

fn parse_status_line(line: &[u8]) -> Result<(u16, bool), HeadError> {
    let rest = line
        .strip_prefix(b"HTTP/1.")
        .ok_or(HeadError::BadStatusLine)?;
    let http10 = rest.first() == Some(&b'0');
    let code = rest.get(2..5).ok_or(HeadError::BadStatusLine)?;
    if rest.get(1) != Some(&b' ') || !code.iter().all(u8::is_ascii_digit) {
        return Err(HeadError::BadStatusLine);
    }
    let status = code
        .iter()
        .fold(0u16, |acc, &d| acc * 10 + u16::from(d - b'0'));
    Ok((status, http10))
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn trim(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

fn contains_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| trim(t).eq_ignore_ascii_case(token))
}

/// Parses a non-empty run of ASCII digits (at most 19, so it fits a `u64`).
pub fn parse_decimal(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        v.iter()
            .fold(0u64, |acc, &d| acc * 10 + u64::from(d - b'0')),
    )
}

/// Why a chunked body could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkError {
    /// A chunk-size line that is not hex, is empty, or overflows.
    BadSize,
    /// Chunk data not followed by CRLF.
    MissingCrlf,
}

impl std::fmt::Display for ChunkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::BadSize => "malformed chunk size",
            Self::MissingCrlf => "chunk data not followed by CRLF",
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChunkState {
    /// Reading hex digits of a chunk size.
    Size,
    /// Skipping a chunk extension up to the end of the size line.
    Ext,
    /// Saw CR after the size line, expecting LF.
    SizeLf,
    /// Inside chunk data.
    Data,
    /// After chunk data, expecting CR (or a bare LF).
    DataCr,
    /// After chunk data and CR, expecting LF.
    DataLf,
    /// At the start of a trailer line (after the last chunk).
    TrailerStart,
    /// Inside a trailer line.
    TrailerLine,
    /// Saw CR of the final blank line, expecting LF.
    TrailerLf,
    /// The body is complete.
    Done,
}

/// Streaming `Transfer-Encoding: chunked` decoder; feed it raw bytes, get body slices back.
#[derive(Clone, Debug)]
pub struct ChunkedDecoder {
    state: ChunkState,
    size: u64,
    digits: u8,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedDecoder {
    /// A decoder at the start of a body.
    pub const fn new() -> Self {
        Self {
            state: ChunkState::Size,
            size: 0,
            digits: 0,
        }
    }

    /// Decodes `input`, calling `out` with each run of body bytes (slices of `input`). Returns
    /// whether the body is complete; bytes after the end of the body are ignored.
    pub fn feed<'a>(
        &mut self,
        mut input: &'a [u8],
        mut out: impl FnMut(&'a [u8]),
    ) -> Result<bool, ChunkError> {
        while !input.is_empty() {
            match self.state {
                ChunkState::Data => {
                    let n = usize::try_from(self.size)
                        .unwrap_or(usize::MAX)
                        .min(input.len());
                    out(&input[..n]);
                    input = &input[n..];
                    self.size -= n as u64;
                    if self.size == 0 {
                        self.state = ChunkState::DataCr;
                    }
                    continue;
                }
                ChunkState::Done => return Ok(true),
                _ => {}
            }
            let b = input[0];
            input = &input[1..];
            self.state = match self.state {
                ChunkState::Size => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        if self.digits >= 15 {
                            return Err(ChunkError::BadSize);
                        }
                        self.digits += 1;
                        let v = match b {
                            b'0'..=b'9' => b - b'0',
                            b'a'..=b'f' => b - b'a' + 10,
                            _ => b - b'A' + 10,
                        };
                        self.size = self.size * 16 + u64::from(v);
                        ChunkState::Size
                    }
                    _ if self.digits == 0 => return Err(ChunkError::BadSize),
                    b';' | b' ' | b'\t' => ChunkState::Ext,
                    b'\r' => ChunkState::SizeLf,
                    b'\n' => self.end_size_line(),
                    _ => return Err(ChunkError::BadSize),
                },
                ChunkState::Ext => match b {
                    b'\r' => ChunkState::SizeLf,
                    b'\n' => self.end_size_line(),
                    _ => ChunkState::Ext,
                },
                ChunkState::SizeLf => match b {
                    b'\n' => self.end_size_line(),
                    _ => return Err(ChunkError::BadSize),
                },
                ChunkState::DataCr => match b {
                    b'\r' => ChunkState::DataLf,
                    b'\n' => ChunkState::Size,
                    _ => return Err(ChunkError::MissingCrlf),
                },
                ChunkState::DataLf => match b {
                    b'\n' => ChunkState::Size,
                    _ => return Err(ChunkError::MissingCrlf),
                },
                ChunkState::TrailerStart => match b {
                    b'\r' => ChunkState::TrailerLf,
                    b'\n' => ChunkState::Done,
                    _ => ChunkState::TrailerLine,
                },
                ChunkState::TrailerLine => match b {
                    b'\n' => ChunkState::TrailerStart,
                    _ => ChunkState::TrailerLine,
                },
                ChunkState::TrailerLf => match b {
                    b'\n' => ChunkState::Done,
                    _ => return Err(ChunkError::MissingCrlf),
                },
                ChunkState::Data | ChunkState::Done => self.state,
            };
        }
        Ok(self.state == ChunkState::Done)
    }

    fn end_size_line(&mut self) -> ChunkState {
        let size = std::mem::take(&mut self.size);
        self.digits = 0;
        if size == 0 {
            ChunkState::TrailerStart
        } else {
            self.size = size;
            ChunkState::Data
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_style_head() {
        let raw = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\nabc";
        let head = parse_head(raw).unwrap().unwrap();
        assert_eq!(head.status, 200);
        assert_eq!(head.body, BodyKind::Chunked);
        assert!(!head.close);
        assert_eq!(&raw[head.len..], b"abc");
    }

    #[test]
    fn head_variants() {
        assert_eq!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Le"), Ok(None));
        let h = parse_head(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 12\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(
            (h.status, h.body, h.close),
            (503, BodyKind::Length(12), false)
        );
        let h = parse_head(b"HTTP/1.0 200 OK\r\n\r\n").unwrap().unwrap();
        assert_eq!((h.body, h.close), (BodyKind::UntilClose, true));
        let h =
            parse_head(b"HTTP/1.1 201 Created\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
                .unwrap()
                .unwrap();
        assert!(h.close);
        let h = parse_head(b"HTTP/1.1 204 No Content\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.body, BodyKind::Length(0));
        assert_eq!(
            parse_head(b"HTTP/2 200\r\n\r\n"),
            Err(HeadError::BadStatusLine)
        );
        assert_eq!(
            parse_head(b"HTTP/1.1 2x0 OK\r\n\r\n"),
            Err(HeadError::BadStatusLine)
        );
        assert_eq!(
            parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n"),
            Err(HeadError::BadLength)
        );
        assert_eq!(parse_head(&[b'a'; MAX_HEAD + 1]), Err(HeadError::TooLong));
    }

    fn decode_split(raw: &[u8], splits: &[usize]) -> Result<(Vec<u8>, bool), ChunkError> {
        let mut d = ChunkedDecoder::new();
        let mut out = Vec::new();
        let mut last = 0;
        let mut done = false;
        for &s in splits.iter().chain(std::iter::once(&raw.len())) {
            done = d.feed(&raw[last..s], |b| out.extend_from_slice(b))?;
            last = s;
        }
        Ok((out, done))
    }

    #[test]
    fn chunked_at_every_split() {
        let raw =
            b"5\r\nhello\r\n1;ext=1\r\n \r\nC\r\nworld, again\r\n0\r\nX-Trailer: 1\r\n\r\nignored";
        for i in 0..=raw.len() {
            for j in i..=raw.len() {
                let (out, done) = decode_split(raw, &[i, j]).unwrap();
                assert_eq!(out, b"hello world, again", "split at {i},{j}");
                assert!(done);
            }
        }
    }

    #[test]
    fn chunked_unfinished_and_bad() {
        let (out, done) = decode_split(b"3\r\nabc\r\n", &[]).unwrap();
        assert_eq!((out.as_slice(), done), (&b"abc"[..], false));
        assert_eq!(decode_split(b"x\r\n", &[]), Err(ChunkError::BadSize));
        assert_eq!(decode_split(b"\r\n", &[]), Err(ChunkError::BadSize));
        assert_eq!(decode_split(b"2\r\nabc", &[]), Err(ChunkError::MissingCrlf));
        assert_eq!(
            decode_split(b"ffffffffffffffff0\r\n", &[]),
            Err(ChunkError::BadSize)
        );
        // Bare LF line endings are tolerated.
        let (out, done) = decode_split(b"2\nab\n0\n\n", &[]).unwrap();
        assert_eq!((out.as_slice(), done), (&b"ab"[..], true));
    }
}
