//! Bodies crossing the proxy: [`ProxyBody`] (what the client receives),
//! whose upstream response body ([`TrackedBody`]) carries the request's
//! in-flight count and its connection, so both are released exactly when
//! the body ends, and whose pauses are bounded by the service's
//! `timeouts.response_body` ([`BodyPause`]). The request body sent
//! upstream is in [`super::request_body`], re-exported here.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use super::request_body::filter_trailers;
pub use super::request_body::{BoxError, Progress, Recording, UpstreamBody, REPLAY_LIMIT};
use super::upstream::Sender;
use crate::registry::InFlightGuard;

/// A response body sent to the client.
#[derive(Debug)]
pub enum ProxyBody {
    /// An instance's response, streamed through.
    Upstream(TrackedBody),
    /// A plain HTTP/1.1 instance's response, read from its socket.
    Raw(super::h1::general::RawBody),
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
    type Error = BoxError;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ProxyBody::Upstream(b) => Pin::new(b).poll_frame(cx),
            ProxyBody::Raw(b) => Pin::new(b).poll_frame(cx),
            ProxyBody::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream(b) => b.is_end_stream(),
            ProxyBody::Raw(b) => b.is_end_stream(),
            ProxyBody::Full(data) => data.is_none(),
        }
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream(b) => b.inner.size_hint(),
            ProxyBody::Raw(b) => b.size_hint(),
            ProxyBody::Full(data) => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}

/// The longest pause an instance may take while it sends a response body
/// (`timeouts.response_body`), on every path: armed when the instance has
/// nothing to give, disarmed by its next bytes. Its timer is made at the
/// first pause, so bodies that arrive with their head never make one.
#[derive(Debug)]
pub(crate) struct BodyPause {
    limit: Duration,
    timer: Option<Pin<Box<Sleep>>>,
    armed: bool,
}

impl BodyPause {
    pub(crate) fn new(limit: Duration) -> Self {
        BodyPause {
            limit,
            timer: None,
            armed: false,
        }
    }

    /// The instance gave nothing at this poll: whether the pause has now
    /// lasted the limit (if not, `cx` is woken when it has).
    pub(crate) fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.armed {
            let deadline = Instant::now() + self.limit;
            match &mut self.timer {
                Some(timer) => timer.as_mut().reset(deadline),
                None => self.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
            self.armed = true;
        }
        self.timer
            .as_mut()
            .is_some_and(|timer| timer.as_mut().poll(cx).is_ready())
    }

    /// The instance gave bytes: the next pause starts a fresh wait.
    pub(crate) fn progressed(&mut self) {
        self.armed = false;
    }

    /// What the client's side is told when the limit is reached.
    pub(crate) fn detail(&self) -> String {
        pause_detail(self.limit)
    }
}

/// Why a response body was cut short after a pause of `limit`.
pub(crate) fn pause_detail(limit: Duration) -> String {
    format!(
        "instance sent nothing for {}ms mid-body (timeouts.response_body)",
        limit.as_millis()
    )
}

/// An upstream response body that holds the request's in-flight count and
/// its connection (or HTTP/2 stream) until the body ends.
///
/// A gRPC response whose instance fails mid-body (reset, connection lost)
/// ends with trailers saying so (`grpc-status: 14` UNAVAILABLE, or 4
/// DEADLINE_EXCEEDED after a pause longer than `timeouts.response_body`)
/// rather than a broken stream, so the client sees a status, as for the
/// proxy's other errors.
#[derive(Debug)]
pub struct TrackedBody {
    inner: Incoming,
    guard: Option<InFlightGuard>,
    sender: Option<Sender>,
    grpc: bool,
    /// Ended early with the proxy's own trailers.
    ended: bool,
    pause: BodyPause,
}

impl TrackedBody {
    pub(crate) fn new(
        inner: Incoming,
        guard: InFlightGuard,
        sender: Option<Sender>,
        grpc: bool,
        pause: Duration,
    ) -> Self {
        TrackedBody {
            inner,
            guard: Some(guard),
            sender,
            grpc,
            ended: false,
            pause: BodyPause::new(pause),
        }
    }

    /// Ends tracking; a cleanly finished body returns its connection to the
    /// instance's pool.
    fn finish(&mut self, clean: bool) {
        if let Some(guard) = self.guard.take() {
            if let (true, Some(sender)) = (clean, self.sender.take()) {
                super::upstream::keep(guard.instance(), sender);
            }
        }
        self.sender = None;
    }
}

impl Body for TrackedBody {
    type Data = Bytes;
    type Error = BoxError;

    #[inline]
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.ended {
            return Poll::Ready(None);
        }
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Pending => {
                if !this.pause.expired(cx) {
                    return Poll::Pending;
                }
                this.finish(false);
                this.ended = true;
                let detail = this.pause.detail();
                if this.grpc {
                    return Poll::Ready(Some(Ok(Frame::trailers(grpc_failed(true, &detail)))));
                }
                return Poll::Ready(Some(Err(detail.into())));
            }
            Poll::Ready(None) => this.finish(true),
            Poll::Ready(Some(Err(e))) if this.grpc => {
                this.finish(false);
                this.ended = true;
                return Poll::Ready(Some(Ok(Frame::trailers(grpc_failed(false, e)))));
            }
            Poll::Ready(Some(Err(_))) => this.finish(false),
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => this.finish(true),
            Poll::Ready(Some(Ok(_))) => {}
        }
        this.pause.progressed();
        polled.map(|f| f.map(|f| f.map(filter_trailers).map_err(Into::into)))
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Trailers ending a gRPC response whose instance failed mid-body:
/// `grpc-status` 14 (UNAVAILABLE), or 4 (DEADLINE_EXCEEDED) when it
/// `paused` longer than `timeouts.response_body`.
pub(crate) fn grpc_failed(paused: bool, e: &dyn std::fmt::Display) -> http::HeaderMap {
    let mut trailers = http::HeaderMap::new();
    let status = if paused { "4" } else { "14" };
    trailers.insert("grpc-status", http::HeaderValue::from_static(status));
    let message = super::grpc::percent_encode(&format!("instance failed mid-response: {e}"));
    if let Ok(v) = http::HeaderValue::from_str(&message) {
        trailers.insert("grpc-message", v);
    }
    trailers
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
