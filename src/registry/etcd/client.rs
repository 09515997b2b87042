//! A small client for etcd's documented v3 JSON gateway (`/v3/kv/range`,
//! `/v3/kv/put`, `/v3/kv/txn`, `/v3/watch`, `/v3/lease/*`,
//! `/v3/auth/authenticate`) over a pooled hyper HTTP/1.1 client.
//!
//! Why the gateway rather than gRPC: it needs no `protoc` and no generated
//! code, so a plain `cargo build` works on a fresh machine. The JSON shapes
//! are in [`super::wire`].
//!
//! Every unary call is bounded by the request timeout. A call whose
//! connection could not be made moves on to the next endpoint; a call that
//! may have reached etcd is never re-sent elsewhere.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use super::wire::{
    b64, AuthenticateResponse, ErrorBody, LeaseGrantResponse, LeaseKeepAlive, PutResponse,
    RangeResponse, StreamMessage, TxnResponse, WatchResponse,
};
use crate::config::{EtcdAuth, EtcdSettings};

/// Largest unary answer read (a range over every registration).
const MAX_ANSWER: usize = 64 * 1024 * 1024;
/// Largest single watch message buffered before it is complete.
const MAX_WATCH_MESSAGE: usize = 64 * 1024 * 1024;
/// gRPC status codes etcd puts in `code`.
const GRPC_NOT_FOUND: i64 = 5;
const GRPC_UNAUTHENTICATED: i64 = 16;

/// Why an etcd call failed.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// No connection could be made to any endpoint.
    #[error("cannot connect to etcd at {endpoint}: {reason}")]
    Connect {
        /// The last endpoint tried.
        endpoint: String,
        /// The connect error.
        reason: String,
    },
    /// The connection broke during the call; it may or may not have applied.
    #[error("etcd at {endpoint}: {call} failed: {reason}")]
    Transport {
        /// The endpoint.
        endpoint: String,
        /// The gateway path.
        call: &'static str,
        /// What broke.
        reason: String,
    },
    /// No complete answer within the request timeout.
    #[error("etcd at {endpoint} did not answer {call} within {timeout:?}")]
    Timeout {
        /// The endpoint.
        endpoint: String,
        /// The gateway path.
        call: &'static str,
        /// The request timeout.
        timeout: Duration,
    },
    /// etcd answered with an error.
    #[error("etcd at {endpoint} refused {call}: {message}")]
    Refused {
        /// The endpoint.
        endpoint: String,
        /// The gateway path.
        call: &'static str,
        /// The gRPC status code (0 when the gateway gave none).
        code: i64,
        /// etcd's message.
        message: String,
    },
    /// The answer could not be understood.
    #[error("etcd at {endpoint} sent an unreadable answer to {call}: {detail}")]
    Protocol {
        /// The endpoint.
        endpoint: String,
        /// The gateway path.
        call: &'static str,
        /// What was wrong with it.
        detail: String,
    },
}

impl EtcdError {
    /// Whether etcd said the lease does not exist (expired or revoked).
    pub fn is_lease_not_found(&self) -> bool {
        matches!(self, EtcdError::Refused { code: GRPC_NOT_FOUND, message, .. } if message.contains("lease not found"))
    }

    /// Whether etcd said the key does not exist (a put with `ignore_lease`).
    pub fn is_key_not_found(&self) -> bool {
        matches!(self, EtcdError::Refused { message, .. } if message.contains("key not found"))
    }

    fn is_bad_token(&self) -> bool {
        matches!(
            self,
            EtcdError::Refused {
                code: GRPC_UNAUTHENTICATED,
                ..
            }
        )
    }
}

// === impl Client ===

/// A client for the endpoints of one etcd cluster.
pub(crate) struct Client {
    http: HttpClient<HttpConnector, Full<Bytes>>,
    endpoints: Vec<Uri>,
    /// The endpoint that answered last; calls start there.
    current: AtomicUsize,
    auth: Option<EtcdAuth>,
    token: Mutex<Option<String>>,
    request_timeout: Duration,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("endpoints", &self.endpoints)
            .field("auth", &self.auth)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client for `settings`' endpoints; connects lazily.
    pub(crate) fn new(settings: &EtcdSettings) -> Client {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(settings.dial_timeout));
        connector.set_nodelay(true);
        connector.set_keepalive(Some(Duration::from_secs(15)));
        let http = HttpClient::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Client {
            http,
            endpoints: settings.endpoints.clone(),
            current: AtomicUsize::new(0),
            auth: settings.auth.clone(),
            token: Mutex::new(None),
            request_timeout: settings.request_timeout,
        }
    }

    /// Keys from `key` up to `range_end` (exclusive), or their count only.
    pub(crate) async fn range(
        &self,
        key: &[u8],
        range_end: Option<&[u8]>,
    ) -> Result<RangeResponse, EtcdError> {
        let mut body = json!({ "key": b64(key) });
        if let Some(end) = range_end {
            body["range_end"] = b64(end).into();
        }
        self.call("/v3/kv/range", body).await
    }

    /// Sets `key`, attached to `lease` (0: none; `None`: keep its lease).
    pub(crate) async fn put(
        &self,
        key: &[u8],
        value: &[u8],
        lease: Option<i64>,
    ) -> Result<PutResponse, EtcdError> {
        let mut body = json!({ "key": b64(key), "value": b64(value), "prev_kv": true });
        match lease {
            Some(0) => {}
            Some(id) => body["lease"] = id.to_string().into(),
            None => body["ignore_lease"] = true.into(),
        }
        self.call("/v3/kv/put", body).await
    }

    /// If `key` exists: deletes it and puts `marker` (attached to
    /// `marker_lease`) in the same revision.
    pub(crate) async fn delete_with_marker(
        &self,
        key: &[u8],
        marker: &[u8],
        marker_lease: i64,
    ) -> Result<TxnResponse, EtcdError> {
        let body = json!({
            "compare": [{ "key": b64(key), "target": "VERSION", "result": "GREATER", "version": "0" }],
            "success": [
                { "request_delete_range": { "key": b64(key), "prev_kv": true } },
                { "request_put": { "key": b64(marker), "value": b64(b"{}"), "lease": marker_lease.to_string() } },
            ],
        });
        self.call("/v3/kv/txn", body).await
    }

    /// A new lease of `ttl_secs` seconds (etcd may round it up); its id.
    pub(crate) async fn lease_grant(&self, ttl_secs: i64) -> Result<i64, EtcdError> {
        let r: LeaseGrantResponse = self
            .call("/v3/lease/grant", json!({ "TTL": ttl_secs.to_string() }))
            .await?;
        if r.ID == 0 || !r.error.is_empty() {
            return Err(EtcdError::Refused {
                endpoint: self.endpoint_name(self.current.load(Ordering::Relaxed)),
                call: "/v3/lease/grant",
                code: 0,
                message: r.error,
            });
        }
        Ok(r.ID)
    }

    /// Renews `lease`; its remaining TTL in seconds, 0 when it is gone.
    pub(crate) async fn lease_keepalive(&self, lease: i64) -> Result<i64, EtcdError> {
        // A stream on the gateway: one message per request; it ends when
        // the request body does.
        let r: StreamMessage<LeaseKeepAlive> = self
            .call("/v3/lease/keepalive", json!({ "ID": lease.to_string() }))
            .await?;
        match (r.result, r.error) {
            (Some(ka), _) => Ok(ka.TTL),
            (None, Some(e)) => Err(EtcdError::Refused {
                endpoint: self.endpoint_name(self.current.load(Ordering::Relaxed)),
                call: "/v3/lease/keepalive",
                code: e.grpc_code,
                message: e.message,
            }),
            (None, None) => Ok(0),
        }
    }

    /// Revokes `lease`, deleting the keys attached to it.
    pub(crate) async fn lease_revoke(&self, lease: i64) -> Result<(), EtcdError> {
        let _: Value = self
            .call("/v3/lease/revoke", json!({ "ID": lease.to_string() }))
            .await?;
        Ok(())
    }

    /// Checks that endpoint `idx` answers (a count-only range).
    pub(crate) async fn probe(&self, idx: usize, key: &[u8]) -> Result<(), EtcdError> {
        let body = json!({ "key": b64(key), "count_only": true });
        let _: Value = self.call_on(idx, "/v3/kv/range", &body, true).await?;
        Ok(())
    }

    /// Opens a watch on `[key, range_end)` from `start_revision`; returns
    /// the stream and the endpoint it runs on.
    pub(crate) async fn watch(
        &self,
        key: &[u8],
        range_end: &[u8],
        start_revision: i64,
    ) -> Result<(WatchStream, usize), EtcdError> {
        let body = json!({ "create_request": {
            "key": b64(key),
            "range_end": b64(range_end),
            "start_revision": start_revision.to_string(),
        }});
        let call = "/v3/watch";
        let body = &body;
        let (idx, resp) = self
            .with_failover(|idx| async move {
                // Only the response head is bounded: the body is the stream.
                let resp = self
                    .bounded(idx, call, self.send(idx, call, body, true))
                    .await?;
                if resp.status().is_success() {
                    return Ok(resp);
                }
                let endpoint = self.endpoint_name(idx);
                let status = resp.status();
                let text = self.read(&endpoint, call, resp.into_body()).await?;
                Err(refused(&endpoint, call, status, &text))
            })
            .await?;
        Ok((
            WatchStream {
                body: resp.into_body(),
                buf: Vec::new(),
                endpoint: self.endpoint_name(idx),
            },
            idx,
        ))
    }

    /// One unary call, on the current endpoint or the next reachable one.
    async fn call<T: DeserializeOwned>(
        &self,
        call: &'static str,
        body: Value,
    ) -> Result<T, EtcdError> {
        let (_, value) = self
            .with_failover(|idx| self.call_on(idx, call, &body, true))
            .await?;
        Ok(value)
    }

    /// Tries `f` on each endpoint from the current one while connections
    /// fail; re-authenticates once when etcd rejects the token.
    async fn with_failover<T, F, Fut>(&self, f: F) -> Result<(usize, T), EtcdError>
    where
        F: Fn(usize) -> Fut,
        Fut: std::future::Future<Output = Result<T, EtcdError>>,
    {
        let n = self.endpoints.len();
        let start = self.current.load(Ordering::Relaxed);
        let mut last = None;
        for step in 0..n {
            let idx = (start + step) % n;
            let mut result = f(idx).await;
            if matches!(&result, Err(e) if e.is_bad_token()) && self.auth.is_some() {
                self.set_token(None);
                result = f(idx).await;
            }
            match result {
                Err(e @ EtcdError::Connect { .. }) => last = Some(e),
                other => {
                    self.current.store(idx, Ordering::Relaxed);
                    return other.map(|v| (idx, v));
                }
            }
        }
        Err(last.unwrap_or_else(|| EtcdError::Connect {
            endpoint: "(none)".to_owned(),
            reason: "no endpoints configured".to_owned(),
        }))
    }

    /// One call on endpoint `idx`, answer read and decoded, all within the
    /// request timeout.
    async fn call_on<T: DeserializeOwned>(
        &self,
        idx: usize,
        call: &'static str,
        body: &Value,
        authorized: bool,
    ) -> Result<T, EtcdError> {
        let exchange = async {
            let endpoint = self.endpoint_name(idx);
            let resp = self.send(idx, call, body, authorized).await?;
            let status = resp.status();
            let text = self.read(&endpoint, call, resp.into_body()).await?;
            if !status.is_success() {
                return Err(refused(&endpoint, call, status, &text));
            }
            // Streamed calls answer one JSON value per line; take the first.
            let first = text.split(|&b| b == b'\n').next().unwrap_or_default();
            serde_json::from_slice(first).map_err(|e| EtcdError::Protocol {
                endpoint,
                call,
                detail: e.to_string(),
            })
        };
        self.bounded(idx, call, exchange).await
    }

    /// `fut` within the request timeout.
    async fn bounded<T>(
        &self,
        idx: usize,
        call: &'static str,
        fut: impl std::future::Future<Output = Result<T, EtcdError>>,
    ) -> Result<T, EtcdError> {
        tokio::time::timeout(self.request_timeout, fut)
            .await
            .unwrap_or_else(|_| {
                Err(EtcdError::Timeout {
                    endpoint: self.endpoint_name(idx),
                    call,
                    timeout: self.request_timeout,
                })
            })
    }

    /// POSTs `body` to `call` on endpoint `idx` (with the auth token when
    /// `authorized` and credentials are configured); the response head.
    async fn send(
        &self,
        idx: usize,
        call: &'static str,
        body: &Value,
        authorized: bool,
    ) -> Result<Response<Incoming>, EtcdError> {
        let endpoint = self.endpoint_name(idx);
        let mut builder = Request::builder()
            .method(Method::POST)
            .uri(format!("{endpoint}{call}"))
            .header(header::CONTENT_TYPE, "application/json");
        if authorized && self.auth.is_some() {
            builder = builder.header(header::AUTHORIZATION, self.token(idx).await?);
        }
        let req = builder
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| EtcdError::Protocol {
                endpoint: endpoint.clone(),
                call,
                detail: e.to_string(),
            })?;
        self.http
            .request(req)
            .await
            .map_err(|e| transport(&endpoint, call, &e))
    }

    /// The auth token, fetched from endpoint `idx` when none is held.
    async fn token(&self, idx: usize) -> Result<String, EtcdError> {
        if let Some(t) = self.token.lock().unwrap_or_else(|e| e.into_inner()).clone() {
            return Ok(t);
        }
        let Some(auth) = &self.auth else {
            return Ok(String::new());
        };
        let call = "/v3/auth/authenticate";
        let body = json!({ "name": auth.username, "password": auth.password });
        let r: AuthenticateResponse = Box::pin(self.call_on(idx, call, &body, false)).await?;
        if r.token.is_empty() {
            return Err(EtcdError::Protocol {
                endpoint: self.endpoint_name(idx),
                call,
                detail: "no token in the answer (is authentication enabled?)".to_owned(),
            });
        }
        self.set_token(Some(r.token.clone()));
        Ok(r.token)
    }

    fn set_token(&self, token: Option<String>) {
        *self.token.lock().unwrap_or_else(|e| e.into_inner()) = token;
    }

    async fn read(
        &self,
        endpoint: &str,
        call: &'static str,
        body: Incoming,
    ) -> Result<Bytes, EtcdError> {
        Limited::new(body, MAX_ANSWER)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .map_err(|e| EtcdError::Transport {
                endpoint: endpoint.to_owned(),
                call,
                reason: e.to_string(),
            })
    }

    /// `http://host:port` of endpoint `idx`.
    pub(crate) fn endpoint_name(&self, idx: usize) -> String {
        let uri = &self.endpoints[idx % self.endpoints.len()];
        let mut s = uri.to_string();
        if s.ends_with('/') {
            s.pop();
        }
        s
    }
}

fn transport(
    endpoint: &str,
    call: &'static str,
    e: &hyper_util::client::legacy::Error,
) -> EtcdError {
    use std::error::Error as _;
    let mut reason = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        reason = format!("{reason}: {s}");
        source = s.source();
    }
    if e.is_connect() {
        EtcdError::Connect {
            endpoint: endpoint.to_owned(),
            reason,
        }
    } else {
        EtcdError::Transport {
            endpoint: endpoint.to_owned(),
            call,
            reason,
        }
    }
}

fn refused(endpoint: &str, call: &'static str, status: StatusCode, body: &[u8]) -> EtcdError {
    let (code, message) = match serde_json::from_slice::<ErrorBody>(body) {
        Ok(e) => (e.code, e.message),
        Err(_) => (0, String::from_utf8_lossy(body).trim().to_owned()),
    };
    EtcdError::Refused {
        endpoint: endpoint.to_owned(),
        call,
        code,
        message: if message.is_empty() {
            status.to_string()
        } else {
            message
        },
    }
}

// === impl WatchStream ===

/// The newline-delimited JSON answer of `/v3/watch`.
#[derive(Debug)]
pub(crate) struct WatchStream {
    body: Incoming,
    buf: Vec<u8>,
    endpoint: String,
}

impl WatchStream {
    /// The next watch response; `Ok(None)` when etcd ended the stream.
    pub(crate) async fn next(&mut self) -> Result<Option<WatchResponse>, EtcdError> {
        let call = "/v3/watch";
        loop {
            if let Some(msg) = self.take_message()? {
                return match (msg.result, msg.error) {
                    (Some(r), _) => Ok(Some(r)),
                    (None, Some(e)) => Err(EtcdError::Refused {
                        endpoint: self.endpoint.clone(),
                        call,
                        code: e.grpc_code,
                        message: e.message,
                    }),
                    (None, None) => continue,
                };
            }
            match self.body.frame().await {
                None => return Ok(None),
                Some(Err(e)) => {
                    return Err(EtcdError::Transport {
                        endpoint: self.endpoint.clone(),
                        call,
                        reason: e.to_string(),
                    })
                }
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                    if self.buf.len() > MAX_WATCH_MESSAGE {
                        return Err(EtcdError::Protocol {
                            endpoint: self.endpoint.clone(),
                            call,
                            detail: format!("a message longer than {MAX_WATCH_MESSAGE} bytes"),
                        });
                    }
                }
            }
        }
    }

    /// Removes and parses the first complete message in the buffer.
    fn take_message(&mut self) -> Result<Option<StreamMessage<WatchResponse>>, EtcdError> {
        let start = self
            .buf
            .iter()
            .position(|b| !b.is_ascii_whitespace())
            .unwrap_or(self.buf.len());
        let mut values = serde_json::Deserializer::from_slice(&self.buf[start..])
            .into_iter::<StreamMessage<WatchResponse>>();
        match values.next() {
            None => {
                self.buf.clear();
                Ok(None)
            }
            Some(Ok(msg)) => {
                let used = start + values.byte_offset();
                self.buf.drain(..used);
                Ok(Some(msg))
            }
            Some(Err(e)) if e.is_eof() => Ok(None),
            Some(Err(e)) => Err(EtcdError::Protocol {
                endpoint: self.endpoint.clone(),
                call: "/v3/watch",
                detail: e.to_string(),
            }),
        }
    }
}
