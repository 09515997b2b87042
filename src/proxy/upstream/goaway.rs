//! Noticing an instance's GOAWAY on a shared HTTP/2 connection
//! ([`GoAwayWatch`]), so no new stream is put on a connection that is going
//! away.
//!
//! h2 keeps letting a client open streams after it received GOAWAY, and
//! hyper's `SendRequest` reports the connection closed only once its last
//! stream ended. A stream opened in between carries an id above the
//! instance's last-stream-id: the instance ignores it, and it fails when the
//! connection closes, as a broken pipe that looks processed (so a POST could
//! not go elsewhere), or waits until then. The watch reads the frame
//! headers of what the instance sends (a 9-byte header per frame; payloads
//! are skipped, not parsed) and raises a flag at the first GOAWAY frame,
//! before h2 sees it; the connection set then takes no new stream on it.
//! Streams already sent and above the last-stream-id are failed by h2 as
//! unprocessed, and sent again elsewhere.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// HTTP/2 frame header length (RFC 9113 section 4.1).
const HEADER_LEN: usize = 9;
/// The GOAWAY frame type (RFC 9113 section 6.8).
const GOAWAY: u8 = 0x7;

/// Finds GOAWAY frames in a stream of HTTP/2 frames delivered in pieces of
/// any size.
#[derive(Debug, Default)]
pub(crate) struct FrameScanner {
    /// The frame header read so far.
    header: [u8; HEADER_LEN],
    /// How much of `header` is filled.
    have: usize,
    /// Payload bytes of the current frame still to skip.
    skip: usize,
}

impl FrameScanner {
    /// Reads `bytes`, the next part of the stream; true when a GOAWAY frame
    /// header was among them.
    pub(crate) fn scan(&mut self, mut bytes: &[u8]) -> bool {
        let mut goaway = false;
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
                continue;
            }
            let n = (HEADER_LEN - self.have).min(bytes.len());
            self.header[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have == HEADER_LEN {
                let h = &self.header;
                self.skip = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
                goaway |= h[3] == GOAWAY;
                self.have = 0;
            }
        }
        goaway
    }
}

/// An upstream HTTP/2 connection's I/O, watched for GOAWAY.
#[derive(Debug)]
pub(crate) struct GoAwayWatch<T> {
    io: T,
    scanner: FrameScanner,
    going_away: Arc<AtomicBool>,
}

impl<T> GoAwayWatch<T> {
    /// Wraps `io`; the flag it returns is raised at the instance's first
    /// GOAWAY.
    pub(crate) fn new(io: T) -> (Self, Arc<AtomicBool>) {
        let going_away = Arc::new(AtomicBool::new(false));
        let watch = GoAwayWatch {
            io,
            scanner: FrameScanner::default(),
            going_away: Arc::clone(&going_away),
        };
        (watch, going_away)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for GoAwayWatch<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            if this.scanner.scan(&buf.filled()[before..]) {
                this.going_away.store(true, Ordering::Release);
            }
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for GoAwayWatch<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, payload: usize) -> Vec<u8> {
        let mut f = vec![
            (payload >> 16) as u8,
            (payload >> 8) as u8,
            payload as u8,
            kind,
            0,
            0,
            0,
            0,
            0,
        ];
        // Payload bytes that look like a GOAWAY header, so a scanner that
        // loses its place would report one.
        f.extend(std::iter::repeat_n(GOAWAY, payload));
        f
    }

    /// SETTINGS, HEADERS, DATA (with GOAWAY-looking payload), PING.
    fn stream_without_goaway() -> Vec<u8> {
        [
            frame(0x4, 18),
            frame(0x1, 40),
            frame(0x0, 70_000),
            frame(0x6, 8),
        ]
        .concat()
    }

    #[test]
    fn payload_bytes_are_skipped_in_pieces_of_any_size() {
        let bytes = stream_without_goaway();
        for piece in [1, 2, 5, 9, 10, 17, 1000, bytes.len()] {
            let mut scanner = FrameScanner::default();
            let seen = bytes.chunks(piece).any(|c| scanner.scan(c));
            assert!(!seen, "no GOAWAY, read in pieces of {piece}");
        }
    }

    #[test]
    fn a_goaway_frame_is_found_wherever_the_pieces_split_it() {
        let bytes = [stream_without_goaway(), frame(GOAWAY, 8), frame(0x0, 3)].concat();
        let goaway_at = stream_without_goaway().len();
        for piece in [1, 3, 9, 11, 4096, bytes.len()] {
            let mut scanner = FrameScanner::default();
            let mut read = 0;
            let found = bytes.chunks(piece).find_map(|c| {
                read += c.len();
                scanner.scan(c).then_some(read)
            });
            let found = found.unwrap_or_else(|| panic!("GOAWAY missed in pieces of {piece}"));
            assert!(
                found >= goaway_at + HEADER_LEN && found < goaway_at + HEADER_LEN + piece,
                "found in the piece holding the header's end"
            );
        }
    }

    #[tokio::test]
    async fn the_flag_is_raised_by_the_bytes_read_through_the_watch() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut far, near) = tokio::io::duplex(1024);
        let (mut watch, going_away) = GoAwayWatch::new(near);
        far.write_all(&frame(0x4, 6)).await.unwrap();
        let mut buf = [0u8; 64];
        let _ = watch.read(&mut buf).await.unwrap();
        assert!(!going_away.load(Ordering::Acquire));
        far.write_all(&frame(GOAWAY, 8)).await.unwrap();
        let _ = watch.read(&mut buf).await.unwrap();
        assert!(going_away.load(Ordering::Acquire));
    }
}
