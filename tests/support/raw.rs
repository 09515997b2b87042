//! Raw sockets for tests that must see or script exact bytes: responses
//! read off a socket and parsed strictly ([`read_response`],
//! [`all_responses`]), and an instance that answers with scripted bytes
//! ([`RawBackend`]).

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

// === responses read off a raw socket ===

/// One response as it came over the wire.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    /// Status line and header lines, without the final empty line.
    pub head: String,
    /// Header lines, in order.
    pub headers: Vec<(String, String)>,
    /// The body bytes as sent (a chunked body keeps its coding).
    pub body: Vec<u8>,
}

impl Resp {
    /// The values of header `name` (any case).
    pub fn values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    pub fn says_close(&self) -> bool {
        self.values("connection")
            .iter()
            .any(|v| v.eq_ignore_ascii_case("close"))
    }
}

/// Where a chunked body at the start of `buf` ends (trailers included),
/// or `None` when it is not complete yet.
pub fn chunked_end(buf: &[u8]) -> Result<Option<usize>, String> {
    let mut pos = 0;
    loop {
        let Some(eol) = find(&buf[pos..], b"\r\n") else {
            return Ok(None);
        };
        let line = std::str::from_utf8(&buf[pos..pos + eol]).map_err(|e| e.to_string())?;
        let digits = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(digits, 16)
            .map_err(|e| format!("bad chunk size line {line:?}: {e}"))?;
        pos += eol + 2;
        if size == 0 {
            // Trailer lines, then the empty line.
            loop {
                let Some(eol) = find(&buf[pos..], b"\r\n") else {
                    return Ok(None);
                };
                pos += eol + 2;
                if eol == 0 {
                    return Ok(Some(pos));
                }
            }
        }
        if buf.len() < pos + size + 2 {
            return Ok(None);
        }
        if &buf[pos + size..pos + size + 2] != b"\r\n" {
            return Err("chunk data not followed by CRLF".to_owned());
        }
        pos += size + 2;
    }
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Parses one response at the start of `buf`: `Ok(Some((response,
/// length)))`, or `Ok(None)` when more bytes are needed. `eof`: the peer
/// has closed, so a body framed by the close is complete.
pub fn parse_response(
    buf: &[u8],
    head_request: bool,
    eof: bool,
) -> Result<Option<(Resp, usize)>, String> {
    let mut slots = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Response::new(&mut slots);
    let head_len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("bad response head ({e}): {:?}", lossy(buf))),
    };
    let status = parsed.code.unwrap_or(0);
    let headers: Vec<(String, String)> = parsed
        .headers
        .iter()
        .map(|h| (h.name.to_owned(), lossy(h.value)))
        .collect();
    let head = lossy(&buf[..head_len - 4]);
    let value = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let rest = &buf[head_len..];
    let body_len = if head_request || status < 200 || status == 204 || status == 304 {
        0
    } else if value("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        match chunked_end(rest)? {
            Some(n) => n,
            None => return Ok(None),
        }
    } else if let Some(len) = value("content-length") {
        let len: usize = len.parse().map_err(|e| format!("content-length: {e}"))?;
        if rest.len() < len {
            return Ok(None);
        }
        len
    } else if eof {
        rest.len()
    } else {
        return Ok(None);
    };
    let resp = Resp {
        status,
        head,
        headers,
        body: rest[..body_len].to_vec(),
    };
    Ok(Some((resp, head_len + body_len)))
}

pub fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Reads the next response from `stream`, `buf` holding bytes already read
/// (what follows the response stays in it).
pub async fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>, head_request: bool) -> Resp {
    let mut eof = false;
    loop {
        match parse_response(buf, head_request, eof) {
            Ok(Some((resp, len))) => {
                buf.drain(..len);
                return resp;
            }
            Ok(None) if eof => panic!("connection closed mid-response: {:?}", lossy(buf)),
            Ok(None) => {}
            Err(e) => panic!("{e}"),
        }
        let mut chunk = [0u8; 16 * 1024];
        match stream.read(&mut chunk).await {
            Ok(0) => eof = true,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => panic!("reading a response: {e} (have {:?})", lossy(buf)),
        }
    }
}

/// Reads until the peer closes. Returns what arrived and whether the close
/// was clean (EOF) rather than a reset.
pub async fn read_to_close(stream: &mut TcpStream, mut buf: Vec<u8>) -> (Vec<u8>, io::Result<()>) {
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match stream.read(&mut chunk).await {
            Ok(0) => return (buf, Ok(())),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return (buf, Err(e)),
        }
    }
}

/// Every response in `buf`, which holds a whole connection's worth of
/// bytes (the peer has closed).
/// Writes `request` (the last on the connection: it asks to close), reads
/// until the proxy closes cleanly, and parses every response after `buf`.
pub async fn send_last(
    stream: &mut TcpStream,
    buf: Vec<u8>,
    request: &[u8],
) -> (Vec<u8>, Vec<Resp>) {
    stream.write_all(request).await.unwrap();
    let (bytes, closed) = read_to_close(stream, buf).await;
    closed.unwrap();
    let responses = all_responses(&bytes);
    (bytes, responses)
}

pub fn all_responses(mut buf: &[u8]) -> Vec<Resp> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        match parse_response(buf, false, true) {
            Ok(Some((resp, len))) => {
                out.push(resp);
                buf = &buf[len..];
            }
            Ok(None) => panic!("truncated response: {:?}", lossy(buf)),
            Err(e) => panic!("{e}"),
        }
    }
    out
}

/// Sends `head`, then each of `pieces` after `gap`, and reads the
/// answer. Says how the exchange ended when no answer came.
pub async fn slow_exchange(
    addr: SocketAddr,
    head: &[u8],
    pieces: &[&[u8]],
    gap: Duration,
) -> Result<Resp, String> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    stream.write_all(head).await.unwrap();
    for (i, piece) in pieces.iter().enumerate() {
        tokio::time::sleep(gap).await;
        if let Err(e) = stream.write_all(piece).await {
            return Err(format!(
                "writing body piece {i} after {:?}: {e}",
                gap * (i as u32 + 1)
            ));
        }
    }
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Ok(Some((resp, _))) = parse_response(&buf, false, false) {
            return Ok(resp);
        }
        match stream.read(&mut chunk).await {
            Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            Ok(_) => return Err(format!("closed with no answer; got {:?}", lossy(&buf))),
            Err(e) => return Err(format!("{e} with no answer; got {:?}", lossy(&buf))),
        }
    }
}

/// `bytes` as text without its `date:` line (the proxy dates its own
/// answers), to compare with [`error_response`].
pub fn undated(bytes: &[u8]) -> String {
    let text = lossy(bytes);
    match text.find("\r\ndate: ") {
        Some(i) => {
            let end = i + 2 + text[i + 2..].find("\r\n").map_or(0, |e| e + 2);
            format!("{}{}", &text[..i + 2], &text[end..])
        }
        None => text,
    }
}

/// The exact error response the proxy writes for `status` and `body`
/// (with [`undated`] applied).
pub fn error_response(status: &str, body: &str, close: bool) -> String {
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\n{}\r\n{body}",
        body.len(),
        if close { "connection: close\r\n" } else { "" }
    )
}

// === impl RawBackend ===

/// What a [`RawBackend`] does after writing an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    KeepAlive,
    Close,
}

pub type Respond = dyn Fn(&str) -> (Vec<u8>, After) + Send + Sync;

/// An instance that writes scripted bytes: for every request head it
/// reads (and the `Content-Length` body behind it), it writes what
/// `respond` gives for the head, then keeps the connection or closes it.
/// With `idle_close`, a connection idle that long between requests is
/// closed. Everything it started stops when it is dropped.
pub struct RawBackend {
    /// Where it listens.
    pub addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    closed: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl RawBackend {
    pub async fn start(
        idle_close: Option<Duration>,
        respond: impl Fn(&str) -> (Vec<u8>, After) + Send + Sync + 'static,
    ) -> RawBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let accepted = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let respond: Arc<Respond> = Arc::new(respond);
        let task = tokio::spawn({
            let (accepted, requests, closed) = (accepted.clone(), requests.clone(), closed.clone());
            async move {
                // Dropped with this task when the backend is: aborts every
                // connection.
                let mut conns = JoinSet::new();
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        continue;
                    };
                    accepted.fetch_add(1, SeqCst);
                    while conns.try_join_next().is_some() {}
                    let conn = serve_raw(stream, idle_close, respond.clone(), requests.clone());
                    let closed = closed.clone();
                    conns.spawn(async move {
                        conn.await;
                        closed.fetch_add(1, SeqCst);
                    });
                }
            }
        });
        RawBackend {
            addr,
            accepted,
            requests,
            closed,
            task,
        }
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(SeqCst)
    }

    pub fn requests(&self) -> usize {
        self.requests.load(SeqCst)
    }

    /// Connections it has closed (or that closed) so far.
    pub fn closed(&self) -> usize {
        self.closed.load(SeqCst)
    }
}

impl Drop for RawBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn serve_raw(
    mut stream: TcpStream,
    idle_close: Option<Duration>,
    respond: Arc<Respond>,
    requests: Arc<AtomicUsize>,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let head_end = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i + 4;
            }
            let read = stream.read(&mut chunk);
            let read = match idle_close {
                Some(idle) if buf.is_empty() => match tokio::time::timeout(idle, read).await {
                    Ok(r) => r,
                    // Idle too long: close (cleanly, nothing is unread).
                    Err(_) => return,
                },
                _ => read.await,
            };
            match read {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = lossy(&buf[..head_end]);
        let body_len = head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(n, _)| n.trim().eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        while buf.len() < head_end + body_len {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..head_end + body_len);
        requests.fetch_add(1, SeqCst);
        let (answer, after) = respond(&head);
        if stream.write_all(&answer).await.is_err() {
            return;
        }
        if after == After::Close {
            let _ = stream.shutdown().await;
            return;
        }
    }
}

// === a strict reference parser ===
//
// What the recording backend and the differential client read messages
// with: httparse for the head, RFC 9112 section 6.3 for the body length,
// and a strict chunked decoder. Stricter than a server needs to be, on
// purpose: anything two parsers could read differently (bare CR or LF,
// obs-fold, control characters, repeated `Content-Length`, both framing
// fields, a non-ASCII request target, chunk sizes or extensions outside
// the grammar, malformed trailer lines) is refused with a reason, so what
// the proxy forwards or answers is either unambiguous or flagged.

/// A header or trailer line: the name in lower case, the value as
/// received (httparse trims the white space around it).
pub type Field = (String, Vec<u8>);

/// How a message body was delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body by rule (HEAD, 1xx, 204, 304) or none announced.
    None,
    /// `Content-Length`.
    Length,
    /// Chunked transfer coding.
    Chunked,
    /// Until the connection closed.
    Close,
}

/// A request as the strict parser read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedRequest {
    pub method: String,
    pub target: String,
    /// The minor version (`1` for HTTP/1.1).
    pub minor: u8,
    /// Header lines in order.
    pub headers: Vec<Field>,
    pub framing: Framing,
    /// The body, decoded.
    pub body: Vec<u8>,
    /// The trailer lines of a chunked body, in order.
    pub trailers: Vec<Field>,
}

impl ParsedRequest {
    /// The values of header `name` (lower case).
    pub fn values(&self, name: &str) -> Vec<&[u8]> {
        values(&self.headers, name)
    }
}

/// A response as the strict parser read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedResponse {
    pub status: u16,
    pub reason: Vec<u8>,
    pub minor: u8,
    pub headers: Vec<Field>,
    pub framing: Framing,
    /// The body, decoded.
    pub body: Vec<u8>,
    pub trailers: Vec<Field>,
}

impl ParsedResponse {
    /// The values of header `name` (lower case).
    pub fn values(&self, name: &str) -> Vec<&[u8]> {
        values(&self.headers, name)
    }
}

fn values<'a>(fields: &'a [Field], name: &str) -> Vec<&'a [u8]> {
    fields
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| v.as_slice())
        .collect()
}

/// Most header lines the strict parser takes.
const STRICT_MAX_HEADERS: usize = 256;

/// Where the head at the start of `buf` ends (after its empty line), or
/// `None` when it is not complete yet. Every line must end in CRLF: a CR
/// not followed by LF, or an LF not preceded by CR, is refused, and so is
/// an empty line before the start line.
pub fn strict_head_len(buf: &[u8]) -> Result<Option<usize>, String> {
    if buf.starts_with(b"\r\n") {
        return Err("empty line before the start line".to_owned());
    }
    let mut i = 0;
    while i < buf.len() {
        match buf[i] {
            b'\r' => match buf.get(i + 1) {
                None => return Ok(None),
                Some(b'\n') => {
                    if buf[i + 2..].starts_with(b"\r\n") {
                        return Ok(Some(i + 4));
                    }
                    i += 2;
                }
                Some(_) => return Err("bare CR in the head".to_owned()),
            },
            b'\n' => return Err("bare LF in the head".to_owned()),
            _ => i += 1,
        }
    }
    Ok(None)
}

/// The header lines of a parsed head, checked: token names (httparse),
/// values without control characters other than HTAB.
fn strict_fields(headers: &[httparse::Header<'_>]) -> Result<Vec<Field>, String> {
    headers
        .iter()
        .map(|h| {
            if let Some(b) = h
                .value
                .iter()
                .find(|&&b| b != b'\t' && (b < 0x20 || b == 0x7f))
            {
                return Err(format!("control byte {b:#04x} in header {:?}", h.name));
            }
            Ok((h.name.to_ascii_lowercase(), h.value.to_vec()))
        })
        .collect()
}

/// The single `Content-Length` of `fields`, if any: digits only, at most
/// one line.
fn strict_content_length(fields: &[Field]) -> Result<Option<u64>, String> {
    let lines = values(fields, "content-length");
    match lines[..] {
        [] => Ok(None),
        [v] if !v.is_empty() && v.len() <= 18 && v.iter().all(u8::is_ascii_digit) => {
            Ok(Some(std::str::from_utf8(v).unwrap().parse().unwrap()))
        }
        [v] => Err(format!("bad Content-Length {:?}", lossy(v))),
        _ => Err(format!("{} Content-Length lines", lines.len())),
    }
}

/// The transfer codings of `fields`, in order (lower case), or `None`
/// when there is no `Transfer-Encoding` line.
fn strict_codings(fields: &[Field]) -> Result<Option<Vec<String>>, String> {
    let lines = values(fields, "transfer-encoding");
    if lines.is_empty() {
        return Ok(None);
    }
    let mut codings = Vec::new();
    for line in lines {
        for t in line.split(|&b| b == b',') {
            let t = t.trim_ascii();
            if t.is_empty() || !t.iter().all(|&b| is_tchar(b)) {
                return Err(format!("bad Transfer-Encoding {:?}", lossy(line)));
            }
            codings.push(lossy(t).to_ascii_lowercase());
        }
    }
    Ok(Some(codings))
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Parses one request at the start of `buf`: `Ok(Some((request,
/// length)))`, or `Ok(None)` when more bytes are needed.
pub fn strict_request(buf: &[u8]) -> Result<Option<(ParsedRequest, usize)>, String> {
    let Some(head_len) = strict_head_len(buf)? else {
        return Ok(None);
    };
    let mut slots = [httparse::EMPTY_HEADER; STRICT_MAX_HEADERS];
    let mut req = httparse::Request::new(&mut slots);
    match req.parse(&buf[..head_len]) {
        Ok(httparse::Status::Complete(n)) if n == head_len => {}
        Ok(_) => return Err("head not complete where its empty line is".to_owned()),
        Err(e) => return Err(format!("request head: {e}")),
    }
    let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        return Err("request line incomplete".to_owned());
    };
    if let Some(b) = target.bytes().find(|b| !(0x21..=0x7e).contains(b)) {
        return Err(format!("byte {b:#04x} in the request target"));
    }
    let headers = strict_fields(req.headers)?;
    let length = strict_content_length(&headers)?;
    let codings = strict_codings(&headers)?;
    let rest = &buf[head_len..];
    let (framing, body, trailers, body_len) = match (codings, length) {
        (Some(_), Some(_)) => return Err("both Transfer-Encoding and Content-Length".to_owned()),
        (Some(c), None) if c == ["chunked"] => match decode_chunked(rest)? {
            Some((body, trailers, n)) => (Framing::Chunked, body, trailers, n),
            None => return Ok(None),
        },
        (Some(c), None) => return Err(format!("request transfer codings {c:?}")),
        (None, Some(n)) => {
            let n = n as usize;
            if rest.len() < n {
                return Ok(None);
            }
            (Framing::Length, rest[..n].to_vec(), Vec::new(), n)
        }
        (None, None) => (Framing::None, Vec::new(), Vec::new(), 0),
    };
    let request = ParsedRequest {
        method: method.to_owned(),
        target: target.to_owned(),
        minor,
        headers,
        framing,
        body,
        trailers,
    };
    Ok(Some((request, head_len + body_len)))
}

/// Parses one response at the start of `buf` to a request that was a
/// HEAD or not; `eof`: the peer has closed, so a body delimited by the
/// close is complete.
pub fn strict_response(
    buf: &[u8],
    head_request: bool,
    eof: bool,
) -> Result<Option<(ParsedResponse, usize)>, String> {
    let Some(head_len) = strict_head_len(buf)? else {
        return Ok(None);
    };
    let mut slots = [httparse::EMPTY_HEADER; STRICT_MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut slots);
    match resp.parse(&buf[..head_len]) {
        Ok(httparse::Status::Complete(n)) if n == head_len => {}
        Ok(_) => return Err("head not complete where its empty line is".to_owned()),
        Err(e) => return Err(format!("response head: {e}")),
    }
    let (Some(status), Some(minor)) = (resp.code, resp.version) else {
        return Err("status line incomplete".to_owned());
    };
    let reason = resp.reason.unwrap_or("").as_bytes().to_vec();
    let headers = strict_fields(resp.headers)?;
    let length = strict_content_length(&headers)?;
    let codings = strict_codings(&headers)?;
    let rest = &buf[head_len..];
    let no_body = head_request || status < 200 || status == 204 || status == 304;
    let (framing, body, trailers, body_len) = match (codings, length) {
        (Some(_), Some(_)) => return Err("both Transfer-Encoding and Content-Length".to_owned()),
        _ if no_body => (Framing::None, Vec::new(), Vec::new(), 0),
        (Some(c), None) if c.last().is_some_and(|l| l == "chunked") => {
            if c.iter().filter(|c| *c == "chunked").count() > 1 {
                return Err(format!("transfer codings {c:?}"));
            }
            match decode_chunked(rest)? {
                Some((body, trailers, n)) => (Framing::Chunked, body, trailers, n),
                None => return Ok(None),
            }
        }
        (Some(_), None) | (None, None) if eof => {
            (Framing::Close, rest.to_vec(), Vec::new(), rest.len())
        }
        (Some(_), None) | (None, None) => return Ok(None),
        (None, Some(n)) => {
            let n = n as usize;
            if rest.len() < n {
                return Ok(None);
            }
            (Framing::Length, rest[..n].to_vec(), Vec::new(), n)
        }
    };
    let response = ParsedResponse {
        status,
        reason,
        minor,
        headers,
        framing,
        body,
        trailers,
    };
    Ok(Some((response, head_len + body_len)))
}

/// The line starting at `from`: `Ok(Some((end, next)))` with the line
/// being `buf[from..end]` and CRLF at `end`, or `Ok(None)` when its end
/// has not arrived. A bare CR or LF is refused.
fn crlf_line(buf: &[u8], from: usize) -> Result<Option<(usize, usize)>, String> {
    for i in from..buf.len() {
        match buf[i] {
            b'\n' => return Err("bare LF in a chunked body".to_owned()),
            b'\r' => {
                return match buf.get(i + 1) {
                    None => Ok(None),
                    Some(b'\n') => Ok(Some((i, i + 2))),
                    Some(_) => Err("bare CR in a chunked body".to_owned()),
                }
            }
            _ => {}
        }
    }
    Ok(None)
}

/// A chunk-size line: 1 to 16 hex digits, then extensions
/// `*( BWS ";" BWS token [ BWS "=" BWS ( token / quoted-string ) ] )`.
fn chunk_size(line: &[u8]) -> Result<u64, String> {
    let bad = || format!("bad chunk size line {:?}", lossy(line));
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return Err(bad());
    }
    let size = u64::from_str_radix(std::str::from_utf8(&line[..digits]).unwrap(), 16)
        .map_err(|_| bad())?;
    let mut rest = &line[digits..];
    let bws = |r: &mut &[u8]| {
        while let [b' ' | b'\t', tail @ ..] = *r {
            *r = tail;
        }
    };
    let token = |r: &mut &[u8]| {
        let n = r.iter().take_while(|&&b| is_tchar(b)).count();
        *r = &r[n..];
        n > 0
    };
    loop {
        bws(&mut rest);
        match rest {
            [] => return Ok(size),
            [b';', tail @ ..] => rest = tail,
            _ => return Err(bad()),
        }
        bws(&mut rest);
        if !token(&mut rest) {
            return Err(bad());
        }
        let mut look = rest;
        bws(&mut look);
        if let [b'=', tail @ ..] = look {
            rest = tail;
            bws(&mut rest);
            if let [b'"', tail @ ..] = rest {
                rest = tail;
                loop {
                    match rest {
                        [b'"', tail @ ..] => {
                            rest = tail;
                            break;
                        }
                        [b'\\', c, tail @ ..] if *c == b'\t' || *c >= 0x20 && *c != 0x7f => {
                            rest = tail
                        }
                        [c, tail @ ..]
                            if *c == b'\t' || *c >= 0x20 && *c != 0x7f && *c != b'\\' =>
                        {
                            rest = tail
                        }
                        _ => return Err(bad()),
                    }
                }
            } else if !token(&mut rest) {
                return Err(bad());
            }
        }
    }
}

/// A decoded chunked body: its data, its trailer lines, and how many
/// bytes it took.
pub type Decoded = (Vec<u8>, Vec<Field>, usize);

/// Decodes a chunked body at the start of `buf`: `Ok(Some((body,
/// trailers, length)))`, or `Ok(None)` when it has not ended yet.
pub fn decode_chunked(buf: &[u8]) -> Result<Option<Decoded>, String> {
    let mut body = Vec::new();
    let mut pos = 0;
    loop {
        let Some((end, next)) = crlf_line(buf, pos)? else {
            return Ok(None);
        };
        let size = chunk_size(&buf[pos..end])?;
        pos = next;
        if size == 0 {
            break;
        }
        let size = usize::try_from(size).map_err(|_| "chunk too large".to_owned())?;
        if buf.len() < pos.saturating_add(size).saturating_add(2) {
            // Refuse early what cannot be a CRLF after the data.
            if buf.len() > pos + size && buf[pos + size] != b'\r' {
                return Err("chunk data not followed by CRLF".to_owned());
            }
            return Ok(None);
        }
        body.extend_from_slice(&buf[pos..pos + size]);
        if &buf[pos + size..pos + size + 2] != b"\r\n" {
            return Err("chunk data not followed by CRLF".to_owned());
        }
        pos += size + 2;
    }
    let mut trailers = Vec::new();
    loop {
        let Some((end, next)) = crlf_line(buf, pos)? else {
            return Ok(None);
        };
        let line = &buf[pos..end];
        pos = next;
        if line.is_empty() {
            return Ok(Some((body, trailers, pos)));
        }
        let colon = line.iter().position(|&b| b == b':');
        let name = &line[..colon.unwrap_or(0)];
        if colon.is_none() || name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
            return Err(format!("bad trailer line {:?}", lossy(line)));
        }
        let value = line[colon.unwrap_or(0) + 1..].trim_ascii();
        if value.iter().any(|&b| b != b'\t' && (b < 0x20 || b == 0x7f)) {
            return Err(format!("control byte in trailer line {:?}", lossy(line)));
        }
        trailers.push((lossy(name).to_ascii_lowercase(), value.to_vec()));
    }
}

// === impl RecordingBackend ===

/// One step of a [`RecordingBackend`]'s scripted answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Act {
    /// Write these bytes.
    Write(Vec<u8>),
    /// Wait this long.
    Pause(Duration),
    /// Close the connection (a clean FIN; what arrives after is still
    /// recorded until the peer closes).
    Close,
    /// Answer nothing more on this connection; record what arrives until
    /// the peer closes.
    Hold,
    /// From now on echo every byte received (a tunnel after `101`),
    /// recording it, until the peer closes.
    Echo,
}

/// What a [`RecordingBackend`] got, in the order it got it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// A request the strict parser read.
    Request(ParsedRequest),
    /// Bytes the strict parser refused, and why. The backend answered
    /// `400` and closed the connection.
    Refused { why: String, bytes: Vec<u8> },
    /// Bytes that did not make a whole request (the connection closed, or
    /// was still open when the recording was taken).
    Incomplete(Vec<u8>),
}

/// The answer script of a [`RecordingBackend`]: the acts for a request.
pub type Script = dyn Fn(&ParsedRequest) -> Vec<Act> + Send + Sync;

#[derive(Debug, Default)]
struct ConnLog {
    /// Every byte received (tunnel bytes excepted).
    bytes: Vec<u8>,
    /// How many of `bytes` were parsed (or refused).
    parsed: usize,
    /// Bytes received after the connection became a tunnel.
    tunnel: Vec<u8>,
    open: bool,
}

#[derive(Debug, Default)]
struct Log {
    /// What each connection received, with the connection's index.
    received: Vec<(usize, Received)>,
    conns: Vec<ConnLog>,
}

/// One upstream connection as a [`RecordingBackend`] saw it.
#[derive(Debug, Clone)]
pub struct ConnRecord {
    /// Every byte received (tunnel bytes excepted).
    pub bytes: Vec<u8>,
    /// What arrived after the connection became a tunnel.
    pub tunnel: Vec<u8>,
    /// Still open when the recording was taken.
    pub open: bool,
}

/// What a [`RecordingBackend`] received.
#[derive(Debug, Clone)]
pub struct Recording {
    /// Requests, refusals and incomplete requests, in order, each with the
    /// index of its connection.
    pub received: Vec<(usize, Received)>,
    pub conns: Vec<ConnRecord>,
}

/// An instance that records every byte it receives, per connection, reads
/// requests with the strict reference parser ([`strict_request`]) and
/// answers each with the acts its script gives. A request the parser
/// refuses is recorded with the reason and answered `400` (then close).
/// Everything it started stops when it is dropped.
pub struct RecordingBackend {
    /// Where it listens (the first of [`RecordingBackend::addrs`]).
    pub addr: SocketAddr,
    /// Every address it listens on: each is one instance, all recorded in
    /// one log.
    pub addrs: Vec<SocketAddr>,
    log: Arc<std::sync::Mutex<Log>>,
    tasks: Vec<JoinHandle<()>>,
}

impl RecordingBackend {
    pub async fn start(
        script: impl Fn(&ParsedRequest) -> Vec<Act> + Send + Sync + 'static,
    ) -> RecordingBackend {
        RecordingBackend::start_many(1, script).await
    }

    /// `n` instances sharing one script and one log (so that a request
    /// repeated on another instance shows in the same record).
    pub async fn start_many(
        n: usize,
        script: impl Fn(&ParsedRequest) -> Vec<Act> + Send + Sync + 'static,
    ) -> RecordingBackend {
        let log = Arc::new(std::sync::Mutex::new(Log::default()));
        let script: Arc<Script> = Arc::new(script);
        let mut addrs = Vec::new();
        let mut tasks = Vec::new();
        for _ in 0..n {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            addrs.push(listener.local_addr().expect("address"));
            let (log, script) = (log.clone(), script.clone());
            tasks.push(tokio::spawn(async move {
                let mut conns = JoinSet::new();
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        continue;
                    };
                    let id = {
                        let mut log = log.lock().unwrap();
                        log.conns.push(ConnLog {
                            open: true,
                            ..ConnLog::default()
                        });
                        log.conns.len() - 1
                    };
                    while conns.try_join_next().is_some() {}
                    conns.spawn(serve_recorded(stream, id, log.clone(), script.clone()));
                }
            }));
        }
        RecordingBackend {
            addr: addrs[0],
            addrs,
            log,
            tasks,
        }
    }

    /// What it has received so far; bytes of requests not complete yet
    /// show as [`Received::Incomplete`].
    pub fn recording(&self) -> Recording {
        let log = self.log.lock().unwrap();
        let mut received = log.received.clone();
        for (id, c) in log.conns.iter().enumerate() {
            if c.parsed < c.bytes.len() {
                received.push((id, Received::Incomplete(c.bytes[c.parsed..].to_vec())));
            }
        }
        let conns = log
            .conns
            .iter()
            .map(|c| ConnRecord {
                bytes: c.bytes.clone(),
                tunnel: c.tunnel.clone(),
                open: c.open,
            })
            .collect();
        Recording { received, conns }
    }

    /// Requests read whole so far.
    pub fn requests(&self) -> usize {
        let log = self.log.lock().unwrap();
        log.received
            .iter()
            .filter(|(_, r)| matches!(r, Received::Request(_)))
            .count()
    }

    /// Bytes received so far on all connections.
    pub fn bytes_received(&self) -> usize {
        let log = self.log.lock().unwrap();
        log.conns.iter().map(|c| c.bytes.len()).sum()
    }

    /// Whether every connection it accepted has closed.
    pub fn all_closed(&self) -> bool {
        self.log.lock().unwrap().conns.iter().all(|c| !c.open)
    }
}

impl Drop for RecordingBackend {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Marks connection `id` closed when dropped (however its task ends).
struct OpenMark(usize, Arc<std::sync::Mutex<Log>>);

impl Drop for OpenMark {
    fn drop(&mut self) {
        if let Ok(mut log) = self.1.lock() {
            log.conns[self.0].open = false;
        }
    }
}

async fn serve_recorded(
    mut stream: TcpStream,
    id: usize,
    log: Arc<std::sync::Mutex<Log>>,
    script: Arc<Script>,
) {
    let _mark = OpenMark(id, log.clone());
    let mut chunk = vec![0u8; 64 * 1024];
    // Reads into the log; `false` at EOF or error.
    async fn read(
        stream: &mut TcpStream,
        chunk: &mut [u8],
        log: &std::sync::Mutex<Log>,
        id: usize,
        tunnel: bool,
    ) -> Option<Vec<u8>> {
        match stream.read(chunk).await {
            Ok(0) | Err(_) => None,
            Ok(n) => {
                let mut log = log.lock().unwrap();
                let c = &mut log.conns[id];
                if tunnel {
                    c.tunnel.extend_from_slice(&chunk[..n]);
                } else {
                    c.bytes.extend_from_slice(&chunk[..n]);
                }
                Some(chunk[..n].to_vec())
            }
        }
    }
    loop {
        let parsed = {
            let mut log = log.lock().unwrap();
            let c = &mut log.conns[id];
            let pending = &c.bytes[c.parsed..];
            match strict_request(pending) {
                Ok(Some((req, n))) => {
                    c.parsed += n;
                    log.received.push((id, Received::Request(req.clone())));
                    Ok(Some(req))
                }
                Ok(None) => Ok(None),
                Err(why) => {
                    let bytes = pending.to_vec();
                    c.parsed = c.bytes.len();
                    log.received.push((id, Received::Refused { why, bytes }));
                    Err(())
                }
            }
        };
        let req = match parsed {
            Ok(Some(req)) => req,
            Ok(None) => {
                if read(&mut stream, &mut chunk, &log, id, false)
                    .await
                    .is_none()
                {
                    return;
                }
                continue;
            }
            Err(()) => {
                let _ = stream
                    .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 16\r\nConnection: close\r\n\r\nbackend refused\n")
                    .await;
                let _ = stream.shutdown().await;
                // Drain (unrecorded) until the peer closes, so the close is
                // clean rather than a reset.
                let mut sink = [0u8; 4096];
                while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
                return;
            }
        };
        for act in script(&req) {
            match act {
                Act::Write(bytes) => {
                    if stream.write_all(&bytes).await.is_err() {
                        return;
                    }
                }
                Act::Pause(d) => tokio::time::sleep(d).await,
                Act::Close => {
                    let _ = stream.shutdown().await;
                    while read(&mut stream, &mut chunk, &log, id, false)
                        .await
                        .is_some()
                    {}
                    return;
                }
                Act::Hold => {
                    while read(&mut stream, &mut chunk, &log, id, false)
                        .await
                        .is_some()
                    {}
                    return;
                }
                Act::Echo => {
                    // Bytes that came with the request belong to the tunnel.
                    let early = {
                        let mut log = log.lock().unwrap();
                        let c = &mut log.conns[id];
                        let early = c.bytes.split_off(c.parsed);
                        c.tunnel.extend_from_slice(&early);
                        early
                    };
                    if stream.write_all(&early).await.is_err() {
                        return;
                    }
                    while let Some(bytes) = read(&mut stream, &mut chunk, &log, id, true).await {
                        if stream.write_all(&bytes).await.is_err() {
                            return;
                        }
                    }
                    return;
                }
            }
        }
    }
}
