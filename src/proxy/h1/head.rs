//! The fast path's codec for message heads: parsing a client request head
//! and an instance's response head with httparse (no header map), and
//! writing the head for the next hop straight from the received bytes.
//! What may pass, and what the proxy adds, is decided by
//! [`crate::proxy::policy`]; this module only reads and writes bytes.

use std::mem::MaybeUninit;

use httparse::Header;

use crate::proxy::error::ProxyError;
use crate::proxy::policy::request::{self, Hop, RequestPlan, RequestView, Version, MAX_FIELDS};
use crate::proxy::policy::response::{self, Asked, Kind, ResponsePlan, ResponseView};
use crate::proxy::policy::{fields, passes, Framing};

/// Storage for one head's parsed header lines.
pub(crate) type HeaderSlots<'b> = [MaybeUninit<Header<'b>>; MAX_FIELDS];

/// Fresh, uninitialised header storage (no zeroing cost).
pub(crate) fn header_slots<'b>() -> HeaderSlots<'b> {
    [const { MaybeUninit::uninit() }; MAX_FIELDS]
}

/// Why a request head is not served on the fast path.
#[derive(Debug)]
pub(crate) enum HeadError {
    /// Refused: answered with the error's status, then the connection
    /// closes.
    Refuse(ProxyError),
    /// Valid, but served by the general (hyper) path: HTTP/2 prior
    /// knowledge, HTTP/1.0, `Expect: 100-continue` (and, once routed, an
    /// upgrade the route allows).
    Fallback(&'static str),
}

/// A parsed, checked client request head.
#[derive(Debug)]
pub(crate) struct RequestHead<'h, 'b> {
    pub method: &'b str,
    /// Length of the head in the buffer, final CRLF included.
    pub len: usize,
    /// What the policy decided.
    pub plan: RequestPlan<'h>,
    buf: &'b [u8],
    headers: &'h [Header<'b>],
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n";

/// Parses a request head at the start of `buf`. `Ok(None)`: incomplete.
pub(crate) fn parse_request<'h, 'b>(
    buf: &'b [u8],
    slots: &'h mut HeaderSlots<'b>,
    hop: &Hop<'_>,
) -> Result<Option<RequestHead<'h, 'b>>, HeadError> {
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] {
        return if n == H2_PREFACE.len() {
            Err(HeadError::Fallback("HTTP/2 prior knowledge"))
        } else {
            Ok(None)
        };
    }
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, slots) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(HeadError::Refuse(ProxyError::TooManyHeaders {
                count: header_lines(buf),
                limit: MAX_FIELDS,
            }))
        }
        Err(httparse::Error::Version) => {
            return Err(HeadError::Refuse(ProxyError::BadRequest(
                "unsupported HTTP version",
            )))
        }
        Err(_) => {
            return Err(HeadError::Refuse(ProxyError::BadRequest(
                "malformed request head",
            )))
        }
    };
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Err(HeadError::Refuse(ProxyError::BadRequest(
            "malformed request head",
        )));
    };
    let headers: &'h [Header<'b>] = req.headers;
    let view = RequestView {
        method,
        target,
        version: if version == 0 {
            Version::H10
        } else {
            Version::H11
        },
        fields: headers,
        protocol: None,
    };
    let plan = request::plan(&view, hop).map_err(HeadError::Refuse)?;
    if version == 0 {
        return Err(HeadError::Fallback("HTTP/1.0"));
    }
    if plan.expect_continue {
        return Err(HeadError::Fallback("Expect"));
    }
    Ok(Some(RequestHead {
        method,
        len,
        plan,
        buf,
        headers,
    }))
}

/// How many header lines the head at the start of `buf` has (as far as it
/// has arrived): the lines between the request line and the empty line.
fn header_lines(buf: &[u8]) -> usize {
    let mut lines = 0usize;
    let mut start = 0;
    for (i, &b) in buf.iter().enumerate() {
        if b == b'\n' {
            let line = &buf[start..i];
            if line.is_empty() || line == b"\r" {
                break;
            }
            lines += 1;
            start = i + 1;
        }
    }
    lines.saturating_sub(1)
}

impl<'b> RequestHead<'_, 'b> {
    /// The trailer fields the request declares (empty without `Trailer`).
    pub(crate) fn declared_trailers(&self) -> Vec<Vec<u8>> {
        if self.plan.trailer_lines == 0 {
            return Vec::new();
        }
        fields::declared_trailers(self.headers, self.plan.trailer_lines)
    }

    /// The received header lines.
    pub(crate) fn fields(&self) -> &[Header<'b>] {
        self.headers
    }

    /// Whether the exchange may be repeated on another instance after it
    /// was sent: idempotent method (RFC 9110 section 9.2.2), no body.
    pub(crate) fn resendable(&self) -> bool {
        self.plan.body == Framing::Empty && crate::proxy::attempt::is_idempotent(self.method)
    }

    /// Appends the head to send to the instance, with request target
    /// `target`, to `out`.
    pub(crate) fn write_upstream(&self, target: &str, hop: &Hop<'_>, out: &mut Vec<u8>) {
        out.extend_from_slice(self.method.as_bytes());
        out.push(b' ');
        out.extend_from_slice(target.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        copy_lines(self.buf, self.headers, self.plan.skip, out);
        self.plan.write_additions(self.headers, hop, None, out);
        out.extend_from_slice(b"\r\n");
    }
}

/// Where `part` (a slice of `buf`) starts in `buf`, if it lies inside it.
fn offset_in(buf: &[u8], part: &[u8]) -> Option<usize> {
    let off = (part.as_ptr() as usize).checked_sub(buf.as_ptr() as usize)?;
    (off + part.len() <= buf.len()).then_some(off)
}

/// Appends the header lines of `headers` (parsed from `buf`) whose index is
/// not set in `skip`, each ended by CRLF. Runs of adjacent lines that were
/// received with CRLF endings are copied from `buf` in one piece; any other
/// line is written out name by value.
fn copy_lines(buf: &[u8], headers: &[Header<'_>], skip: u128, out: &mut Vec<u8>) {
    // The received bytes not yet copied: [start, end).
    let mut run: Option<(usize, usize)> = None;
    for (i, h) in headers.iter().enumerate() {
        if !passes(skip, i) {
            continue;
        }
        let span = offset_in(buf, h.name.as_bytes())
            .zip(offset_in(buf, h.value))
            .filter(|_| !h.value.is_empty())
            .map(|(start, value)| (start, value + h.value.len()));
        match (run, span) {
            (Some((start, end)), Some((s, e))) if s == end + 2 && &buf[end..s] == b"\r\n" => {
                run = Some((start, e));
            }
            (_, Some(span)) => {
                flush(buf, run.take(), out);
                run = Some(span);
            }
            (_, None) => {
                flush(buf, run.take(), out);
                line(out, h.name.as_bytes(), h.value);
            }
        }
    }
    flush(buf, run, out);
}

fn flush(buf: &[u8], run: Option<(usize, usize)>, out: &mut Vec<u8>) {
    if let Some((start, end)) = run {
        out.extend_from_slice(&buf[start..end]);
        out.extend_from_slice(b"\r\n");
    }
}

#[inline]
fn line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// A parsed, checked response head from an instance.
#[derive(Debug)]
pub(crate) struct ResponseHead<'h, 'b> {
    pub status: u16,
    reason: &'b str,
    /// Length of the head in the buffer.
    pub len: usize,
    /// What the policy decided.
    pub plan: ResponsePlan,
    buf: &'b [u8],
    headers: &'h [Header<'b>],
}

/// Parses a response head at the start of `buf` for a request that asked
/// `asked`. `Ok(None)`: incomplete; `Err`: what is wrong with it.
pub(crate) fn parse_response<'h, 'b>(
    buf: &'b [u8],
    slots: &'h mut HeaderSlots<'b>,
    asked: Asked<'_>,
) -> Result<Option<ResponseHead<'h, 'b>>, &'static str> {
    let mut resp = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, buf, slots)
    {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err("too many response header lines"),
        Err(_) => return Err("malformed response head"),
    };
    let (Some(minor), Some(status)) = (resp.version, resp.code) else {
        return Err("malformed response head");
    };
    let headers: &'h [Header<'b>] = resp.headers;
    let view = ResponseView {
        status,
        minor,
        fields: headers,
    };
    let plan = response::plan(&view, asked)?;
    Ok(Some(ResponseHead {
        status,
        reason: resp.reason.unwrap_or(""),
        len,
        plan,
        buf,
        headers,
    }))
}

impl ResponseHead<'_, '_> {
    /// The trailer fields the response declares (empty without `Trailer`).
    pub(crate) fn declared_trailers(&self) -> Vec<Vec<u8>> {
        if self.plan.trailer_lines == 0 {
            return Vec::new();
        }
        fields::declared_trailers(self.headers, self.plan.trailer_lines)
    }

    /// The reason phrase as received.
    pub(crate) fn reason(&self) -> &str {
        self.reason
    }

    /// The head's bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// Calls `f` with each header line the policy lets through, in order:
    /// its name, and its value with where the value lies in
    /// [`bytes`](Self::bytes) (httparse's values are slices of the head).
    pub(crate) fn each_kept(&self, mut f: impl FnMut(&[u8], &[u8], Option<usize>)) {
        for (i, h) in self.headers.iter().enumerate() {
            if passes(self.plan.skip, i) {
                let at = offset_in(&self.buf[..self.len], h.value);
                f(h.name.as_bytes(), h.value, at);
            }
        }
    }

    /// Whether this is an interim answer to relay (`103 Early Hints`).
    pub(crate) fn is_interim(&self) -> bool {
        self.plan.kind == Kind::Interim
    }

    /// Appends the status line and headers for the client to `out`,
    /// without the final empty line (the caller may add its own headers).
    pub(crate) fn write_client(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(itoa::Buffer::new().format(self.status).as_bytes());
        out.push(b' ');
        if fields::is_field_value(self.reason.as_bytes()) {
            out.extend_from_slice(self.reason.as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        copy_lines(self.buf, self.headers, self.plan.skip, out);
        self.plan.write_additions(None, out);
    }
}

#[cfg(test)]
mod tests;
