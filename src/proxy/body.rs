//! Bodies crossing the proxy: [`UpstreamBody`] (what is sent to an
//! instance) and [`ProxyBody`] (what the client receives). The upstream
//! response body carries the request's in-flight count and its pooled
//! connection, so both are released exactly when the body ends.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::upstream::Sender;
use crate::registry::InFlightGuard;

/// A request body sent upstream.
#[derive(Debug)]
pub enum UpstreamBody {
    /// The client's body, streamed through.
    Client(Incoming),
    /// No body (a rebuilt bodyless request on retry).
    Empty,
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            UpstreamBody::Client(b) => Pin::new(b).poll_frame(cx),
            UpstreamBody::Empty => Poll::Ready(None),
        }
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Client(b) => b.is_end_stream(),
            UpstreamBody::Empty => true,
        }
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Client(b) => b.size_hint(),
            UpstreamBody::Empty => SizeHint::with_exact(0),
        }
    }
}

/// A response body sent to the client.
#[derive(Debug)]
pub enum ProxyBody {
    /// An instance's response, streamed through.
    Upstream(TrackedBody),
    /// A body the proxy made itself (errors, admin answers).
    Full(Option<Bytes>),
}

impl ProxyBody {
    /// A complete body.
    pub fn full(data: impl Into<Bytes>) -> Self {
        let data = data.into();
        ProxyBody::Full((!data.is_empty()).then_some(data))
    }

    /// No body.
    pub fn empty() -> Self {
        ProxyBody::Full(None)
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ProxyBody::Upstream(b) => Pin::new(b).poll_frame(cx),
            ProxyBody::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream(b) => b.inner.is_end_stream(),
            ProxyBody::Full(data) => data.is_none(),
        }
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream(b) => b.inner.size_hint(),
            ProxyBody::Full(data) => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}

/// An upstream response body that holds the request's in-flight count and
/// its connection until the body ends.
#[derive(Debug)]
pub struct TrackedBody {
    inner: Incoming,
    guard: Option<InFlightGuard>,
    sender: Option<Sender>,
}

impl TrackedBody {
    pub(crate) fn new(inner: Incoming, guard: InFlightGuard, sender: Option<Sender>) -> Self {
        TrackedBody {
            inner,
            guard: Some(guard),
            sender,
        }
    }

    /// Ends tracking; a cleanly finished body returns its connection to the
    /// instance's pool.
    fn finish(&mut self, clean: bool) {
        if let Some(guard) = self.guard.take() {
            if let (true, Some(sender)) = (clean, self.sender.take()) {
                if !guard.instance().is_draining() {
                    guard.instance().idle.put(sender);
                }
            }
        }
        self.sender = None;
    }
}

impl Body for TrackedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    #[inline]
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.finish(true),
            Poll::Ready(Some(Err(_))) => this.finish(false),
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => this.finish(true),
            _ => {}
        }
        polled
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for TrackedBody {
    fn drop(&mut self) {
        // The server skips polling bodies that are empty from the start, and
        // a body read to its end may be dropped before the final poll: the
        // connection is still clean in both cases.
        let clean = self.inner.is_end_stream();
        self.finish(clean);
    }
}
