//! A small HTTP/1.1 client: one connection kept alive ([`H1Client`], and
//! [`Reconnecting`] for load loops), one exchange on a fresh connection
//! ([`send`], [`get`]) and raw bytes on a socket ([`raw_exchange`]).

use std::net::SocketAddr;

use bytes::Bytes;
use http::{header, HeaderMap, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use super::{empty, full, Body, BoxError};

/// A response read to the end.
#[derive(Debug)]
pub struct Reply {
    /// Its status.
    pub status: StatusCode,
    /// Its headers.
    pub headers: HeaderMap,
    /// Its body.
    pub body: Bytes,
}

impl Reply {
    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON (for [`Mode::Echo`](super::Mode::Echo) answers).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// Reads a response to the end.
    pub async fn read(resp: Response<Incoming>) -> Result<Reply, BoxError> {
        let (parts, body) = resp.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }
}

/// The values of `name` in an [`Mode::Echo`](super::Mode::Echo) answer's `headers`.
pub fn echoed(doc: &serde_json::Value, name: &str) -> Vec<String> {
    doc["headers"][name]
        .as_array()
        .map(|vs| {
            vs.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// One HTTP/1.1 client connection, kept alive across requests.
#[derive(Debug)]
pub struct H1Client {
    sender: hyper::client::conn::http1::SendRequest<Body>,
    conn: JoinHandle<()>,
}

impl H1Client {
    /// Connects to `addr`.
    pub async fn connect(addr: SocketAddr) -> Result<H1Client, BoxError> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        let conn = tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        Ok(H1Client { sender, conn })
    }

    /// Sends `req` once the connection is ready; returns the response head
    /// with its body still streaming.
    pub async fn send(&mut self, req: Request<Body>) -> Result<Response<Incoming>, BoxError> {
        self.sender.ready().await?;
        Ok(self.sender.send_request(req).await?)
    }

    /// Sends `req` and reads the whole response.
    pub async fn request(&mut self, req: Request<Body>) -> Result<Reply, BoxError> {
        let resp = self.send(req).await?;
        Reply::read(resp).await
    }

    /// A GET of `path` with `Host: host`.
    pub async fn get(&mut self, host: &str, path: &str) -> Result<Reply, BoxError> {
        self.request(request("GET", host, path).body(empty())?)
            .await
    }
}

impl Drop for H1Client {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

/// A request builder for `method path` with `Host: host`.
pub fn request(method: &str, host: &str, path: &str) -> http::request::Builder {
    Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, host)
}

/// Sends `req` on a fresh connection to `addr` and reads the whole
/// response.
pub async fn send(addr: SocketAddr, req: Request<Body>) -> Result<Reply, BoxError> {
    H1Client::connect(addr).await?.request(req).await
}

/// A GET on a fresh connection to `addr`.
pub async fn get(addr: SocketAddr, host: &str, path: &str) -> Result<Reply, BoxError> {
    H1Client::connect(addr).await?.get(host, path).await
}

/// POSTs a small JSON order (13 bytes, announced by `Content-Length`) to
/// `/orders` with `Host: host`, on a fresh connection to `addr`.
pub async fn post_order(addr: SocketAddr, host: &str) -> Result<Reply, BoxError> {
    let req = request("POST", host, "/orders")
        .header("content-length", "13")
        .body(full("{\"order\": 1}\n"))?;
    send(addr, req).await
}

/// A keep-alive client that connects on first use and again after a failed
/// request (for loops of requests that must survive a lost connection).
#[derive(Debug)]
pub struct Reconnecting {
    addr: SocketAddr,
    client: Option<H1Client>,
}

impl Reconnecting {
    /// A client of `addr`, not connected yet.
    pub fn new(addr: SocketAddr) -> Reconnecting {
        Reconnecting { addr, client: None }
    }

    /// A GET of `path` with `Host: host`; after a failure the next request
    /// opens a new connection. A kept connection the server closed after
    /// its last response (`Connection: close`) is replaced before sending,
    /// as HTTP clients do: nothing had been sent on it.
    pub async fn get(&mut self, host: &str, path: &str) -> Result<Reply, BoxError> {
        if let Some(c) = &mut self.client {
            if c.sender.is_closed() || c.sender.ready().await.is_err() {
                self.client = None;
            }
        }
        let result = async {
            if self.client.is_none() {
                self.client = Some(H1Client::connect(self.addr).await?);
            }
            self.client.as_mut().unwrap().get(host, path).await
        }
        .await;
        if result.is_err() {
            self.client = None;
        }
        result
    }
}

/// A response read off a raw socket.
#[derive(Debug)]
pub struct RawReply {
    /// The status code.
    pub status: u16,
    /// The status line and headers, as text.
    pub head: String,
    /// Everything after the head.
    pub body: String,
}

/// An HTTP/2 (prior knowledge) client connection to `addr`: its sender,
/// and the task driving the connection (abort it when done).
pub async fn h2_client(
    addr: SocketAddr,
) -> (
    hyper::client::conn::http2::SendRequest<Body>,
    JoinHandle<hyper::Result<()>>,
) {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .expect("h2 handshake");
    (sender, tokio::spawn(conn))
}

/// Writes `request` as-is to a fresh connection to `addr` and reads until
/// the server closes it (send `Connection: close` to make it do so).
pub async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> Result<RawReply, BoxError> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(request).await?;
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no response head in {text:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status in {head:?}"))?;
    Ok(RawReply {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    })
}
