//! Helpers for attack scenarios on raw sockets (`tests/hardening.rs`):
//!
//! - [`Recorder`]: an instance that records, per upstream connection, every
//!   byte the proxy sent, the requests a strict parser (CRLF only; or
//!   LF-tolerant, as RFC 9112 section 2.2 allows) finds in them, parse
//!   errors, and when the proxy closed the connection; it answers with
//!   scripted [`Act`]s. Its reader runs beside its writer, so a close is
//!   seen while an answer is still being prepared;
//! - client side: bounded reads until the proxy closes ([`read_until_closed`],
//!   [`pipeline`]), strict and LF-tolerant response parsing, chunked
//!   decoding, the two paths a request can take ([`Path`]);
//! - [`h2`]: HTTP/2 frames written and read by hand;
//! - [`in_flight`]: the instances' in-flight count from the admin API.
//!
//! Every wait is bounded; everything started stops when its owner is
//! dropped.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};

use super::proxy::Api;
use super::raw::{lossy, parse_response, Resp};
use super::wait_until;

// === messages parsed strictly or leniently ===

/// One request as the [`Recorder`] parsed it.
#[derive(Debug, Clone, Default)]
pub struct Req {
    pub method: String,
    pub target: String,
    pub version: String,
    pub headers: Vec<(String, String)>,
    /// The head as received, final empty line included.
    pub head: Vec<u8>,
    /// The body, decoded when chunked.
    pub body: Vec<u8>,
    pub chunked: bool,
    pub trailers: Vec<(String, String)>,
}

impl Req {
    /// The values of header `name` (any case), in order.
    pub fn values(&self, name: &str) -> Vec<&str> {
        values(&self.headers, name)
    }

    pub fn head_text(&self) -> String {
        lossy(&self.head)
    }
}

fn values<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect()
}

/// The next line at `pos`: `Ok(None)` when it is not complete yet. Strict:
/// CRLF only, no CR inside; lenient: a bare LF also ends a line.
fn line_at(buf: &[u8], pos: usize, lenient: bool) -> Result<Option<(&[u8], usize)>, String> {
    let Some(i) = buf[pos..].iter().position(|&b| b == b'\n') else {
        return Ok(None);
    };
    let end = pos + i;
    let line = if end > pos && buf[end - 1] == b'\r' {
        &buf[pos..end - 1]
    } else if lenient {
        &buf[pos..end]
    } else {
        return Err(format!("bare LF after {:?}", lossy(&buf[pos..end])));
    };
    if !lenient && line.contains(&b'\r') {
        return Err(format!("bare CR in {:?}", lossy(line)));
    }
    Ok(Some((line, end + 1)))
}

type Fields = Vec<(String, String)>;

/// Header (or trailer) lines from `pos` to the empty line: the fields and
/// where the section ends.
fn field_lines(
    buf: &[u8],
    mut pos: usize,
    lenient: bool,
) -> Result<Option<(Fields, usize)>, String> {
    let mut fields = Vec::new();
    loop {
        let Some((line, next)) = line_at(buf, pos, lenient)? else {
            return Ok(None);
        };
        pos = next;
        if line.is_empty() {
            return Ok(Some((fields, pos)));
        }
        if line[0] == b' ' || line[0] == b'\t' {
            return Err(format!("obs-fold line {:?}", lossy(line)));
        }
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or_else(|| format!("field line without colon {:?}", lossy(line)))?;
        let name = &line[..colon];
        if name.is_empty() || name.iter().any(|b| b.is_ascii_whitespace() || *b < 0x21) {
            return Err(format!("bad field name {:?}", lossy(name)));
        }
        let value = line[colon + 1..].trim_ascii();
        if !lenient && value.iter().any(|&b| b < 0x20 && b != b'\t' || b == 0x7f) {
            return Err(format!("control byte in field value {:?}", lossy(value)));
        }
        fields.push((lossy(name), lossy(value)));
    }
}

/// A chunked body from `pos`: the data, the trailers and where it ends.
fn chunked_body(
    buf: &[u8],
    mut pos: usize,
    lenient: bool,
) -> Result<Option<(Vec<u8>, Fields, usize)>, String> {
    let mut body = Vec::new();
    loop {
        let Some((line, next)) = line_at(buf, pos, lenient)? else {
            return Ok(None);
        };
        let size_text = lossy(line.split(|&b| b == b';').next().unwrap_or(b""));
        let size_text = if lenient {
            size_text.trim().to_owned()
        } else {
            size_text
        };
        if size_text.is_empty()
            || size_text.len() > 15
            || !size_text.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(format!("bad chunk size line {:?}", lossy(line)));
        }
        let size = usize::from_str_radix(&size_text, 16).map_err(|e| e.to_string())?;
        pos = next;
        if size == 0 {
            let Some((trailers, end)) = field_lines(buf, pos, lenient)? else {
                return Ok(None);
            };
            return Ok(Some((body, trailers, end)));
        }
        if buf.len() < pos + size + 1 {
            return Ok(None);
        }
        body.extend_from_slice(&buf[pos..pos + size]);
        pos += size;
        if lenient && buf[pos] == b'\n' {
            pos += 1;
        } else if buf.len() < pos + 2 {
            return Ok(None);
        } else if &buf[pos..pos + 2] == b"\r\n" {
            pos += 2;
        } else {
            return Err("chunk data not followed by CRLF".to_owned());
        }
    }
}

/// The codings of `Transfer-Encoding` end in `chunked`.
fn ends_chunked(headers: &[(String, String)]) -> Result<bool, String> {
    let te = values(headers, "transfer-encoding");
    if te.is_empty() {
        return Ok(false);
    }
    let joined = te.join(",");
    let last = joined
        .split(',')
        .map(str::trim)
        .rfind(|t| !t.is_empty())
        .unwrap_or("");
    if last.eq_ignore_ascii_case("chunked") {
        Ok(true)
    } else {
        Err(format!(
            "Transfer-Encoding {joined:?} does not end in chunked"
        ))
    }
}

/// The `Content-Length` of a message: digits only, duplicates equal.
fn content_length(headers: &[(String, String)]) -> Result<Option<usize>, String> {
    let cl = values(headers, "content-length");
    let mut n = None;
    for v in cl {
        if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("bad Content-Length {v:?}"));
        }
        let this: usize = v
            .parse()
            .map_err(|e| format!("Content-Length {v:?}: {e}"))?;
        if n.is_some_and(|m| m != this) {
            return Err("conflicting Content-Length".to_owned());
        }
        n = Some(this);
    }
    Ok(n)
}

/// Parses one request at the start of `buf`: `Ok(None)` when incomplete.
/// Strict unless `lenient` (then a bare LF ends a line, as RFC 9112 section
/// 2.2 lets a recipient accept).
pub fn parse_request(buf: &[u8], lenient: bool) -> Result<Option<(Req, usize)>, String> {
    let Some((line, pos)) = line_at(buf, 0, lenient)? else {
        return Ok(None);
    };
    let text = lossy(line);
    let parts: Vec<&str> = text.split(' ').collect();
    if parts.len() != 3 || !parts[2].starts_with("HTTP/") {
        return Err(format!("bad request line {text:?}"));
    }
    let Some((headers, head_end)) = field_lines(buf, pos, lenient)? else {
        return Ok(None);
    };
    let mut req = Req {
        method: parts[0].to_owned(),
        target: parts[1].to_owned(),
        version: parts[2].to_owned(),
        head: buf[..head_end].to_vec(),
        ..Req::default()
    };
    let chunked = ends_chunked(&headers)?;
    let length = content_length(&headers)?;
    req.headers = headers;
    if chunked {
        if length.is_some() {
            return Err("both Content-Length and Transfer-Encoding".to_owned());
        }
        let Some((body, trailers, end)) = chunked_body(buf, head_end, lenient)? else {
            return Ok(None);
        };
        req.chunked = true;
        req.body = body;
        req.trailers = trailers;
        return Ok(Some((req, end)));
    }
    let n = length.unwrap_or(0);
    if buf.len() < head_end + n {
        return Ok(None);
    }
    req.body = buf[head_end..head_end + n].to_vec();
    Ok(Some((req, head_end + n)))
}

/// A response parsed by [`lenient_responses`].
#[derive(Debug, Clone)]
pub struct LResp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// Decoded body.
    pub body: Vec<u8>,
    pub trailers: Vec<(String, String)>,
}

impl LResp {
    pub fn values(&self, name: &str) -> Vec<&str> {
        values(&self.headers, name)
    }
}

/// Every response in `buf` (a connection's bytes up to its close) as an
/// LF-tolerant client reads them (h11, on which httpx and uvicorn build,
/// ends lines at a bare LF). Stops at the first incomplete or garbled
/// response.
pub fn lenient_responses(buf: &[u8]) -> Vec<LResp> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        let Ok(Some((line, next))) = line_at(buf, pos, true) else {
            break;
        };
        let text = lossy(line);
        let mut parts = text.splitn(3, ' ');
        let (Some(version), Some(code)) = (parts.next(), parts.next()) else {
            break;
        };
        let Ok(status) = code.parse::<u16>() else {
            break;
        };
        if !version.starts_with("HTTP/") {
            break;
        }
        let Ok(Some((headers, head_end))) = field_lines(buf, next, true) else {
            break;
        };
        let mut resp = LResp {
            status,
            headers,
            body: Vec::new(),
            trailers: Vec::new(),
        };
        pos = if status < 200 || status == 204 || status == 304 {
            head_end
        } else if ends_chunked(&resp.headers) == Ok(true) {
            match chunked_body(buf, head_end, true) {
                Ok(Some((body, trailers, end))) => {
                    resp.body = body;
                    resp.trailers = trailers;
                    end
                }
                _ => break,
            }
        } else if let Ok(Some(n)) = content_length(&resp.headers) {
            if buf.len() < head_end + n {
                break;
            }
            resp.body = buf[head_end..head_end + n].to_vec();
            head_end + n
        } else {
            resp.body = buf[head_end..].to_vec();
            buf.len()
        };
        out.push(resp);
    }
    out
}

/// The data and trailers of a chunked body as sent (strict: CRLF only);
/// the body itself when it is not chunked.
pub fn decoded(resp: &Resp) -> (Vec<u8>, Vec<(String, String)>) {
    let chunked = resp
        .values("transfer-encoding")
        .iter()
        .any(|v| v.eq_ignore_ascii_case("chunked"));
    if !chunked {
        return (resp.body.clone(), Vec::new());
    }
    match chunked_body(&resp.body, 0, false) {
        Ok(Some((body, trailers, _))) => (body, trailers),
        other => panic!(
            "chunked body does not decode ({other:?}): {:?}",
            lossy(&resp.body)
        ),
    }
}

/// Bytes shown with their CR and LF visible, shortened past `limit`.
pub fn show(bytes: &[u8], limit: usize) -> String {
    let text = format!("{:?}", lossy(&bytes[..bytes.len().min(limit)]));
    if bytes.len() > limit {
        format!("{text}... ({} bytes)", bytes.len())
    } else {
        text
    }
}

// === impl Recorder ===

/// Which request of which upstream connection an answer is for (both
/// counted from 1).
#[derive(Debug, Clone, Copy)]
pub struct Seen {
    pub conn: usize,
    pub n: usize,
}

/// One step of an answer.
#[derive(Debug, Clone)]
pub enum Act {
    /// Write these bytes.
    Send(Vec<u8>),
    /// Wait (the connection keeps being read meanwhile).
    Sleep(Duration),
    /// Close the writing side and stop answering on this connection.
    Close,
    /// Never answer.
    Hold,
    /// Write `head`, then `len` bytes of body, 64 KiB at a time.
    Big { head: Vec<u8>, len: usize },
}

/// What a [`Recorder`] saw on one upstream connection.
#[derive(Debug, Clone, Default)]
pub struct ConnLog {
    /// Counted from 1, in accept order.
    pub id: usize,
    /// Every byte received.
    pub raw: Vec<u8>,
    pub requests: Vec<Req>,
    /// When each request was parsed, counted across all connections of
    /// all recorders (to order requests that came on different
    /// connections).
    pub parsed: Vec<usize>,
    pub errors: Vec<String>,
    /// The proxy closed (or reset) the connection.
    pub peer_closed: bool,
    /// `Send`/`Big` steps begun (an answer started being written).
    pub answers_started: usize,
    /// Bytes written.
    pub sent: usize,
    /// A write failed: the proxy had gone.
    pub write_failed: bool,
}

type Respond = dyn Fn(&Req, Seen) -> Vec<Act> + Send + Sync;
type Log = Arc<Mutex<Vec<ConnLog>>>;

/// A recording instance (see the module doc).
pub struct Recorder {
    pub addr: SocketAddr,
    log: Log,
    task: JoinHandle<()>,
}

impl Recorder {
    /// A recorder with a strict (CRLF only) parser.
    pub async fn start(respond: impl Fn(&Req, Seen) -> Vec<Act> + Send + Sync + 'static) -> Self {
        Self::with(false, respond).await
    }

    /// A recorder whose parser ends lines at a bare LF too.
    pub async fn lenient(respond: impl Fn(&Req, Seen) -> Vec<Act> + Send + Sync + 'static) -> Self {
        Self::with(true, respond).await
    }

    async fn with(
        lenient: bool,
        respond: impl Fn(&Req, Seen) -> Vec<Act> + Send + Sync + 'static,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let log: Log = Arc::default();
        let respond: Arc<Respond> = Arc::new(respond);
        let task = tokio::spawn({
            let log = log.clone();
            async move {
                // Dropped with this task: aborts every connection.
                let mut conns = JoinSet::new();
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    let id = {
                        let mut log = log.lock().unwrap();
                        let id = log.len() + 1;
                        log.push(ConnLog {
                            id,
                            ..ConnLog::default()
                        });
                        id
                    };
                    while conns.try_join_next().is_some() {}
                    conns.spawn(serve(stream, id, lenient, respond.clone(), log.clone()));
                }
            }
        });
        Recorder { addr, log, task }
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.log.lock().unwrap().len()
    }

    /// A copy of what each connection saw.
    pub fn conns(&self) -> Vec<ConnLog> {
        self.log.lock().unwrap().clone()
    }

    /// Every request parsed, with its connection id, connection by
    /// connection.
    pub fn requests(&self) -> Vec<(usize, Req)> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .flat_map(|c| c.requests.iter().map(|r| (c.id, r.clone())))
            .collect()
    }

    /// `METHOD target` of every request parsed, in the order they were
    /// parsed (whatever connection each came on: the proxy keeps
    /// separate pools for its two HTTP/1.1 clients).
    pub fn lines(&self) -> Vec<String> {
        let mut lines: Vec<(usize, String)> = self
            .log
            .lock()
            .unwrap()
            .iter()
            .flat_map(|c| {
                c.parsed
                    .iter()
                    .zip(&c.requests)
                    .map(|(&at, r)| (at, format!("{} {}", r.method, r.target)))
            })
            .collect();
        lines.sort_by_key(|(at, _)| *at);
        lines.into_iter().map(|(_, l)| l).collect()
    }

    /// Bytes received on all connections.
    pub fn received(&self) -> usize {
        self.log.lock().unwrap().iter().map(|c| c.raw.len()).sum()
    }

    /// The one request whose target is `target`, with its connection id.
    pub fn request(&self, target: &str) -> (usize, Req) {
        let found: Vec<_> = self
            .requests()
            .into_iter()
            .filter(|(_, r)| r.target == target)
            .collect();
        assert_eq!(
            found.len(),
            1,
            "requests for {target}: {}\n{}",
            found.len(),
            self.describe()
        );
        found.into_iter().next().unwrap()
    }

    /// Waits (bounded) until `cond` holds for the connections' logs.
    pub async fn wait(&self, secs: u64, what: &str, cond: impl Fn(&[ConnLog]) -> bool) {
        let log = self.log.clone();
        let what = format!("{what}; instance saw: {}", self.describe());
        wait_until(secs, &what, move || cond(&log.lock().unwrap())).await;
    }

    /// What every connection received and parsed, for failure messages.
    pub fn describe(&self) -> String {
        let log = self.log.lock().unwrap();
        if log.is_empty() {
            return "no connection".to_owned();
        }
        let mut out = String::new();
        for c in log.iter() {
            out.push_str(&format!(
                "\n  conn {}: received {}; closed by proxy: {}; answers started: {}",
                c.id,
                show(&c.raw, 1500),
                c.peer_closed,
                c.answers_started
            ));
            for r in &c.requests {
                out.push_str(&format!(
                    "\n    parsed {} {} body={} trailers={:?}",
                    r.method,
                    r.target,
                    show(&r.body, 200),
                    r.trailers
                ));
            }
            for e in &c.errors {
                out.push_str(&format!("\n    parse error: {e}"));
            }
        }
        out
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

enum Msg {
    Request(Req, Seen),
    Bad,
}

async fn serve(stream: TcpStream, id: usize, lenient: bool, respond: Arc<Respond>, log: Log) {
    let (mut rd, wr) = stream.into_split();
    let (tx, rx) = mpsc::unbounded_channel();
    let writer = answer(wr, rx, id, respond, log.clone());
    let reader = async {
        let mut pending = Vec::new();
        let mut parsing = true;
        let mut n = 0;
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            let got = rd.read(&mut chunk).await;
            let mut log = log.lock().unwrap();
            let conn = &mut log[id - 1];
            let got = match got {
                Ok(0) | Err(_) => {
                    conn.peer_closed = true;
                    break;
                }
                Ok(got) => got,
            };
            conn.raw.extend_from_slice(&chunk[..got]);
            if !parsing {
                continue;
            }
            pending.extend_from_slice(&chunk[..got]);
            loop {
                match parse_request(&pending, lenient) {
                    Ok(Some((req, len))) => {
                        pending.drain(..len);
                        n += 1;
                        conn.requests.push(req.clone());
                        conn.parsed.push(PARSED.fetch_add(1, Ordering::Relaxed));
                        let _ = tx.send(Msg::Request(req, Seen { conn: id, n }));
                    }
                    Ok(None) => break,
                    Err(e) => {
                        conn.errors.push(e);
                        parsing = false;
                        let _ = tx.send(Msg::Bad);
                        break;
                    }
                }
                if pending.is_empty() {
                    break;
                }
            }
        }
        drop(tx);
    };
    tokio::join!(reader, writer);
}

async fn answer(
    mut wr: OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<Msg>,
    id: usize,
    respond: Arc<Respond>,
    log: Log,
) {
    let note = |f: &dyn Fn(&mut ConnLog)| f(&mut log.lock().unwrap()[id - 1]);
    while let Some(msg) = rx.recv().await {
        let acts = match msg {
            Msg::Request(req, seen) => respond(&req, seen),
            Msg::Bad => vec![
                Act::Send(
                    b"HTTP/1.1 400 Bad Request\r\nContent-Length: 3\r\nConnection: close\r\n\r\nbad"
                        .to_vec(),
                ),
                Act::Close,
            ],
        };
        for act in acts {
            match act {
                Act::Send(bytes) => {
                    note(&|c| c.answers_started += 1);
                    if wr.write_all(&bytes).await.is_err() {
                        note(&|c| c.write_failed = true);
                        return;
                    }
                    note(&|c| c.sent += bytes.len());
                }
                Act::Big { head, len } => {
                    note(&|c| c.answers_started += 1);
                    if wr.write_all(&head).await.is_err() {
                        note(&|c| c.write_failed = true);
                        return;
                    }
                    let block = vec![b'z'; 64 * 1024];
                    let mut left = len;
                    while left > 0 {
                        let n = left.min(block.len());
                        if wr.write_all(&block[..n]).await.is_err() {
                            note(&|c| c.write_failed = true);
                            return;
                        }
                        note(&|c| c.sent += n);
                        left -= n;
                    }
                }
                Act::Sleep(d) => tokio::time::sleep(d).await,
                Act::Close => {
                    let _ = wr.shutdown().await;
                    return;
                }
                Act::Hold => std::future::pending::<()>().await,
            }
        }
    }
}

/// `200 OK` with `body` and its `Content-Length`.
pub fn ok(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// What a request was, as an answer body: `METHOD target conn=C n=N`.
pub fn naming_text(req: &Req, seen: Seen) -> String {
    format!(
        "{} {} conn={} n={}",
        req.method, req.target, seen.conn, seen.n
    )
}

/// The default answer: `200` naming the request ([`naming_text`]).
pub fn naming(req: &Req, seen: Seen) -> Vec<Act> {
    vec![Act::Send(ok(&naming_text(req, seen)))]
}

// === client side ===

/// How a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// Closed cleanly by the peer.
    Eof,
    /// Reset by the peer.
    Reset,
    /// Still open when the wait ended.
    StillOpen,
}

/// A connection to `addr` with Nagle off.
pub async fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).await.expect("connect");
    stream.set_nodelay(true).unwrap();
    stream
}

/// Reads until the peer closes, at most `limit`.
pub async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (Vec<u8>, Closed) {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let read = async {
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) => return Closed::Eof,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(_) => return Closed::Reset,
            }
        }
    };
    let closed = tokio::time::timeout(limit, read)
        .await
        .unwrap_or(Closed::StillOpen);
    (buf, closed)
}

/// What a client got on one connection.
#[derive(Debug)]
pub struct Exchange {
    pub bytes: Vec<u8>,
    pub closed: Closed,
    /// Every response a strict client finds, interim ones included.
    pub responses: Vec<Resp>,
    /// Bytes after the last response that do not parse as one.
    pub rest: Vec<u8>,
}

impl Exchange {
    /// The final (non-1xx) responses.
    pub fn finals(&self) -> Vec<&Resp> {
        self.responses.iter().filter(|r| r.status >= 200).collect()
    }

    /// The final responses after the first `skip`.
    pub fn after(&self, skip: usize) -> Vec<&Resp> {
        self.finals().into_iter().skip(skip).collect()
    }

    pub fn describe(&self) -> String {
        format!("{:?}, got {}", self.closed, show(&self.bytes, 2000))
    }
}

/// Every response in `bytes` a strict client finds (the peer has
/// closed), and what is left that does not parse.
pub fn strict_responses(mut bytes: &[u8]) -> (Vec<Resp>, Vec<u8>) {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        match parse_response(bytes, false, true) {
            Ok(Some((resp, len))) => {
                out.push(resp);
                bytes = &bytes[len..];
            }
            _ => break,
        }
    }
    (out, bytes.to_vec())
}

/// Writes `bytes` (requests, the last asking to close) on a new connection
/// to `addr` and reads until the proxy closes, at most 10 s.
pub async fn pipeline(addr: SocketAddr, bytes: &[u8]) -> Exchange {
    pipeline_within(addr, bytes, Duration::from_secs(10)).await
}

/// [`pipeline`] with its own bound.
pub async fn pipeline_within(addr: SocketAddr, bytes: &[u8], limit: Duration) -> Exchange {
    let mut stream = connect(addr).await;
    stream.write_all(bytes).await.expect("write requests");
    let (bytes, closed) = read_until_closed(&mut stream, limit).await;
    let (responses, rest) = strict_responses(&bytes);
    Exchange {
        bytes,
        closed,
        responses,
        rest,
    }
}

/// Writes `bytes` on a new connection to `addr` and reads until `n` final
/// (non-1xx) responses have arrived, the proxy closes, or `limit` passes.
pub async fn first_finals(addr: SocketAddr, bytes: &[u8], n: usize, limit: Duration) -> Exchange {
    let mut stream = connect(addr).await;
    stream.write_all(bytes).await.expect("write requests");
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let read = async {
        loop {
            let (responses, _) = strict_responses(&buf);
            if responses.iter().filter(|r| r.status >= 200).count() >= n {
                return Closed::StillOpen;
            }
            match stream.read(&mut chunk).await {
                Ok(0) => return Closed::Eof,
                Ok(got) => buf.extend_from_slice(&chunk[..got]),
                Err(_) => return Closed::Reset,
            }
        }
    };
    let closed = tokio::time::timeout(limit, read)
        .await
        .unwrap_or(Closed::StillOpen);
    let (responses, rest) = strict_responses(&buf);
    Exchange {
        bytes: buf,
        closed,
        responses,
        rest,
    }
}

/// The way a request reaches the proxy's forwarding code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// The HTTP/1.1 fast path.
    Fast,
    /// The general (hyper) path: the connection starts with an HTTP/1.0
    /// keep-alive request, which the fast path hands over with everything
    /// pipelined behind it.
    Hyper,
}

impl Path {
    pub const BOTH: [Path; 2] = [Path::Fast, Path::Hyper];

    /// `requests` as sent on this path (for the hyper path, behind a
    /// `GET {WARM_PATH}` HTTP/1.0 keep-alive request for `host`).
    pub fn wrap(self, host: &str, requests: &[u8]) -> Vec<u8> {
        match self {
            Path::Fast => requests.to_vec(),
            Path::Hyper => {
                let mut out = format!(
                    "GET {WARM_PATH} HTTP/1.0\r\nHost: {host}\r\nConnection: keep-alive\r\n\r\n"
                )
                .into_bytes();
                out.extend_from_slice(requests);
                out
            }
        }
    }

    /// How many final responses come before the ones for the wrapped
    /// requests.
    pub fn skip(self) -> usize {
        match self {
            Path::Fast => 0,
            Path::Hyper => 1,
        }
    }
}

/// The target of the request that moves a connection to the hyper path.
/// Requests parsed by every recorder so far ([`ConnLog::parsed`]).
static PARSED: AtomicUsize = AtomicUsize::new(0);

pub const WARM_PATH: &str = "/warm-up";

/// The sum of the `in_flight` counts of every instance in `GET /v1/services`.
pub async fn in_flight(api: &Api) -> u64 {
    let doc = api.json("/v1/services").await;
    doc["services"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["instances"].as_array().cloned().unwrap_or_default())
        .map(|i| i["in_flight"].as_u64().unwrap_or(0))
        .sum()
}

// === HTTP/2 frames by hand ===

/// HTTP/2 frames written and read on a raw socket.
pub mod h2 {
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpStream;

    pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    pub const DATA: u8 = 0x0;
    pub const HEADERS: u8 = 0x1;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const PING: u8 = 0x6;
    pub const GOAWAY: u8 = 0x7;
    pub const ACK: u8 = 0x1;
    pub const END_STREAM: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
    /// `SETTINGS_MAX_CONCURRENT_STREAMS`.
    pub const MAX_CONCURRENT_STREAMS: u16 = 0x3;

    /// One frame.
    #[derive(Debug, Clone)]
    pub struct Frame {
        pub kind: u8,
        pub flags: u8,
        pub stream: u32,
        pub payload: Vec<u8>,
    }

    impl Frame {
        /// The parameters of a SETTINGS frame.
        pub fn settings(&self) -> Vec<(u16, u32)> {
            self.payload
                .chunks_exact(6)
                .map(|p| {
                    (
                        u16::from_be_bytes([p[0], p[1]]),
                        u32::from_be_bytes([p[2], p[3], p[4], p[5]]),
                    )
                })
                .collect()
        }
    }

    /// A frame's bytes.
    pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    /// The client preface and an empty SETTINGS frame.
    pub fn hello() -> Vec<u8> {
        let mut out = PREFACE.to_vec();
        out.extend(frame(SETTINGS, 0, 0, &[]));
        out
    }

    /// HEADERS for `GET http://{authority}/` ending the stream (HPACK:
    /// static-table entries and one literal without indexing).
    pub fn get(stream: u32, authority: &str) -> Vec<u8> {
        // :method GET, :scheme http, :path /
        let mut block = vec![0x82, 0x86, 0x84];
        // :authority (static index 1), literal value, not indexed.
        block.push(0x01);
        block.push(authority.len() as u8);
        block.extend_from_slice(authority.as_bytes());
        frame(HEADERS, END_STREAM | END_HEADERS, stream, &block)
    }

    /// RST_STREAM with error code CANCEL.
    pub fn cancel(stream: u32) -> Vec<u8> {
        frame(RST_STREAM, 0, stream, &8u32.to_be_bytes())
    }

    /// Reads the next frame; `None` when the connection closed (or was
    /// reset) first.
    pub async fn read(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Frame> {
        loop {
            if buf.len() >= 9 {
                let len =
                    (usize::from(buf[0]) << 16) | (usize::from(buf[1]) << 8) | usize::from(buf[2]);
                if buf.len() >= 9 + len {
                    let f = Frame {
                        kind: buf[3],
                        flags: buf[4],
                        stream: u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff,
                        payload: buf[9..9 + len].to_vec(),
                    };
                    buf.drain(..9 + len);
                    return Some(f);
                }
            }
            let mut chunk = [0u8; 16 * 1024];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    }
}
