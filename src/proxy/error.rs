//! Errors the proxy answers itself, each with its status and a short
//! plain-text body that names what went wrong (and the service, when one was
//! chosen), so a client or a load-test log tells the operator where to look.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{header, HeaderValue, Response, StatusCode};

use super::body::ProxyBody;

/// Content type of the proxy's own error answers.
pub(crate) const BODY_CONTENT_TYPE: &str = "text/plain; charset=utf-8";

/// Why a request was not forwarded, or not answered by an instance.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// HTTP/1.1 request without a Host header, or an unusable Host.
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
    #[error("no available instance of service {0:?}")]
    NoInstance(Arc<str>),
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
            ProxyError::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::NoRoute { .. } | ProxyError::UnknownService(_) => StatusCode::NOT_FOUND,
            ProxyError::NoInstance(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Unreachable { .. } | ProxyError::BadResponse { .. } => {
                StatusCode::BAD_GATEWAY
            }
            ProxyError::Timeout { .. } | ProxyError::Deadline { .. } => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The response sent to the client: the status and the message as a
    /// one-line plain-text body.
    pub fn into_response(self) -> Response<ProxyBody> {
        let mut resp = Response::new(ProxyBody::full(self.body_text()));
        *resp.status_mut() = self.status();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(BODY_CONTENT_TYPE),
        );
        resp
    }

    /// The one-line body of the proxy's own answer (both forwarding paths).
    pub(crate) fn body_text(&self) -> String {
        let mut body = self.to_string();
        body.push('\n');
        body
    }
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
            (ProxyError::NoInstance(svc.clone()), 503),
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
