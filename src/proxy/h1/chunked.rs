//! Finding where a chunked body ends (RFC 9112 section 7.1) while its bytes
//! pass through unchanged: the fast path forwards chunked bodies as they
//! are and only needs to know where each one stops.

/// Why a chunked body is malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed chunked body: {0}")]
pub(crate) struct ChunkError(&'static str);

/// Longest chunk-size line (digits plus extensions) accepted.
const MAX_SIZE_LINE: u32 = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Chunk-size hex digits.
    Size,
    /// Chunk extensions, up to CR.
    Ext,
    /// LF ending the size line.
    SizeLf,
    /// Chunk data; `remaining` bytes left.
    Data,
    DataCr,
    DataLf,
    /// Start of a trailer line, or the CR of the final empty line.
    TrailerStart,
    TrailerLine,
    TrailerLf,
    EndLf,
    Done,
}

/// Tracks one chunked body fed to it piece by piece.
#[derive(Debug, Clone)]
pub(crate) struct ChunkedTracker {
    state: State,
    remaining: u64,
    digits: u32,
    line: u32,
}

impl Default for ChunkedTracker {
    fn default() -> Self {
        ChunkedTracker {
            state: State::Size,
            remaining: 0,
            digits: 0,
            line: 0,
        }
    }
}

impl ChunkedTracker {
    /// Whether the final chunk and trailers have been seen.
    #[cfg(test)]
    pub(crate) fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Feeds the next bytes of the body. Returns `Some(n)` when the body
    /// ends after the first `n` bytes of `data`, `None` when all of `data`
    /// belongs to it and more is to come.
    pub(crate) fn feed(&mut self, data: &[u8]) -> Result<Option<usize>, ChunkError> {
        let mut i = 0;
        while i < data.len() {
            if self.state == State::Data {
                let take = self.remaining.min((data.len() - i) as u64);
                self.remaining -= take;
                i += take as usize;
                if self.remaining == 0 {
                    self.state = State::DataCr;
                }
                continue;
            }
            let b = data[i];
            i += 1;
            self.state = match self.state {
                State::Size => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        self.digits += 1;
                        if self.digits > 16 {
                            return Err(ChunkError("chunk size too large"));
                        }
                        self.remaining = self.remaining * 16 + u64::from(hex(b));
                        State::Size
                    }
                    b';' | b' ' | b'\t' if self.digits > 0 => State::Ext,
                    b'\r' if self.digits > 0 => State::SizeLf,
                    _ => return Err(ChunkError("bad chunk size")),
                },
                State::Ext => {
                    self.line += 1;
                    if self.line > MAX_SIZE_LINE {
                        return Err(ChunkError("chunk extension too long"));
                    }
                    match b {
                        b'\r' => State::SizeLf,
                        b'\n' => return Err(ChunkError("bare LF in chunk size line")),
                        _ => State::Ext,
                    }
                }
                State::SizeLf => {
                    if b != b'\n' {
                        return Err(ChunkError("chunk size line not ended by CRLF"));
                    }
                    self.digits = 0;
                    self.line = 0;
                    if self.remaining == 0 {
                        State::TrailerStart
                    } else {
                        State::Data
                    }
                }
                State::DataCr if b == b'\r' => State::DataLf,
                State::DataLf if b == b'\n' => State::Size,
                State::DataCr | State::DataLf => {
                    return Err(ChunkError("chunk data not followed by CRLF"))
                }
                State::TrailerStart if b == b'\r' => State::EndLf,
                State::TrailerStart | State::TrailerLine => {
                    self.line += 1;
                    if self.line > MAX_SIZE_LINE {
                        return Err(ChunkError("trailer line too long"));
                    }
                    if b == b'\r' {
                        State::TrailerLf
                    } else {
                        State::TrailerLine
                    }
                }
                State::TrailerLf if b == b'\n' => {
                    self.line = 0;
                    State::TrailerStart
                }
                State::TrailerLf => return Err(ChunkError("trailer line not ended by CRLF")),
                State::EndLf if b == b'\n' => {
                    self.state = State::Done;
                    return Ok(Some(i));
                }
                State::EndLf => return Err(ChunkError("chunked body not ended by CRLF")),
                State::Data | State::Done => unreachable!("handled above or never fed"),
            };
        }
        Ok(None)
    }
}

fn hex(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        _ => b - b'A' + 10,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end_of(body: &[u8]) -> Result<Option<usize>, ChunkError> {
        ChunkedTracker::default().feed(body)
    }

    #[test]
    fn finds_the_end_of_whole_bodies() {
        let body = b"5\r\nhello\r\n0\r\n\r\nGET / HTTP/1.1\r\n";
        assert_eq!(end_of(body), Ok(Some(15)));
        let ext = b"5;name=v\r\nhello\r\nA\r\n0123456789\r\n0\r\n\r\n";
        assert_eq!(end_of(ext), Ok(Some(ext.len())));
        let trailers = b"3\r\nabc\r\n0\r\nx-sum: 1\r\ny: 2\r\n\r\nrest";
        assert_eq!(end_of(trailers), Ok(Some(trailers.len() - 4)));
    }

    #[test]
    fn any_split_gives_the_same_end() {
        let body = b"1a\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nt: v\r\n\r\nNEXT";
        let end = body.len() - 4;
        for split in 0..body.len() {
            let mut t = ChunkedTracker::default();
            let first = t.feed(&body[..split]).unwrap();
            let total = match first {
                Some(n) => n,
                None => split + t.feed(&body[split..]).unwrap().unwrap(),
            };
            assert_eq!(total, end, "split at {split}");
            assert!(t.is_done());
        }
    }

    #[test]
    fn incomplete_bodies_want_more() {
        assert_eq!(end_of(b"5\r\nhel"), Ok(None));
        assert_eq!(end_of(b"0\r\n"), Ok(None));
        assert_eq!(end_of(b"0\r\n\r"), Ok(None));
    }

    #[test]
    fn rejects_malformed_bodies() {
        for bad in [
            &b"x\r\n"[..],
            b"\r\n",
            b"5\nhello",
            b"5\r\nhelloX\r\n",
            b"11111111111111111\r\n",
            b"0\r\n\r\x00",
            b"5;a\nb\r\n",
        ] {
            assert!(end_of(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
