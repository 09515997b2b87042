//! The request body sent to an instance ([`UpstreamBody`]): the client's
//! body streamed through with an idle timer and a signal for when it has
//! been sent ([`Progress`]), recorded (by reference count) for HTTP/2
//! services so a stream the instance refused unprocessed can be sent
//! again. The connection code (`upstream`) sends it; it knows nothing of
//! connections, so the two do not import each other.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};

use super::policy::fields::trailer_allowed;

/// Errors of bodies the proxy streams on.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Keeps only the trailer fields the policy lets through a trailer
/// section (the same rule as the fast path's chunked scanner).
pub(crate) fn filter_trailers<D>(frame: Frame<D>) -> Frame<D> {
    match frame.into_trailers() {
        Ok(mut trailers) => {
            let names: Vec<_> = trailers
                .keys()
                .filter(|n| !trailer_allowed(n.as_str().as_bytes()))
                .cloned()
                .collect();
            for n in names {
                trailers.remove(n);
            }
            Frame::trailers(trailers)
        }
        Err(frame) => frame,
    }
}

/// A request body sent upstream.
#[derive(Debug)]
pub enum UpstreamBody {
    /// The client's body, streamed through; `progress` (present when the
    /// body was not empty from the start) says when it has been sent.
    Client {
        /// Frames sent once already, sent first (a body sent again).
        prefix: VecDeque<Frame<Bytes>>,
        /// The body (`None` once handed on whole).
        body: Option<Incoming>,
        /// Signalled at its end.
        progress: Option<Arc<Progress>>,
        /// Fires when the client pauses longer than `idle`; armed the
        /// first time the body waits on the client (a bodyless request,
        /// which is never polled, makes no timer).
        timer: Option<Pin<Box<Sleep>>>,
        /// `timeouts.client_body`.
        idle: Duration,
        /// What was sent, kept (by reference count, not copied) while it
        /// stays under [`REPLAY_LIMIT`], for [`Progress::replay`].
        record: Option<Recording>,
    },
    /// No body (a rebuilt bodyless request on retry).
    Empty,
}

/// Largest request body kept for sending again to another instance when
/// an HTTP/2 instance did not process it (REFUSED_STREAM, GOAWAY).
pub const REPLAY_LIMIT: usize = 64 * 1024;

/// The frames of a body as it is sent.
#[derive(Debug, Default)]
pub struct Recording {
    frames: Vec<Frame<Bytes>>,
    bytes: usize,
    complete: bool,
}

/// What is left of a recorded body once its attempt dropped it: the frames
/// sent, and the client's body when it had not ended.
#[derive(Debug)]
struct Stash {
    frames: Vec<Frame<Bytes>>,
    body: Option<Incoming>,
    idle: Duration,
}

impl UpstreamBody {
    /// Wraps a client body; bodies with content get a progress signal. A
    /// pause of more than `idle` between its frames ends it with an error
    /// (the upstream request is abandoned and the connection closed).
    /// With `replayable`, a body up to [`REPLAY_LIMIT`] is kept as it is
    /// sent (see [`Progress::replay`]).
    pub fn client(body: Incoming, idle: Duration, replayable: bool) -> Self {
        let progress = (!body.is_end_stream()).then(|| Arc::new(Progress::default()));
        let record = (replayable && progress.is_some()).then(Recording::default);
        UpstreamBody::Client {
            prefix: VecDeque::new(),
            body: Some(body),
            progress,
            timer: None,
            idle,
            record,
        }
    }

    /// The signal for "fully sent", when there is a body to send.
    pub fn progress(&self) -> Option<Arc<Progress>> {
        match self {
            UpstreamBody::Client { progress, .. } => progress.clone(),
            UpstreamBody::Empty => None,
        }
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // Dropped mid-way (an error, the connection closed): nothing more
        // will be sent, so the response timer may run.
        if let UpstreamBody::Client {
            progress: Some(p),
            record,
            body,
            idle,
            ..
        } = self
        {
            if let Some(r) = record.take() {
                let body = if r.complete { None } else { body.take() };
                let stash = Stash {
                    frames: r.frames,
                    body,
                    idle: *idle,
                };
                if let Ok(mut slot) = p.stash.lock() {
                    *slot = Some(stash);
                }
            }
            p.finish();
        }
    }
}

/// Whether a request body has been sent to its end.
#[derive(Debug, Default)]
pub struct Progress {
    done: AtomicBool,
    timed_out: AtomicBool,
    failed: AtomicBool,
    /// Frames handed to the connection so far.
    moves: AtomicU64,
    /// The last poll waited on the client (no frame from it yet).
    awaiting_client: AtomicBool,
    notify: Notify,
    /// A recorded body, once its attempt dropped it. Locked once when the
    /// body is dropped and once more if it is sent again: never contended.
    stash: std::sync::Mutex<Option<Stash>>,
}

impl Progress {
    /// The body again (the frames sent, then the rest of the client's
    /// body), if it was recorded and stayed under [`REPLAY_LIMIT`]. The body
    /// sent again is recorded again, for another instance if need be.
    pub fn replay(&self) -> Option<UpstreamBody> {
        let stash = self.stash.lock().ok()?.take()?;
        Some(UpstreamBody::Client {
            prefix: stash.frames.into(),
            body: stash.body,
            progress: Some(Arc::new(Progress::default())),
            timer: None,
            idle: stash.idle,
            record: Some(Recording::default()),
        })
    }

    /// Whether the client stopped sending the body (it was abandoned).
    pub fn client_timed_out(&self) -> bool {
        self.timed_out.load(Ordering::Acquire)
    }

    /// Whether the client's body was malformed or cut short (hyper's
    /// decoder failed on it): the client's fault, not the instance's.
    pub fn client_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// Frames handed to the connection so far.
    pub fn moves(&self) -> u64 {
        self.moves.load(Ordering::Relaxed)
    }

    /// Whether sending waits on the client, not on the connection.
    pub fn awaiting_client(&self) -> bool {
        self.awaiting_client.load(Ordering::Relaxed)
    }

    fn moved(&self) {
        self.moves.fetch_add(1, Ordering::Relaxed);
        self.awaiting_client.store(false, Ordering::Relaxed);
    }

    fn finish(&self) {
        if !self.done.swap(true, Ordering::AcqRel) {
            self.notify.notify_waiters();
        }
    }

    /// Completes once the body has been sent (or abandoned).
    pub async fn finished(&self) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.done.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            UpstreamBody::Client {
                prefix,
                body: client_body,
                progress,
                timer,
                idle,
                record,
            } => {
                if let Some(frame) = prefix.pop_front() {
                    let ended = prefix.is_empty()
                        && client_body.as_ref().is_none_or(Incoming::is_end_stream);
                    if let Some(r) = record {
                        r.bytes += frame.data_ref().map_or(0, Bytes::len);
                        r.complete = ended;
                        r.frames.push(copy(&frame));
                    }
                    if let Some(p) = &progress {
                        p.moved();
                        if ended {
                            p.finish();
                        }
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                let Some(body) = client_body.as_mut() else {
                    if let Some(p) = progress {
                        p.finish();
                    }
                    return Poll::Ready(None);
                };
                let polled = Pin::new(&mut *body).poll_frame(cx);
                if let Some(p) = progress {
                    match &polled {
                        Poll::Pending => p.awaiting_client.store(true, Ordering::Relaxed),
                        _ => p.moved(),
                    }
                }
                match &polled {
                    Poll::Pending => {
                        let timer = timer.get_or_insert_with(|| {
                            Box::pin(tokio::time::sleep_until(Instant::now() + *idle))
                        });
                        if timer.as_mut().poll(cx).is_ready() {
                            if let Some(p) = progress {
                                p.timed_out.store(true, Ordering::Release);
                                p.finish();
                            }
                            return Poll::Ready(Some(Err("client body timed out".into())));
                        }
                        return Poll::Pending;
                    }
                    Poll::Ready(Some(Ok(_))) => {
                        if let Some(timer) = timer {
                            timer.as_mut().reset(Instant::now() + *idle);
                        }
                    }
                    _ => {}
                }
                let ended = match &polled {
                    Poll::Ready(None) => true,
                    Poll::Ready(Some(Ok(_))) => body.is_end_stream(),
                    _ => false,
                };
                if let Some(p) = progress {
                    if let Poll::Ready(Some(Err(_))) = &polled {
                        p.failed.store(true, Ordering::Release);
                    }
                    if ended || matches!(polled, Poll::Ready(Some(Err(_)))) {
                        p.finish();
                    }
                }
                if matches!(polled, Poll::Ready(Some(Err(_)))) {
                    *record = None;
                }
                match polled {
                    Poll::Ready(Some(Ok(frame))) => {
                        let frame = filter_trailers(frame);
                        if let Some(r) = record {
                            let len = frame.data_ref().map_or(0, Bytes::len);
                            if r.bytes + len > REPLAY_LIMIT {
                                *record = None;
                            } else {
                                r.bytes += len;
                                r.complete = ended;
                                r.frames.push(copy(&frame));
                            }
                        }
                        Poll::Ready(Some(Ok(frame)))
                    }
                    Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
                    Poll::Ready(None) => {
                        if let Some(r) = record {
                            r.complete = true;
                        }
                        Poll::Ready(None)
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
            UpstreamBody::Empty => Poll::Ready(None),
        }
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Client { prefix, body, .. } => {
                prefix.is_empty() && body.as_ref().is_none_or(Incoming::is_end_stream)
            }
            UpstreamBody::Empty => true,
        }
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Client { prefix, body, .. } => {
                let sent: u64 = prefix
                    .iter()
                    .filter_map(Frame::data_ref)
                    .map(|d| d.len() as u64)
                    .sum();
                let rest = body
                    .as_ref()
                    .map_or_else(|| SizeHint::with_exact(0), Incoming::size_hint);
                let mut hint = SizeHint::new();
                hint.set_lower(rest.lower() + sent);
                if let Some(upper) = rest.upper() {
                    hint.set_upper(upper + sent);
                }
                hint
            }
            UpstreamBody::Empty => SizeHint::with_exact(0),
        }
    }
}

/// A second handle on a frame (data by reference count).
fn copy(frame: &Frame<Bytes>) -> Frame<Bytes> {
    match (frame.data_ref(), frame.trailers_ref()) {
        (Some(d), _) => Frame::data(d.clone()),
        (None, Some(t)) => Frame::trailers(t.clone()),
        (None, None) => Frame::data(Bytes::new()),
    }
}
