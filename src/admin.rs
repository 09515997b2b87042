//! The admin API, served on its own listener (loopback by default), never
//! on the proxy's: liveness and a JSON view of the registry as the proxy
//! currently routes it.
//!
//! - `GET /healthz`: `200 ok` while the process serves.
//! - `GET /v1/services`: every service with its policy and instances (address,
//!   source, weight, in-flight and total requests, availability).

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::SystemTime;

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::net::TcpListener;

use crate::clock;
use crate::config::Balance;
use crate::proxy::ProxyBody;
use crate::registry::Registry;

/// Serves the admin API on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => return,
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let registry = registry.clone();
                async move { Ok::<_, Infallible>(handle(&registry, req)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Answers one admin request.
pub fn handle(registry: &Registry, req: Request<Incoming>) -> Response<ProxyBody> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/v1/services") => json(&services(registry)),
        (_, "/healthz" | "/v1/services") => text(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed; use GET\n",
        ),
        (_, path) => text(
            StatusCode::NOT_FOUND,
            &format!("no admin endpoint at {path}\n"),
        ),
    }
}

/// `GET /v1/services`.
#[derive(Debug, Serialize)]
pub struct ServicesView {
    /// Snapshot version.
    pub version: u64,
    /// Milliseconds since the snapshot was built.
    pub age_ms: u128,
    /// Services by name.
    pub services: Vec<ServiceView>,
}

/// One service.
#[derive(Debug, Serialize)]
pub struct ServiceView {
    /// Name.
    pub name: String,
    /// `round_robin` or `least_connections`.
    pub balance: &'static str,
    /// Whether panic mode is on (too few instances available, health
    /// ignored).
    pub panic: bool,
    /// Retries refused by the retry budget.
    pub retries_refused: u64,
    /// Instances, by address.
    pub instances: Vec<InstanceView>,
}

/// A state change.
#[derive(Debug, Serialize)]
pub struct TransitionView {
    /// The new state.
    pub to: &'static str,
    /// Why.
    pub reason: String,
    /// Seconds since the Unix epoch.
    pub at: f64,
    /// Seconds ago.
    pub ago: f64,
}

/// One instance.
#[derive(Debug, Serialize)]
pub struct InstanceView {
    /// `host:port`.
    pub address: String,
    /// Id given by its source, if any.
    pub id: Option<String>,
    /// The source that reported it.
    pub source: String,
    /// Relative share of traffic.
    pub weight: u32,
    /// Whether it takes traffic now (healthy or unchecked, not ejected).
    pub available: bool,
    /// Active health: `not_checked`, `unknown`, `healthy`, `unhealthy`.
    pub health: &'static str,
    /// Milliseconds of ejection left, when ejected.
    pub ejected_for_ms: Option<u64>,
    /// Times ejected by passive health.
    pub ejections: u64,
    /// Share of its weight while slow-starting, in percent (100 when warm).
    pub weight_percent: u64,
    /// Last state change: `{to, reason, at}` (at in seconds since the epoch).
    pub last_transition: Option<TransitionView>,
    /// Requests in flight.
    pub in_flight: usize,
    /// Requests dispatched since it appeared.
    pub requests: u64,
    /// Failures since the last success.
    pub consecutive_failures: u32,
    /// Idle pooled connections.
    pub idle_connections: usize,
}

fn services(registry: &Registry) -> ServicesView {
    let snap = registry.load_full();
    let now = clock::now_ms();
    let mut services: Vec<ServiceView> = snap
        .services()
        .map(|s| ServiceView {
            name: s.name().to_string(),
            balance: match s.balance() {
                Balance::RoundRobin => "round_robin",
                Balance::LeastConnections => "least_connections",
            },
            panic: s.live().in_panic(),
            retries_refused: crate::proxy::retry::refused(s),
            instances: s
                .members()
                .iter()
                .map(|m| InstanceView {
                    address: m.instance.addr().to_string(),
                    id: m.id.as_deref().map(str::to_owned),
                    source: m.source.to_string(),
                    weight: m.weight,
                    available: m.instance.is_available(now),
                    health: m.instance.health().as_str(),
                    ejected_for_ms: m
                        .instance
                        .is_ejected(now)
                        .then(|| m.instance.ejected_until_ms().saturating_sub(now)),
                    ejections: m.instance.ejections(),
                    weight_percent: m.instance.warmth(now, s.policy().slow_start) / 10,
                    last_transition: m.instance.last_transition().map(|t| TransitionView {
                        to: t.to,
                        reason: t.reason,
                        at: t
                            .at
                            .duration_since(SystemTime::UNIX_EPOCH)
                            .map_or(0.0, |d| d.as_secs_f64()),
                        ago: SystemTime::now()
                            .duration_since(t.at)
                            .map_or(0.0, |d| d.as_secs_f64()),
                    }),
                    in_flight: m.instance.in_flight(),
                    requests: m.instance.requests(),
                    consecutive_failures: m.instance.consecutive_failures(),
                    idle_connections: m.instance.idle.len(),
                })
                .collect(),
        })
        .collect();
    services.sort_by(|a, b| a.name.cmp(&b.name));
    ServicesView {
        version: snap.version(),
        age_ms: SystemTime::now()
            .duration_since(snap.built_at())
            .map_or(0, |d| d.as_millis()),
        services,
    }
}

fn text(status: StatusCode, body: &str) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::full(body.to_owned()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn json(value: &impl Serialize) -> Response<ProxyBody> {
    match serde_json::to_vec_pretty(value) {
        Ok(mut body) => {
            body.push(b'\n');
            let mut resp = Response::new(ProxyBody::full(body));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            resp
        }
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("could not encode: {e}\n"),
        ),
    }
}
