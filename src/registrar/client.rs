//! A minimal HTTP/1.1 client for the admin API and the HTTP check: one
//! connection per call, every call bounded.

use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// A complete answer.
#[derive(Debug, Clone)]
pub(super) struct Answer {
    /// Its status.
    pub status: StatusCode,
    /// Its body.
    pub body: Bytes,
}

impl Answer {
    /// The body as one line of text for messages (trimmed, at most 300
    /// characters).
    pub fn text(&self) -> String {
        let text = String::from_utf8_lossy(&self.body);
        let line = text.trim().replace(['\r', '\n'], " ");
        match line.char_indices().nth(300) {
            Some((i, _)) => format!("{}...", &line[..i]),
            None => line,
        }
    }
}

/// Calls one HTTP server: the admin API (with the bearer token) or the
/// service's check URL.
#[derive(Debug, Clone)]
pub(super) struct Client {
    base: Uri,
    token: Option<String>,
}

impl Client {
    /// A client of the server `base` names (its scheme is http; its path is
    /// not used), sending `token` as `Authorization: Bearer`.
    pub fn new(base: Uri, token: Option<String>) -> Client {
        Client { base, token }
    }

    /// `method path` with an optional JSON body, bounded by `timeout`.
    /// Any answer is `Ok`; `Err` says why there was none (connection
    /// refused, reset, timed out...).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
        timeout: Duration,
    ) -> Result<Answer, String> {
        let authority = self
            .base
            .authority()
            .ok_or("the URL has no host:port")?
            .clone();
        let port = authority.port_u16().unwrap_or(80);
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let work = async {
            let stream = TcpStream::connect((host, port))
                .await
                .map_err(|e| format!("connect {authority}: {e}"))?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| format!("{authority}: handshake: {e}"))?;
            let conn = tokio::spawn(conn);
            let mut req = Request::builder()
                .method(method)
                .uri(path)
                .header(header::HOST, authority.as_str())
                .header(header::USER_AGENT, "wayfinder-register");
            if let Some(t) = &self.token {
                req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
            }
            if body.is_some() {
                req = req.header(header::CONTENT_TYPE, "application/json");
            }
            let req = req
                .body(Full::new(Bytes::from(body.unwrap_or_default())))
                .map_err(|e| format!("request: {e}"))?;
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| format!("{authority}: {e}"))?;
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("{authority}: body: {e}"))?
                .to_bytes();
            conn.abort();
            Ok(Answer { status, body })
        };
        tokio::time::timeout(timeout, work)
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "{authority}: no answer within {}",
                    humantime::format_duration(timeout)
                ))
            })
    }
}
