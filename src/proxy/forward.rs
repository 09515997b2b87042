//! Forwarding one request: find the service (router, then the snapshot),
//! pick an instance, send, and relay the answer, retrying on another
//! instance when that is safe.
//!
//! Retry rules: a request that never reached an instance (connect refused
//! or timed out, or a pooled connection found closed before the request was
//! written) is retried on another instance whatever its method. A request
//! that was written but got no response (connection reset or closed before
//! the response head) is retried only when it is idempotent and has no
//! body, so a POST is never replayed. A response-header timeout is not
//! retried: the instance may still be working on it. A pooled connection
//! that fails this way is retried first on a fresh connection to the same
//! instance, since keep-alive races are not the instance's fault.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::request::Parts;
use http::uri::PathAndQuery;
use http::{
    header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, Version,
};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use super::attempt::{self, Outcome};
use super::body::{ProxyBody, TrackedBody, UpstreamBody};
use super::error::ProxyError;
use super::headers::{self, Forwarding};
use super::upstream::{self, Sender};
use super::Proxy;
use crate::health::passive::Failure;
use crate::registry::{InFlightGuard, InstanceState, ServiceEntry};

/// Response header listing the attempts behind a response, when
/// `proxy.debug_header` is on.
pub static DEBUG_HEADER: HeaderName = HeaderName::from_static("x-wayfinder-debug");

/// Response header with the registry snapshot version and age, when
/// `proxy.snapshot_header` is on: `x-wayfinder-snapshot: 12; age_ms=850`.
pub static SNAPSHOT_HEADER: HeaderName = HeaderName::from_static("x-wayfinder-snapshot");
use crate::router::strip_path;

/// What the proxy knows about the client connection a request came on.
#[derive(Debug, Clone)]
pub struct Client {
    /// The client's IP, formatted once per connection for X-Forwarded-For.
    pub ip: HeaderValue,
}

impl Client {
    /// Describes a client connecting from `peer`.
    pub fn new(peer: SocketAddr) -> Client {
        let ip = HeaderValue::from_str(&peer.ip().to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        Client { ip }
    }
}

/// What is needed to (re)build the upstream request: method, target and
/// the already rewritten headers.
struct Template {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
}

impl Template {
    fn build(&self, body: UpstreamBody) -> Request<UpstreamBody> {
        let mut req = Request::new(body);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.headers_mut() = self.headers.clone();
        req
    }

    /// The first request: takes the headers instead of copying them when
    /// no rebuild can follow.
    fn first(&mut self, body: UpstreamBody, keep: bool) -> Request<UpstreamBody> {
        if keep {
            return self.build(body);
        }
        let mut req = Request::new(body);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = std::mem::take(&mut self.uri);
        *req.headers_mut() = std::mem::take(&mut self.headers);
        req
    }
}

/// How one attempt on one instance ended.
enum Attempt {
    Answered(Response<Incoming>, Sender),
    /// Failed; the request comes back when it was not written.
    Failed {
        request: Option<Request<UpstreamBody>>,
        error: String,
        /// What to hold against the instance, if anything.
        failure: Option<Failure>,
    },
    TimedOut,
}

/// Attempts through hyper's HTTP/1.1 client: the request is rebuilt from
/// the template for a retry once the first copy was sent.
struct HyperExchange<'a> {
    proxy: &'a Proxy,
    service: &'a ServiceEntry,
    template: &'a Template,
    pending: Option<Request<UpstreamBody>>,
    resend_ok: bool,
}

impl attempt::Exchange for HyperExchange<'_> {
    type Answer = (Response<Incoming>, Sender);

    async fn attempt(&mut self, instance: &InstanceState) -> Outcome<Self::Answer> {
        let request = match self.pending.take() {
            Some(r) => r,
            None => self.template.build(UpstreamBody::Empty),
        };
        match self
            .proxy
            .attempt(
                self.service,
                instance,
                request,
                self.template,
                self.resend_ok,
            )
            .await
        {
            Attempt::Answered(resp, sender) => {
                let status = resp.status().as_u16();
                Outcome::Answered((resp, sender), status)
            }
            Attempt::TimedOut => Outcome::TimedOut,
            Attempt::Failed {
                request,
                error,
                failure,
            } => {
                let retry = request.is_some() || self.resend_ok;
                self.pending = request;
                Outcome::Failed {
                    error,
                    failure,
                    retry,
                }
            }
        }
    }
}

impl Proxy {
    /// Answers one client request: the instance's response, or the
    /// proxy's own error response.
    pub async fn handle(&self, req: Request<Incoming>, client: &Client) -> Response<ProxyBody> {
        let mut trail = self.settings.debug_header.then(String::new);
        let mut resp = match self.forward(req, client, &mut trail).await {
            Ok(resp) => resp,
            Err(e) => {
                tracing::debug!(error = %e, "request failed");
                e.into_response()
            }
        };
        if let Some(value) = trail
            .filter(|t| !t.is_empty())
            .and_then(|t| HeaderValue::from_str(&t).ok())
        {
            resp.headers_mut().insert(DEBUG_HEADER.clone(), value);
        }
        if self.settings.snapshot_header {
            if let Ok(v) = HeaderValue::from_str(&self.snapshot_value()) {
                resp.headers_mut().insert(SNAPSHOT_HEADER.clone(), v);
            }
        }
        resp
    }

    /// The `x-wayfinder-snapshot` value: current snapshot version and age.
    pub(crate) fn snapshot_value(&self) -> String {
        let snap = self.registry.load();
        let age = std::time::SystemTime::now()
            .duration_since(snap.built_at())
            .map_or(0, |d| d.as_millis());
        format!("{}; age_ms={age}", snap.version())
    }

    async fn forward(
        &self,
        req: Request<Incoming>,
        client: &Client,
        trail: &mut Option<String>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let (mut parts, body) = req.into_parts();
        let size = head_size(&parts);
        if size > self.settings.max_header_bytes {
            return Err(ProxyError::HeadersTooLarge {
                size,
                limit: self.settings.max_header_bytes,
            });
        }
        let upgrade = match parts.version {
            Version::HTTP_11 => headers::upgrade_request(&parts.headers).cloned(),
            _ => None,
        };
        let client_upgrade = upgrade
            .as_ref()
            .and_then(|_| parts.extensions.remove::<OnUpgrade>());
        let host = request_host(&parts)?;
        let (service, path_and_query) = {
            let snapshot = self.registry.load();
            let target = snapshot
                .router()
                .route(host, parts.uri.path())
                .ok_or_else(|| ProxyError::NoRoute {
                    host: host.unwrap_or("").to_owned(),
                    path: parts.uri.path().to_owned(),
                })?;
            let service = snapshot
                .service(&target.service)
                .ok_or_else(|| ProxyError::UnknownService(target.service.clone().into_owned()))?
                .clone();
            let pq = parts.uri.path_and_query().map_or("/", PathAndQuery::as_str);
            let pq = match strip_path(pq, target.strip) {
                std::borrow::Cow::Borrowed(_) if target.strip == 0 => {
                    parts.uri.path_and_query().cloned()
                }
                stripped => PathAndQuery::try_from(&*stripped).ok(),
            };
            (service, pq)
        };
        let mut uri = http::uri::Parts::default();
        uri.path_and_query = Some(path_and_query.unwrap_or_else(|| PathAndQuery::from_static("/")));
        let uri =
            Uri::from_parts(uri).map_err(|_| ProxyError::BadRequest("unusable request target"))?;

        let resend_ok = upgrade.is_none()
            && body.is_end_stream()
            && attempt::is_idempotent(parts.method.as_str());
        let via = match parts.version {
            Version::HTTP_2 => &self.settings.via_h2,
            Version::HTTP_10 => &self.settings.via_h10,
            _ => &self.settings.via_h1,
        };
        let host_value = match parts.uri.authority() {
            Some(a) => HeaderValue::from_str(a.as_str()).ok(),
            None => parts.headers.get(header::HOST).cloned(),
        };
        let fwd = Forwarding {
            client_ip: &client.ip,
            via,
            host: host_value,
            upgrade,
        };
        headers::rewrite_request_headers(&mut parts.headers, &fwd);
        let mut template = Template {
            method: parts.method,
            uri,
            headers: parts.headers,
        };
        let pending = template.first(UpstreamBody::client(body), resend_ok);
        let attempts = async {
            let mut exchange = HyperExchange {
                proxy: self,
                service: &service,
                template: &template,
                pending: Some(pending),
                resend_ok,
            };
            let ((resp, sender), guard) = attempt::run(&service, &mut exchange, trail).await?;
            self.relay(resp, guard, sender, client_upgrade, &service)
        };
        match service.policy().timeouts.request {
            None => attempts.await,
            Some(deadline) => match tokio::time::timeout(deadline, attempts).await {
                Ok(result) => result,
                Err(_) => Err(ProxyError::Deadline {
                    service: service.name().clone(),
                    timeout: deadline,
                }),
            },
        }
    }

    /// One attempt on `instance`: a pooled connection if there is one
    /// (falling back to a fresh one if it turns out stale), else a new one.
    async fn attempt(
        &self,
        service: &ServiceEntry,
        instance: &InstanceState,
        mut request: Request<UpstreamBody>,
        template: &Template,
        resend_ok: bool,
    ) -> Attempt {
        let timeouts = &service.policy().timeouts;
        if let Some(sender) = instance.idle.take(self.settings.upstream_idle).await {
            match send(sender, request, timeouts.response_header).await {
                Attempt::Failed {
                    request: Some(r), ..
                } => request = r,
                Attempt::Failed { request: None, .. } if resend_ok => {
                    request = template.build(UpstreamBody::Empty)
                }
                // Written on a pooled connection and not safe to repeat: the
                // instance may have acted on it; report, do not blame it.
                Attempt::Failed {
                    request: None,
                    error,
                    ..
                } => {
                    return Attempt::Failed {
                        request: None,
                        error,
                        failure: None,
                    }
                }
                done => return done,
            }
        }
        match upstream::connect(instance.addr(), timeouts.connect).await {
            Ok(sender) => send(sender, request, timeouts.response_header).await,
            Err(e) => Attempt::Failed {
                request: Some(request),
                error: e.to_string(),
                failure: Some(Failure::Connect),
            },
        }
    }

    /// Turns the instance's response into the client's response.
    fn relay(
        &self,
        resp: Response<Incoming>,
        guard: InFlightGuard,
        sender: Sender,
        client_upgrade: Option<OnUpgrade>,
        service: &Arc<ServiceEntry>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let (mut parts, body) = resp.into_parts();
        let switching = parts.status == StatusCode::SWITCHING_PROTOCOLS;
        headers::clean_response_headers(&mut parts.headers, switching);
        parts.version = Version::HTTP_11;
        if !switching {
            let body = ProxyBody::Upstream(TrackedBody::new(body, guard, Some(sender)));
            return Ok(Response::from_parts(parts, body));
        }
        let (Some(client_up), Some(upstream_up)) =
            (client_upgrade, parts.extensions.remove::<OnUpgrade>())
        else {
            return Err(ProxyError::BadResponse {
                service: service.name().clone(),
                addr: guard.instance().addr(),
                detail: "switched protocols without being asked to",
            });
        };
        tokio::spawn(tunnel(client_up, upstream_up, guard, sender));
        Ok(Response::from_parts(parts, ProxyBody::empty()))
    }
}

/// Sends `request` on `sender` and waits for the response head. The
/// response-header timeout starts once the request body has been sent, so a
/// slow upload is not cut short by it.
async fn send(mut sender: Sender, request: Request<UpstreamBody>, timeout: Duration) -> Attempt {
    let progress = request.body().progress();
    let sent = sender.try_send_request(request);
    let timer = async {
        if let Some(p) = progress {
            p.finished().await;
        }
        tokio::time::sleep(timeout).await;
    };
    let outcome = tokio::select! {
        r = sent => Some(r),
        () = timer => None,
    };
    match outcome {
        Some(Ok(resp)) => Attempt::Answered(resp, sender),
        Some(Err(mut e)) => {
            let request = e.take_message();
            // Not written: nothing reached the instance, so it counts as a
            // connect-class failure; written: reset before a response.
            let failure = if request.is_some() {
                Failure::Connect
            } else {
                Failure::Reset
            };
            Attempt::Failed {
                request,
                error: e.into_error().to_string(),
                failure: Some(failure),
            }
        }
        None => Attempt::TimedOut,
    }
}

/// Relays bytes both ways once client and instance have both switched
/// protocols. The request stays counted in flight while the tunnel is open.
async fn tunnel(client: OnUpgrade, upstream: OnUpgrade, guard: InFlightGuard, sender: Sender) {
    let addr = guard.instance().addr();
    let (client, upstream) = match tokio::join!(client, upstream) {
        (Ok(c), Ok(u)) => (c, u),
        (c, u) => {
            tracing::debug!(instance = %addr, client_ok = c.is_ok(), upstream_ok = u.is_ok(), "upgrade did not complete");
            return;
        }
    };
    drop(sender);
    let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
    match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        Ok((up, down)) => tracing::debug!(instance = %addr, up, down, "tunnel closed"),
        Err(e) => tracing::debug!(instance = %addr, error = %e, "tunnel ended with an error"),
    }
    drop(guard);
}

/// The host a request is for: the URI's authority (HTTP/2, absolute-form)
/// or the Host header. HTTP/1.1 requires one; HTTP/1.0 may go without.
fn request_host(parts: &Parts) -> Result<Option<&str>, ProxyError> {
    if let Some(authority) = parts.uri.authority() {
        return Ok(Some(authority.as_str()));
    }
    match parts.headers.get(header::HOST) {
        Some(v) => v
            .to_str()
            .ok()
            .filter(|h| !h.is_empty())
            .map(Some)
            .ok_or(ProxyError::BadRequest("unusable Host header")),
        None if parts.version == Version::HTTP_10 => Ok(None),
        None => Err(ProxyError::BadRequest("missing Host header")),
    }
}

/// Size of the request head as received: request line plus header lines.
fn head_size(parts: &Parts) -> usize {
    let line = parts.method.as_str().len()
        + parts.uri.path_and_query().map_or(1, |p| p.as_str().len())
        + 12;
    parts
        .headers
        .iter()
        .fold(line, |n, (k, v)| n + k.as_str().len() + v.len() + 4)
}
