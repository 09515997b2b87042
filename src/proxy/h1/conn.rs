//! One client connection on the fast path: read a request head, check and
//! route it (through [`crate::proxy::policy`] and [`crate::proxy::route`],
//! as the hyper path does), send the rewritten head and its buffered body
//! to a picked instance on a pooled socket, relay the response, repeat.
//! Everything for one request happens in the connection's own task, with
//! one read buffer per side and no header map.
//!
//! Every wait is bounded: the request head by `timeouts.client_header`;
//! each pause in the request body by `timeouts.client_body` (408), and the
//! buffering of the whole body by `timeouts.client_header` again (a body
//! still arriving then is handed, with its connection, to the general
//! path, which streams it); each write to the client by
//! `timeouts.client_send`; the instance by the service's timeouts (its
//! response head by `timeouts.response_header`, each pause in its response
//! body by `timeouts.response_body`). While the instance works, the client socket is
//! watched: a client that closes or resets its connection cancels the
//! exchange at once (the upstream connection is closed, not pooled, and the
//! instance's in-flight count is released).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};

use super::body::{Relayed, RequestBody, RequestBodyScan, ResponseBodyScan, BUFFERED_BODY};
use super::head::{self, HeadError, ResponseHead};
use super::upstream::{read_more, RawExchange, Sink, Watch, READ_SPACE};
use crate::balance::Choice;
use crate::proxy::attempt::{self, Tally};
use crate::proxy::body::pause_detail;
use crate::proxy::error::{ProxyError, BAD_BODY};
use crate::proxy::forward::{DEBUG_HEADER, SNAPSHOT_HEADER};
use crate::proxy::observe::{self, Done};
use crate::proxy::policy::request_id::RequestId;
use crate::proxy::policy::response::Asked;
use crate::proxy::policy::Framing;
use crate::proxy::server::{closes_idle, Stop};
use crate::proxy::traffic;
use crate::proxy::upstream::{self, RawConn};
use crate::proxy::{Client, Proxy};
use crate::registry::stats::{self, METHOD_OTHER};
use crate::registry::{InstanceState, ServiceEntry};

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
    stop: &mut watch::Receiver<Stop>,
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
        started: None,
        request_id: None,
        logged: String::new(),
        method_index: METHOD_OTHER,
        method_len: 0,
        bytes_in: 0,
        sent: 0,
    };
    // One wait for shutdown for the whole connection, polled only between
    // requests.
    let stopped = stop.wait_for(closes_idle);
    tokio::pin!(stopped);
    loop {
        match conn.request(&mut stopped).await {
            Step::Next => {}
            Step::Close => {
                let _ = conn.stream.shutdown().await;
                return Ended::Closed;
            }
            Step::Reset => {
                // Dropped with no linger: the peer gets a reset, not a FIN.
                let _ = socket2::SockRef::from(&conn.stream).set_linger(Some(Duration::ZERO));
                return Ended::Closed;
            }
            Step::Fallback => return Ended::Fallback(conn.stream, conn.buf),
        }
    }
}

enum Step {
    Next,
    Close,
    /// Close with a reset: the answer was cut short where a clean close
    /// would pass for its end (a body delimited by the close).
    Reset,
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
    /// The request deadline (head, then body) and the deadline of the
    /// current wait on the instance or the client's socket. Each is one
    /// timer for the connection's life, moved forward per use, which costs
    /// an atomic update instead of a timer-wheel insertion and removal.
    head_timer: Pin<Box<Sleep>>,
    response_timer: Pin<Box<Sleep>>,
    /// Whether shutdown has begun (answers then close the connection).
    stopping: watch::Receiver<Stop>,
    /// The current request is a HEAD: answers carry no body.
    head_request: bool,
    /// When the current request was routed, if metrics or the access log
    /// want it.
    started: Option<Instant>,
    /// The current request's id, when ids are on.
    request_id: Option<RequestId>,
    /// The current request's method, a space and its target, for the
    /// access log (kept only when it is on; the buffer is reused).
    logged: String,
    /// The current request's method, as [`stats::method_index`] counts it.
    method_index: usize,
    method_len: usize,
    /// Bytes of the current request (head and body) and of its answer.
    bytes_in: u64,
    sent: u64,
}

/// A routed request whose upstream head is in `Conn::out`.
struct Routed {
    service: Arc<ServiceEntry>,
    /// What the request asks of the balancer.
    choice: Choice,
    head_len: usize,
    body: Framing,
    close: bool,
    resendable: bool,
    /// Trailer fields the request declares (a chunked body may carry them).
    trailers: Vec<Vec<u8>>,
    /// The client takes trailers in the response (`TE: trailers`).
    accepts_trailers: bool,
}

enum Prepared {
    Partial,
    Routed(Routed),
    /// Answer with this error; then go on after the request's head
    /// (`Some(length)`: a request without a body, refused after its head
    /// was read whole and sound), or close.
    Refuse(ProxyError, Option<usize>),
    Fallback,
}

/// A response head received from an instance; its client version is in
/// `Conn::resp`.
#[derive(Debug, Clone)]
struct Answer {
    status: u16,
    body: Framing,
    reusable: bool,
    /// Trailer fields that may reach the client (declared by the response,
    /// and the client sent `TE: trailers`).
    trailers: Vec<Vec<u8>>,
}

/// Why relaying a response stopped.
enum Relay {
    /// The instance's body is malformed and nothing was sent yet.
    BeforeHead(&'static str),
    /// The exchange broke after the client got part of the answer.
    Broken(io::Error),
}

impl From<io::Error> for Relay {
    fn from(e: io::Error) -> Self {
        Relay::Broken(e)
    }
}

/// How the body of a request stands.
enum Body {
    /// Whole in the buffer: the request (head and body) ends at `end`.
    Ready { end: usize },
    /// Too long or too slow for the fast path: the general path takes the
    /// connection.
    Fallback,
}

impl Conn<'_> {
    async fn request<S: Future>(&mut self, stopped: &mut Pin<&mut S>) -> Step {
        self.head_timer
            .as_mut()
            .reset(Instant::now() + self.header_timeout);
        self.head_request = false;
        self.request_id = None;
        self.logged.clear();
        self.method_len = 0;
        self.method_index = METHOD_OTHER;
        self.sent = 0;
        let mut routed = loop {
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
                if let Some(e) = self.head_over_limits() {
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
        let end = match self.buffer_body(&mut routed).await {
            Ok(Body::Ready { end }) => end,
            Ok(Body::Fallback) => return Step::Fallback,
            Err(step) => return step,
        };
        self.buf.advance(end);
        self.bytes_in = end as u64;
        self.started = observe::start(self.proxy);
        self.forward(routed).await
    }

    /// An incomplete head that is already over a limit: 414 when the
    /// request line alone is too long, else 431.
    fn head_over_limits(&self) -> Option<ProxyError> {
        let settings = &self.proxy.settings;
        let line = self.buf.iter().position(|&b| b == b'\n');
        let uri_limit = settings.max_uri_bytes + 32;
        if line.map_or(self.buf.len(), |l| l) > uri_limit {
            return Some(ProxyError::UriTooLong {
                size: line.unwrap_or(self.buf.len()),
                limit: settings.max_uri_bytes,
            });
        }
        (self.buf.len() > settings.max_header_bytes).then(|| ProxyError::HeadersTooLarge {
            size: self.buf.len(),
            limit: settings.max_header_bytes,
        })
    }

    /// Parses, checks and routes the head at the start of the buffer,
    /// writing the instance's version of it to `out`.
    fn prepare(&mut self) -> Prepared {
        let settings = &self.proxy.settings;
        let hop = self.client.hop(settings, &settings.via_h1);
        let mut slots = head::header_slots();
        let head = match head::parse_request(&self.buf, &mut slots, &hop) {
            Ok(Some(h)) => h,
            Ok(None) => return Prepared::Partial,
            Err(HeadError::Fallback(why)) => {
                tracing::trace!(why, "request handed to the general path");
                return Prepared::Fallback;
            }
            Err(HeadError::Refuse(e)) => return Prepared::Refuse(e, None),
        };
        self.head_request = head.method == "HEAD";
        self.method_index = stats::method_index(head.method);
        self.request_id = head.plan.request_id;
        if settings.access_log.is_some() {
            self.logged.push_str(head.method);
            self.logged.push(' ');
            self.method_len = head.method.len();
            self.logged.push_str(head.plan.target.path_and_query);
        }
        if head.len > settings.max_header_bytes {
            let e = ProxyError::HeadersTooLarge {
                size: head.len,
                limit: settings.max_header_bytes,
            };
            return Prepared::Refuse(e, None);
        }
        // An error answer cannot skip a body it has not read: close after.
        let plan = &head.plan;
        let go_on = (!plan.close && plan.body == Framing::Empty).then_some(head.len);
        let routed = match self.proxy.route(
            &plan.target,
            plan.upgrade,
            false,
            head.fields(),
            &self.client.ip,
        ) {
            Ok(r) => r,
            Err(e) => return Prepared::Refuse(e, go_on),
        };
        if !routed.service.policy().upstream.is_plain_http1() {
            // TLS or HTTP/2 to the instances: the general path's clients.
            tracing::trace!("request to a TLS or HTTP/2 service handed to the general path");
            return Prepared::Fallback;
        }
        let bodyless = matches!(plan.body, Framing::Empty | Framing::Length(0));
        if traffic::hedge_after(&routed.service, head.method, bodyless).is_some() {
            // Hedged: two attempts at once are the general path's.
            tracing::trace!("request to hedge handed to the general path");
            return Prepared::Fallback;
        }
        if routed.upgrade.is_some() {
            // The route allows the upgrade: hyper tunnels it. Any other
            // upgrade request (h2c, say) is served here as plain HTTP/1.1,
            // its Upgrade fields dropped.
            tracing::trace!("upgrade handed to the general path");
            return Prepared::Fallback;
        }
        self.out.clear();
        let target = plan.target.forward(routed.strip);
        head.write_upstream(&target, &hop, &mut self.out);
        Prepared::Routed(Routed {
            service: routed.service,
            choice: routed.choice,
            head_len: head.len,
            body: plan.body,
            close: plan.close,
            resendable: head.resendable(),
            trailers: head.declared_trailers(),
            accepts_trailers: plan.accepts_trailers,
        })
    }

    /// Reads until the request body is whole in the buffer and appends it
    /// (chunked: checked, with its trailer section filtered) to `out`.
    async fn buffer_body(&mut self, routed: &mut Routed) -> Result<Body, Step> {
        let trailers = std::mem::take(&mut routed.trailers);
        let mut scan = RequestBodyScan::new(routed.body, routed.head_len, trailers);
        // Each pause within the body timeout; after one head timeout of
        // buffering, the general path streams the rest. (Set at the first
        // wait: most requests never wait.)
        let mut deadline = None;
        loop {
            match scan.step(&self.buf, &mut self.out) {
                RequestBody::Ready { end } => return Ok(Body::Ready { end }),
                RequestBody::Fallback => return Ok(Body::Fallback),
                RequestBody::More => {}
                RequestBody::Bad(e) => {
                    tracing::debug!(error = %e, "bad request body");
                    return Err(self.refuse(&ProxyError::BadRequest(BAD_BODY), true).await);
                }
            }
            let now = Instant::now();
            let deadline = *deadline.get_or_insert(now + self.header_timeout);
            if now >= deadline {
                return Ok(Body::Fallback);
            }
            let pause = now + self.proxy.settings.client_body;
            self.head_timer.as_mut().reset(pause.min(deadline));
            let outcome = tokio::select! {
                biased;
                r = read_more(&mut self.stream, &mut self.buf) => r,
                () = self.head_timer.as_mut() => {
                    if Instant::now() >= deadline && pause > deadline {
                        return Ok(Body::Fallback);
                    }
                    let e = ProxyError::ClientTimeout(self.proxy.settings.client_body);
                    return Err(self.refuse(&e, true).await);
                }
            };
            match outcome {
                Ok(n) if n > 0 => {}
                // Closed (or half-closed) before its body was whole.
                Ok(_) => {
                    let e = ProxyError::BadRequest(BAD_BODY);
                    return Err(self.refuse(&e, true).await);
                }
                Err(_) => return Err(Step::Close),
            }
        }
    }

    /// Sends the request in `out` to an instance of the routed service and
    /// relays the answer.
    async fn forward(&mut self, routed: Routed) -> Step {
        let settings = &self.proxy.settings;
        let service = &routed.service;
        let mut trail = settings.debug_header.then(String::new);
        let mut exchange = RawExchange {
            proxy: self.proxy,
            service,
            request: &self.out,
            timer: self.response_timer.as_mut(),
            resendable: routed.resendable,
            asked: Asked {
                head: self.head_request,
                upgrade: None,
            },
            watch: ClientWatch {
                client: &self.stream,
                buf: &mut self.buf,
                limit: settings.max_header_bytes + BUFFERED_BODY as usize,
            },
            sink: ClientHead {
                client: &self.stream,
                resp: &mut self.resp,
                send_timeout: settings.client_send,
                accepts_trailers: routed.accepts_trailers,
            },
            client_gone: false,
        };
        let mut tally = Tally::default();
        let result = attempt::run_with_deadline(
            service,
            &routed.choice,
            &mut exchange,
            &mut trail,
            None,
            &mut tally,
        )
        .await;
        if exchange.client_gone {
            tracing::debug!(service = %service.name(), "client closed its connection while waiting; request cancelled");
            self.done(Some(service), None, 499, tally);
            return Step::Close;
        }
        let ((mut upstream, answer), guard) = match result {
            Ok(answered) => answered,
            Err(e) => {
                tracing::debug!(error = %e, "request failed");
                let close = routed.close || self.stopping.borrow().is_some();
                let step = self.answer_error(&e, trail.as_deref(), close).await;
                self.done(Some(service), None, e.status().as_u16(), tally);
                return step;
            }
        };
        let close =
            routed.close || answer.body == Framing::UntilClose || self.stopping.borrow().is_some();
        if let Some(v) = traffic::sticky_cookie(service, &routed.choice, guard.instance().addr()) {
            header_line(&mut self.resp, "set-cookie", &v);
        }
        self.extra_headers(trail.as_deref(), close);
        self.resp.extend_from_slice(b"\r\n");
        let body = answer.body;
        let pause = service.policy().timeouts.response_body;
        match self
            .relay_body(&mut upstream, body, answer.trailers, pause)
            .await
        {
            Ok(true) if answer.reusable && upstream.buf.is_empty() => {
                upstream::keep_raw(guard.instance(), upstream);
            }
            Ok(_) => {}
            Err(Relay::BeforeHead(detail)) => {
                // Nothing reached the client yet: it gets a proper 502.
                let instance = guard.instance();
                tracing::debug!(service = %service.name(), instance = %instance.addr(), detail, "bad response body");
                let e = ProxyError::BadResponse {
                    service: service.name().clone(),
                    addr: instance.addr(),
                    detail,
                };
                drop(guard);
                let step = self.answer_error(&e, trail.as_deref(), true).await;
                self.done(Some(service), None, 502, tally);
                return step;
            }
            Err(Relay::Broken(e)) => {
                tracing::debug!(service = %service.name(), instance = %guard.instance().addr(), error = %e, "response relay ended early");
                self.done(Some(service), Some(guard.instance()), answer.status, tally);
                return if body == Framing::UntilClose {
                    Step::Reset
                } else {
                    Step::Close
                };
            }
        }
        self.done(Some(service), Some(guard.instance()), answer.status, tally);
        drop(guard);
        if close {
            Step::Close
        } else {
            Step::Next
        }
    }

    /// Sends the head in `resp` and the body behind it in `upstream`;
    /// `Ok(true)` when the body ended where its framing said. The
    /// instance may pause for at most `pause` (`timeouts.response_body`)
    /// between two reads.
    async fn relay_body(
        &mut self,
        upstream: &mut RawConn,
        body: Framing,
        trailers: Vec<Vec<u8>>,
        pause: Duration,
    ) -> Result<bool, Relay> {
        let mut scan = ResponseBodyScan::new(body, trailers);
        // Bytes out are body bytes, as on the hyper path.
        let head_len = self.resp.len() as u64;
        // The first piece travels with the head.
        let mut pending = true;
        loop {
            let Relayed {
                pass,
                consumed,
                done,
            } = match scan.step(&upstream.buf) {
                Ok(r) => r,
                Err(e) if pending => return Err(Relay::BeforeHead(e.0)),
                Err(e) => return Err(Relay::Broken(io::Error::new(io::ErrorKind::InvalidData, e))),
            };
            if pending {
                self.resp.extend_from_slice(&upstream.buf[..pass]);
                if done && body == Framing::Chunked {
                    self.resp.extend_from_slice(scan.trailers());
                    self.resp.extend_from_slice(b"\r\n");
                }
                send(
                    &mut self.stream,
                    &self.resp,
                    &mut self.response_timer,
                    self.proxy.settings.client_send,
                )
                .await?;
                self.sent += self.resp.len() as u64 - head_len;
                pending = false;
            } else {
                if pass > 0 {
                    send(
                        &mut self.stream,
                        &upstream.buf[..pass],
                        &mut self.response_timer,
                        self.proxy.settings.client_send,
                    )
                    .await?;
                    self.sent += pass as u64;
                }
                if done && body == Framing::Chunked {
                    let mut end = scan.trailers().to_vec();
                    end.extend_from_slice(b"\r\n");
                    send(
                        &mut self.stream,
                        &end,
                        &mut self.response_timer,
                        self.proxy.settings.client_send,
                    )
                    .await?;
                    self.sent += end.len() as u64;
                }
            }
            upstream.buf.advance(consumed);
            if done {
                return Ok(true);
            }
            let read =
                tokio::time::timeout(pause, read_more(&mut upstream.stream, &mut upstream.buf));
            let Ok(read) = read.await else {
                return Err(Relay::Broken(io::Error::new(
                    io::ErrorKind::TimedOut,
                    pause_detail(pause),
                )));
            };
            if read? == 0 {
                return if body == Framing::UntilClose {
                    Ok(false)
                } else {
                    Err(Relay::Broken(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "instance closed mid-body",
                    )))
                };
            }
        }
    }

    /// Answers the current request with `e` itself.
    async fn refuse(&mut self, e: &ProxyError, close: bool) -> Step {
        tracing::debug!(error = %e, "request refused");
        let step = self.answer_error(e, None, close).await;
        self.done(None, None, e.status().as_u16(), Tally::default());
        step
    }

    /// Counts and logs the current request.
    fn done(
        &self,
        service: Option<&ServiceEntry>,
        instance: Option<&InstanceState>,
        status: u16,
        tally: Tally,
    ) {
        let (method, target) = self.logged.split_at(self.method_len);
        self.proxy.finish(Done {
            service,
            instance,
            status,
            started: self.started,
            tally,
            bytes_in: self.bytes_in,
            bytes_out: self.sent,
            request_id: self.request_id.as_ref(),
            method: if method.is_empty() { "-" } else { method },
            method_index: self.method_index,
            target: target.get(1..).unwrap_or("-"),
            protocol: "HTTP/1.1",
            client: self.client,
        });
    }

    /// Writes and sends the whole error answer for `e`.
    async fn answer_error(&mut self, e: &ProxyError, trail: Option<&str>, close: bool) -> Step {
        let close = close || e.closes_connection();
        let mut resp = std::mem::take(&mut self.resp);
        e.write_h1(self.head_request, close, &mut resp, |out| {
            self.write_extra(out, trail);
        });
        self.resp = resp;
        let sent = send(
            &mut self.stream,
            &self.resp,
            &mut self.response_timer,
            self.proxy.settings.client_send,
        )
        .await;
        if sent.is_ok() && !self.head_request {
            self.sent += e.body_text().len() as u64;
        }
        match sent {
            Ok(()) if !close => Step::Next,
            _ => Step::Close,
        }
    }

    /// The proxy's own response headers: the debug trail and snapshot
    /// header when configured, `Connection: close` when closing.
    fn extra_headers(&mut self, trail: Option<&str>, close: bool) {
        let mut resp = std::mem::take(&mut self.resp);
        self.write_extra(&mut resp, trail);
        if close {
            resp.extend_from_slice(b"connection: close\r\n");
        }
        self.resp = resp;
    }

    fn write_extra(&self, out: &mut Vec<u8>, trail: Option<&str>) {
        if let Some(t) = trail.filter(|t| !t.is_empty() && !t.contains(['\r', '\n'])) {
            header_line(out, DEBUG_HEADER.as_str(), t);
        }
        if self.proxy.settings.snapshot_header {
            header_line(out, SNAPSHOT_HEADER.as_str(), &self.proxy.snapshot_value());
        }
        if let (Some(name), Some(id)) = (self.proxy.settings.request_id, &self.request_id) {
            out.extend_from_slice(name);
            out.extend_from_slice(b": ");
            out.extend_from_slice(id.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
}

fn header_line(out: &mut Vec<u8>, name: &str, value: &str) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Writes `bytes` to the client; a write that makes no progress for
/// `timeout` fails (the client stopped reading). Most writes complete at
/// once: the timer is only touched when the socket is full.
async fn send(
    stream: &mut TcpStream,
    bytes: &[u8],
    timer: &mut Pin<Box<Sleep>>,
    timeout: Duration,
) -> io::Result<()> {
    let mut written = 0;
    while written < bytes.len() {
        match stream.try_write(&bytes[written..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                timer.as_mut().reset(Instant::now() + timeout);
                tokio::select! {
                    biased;
                    r = stream.writable() => r?,
                    () = timer.as_mut() => {
                        return Err(io::Error::new(io::ErrorKind::TimedOut, "client stopped reading"))
                    }
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes all of `bytes` through a shared reference (readiness and
/// `try_write`).
async fn write_shared(stream: &TcpStream, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        stream.writable().await?;
        match stream.try_write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Completes when the client closes or resets its connection. Bytes it
/// sends meanwhile (pipelined requests) are kept in `buf`, up to `limit`;
/// past that the watch stops (the next request will be read later). Uses
/// readiness and `try_read`, so the socket is shared, not borrowed
/// mutably, with the writes of interim answers.
async fn client_closed(stream: &TcpStream, buf: &mut BytesMut, limit: usize) {
    while buf.len() < limit {
        if stream.readable().await.is_err() {
            return;
        }
        if buf.capacity() - buf.len() < READ_SPACE {
            buf.reserve(READ_SPACE);
        }
        match stream.try_read_buf(buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
    }
    std::future::pending::<()>().await;
}

/// The fast path's watch on its client during an exchange.
struct ClientWatch<'a> {
    client: &'a TcpStream,
    /// Where pipelined bytes read meanwhile are kept.
    buf: &'a mut BytesMut,
    limit: usize,
}

impl Watch for ClientWatch<'_> {
    fn gone(&mut self) -> impl Future<Output = ()> {
        client_closed(self.client, self.buf, self.limit)
    }
}

/// The fast path's use of response heads: interim ones are written to
/// the client at once, the final one's client version goes to `resp`.
struct ClientHead<'a> {
    client: &'a TcpStream,
    resp: &'a mut Vec<u8>,
    send_timeout: Duration,
    accepts_trailers: bool,
}

impl Sink for ClientHead<'_> {
    type Head = Answer;

    async fn interim(&self, h: &ResponseHead<'_, '_>) -> bool {
        let mut head = Vec::with_capacity(h.len + 16);
        h.write_client(&mut head);
        head.extend_from_slice(b"\r\n");
        let write = write_shared(self.client, &head);
        matches!(
            tokio::time::timeout(self.send_timeout, write).await,
            Ok(Ok(()))
        )
    }

    fn last(&mut self, h: &ResponseHead<'_, '_>) -> Result<Answer, &'static str> {
        self.resp.clear();
        h.write_client(self.resp);
        let trailers = if self.accepts_trailers && h.plan.body == Framing::Chunked {
            h.declared_trailers()
        } else {
            Vec::new()
        };
        Ok(Answer {
            status: h.status,
            body: h.plan.body,
            reusable: h.plan.reusable,
            trailers,
        })
    }
}
