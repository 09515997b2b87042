//! The hyper codec: forwarding one request that hyper parsed (HTTP/2,
//! HTTP/1.0, upgrades, `Expect`, streamed bodies, and everything when the
//! fast path is off). The request is checked and rewritten by
//! [`super::policy`] and routed by [`super::route`] exactly as on the fast
//! path; an instance is tried through the shared attempt loop; the answer
//! is checked by the same response policy.
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

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderName;
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Method, Request, Response, Uri, Version};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;

use super::attempt::{self, Outcome};
use super::body::{ProxyBody, TrackedBody, UpstreamBody};
use super::error::{ProxyError, BAD_BODY};
use super::grpc;
use super::h1::general::{self, Dropped, MapHead, RawBody, RawExchange};
use super::headers::{self, MapWriter};
use super::observe::{self, Pending};
use super::policy::request::{self, RequestView};
use super::policy::response::{self, Asked, Kind, ResponsePlan, ResponseView};
use super::tunnel::{self, Tunnel};
use super::upstream::{self, Sender};
use super::{Client, Proxy};
use crate::balance::Choice;
use crate::config::{Protocol, Upstream};
use crate::health::passive::Failure;
use crate::registry::stats;
use crate::registry::{InFlightGuard, InstanceState, ServiceEntry};

/// Response header listing the attempts behind a response, when
/// `proxy.debug_header` is on.
pub static DEBUG_HEADER: HeaderName = HeaderName::from_static("x-wayfinder-debug");

/// Response header with the registry snapshot version and age, when
/// `proxy.snapshot_header` is on: `x-wayfinder-snapshot: 12; age_ms=850`.
pub static SNAPSHOT_HEADER: HeaderName = HeaderName::from_static("x-wayfinder-snapshot");

/// What is needed to (re)build the upstream request: method, target, and
/// the received header lines with the policy's plan for them. The first
/// request gets the headers made once in [`forward`](Proxy::forward); a
/// copy for a retry or a hedge makes them again the same way, so the common
/// case (one attempt) copies no header map.
struct Template<'t> {
    method: Method,
    uri: Uri,
    /// The received lines, as the policy indexed them.
    fields: &'t [(HeaderName, HeaderValue)],
    plan: &'t request::RequestPlan<'t>,
    hop: &'t request::Hop<'t>,
    /// This hop's `Via` value.
    via: &'t HeaderValue,
    /// The protocol of an upgrade the route allows.
    upgrade_to: Option<&'t [u8]>,
    /// The request has no body, so it can be rebuilt whole.
    bodyless: bool,
    /// The client sent `TE: trailers` (passed on to HTTP/2 instances).
    te_trailers: bool,
    /// The request asks for a protocol upgrade.
    upgrade: bool,
    /// The `:protocol` of an extended CONNECT sent to an HTTP/2 instance.
    connect: Option<hyper::ext::Protocol>,
    /// The forwarded lines as a tunnel rewrote them, for a copy after the
    /// first (made again from `fields` and `plan` otherwise).
    kept: Option<HeaderMap>,
}

impl Template<'_> {
    /// The forwarded header lines: the kept ones, then the policy's
    /// additions.
    fn headers(&self) -> HeaderMap {
        match &self.kept {
            Some(kept) => kept.clone(),
            None => self.headers_into(HeaderMap::new()),
        }
    }

    /// [`headers`](Self::headers), written into `map` (its memory reused).
    fn headers_into(&self, mut map: HeaderMap) -> HeaderMap {
        headers::keep_into(&mut map, self.fields, self.plan.skip);
        self.plan.write_additions(
            self.fields,
            self.hop,
            self.upgrade_to,
            &mut MapWriter {
                map: &mut map,
                h2: false,
                via: Some(self.via),
            },
        );
        map
    }

    fn build(&self, body: UpstreamBody) -> Request<UpstreamBody> {
        let mut req = Request::new(body);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.headers_mut() = self.headers();
        if let Some(p) = &self.connect {
            req.extensions_mut().insert(p.clone());
        }
        req
    }

    /// The first request, with `headers` made from the template; takes
    /// the target instead of copying it when no rebuild can follow.
    fn first(
        &mut self,
        body: UpstreamBody,
        headers: HeaderMap,
        keep: bool,
    ) -> Request<UpstreamBody> {
        let mut req = Request::new(body);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = if keep {
            self.uri.clone()
        } else {
            std::mem::take(&mut self.uri)
        };
        *req.headers_mut() = headers;
        if let Some(p) = &self.connect {
            req.extensions_mut().insert(p.clone());
        }
        req
    }
}

/// An instance's answer, checked: the response, its connection, the
/// policy's plan for it, its header lines, and whether it opens a tunnel.
type Answered = (
    Response<Incoming>,
    Sender,
    ResponsePlan,
    Vec<(HeaderName, HeaderValue)>,
    // The answer opens the tunnel the request asked for.
    bool,
);

/// How one attempt on one instance ended. Lives on the stack for one
/// attempt: boxing the request would only add an allocation.
#[allow(clippy::large_enum_variant)]
enum Attempt {
    Answered(Response<Incoming>, Sender),
    /// An HTTP/2 instance did not process the stream (REFUSED_STREAM, or
    /// a graceful GOAWAY): safe to repeat when it can be rebuilt; `replay`
    /// is its body again when it was kept.
    Refused {
        error: String,
        replay: Option<UpstreamBody>,
    },
    /// Failed; the request comes back when it was not written.
    Failed {
        request: Option<Request<UpstreamBody>>,
        error: String,
        /// What to hold against the instance, if anything.
        failure: Option<Failure>,
    },
    TimedOut,
    /// The client stopped sending its body.
    ClientTimedOut,
    /// The client's body was malformed or cut short.
    ClientBodyFailed,
    /// The instance's response head could not be parsed.
    BadHead(&'static str),
}

/// Attempts through hyper's HTTP/1.1 client: the request is rebuilt from
/// the template for a retry once the first copy was sent.
struct HyperExchange<'a> {
    proxy: &'a Proxy,
    service: &'a ServiceEntry,
    template: &'a Template<'a>,
    pending: Option<Request<UpstreamBody>>,
    resend_ok: bool,
    asked: Asked<'a>,
    /// Why the client's side failed, when it did (its body timed out or
    /// was malformed): answered as such, held against no instance.
    client_failed: Option<ProxyError>,
    /// After how long the request is hedged, when it may be.
    hedge_after: Option<Duration>,
    /// The tunnel the request asks for, if any.
    tunnel: Option<&'a Tunnel>,
}

impl attempt::Exchange for HyperExchange<'_> {
    type Answer = Answered;

    fn hedge(&self) -> Option<(Duration, Self)> {
        // Hedged requests have no body: the twin builds its copy from the
        // template.
        let after = self.hedge_after?;
        let twin = HyperExchange {
            proxy: self.proxy,
            service: self.service,
            template: self.template,
            pending: None,
            resend_ok: self.resend_ok,
            asked: self.asked,
            client_failed: None,
            hedge_after: None,
            tunnel: self.tunnel,
        };
        Some((after, twin))
    }

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
            Attempt::Answered(mut resp, sender) => {
                // Moved out (`relay` refills the emptied map), unless the
                // tunnel reads the answer's map below.
                let fields = if self.tunnel.is_some() {
                    headers::fields(resp.headers())
                } else {
                    headers::drain(resp.headers_mut())
                };
                let view = ResponseView {
                    status: resp.status().as_u16(),
                    minor: u8::from(resp.version() != Version::HTTP_10),
                    fields: &fields[..],
                };
                let opened = response::plan(&view, self.asked).and_then(|plan| {
                    let opens = match self.tunnel {
                        Some(t) => t.opens(resp.status(), resp.headers())?,
                        None => false,
                    };
                    Ok((plan, opens))
                });
                match opened {
                    Ok((plan, opens)) => {
                        let status = resp.status().as_u16();
                        Outcome::Answered((resp, sender, plan, fields, opens), status)
                    }
                    Err(detail) => Outcome::BadResponse(detail),
                }
            }
            Attempt::TimedOut => Outcome::TimedOut,
            Attempt::ClientTimedOut => {
                self.client_failed =
                    Some(ProxyError::ClientTimeout(self.proxy.settings.client_body));
                Outcome::Abandoned
            }
            Attempt::ClientBodyFailed => {
                self.client_failed = Some(ProxyError::BadRequest(BAD_BODY));
                Outcome::Abandoned
            }
            Attempt::BadHead(detail) => Outcome::BadResponse(detail),
            // Turned into `Failed` by `Proxy::attempt`.
            Attempt::Refused { error, .. } => Outcome::Failed {
                error,
                failure: None,
                retry: false,
            },
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
        self.handle_observed(req, client).await.0
    }

    /// [`Proxy::handle`], and what the metrics and the access log need
    /// once the response body has gone out.
    pub(crate) async fn handle_observed(
        &self,
        req: Request<Incoming>,
        client: &Client,
    ) -> (Response<ProxyBody>, Pending) {
        let mut rec = Pending {
            started: observe::start(self),
            protocol: match req.version() {
                Version::HTTP_10 => "HTTP/1.0",
                Version::HTTP_2 => "HTTP/2",
                _ => "HTTP/1.1",
            },
            method_index: stats::method_index(req.method().as_str()),
            ..Pending::default()
        };
        if self.settings.access_log.is_some() {
            rec.logged = format!("{} {}", req.method(), request_target(req.uri()));
            rec.method_len = req.method().as_str().len();
        }
        let mut trail = self.settings.debug_header.then(String::new);
        let grpc = grpc::is_grpc(req.headers());
        let grpc_deadline = grpc.then(|| grpc::timeout(req.headers())).flatten();
        let mut resp = match self
            .forward(req, client, &mut trail, grpc_deadline, &mut rec)
            .await
        {
            Ok(resp) => resp,
            Err(e) => {
                tracing::debug!(error = %e, "request failed");
                rec.instance = None;
                if grpc {
                    grpc::error_response(&e)
                } else {
                    e.into_response()
                }
            }
        };
        rec.status = resp.status().as_u16();
        if let (Some(name), Some(id)) = (self.settings.request_id, &rec.request_id) {
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(name),
                HeaderValue::from_bytes(id.as_bytes()),
            ) {
                resp.headers_mut().insert(n, v);
            }
        }
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
        (resp, rec)
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
        deadline: Option<Duration>,
        rec: &mut Pending,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let (mut parts, body) = req.into_parts();
        let method = parts.method.clone();
        let protocol = parts.extensions.remove::<hyper::ext::Protocol>();
        let target = request_target(&parts.uri);
        let size = head_size(&parts, &target);
        if size > self.settings.max_header_bytes {
            return Err(ProxyError::HeadersTooLarge {
                size,
                limit: self.settings.max_header_bytes,
            });
        }
        let (version, via) = match parts.version {
            Version::HTTP_10 => (request::Version::H10, &self.settings.via_h10),
            Version::HTTP_11 => (request::Version::H11, &self.settings.via_h1),
            Version::HTTP_2 => (
                request::Version::H2 {
                    has_body: !body.is_end_stream(),
                },
                &self.settings.via_h2,
            ),
            _ => return Err(ProxyError::BadRequest("unsupported HTTP version")),
        };
        let h2_client = parts.version == Version::HTTP_2;
        let hop = client.hop(&self.settings, via);
        // The lines move out of the received map, which is reused for the
        // forwarded ones.
        let fields = headers::drain(&mut parts.headers);
        let view = RequestView {
            method: method.as_str(),
            target: &target,
            version,
            fields: &fields[..],
            protocol: protocol.as_ref().map(AsRef::as_ref),
        };
        let plan = request::plan(&view, &hop)?;
        rec.request_id = plan.request_id;
        rec.bytes_in = size as u64 + body.size_hint().exact().unwrap_or(0);
        let routed = self.route(
            &plan.target,
            plan.upgrade,
            client.is_tls(),
            &fields[..],
            &client.ip,
        )?;
        let service = routed.service;
        rec.service = Some(service.clone());
        if protocol.is_some() && routed.upgrade.is_none() {
            // An extended CONNECT the route does not allow cannot be sent
            // on as a plain request, as a refused upgrade is.
            return Err(ProxyError::UpgradeNotAllowed {
                protocol: String::from_utf8_lossy(plan.upgrade.unwrap_or_default()).into_owned(),
            });
        }
        let h2_instance = service.policy().upstream.is_h2_only();
        let client_form = if h2_client {
            tunnel::Form::Connect
        } else {
            tunnel::Form::Upgrade
        };
        // The policy passed only token protocols, which always make a
        // header value: never forwarded as an upgrade without its tunnel.
        let mut tunnel = routed
            .upgrade
            .map(|p| {
                Tunnel::new(client_form, p, h2_instance)
                    .ok_or(ProxyError::BadRequest("bad upgrade protocol"))
            })
            .transpose()?;
        if tunnel
            .as_ref()
            .is_some_and(|t| t.instance == tunnel::Form::Connect)
            && !body.is_end_stream()
        {
            // An HTTP/2 CONNECT carries no request body (RFC 8441 section 4).
            return Err(ProxyError::BadRequest("upgrade request with a body"));
        }
        let path = plan.target.forward(routed.strip);
        let bodyless = routed.upgrade.is_none() && body.is_end_stream();
        let resend_ok = bodyless && attempt::is_idempotent(method.as_str());
        let hedge_after = super::traffic::hedge_after(&service, method.as_str(), bodyless);
        if bodyless && hedge_after.is_none() && service.policy().upstream.is_plain_http1() {
            // To a plain HTTP/1.1 instance, on a raw socket as the fast
            // path does (an upgrade, a body or a hedge stays with hyper).
            let mut head = Vec::with_capacity(size + 256);
            general::request_head(method.as_str(), &path, &fields, &plan, &hop, &mut head);
            let sink = MapHead {
                map: Some(std::mem::take(&mut parts.headers)),
                h2: h2_client,
                trailers: h2_client || plan.accepts_trailers,
                asked: Asked {
                    head: method == Method::HEAD,
                    upgrade: None,
                },
            };
            let raw = Raw {
                service: &service,
                choice: &routed.choice,
                request: &head,
                resendable: resend_ok,
            };
            return self.forward_raw(raw, sink, trail, deadline, rec).await;
        }
        let uri =
            Uri::try_from(&*path).map_err(|_| ProxyError::BadRequest("unusable request target"))?;
        let client_upgrade = routed
            .upgrade
            .and_then(|_| parts.extensions.remove::<OnUpgrade>());
        let mut template = Template {
            method: method.clone(),
            uri,
            fields: &fields[..],
            plan: &plan,
            hop: &hop,
            via,
            upgrade_to: routed.upgrade,
            bodyless,
            te_trailers: plan.accepts_trailers,
            upgrade: routed.upgrade.is_some(),
            connect: None,
            kept: None,
        };
        // A body sent to an HTTP/2 instance is kept (up to a limit) in case
        // the instance refuses the stream unprocessed.
        let replayable = service.policy().upstream.may_use_h2();
        let body = UpstreamBody::client(body, self.settings.client_body, replayable);
        let mut upstream_headers = template.headers_into(std::mem::take(&mut parts.headers));
        if let Some(t) = tunnel.as_mut() {
            // The tunnel rewrites the request for the instance's form; a
            // retry sends the rewritten lines as they are.
            template.connect = t.for_instance(&mut template.method, &mut upstream_headers);
            template.kept = Some(upstream_headers.clone());
        }
        let pending = template.first(body, upstream_headers, resend_ok || replayable);
        let mut exchange = HyperExchange {
            proxy: self,
            service: &service,
            template: &template,
            pending: Some(pending),
            resend_ok,
            asked: Asked {
                head: template.method == Method::HEAD,
                upgrade: routed.upgrade,
            },
            client_failed: None,
            hedge_after,
            tunnel: tunnel.as_ref(),
        };
        let result = attempt::run_with_deadline(
            &service,
            &routed.choice,
            &mut exchange,
            trail,
            deadline,
            &mut rec.tally,
        )
        .await;
        if let Some(e) = exchange.client_failed.take() {
            return Err(e);
        }
        let ((resp, sender, plan, fields, opens), guard) = result?;
        rec.instance = Some(guard.instance().clone());
        let asked = exchange.asked;
        let sticky =
            super::traffic::sticky_cookie(&service, &routed.choice, guard.instance().addr());
        let opened = match (opens, client_upgrade, tunnel.as_ref()) {
            (false, ..) => None,
            (true, Some(client_up), Some(t)) => Some((client_up, t)),
            (true, ..) => {
                return Err(ProxyError::BadResponse {
                    service: Arc::clone(&guard.instance().key().service),
                    addr: guard.instance().addr(),
                    detail: "switched protocols without being asked to",
                })
            }
        };
        let mut resp = self.relay(
            resp,
            guard,
            sender,
            service.policy().timeouts.response_body,
            (plan, fields),
            opened,
            asked,
            h2_client,
        )?;
        if let Some(v) = sticky.and_then(|v| HeaderValue::from_str(&v).ok()) {
            resp.headers_mut().append(http::header::SET_COOKIE, v);
        }
        Ok(resp)
    }

    /// Forwards a bodyless request to a plain HTTP/1.1 service over raw
    /// pooled sockets ([`general`]): the same attempt loop, response
    /// policy and pools as the fast path, with hyper's server on the
    /// client's side.
    async fn forward_raw(
        &self,
        raw: Raw<'_>,
        sink: MapHead<'_>,
        trail: &mut Option<String>,
        deadline: Option<Duration>,
        rec: &mut Pending,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let timer = std::pin::pin!(tokio::time::sleep_until(tokio::time::Instant::now()));
        let mut exchange = RawExchange {
            proxy: self,
            service: raw.service,
            request: raw.request,
            timer,
            resendable: raw.resendable,
            asked: sink.asked,
            watch: Dropped,
            sink,
            client_gone: false,
        };
        let ((conn, mut mapped), guard) = attempt::run_with_deadline(
            raw.service,
            raw.choice,
            &mut exchange,
            trail,
            deadline,
            &mut rec.tally,
        )
        .await?;
        rec.instance = Some(guard.instance().clone());
        let sticky =
            super::traffic::sticky_cookie(raw.service, raw.choice, guard.instance().addr());
        let grpc = grpc::is_grpc(&mapped.parts.headers);
        let instance = guard.instance().clone();
        let pause = raw.service.policy().timeouts.response_body;
        let body = RawBody::new(conn, guard, &mut mapped, grpc, pause).map_err(|detail| {
            tracing::debug!(service = %raw.service.name(), instance = %instance.addr(), detail, "bad response body");
            rec.instance = None;
            ProxyError::BadResponse {
                service: raw.service.name().clone(),
                addr: instance.addr(),
                detail,
            }
        })?;
        let mut resp = Response::from_parts(mapped.parts, ProxyBody::Raw(body));
        if let Some(v) = sticky.and_then(|v| HeaderValue::from_str(&v).ok()) {
            resp.headers_mut().append(http::header::SET_COOKIE, v);
        }
        Ok(resp)
    }

    /// One attempt on `instance`: a kept connection (or HTTP/2 stream) if
    /// there is one (falling back to a fresh one if it turns out stale),
    /// else a new one.
    async fn attempt(
        &self,
        service: &ServiceEntry,
        instance: &InstanceState,
        mut request: Request<UpstreamBody>,
        template: &Template<'_>,
        resend_ok: bool,
    ) -> Attempt {
        let policy = service.policy();
        let timeouts = &policy.timeouts;
        let http1_only;
        let upstream =
            if template.upgrade && template.connect.is_none() && policy.upstream.tls.is_some() {
                // An upgrade needs an HTTP/1.1 connection of its own.
                http1_only = Upstream {
                    protocol: Protocol::Http1,
                    protocol_written: true,
                    tls: policy.upstream.tls.clone(),
                };
                &http1_only
            } else {
                &policy.upstream
            };
        let dial = upstream::Dial {
            upstream,
            connect: timeouts.connect,
            max_idle: self.settings.max_idle,
            max_streams: self.settings.h2_streams,
            max_conns: self.settings.h2_connections,
            keepalive: self.settings.h2_keepalive,
        };
        let wire = Wire {
            timeout: timeouts.response_header,
            tls: upstream.tls.is_some(),
            te_trailers: template.te_trailers,
            extended_connect: template.connect.is_some().then_some(timeouts.connect),
        };
        if let Some(sender) = upstream::reuse(instance, &dial, self.settings.upstream_idle) {
            match send(sender, request, &wire).await {
                Attempt::Failed {
                    request: Some(r), ..
                } => request = r,
                Attempt::Failed { request: None, .. } if resend_ok => {
                    request = template.build(UpstreamBody::Empty)
                }
                // Refused unprocessed on a kept connection (the instance
                // is rotating it): again on a fresh one.
                Attempt::Refused { replay, error } => match rebuild(template, replay) {
                    Some(r) => request = r,
                    None => {
                        return Attempt::Failed {
                            request: None,
                            error,
                            failure: None,
                        }
                    }
                },
                // Written on a kept connection and not safe to repeat: the
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
        match upstream::open(instance, &dial).await {
            Ok(sender) => match send(sender, request, &wire).await {
                // Not processed: another instance may take it when it can
                // be rebuilt. A fresh connection that takes no stream is an
                // instance not taking work: held against it as a failed
                // connect.
                Attempt::Refused { error, replay } => Attempt::Failed {
                    request: rebuild(template, replay),
                    error,
                    failure: Some(Failure::Connect),
                },
                done => done,
            },
            Err(e) => Attempt::Failed {
                request: Some(request),
                error: e.to_string(),
                failure: Some(Failure::Connect),
            },
        }
    }

    /// Turns the instance's checked response into the client's response;
    /// `opened`: the answer opens the tunnel the client asked for (the
    /// client's side of it, and the tunnel's forms).
    #[allow(clippy::too_many_arguments)]
    fn relay(
        &self,
        resp: Response<Incoming>,
        guard: InFlightGuard,
        sender: Sender,
        pause: Duration,
        (plan, fields): (ResponsePlan, Vec<(HeaderName, HeaderValue)>),
        opened: Option<(OnUpgrade, &Tunnel)>,
        asked: Asked<'_>,
        h2_client: bool,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let (mut parts, body) = resp.into_parts();
        // The answer's own map, emptied by `headers::drain`, takes the
        // forwarded lines.
        let mut out = std::mem::take(&mut parts.headers);
        headers::keep_into(&mut out, &fields, plan.skip);
        if opened.is_none() {
            plan.write_additions(
                asked.upgrade,
                &mut MapWriter {
                    map: &mut out,
                    h2: h2_client,
                    via: None,
                },
            );
        }
        parts.headers = out;
        parts.version = Version::HTTP_11;
        let Some((client_up, tunnel)) = opened else {
            // A connection the response policy says cannot carry another
            // request (HTTP/1.0 with Transfer-Encoding, a 204 announcing a
            // body, ...) is closed with the body, never pooled.
            let sender = plan.reusable.then_some(sender);
            let grpc = grpc::is_grpc(&parts.headers);
            let body = ProxyBody::Upstream(TrackedBody::new(body, guard, sender, grpc, pause));
            return Ok(Response::from_parts(parts, body));
        };
        let Some(upstream_up) = parts.extensions.remove::<OnUpgrade>() else {
            return Err(ProxyError::BadResponse {
                service: Arc::clone(&guard.instance().key().service),
                addr: guard.instance().addr(),
                detail: "switched protocols without being asked to",
            });
        };
        tunnel.for_client(&mut parts.status, &mut parts.headers);
        if plan.kind == Kind::Switching && tunnel.client == tunnel::Form::Upgrade {
            plan.write_additions(
                asked.upgrade,
                &mut MapWriter {
                    map: &mut parts.headers,
                    h2: false,
                    via: None,
                },
            );
        }
        tokio::spawn(tunnel::relay(client_up, upstream_up, guard, sender));
        Ok(Response::from_parts(parts, ProxyBody::empty()))
    }
}

/// The request target as received: the origin-form path and query, `*`,
/// or the whole URI for absolute-form and HTTP/2 requests (whose
/// `:authority` makes them absolute).
fn request_target(uri: &Uri) -> Cow<'_, str> {
    if let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) {
        // What `Display` writes, without the formatting machinery.
        let path = uri.path_and_query().map_or("", |pq| pq.as_str());
        let mut s = String::with_capacity(scheme.len() + 3 + authority.as_str().len() + path.len());
        s.push_str(scheme);
        s.push_str("://");
        s.push_str(authority.as_str());
        s.push_str(path);
        return Cow::Owned(s);
    }
    if uri.scheme().is_some() || uri.path_and_query().is_none() {
        return Cow::Owned(uri.to_string());
    }
    Cow::Borrowed(uri.path_and_query().map_or("/", |pq| pq.as_str()))
}

/// The request again after an instance refused it unprocessed: bodyless,
/// or with its body kept whole.
fn rebuild(template: &Template<'_>, replay: Option<UpstreamBody>) -> Option<Request<UpstreamBody>> {
    if template.bodyless {
        return Some(template.build(UpstreamBody::Empty));
    }
    replay.map(|body| template.build(body))
}

/// A request for [`Proxy::forward_raw`]: where it goes and its bytes.
struct Raw<'a> {
    service: &'a Arc<ServiceEntry>,
    choice: &'a Choice,
    request: &'a [u8],
    /// It may be repeated after it was written.
    resendable: bool,
}

/// How a request is sent on its connection.
struct Wire {
    /// The response-header timeout.
    timeout: Duration,
    /// The connection is TLS (`https` for HTTP/2's `:scheme`).
    tls: bool,
    /// Pass `TE: trailers` on (HTTP/2 only).
    te_trailers: bool,
    /// The request is an extended CONNECT: sent only on a connection whose
    /// instance offered it, waiting this long for its settings.
    extended_connect: Option<Duration>,
}

/// Sends `request` on `sender` and waits for the response head. The
/// response-header timeout starts once the request body has been sent, so a
/// slow upload is not cut short by it; while the body is being sent, a
/// whole timeout in which the connection took none of it, without waiting
/// on the client, ends the attempt too (a request queued behind an
/// instance's stream limit, or an instance that stopped reading).
async fn send(mut sender: Sender, mut request: Request<UpstreamBody>, wire: &Wire) -> Attempt {
    if let Some(wait) = wire.extended_connect {
        if !sender.extended_connect(wait).await {
            return Attempt::Failed {
                request: Some(request),
                error: "the instance does not offer extended CONNECT (RFC 8441)".to_owned(),
                failure: None,
            };
        }
    }
    let progress = request.body().progress();
    if wire.te_trailers && sender.is_h2() {
        request
            .headers_mut()
            .insert(http::header::TE, HeaderValue::from_static("trailers"));
    }
    let timeout = wire.timeout;
    let sent = sender.send(request, wire.tls);
    let timer = async {
        if let Some(p) = &progress {
            let mut seen = p.moves();
            loop {
                tokio::select! {
                    () = p.finished() => break,
                    () = tokio::time::sleep(timeout) => {}
                }
                let now = p.moves();
                if now == seen && !p.awaiting_client() {
                    return;
                }
                seen = now;
            }
        }
        tokio::time::sleep(timeout).await;
    };
    let outcome = tokio::select! {
        r = sent => Some(r),
        () = timer => None,
    };
    if let Some(p) = &progress {
        if p.client_timed_out() {
            return Attempt::ClientTimedOut;
        }
        if p.client_failed() {
            return Attempt::ClientBodyFailed;
        }
    }
    match outcome {
        Some(Ok(resp)) => Attempt::Answered(resp, sender),
        Some(Err(e)) if e.error().is_parse() || e.error().is_parse_status() => {
            // The instance answered with a head hyper cannot read: a bad
            // response (502, not retried), as on the fast path.
            Attempt::BadHead(parse_detail(e.error()))
        }
        Some(Err(mut e)) => {
            tracing::debug!(error = ?e.error(), "upstream send failed");
            let request = e.take_message();
            if request.is_none() && upstream::unprocessed(e.error()) {
                // The body's task may still be ending: its end makes the
                // kept copy available.
                let replay = match &progress {
                    Some(p) => {
                        let _ = tokio::time::timeout(REPLAY_WAIT, p.finished()).await;
                        p.replay()
                    }
                    None => None,
                };
                tracing::debug!(kept = replay.is_some(), "stream refused unprocessed");
                return Attempt::Refused {
                    error: e.into_error().to_string(),
                    replay,
                };
            }
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

/// Longest wait for a refused request's body to finish sending (it is
/// being dropped) before giving up on sending it again.
const REPLAY_WAIT: Duration = Duration::from_millis(100);

/// A short description of a response parse error hyper reports.
fn parse_detail(e: &hyper::Error) -> &'static str {
    if e.is_parse_status() {
        "invalid status code"
    } else if e.is_parse_too_large() {
        "response head too large"
    } else {
        "malformed response head"
    }
}

/// Size of the request head as received: the request line, the header
/// lines and the final empty line (as the fast path counts it).
fn head_size(parts: &Parts, target: &str) -> usize {
    let line = parts.method.as_str().len() + 1 + target.len() + 1 + 8 + 2;
    parts
        .headers
        .iter()
        .fold(line + 2, |n, (k, v)| n + k.as_str().len() + 2 + v.len() + 2)
}
