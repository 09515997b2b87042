//! HTTP/1.1 message heads on the fast path: parsing a client request head
//! and an instance's response head (httparse, no header map), and writing
//! the rewritten head for the next hop straight from the received bytes.
//!
//! The rewrite follows the same rules as [`crate::proxy::headers`]:
//! hop-by-hop headers (`Connection` and what it lists, `Keep-Alive`,
//! `Proxy-Connection`, `TE`, `Trailer`, `Upgrade`) are dropped, the
//! request gains `X-Forwarded-For` (joined with any incoming chain),
//! `X-Forwarded-Proto` and `X-Forwarded-Host` when absent, and `Via`.
//! `Transfer-Encoding: chunked` stays, since chunked bodies pass through
//! unchanged.

use std::mem::MaybeUninit;

use httparse::Header;

/// Most header lines accepted in one head.
pub(crate) const MAX_HEADERS: usize = 128;

/// Storage for one head's parsed header lines.
pub(crate) type HeaderSlots<'b> = [MaybeUninit<Header<'b>>; MAX_HEADERS];

/// Fresh, uninitialised header storage (no zeroing cost).
pub(crate) fn header_slots<'b>() -> HeaderSlots<'b> {
    [const { MaybeUninit::uninit() }; MAX_HEADERS]
}

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body.
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Until the connection closes (responses only).
    UntilClose,
}

/// Why a head cannot be taken on the fast path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeadError {
    /// Malformed: answered with 400 (requests) or 502 (responses).
    Invalid(&'static str),
    /// More header lines than [`MAX_HEADERS`]: 431 for requests.
    TooManyHeaders,
    /// Valid, but served by the general (hyper) path: HTTP/1.0,
    /// upgrades, `Expect`, non-origin-form targets, other codings.
    Fallback(&'static str),
}

/// What the fast path needs to know about the headers it copies.
#[derive(Debug, Default, Clone, Copy)]
struct Seen {
    /// `Connection` lists header names to drop.
    listed: bool,
    xff: bool,
    xfp: bool,
    xfh: bool,
}

/// A parsed client request head.
#[derive(Debug)]
pub(crate) struct RequestHead<'h, 'b> {
    pub method: &'b str,
    /// The request target as received (origin-form).
    pub target: &'b str,
    /// The `Host` header.
    pub host: &'b str,
    /// Length of the head in the buffer, final CRLF included.
    pub len: usize,
    pub body: Framing,
    /// The client asked to close after this exchange.
    pub close: bool,
    buf: &'b [u8],
    headers: &'h [Header<'b>],
    /// Header lines not forwarded, by index.
    skip: u128,
    seen: Seen,
}

/// Header names the rewrite treats specially, matched case-insensitively.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Name {
    Other,
    Host,
    ContentLength,
    TransferEncoding,
    Connection,
    /// Dropped on the way: `Keep-Alive`, `Proxy-Connection`, `TE`, `Trailer`.
    Hop,
    Upgrade,
    Expect,
    Xff,
    Xfp,
    Xfh,
}

#[inline]
fn classify(name: &str) -> Name {
    let is = |n: &str| name.eq_ignore_ascii_case(n);
    match name.len() {
        2 if is("te") => Name::Hop,
        4 if is("host") => Name::Host,
        6 if is("expect") => Name::Expect,
        7 if is("upgrade") => Name::Upgrade,
        7 if is("trailer") => Name::Hop,
        10 if is("connection") => Name::Connection,
        10 if is("keep-alive") => Name::Hop,
        14 if is("content-length") => Name::ContentLength,
        15 if is("x-forwarded-for") => Name::Xff,
        16 if is("proxy-connection") => Name::Hop,
        16 if is("x-forwarded-host") => Name::Xfh,
        17 if is("transfer-encoding") => Name::TransferEncoding,
        17 if is("x-forwarded-proto") => Name::Xfp,
        _ => Name::Other,
    }
}

/// The comma-separated tokens of a header value, trimmed.
fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(|t| t.trim_ascii())
        .filter(|t| !t.is_empty())
}

/// Reads a `Connection` value: whether it says `close`, `keep-alive`, and
/// whether it lists other header names.
fn connection_tokens(value: &[u8]) -> (bool, bool, bool) {
    let (mut close, mut keep_alive, mut listed) = (false, false, false);
    for t in tokens(value) {
        if t.eq_ignore_ascii_case(b"close") {
            close = true;
        } else if t.eq_ignore_ascii_case(b"keep-alive") {
            keep_alive = true;
        } else if !t.eq_ignore_ascii_case(b"upgrade") {
            listed = true;
        }
    }
    (close, keep_alive, listed)
}

/// The header lines (by index) that a `Connection` header names.
fn listed_mask(headers: &[Header<'_>]) -> u128 {
    let listed = |name: &str| {
        headers
            .iter()
            .filter(|h| classify(h.name) == Name::Connection)
            .flat_map(|h| tokens(h.value))
            .any(|t| t.eq_ignore_ascii_case(name.as_bytes()))
    };
    headers
        .iter()
        .enumerate()
        .filter(|(_, h)| listed(h.name))
        .fold(0, |mask, (i, _)| mask | 1 << i)
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
        if skip & (1 << i) != 0 {
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

fn content_length(value: &[u8], prev: Option<u64>) -> Result<u64, &'static str> {
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return Err("bad Content-Length");
    }
    let n = value
        .iter()
        .fold(0u64, |n, &d| n * 10 + u64::from(d - b'0'));
    match prev {
        Some(p) if p != n => Err("conflicting Content-Length headers"),
        _ => Ok(n),
    }
}

/// Whether `value` (a `Transfer-Encoding`) ends with `chunked`.
fn ends_chunked(value: &[u8]) -> bool {
    tokens(value)
        .last()
        .is_some_and(|t| t.eq_ignore_ascii_case(b"chunked"))
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n";

/// Parses a request head at the start of `buf`. `Ok(None)`: incomplete.
pub(crate) fn parse_request<'h, 'b>(
    buf: &'b [u8],
    slots: &'h mut HeaderSlots<'b>,
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
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooManyHeaders),
        Err(httparse::Error::Version) => return Err(HeadError::Fallback("HTTP version")),
        Err(_) => return Err(HeadError::Invalid("malformed request head")),
    };
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Err(HeadError::Invalid("malformed request head"));
    };
    if version != 1 {
        return Err(HeadError::Fallback("HTTP/1.0"));
    }
    if !target.starts_with('/') {
        return Err(HeadError::Fallback("request target not in origin form"));
    }
    if method == "CONNECT" {
        return Err(HeadError::Fallback("CONNECT"));
    }
    let headers: &'h [Header<'b>] = req.headers;
    let mut host = None;
    let mut length = None;
    let mut chunked = false;
    let mut close = false;
    let mut seen = Seen::default();
    let mut skip = 0u128;
    for (i, h) in headers.iter().enumerate() {
        let name = classify(h.name);
        if matches!(
            name,
            Name::Connection | Name::Hop | Name::Upgrade | Name::Expect | Name::Xff
        ) {
            skip |= 1 << i;
        }
        match name {
            Name::Other | Name::Hop => {}
            Name::Host => {
                if host.is_some() {
                    return Err(HeadError::Invalid("more than one Host header"));
                }
                host = Some(
                    std::str::from_utf8(h.value)
                        .ok()
                        .filter(|v| !v.is_empty())
                        .ok_or(HeadError::Invalid("unusable Host header"))?,
                );
            }
            Name::ContentLength => {
                length = Some(content_length(h.value, length).map_err(HeadError::Invalid)?);
            }
            Name::TransferEncoding => {
                if chunked || !h.value.eq_ignore_ascii_case(b"chunked") {
                    return Err(HeadError::Fallback("transfer coding other than chunked"));
                }
                chunked = true;
            }
            Name::Connection => {
                let (c, _, listed) = connection_tokens(h.value);
                close |= c;
                seen.listed |= listed;
            }
            Name::Upgrade => return Err(HeadError::Fallback("upgrade")),
            Name::Expect => return Err(HeadError::Fallback("Expect")),
            Name::Xff => seen.xff = true,
            Name::Xfp => seen.xfp = true,
            Name::Xfh => seen.xfh = true,
        }
    }
    let Some(host) = host else {
        return Err(HeadError::Invalid("missing Host header"));
    };
    if seen.listed {
        skip |= listed_mask(headers);
    }
    let body = match (chunked, length) {
        (true, Some(_)) => return Err(HeadError::Fallback("both Content-Length and chunked")),
        (true, None) => Framing::Chunked,
        (false, Some(0) | None) => Framing::Empty,
        (false, Some(n)) => Framing::Length(n),
    };
    Ok(Some(RequestHead {
        method,
        target,
        host,
        len,
        body,
        close,
        buf,
        headers,
        skip,
        seen,
    }))
}

/// What the proxy adds to a forwarded request head.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Added<'a> {
    pub client_ip: &'a [u8],
    pub via: &'a [u8],
}

impl RequestHead<'_, '_> {
    /// The path part of the target (no query).
    pub(crate) fn path(&self) -> &str {
        self.target.split_once('?').map_or(self.target, |(p, _)| p)
    }

    /// Whether the exchange may be repeated on another instance after it
    /// was sent: idempotent method (RFC 9110 section 9.2.2), no body.
    pub(crate) fn resendable(&self) -> bool {
        self.body == Framing::Empty && crate::proxy::attempt::is_idempotent(self.method)
    }

    /// Appends the head to send to the instance, with request target
    /// `target`, to `out`.
    pub(crate) fn write_upstream(&self, target: &str, added: Added<'_>, out: &mut Vec<u8>) {
        out.extend_from_slice(self.method.as_bytes());
        out.push(b' ');
        out.extend_from_slice(target.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        copy_lines(self.buf, self.headers, self.skip, out);
        out.extend_from_slice(b"x-forwarded-for: ");
        if self.seen.xff {
            for h in self
                .headers
                .iter()
                .filter(|h| classify(h.name) == Name::Xff)
            {
                out.extend_from_slice(h.value);
                out.extend_from_slice(b", ");
            }
        }
        out.extend_from_slice(added.client_ip);
        out.extend_from_slice(b"\r\n");
        if !self.seen.xfp {
            out.extend_from_slice(b"x-forwarded-proto: http\r\n");
        }
        if !self.seen.xfh {
            line(out, b"x-forwarded-host", self.host.as_bytes());
        }
        line(out, b"via", added.via);
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

/// A parsed response head from an instance.
#[derive(Debug)]
pub(crate) struct ResponseHead<'h, 'b> {
    pub status: u16,
    reason: &'b str,
    /// Length of the head in the buffer.
    pub len: usize,
    pub body: Framing,
    /// The connection may carry another request after this response.
    pub reusable: bool,
    buf: &'b [u8],
    headers: &'h [Header<'b>],
    /// Header lines not relayed, by index.
    skip: u128,
}

/// Parses a response head at the start of `buf`, for a request whose
/// method was HEAD when `head_request`. `Ok(None)`: incomplete.
pub(crate) fn parse_response<'h, 'b>(
    buf: &'b [u8],
    slots: &'h mut HeaderSlots<'b>,
    head_request: bool,
) -> Result<Option<ResponseHead<'h, 'b>>, HeadError> {
    let mut resp = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, buf, slots)
    {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooManyHeaders),
        Err(_) => return Err(HeadError::Invalid("malformed response head")),
    };
    let (Some(version), Some(status)) = (resp.version, resp.code) else {
        return Err(HeadError::Invalid("malformed response head"));
    };
    let headers: &'h [Header<'b>] = resp.headers;
    let mut length = None;
    let mut chunked = false;
    let mut coded = false;
    let (mut close, mut keep_alive, mut listed) = (false, false, false);
    let (mut skip, mut lengths, mut codings) = (0u128, 0u128, 0u128);
    for (i, h) in headers.iter().enumerate() {
        match classify(h.name) {
            Name::ContentLength => {
                length = Some(content_length(h.value, length).map_err(HeadError::Invalid)?);
                lengths |= 1 << i;
            }
            Name::TransferEncoding => {
                coded = true;
                chunked = ends_chunked(h.value);
                codings |= 1 << i;
            }
            Name::Connection => {
                let (c, k, l) = connection_tokens(h.value);
                close |= c;
                keep_alive |= k;
                listed |= l;
                skip |= 1 << i;
            }
            Name::Hop | Name::Upgrade => skip |= 1 << i,
            _ => {}
        }
    }
    if listed {
        skip |= listed_mask(headers);
    }
    let body = if head_request || (100..200).contains(&status) || status == 204 || status == 304 {
        Framing::Empty
    } else if coded {
        if chunked {
            Framing::Chunked
        } else {
            Framing::UntilClose
        }
    } else {
        match length {
            Some(0) => Framing::Empty,
            Some(n) => Framing::Length(n),
            None => Framing::UntilClose,
        }
    };
    // A chunked body passes through as it is, with its coding header and
    // without a length; a body read until close keeps its coding header
    // (the client reads it the same way); a bodiless answer keeps its
    // Content-Length (HEAD, 304) but not a coding.
    skip |= match body {
        Framing::Chunked => lengths,
        Framing::UntilClose => 0,
        Framing::Empty | Framing::Length(_) => codings,
    };
    let persistent = if version == 1 {
        !close
    } else {
        keep_alive && !close
    };
    Ok(Some(ResponseHead {
        status,
        reason: resp.reason.unwrap_or(""),
        len,
        body,
        reusable: persistent && body != Framing::UntilClose,
        buf,
        headers,
        skip,
    }))
}

impl ResponseHead<'_, '_> {
    /// Appends the status line and headers for the client to `out`,
    /// without the final empty line (the caller may add its own headers).
    pub(crate) fn write_client(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"HTTP/1.1 ");
        let mut code = [0u8; 3];
        code[0] = b'0' + (self.status / 100 % 10) as u8;
        code[1] = b'0' + (self.status / 10 % 10) as u8;
        code[2] = b'0' + (self.status % 10) as u8;
        out.extend_from_slice(&code);
        out.push(b' ');
        out.extend_from_slice(self.reason.as_bytes());
        out.extend_from_slice(b"\r\n");
        copy_lines(self.buf, self.headers, self.skip, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADDED: Added<'static> = Added {
        client_ip: b"10.0.0.9",
        via: b"1.1 wayfinder",
    };

    fn upstream_head(raw: &str, target: &str) -> String {
        let mut slots = header_slots();
        let head = parse_request(raw.as_bytes(), &mut slots).unwrap().unwrap();
        assert_eq!(head.len, raw.len());
        let mut out = Vec::new();
        head.write_upstream(target, ADDED, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn rewrites_a_request_head() {
        let raw = "GET /api/x?q=1 HTTP/1.1\r\nHost: shop.example\r\nConnection: keep-alive, X-Secret\r\nX-Secret: s\r\nKeep-Alive: 5\r\nTE: trailers\r\nX-Forwarded-For: 1.2.3.4\r\nAccept: */*\r\n\r\n";
        assert_eq!(
            upstream_head(raw, "/x?q=1"),
            "GET /x?q=1 HTTP/1.1\r\nHost: shop.example\r\nAccept: */*\r\n\
             x-forwarded-for: 1.2.3.4, 10.0.0.9\r\nx-forwarded-proto: http\r\n\
             x-forwarded-host: shop.example\r\nvia: 1.1 wayfinder\r\n\r\n"
        );
        let raw = "POST /p HTTP/1.1\r\nhost: a\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: b\r\ntransfer-encoding: chunked\r\n\r\n";
        assert_eq!(
            upstream_head(raw, "/p"),
            "POST /p HTTP/1.1\r\nhost: a\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: b\r\n\
             transfer-encoding: chunked\r\nx-forwarded-for: 10.0.0.9\r\nvia: 1.1 wayfinder\r\n\r\n"
        );
    }

    #[test]
    fn forwarded_lines_always_end_in_crlf() {
        let raw = "GET / HTTP/1.1\nHost: h\nA: b  \r\nB: c\r\nC:d\r\nTE: x\r\nE: f\n\n";
        assert_eq!(
            upstream_head(raw, "/"),
            "GET / HTTP/1.1\r\nHost: h\r\nA: b\r\nB: c\r\nC:d\r\nE: f\r\n\
             x-forwarded-for: 10.0.0.9\r\nx-forwarded-proto: http\r\n\
             x-forwarded-host: h\r\nvia: 1.1 wayfinder\r\n\r\n"
        );
    }

    #[test]
    fn reads_request_framing_and_intent() {
        let mut slots = header_slots();
        let raw =
            b"POST /a?b HTTP/1.1\r\nHost: h\r\nContent-Length: 12\r\nConnection: close\r\n\r\n";
        let head = parse_request(raw, &mut slots).unwrap().unwrap();
        assert_eq!(
            (head.method, head.path(), head.host, head.body, head.close),
            ("POST", "/a", "h", Framing::Length(12), true)
        );
        assert!(!head.resendable());
        let mut slots = header_slots();
        let head = parse_request(
            b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n",
            &mut slots,
        )
        .unwrap()
        .unwrap();
        assert_eq!(head.body, Framing::Empty);
        assert!(head.resendable());
    }

    #[test]
    fn sorts_requests_into_answers_and_fallbacks() {
        let cases: &[(&str, Result<(), HeadError>)] = &[
            ("GET / HTTP/1.1\r\nHost: h\r\n", Ok(())),
            (
                "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
                Err(HeadError::Fallback("HTTP/2 prior knowledge")),
            ),
            (
                "GET / HTTP/1.0\r\n\r\n",
                Err(HeadError::Fallback("HTTP/1.0")),
            ),
            (
                "GET http://h/ HTTP/1.1\r\nHost: h\r\n\r\n",
                Err(HeadError::Fallback("request target not in origin form")),
            ),
            (
                "GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
                Err(HeadError::Fallback("upgrade")),
            ),
            (
                "PUT / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
                Err(HeadError::Fallback("Expect")),
            ),
            (
                "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                Err(HeadError::Fallback("transfer coding other than chunked")),
            ),
            (
                "GET / HTTP/1.1\r\n\r\n",
                Err(HeadError::Invalid("missing Host header")),
            ),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
                Err(HeadError::Invalid("more than one Host header")),
            ),
            (
                "GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                Err(HeadError::Invalid("conflicting Content-Length headers")),
            ),
            (
                "GET / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n",
                Err(HeadError::Invalid("bad Content-Length")),
            ),
            (
                "GET /\x01 HTTP/1.1\r\nHost: h\r\n\r\n",
                Err(HeadError::Invalid("malformed request head")),
            ),
        ];
        for (raw, want) in cases {
            let mut slots = header_slots();
            let got = parse_request(raw.as_bytes(), &mut slots).map(|_| ());
            assert_eq!(&got, want, "{raw:?}");
        }
        let mut many = String::from("GET / HTTP/1.1\r\nHost: h\r\n");
        for i in 0..MAX_HEADERS {
            many.push_str(&format!("x-{i}: v\r\n"));
        }
        many.push_str("\r\n");
        let mut slots = header_slots();
        assert_eq!(
            parse_request(many.as_bytes(), &mut slots).map(|_| ()),
            Err(HeadError::TooManyHeaders)
        );
    }

    fn client_head(raw: &str, head_request: bool) -> (String, Framing, bool) {
        let mut slots = header_slots();
        let head = parse_response(raw.as_bytes(), &mut slots, head_request)
            .unwrap()
            .unwrap();
        let mut out = Vec::new();
        head.write_client(&mut out);
        (String::from_utf8(out).unwrap(), head.body, head.reusable)
    }

    #[test]
    fn rewrites_response_heads_and_reads_their_framing() {
        let (out, body, reusable) = client_head(
            "HTTP/1.1 200 OK\r\nServer: b\r\nContent-Length: 5\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\r\n",
            false,
        );
        assert_eq!(out, "HTTP/1.1 200 OK\r\nServer: b\r\nContent-Length: 5\r\n");
        assert_eq!((body, reusable), (Framing::Length(5), true));

        let (out, body, reusable) = client_head(
            "HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\nConnection: close, X-A\r\nX-A: 1\r\n\r\n",
            false,
        );
        assert_eq!(
            out,
            "HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n"
        );
        assert_eq!((body, reusable), (Framing::Chunked, false));

        let (out, body, reusable) = client_head("HTTP/1.0 200 OK\r\nX: y\r\n\r\n", false);
        assert_eq!(out, "HTTP/1.1 200 OK\r\nX: y\r\n");
        assert_eq!((body, reusable), (Framing::UntilClose, false));

        let (_, body, reusable) = client_head(
            "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 3\r\n\r\n",
            false,
        );
        assert_eq!((body, reusable), (Framing::Length(3), true));

        for (raw, head) in [
            ("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true),
            ("HTTP/1.1 204 No Content\r\n\r\n", false),
            (
                "HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n",
                false,
            ),
            ("HTTP/1.1 100 Continue\r\n\r\n", false),
        ] {
            assert_eq!(client_head(raw, head).1, Framing::Empty, "{raw:?}");
        }
    }

    #[test]
    fn rejects_malformed_responses() {
        for raw in [
            "HTTP/1.1 2000 OK\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "HTTP/3 200 OK\r\n\r\n",
        ] {
            let mut slots = header_slots();
            assert!(
                matches!(
                    parse_response(raw.as_bytes(), &mut slots, false),
                    Err(HeadError::Invalid(_))
                ),
                "{raw:?}"
            );
        }
    }
}
