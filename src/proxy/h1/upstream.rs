//! One HTTP/1.1 exchange with an instance over a plain pooled socket: the
//! request's bytes are written, the response head is read and checked by
//! the shared codec ([`super::head`], [`crate::proxy::policy`]), with the
//! keep-alive races, retries and failures judged one way. Both codecs use
//! it: the fast path for its own connections, and the general path for
//! bodyless requests (HTTP/2, HTTP/1.0 clients) to plain HTTP/1.1
//! services. What the client side does with the answer (bytes for an
//! HTTP/1.1 client, a header map for hyper's server) is its [`Sink`]; how it
//! notices a client leaving is its [`Watch`].

use std::future::Future;
use std::io;
use std::pin::Pin;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use super::head::{self, ResponseHead};
use crate::health::passive::Failure;
use crate::proxy::attempt::{Exchange, Outcome};
use crate::proxy::policy::response::Asked;
use crate::proxy::upstream::{self, RawConn, MAX_RESPONSE_HEAD};
use crate::proxy::Proxy;
use crate::registry::{InstanceState, ServiceEntry};

/// Most interim (1xx) responses taken before the final one.
pub(crate) const MAX_INTERIM: usize = 64;

/// Least free space offered to a read.
pub(super) const READ_SPACE: usize = 4 * 1024;

/// How the client side learns that its client went away during an
/// exchange.
pub(crate) trait Watch {
    /// Completes when the client has gone; never, when the client's
    /// departure drops the exchange instead (hyper's server does).
    fn gone(&mut self) -> impl Future<Output = ()>;
}

/// What the client side makes of the instance's response heads.
pub(crate) trait Sink {
    /// The final head as the client side keeps it.
    type Head;

    /// Passes on an interim answer (`103 Early Hints`); `false` when the
    /// client is gone.
    fn interim(&self, head: &ResponseHead<'_, '_>) -> impl Future<Output = bool>;

    /// Takes the final head (status 200 and up); `Err`: it cannot be
    /// relayed.
    fn last(&mut self, head: &ResponseHead<'_, '_>) -> Result<Self::Head, &'static str>;
}

/// A client side that notices nothing (its future is dropped instead).
pub(crate) struct Dropped;

impl Watch for Dropped {
    fn gone(&mut self) -> impl Future<Output = ()> {
        std::future::pending()
    }
}

/// Attempts over plain pooled sockets: the request is the same bytes
/// every time, so a retry resends them as they are.
pub(crate) struct RawExchange<'a, W, S> {
    pub proxy: &'a Proxy,
    pub service: &'a ServiceEntry,
    /// The request head (and buffered body) for the instance.
    pub request: &'a [u8],
    /// The response-header deadline, one timer moved for each attempt.
    pub timer: Pin<&'a mut Sleep>,
    /// The request may be repeated after it was written.
    pub resendable: bool,
    pub asked: Asked<'a>,
    pub watch: W,
    pub sink: S,
    /// The client went away during an attempt.
    pub client_gone: bool,
}

/// How one exchange on one socket failed.
enum Lost {
    /// Nothing reached the instance.
    Unsent(String),
    /// The request was (maybe partly) written; no usable response came.
    Sent(String),
    /// The instance answered in a way that cannot be relayed.
    Bad(&'static str),
    TimedOut,
    /// The client closed its connection.
    ClientGone,
}

impl<W: Watch, S: Sink> Exchange for RawExchange<'_, W, S> {
    type Answer = (RawConn, S::Head);

    async fn attempt(&mut self, instance: &InstanceState) -> Outcome<Self::Answer> {
        let service = self.service;
        let timeout = &service.policy().timeouts;
        let settings = &self.proxy.settings;
        let pooled = upstream::pool(instance, settings.max_idle)
            .and_then(|pool| pool.take_raw(settings.upstream_idle));
        if let Some(mut conn) = pooled {
            match self.exchange(&mut conn, timeout.response_header).await {
                Ok((status, answer)) => return Outcome::Answered((conn, answer), status),
                Err(Lost::TimedOut) => return Outcome::TimedOut,
                Err(lost @ (Lost::Bad(_) | Lost::ClientGone)) => return self.lost(lost),
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
        let connect = upstream::connect_raw(instance.addr(), timeout.connect);
        let connected = tokio::select! {
            biased;
            c = connect => c,
            () = self.watch.gone() => return self.lost(Lost::ClientGone),
        };
        let mut conn = match connected {
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
            Err(lost) => self.lost(lost),
        }
    }
}

impl<W: Watch, S: Sink> RawExchange<'_, W, S> {
    /// The outcome of an attempt that cannot be retried.
    fn lost<A>(&mut self, lost: Lost) -> Outcome<A> {
        match lost {
            Lost::ClientGone => {
                self.client_gone = true;
                Outcome::Abandoned
            }
            Lost::Bad(detail) => Outcome::BadResponse(detail),
            Lost::Unsent(error) | Lost::Sent(error) => Outcome::Failed {
                error,
                failure: None,
                retry: false,
            },
            Lost::TimedOut => Outcome::TimedOut,
        }
    }

    /// Writes the request on `conn` and reads the response head, which
    /// goes to the sink; interim answers go to it on the way. The client
    /// is watched meanwhile.
    async fn exchange(
        &mut self,
        conn: &mut RawConn,
        timeout: std::time::Duration,
    ) -> Result<(u16, S::Head), Lost> {
        self.timer.as_mut().reset(Instant::now() + timeout);
        let asked = self.asked;
        let request = self.request;
        let sink = &mut self.sink;
        let relay = async {
            match conn.stream.write(request).await {
                Ok(n) if n == request.len() => {}
                Ok(0) => return Err(Lost::Unsent("connection closed".to_owned())),
                Ok(n) => conn
                    .stream
                    .write_all(&request[n..])
                    .await
                    .map_err(|e| Lost::Sent(e.to_string()))?,
                Err(e) => return Err(Lost::Unsent(e.to_string())),
            }
            response_head(conn, asked, sink).await
        };
        tokio::select! {
            biased;
            r = relay => r,
            () = self.timer.as_mut() => Err(Lost::TimedOut),
            () = self.watch.gone() => Err(Lost::ClientGone),
        }
    }
}

/// Reads the response head on `conn`, passing interim (1xx) answers to the
/// sink and skipping `100 Continue`, and gives the final head to the sink.
async fn response_head<S: Sink>(
    conn: &mut RawConn,
    asked: Asked<'_>,
    sink: &mut S,
) -> Result<(u16, S::Head), Lost> {
    let mut interim = 0;
    loop {
        if !conn.buf.is_empty() {
            let mut slots = head::header_slots();
            match head::parse_response(&conn.buf, &mut slots, asked) {
                Ok(Some(h)) if h.len > MAX_RESPONSE_HEAD => {
                    return Err(Lost::Bad("response head too large"))
                }
                Ok(Some(h)) if h.status < 200 => {
                    interim += 1;
                    if interim > MAX_INTERIM {
                        return Err(Lost::Bad("too many interim responses"));
                    }
                    if h.is_interim() && !sink.interim(&h).await {
                        return Err(Lost::ClientGone);
                    }
                    let len = h.len;
                    conn.buf.advance(len);
                    continue;
                }
                Ok(Some(h)) => {
                    let answer = sink.last(&h).map_err(Lost::Bad)?;
                    let (status, len) = (h.status, h.len);
                    conn.buf.advance(len);
                    return Ok((status, answer));
                }
                Ok(None) if conn.buf.len() > MAX_RESPONSE_HEAD => {
                    return Err(Lost::Bad("response head too large"))
                }
                Ok(None) => {}
                Err(why) => return Err(Lost::Bad(why)),
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

/// Reads what `stream` has into `buf`, making room first.
pub(super) async fn read_more(stream: &mut TcpStream, buf: &mut BytesMut) -> io::Result<usize> {
    if buf.capacity() - buf.len() < READ_SPACE {
        buf.reserve(READ_SPACE);
    }
    stream.read_buf(buf).await
}
