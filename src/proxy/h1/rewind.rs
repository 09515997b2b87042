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
}

impl<S> Rewind<S> {
    /// Puts `prefix` back in front of `stream`; writes stalled for longer
    /// than `send_timeout` fail.
    pub fn new(stream: S, prefix: Bytes, send_timeout: Duration) -> Self {
        Rewind {
            prefix,
            stream,
            stalled: None,
            send_timeout,
        }
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
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.bound(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
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
