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
//!
//! The same read of frame headers follows the instance's SETTINGS frames,
//! for the one setting the proxy needs before h2 has applied them:
//! `SETTINGS_ENABLE_CONNECT_PROTOCOL` (RFC 8441), without which no
//! extended CONNECT may be sent. A fresh connection's first request would
//! otherwise have to guess whether the instance's settings arrived yet.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// HTTP/2 frame header length (RFC 9113 section 4.1).
const HEADER_LEN: usize = 9;
/// The GOAWAY frame type (RFC 9113 section 6.8).
const GOAWAY: u8 = 0x7;
/// The SETTINGS frame type (RFC 9113 section 6.5) and its ACK flag.
const SETTINGS: u8 = 0x4;
const ACK: u8 = 0x1;
/// Length of one setting: a 16-bit identifier and a 32-bit value.
const SETTING_LEN: usize = 6;
/// `SETTINGS_ENABLE_CONNECT_PROTOCOL` (RFC 8441 section 3).
const ENABLE_CONNECT_PROTOCOL: u16 = 0x8;

/// What [`FrameScanner::scan`] saw in a piece of the stream.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Seen {
    /// A GOAWAY frame header.
    pub goaway: bool,
    /// The end of a SETTINGS frame (not an ACK) from the instance.
    pub settings: bool,
}

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
    /// The current frame is SETTINGS: its payload is read as settings.
    in_settings: bool,
    /// The setting read so far, and how much of it.
    setting: [u8; SETTING_LEN],
    setting_have: usize,
    /// The instance enabled extended CONNECT in a SETTINGS frame.
    pub(crate) connect_protocol: bool,
}

impl FrameScanner {
    /// Reads `bytes`, the next part of the stream: what it held.
    pub(crate) fn scan(&mut self, mut bytes: &[u8]) -> Seen {
        let mut seen = Seen::default();
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                if self.in_settings {
                    self.read_settings(&bytes[..n]);
                }
                self.skip -= n;
                bytes = &bytes[n..];
                if self.skip == 0 && self.in_settings {
                    self.in_settings = false;
                    seen.settings = true;
                }
                continue;
            }
            let n = (HEADER_LEN - self.have).min(bytes.len());
            self.header[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have == HEADER_LEN {
                let h = &self.header;
                self.skip = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
                seen.goaway |= h[3] == GOAWAY;
                self.in_settings = h[3] == SETTINGS && h[4] & ACK == 0;
                self.setting_have = 0;
                if self.in_settings && self.skip == 0 {
                    self.in_settings = false;
                    seen.settings = true;
                }
                self.have = 0;
            }
        }
        seen
    }

    /// Reads part of a SETTINGS payload, one 6-byte setting at a time.
    fn read_settings(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let n = (SETTING_LEN - self.setting_have).min(bytes.len());
            self.setting[self.setting_have..self.setting_have + n].copy_from_slice(&bytes[..n]);
            self.setting_have += n;
            bytes = &bytes[n..];
            if self.setting_have == SETTING_LEN {
                self.setting_have = 0;
                let s = &self.setting;
                if u16::from_be_bytes([s[0], s[1]]) == ENABLE_CONNECT_PROTOCOL {
                    // RFC 8441 section 3: once 1, never back to 0.
                    self.connect_protocol |= u32::from_be_bytes([s[2], s[3], s[4], s[5]]) == 1;
                }
            }
        }
    }
}

/// What the instance said on one connection, as read by its
/// [`GoAwayWatch`].
#[derive(Debug, Default)]
pub(crate) struct Peer {
    /// The instance sent GOAWAY.
    pub going_away: AtomicBool,
    /// Its settings: [`UNKNOWN`] until its first SETTINGS frame ended.
    connect_protocol: AtomicU8,
    settled: tokio::sync::Notify,
}

const UNKNOWN: u8 = 0;
const OFF: u8 = 1;
const ON: u8 = 2;

impl Peer {
    /// Whether the instance takes extended CONNECT (RFC 8441), waiting at
    /// most `wait` for its first SETTINGS frame on a fresh connection.
    pub(crate) async fn extended_connect(&self, wait: Duration) -> bool {
        let settled = self.settled.notified();
        match self.connect_protocol.load(Ordering::Acquire) {
            UNKNOWN => {
                let _ = tokio::time::timeout(wait, settled).await;
                self.connect_protocol.load(Ordering::Acquire) == ON
            }
            known => known == ON,
        }
    }

    fn settle(&self, connect_protocol: bool) {
        let now = if connect_protocol { ON } else { OFF };
        if self.connect_protocol.swap(now, Ordering::AcqRel) == UNKNOWN {
            self.settled.notify_waiters();
        }
    }
}

/// An upstream HTTP/2 connection's I/O, watched for GOAWAY.
#[derive(Debug)]
pub(crate) struct GoAwayWatch<T> {
    io: T,
    scanner: FrameScanner,
    peer: Arc<Peer>,
}

impl<T> GoAwayWatch<T> {
    /// Wraps `io`; what it returns follows what the instance says
    /// (`going_away` is raised at its first GOAWAY).
    pub(crate) fn new(io: T) -> (Self, Arc<Peer>) {
        let peer = Arc::new(Peer::default());
        let watch = GoAwayWatch {
            io,
            scanner: FrameScanner::default(),
            peer: Arc::clone(&peer),
        };
        (watch, peer)
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
            let seen = this.scanner.scan(&buf.filled()[before..]);
            if seen.goaway {
                this.peer.going_away.store(true, Ordering::Release);
            }
            if seen.settings {
                this.peer.settle(this.scanner.connect_protocol);
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
            let seen = bytes.chunks(piece).any(|c| scanner.scan(c).goaway);
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
                scanner.scan(c).goaway.then_some(read)
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
        let (mut watch, peer) = GoAwayWatch::new(near);
        far.write_all(&frame(0x4, 6)).await.unwrap();
        let mut buf = [0u8; 64];
        let _ = watch.read(&mut buf).await.unwrap();
        assert!(!peer.going_away.load(Ordering::Acquire));
        far.write_all(&frame(GOAWAY, 8)).await.unwrap();
        let _ = watch.read(&mut buf).await.unwrap();
        assert!(peer.going_away.load(Ordering::Acquire));
    }

    /// A SETTINGS frame holding `settings` (identifier, value).
    fn settings(flags: u8, settings: &[(u16, u32)]) -> Vec<u8> {
        let len = settings.len() * SETTING_LEN;
        let mut f = vec![
            (len >> 16) as u8,
            (len >> 8) as u8,
            len as u8,
            SETTINGS,
            flags,
            0,
            0,
            0,
            0,
        ];
        for (id, value) in settings {
            f.extend(id.to_be_bytes());
            f.extend(value.to_be_bytes());
        }
        f
    }

    #[test]
    fn extended_connect_is_read_from_settings_in_pieces_of_any_size() {
        let on = [
            settings(
                0,
                &[(0x3, 100), (ENABLE_CONNECT_PROTOCOL, 1), (0x4, 65_535)],
            ),
            frame(0x8, 4),
        ]
        .concat();
        let off = [settings(0, &[(0x3, 100)]), settings(ACK, &[])].concat();
        for piece in [1, 2, 5, 7, 9, 13, on.len()] {
            let mut scanner = FrameScanner::default();
            let ends = on
                .chunks(piece)
                .filter(|c| scanner.scan(c).settings)
                .count();
            assert_eq!(ends, 1, "one SETTINGS frame ended, pieces of {piece}");
            assert!(scanner.connect_protocol, "pieces of {piece}");
            let mut scanner = FrameScanner::default();
            let ends = off
                .chunks(piece)
                .filter(|c| scanner.scan(c).settings)
                .count();
            assert_eq!(ends, 1, "an ACK is not the instance's settings");
            assert!(!scanner.connect_protocol);
        }
        // A payload byte that looks like the setting is not read as one.
        let mut scanner = FrameScanner::default();
        scanner.scan(&frame(0x0, 12));
        scanner.scan(&settings(0, &[]));
        assert!(!scanner.connect_protocol);
    }

    #[test]
    fn any_bytes_read_in_any_pieces_read_as_they_do_whole() {
        // xorshift: repeatable bytes, biased to zeros so that frame lengths
        // are often small and frames follow each other.
        let mut x = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..5_000 {
            let len = (next() % 160) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| match next() % 8 {
                    0..=3 => 0,
                    4 => SETTINGS,
                    5 => 8,
                    6 => 1,
                    _ => next() as u8,
                })
                .collect();
            let mut whole = FrameScanner::default();
            let expected = whole.scan(&bytes);
            let mut pieces = FrameScanner::default();
            let (mut rest, mut got) = (&bytes[..], Seen::default());
            while !rest.is_empty() {
                let n = (1 + (next() % 12) as usize).min(rest.len());
                let seen = pieces.scan(&rest[..n]);
                got.goaway |= seen.goaway;
                got.settings |= seen.settings;
                rest = &rest[n..];
            }
            assert_eq!(got, expected, "{bytes:?}");
            assert_eq!(pieces.connect_protocol, whole.connect_protocol, "{bytes:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_waits_for_the_first_settings_then_knows() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut far, near) = tokio::io::duplex(1024);
        let (mut watch, peer) = GoAwayWatch::new(near);
        // Nothing read yet: waits for the settings, up to its bound.
        assert!(!peer.extended_connect(Duration::from_millis(50)).await);
        let waiting = {
            let peer = Arc::clone(&peer);
            tokio::spawn(async move { peer.extended_connect(Duration::from_secs(5)).await })
        };
        tokio::task::yield_now().await;
        far.write_all(&settings(0, &[(ENABLE_CONNECT_PROTOCOL, 1)]))
            .await
            .unwrap();
        let mut buf = [0u8; 64];
        let _ = watch.read(&mut buf).await.unwrap();
        assert!(waiting.await.unwrap());
        assert!(peer.extended_connect(Duration::ZERO).await);
    }
}
