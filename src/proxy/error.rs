//! Errors the proxy answers itself, each with its status and a short
//! plain-text body that names what went wrong (and the service, when one was
//! chosen), so a client or a load-test log tells the operator where to look.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{header, HeaderValue, Response, StatusCode};

use super::body::ProxyBody;

/// What a `400` for a request body that is malformed or ends early says
/// (both codecs: hyper's decoder does not tell the two apart).
pub(crate) const BAD_BODY: &str = "malformed or incomplete request body";

/// Content type of the proxy's own error answers.
pub(crate) const BODY_CONTENT_TYPE: &str = "text/plain; charset=utf-8";

/// Why a request was not forwarded, or not answered by an instance.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// An HTTP/2 extended CONNECT (RFC 8441) for a protocol the route does
    /// not allow: unlike a refused HTTP/1.1 upgrade, it cannot be sent on
    /// as a plain request.
    #[error("upgrade to {protocol:?} is not allowed on this route")]
    UpgradeNotAllowed {
        /// The `:protocol` asked for.
        protocol: String,
    },
    /// The request's framing, target or Host cannot be trusted.
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// The request head is over `limits.max_header_bytes`.
    #[error("request header section is {size} bytes, over the limit of {limit}")]
    HeadersTooLarge {
        /// Size of the request head.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The request has more header lines than the proxy takes.
    #[error("request has {count} header lines, over the limit of {limit}")]
    TooManyHeaders {
        /// How many were counted (at least).
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// The request target is over `limits.max_uri_bytes`.
    #[error("request target is {size} bytes, over the limit of {limit}")]
    UriTooLong {
        /// Its size.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// A method the proxy does not forward (`CONNECT`).
    #[error("method {0} is not supported by this proxy")]
    MethodNotAllowed(&'static str),
    /// An `Expect` other than `100-continue`.
    #[error("expectation not supported (only 100-continue is)")]
    ExpectationFailed,
    /// A request transfer coding other than `chunked`.
    #[error("transfer coding not supported (only chunked is)")]
    UnsupportedCoding,
    /// The client stopped sending its request body, or stopped reading
    /// the response, for longer than the client timeout.
    #[error("client timed out after {0:?}")]
    ClientTimeout(Duration),
    /// The client closed its connection before the answer (never sent).
    #[error("client closed the connection")]
    ClientGone,
    /// The route requires TLS: the same URL over https.
    #[error("this route is served over TLS only: {location}")]
    TlsRedirect {
        /// The https URL.
        location: String,
    },
    /// The route requires TLS and refuses plain HTTP.
    #[error("this route is served over TLS only")]
    TlsRequired,
    /// No route and no convention matched.
    #[error("no route for host {host:?} and path {path:?}")]
    NoRoute {
        /// The Host, if any.
        host: String,
        /// The path.
        path: String,
    },
    /// The request names a service the registry does not know.
    #[error("unknown service {0:?}")]
    UnknownService(String),
    /// The service exists but has no instance that can be tried.
    #[error("no available instance of service {service:?} ({why})")]
    NoInstance {
        /// The service.
        service: Arc<str>,
        /// Why none is available, with counts by state.
        why: String,
    },
    /// Every instance that could take the request is at its
    /// `max_in_flight`, and the service's queue is full or the wait timed
    /// out.
    #[error("every instance of service {service:?} is at its max_in_flight; retry after {}s", retry_after.as_secs())]
    Saturated {
        /// The service.
        service: Arc<str>,
        /// What `Retry-After` says.
        retry_after: Duration,
    },
    /// Every attempt failed before an instance answered.
    #[error("service {service:?} unreachable: {detail}")]
    Unreachable {
        /// The service.
        service: Arc<str>,
        /// The last attempt's instance and error.
        detail: String,
    },
    /// The instance did not send response headers in time.
    #[error("service {service:?} instance {addr} sent no response within {timeout:?}")]
    Timeout {
        /// The service.
        service: Arc<str>,
        /// The instance that did not answer.
        addr: SocketAddr,
        /// The response-header timeout.
        timeout: Duration,
    },
    /// The service's overall request deadline passed.
    #[error("service {service:?} did not answer within its request deadline of {timeout:?}")]
    Deadline {
        /// The service.
        service: Arc<str>,
        /// The deadline.
        timeout: Duration,
    },
    /// The instance answered in a way that cannot be relayed.
    #[error("service {service:?} instance {addr}: {detail}")]
    BadResponse {
        /// The service.
        service: Arc<str>,
        /// The instance.
        addr: SocketAddr,
        /// What was wrong.
        detail: &'static str,
    },
}

impl ProxyError {
    /// The status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::HeadersTooLarge { .. } | ProxyError::TooManyHeaders { .. } => {
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            }
            ProxyError::UriTooLong { .. } => StatusCode::URI_TOO_LONG,
            ProxyError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::ExpectationFailed => StatusCode::EXPECTATION_FAILED,
            ProxyError::UnsupportedCoding | ProxyError::UpgradeNotAllowed { .. } => {
                StatusCode::NOT_IMPLEMENTED
            }
            ProxyError::ClientTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            // Nobody reads it; 499 as nginx logs it.
            ProxyError::ClientGone => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
            ProxyError::TlsRedirect { .. } => StatusCode::PERMANENT_REDIRECT,
            ProxyError::TlsRequired => StatusCode::FORBIDDEN,
            ProxyError::NoRoute { .. } | ProxyError::UnknownService(_) => StatusCode::NOT_FOUND,
            ProxyError::NoInstance { .. } | ProxyError::Saturated { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::Unreachable { .. } | ProxyError::BadResponse { .. } => {
                StatusCode::BAD_GATEWAY
            }
            ProxyError::Timeout { .. } | ProxyError::Deadline { .. } => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// Whether the client connection is closed after this answer whatever
    /// else holds: the request was refused before its framing was known to
    /// be sound, so what follows it on the connection cannot be trusted.
    pub fn closes_connection(&self) -> bool {
        matches!(
            self,
            ProxyError::BadRequest(_)
                | ProxyError::HeadersTooLarge { .. }
                | ProxyError::TooManyHeaders { .. }
                | ProxyError::UriTooLong { .. }
                | ProxyError::MethodNotAllowed(_)
                | ProxyError::ExpectationFailed
                | ProxyError::UnsupportedCoding
                | ProxyError::ClientTimeout(_)
                | ProxyError::ClientGone
        )
    }

    /// The response sent to the client by the hyper codec: the status, the
    /// message as a one-line plain-text body, an `Allow` for 405, and
    /// `Connection: close` when [`Self::closes_connection`].
    pub fn into_response(self) -> Response<ProxyBody> {
        let mut resp = Response::new(ProxyBody::full(self.body_text()));
        *resp.status_mut() = self.status();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(BODY_CONTENT_TYPE),
        );
        if let ProxyError::MethodNotAllowed(_) = self {
            h.insert(header::ALLOW, HeaderValue::from_static(ALLOWED));
        }
        if let ProxyError::TlsRedirect { location } = &self {
            if let Ok(v) = HeaderValue::from_str(location) {
                h.insert(header::LOCATION, v);
            }
        }
        if let ProxyError::Saturated { retry_after, .. } = &self {
            h.insert(
                header::RETRY_AFTER,
                HeaderValue::from(retry_after.as_secs()),
            );
        }
        if self.closes_connection() {
            h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }

    /// Writes the whole HTTP/1.1 answer for the fast path's codec to `out`:
    /// status line, the same fields as [`Self::into_response`] plus `Date`,
    /// the fields `extra` adds, and the body unless `head_request`.
    pub(crate) fn write_h1(
        &self,
        head_request: bool,
        close: bool,
        out: &mut Vec<u8>,
        extra: impl FnOnce(&mut Vec<u8>),
    ) {
        use std::io::Write;
        let status = self.status();
        let body = self.body_text();
        out.clear();
        let _ = write!(
            out,
            "HTTP/1.1 {} {}\r\ndate: {}\r\ncontent-type: {BODY_CONTENT_TYPE}\r\ncontent-length: {}\r\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or(""),
            http_date(),
            body.len()
        );
        if let ProxyError::MethodNotAllowed(_) = self {
            let _ = write!(out, "allow: {ALLOWED}\r\n");
        }
        if let ProxyError::TlsRedirect { location } = self {
            let _ = write!(out, "location: {location}\r\n");
        }
        if let ProxyError::Saturated { retry_after, .. } = self {
            let _ = write!(out, "retry-after: {}\r\n", retry_after.as_secs());
        }
        extra(out);
        if close || self.closes_connection() {
            out.extend_from_slice(b"connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        if !head_request {
            out.extend_from_slice(body.as_bytes());
        }
    }

    /// The one-line body of the proxy's own answer (both codecs).
    pub(crate) fn body_text(&self) -> String {
        let mut body = self.to_string();
        body.push('\n');
        body
    }
}

/// The methods the proxy forwards, for `Allow` on a 405.
const ALLOWED: &str = "GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS, TRACE";

/// The current time as an HTTP date, formatted at most once a second per
/// thread.
pub(crate) fn http_date() -> String {
    thread_local! {
        static CACHE: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((0, String::new())) };
    }
    let now = std::time::SystemTime::now();
    let secs = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != secs || c.1.is_empty() {
            *c = (secs, httpdate::fmt_http_date(now));
        }
        c.1.clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        let svc: Arc<str> = Arc::from("api");
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let cases = [
            (ProxyError::BadRequest("missing Host header"), 400),
            (ProxyError::HeadersTooLarge { size: 2, limit: 1 }, 431),
            (
                ProxyError::NoRoute {
                    host: "x".into(),
                    path: "/".into(),
                },
                404,
            ),
            (ProxyError::UnknownService("x".into()), 404),
            (
                ProxyError::NoInstance {
                    service: svc.clone(),
                    why: "no instances".into(),
                },
                503,
            ),
            (ProxyError::UriTooLong { size: 2, limit: 1 }, 414),
            (ProxyError::TooManyHeaders { count: 2, limit: 1 }, 431),
            (ProxyError::MethodNotAllowed("CONNECT"), 405),
            (ProxyError::ExpectationFailed, 417),
            (ProxyError::UnsupportedCoding, 501),
            (
                ProxyError::UpgradeNotAllowed {
                    protocol: "x".into(),
                },
                501,
            ),
            (
                ProxyError::Unreachable {
                    service: svc.clone(),
                    detail: "x".into(),
                },
                502,
            ),
            (
                ProxyError::Timeout {
                    service: svc,
                    addr,
                    timeout: Duration::from_secs(1),
                },
                504,
            ),
        ];
        for (e, code) in cases {
            let r = e.into_response();
            assert_eq!(r.status().as_u16(), code);
        }
    }
}
