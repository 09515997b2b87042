//! Answers of the admin API: short plain-text bodies (errors and
//! confirmations end in a newline), pretty JSON, `405` with `Allow`, `HEAD`
//! answers, and reading a bounded request body.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body::Body as _;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::Serialize;

use crate::proxy::ProxyBody;

/// Largest request body the admin API reads.
pub(crate) const MAX_BODY: usize = 64 * 1024;

/// A `HEAD` answer: the `GET` answer's status and headers (its length
/// included), no body.
pub(super) fn without_body(resp: Response<ProxyBody>) -> Response<ProxyBody> {
    let (mut parts, body) = resp.into_parts();
    if let Some(len) = body.size_hint().exact() {
        parts
            .headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    Response::from_parts(parts, ProxyBody::empty())
}

/// Reads a request body of at most [`MAX_BODY`] bytes.
pub(super) async fn read_body(body: Incoming) -> Result<Bytes, Response<ProxyBody>> {
    match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(text(
                StatusCode::BAD_REQUEST,
                &format!("body: longer than {MAX_BODY} bytes\n"),
            ))
        }
        Err(e) => Err(text(StatusCode::BAD_REQUEST, &format!("body: {e}\n"))),
    }
}

pub(super) fn method_not_allowed(allowed: &'static str) -> Response<ProxyBody> {
    let mut resp = text(
        StatusCode::METHOD_NOT_ALLOWED,
        &format!("method not allowed; use {allowed}\n"),
    );
    resp.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allowed));
    resp
}

pub(super) fn text(status: StatusCode, body: &str) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::full(body.to_owned()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

pub(super) fn json(status: StatusCode, value: &impl Serialize) -> Response<ProxyBody> {
    match serde_json::to_vec_pretty(value) {
        Ok(mut body) => {
            body.push(b'\n');
            let mut resp = Response::new(ProxyBody::full(body));
            *resp.status_mut() = status;
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            resp
        }
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("could not encode: {e}\n"),
        ),
    }
}
