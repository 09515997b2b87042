//! Plain HTTP/1.1 instances for the general path's bodyless requests
//! (HTTP/2 and HTTP/1.0 clients, and all clients when the fast path is
//! off): the request head the policy planned is written as bytes to a
//! pooled raw socket, and the response head is read by the fast path's
//! codec ([`super::upstream`]), then handed to hyper's server as a header
//! map with a body ([`RawBody`]) that reads the socket as the client takes
//! it. No hyper client connection task, channel or upstream header map
//! sits in between, and the response is parsed and checked by the same
//! code whichever client asked.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue};
use http::response::Parts;
use http::{HeaderMap, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use tokio::io::AsyncReadExt;

use super::head::ResponseHead;
use super::upstream::{Sink, READ_SPACE};
use crate::proxy::body::{BodyPause, BoxError};
use crate::proxy::headers::MapWriter;
use crate::proxy::policy::chunked::{ChunkError, ChunkedScanner};
use crate::proxy::policy::request::{Hop, RequestPlan};
use crate::proxy::policy::response::Asked;
use crate::proxy::policy::{passes, Framing};
use crate::proxy::upstream::{self, RawConn};
use crate::registry::InFlightGuard;

pub(crate) use super::upstream::{Dropped, RawExchange};

/// Appends the request head for the instance: `method target HTTP/1.1`,
/// the received lines the policy keeps (`fields` minus `plan.skip`), the
/// lines it adds, and the empty line.
pub(crate) fn request_head(
    method: &str,
    target: &str,
    fields: &[(HeaderName, HeaderValue)],
    plan: &RequestPlan<'_>,
    hop: &Hop<'_>,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (i, (name, value)) in fields.iter().enumerate() {
        if passes(plan.skip, i) {
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
    plan.write_additions(fields, hop, None, out);
    out.extend_from_slice(b"\r\n");
}

/// Makes the final response head a header map for hyper's server.
pub(crate) struct MapHead<'a> {
    /// Where the lines go (a drained map whose memory is reused).
    pub map: Option<HeaderMap>,
    /// The client speaks HTTP/2 (no connection-specific fields).
    pub h2: bool,
    /// The client takes trailers: HTTP/2, or `TE: trailers`.
    pub trailers: bool,
    pub asked: Asked<'a>,
}

/// A final response head for hyper's server, and how its body is framed.
#[derive(Debug)]
pub(crate) struct Mapped {
    pub parts: Parts,
    pub framing: Framing,
    /// The connection may carry another request once the body ends.
    pub reusable: bool,
    /// Trailer fields that may reach the client.
    pub trailers: Vec<Vec<u8>>,
}

impl Sink for MapHead<'_> {
    type Head = Mapped;

    /// Interim answers are not passed on (as hyper's client did not).
    async fn interim(&self, _: &ResponseHead<'_, '_>) -> bool {
        true
    }

    fn last(&mut self, h: &ResponseHead<'_, '_>) -> Result<Mapped, &'static str> {
        let status = StatusCode::from_u16(h.status).map_err(|_| "invalid status code")?;
        let mut map = self.map.take().unwrap_or_default();
        map.clear();
        // The values share one copy of the head instead of one allocation
        // each.
        let block = Bytes::copy_from_slice(h.bytes());
        let mut bad = false;
        h.each_kept(|name, value, at| {
            let value = match at {
                Some(at) => HeaderValue::from_maybe_shared(block.slice(at..at + value.len())),
                None => HeaderValue::from_bytes(value),
            };
            match (HeaderName::from_bytes(name), value) {
                (Ok(n), Ok(v)) => {
                    map.append(n, v);
                }
                _ => bad = true,
            }
        });
        if bad {
            return Err("malformed response head");
        }
        h.plan.write_additions(
            self.asked.upgrade,
            &mut MapWriter {
                map: &mut map,
                h2: self.h2,
                via: None,
            },
        );
        let (mut parts, ()) = Response::new(()).into_parts();
        parts.status = status;
        parts.version = Version::HTTP_11;
        parts.headers = map;
        let reason = h.reason();
        if !self.h2 && status.canonical_reason().is_none_or(|r| r != reason) {
            if let Ok(r) = hyper::ext::ReasonPhrase::try_from(reason.as_bytes()) {
                parts.extensions.insert(r);
            }
        }
        let trailers = if self.trailers && h.plan.body == Framing::Chunked {
            h.declared_trailers()
        } else {
            Vec::new()
        };
        Ok(Mapped {
            parts,
            framing: h.plan.body,
            reusable: h.plan.reusable,
            trailers,
        })
    }
}

/// An instance's response body read from its raw socket as the client
/// takes it. Holds the request's in-flight count and the connection until
/// the body ends; a body that ended where its framing said goes back to
/// the instance's pool with its connection.
///
/// A gRPC response whose instance fails mid-body ends with trailers saying
/// so (`grpc-status: 14`), as on hyper's side.
#[derive(Debug)]
pub struct RawBody {
    conn: Option<RawConn>,
    guard: Option<InFlightGuard>,
    state: State,
    reusable: bool,
    grpc: bool,
    /// Runs of chunk data found by the last look (reused).
    spans: Vec<(usize, usize)>,
    /// Data taken from the bytes read with the head, sent first.
    first: Option<Bytes>,
    /// `timeouts.response_body`.
    pause: BodyPause,
}

#[derive(Debug)]
enum State {
    /// Bytes still to come.
    Length(u64),
    Chunked(Box<ChunkedScanner>),
    UntilClose,
    /// The data has ended; these trailers are next.
    Trailers(HeaderMap),
    /// The instance failed mid-body: the error to give at the next poll
    /// (see [`RawBody::fail`]).
    Failed(String),
    Done,
}

impl RawBody {
    /// The body of `mapped`'s response on `conn`. The body bytes read
    /// with the head are checked at once, as the fast path does: a body
    /// already malformed there is refused (`Err`, answered 502) before
    /// the client gets the head.
    pub(crate) fn new(
        conn: RawConn,
        guard: InFlightGuard,
        mapped: &mut Mapped,
        grpc: bool,
        pause: Duration,
    ) -> Result<Self, &'static str> {
        let state = match mapped.framing {
            Framing::Empty | Framing::Length(0) => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::Chunked(Box::new(ChunkedScanner::with_trailers(
                std::mem::take(&mut mapped.trailers),
            ))),
            Framing::UntilClose => State::UntilClose,
        };
        let mut body = RawBody {
            conn: Some(conn),
            guard: Some(guard),
            state,
            reusable: mapped.reusable && mapped.framing != Framing::UntilClose,
            grpc,
            spans: Vec::new(),
            first: None,
            pause: BodyPause::new(pause),
        };
        if body.conn.as_ref().is_some_and(|c| !c.buf.is_empty()) {
            match body.take() {
                Ok(data) => body.first = data.filter(|d| !d.is_empty()),
                Err(e) => {
                    body.finish(false);
                    return Err(e.0);
                }
            }
        }
        Ok(body)
    }

    /// Ends tracking; a body that ended cleanly, on a connection that may
    /// carry another request and holds no unasked bytes, returns it to
    /// the instance's pool.
    fn finish(&mut self, clean: bool) {
        let conn = self.conn.take();
        if let Some(guard) = self.guard.take() {
            if let (true, true, Some(conn)) = (clean, self.reusable, conn) {
                if conn.buf.is_empty() {
                    upstream::keep_raw(guard.instance(), conn);
                }
            }
        }
    }

    /// Takes what the buffered bytes hold of the body: a data frame, if
    /// there is data.
    fn take(&mut self) -> Result<Option<Bytes>, ChunkError> {
        let Some(conn) = self.conn.as_mut() else {
            return Ok(None);
        };
        let buf = &mut conn.buf;
        match &mut self.state {
            State::Length(rest) => {
                let n = (*rest).min(buf.len() as u64);
                *rest -= n;
                let data = buf.split_to(n as usize).freeze();
                if *rest == 0 {
                    self.state = State::Done;
                    self.finish(true);
                }
                Ok(Some(data))
            }
            State::UntilClose => Ok(Some(buf.split().freeze())),
            State::Chunked(scanner) => {
                self.spans.clear();
                let spans = &mut self.spans;
                let scan = scanner.feed_data(buf, |start, end| {
                    if end > start {
                        spans.push((start, end));
                    }
                })?;
                let read = buf.split_to(scan.consumed).freeze();
                let data = match spans[..] {
                    [] => None,
                    [(start, end)] => Some(read.slice(start..end)),
                    _ => {
                        let total = spans.iter().map(|(s, e)| e - s).sum();
                        let mut joined = BytesMut::with_capacity(total);
                        for &(s, e) in spans.iter() {
                            joined.extend_from_slice(&read[s..e]);
                        }
                        Some(joined.freeze())
                    }
                };
                if scan.done {
                    let trailers = trailer_map(scanner.trailers());
                    self.state = match trailers {
                        Some(map) => State::Trailers(map),
                        None => State::Done,
                    };
                    self.finish(true);
                }
                Ok(data)
            }
            State::Trailers(_) | State::Failed(_) | State::Done => Ok(None),
        }
    }

    /// Ends the body on an error: the client sees a broken body, or a gRPC
    /// client a status (DEADLINE_EXCEEDED if the instance `paused` too
    /// long, UNAVAILABLE otherwise). The error itself comes one poll later: hyper's
    /// server drops what it has not written yet when a body fails, so it
    /// first gets a turn to send the head and data it holds (as when the
    /// failure is noticed in a later read), and the client sees a message
    /// cut short rather than none.
    fn fail(
        &mut self,
        detail: &str,
        paused: bool,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.finish(false);
        if self.grpc {
            self.state = State::Done;
            let trailers = crate::proxy::body::grpc_failed(paused, &detail);
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        self.state = State::Failed(detail.to_owned());
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// The kept trailer lines (`name: value\r\n` each) as a map; `None` when
/// there are none.
fn trailer_map(lines: &[u8]) -> Option<HeaderMap> {
    if lines.is_empty() {
        return None;
    }
    let mut map = HeaderMap::new();
    for line in lines.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
            map.append(n, v);
        }
    }
    (!map.is_empty()).then_some(map)
}

/// Reads what the instance has sent into the connection's buffer
/// (through tokio's read, which notes a drained socket, so an idle pooled
/// connection is not taken for one the instance closed).
fn poll_read(conn: &mut RawConn, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
    if conn.buf.capacity() - conn.buf.len() < READ_SPACE {
        conn.buf.reserve(READ_SPACE);
    }
    let read = conn.stream.read_buf(&mut conn.buf);
    std::pin::pin!(read).poll(cx)
}

impl Body for RawBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(data) = this.first.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        loop {
            match std::mem::replace(&mut this.state, State::Done) {
                State::Done => return Poll::Ready(None),
                State::Trailers(map) => return Poll::Ready(Some(Ok(Frame::trailers(map)))),
                State::Failed(detail) => return Poll::Ready(Some(Err(detail.into()))),
                reading => this.state = reading,
            }
            let buffered = this.conn.as_ref().is_some_and(|c| !c.buf.is_empty());
            if buffered {
                match this.take() {
                    Ok(Some(data)) if !data.is_empty() => {
                        return Poll::Ready(Some(Ok(Frame::data(data))))
                    }
                    Ok(_) => continue,
                    Err(e) => return this.fail(e.0, false, cx),
                }
            }
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            let read = match poll_read(conn, cx) {
                Poll::Pending if this.pause.expired(cx) => {
                    let detail = this.pause.detail();
                    return this.fail(&detail, true, cx);
                }
                Poll::Pending => return Poll::Pending,
                Poll::Ready(read) => read,
            };
            this.pause.progressed();
            match read {
                Ok(0) if matches!(this.state, State::UntilClose) => {
                    this.state = State::Done;
                    this.finish(false);
                    return Poll::Ready(None);
                }
                Ok(0) => return this.fail("instance closed mid-body", false, cx),
                Ok(_) => {}
                Err(e) => return this.fail(&e.to_string(), false, cx),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && matches!(self.state, State::Done)
    }

    fn size_hint(&self) -> SizeHint {
        let first = self.first.as_ref().map_or(0, |d| d.len() as u64);
        match self.state {
            State::Length(n) => SizeHint::with_exact(n + first),
            State::Done => SizeHint::with_exact(first),
            _ => SizeHint::default(),
        }
    }
}

impl Drop for RawBody {
    fn drop(&mut self) {
        // A body empty from the start is never polled by the server: its
        // connection is clean. (A body whose first data was never taken
        // was not sent whole: not clean.)
        let clean = self.first.is_none() && matches!(self.state, State::Done);
        self.finish(clean);
    }
}

#[cfg(test)]
mod tests;
