//! Client-side discovery queries: `GET /v1/registry` and
//! `GET /v1/registry/{service}`, with long polls on the snapshot version or
//! the service's index (`?index=N&wait=30s`) and `?healthy=true`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::Serialize;

use super::params::{long_poll_params, query_param};
use super::respond::{json, text};
use super::services::InstanceStatus;
use super::Admin;
use crate::clock;
use crate::config::check_service_name;
use crate::proxy::ProxyBody;
use crate::registry::{ServiceEntry, Snapshot};

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

impl Admin {
    pub(super) async fn all_services(&self, req: &Request<Incoming>) -> Response<ProxyBody> {
        let (index, wait) = match long_poll_params(req.uri().query()) {
            Ok(p) => p,
            Err(msg) => return text(StatusCode::BAD_REQUEST, &msg),
        };
        let healthy = query_param(req.uri().query(), "healthy").as_deref() == Some("true");
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

    pub(super) async fn one_service(
        &self,
        req: &Request<Incoming>,
        service: &str,
    ) -> Response<ProxyBody> {
        if let Err(e) = check_service_name(service) {
            return text(StatusCode::BAD_REQUEST, &format!("service: {e}\n"));
        }
        let (index, wait) = match long_poll_params(req.uri().query()) {
            Ok(p) => p,
            Err(msg) => return text(StatusCode::BAD_REQUEST, &msg),
        };
        let healthy = query_param(req.uri().query(), "healthy").as_deref() == Some("true");
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

pub(super) fn with_index(mut resp: Response<ProxyBody>, index: u64) -> Response<ProxyBody> {
    if let Ok(v) = HeaderValue::from_str(&index.to_string()) {
        resp.headers_mut().insert("x-wayfinder-index", v);
    }
    resp
}
