//! Real instances ([`Backend`]) and deterministic data.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, Stream, StreamExt};
use http::{header, Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

use super::{empty, full, Body, BoxError};

// === impl Backend ===

/// What a [`Backend`] answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `200` with the backend's name as the body.
    Name,
    /// `200` with a JSON description of the request it received:
    /// `{"name", "method", "uri", "version", "headers": {name: [values]}}`.
    /// The response also carries hop-by-hop headers (`Connection: x-hop`,
    /// `X-Hop`, `Keep-Alive`) that a proxy must not relay.
    Echo,
    /// Reads the request body and answers `"<sha256 hex> <byte count>"`.
    Sha256,
    /// Streams this many bytes of [`pattern_stream`] data.
    Stream(u64),
    /// Accepts a WebSocket upgrade and echoes every text and binary message.
    WebSocket,
}

/// Where requests wait before they are answered until the test opens it
/// (see [`BackendBuilder::gated`]): a request "in flight" for exactly as
/// long as the test needs, with no delay to guess.
#[derive(Debug, Clone)]
pub struct Gate(Arc<tokio::sync::watch::Sender<bool>>);

impl Default for Gate {
    fn default() -> Self {
        Gate(Arc::new(tokio::sync::watch::Sender::new(false)))
    }
}

impl Gate {
    /// A closed gate.
    pub fn new() -> Gate {
        Gate::default()
    }

    /// Opens it: every waiting request and every later one goes on.
    pub fn open(&self) {
        self.0.send_replace(true);
    }

    /// Waits until it is open.
    pub async fn passed(&self) {
        let mut rx = self.0.subscribe();
        // The sender lives in `self`, so this cannot fail.
        let _ = rx.wait_for(|open| *open).await;
    }
}

/// A real HTTP/1.1 instance on `127.0.0.1:0`, counting the requests it
/// receives.
#[derive(Debug)]
pub struct Backend {
    /// Where it listens.
    pub addr: SocketAddr,
    name: Arc<str>,
    hits: Arc<AtomicUsize>,
    answered: Arc<AtomicUsize>,
    accept: Mutex<Option<JoinHandle<()>>>,
    tasks: Arc<Tasks>,
}

/// Builds a [`Backend`].
#[derive(Debug)]
pub struct BackendBuilder {
    name: String,
    mode: Mode,
    delay: Option<Duration>,
    gate: Option<Gate>,
    addr: SocketAddr,
    h2c: Option<bool>,
}

impl BackendBuilder {
    /// Speaks HTTP/2 by prior knowledge instead of HTTP/1.1; with
    /// `extended_connect`, offers RFC 8441's extended CONNECT (which
    /// [`Mode::WebSocket`] then takes).
    pub fn h2c(mut self, extended_connect: bool) -> Self {
        self.h2c = Some(extended_connect);
        self
    }

    /// What it answers (default [`Mode::Name`]).
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// Waits this long after receiving each request before answering.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }

    /// Holds each request (counted in [`Backend::hits`]) until `gate` is
    /// open, then answers it.
    pub fn gated(mut self, gate: &Gate) -> Self {
        self.gate = Some(gate.clone());
        self
    }

    /// Where it listens (default `127.0.0.1:0`).
    pub fn at(mut self, addr: SocketAddr) -> Self {
        self.addr = addr;
        self
    }

    /// Binds and starts serving.
    pub async fn start(self) -> Backend {
        self.try_start().await.expect("bind backend")
    }

    /// Binds and starts serving, or says why it could not bind.
    pub async fn try_start(self) -> std::io::Result<Backend> {
        let listener = TcpListener::bind(self.addr).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(BackendState {
            name: Arc::from(self.name.as_str()),
            mode: self.mode,
            delay: self.delay,
            gate: self.gate,
            h2c: self.h2c,
            hits: Arc::new(AtomicUsize::new(0)),
            answered: Arc::new(AtomicUsize::new(0)),
            tasks: Arc::new(Tasks::default()),
        });
        let accept = tokio::spawn(accept_http(listener, state.clone()));
        Ok(Backend {
            addr,
            name: state.name.clone(),
            hits: state.hits.clone(),
            answered: state.answered.clone(),
            accept: Mutex::new(Some(accept)),
            tasks: state.tasks.clone(),
        })
    }
}

impl Backend {
    /// A builder for a backend called `name`.
    pub fn builder(name: &str) -> BackendBuilder {
        BackendBuilder {
            name: name.to_owned(),
            mode: Mode::Name,
            delay: None,
            gate: None,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            h2c: None,
        }
    }

    /// A backend answering its name.
    pub async fn start(name: &str) -> Backend {
        Backend::builder(name).start().await
    }

    /// A backend that counts each request head it receives, reads the
    /// `Content-Length` body (waiting at most 2 s for it) and closes the
    /// connection without answering.
    pub async fn close_after_request(name: &str) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind backend");
        let addr = listener.local_addr().expect("backend address");
        let hits = Arc::new(AtomicUsize::new(0));
        let tasks = Arc::new(Tasks::default());
        let accept = tokio::spawn(accept_raw_close(listener, hits.clone(), tasks.clone()));
        Backend {
            addr,
            name: Arc::from(name),
            hits,
            answered: Arc::default(),
            accept: Mutex::new(Some(accept)),
            tasks,
        }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Requests received so far.
    pub fn hits(&self) -> usize {
        self.hits.load(SeqCst)
    }

    /// Requests whose delay (or gate) has passed and whose response head
    /// is being sent (always 0 for [`Backend::close_after_request`]).
    pub fn answered(&self) -> usize {
        self.answered.load(SeqCst)
    }

    /// Closes the listener and every open connection (including upgraded
    /// ones) and returns once they are all gone. Connecting afterwards is
    /// refused.
    pub async fn stop(&self) {
        let accept = self.accept.lock().unwrap().take();
        if let Some(accept) = accept {
            accept.abort();
            let _ = accept.await;
        }
        self.tasks.stop().await;
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Some(accept) = self.accept.lock().unwrap().take() {
            accept.abort();
        }
        // Dropping a JoinSet aborts its tasks.
        drop(self.tasks.set.lock().unwrap().take());
    }
}

/// The connection (and upgrade) tasks of one backend; once stopped, nothing
/// new is started.
#[derive(Debug)]
struct Tasks {
    set: Mutex<Option<JoinSet<()>>>,
}

impl Default for Tasks {
    fn default() -> Self {
        Tasks {
            set: Mutex::new(Some(JoinSet::new())),
        }
    }
}

impl Tasks {
    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let mut set = self.set.lock().unwrap();
        if let Some(set) = set.as_mut() {
            // Reap finished tasks so a long test does not accumulate them.
            while set.try_join_next().is_some() {}
            set.spawn(task);
        }
    }

    async fn stop(&self) {
        let set = self.set.lock().unwrap().take();
        if let Some(mut set) = set {
            set.abort_all();
            while set.join_next().await.is_some() {}
        }
    }
}

#[derive(Debug)]
struct BackendState {
    name: Arc<str>,
    mode: Mode,
    delay: Option<Duration>,
    gate: Option<Gate>,
    h2c: Option<bool>,
    hits: Arc<AtomicUsize>,
    answered: Arc<AtomicUsize>,
    tasks: Arc<Tasks>,
}

async fn accept_http(listener: TcpListener, state: Arc<BackendState>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of descriptors or similar: do not spin.
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        };
        let conn_state = state.clone();
        state.tasks.spawn(async move {
            let h2c = conn_state.h2c;
            let service = service_fn(move |req| answer(req, conn_state.clone()));
            if let Some(extended_connect) = h2c {
                let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                if extended_connect {
                    builder.enable_connect_protocol();
                }
                let _ = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
                return;
            }
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
        });
    }
}

async fn answer(
    req: Request<Incoming>,
    state: Arc<BackendState>,
) -> Result<Response<Body>, Infallible> {
    state.hits.fetch_add(1, SeqCst);
    if let Some(delay) = state.delay {
        tokio::time::sleep(delay).await;
    }
    if let Some(gate) = &state.gate {
        gate.passed().await;
    }
    let resp = match state.mode {
        Mode::Name => Response::new(full(state.name.to_string())),
        Mode::Echo => echo(&req, &state.name),
        Mode::Sha256 => {
            let (hex, len) = sha256_of(req.into_body()).await;
            Response::new(full(format!("{hex} {len}")))
        }
        Mode::Stream(n) => Response::new(pattern_body(n)),
        Mode::WebSocket => websocket(req, &state),
    };
    let mut resp = resp;
    if let Ok(v) = state.name.parse() {
        resp.headers_mut().insert("x-backend", v);
    }
    state.answered.fetch_add(1, SeqCst);
    Ok(resp)
}

fn echo(req: &Request<Incoming>, name: &str) -> Response<Body> {
    let mut headers = serde_json::Map::new();
    for (k, v) in req.headers() {
        let entry = headers
            .entry(k.as_str())
            .or_insert_with(|| serde_json::Value::Array(Vec::new()));
        if let serde_json::Value::Array(values) = entry {
            values.push(String::from_utf8_lossy(v.as_bytes()).into_owned().into());
        }
    }
    let doc = serde_json::json!({
        "name": name,
        "method": req.method().as_str(),
        "uri": req.uri().to_string(),
        "version": format!("{:?}", req.version()),
        "headers": headers,
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONNECTION, "x-hop")
        .header("x-hop", "1")
        .header("keep-alive", "timeout=99")
        .body(full(doc.to_string()))
        .unwrap()
}

async fn sha256_of(mut body: Incoming) -> (String, u64) {
    let mut hasher = Sha256::new();
    let mut len = 0u64;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { break };
        if let Ok(data) = frame.into_data() {
            len += data.len() as u64;
            hasher.update(&data);
        }
    }
    (format!("{:x}", hasher.finalize()), len)
}

fn websocket(mut req: Request<Incoming>, state: &BackendState) -> Response<Body> {
    // HTTP/2 (RFC 8441): CONNECT with `:protocol = websocket`, no key.
    let extended = req.method() == http::Method::CONNECT
        && req
            .extensions()
            .get::<hyper::ext::Protocol>()
            .is_some_and(|p| p.as_str() == "websocket");
    let key = req.headers().get("sec-websocket-key").cloned();
    if !extended && key.is_none() {
        return Response::builder()
            .status(StatusCode::BAD_REQUEST)
            .body(full("expected a WebSocket upgrade"))
            .unwrap();
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    state.tasks.spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_text() || msg.is_binary() {
                if ws.send(msg).await.is_err() {
                    break;
                }
            } else if msg.is_close() {
                break;
            }
        }
        let _ = ws.close(None).await;
    });
    match key {
        Some(key) if !extended => Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::CONNECTION, "upgrade")
            .header(header::UPGRADE, "websocket")
            .header("sec-websocket-accept", derive_accept_key(key.as_bytes()))
            .body(empty())
            .unwrap(),
        _ => Response::new(empty()),
    }
}

async fn accept_raw_close(listener: TcpListener, hits: Arc<AtomicUsize>, tasks: Arc<Tasks>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of descriptors or similar: do not spin.
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        };
        let hits = hits.clone();
        tasks.spawn(async move {
            let mut reader = BufReader::new(stream);
            let mut content_length = 0usize;
            let mut line = String::new();
            loop {
                line.clear();
                match reader.read_line(&mut line).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                if line == "\r\n" {
                    break;
                }
                if let Some((name, value)) = line.split_once(':') {
                    if name.trim().eq_ignore_ascii_case("content-length") {
                        content_length = value.trim().parse().unwrap_or(0);
                    }
                }
            }
            hits.fetch_add(1, SeqCst);
            // Read the body (bounded, in case a proxy announced one it never
            // sends), then drop the stream: the connection closes unanswered.
            let mut body = vec![0; content_length];
            let read = reader.read_exact(&mut body);
            let _ = tokio::time::timeout(Duration::from_secs(2), read).await;
        });
    }
}

// === deterministic data ===

/// Chunk size of [`pattern_stream`].
pub const CHUNK: usize = 64 * 1024;
/// Number of distinct chunk offsets, so reordered or repeated chunks change
/// the checksum.
const PATTERN_PERIOD: usize = 251;

fn pattern_block() -> &'static [u8] {
    static BLOCK: OnceLock<Vec<u8>> = OnceLock::new();
    BLOCK.get_or_init(|| {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        (0..CHUNK + PATTERN_PERIOD)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    })
}

/// The `i`-th chunk of the deterministic data, `len` bytes long (at most
/// [`CHUNK`]). Zero-copy: a slice of one static block.
fn pattern_chunk(i: u64, len: usize) -> Bytes {
    let start = (i % PATTERN_PERIOD as u64) as usize;
    Bytes::from_static(pattern_block()).slice(start..start + len)
}

/// `total` bytes of deterministic data, as body frames produced on demand.
pub fn pattern_stream(total: u64) -> impl Stream<Item = Result<Frame<Bytes>, BoxError>> + Send {
    futures_util::stream::unfold(0u64, move |sent| async move {
        if sent >= total {
            return None;
        }
        let len = (total - sent).min(CHUNK as u64) as usize;
        let chunk = pattern_chunk(sent / CHUNK as u64, len);
        Some((Ok(Frame::data(chunk)), sent + len as u64))
    })
}

/// A body of `total` bytes of [`pattern_stream`] data, streamed.
pub fn pattern_body(total: u64) -> Body {
    BodyExt::boxed(StreamBody::new(pattern_stream(total)))
}

/// The SHA-256 (hex) of `total` bytes of [`pattern_stream`] data.
pub fn pattern_sha256(total: u64) -> String {
    let mut hasher = Sha256::new();
    let mut sent = 0u64;
    while sent < total {
        let len = (total - sent).min(CHUNK as u64) as usize;
        hasher.update(pattern_chunk(sent / CHUNK as u64, len));
        sent += len as u64;
    }
    format!("{:x}", hasher.finalize())
}
