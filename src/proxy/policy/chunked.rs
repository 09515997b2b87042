//! A strict scanner for chunked bodies (RFC 9112 section 7.1) that pass
//! through the fast path: it finds where a body ends, refuses anything two
//! parsers could read differently, and filters the trailer section.
//!
//! Refused (the caller answers 400 for requests, 502 for responses, and
//! closes): a bare CR or LF anywhere, control characters, chunk sizes that
//! are not hex digits or do not fit 64 bits, chunk extensions outside the grammar
//! (`*( BWS ";" BWS token [ BWS "=" BWS ( token / quoted-string ) ] )`),
//! size lines over 4 KiB, trailer lines that are not `token ":" value`
//! (obs-fold, white space before the colon, NUL), and trailer sections
//! over 16 KiB or 64 lines.
//!
//! In a response, chunk sizes, extensions and data pass through as
//! received; a request body, which the fast path holds whole, is written
//! out again by [`rechunk`] with plain sizes and no extensions (what
//! hyper's encoder sends on the other path). The trailer
//! section is held back and re-emitted with only the fields the message
//! declared in its `Trailer` header and [`super::fields::trailer_allowed`]
//! admits (the rule of hyper's encoder, so both codecs pass the same
//! trailers), one `name: value` line each.

use super::fields::is_tchar;

/// Why a chunked body is malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed chunked body: {0}")]
pub(crate) struct ChunkError(pub &'static str);

/// Longest chunk-size line (digits plus extensions).
const MAX_SIZE_LINE: u32 = 4096;
/// Largest trailer section, and most trailer lines.
const MAX_TRAILER_BYTES: usize = 16 * 1024;
const MAX_TRAILER_LINES: u32 = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Hex digits of a chunk size.
    Size,
    /// White space after the size.
    SizeBws,
    /// After `;`, before an extension name.
    ExtBws,
    ExtName,
    /// White space after an extension name.
    ExtNameBws,
    /// After `=`, before the value.
    ValBws,
    Token,
    Quoted,
    QuotedPair,
    /// White space after a value.
    AfterVal,
    /// LF ending the size line.
    SizeLf,
    /// Chunk data.
    Data,
    DataCr,
    DataLf,
    /// Start of a trailer line, or the CR of the final empty line.
    TrailerStart,
    TrailerName,
    TrailerValue,
    TrailerLf,
    EndLf,
    Done,
}

impl State {
    /// Whether the state is on a size line after the digits (white space
    /// and extensions), where the line's length counts.
    fn in_extensions(self) -> bool {
        matches!(
            self,
            State::SizeBws
                | State::ExtBws
                | State::ExtName
                | State::ExtNameBws
                | State::ValBws
                | State::Token
                | State::Quoted
                | State::QuotedPair
                | State::AfterVal
        )
    }
}

/// What one [`ChunkedScanner::feed`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Scan {
    /// Leading bytes of the input to forward as they are.
    pub pass: usize,
    /// Bytes of the input that belong to the body (the rest, when `done`,
    /// is the next message); `consumed - pass` went into the trailers.
    pub consumed: usize,
    /// The body ended; [`ChunkedScanner::trailers`] holds its trailer
    /// lines to write before the final CRLF.
    pub done: bool,
}

/// Scans one chunked body fed to it piece by piece.
#[derive(Debug, Clone)]
pub(crate) struct ChunkedScanner {
    state: State,
    remaining: u64,
    digits: u32,
    line: u32,
    trailer_lines: u32,
    /// The trailer line being read; allocated only when there are trailers.
    current: Vec<u8>,
    /// The trailer lines kept, each ending in CRLF.
    kept: Vec<u8>,
    trailer_bytes: usize,
    /// The (lower-case) trailer field names that may pass.
    declared: Vec<Vec<u8>>,
}

impl Default for ChunkedScanner {
    fn default() -> Self {
        ChunkedScanner {
            state: State::Size,
            remaining: 0,
            digits: 0,
            line: 0,
            trailer_lines: 0,
            current: Vec::new(),
            kept: Vec::new(),
            trailer_bytes: 0,
            declared: Vec::new(),
        }
    }
}

#[inline]
fn ws(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

impl ChunkedScanner {
    /// A scanner whose trailer section passes the fields in `declared`
    /// (lower-case names; see [`super::fields::declared_trailers`]). The
    /// default scanner passes none.
    pub(crate) fn with_trailers(declared: Vec<Vec<u8>>) -> Self {
        ChunkedScanner {
            declared,
            ..ChunkedScanner::default()
        }
    }

    /// Whether the body has ended.
    #[cfg(test)]
    pub(crate) fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// The kept trailer lines (each `name: value\r\n`), once done.
    pub(crate) fn trailers(&self) -> &[u8] {
        &self.kept
    }

    /// Feeds the next bytes of the body.
    pub(crate) fn feed(&mut self, data: &[u8]) -> Result<Scan, ChunkError> {
        self.scan(data, |_, _| {})
    }

    /// [`feed`](Self::feed), also telling `on_data` where each run of
    /// chunk data lies in `data` (`start, end`), in order: what a codec
    /// that takes the body apart (an HTTP/2 client's DATA frames) sends.
    pub(crate) fn feed_data(
        &mut self,
        data: &[u8],
        on_data: impl FnMut(usize, usize),
    ) -> Result<Scan, ChunkError> {
        self.scan(data, on_data)
    }

    fn scan(
        &mut self,
        data: &[u8],
        mut on_data: impl FnMut(usize, usize),
    ) -> Result<Scan, ChunkError> {
        let mut i = 0;
        let mut pass = None;
        while i < data.len() {
            if self.state == State::Data {
                let take = self.remaining.min((data.len() - i) as u64);
                self.remaining -= take;
                on_data(i, i + take as usize);
                i += take as usize;
                if self.remaining == 0 {
                    self.state = State::DataCr;
                }
                continue;
            }
            let b = data[i];
            i += 1;
            if self.state.in_extensions() {
                self.line += 1;
                if self.line > MAX_SIZE_LINE {
                    return Err(ChunkError("chunk size line too long"));
                }
            }
            self.state = match (self.state, b) {
                (State::Size, b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F') => {
                    // Leading zeros are fine (as for hyper); the value
                    // must fit 64 bits and the line 4 KiB.
                    self.digits += 1;
                    if self.remaining >> 60 != 0 {
                        return Err(ChunkError("chunk size too large"));
                    }
                    if self.digits > MAX_SIZE_LINE {
                        return Err(ChunkError("chunk size line too long"));
                    }
                    self.remaining = self.remaining << 4 | u64::from(hex(b));
                    State::Size
                }
                (State::Size, _) if self.digits == 0 => return Err(ChunkError("bad chunk size")),
                (State::Size | State::SizeBws, b' ' | b'\t') => State::SizeBws,
                (State::Size | State::SizeBws | State::AfterVal | State::Token, b';') => {
                    State::ExtBws
                }
                (State::ExtName | State::ExtNameBws, b';') => State::ExtBws,
                (State::ExtBws, b) if ws(b) => State::ExtBws,
                (State::ExtBws | State::ExtName, b) if is_tchar(b) => State::ExtName,
                (State::ExtName | State::ExtNameBws, b) if ws(b) => State::ExtNameBws,
                (State::ExtName | State::ExtNameBws, b'=') => State::ValBws,
                (State::ValBws, b) if ws(b) => State::ValBws,
                (State::ValBws, b'"') => State::Quoted,
                (State::ValBws | State::Token, b) if is_tchar(b) => State::Token,
                (State::Token | State::AfterVal, b) if ws(b) => State::AfterVal,
                (State::Quoted, b'"') => State::AfterVal,
                (State::Quoted, b'\\') => State::QuotedPair,
                (State::Quoted, b) if qdtext(b) => State::Quoted,
                (State::QuotedPair, b) if ws(b) || (0x21..=0x7e).contains(&b) || b >= 0x80 => {
                    State::Quoted
                }
                (
                    State::Size
                    | State::SizeBws
                    | State::ExtName
                    | State::ExtNameBws
                    | State::Token
                    | State::AfterVal,
                    b'\r',
                ) => State::SizeLf,
                (State::SizeLf, b'\n') => {
                    self.digits = 0;
                    self.line = 0;
                    if self.remaining == 0 {
                        // The trailer section starts after this byte.
                        pass = Some(i);
                        State::TrailerStart
                    } else {
                        State::Data
                    }
                }
                (State::DataCr, b'\r') => State::DataLf,
                (State::DataLf, b'\n') => State::Size,
                (State::DataCr | State::DataLf, _) => {
                    return Err(ChunkError("chunk data not followed by CRLF"))
                }
                (State::TrailerStart, b'\r') => State::EndLf,
                (State::TrailerStart | State::TrailerName, b) if is_tchar(b) => {
                    self.trailer_byte(b)?;
                    State::TrailerName
                }
                (State::TrailerName, b':') => {
                    self.trailer_byte(b)?;
                    State::TrailerValue
                }
                (State::TrailerValue, b'\r') => State::TrailerLf,
                (State::TrailerValue, b) if b == b'\t' || (b >= 0x20 && b != 0x7f) => {
                    self.trailer_byte(b)?;
                    State::TrailerValue
                }
                (State::TrailerLf, b'\n') => {
                    self.end_trailer_line()?;
                    State::TrailerStart
                }
                (State::TrailerStart | State::TrailerName | State::TrailerValue, _) => {
                    return Err(ChunkError("malformed trailer line"))
                }
                (State::TrailerLf, _) => return Err(ChunkError("trailer line not ended by CRLF")),
                (State::EndLf, b'\n') => {
                    self.state = State::Done;
                    return Ok(Scan {
                        pass: pass.unwrap_or(0),
                        consumed: i,
                        done: true,
                    });
                }
                (State::EndLf, _) => return Err(ChunkError("chunked body not ended by CRLF")),
                (State::Data | State::Done, _) => unreachable!("handled above or never fed"),
                // Any other byte on a size line (the trailer and data states
                // have their own errors above).
                _ => return Err(ChunkError("bad chunk size line")),
            };
        }
        let in_trailers = matches!(
            self.state,
            State::TrailerStart
                | State::TrailerName
                | State::TrailerValue
                | State::TrailerLf
                | State::EndLf
        );
        Ok(Scan {
            pass: match pass {
                Some(p) => p,
                None if in_trailers => 0,
                None => data.len(),
            },
            consumed: data.len(),
            done: false,
        })
    }

    fn trailer_byte(&mut self, b: u8) -> Result<(), ChunkError> {
        self.trailer_bytes += 1;
        if self.trailer_bytes > MAX_TRAILER_BYTES {
            return Err(ChunkError("trailer section too large"));
        }
        self.current.push(b);
        Ok(())
    }

    fn end_trailer_line(&mut self) -> Result<(), ChunkError> {
        self.trailer_lines += 1;
        if self.trailer_lines > MAX_TRAILER_LINES {
            return Err(ChunkError("too many trailer lines"));
        }
        let line = std::mem::take(&mut self.current);
        let colon = line.iter().position(|&b| b == b':').unwrap_or(line.len());
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if self.declared.iter().any(|d| d.eq_ignore_ascii_case(name)) {
            self.kept.extend_from_slice(name);
            self.kept.extend_from_slice(b": ");
            self.kept.extend_from_slice(value);
            self.kept.extend_from_slice(b"\r\n");
        }
        self.current = line;
        self.current.clear();
        Ok(())
    }
}

/// Writes the chunked body `body` (whole, already checked by a
/// [`ChunkedScanner`], which ended it after `trailers_at` bytes, the
/// start of its trailer section) to `out` in canonical form: each chunk
/// as `{size in hex}\r\n{data}\r\n`, extensions dropped, then the last
/// chunk, `kept` (the filtered trailer lines) and the final CRLF.
pub(crate) fn rechunk(body: &[u8], kept: &[u8], out: &mut Vec<u8>) {
    let mut i = 0;
    loop {
        let mut size = 0u64;
        while let Some(&b) = body.get(i).filter(|b| b.is_ascii_hexdigit()) {
            size = size << 4 | u64::from(hex(b));
            i += 1;
        }
        // The rest of the size line (checked already).
        while body.get(i).is_some_and(|&b| b != b'\n') {
            i += 1;
        }
        i += 1;
        if size == 0 {
            out.extend_from_slice(b"0\r\n");
            out.extend_from_slice(kept);
            out.extend_from_slice(b"\r\n");
            return;
        }
        let end = (i + size as usize).min(body.len());
        let mut digits = [0u8; 16];
        let hex_len = write_hex(size, &mut digits);
        out.extend_from_slice(&digits[16 - hex_len..]);
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&body[i..end]);
        out.extend_from_slice(b"\r\n");
        i = end + 2;
    }
}

/// Writes `n` in lower-case hex at the end of `buf`; returns the digits.
fn write_hex(mut n: u64, buf: &mut [u8; 16]) -> usize {
    let mut len = 0;
    loop {
        buf[15 - len] = b"0123456789abcdef"[(n & 0xf) as usize];
        len += 1;
        n >>= 4;
        if n == 0 {
            return len;
        }
    }
}

fn qdtext(b: u8) -> bool {
    b == b'\t'
        || b == b' '
        || b == 0x21
        || (0x23..=0x5b).contains(&b)
        || (0x5d..=0x7e).contains(&b)
        || b >= 0x80
}

fn hex(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        _ => b - b'A' + 10,
    }
}

#[cfg(test)]
mod tests;
