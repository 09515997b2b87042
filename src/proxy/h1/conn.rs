//! One client connection on the fast path: read a request head, route it,
//! send the rewritten head (and its buffered body) to a picked instance on a
//! pooled socket, relay the response, repeat. Everything for one request
//! happens in the connection's own task, with one read buffer per side and
//! no header map.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};

use super::chunked::ChunkedTracker;
use super::head::{self, Added, Framing, HeadError};
use crate::health::passive::Failure;
use crate::proxy::attempt::{self, Exchange, Outcome};
use crate::proxy::error::{ProxyError, BODY_CONTENT_TYPE};
use crate::proxy::forward::{Client, DEBUG_HEADER, SNAPSHOT_HEADER};
use crate::proxy::upstream::{self, RawConn};
use crate::proxy::Proxy;
use crate::registry::{InstanceState, ServiceEntry};
use crate::router::strip_path;

/// Largest request body the fast path takes; a longer or still-streaming
/// body sends the connection to the general path, which streams it.
const BUFFERED_BODY: u64 = 64 * 1024;

/// Least free space offered to a read.
const READ_SPACE: usize = 4 * 1024;

/// Largest response head accepted from an instance.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// How the fast path let go of a connection.
#[derive(Debug)]
pub(crate) enum Ended {
    /// Closed (by either side, or after an error answer).
    Closed,
    /// Needs the general path from here on: the socket and the bytes read
    /// from it but not served.
    Fallback(TcpStream, BytesMut),
}

/// Serves HTTP/1.1 requests on `stream` until it closes, shutdown is
/// signalled on `stop` between requests, or a request needs the general
/// path. `header_timeout` bounds the wait for each request head (and so
/// idle keep-alive time).
pub(crate) async fn serve(
    proxy: &Proxy,
    client: &Client,
    stream: TcpStream,
    stop: &mut watch::Receiver<bool>,
    header_timeout: Duration,
) -> Ended {
    let mut conn = Conn {
        proxy,
        client,
        stream,
        buf: BytesMut::with_capacity(8 * 1024),
        out: Vec::with_capacity(4 * 1024),
        resp: Vec::with_capacity(4 * 1024),
        header_timeout,
        head_timer: Box::pin(tokio::time::sleep(header_timeout)),
        response_timer: Box::pin(tokio::time::sleep(header_timeout)),
        stopping: stop.clone(),
        head_request: false,
    };
    // One wait for shutdown for the whole connection, polled only between
    // requests.
    let stopped = stop.wait_for(|s| *s);
    tokio::pin!(stopped);
    loop {
        match conn.request(&mut stopped).await {
            Step::Next => {}
            Step::Close => {
                let _ = conn.stream.shutdown().await;
                return Ended::Closed;
            }
            Step::Fallback => return Ended::Fallback(conn.stream, conn.buf),
        }
    }
}

enum Step {
    Next,
    Close,
    Fallback,
}

struct Conn<'a> {
    proxy: &'a Proxy,
    client: &'a Client,
    stream: TcpStream,
    /// Bytes read from the client, not yet served.
    buf: BytesMut,
    /// The request for the instance.
    out: Vec<u8>,
    /// The response for the client.
    resp: Vec<u8>,
    header_timeout: Duration,
    /// The request-head deadline and the response-head deadline. Each is
    /// one timer for the connection's life, moved forward per request,
    /// which costs an atomic update instead of a timer-wheel insertion and
    /// removal.
    head_timer: Pin<Box<Sleep>>,
    response_timer: Pin<Box<Sleep>>,
    /// Whether shutdown has begun (answers then close the connection).
    stopping: watch::Receiver<bool>,
    /// The current request is a HEAD: answers carry no body.
    head_request: bool,
}

/// A routed request whose upstream head is in `Conn::out`.
struct Routed {
    service: Arc<ServiceEntry>,
    head_len: usize,
    body: Framing,
    close: bool,
    resendable: bool,
    head_request: bool,
}

enum Prepared {
    Partial,
    Routed(Routed),
    /// Answer with this error, then close, or go on after the request's
    /// head (`Some(length)`; only for requests without a body).
    Refuse(ProxyError, Option<usize>),
    Fallback,
}

/// A response head received from an instance; its client version is in
/// `Conn::resp`.
#[derive(Debug, Clone, Copy)]
struct Answer {
    body: Framing,
    reusable: bool,
}

impl Conn<'_> {
    async fn request<S: Future>(&mut self, stopped: &mut Pin<&mut S>) -> Step {
        self.head_timer
            .as_mut()
            .reset(Instant::now() + self.header_timeout);
        self.head_request = false;
        let routed = loop {
            if !self.buf.is_empty() {
                match self.prepare() {
                    Prepared::Partial => {}
                    Prepared::Routed(r) => break r,
                    Prepared::Refuse(e, None) => return self.refuse(&e, true).await,
                    Prepared::Refuse(e, Some(len)) => {
                        self.buf.advance(len);
                        return self.refuse(&e, false).await;
                    }
                    Prepared::Fallback => return Step::Fallback,
                }
                let limit = self.proxy.settings.max_header_bytes;
                if self.buf.len() > limit {
                    let e = ProxyError::HeadersTooLarge {
                        size: self.buf.len(),
                        limit,
                    };
                    return self.refuse(&e, true).await;
                }
            }
            let idle = self.buf.is_empty();
            let outcome = tokio::select! {
                biased;
                r = read_more(&mut self.stream, &mut self.buf) => r,
                // Too slow with its head: nothing to answer.
                () = self.head_timer.as_mut() => return Step::Close,
                _ = stopped.as_mut(), if idle => return Step::Close,
            };
            match outcome {
                Ok(n) if n > 0 => {}
                // Closed or failed.
                _ => return Step::Close,
            }
        };
        let total = match self.buffer_body(&routed).await {
            Ok(Some(total)) => total,
            Ok(None) => return Step::Fallback,
            Err(step) => return step,
        };
        self.out
            .extend_from_slice(&self.buf[routed.head_len..total]);
        self.buf.advance(total);
        self.forward(routed).await
    }

    /// Parses and routes the head at the start of the buffer, writing the
    /// instance's version of it to `out`.
    fn prepare(&mut self) -> Prepared {
        let mut slots = head::header_slots();
        let head = match head::parse_request(&self.buf, &mut slots) {
            Ok(Some(h)) => h,
            Ok(None) => return Prepared::Partial,
            Err(HeadError::Fallback(why)) => {
                tracing::trace!(why, "request handed to the general path");
                return Prepared::Fallback;
            }
            Err(HeadError::Invalid(why)) => {
                return Prepared::Refuse(ProxyError::BadRequest(why), None)
            }
            Err(HeadError::TooManyHeaders) => {
                let e = ProxyError::HeadersTooLarge {
                    size: self.buf.len(),
                    limit: self.proxy.settings.max_header_bytes,
                };
                return Prepared::Refuse(e, None);
            }
        };
        self.head_request = head.method == "HEAD";
        let settings = &self.proxy.settings;
        if head.len > settings.max_header_bytes {
            let e = ProxyError::HeadersTooLarge {
                size: head.len,
                limit: settings.max_header_bytes,
            };
            return Prepared::Refuse(e, None);
        }
        // An error answer cannot skip a body it has not read: close after.
        let go_on = (!head.close && head.body == Framing::Empty).then_some(head.len);
        let snapshot = self.proxy.registry.load();
        let Some(target) = snapshot.router().route(Some(head.host), head.path()) else {
            let e = ProxyError::NoRoute {
                host: head.host.to_owned(),
                path: head.path().to_owned(),
            };
            return Prepared::Refuse(e, go_on);
        };
        let Some(service) = snapshot.service(&target.service) else {
            let e = ProxyError::UnknownService(target.service.into_owned());
            return Prepared::Refuse(e, go_on);
        };
        self.out.clear();
        let added = Added {
            client_ip: self.client.ip.as_bytes(),
            via: settings.via_h1.as_bytes(),
        };
        head.write_upstream(&strip_path(head.target, target.strip), added, &mut self.out);
        Prepared::Routed(Routed {
            service: service.clone(),
            head_len: head.len,
            body: head.body,
            close: head.close,
            resendable: head.resendable(),
            head_request: head.method == "HEAD",
        })
    }

    /// Reads until the request body is whole in the buffer. `Ok(Some(end))`:
    /// the request ends at `end`; `Ok(None)`: too long, or not complete, for
    /// the fast path.
    async fn buffer_body(&mut self, routed: &Routed) -> Result<Option<usize>, Step> {
        let start = routed.head_len;
        let mut chunked = ChunkedTracker::default();
        let mut scanned = start;
        loop {
            let end = match routed.body {
                Framing::Empty | Framing::UntilClose => Some(start),
                Framing::Length(n) if n > BUFFERED_BODY => return Ok(None),
                Framing::Length(n) => Some(start + n as usize).filter(|&e| e <= self.buf.len()),
                Framing::Chunked => match chunked.feed(&self.buf[scanned..]) {
                    Ok(Some(n)) => Some(scanned + n),
                    Ok(None) if (self.buf.len() - start) as u64 > BUFFERED_BODY => return Ok(None),
                    Ok(None) => {
                        scanned = self.buf.len();
                        None
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "bad request body");
                        return Err(self
                            .refuse(&ProxyError::BadRequest("malformed chunked body"), true)
                            .await);
                    }
                },
            };
            if let Some(end) = end {
                return Ok(Some(end));
            }
            // Each wait for more of the body gets the full timeout (like
            // nginx's client_body_timeout); the head's deadline has passed.
            self.head_timer
                .as_mut()
                .reset(Instant::now() + self.header_timeout);
            let outcome = tokio::select! {
                biased;
                r = read_more(&mut self.stream, &mut self.buf) => r,
                () = self.head_timer.as_mut() => return Err(Step::Close),
            };
            match outcome {
                Ok(n) if n > 0 => {}
                _ => return Err(Step::Close),
            }
        }
    }

    /// Sends the request in `out` to an instance of the routed service and
    /// relays the answer.
    async fn forward(&mut self, routed: Routed) -> Step {
        let settings = &self.proxy.settings;
        let service = &routed.service;
        let mut trail = settings.debug_header.then(String::new);
        let mut exchange = FastExchange {
            proxy: self.proxy,
            service,
            request: &self.out,
            resp: &mut self.resp,
            timer: &mut self.response_timer,
            resendable: routed.resendable,
            head_request: routed.head_request,
        };
        let run = attempt::run(service, &mut exchange, &mut trail);
        let result = match service.policy().timeouts.request {
            None => run.await,
            Some(deadline) => tokio::time::timeout(deadline, run)
                .await
                .unwrap_or_else(|_| {
                    Err(ProxyError::Deadline {
                        service: service.name().clone(),
                        timeout: deadline,
                    })
                }),
        };
        let ((mut upstream, answer), guard) = match result {
            Ok(answered) => answered,
            Err(e) => {
                tracing::debug!(error = %e, "request failed");
                self.finish_error_head(&e, trail.as_deref(), routed.close);
                return self
                    .send_resp(routed.close || *self.stopping.borrow())
                    .await;
            }
        };
        let close = routed.close || answer.body == Framing::UntilClose || *self.stopping.borrow();
        self.extra_headers(trail.as_deref(), close);
        self.resp.extend_from_slice(b"\r\n");
        match self.relay_body(&mut upstream, answer.body).await {
            Ok(true) if answer.reusable && upstream.buf.is_empty() => {
                let instance = guard.instance();
                if !instance.is_draining() {
                    instance.idle.put_raw(upstream);
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(instance = %guard.instance().addr(), error = %e, "response relay ended early");
                return Step::Close;
            }
        }
        drop(guard);
        if close {
            Step::Close
        } else {
            Step::Next
        }
    }

    /// Sends the head in `resp` and the body behind it in `upstream`;
    /// `Ok(true)` when the body ended where its framing said.
    async fn relay_body(&mut self, upstream: &mut RawConn, body: Framing) -> io::Result<bool> {
        let mut chunked = ChunkedTracker::default();
        let mut remaining = match body {
            Framing::Length(n) => n,
            _ => 0,
        };
        // The first piece travels with the head.
        let mut pending = true;
        loop {
            let (take, done) = match body {
                Framing::Empty => (0, true),
                Framing::Length(_) => {
                    let take = remaining.min(upstream.buf.len() as u64);
                    remaining -= take;
                    (take as usize, remaining == 0)
                }
                Framing::Chunked => match chunked.feed(&upstream.buf) {
                    Ok(Some(n)) => (n, true),
                    Ok(None) => (upstream.buf.len(), false),
                    Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
                },
                Framing::UntilClose => (upstream.buf.len(), false),
            };
            if pending {
                self.resp.extend_from_slice(&upstream.buf[..take]);
                self.stream.write_all(&self.resp).await?;
                pending = false;
            } else if take > 0 {
                self.stream.write_all(&upstream.buf[..take]).await?;
            }
            upstream.buf.advance(take);
            if done {
                return Ok(true);
            }
            if read_more(&mut upstream.stream, &mut upstream.buf).await? == 0 {
                return if body == Framing::UntilClose {
                    Ok(false)
                } else {
                    Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "instance closed mid-body",
                    ))
                };
            }
        }
    }

    /// Answers the current request with `e` itself.
    async fn refuse(&mut self, e: &ProxyError, close: bool) -> Step {
        tracing::debug!(error = %e, "request refused");
        self.finish_error_head(e, None, close);
        self.send_resp(close).await
    }

    /// Writes the whole error response for `e` to `resp`.
    fn finish_error_head(&mut self, e: &ProxyError, trail: Option<&str>, close: bool) {
        let status = e.status();
        let body = e.body_text();
        self.resp.clear();
        let _ = {
            use std::io::Write;
            write!(
                self.resp,
                "HTTP/1.1 {} {}\r\ncontent-type: {BODY_CONTENT_TYPE}\r\ncontent-length: {}\r\n",
                status.as_u16(),
                status.canonical_reason().unwrap_or(""),
                body.len()
            )
        };
        self.extra_headers(trail, close);
        self.resp.extend_from_slice(b"\r\n");
        if !self.head_request {
            self.resp.extend_from_slice(body.as_bytes());
        }
    }

    /// The proxy's own response headers: the debug trail and snapshot
    /// header when configured, `Connection: close` when closing.
    fn extra_headers(&mut self, trail: Option<&str>, close: bool) {
        if let Some(t) = trail.filter(|t| !t.is_empty() && !t.contains(['\r', '\n'])) {
            header_line(&mut self.resp, DEBUG_HEADER.as_str(), t);
        }
        if self.proxy.settings.snapshot_header {
            header_line(
                &mut self.resp,
                SNAPSHOT_HEADER.as_str(),
                &self.proxy.snapshot_value(),
            );
        }
        if close {
            self.resp.extend_from_slice(b"connection: close\r\n");
        }
    }

    async fn send_resp(&mut self, close: bool) -> Step {
        match self.stream.write_all(&self.resp).await {
            Ok(()) if !close => Step::Next,
            _ => Step::Close,
        }
    }
}

fn header_line(out: &mut Vec<u8>, name: &str, value: &str) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Reads what `stream` has into `buf`, making room first.
async fn read_more(stream: &mut TcpStream, buf: &mut BytesMut) -> io::Result<usize> {
    if buf.capacity() - buf.len() < READ_SPACE {
        buf.reserve(READ_SPACE);
    }
    stream.read_buf(buf).await
}

/// Attempts over fast-path sockets: the request is the same bytes every
/// time, so a retry resends them as they are.
struct FastExchange<'a> {
    proxy: &'a Proxy,
    service: &'a ServiceEntry,
    request: &'a [u8],
    resp: &'a mut Vec<u8>,
    timer: &'a mut Pin<Box<Sleep>>,
    resendable: bool,
    head_request: bool,
}

/// How one exchange on one socket failed.
enum Lost {
    /// Nothing reached the instance.
    Unsent(String),
    /// The request was (maybe partly) written; no usable response came.
    Sent(String),
    TimedOut,
}

impl Exchange for FastExchange<'_> {
    type Answer = (RawConn, Answer);

    async fn attempt(&mut self, instance: &InstanceState) -> Outcome<Self::Answer> {
        let service = self.service;
        let timeout = &service.policy().timeouts;
        if let Some(mut conn) = instance.idle.take_raw(self.proxy.settings.upstream_idle) {
            match self.exchange(&mut conn, timeout.response_header).await {
                Ok((status, answer)) => return Outcome::Answered((conn, answer), status),
                Err(Lost::TimedOut) => return Outcome::TimedOut,
                // A keep-alive race: try a fresh connection to the same
                // instance when nothing was sent or repeating is safe.
                Err(Lost::Unsent(_)) => {}
                Err(Lost::Sent(_)) if self.resendable => {}
                // Not safe to repeat, and not the instance's fault.
                Err(Lost::Sent(error)) => {
                    return Outcome::Failed {
                        error,
                        failure: None,
                        retry: false,
                    }
                }
            }
        }
        let mut conn = match upstream::connect_raw(instance.addr(), timeout.connect).await {
            Ok(conn) => conn,
            Err(e) => {
                return Outcome::Failed {
                    error: e.to_string(),
                    failure: Some(Failure::Connect),
                    retry: true,
                }
            }
        };
        match self.exchange(&mut conn, timeout.response_header).await {
            Ok((status, answer)) => Outcome::Answered((conn, answer), status),
            Err(Lost::TimedOut) => Outcome::TimedOut,
            Err(Lost::Unsent(error)) => Outcome::Failed {
                error,
                failure: Some(Failure::Connect),
                retry: true,
            },
            Err(Lost::Sent(error)) => Outcome::Failed {
                error,
                failure: Some(Failure::Reset),
                retry: self.resendable,
            },
        }
    }
}

impl FastExchange<'_> {
    /// Writes the request on `conn` and reads the response head, whose
    /// client version goes to `resp`.
    async fn exchange(
        &mut self,
        conn: &mut RawConn,
        timeout: Duration,
    ) -> Result<(u16, Answer), Lost> {
        match conn.stream.write(self.request).await {
            Ok(n) if n == self.request.len() => {}
            Ok(0) => return Err(Lost::Unsent("connection closed".to_owned())),
            Ok(n) => conn
                .stream
                .write_all(&self.request[n..])
                .await
                .map_err(|e| Lost::Sent(e.to_string()))?,
            Err(e) => return Err(Lost::Unsent(e.to_string())),
        }
        self.timer.as_mut().reset(Instant::now() + timeout);
        tokio::select! {
            biased;
            r = response_head(conn, self.resp, self.head_request) => r,
            () = self.timer.as_mut() => Err(Lost::TimedOut),
        }
    }
}

/// Reads the response head on `conn`, skipping interim (1xx) answers, and
/// writes its client version to `resp`.
async fn response_head(
    conn: &mut RawConn,
    resp: &mut Vec<u8>,
    head_request: bool,
) -> Result<(u16, Answer), Lost> {
    loop {
        if !conn.buf.is_empty() {
            let mut slots = head::header_slots();
            let parsed = match head::parse_response(&conn.buf, &mut slots, head_request) {
                Ok(Some(h)) if h.status == 101 => {
                    return Err(Lost::Sent(
                        "switched protocols without being asked to".to_owned(),
                    ))
                }
                // Interim answer (100 Continue, 103 Early Hints): skip.
                Ok(Some(h)) if h.status < 200 => Some(h.len),
                Ok(Some(h)) => {
                    resp.clear();
                    h.write_client(resp);
                    let answer = Answer {
                        body: h.body,
                        reusable: h.reusable,
                    };
                    let (status, len) = (h.status, h.len);
                    conn.buf.advance(len);
                    return Ok((status, answer));
                }
                Ok(None) if conn.buf.len() > MAX_RESPONSE_HEAD => {
                    return Err(Lost::Sent("response head too large".to_owned()))
                }
                Ok(None) => None,
                Err(HeadError::Invalid(why) | HeadError::Fallback(why)) => {
                    return Err(Lost::Sent(why.to_owned()))
                }
                Err(HeadError::TooManyHeaders) => {
                    return Err(Lost::Sent("too many response headers".to_owned()))
                }
            };
            if let Some(len) = parsed {
                conn.buf.advance(len);
                continue;
            }
        }
        match read_more(&mut conn.stream, &mut conn.buf).await {
            Ok(0) if conn.buf.is_empty() => {
                return Err(Lost::Sent("connection closed before a response".to_owned()))
            }
            Ok(0) => return Err(Lost::Sent("response head cut short".to_owned())),
            Ok(_) => {}
            Err(e) => return Err(Lost::Sent(e.to_string())),
        }
    }
}
