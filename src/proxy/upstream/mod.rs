//! Upstream connections: how one request reaches an instance. The
//! service's `protocol` and `tls` ([`Upstream`]) decide the wire:
//!
//! | protocol | tls | wire |
//! |---|---|---|
//! | `http1` | no | HTTP/1.1 (the fast path's raw sockets, or hyper's client) |
//! | `http1` | yes | HTTP/1.1 over TLS, ALPN `http/1.1` |
//! | `h2c` | no | HTTP/2 by prior knowledge |
//! | `h2` | yes | HTTP/2 over TLS, ALPN `h2` (refused if not chosen) |
//! | `auto` | yes | what the instance chooses by ALPN (`h2` or `http/1.1`) |
//! | `auto` | no | HTTP/1.1 |
//!
//! [`reuse`] finds a kept connection without waiting (an idle HTTP/1.1
//! connection, or a stream on a shared HTTP/2 one); [`open`] makes a new
//! one, bounded by the connect timeout (TCP and TLS handshake together).
//! What is kept per instance lives in [`pool`].

mod goaway;
mod h2;
mod pool;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use http::header::{self, HeaderName};
use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2, TrySendError};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

pub(crate) use self::h2::H2Stream;
pub(crate) use pool::{idle_connections, keep_raw, pool, pool_of, RawConn};

use crate::config::{Protocol, Upstream};
use crate::proxy::request_body::UpstreamBody;
use crate::registry::InstanceState;
use crate::tls::{Alpn, Negotiated};

/// Largest response head accepted from an instance (both codecs).
pub(crate) const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// HTTP/2 flow-control windows towards instances.
const STREAM_WINDOW: u32 = 1024 * 1024;
const CONNECTION_WINDOW: u32 = 4 * 1024 * 1024;

/// Read buffer of a fast-path upstream connection.
const RAW_BUF: usize = 8 * 1024;

/// The sending side for one request: an HTTP/1.1 connection of its own,
/// or a stream on a shared HTTP/2 connection.
#[derive(Debug)]
pub(crate) enum Sender {
    /// An HTTP/1.1 connection (plain or TLS).
    H1(pool::Sender),
    /// A stream on an HTTP/2 connection.
    H2(H2Stream),
}

impl Sender {
    /// Sends `request`, converted for the wire, and waits for the response
    /// head. A request that was not sent comes back in the error.
    pub(crate) async fn send(
        &mut self,
        mut request: Request<UpstreamBody>,
        tls: bool,
    ) -> Result<Response<Incoming>, TrySendError<Request<UpstreamBody>>> {
        match self {
            Sender::H1(s) => s.try_send_request(request).await,
            Sender::H2(s) => {
                for_h2(&mut request, tls);
                s.sender.try_send_request(request).await
            }
        }
    }

    /// Whether an extended CONNECT (RFC 8441) may be sent: on an HTTP/2
    /// connection whose instance enabled it (waiting at most `wait` for a
    /// fresh connection's settings); never on HTTP/1.1.
    pub(crate) async fn extended_connect(&self, wait: Duration) -> bool {
        match self {
            Sender::H1(_) => false,
            Sender::H2(s) => s.extended_connect(wait).await,
        }
    }

    /// Whether this is a stream on an HTTP/2 connection.
    pub(crate) fn is_h2(&self) -> bool {
        matches!(self, Sender::H2(_))
    }
}

/// Rewrites an HTTP/1.1-shaped request for HTTP/2: the target becomes
/// absolute (`:scheme`, and `:authority` from `Host`, which is removed),
/// connection-specific fields go (RFC 9113 section 8.2.2).
///
/// Done once: a request that comes back unsent is already rewritten. One
/// without `Host` (HTTP/1.0) keeps a relative target, which h2 sends with
/// `:scheme` and no `:authority`.
fn for_h2(request: &mut Request<UpstreamBody>, tls: bool) {
    if request.uri().authority().is_some() {
        return;
    }
    let headers = request.headers_mut();
    let authority = headers
        .remove(header::HOST)
        .and_then(|h| Authority::try_from(h.as_bytes()).ok());
    for name in [
        header::CONNECTION,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
    ] {
        headers.remove(name);
    }
    let Some(authority) = authority else { return };
    *request.version_mut() = Version::HTTP_2;
    let scheme = if tls { Scheme::HTTPS } else { Scheme::HTTP };
    let mut parts = std::mem::take(request.uri_mut()).into_parts();
    parts.scheme = Some(scheme);
    parts.authority = Some(authority);
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    if let Ok(uri) = Uri::from_parts(parts) {
        *request.uri_mut() = uri;
    }
}

/// Keeps `sender` for the next request to `instance` (an HTTP/1.1
/// connection goes back to the pool; an HTTP/2 stream just ends).
pub(crate) fn keep(instance: &InstanceState, sender: Sender) {
    match sender {
        Sender::H1(s) => pool::keep_h1(instance, s),
        Sender::H2(_) => {}
    }
}

/// How new connections to a service's instances are made.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Dial<'a> {
    pub upstream: &'a Upstream,
    pub connect: Duration,
    /// `limits.max_idle_per_instance`.
    pub max_idle: usize,
    /// `http2.upstream_max_streams`.
    pub max_streams: usize,
    /// `http2.upstream_max_connections`.
    pub max_conns: usize,
    /// `http2.keepalive_interval` / `keepalive_timeout`: pings on shared
    /// connections, so a dead instance is noticed between requests.
    pub keepalive: (Duration, Duration),
}

impl Dial<'_> {
    /// Whether requests go over HTTP/2 only (no HTTP/1.1 connection is
    /// ever kept).
    fn h2_only(&self) -> bool {
        matches!(self.upstream.protocol, Protocol::H2c | Protocol::H2)
    }
}

/// A kept connection for one request to `instance`, if one is free now.
/// Never waits.
pub(crate) fn reuse(instance: &InstanceState, dial: &Dial<'_>, idle: Duration) -> Option<Sender> {
    let pool = pool(instance, dial.max_idle)?;
    if dial.h2_only() || (dial.upstream.protocol == Protocol::Auto && dial.upstream.tls.is_some()) {
        if let Some(stream) = pool.h2.reuse(dial.max_streams) {
            return Some(Sender::H2(stream));
        }
        if dial.h2_only() {
            return None;
        }
    }
    pool.take(idle).map(Sender::H1)
}

/// A new connection (or, for HTTP/2, a stream on a connection another
/// request just opened) for one request to `instance`.
pub(crate) async fn open(
    instance: &InstanceState,
    dial: &Dial<'_>,
) -> Result<Sender, ConnectError> {
    let addr = instance.addr();
    let up = dial.upstream;
    match (up.protocol, &up.tls) {
        (Protocol::Http1 | Protocol::Auto, None) => {
            let tcp = tcp(addr, dial.connect).await?;
            Ok(Sender::H1(h1_handshake(tcp, addr).await?))
        }
        (Protocol::H2c, _) | (Protocol::H2, None) => {
            let set = &pool(instance, dial.max_idle)
                .ok_or(ConnectError::NoPool)?
                .h2;
            let connect = async {
                let tcp = tcp(addr, dial.connect).await?;
                h2_handshake(tcp, addr, dial).await
            };
            let stream = set
                .open(dial.max_streams, dial.max_conns, dial.connect, connect)
                .await?;
            Ok(Sender::H2(stream))
        }
        (Protocol::H2, Some(tls)) => {
            let set = &pool(instance, dial.max_idle)
                .ok_or(ConnectError::NoPool)?
                .h2;
            let connect = async {
                let (stream, _) = bounded(dial.connect, async {
                    let tcp = tcp_now(addr).await?;
                    tls.connect(addr.ip(), tcp, Alpn::H2)
                        .await
                        .map_err(ConnectError::Tls)
                })
                .await?;
                h2_handshake(stream, addr, dial).await
            };
            let stream = set
                .open(dial.max_streams, dial.max_conns, dial.connect, connect)
                .await?;
            Ok(Sender::H2(stream))
        }
        (Protocol::Http1 | Protocol::Auto, Some(tls)) => {
            let alpn = if up.protocol == Protocol::Auto {
                Alpn::Both
            } else {
                Alpn::Http1
            };
            let (stream, negotiated) = bounded(dial.connect, async {
                let tcp = tcp_now(addr).await?;
                tls.connect(addr.ip(), tcp, alpn)
                    .await
                    .map_err(ConnectError::Tls)
            })
            .await?;
            match negotiated {
                Negotiated::Http1 => Ok(Sender::H1(h1_handshake(stream, addr).await?)),
                Negotiated::H2 => {
                    let dialed = h2_handshake(stream, addr, dial).await?;
                    let set = &pool(instance, dial.max_idle)
                        .ok_or(ConnectError::NoPool)?
                        .h2;
                    Ok(Sender::H2(set.adopt(dialed)))
                }
            }
        }
    }
}

/// Shared HTTP/2 connections open to `instance` and the streams on them
/// (shown by the admin API).
pub(crate) fn h2_connections(instance: &InstanceState) -> (usize, usize) {
    pool_of(instance).map_or((0, 0), |p| (p.h2.len(), p.h2.streams()))
}

/// Why a new connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The TCP connect failed (refused, unreachable, ...).
    #[error("connect failed: {0}")]
    Io(#[from] io::Error),
    /// The TCP connect (and TLS handshake) did not finish within the
    /// connect timeout.
    #[error("connect timed out after {0:?}")]
    Timeout(Duration),
    /// The TLS handshake failed (certificate not trusted, name mismatch,
    /// no common protocol, ...).
    #[error("TLS handshake failed: {0}")]
    Tls(io::Error),
    /// The HTTP handshake failed.
    #[error("handshake failed: {0}")]
    Handshake(#[from] hyper::Error),
    /// The instance's connection slot holds something else (never happens
    /// in the proxy: only the pool uses it).
    #[error("no connection pool for the instance")]
    NoPool,
}

/// Dials `addr` with `timeout`, for a fast-path exchange.
pub(crate) async fn connect_raw(
    addr: SocketAddr,
    timeout: Duration,
) -> Result<RawConn, ConnectError> {
    Ok(RawConn {
        stream: tcp(addr, timeout).await?,
        buf: BytesMut::with_capacity(RAW_BUF),
    })
}

/// `fut`, or [`ConnectError::Timeout`] after `timeout`.
async fn bounded<T>(
    timeout: Duration,
    fut: impl Future<Output = Result<T, ConnectError>>,
) -> Result<T, ConnectError> {
    tokio::time::timeout(timeout, fut)
        .await
        .unwrap_or(Err(ConnectError::Timeout(timeout)))
}

async fn tcp(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, ConnectError> {
    bounded(timeout, tcp_now(addr)).await
}

async fn tcp_now(addr: SocketAddr) -> Result<TcpStream, ConnectError> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Starts HTTP/1.1 on `io`. The connection is driven by its own task,
/// which ends when the connection closes.
async fn h1_handshake<T>(io: T, addr: SocketAddr) -> Result<pool::Sender, ConnectError>
where
    T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    // Response heads over 64 KiB or 128 lines are refused, as on the fast
    // path.
    let (sender, conn) = http1::Builder::new()
        .max_header_size(MAX_RESPONSE_HEAD)
        .max_headers(crate::proxy::policy::request::MAX_FIELDS)
        .handshake(TokioIo::new(io))
        .await?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(upstream = %addr, error = %e, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}

/// Starts HTTP/2 on `io` (its preface and settings; the handshake itself
/// completes in the connection's task), watched for the instance's GOAWAY.
async fn h2_handshake<T>(
    io: T,
    addr: SocketAddr,
    dial: &Dial<'_>,
) -> Result<self::h2::H2Dialed, ConnectError>
where
    T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (io, peer) = goaway::GoAwayWatch::new(io);
    let (sender, conn) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_RESPONSE_HEAD as u32)
        .keep_alive_interval(dial.keepalive.0)
        .keep_alive_timeout(dial.keepalive.1)
        // Windows bound what one connection buffers when a client reads
        // slowly (1 MiB a stream, 4 MiB the connection). They also size h2's
        // guard against floods of small DATA frames (half the connection
        // window): with the 64 KiB default, a gRPC stream of a few hundred
        // tiny messages read a little late would trip it.
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .handshake(TokioIo::new(io))
        .await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(upstream = %addr, error = ?e, "upstream HTTP/2 connection ended with an error");
        }
    });
    Ok(self::h2::H2Dialed { sender, peer })
}

/// Whether an HTTP/2 error says the instance did not process the stream
/// (refused it, or it arrived after a graceful GOAWAY): the request may go
/// elsewhere whatever its method, if it can be rebuilt.
pub(crate) fn unprocessed(e: &hyper::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(h2) = err.downcast_ref::<::h2::Error>() {
            return h2.reason() == Some(::h2::Reason::REFUSED_STREAM)
                || (h2.is_go_away() && h2.reason() == Some(::h2::Reason::NO_ERROR));
        }
        source = err.source();
    }
    false
}
