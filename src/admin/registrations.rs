//! The registration API: `PUT /v1/registry/{service}/{id}` (register,
//! answered once the proxy routes the instance), `GET` (one registration,
//! optionally once drained), heartbeats, drains and `DELETE`. The body and
//! every parameter are checked before anything changes.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};

use super::params::{parse_wait, query_param};
use super::respond::{json, read_body, text};
use super::services::{HeldView, ProxyHealth};
use super::Admin;
use crate::clock;
use crate::config::{Protocol, PROTOCOL_TAG};
use crate::proxy::ProxyBody;
use crate::registry::registrations::{RegisterRequest, Registration, RegistrationError};
use crate::registry::Health;

/// Shortest and longest TTL a registration may ask for.
const TTL_RANGE: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(86_400));

/// The JSON body of `PUT /v1/registry/{service}/{id}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterBody {
    address: String,
    weight: Option<u32>,
    tags: Option<BTreeMap<String, String>>,
    /// The protocol the instance speaks (`http1`, `h2c`, `h2`, `auto`):
    /// kept as its `protocol` tag.
    protocol: Option<String>,
    ttl: Option<String>,
    /// `"healthy"`: the registrant's own check passed, so the instance
    /// starts healthy instead of waiting for the proxy's first check.
    initial_health: Option<String>,
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

impl Admin {
    pub(super) async fn register(
        &self,
        req: Request<Incoming>,
        service: &str,
        id: &str,
    ) -> Response<ProxyBody> {
        let check_wait = match parse_wait(req.uri().query(), "wait") {
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
        let tags = match self.with_protocol(service, tags, raw.protocol) {
            Ok(tags) => tags,
            Err(msg) => return text(StatusCode::BAD_REQUEST, &msg),
        };
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

    /// `tags` with the registration's declared protocol (the `protocol`
    /// field, or the tag of that name) checked against the service's
    /// config: a protocol the config writes differently, or one its `tls`
    /// setting cannot carry, is refused.
    fn with_protocol(
        &self,
        service: &str,
        mut tags: BTreeMap<String, String>,
        field: Option<String>,
    ) -> Result<BTreeMap<String, String>, String> {
        if let Some(value) = field {
            match tags.get(PROTOCOL_TAG) {
                Some(tag) if *tag != value => {
                    return Err(format!(
                        "protocol: {value:?} differs from tags.protocol {tag:?}\n"
                    ))
                }
                _ => tags.insert(PROTOCOL_TAG.to_owned(), value),
            };
        }
        let Some(value) = tags.get(PROTOCOL_TAG) else {
            return Ok(tags);
        };
        let Some(protocol) = Protocol::from_tag(value) else {
            return Err(format!(
                "protocol: {value:?} is not \"http1\", \"h2c\", \"h2\" or \"auto\"\n"
            ));
        };
        let config = self.state.config();
        let policy = config
            .services
            .get(service)
            .map_or(&config.default_policy, |s| &s.policy);
        let up = &policy.upstream;
        if up.protocol_written && up.protocol != protocol {
            return Err(format!(
                "protocol: service {service:?} speaks {:?} as its config writes; \
                 {value:?} cannot be declared\n",
                up.protocol.as_str()
            ));
        }
        if !up.fits(protocol) {
            let why = if up.tls.is_some() {
                "the service's instances are reached over TLS (use \"h2\" or \"auto\")"
            } else {
                "the service has no tls in the config (use \"h2c\" for plain HTTP/2)"
            };
            return Err(format!("protocol: {value:?} is not possible: {why}\n"));
        }
        Ok(tags)
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

    pub(super) async fn get_registration(
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
        match query_param(req.uri().query(), "wait").as_deref() {
            None => {}
            Some("drained") => {
                let timeout = match parse_wait(req.uri().query(), "timeout") {
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
}

pub(super) fn result(r: Result<&'static str, RegistrationError>) -> Response<ProxyBody> {
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
pub(super) fn check_instance_id(id: &str) -> Result<(), String> {
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
