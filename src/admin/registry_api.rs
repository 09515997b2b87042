//! The registration API, client-side discovery queries (with long polls),
//! source status and the operator's drains of any instance
//! (`PUT`/`DELETE /v1/services/{service}/instances/{addr}/drain`). Every
//! input is checked before anything changes: a bad call gets 400 naming the
//! field and leaves the registry as it was.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};

use super::services::{HeldView, InstanceStatus, ProxyHealth};
use super::{json, method_not_allowed, query_param, read_body, text, Admin};
use crate::clock;
use crate::config::check_service_name;
use crate::proxy::ProxyBody;
use crate::registry::registrations::{RegisterRequest, Registration, RegistrationError};
use crate::registry::{DrainError, Health, ServiceEntry, Snapshot};

/// Longest long poll.
const MAX_WAIT: Duration = Duration::from_secs(600);
/// Long poll length when `index` is given without `wait`.
const DEFAULT_WAIT: Duration = Duration::from_secs(60);
/// Shortest and longest TTL a registration may ask for.
const TTL_RANGE: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(86_400));

/// The JSON body of `PUT /v1/registry/{service}/{id}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterBody {
    address: String,
    weight: Option<u32>,
    tags: Option<BTreeMap<String, String>>,
    ttl: Option<String>,
    /// `"healthy"`: the registrant's own check passed, so the instance
    /// starts healthy instead of waiting for the proxy's first check.
    initial_health: Option<String>,
}

/// One instance in a discovery answer.
#[derive(Debug, Serialize)]
struct InstanceInfo {
    id: Option<String>,
    address: SocketAddr,
    weight: u32,
    tags: BTreeMap<String, String>,
    source: String,
    #[serde(flatten)]
    status: InstanceStatus,
    in_flight: usize,
}

/// One service in a discovery answer.
#[derive(Debug, Serialize)]
struct ServiceInfo {
    service: String,
    index: u64,
    instances: Vec<InstanceInfo>,
}

/// `GET /v1/registry`.
#[derive(Debug, Serialize)]
struct RegistryInfo {
    index: u64,
    services: Vec<ServiceInfo>,
}

/// A registration and its live state.
#[derive(Debug, Serialize)]
struct RegistrationInfo {
    #[serde(flatten)]
    registration: Registration,
    /// Its TTL lapsed; listed only while self-preservation holds it.
    expired: bool,
    /// Self-preservation holds back its removal: why, since when.
    held_back: Option<HeldView>,
    in_flight: usize,
    drained: bool,
    /// The proxy's view of its health.
    proxy_health: ProxyHealth,
}

/// `GET /v1/sources` entry.
#[derive(Debug, Serialize)]
struct SourceInfo {
    name: String,
    state: &'static str,
    last_success_ago_s: Option<f64>,
    last_error: Option<String>,
    last_error_ago_s: Option<f64>,
    instances: usize,
    /// `"service address"` of each held-back removal.
    held_back: Vec<String>,
    /// The same, with why and since when.
    held: Vec<HeldEntry>,
}

/// A held-back removal in `GET /v1/sources`.
#[derive(Debug, Serialize)]
struct HeldEntry {
    service: String,
    address: SocketAddr,
    id: Option<String>,
    #[serde(flatten)]
    held: HeldView,
}

impl Admin {
    pub(super) async fn registry_call(
        &self,
        req: Request<Incoming>,
        segs: &[&str],
    ) -> Response<ProxyBody> {
        let method = req.method().clone();
        match (&method, segs) {
            (&Method::GET, ["v1", "sources"]) => self.sources(),
            (_, ["v1", "sources"]) => method_not_allowed("GET"),
            (&Method::POST, ["v1", "sources", name, "release"]) => {
                match self.registry.release_held(name) {
                    Some(n) => {
                        self.settled().await;
                        text(
                            StatusCode::OK,
                            &format!("released {n} held-back removals\n"),
                        )
                    }
                    None => text(
                        StatusCode::NOT_FOUND,
                        &format!("no source named {name:?}\n"),
                    ),
                }
            }
            (&Method::GET, ["v1", "registry"]) => self.all_services(&req).await,
            (_, ["v1", "registry"]) => method_not_allowed("GET"),
            (&Method::GET, ["v1", "registry", service]) => self.one_service(&req, service).await,
            (_, ["v1", "registry", _]) => method_not_allowed("GET"),
            (_, ["v1", "registry", service, id, ..]) => {
                if let Err(e) = check_service_name(service) {
                    return text(StatusCode::BAD_REQUEST, &format!("service: {e}\n"));
                }
                if let Err(e) = check_instance_id(id) {
                    return text(StatusCode::BAD_REQUEST, &format!("instance_id: {e}\n"));
                }
                let (service, id) = (service.to_string(), id.to_string());
                match (&method, &segs[4..]) {
                    (&Method::PUT, []) => self.register(req, &service, &id).await,
                    (&Method::GET, []) => self.get_registration(&req, &service, &id).await,
                    (&Method::DELETE, []) => {
                        let r = self.registrations.deregister(&service, &id).await;
                        self.settled().await;
                        result(r.map(|()| "deregistered"))
                    }
                    (_, []) => method_not_allowed("GET, PUT, DELETE"),
                    (&Method::PUT, ["heartbeat"]) => result(
                        self.registrations
                            .heartbeat(&service, &id)
                            .await
                            .map(|()| "ok"),
                    ),
                    (_, ["heartbeat"]) => method_not_allowed("PUT"),
                    (&Method::PUT, ["drain"]) => {
                        let r = self.registrations.set_draining(&service, &id, true).await;
                        self.settled().await;
                        result(r.map(|_| "draining"))
                    }
                    (&Method::DELETE, ["drain"]) => {
                        let r = self.registrations.set_draining(&service, &id, false).await;
                        self.settled().await;
                        result(r.map(|_| "drain cancelled"))
                    }
                    (_, ["drain"]) => method_not_allowed("PUT, DELETE"),
                    _ => text(StatusCode::NOT_FOUND, "no such registry endpoint\n"),
                }
            }
            (_, ["v1", "services", service, "instances", addr, "drain"]) => {
                self.operator_drain(&method, service, addr).await
            }
            (_, ["v1", "services", ..]) => text(StatusCode::NOT_FOUND, "no such endpoint\n"),
            _ => text(StatusCode::NOT_FOUND, "no such endpoint\n"),
        }
    }

    /// `PUT` / `DELETE /v1/services/{service}/instances/{addr}/drain`.
    async fn operator_drain(
        &self,
        method: &Method,
        service: &str,
        addr: &str,
    ) -> Response<ProxyBody> {
        let drain = match *method {
            Method::PUT => true,
            Method::DELETE => false,
            _ => return method_not_allowed("PUT, DELETE"),
        };
        if let Err(e) = check_service_name(service) {
            return text(StatusCode::BAD_REQUEST, &format!("service: {e}\n"));
        }
        let decoded = percent_decode(addr);
        let Some(address) = decoded
            .as_deref()
            .and_then(|a| a.parse::<SocketAddr>().ok())
        else {
            return text(
                StatusCode::BAD_REQUEST,
                &format!("address: {addr:?} is not IP:PORT (e.g. \"127.0.0.1:9001\")\n"),
            );
        };
        match self.registry.set_operator_drain(service, address, drain) {
            Ok(changed) => {
                if changed {
                    self.registrations.save();
                }
                // Answer once the snapshot routes accordingly, so nothing
                // new reaches a drained instance after the 200.
                self.settled().await;
                let what = if drain { "draining" } else { "drain cancelled" };
                text(StatusCode::OK, &format!("{what}\n"))
            }
            Err(e @ DrainError::UnknownInstance { .. }) => {
                text(StatusCode::NOT_FOUND, &format!("{e}\n"))
            }
        }
    }

    /// Waits (at most a second: the refresher publishes within
    /// milliseconds) until the change just made is in the published
    /// snapshot, so the answer means the proxy routes accordingly.
    async fn settled(&self) {
        if !self.registry.settled(Duration::from_secs(1)).await {
            tracing::warn!("registry change not published within 1s; answering anyway");
        }
    }

    async fn register(
        &self,
        req: Request<Incoming>,
        service: &str,
        id: &str,
    ) -> Response<ProxyBody> {
        let check_wait = match parse_wait(&req, "wait") {
            Ok(w) => w,
            Err(msg) => return text(StatusCode::BAD_REQUEST, &msg),
        };
        let body = match read_body(req.into_body()).await {
            Ok(b) => b,
            Err(resp) => return resp,
        };
        let de = &mut serde_json::Deserializer::from_slice(&body);
        let raw: RegisterBody = match serde_path_to_error::deserialize(de) {
            Ok(r) => r,
            Err(e) => {
                let path = e.path().to_string();
                // Syntax errors carry no usable path ("." or "?"): name the body.
                let field = if path == "." || path.contains('?') {
                    "body".to_owned()
                } else {
                    path
                };
                return text(
                    StatusCode::BAD_REQUEST,
                    &format!("{field}: {}\n", e.into_inner()),
                );
            }
        };
        let address: SocketAddr = match raw.address.parse() {
            Ok(a) => a,
            Err(_) => {
                return text(
                    StatusCode::BAD_REQUEST,
                    &format!(
                        "address: {:?} is not IP:PORT (e.g. \"127.0.0.1:9001\")\n",
                        raw.address
                    ),
                )
            }
        };
        if address.port() == 0 || address.ip().is_unspecified() {
            return text(
                StatusCode::BAD_REQUEST,
                &format!("address: {address} is not reachable (port 0 or 0.0.0.0)\n"),
            );
        }
        let weight = raw.weight.unwrap_or(1);
        if !(1..=1000).contains(&weight) {
            return text(
                StatusCode::BAD_REQUEST,
                &format!("weight: {weight} is out of range 1..=1000\n"),
            );
        }
        let ttl = match raw.ttl.as_deref().map(humantime::parse_duration) {
            None => self.default_ttl,
            Some(Ok(t)) if (TTL_RANGE.0..=TTL_RANGE.1).contains(&t) => t,
            Some(Ok(t)) => {
                return text(
                    StatusCode::BAD_REQUEST,
                    &format!("ttl: {t:?} is outside 100ms..=24h\n"),
                );
            }
            Some(Err(e)) => {
                return text(
                    StatusCode::BAD_REQUEST,
                    &format!("ttl: {e} (write e.g. \"10s\")\n"),
                )
            }
        };
        let vouch = match raw.initial_health.as_deref() {
            None | Some("unknown") => false,
            Some("healthy") => true,
            Some(other) => {
                return text(
                    StatusCode::BAD_REQUEST,
                    &format!("initial_health: {other:?} is not \"healthy\" or \"unknown\"\n"),
                )
            }
        };
        let tags = raw.tags.unwrap_or_default();
        if tags.len() > 64
            || tags
                .iter()
                .any(|(k, v)| k.is_empty() || k.len() > 128 || v.len() > 1024)
        {
            return text(
                StatusCode::BAD_REQUEST,
                "tags: at most 64, keys 1-128 bytes, values up to 1024 bytes\n",
            );
        }
        let started = clock::now_ms();
        let request = RegisterRequest {
            address,
            weight,
            tags,
            ttl,
        };
        match self.registrations.register(service, id, request).await {
            Ok(new) => {
                if vouch {
                    self.registry.vouch_healthy(service, address);
                }
                // Answer once the proxy lists the instance (bounded; the
                // refresher publishes fast) and, under an active check,
                // once its first check has run (bounded, `?wait=0s` skips
                // it), so the answer's `proxy_health` is the real state.
                self.wait_routable(service, address, started).await;
                self.wait_first_check(service, address, check_wait).await;
                let status = if new {
                    StatusCode::CREATED
                } else {
                    StatusCode::OK
                };
                match self.registrations.get(service, id) {
                    Some(r) => json(status, &self.registration_info(r)),
                    // Deregistered meanwhile by another call.
                    None => text(
                        StatusCode::NOT_FOUND,
                        &format!("instance {id:?} of service {service:?} is not registered\n"),
                    ),
                }
            }
            Err(e @ RegistrationError::AddressTaken { .. }) => {
                text(StatusCode::CONFLICT, &format!("address: {e}\n"))
            }
            Err(e) => error(&e),
        }
    }

    async fn wait_routable(&self, service: &str, address: SocketAddr, started: u64) {
        let mut versions = self.registry.watch();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        loop {
            let present = self
                .registry
                .load()
                .service(service)
                .is_some_and(|s| s.members().iter().any(|m| m.instance.addr() == address));
            if present {
                tracing::debug!(service, %address, ms = clock::now_ms() - started, "registration routable");
                return;
            }
            if tokio::time::timeout_at(deadline, versions.changed())
                .await
                .is_err()
            {
                return;
            }
        }
    }

    /// Waits until the first active check of `address` in `service` has
    /// run, when the service has a check and the instance's health is not
    /// decided: at most `wait`, by default as long as the first check can
    /// take (its start jitter plus its timeout, plus a second).
    async fn wait_first_check(&self, service: &str, address: SocketAddr, wait: Option<Duration>) {
        let (instance, bound) = {
            let snap = self.registry.load();
            let Some(s) = snap.service(service) else {
                return;
            };
            let Some(check) = &s.policy().health else {
                return;
            };
            let Some(m) = s.members().iter().find(|m| m.instance.addr() == address) else {
                return;
            };
            let bound =
                check.jitter.min(check.interval / 4) + check.timeout + Duration::from_secs(1);
            (m.instance.clone(), wait.unwrap_or(bound))
        };
        if instance.health() != Health::Unknown || bound.is_zero() {
            return;
        }
        let deadline = tokio::time::Instant::now() + bound;
        if !instance.wait_checked(deadline).await {
            tracing::debug!(service, %address, ?bound, "first health check not run within the wait");
        }
    }

    /// A registration with its live state from the published snapshot.
    fn registration_info(&self, registration: Registration) -> RegistrationInfo {
        let now = clock::now_ms();
        let snap = self.registry.load();
        let listed = snap.service(&registration.service).and_then(|s| {
            s.members()
                .iter()
                .find(|m| m.instance.addr() == registration.address)
                .map(|m| (s, m))
        });
        let (in_flight, proxy_health) = match listed {
            Some((s, m)) => (m.instance.in_flight(), ProxyHealth::of(s, m, now)),
            None => (0, ProxyHealth::unlisted()),
        };
        let held_back = registration
            .expired
            .then(|| {
                self.registry.held_back(
                    self.registrations.source_name(),
                    &registration.service,
                    registration.address,
                )
            })
            .flatten()
            .map(|h| HeldView::of(&h, now));
        RegistrationInfo {
            expired: registration.expired,
            held_back,
            in_flight,
            drained: in_flight == 0,
            proxy_health,
            registration,
        }
    }

    async fn get_registration(
        &self,
        req: &Request<Incoming>,
        service: &str,
        id: &str,
    ) -> Response<ProxyBody> {
        let Some(registration) = self.registrations.get(service, id) else {
            return text(
                StatusCode::NOT_FOUND,
                &format!("instance {id:?} of service {service:?} is not registered\n"),
            );
        };
        let in_flight = || {
            self.registry
                .load()
                .service(service)
                .and_then(|s| {
                    s.members()
                        .iter()
                        .find(|m| m.instance.addr() == registration.address)
                        .map(|m| m.instance.in_flight())
                })
                .unwrap_or(0)
        };
        match query_param(req, "wait") {
            None => {}
            Some("drained") => {
                let timeout = match parse_wait(req, "timeout") {
                    Ok(t) => t.unwrap_or(Duration::from_secs(30)),
                    Err(msg) => return text(StatusCode::BAD_REQUEST, &msg),
                };
                let deadline = tokio::time::Instant::now() + timeout;
                while in_flight() > 0 && tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            Some(other) => {
                return text(
                    StatusCode::BAD_REQUEST,
                    &format!("wait: {other:?} is not \"drained\"\n"),
                )
            }
        }
        // Read again for the current state; one that went away during the
        // wait is answered as it was (in flight counts still apply).
        let registration = self.registrations.get(service, id).unwrap_or(registration);
        json(StatusCode::OK, &self.registration_info(registration))
    }

    async fn all_services(&self, req: &Request<Incoming>) -> Response<ProxyBody> {
        let (index, wait) = match long_poll_params(req) {
            Ok(p) => p,
            Err(msg) => return text(StatusCode::BAD_REQUEST, &msg),
        };
        let healthy = query_param(req, "healthy") == Some("true");
        if let Some(n) = index {
            self.wait_until(wait, |snap| snap.version() > n).await;
        }
        let snap = self.registry.load_full();
        let mut services: Vec<ServiceInfo> =
            snap.services().map(|s| service_info(s, healthy)).collect();
        services.sort_by(|a, b| a.service.cmp(&b.service));
        with_index(
            json(
                StatusCode::OK,
                &RegistryInfo {
                    index: snap.version(),
                    services,
                },
            ),
            snap.version(),
        )
    }

    async fn one_service(&self, req: &Request<Incoming>, service: &str) -> Response<ProxyBody> {
        if let Err(e) = check_service_name(service) {
            return text(StatusCode::BAD_REQUEST, &format!("service: {e}\n"));
        }
        let (index, wait) = match long_poll_params(req) {
            Ok(p) => p,
            Err(msg) => return text(StatusCode::BAD_REQUEST, &msg),
        };
        let healthy = query_param(req, "healthy") == Some("true");
        // A service that disappears counts as changed: its index becomes the
        // snapshot version.
        let index_of = |snap: &Snapshot, n: u64| match snap.service(service) {
            Some(s) => s.index(),
            None if n > 0 => snap.version(),
            None => 0,
        };
        if let Some(n) = index {
            self.wait_until(wait, |snap| index_of(snap, n) > n).await;
        }
        let snap = self.registry.load_full();
        match snap.service(service) {
            Some(s) => with_index(json(StatusCode::OK, &service_info(s, healthy)), s.index()),
            None if index.is_some() => {
                let idx = index_of(&snap, index.unwrap_or(0));
                with_index(
                    json(
                        StatusCode::OK,
                        &ServiceInfo {
                            service: service.to_owned(),
                            index: idx,
                            instances: vec![],
                        },
                    ),
                    idx,
                )
            }
            None => text(
                StatusCode::NOT_FOUND,
                &format!("unknown service {service:?}\n"),
            ),
        }
    }

    /// Waits until `done` holds for the current snapshot or `wait` passes.
    async fn wait_until(&self, wait: Duration, done: impl Fn(&Snapshot) -> bool) {
        let mut versions = self.registry.watch();
        let deadline = tokio::time::Instant::now() + wait;
        while !done(&self.registry.load()) {
            match tokio::time::timeout_at(deadline, versions.changed()).await {
                Ok(Ok(())) => {}
                _ => return,
            }
        }
    }

    fn sources(&self) -> Response<ProxyBody> {
        let now = SystemTime::now();
        let ago = |t: SystemTime| now.duration_since(t).map_or(0.0, |d| d.as_secs_f64());
        let now_ms = clock::now_ms();
        let list: Vec<SourceInfo> = self
            .registry
            .sources()
            .into_iter()
            .map(|s| SourceInfo {
                name: s.name.to_string(),
                state: s.state,
                last_success_ago_s: s.last_success.map(ago),
                last_error_ago_s: s.last_error.as_ref().map(|(t, _)| ago(*t)),
                last_error: s.last_error.map(|(_, e)| e),
                instances: s.instances,
                held_back: s
                    .held_back
                    .iter()
                    .map(|h| format!("{} {}", h.service, h.addr))
                    .collect(),
                held: s
                    .held_back
                    .iter()
                    .map(|h| HeldEntry {
                        service: h.service.to_string(),
                        address: h.addr,
                        id: h.id.as_deref().map(str::to_owned),
                        held: HeldView::of(&h.held, now_ms),
                    })
                    .collect(),
            })
            .collect();
        json(StatusCode::OK, &list)
    }
}

fn service_info(service: &Arc<ServiceEntry>, healthy_only: bool) -> ServiceInfo {
    let now = clock::now_ms();
    ServiceInfo {
        service: service.name().to_string(),
        index: service.index(),
        instances: service
            .members()
            .iter()
            .filter(|m| !healthy_only || m.instance.is_available(now))
            .map(|m| InstanceInfo {
                id: m.id.as_deref().map(str::to_owned),
                address: m.instance.addr(),
                weight: m.weight,
                tags: m.tags.as_deref().cloned().unwrap_or_default(),
                source: m.source.to_string(),
                status: InstanceStatus::of(service, m, now),
                in_flight: m.instance.in_flight(),
            })
            .collect(),
    }
}

/// `s` with `%XX` escapes decoded; `None` when an escape is malformed or
/// the result is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn with_index(mut resp: Response<ProxyBody>, index: u64) -> Response<ProxyBody> {
    if let Ok(v) = HeaderValue::from_str(&index.to_string()) {
        resp.headers_mut().insert("x-wayfinder-index", v);
    }
    resp
}

/// `index` and `wait`; `Err` is the 400 message.
fn long_poll_params(req: &Request<Incoming>) -> Result<(Option<u64>, Duration), String> {
    let index = match query_param(req, "index") {
        None => None,
        Some(v) => match v.parse::<u64>() {
            Ok(n) => Some(n),
            Err(_) => return Err(format!("index: {v:?} is not a number\n")),
        },
    };
    let wait = parse_wait(req, "wait")?.unwrap_or(DEFAULT_WAIT);
    Ok((index, wait))
}

/// A duration query parameter; `Err` is the 400 message.
fn parse_wait(req: &Request<Incoming>, name: &str) -> Result<Option<Duration>, String> {
    match query_param(req, name) {
        None => Ok(None),
        Some(v) => match humantime::parse_duration(v) {
            Ok(d) if d <= MAX_WAIT => Ok(Some(d)),
            Ok(_) => Err(format!("{name}: longer than {MAX_WAIT:?}\n")),
            Err(e) => Err(format!("{name}: {e} (write e.g. \"30s\")\n")),
        },
    }
}

fn result(r: Result<&'static str, RegistrationError>) -> Response<ProxyBody> {
    match r {
        Ok(msg) => text(StatusCode::OK, &format!("{msg}\n")),
        Err(e) => error(&e),
    }
}

/// A failed registration call's answer: 404, 409, or 503 when the shared
/// registry could not confirm the change (so no call is silently lost).
fn error(e: &RegistrationError) -> Response<ProxyBody> {
    let status = match e {
        RegistrationError::NotFound { .. } => StatusCode::NOT_FOUND,
        RegistrationError::AddressTaken { .. } => StatusCode::CONFLICT,
        RegistrationError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
    };
    text(status, &format!("{e}\n"))
}

/// Instance ids: 1 to 128 of letters, digits, `-`, `_`, `.`, `:`.
fn check_instance_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 128 {
        return Err("must be 1 to 128 characters".to_owned());
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
    {
        return Err(format!(
            "{id:?} may use only letters, digits, '-', '_', '.', ':'"
        ));
    }
    Ok(())
}
