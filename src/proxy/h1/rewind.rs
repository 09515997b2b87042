//! The client socket as the general (hyper) path sees it: bytes the fast
//! path already read are put back in front, so hyper reads the connection
//! from its first byte; and a write that makes no progress for
//! `timeouts.client_send` fails, so a client that stops reading cannot hold
//! a connection (and the instance's response behind it) forever.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

/// `stream` (a TCP socket, or TLS over one), read as `prefix` followed by
/// what the socket delivers.
#[derive(Debug)]
pub struct Rewind<S = TcpStream> {
    prefix: Bytes,
    stream: S,
    /// Armed while a write waits for the client.
    stalled: Option<Pin<Box<Sleep>>>,
    send_timeout: Duration,
    /// Hold each write back for one turn of the scheduler (HTTP/2).
    coalesce: bool,
    /// The current write was held back once already.
    held: bool,
    /// Nothing has been read yet and nothing was known of the protocol:
    /// the first read tells whether it is HTTP/2.
    sniff: bool,
}

impl<S> Rewind<S> {
    /// Puts `prefix` back in front of `stream`; writes stalled for longer
    /// than `send_timeout` fail.
    pub fn new(stream: S, prefix: Bytes, send_timeout: Duration) -> Self {
        let prefix_is_empty = prefix.is_empty();
        Rewind {
            prefix,
            stream,
            stalled: None,
            send_timeout,
            coalesce: false,
            held: false,
            sniff: prefix_is_empty,
        }
    }

    /// Holds each write back for one turn of the scheduler, so the
    /// frames of every stream whose answer is ready in that turn leave in
    /// one write (HTTP/2 connections).
    ///
    /// hyper's HTTP/2 connection task writes whenever it runs, and tokio
    /// runs it right after the stream task that woke it (its LIFO slot):
    /// with many streams answered at once, each answer went out in a
    /// system call of its own. A write asked for the first time returns
    /// `Pending` and wakes its own task, which puts the connection's task
    /// at the back of the run queue, behind the streams ready now; their
    /// answers join the same write when it runs again (HAProxy's muxer
    /// sends once per event-loop pass the same way). A write waits at most
    /// for the tasks already queued.
    ///
    /// A connection handed over before anything was read (`proxy.fast_path
    /// = false`) turns this on itself when its first bytes are the HTTP/2
    /// preface.
    pub fn coalesce_writes(&mut self) {
        self.coalesce = true;
    }

    /// Whether this write is to wait one turn (and if so, arranges the
    /// wake-up).
    fn hold(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.coalesce {
            return false;
        }
        self.held = !self.held;
        if self.held {
            cx.waker().wake_by_ref();
        }
        self.held
    }

    /// Whether the connection starts with the HTTP/2 connection preface.
    pub fn is_h2_preface(&self) -> bool {
        self.prefix.starts_with(b"PRI * HTTP/2.0")
    }

    /// Turns a pending write into a timeout error once it has been pending
    /// for too long; a write that completes disarms the timer.
    fn bound<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match polled {
            Poll::Pending => {
                let timeout = self.send_timeout;
                let timer = self.stalled.get_or_insert_with(|| {
                    Box::pin(tokio::time::sleep_until(Instant::now() + timeout))
                });
                if timer.as_mut().poll(cx).is_ready() {
                    self.stalled = None;
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "client stopped reading",
                    )));
                }
                Poll::Pending
            }
            ready => {
                self.stalled = None;
                ready
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if self.sniff && buf.filled().len() > before {
            self.sniff = false;
            if buf.filled()[before..].starts_with(b"PRI * HTTP/2.0") {
                self.coalesce = true;
            }
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.hold(cx) {
            return Poll::Pending;
        }
        let polled = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.bound(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.hold(cx) {
            return Poll::Pending;
        }
        let polled = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.bound(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.stream).poll_flush(cx);
        self.bound(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.stream).poll_shutdown(cx);
        self.bound(cx, polled)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    use tokio::io::AsyncReadExt;

    use super::*;

    /// Counts its wake-ups.
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn coalescing_holds_each_write_back_once_and_wakes_its_task() {
        let (near, mut far) = tokio::io::duplex(1024);
        let mut io = Rewind::new(near, Bytes::new(), Duration::from_secs(5));
        io.coalesce_writes();
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = std::task::Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let mut io = Pin::new(&mut io);
        for (n, bytes) in [&b"one"[..], b"two"].into_iter().enumerate() {
            assert!(io.as_mut().poll_write(&mut cx, bytes).is_pending());
            assert_eq!(
                count.0.load(Ordering::SeqCst),
                n + 1,
                "woken to write later"
            );
            match io.as_mut().poll_write(&mut cx, bytes) {
                Poll::Ready(Ok(3)) => {}
                other => panic!("the second try writes: {other:?}"),
            }
        }
        let slices = [io::IoSlice::new(b"th"), io::IoSlice::new(b"ree")];
        assert!(io
            .as_mut()
            .poll_write_vectored(&mut cx, &slices)
            .is_pending());
        assert!(matches!(
            io.as_mut().poll_write_vectored(&mut cx, &slices),
            Poll::Ready(Ok(5))
        ));
        let mut got = [0u8; 11];
        far.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"onetwothree");
    }

    #[tokio::test]
    async fn a_connection_read_from_its_start_coalesces_if_it_is_http2() {
        for (first, h2) in [
            (&b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..], true),
            (b"GET / HTTP/1.1\r\n", false),
        ] {
            let (near, mut far) = tokio::io::duplex(1024);
            let mut io = Rewind::new(near, Bytes::new(), Duration::from_secs(5));
            tokio::io::AsyncWriteExt::write_all(&mut far, first)
                .await
                .unwrap();
            let mut got = vec![0u8; first.len()];
            io.read_exact(&mut got).await.unwrap();
            assert_eq!(io.coalesce, h2, "{first:?}");
        }
        // Bytes put back by the fast path are no HTTP/2 preface: the
        // connection was sorted already.
        let (near, mut far) = tokio::io::duplex(1024);
        let mut io = Rewind::new(near, Bytes::from_static(b"GET"), Duration::from_secs(5));
        tokio::io::AsyncWriteExt::write_all(&mut far, b"PRI * HTTP/2.0")
            .await
            .unwrap();
        let mut got = [0u8; 17];
        io.read_exact(&mut got).await.unwrap();
        assert!(!io.coalesce);
    }

    #[tokio::test]
    async fn without_coalescing_writes_go_at_once() {
        let (near, _far) = tokio::io::duplex(1024);
        let mut io = Rewind::new(near, Bytes::new(), Duration::from_secs(5));
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert!(matches!(
            Pin::new(&mut io).poll_write(&mut cx, b"now"),
            Poll::Ready(Ok(3))
        ));
    }
}
