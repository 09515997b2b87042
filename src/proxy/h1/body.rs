//! The synchronous halves of the fast path's bodies: where a buffered
//! request body ends and what the instance gets of it, and what of an
//! instance's response body passes to the client at each read. The
//! connection ([`super::conn`]) does the reading and writing around them;
//! the fuzz targets (`crate::fuzzing`) drive the same code on byte strings.

use crate::proxy::policy::chunked::{rechunk, ChunkError, ChunkedScanner};
use crate::proxy::policy::Framing;

/// Largest request body the fast path takes; a longer or still-streaming
/// body sends the connection to the general path, which streams it.
pub(crate) const BUFFERED_BODY: u64 = 64 * 1024;

/// How a buffered request body stands after a look at the buffer.
#[derive(Debug)]
pub(crate) enum RequestBody {
    /// Whole: the request (head and body) ends at `end`, and the body as
    /// the instance gets it was appended to the output.
    Ready { end: usize },
    /// Too long for the fast path: the general path takes the connection.
    Fallback,
    /// More bytes are needed.
    More,
    /// Malformed (chunked): 400 and close.
    Bad(ChunkError),
}

/// A request body being buffered behind a head of `start` bytes.
#[derive(Debug)]
pub(crate) struct RequestBodyScan {
    framing: Framing,
    start: usize,
    /// How far the chunked scanner has read.
    scanned: usize,
    chunked: ChunkedScanner,
}

impl RequestBodyScan {
    /// A body framed by `framing` after `start` bytes of head, whose
    /// trailer section may pass the fields in `trailers`.
    pub(crate) fn new(framing: Framing, start: usize, trailers: Vec<Vec<u8>>) -> Self {
        RequestBodyScan {
            framing,
            start,
            scanned: start,
            chunked: ChunkedScanner::with_trailers(trailers),
        }
    }

    /// Looks at `buf` (the client's bytes from the start of the head,
    /// grown since the last look); once the body is whole, appends what
    /// the instance gets of it to `out`: a `Content-Length` body as it is,
    /// a chunked one checked and written out again in canonical form (as
    /// hyper would: plain sizes, no extensions, declared trailers only).
    pub(crate) fn step(&mut self, buf: &[u8], out: &mut Vec<u8>) -> RequestBody {
        let start = self.start;
        match self.framing {
            Framing::Empty | Framing::UntilClose => RequestBody::Ready { end: start },
            Framing::Length(n) if n > BUFFERED_BODY => RequestBody::Fallback,
            Framing::Length(n) => {
                let end = start + n as usize;
                if end <= buf.len() {
                    out.extend_from_slice(&buf[start..end]);
                    RequestBody::Ready { end }
                } else {
                    RequestBody::More
                }
            }
            Framing::Chunked => match self.chunked.feed(&buf[self.scanned..]) {
                Ok(scan) if scan.done => {
                    let end = self.scanned + scan.consumed;
                    rechunk(&buf[start..end], self.chunked.trailers(), out);
                    RequestBody::Ready { end }
                }
                Ok(_) if (buf.len() - start) as u64 > BUFFERED_BODY => RequestBody::Fallback,
                Ok(_) => {
                    self.scanned = buf.len();
                    RequestBody::More
                }
                Err(e) => RequestBody::Bad(e),
            },
        }
    }
}

/// What one look at an instance's buffered response bytes found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Relayed {
    /// Leading bytes to send to the client as they are.
    pub pass: usize,
    /// Bytes of the buffer used up (the rest, when `done`, is not part of
    /// this response).
    pub consumed: usize,
    /// The body ended; for a chunked body, [`ResponseBodyScan::trailers`]
    /// and the final CRLF follow the passed bytes.
    pub done: bool,
}

/// A response body being relayed.
#[derive(Debug)]
pub(crate) struct ResponseBodyScan {
    framing: Framing,
    remaining: u64,
    chunked: ChunkedScanner,
}

impl ResponseBodyScan {
    /// A body framed by `framing`, whose trailer section may pass the
    /// fields in `trailers` (empty unless the client takes trailers).
    pub(crate) fn new(framing: Framing, trailers: Vec<Vec<u8>>) -> Self {
        ResponseBodyScan {
            framing,
            remaining: match framing {
                Framing::Length(n) => n,
                _ => 0,
            },
            chunked: ChunkedScanner::with_trailers(trailers),
        }
    }

    /// Looks at the bytes read since the last look (those not consumed
    /// then).
    pub(crate) fn step(&mut self, buf: &[u8]) -> Result<Relayed, ChunkError> {
        let (pass, consumed, done) = match self.framing {
            Framing::Empty => (0, 0, true),
            Framing::Length(_) => {
                let take = self.remaining.min(buf.len() as u64);
                self.remaining -= take;
                (take as usize, take as usize, self.remaining == 0)
            }
            Framing::Chunked => {
                let scan = self.chunked.feed(buf)?;
                (scan.pass, scan.consumed, scan.done)
            }
            Framing::UntilClose => (buf.len(), buf.len(), false),
        };
        Ok(Relayed {
            pass,
            consumed,
            done,
        })
    }

    /// The trailer lines to write (then the final CRLF) once a chunked
    /// body is done.
    pub(crate) fn trailers(&self) -> &[u8] {
        self.chunked.trailers()
    }
}
