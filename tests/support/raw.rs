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
        let respond: Arc<Respond> = Arc::new(respond);
        let task = tokio::spawn({
            let (accepted, requests) = (accepted.clone(), requests.clone());
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
                    conns.spawn(serve_raw(
                        stream,
                        idle_close,
                        respond.clone(),
                        requests.clone(),
                    ));
                }
            }
        });
        RawBackend {
            addr,
            accepted,
            requests,
            task,
        }
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(SeqCst)
    }

    pub fn requests(&self) -> usize {
        self.requests.load(SeqCst)
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
