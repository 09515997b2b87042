//! What is particular to gRPC calls passing the proxy: recognising one,
//! its `grpc-timeout` (which bounds the request deadline), and the proxy's
//! own errors answered the gRPC way: HTTP 200 with `grpc-status` and
//! `grpc-message` in a trailers-only response, so a client sees a proper
//! status (14 UNAVAILABLE, 4 DEADLINE_EXCEEDED, 12 UNIMPLEMENTED, ...)
//! instead of a transport error.

use std::time::Duration;

use http::{header, HeaderMap, HeaderValue, Response, StatusCode};

use super::body::ProxyBody;
use super::error::ProxyError;

/// Whether a request with these headers is a gRPC call
/// (`content-type: application/grpc`, `application/grpc+proto`, ...).
pub(crate) fn is_grpc(headers: &HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).is_some_and(|v| {
        let v = v.as_bytes();
        v.len() >= 16
            && v[..16].eq_ignore_ascii_case(b"application/grpc")
            && matches!(v.get(16), None | Some(b'+' | b';'))
    })
}

/// The call's `grpc-timeout` (`1-8 digits` and a unit: `H`, `M`, `S`,
/// `m`, `u`, `n`), if it has a valid one.
pub(crate) fn timeout(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get("grpc-timeout")?.as_bytes();
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b"H" => Duration::from_secs(n * 3600),
        b"M" => Duration::from_secs(n * 60),
        b"S" => Duration::from_secs(n),
        b"m" => Duration::from_millis(n),
        b"u" => Duration::from_micros(n),
        b"n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The gRPC status code for one of the proxy's own errors (the gRPC
/// HTTP-to-status mapping, with the proxy's timeouts as
/// DEADLINE_EXCEEDED and a missing route as UNIMPLEMENTED).
pub(crate) fn status_of(e: &ProxyError) -> u8 {
    const CANCELLED: u8 = 1;
    const DEADLINE_EXCEEDED: u8 = 4;
    const UNIMPLEMENTED: u8 = 12;
    const INTERNAL: u8 = 13;
    const UNAVAILABLE: u8 = 14;
    match e {
        ProxyError::Timeout { .. } | ProxyError::Deadline { .. } => DEADLINE_EXCEEDED,
        ProxyError::NoRoute { .. }
        | ProxyError::UnknownService(_)
        | ProxyError::MethodNotAllowed(_) => UNIMPLEMENTED,
        ProxyError::NoInstance { .. }
        | ProxyError::Saturated { .. }
        | ProxyError::Unreachable { .. }
        | ProxyError::BadResponse { .. } => UNAVAILABLE,
        ProxyError::ClientGone | ProxyError::ClientTimeout(_) => CANCELLED,
        ProxyError::TlsRedirect { .. } | ProxyError::TlsRequired => UNAVAILABLE,
        ProxyError::BadRequest(_)
        | ProxyError::HeadersTooLarge { .. }
        | ProxyError::TooManyHeaders { .. }
        | ProxyError::UriTooLong { .. }
        | ProxyError::ExpectationFailed
        | ProxyError::UnsupportedCoding => INTERNAL,
        ProxyError::UpgradeNotAllowed { .. } => UNIMPLEMENTED,
    }
}

/// `e` as a trailers-only gRPC response.
pub(crate) fn error_response(e: &ProxyError) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::empty());
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert("grpc-status", HeaderValue::from(u16::from(status_of(e))));
    if let Ok(message) = HeaderValue::from_str(&percent_encode(&e.to_string())) {
        h.insert("grpc-message", message);
    }
    resp
}

/// `grpc-message` encoding: bytes outside printable ASCII, and `%`, as
/// `%XX`.
pub(crate) fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.insert(*k, HeaderValue::from_static(v));
        }
        m
    }

    #[test]
    fn recognises_grpc_calls_and_their_timeouts() {
        assert!(is_grpc(&headers(&[("content-type", "application/grpc")])));
        assert!(is_grpc(&headers(&[(
            "content-type",
            "application/grpc+proto"
        )])));
        assert!(!is_grpc(&headers(&[("content-type", "application/grpcx")])));
        assert!(!is_grpc(&headers(&[("content-type", "text/plain")])));
        let t = |v: &'static str| timeout(&headers(&[("grpc-timeout", v)]));
        assert_eq!(t("1S"), Some(Duration::from_secs(1)));
        assert_eq!(t("250m"), Some(Duration::from_millis(250)));
        assert_eq!(t("2M"), Some(Duration::from_secs(120)));
        assert_eq!(t("7u"), Some(Duration::from_micros(7)));
        for bad in ["", "S", "1", "123456789S", "1x", "-1S", "1.5S"] {
            assert_eq!(t(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn errors_become_grpc_statuses() {
        let svc: std::sync::Arc<str> = "s".into();
        let cases = [
            (
                ProxyError::NoInstance {
                    service: svc.clone(),
                    why: "no instances".into(),
                },
                14,
            ),
            (
                ProxyError::Deadline {
                    service: svc.clone(),
                    timeout: Duration::from_secs(1),
                },
                4,
            ),
            (ProxyError::UnknownService("x".into()), 12),
        ];
        for (e, code) in cases {
            let r = error_response(&e);
            assert_eq!(r.status(), StatusCode::OK);
            assert_eq!(r.headers()["content-type"], "application/grpc");
            assert_eq!(r.headers()["grpc-status"], code.to_string().as_str());
            assert!(!r.headers()["grpc-message"].is_empty());
        }
        assert_eq!(percent_encode("50% é"), "50%25 %C3%A9");
    }
}
