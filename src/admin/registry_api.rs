//! The registry API's routes: `/v1/registry` (registration and discovery
//! queries), `/v1/sources` and the operator's drains
//! (`/v1/services/{service}/instances/{addr}/drain`). Each call is handled
//! in its own module ([`super::registrations`], [`super::discovery`],
//! [`super::sources`], [`super::drain`]). Every input is checked before
//! anything changes: a bad call gets 400 naming the field and leaves the
//! registry as it was.

use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use super::registrations::{check_instance_id, result};
use super::respond::{method_not_allowed, text};
use super::Admin;
use crate::config::check_service_name;
use crate::proxy::ProxyBody;

impl Admin {
    /// Answers a call under `/v1/registry`, `/v1/sources` or
    /// `/v1/services/{service}/...`; `segs` is its path, split at `/`.
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

    /// Waits (at most a second: the refresher publishes within
    /// milliseconds) until the change just made is in the published
    /// snapshot, so the answer means the proxy routes accordingly.
    pub(super) async fn settled(&self) {
        if !self.registry.settled(Duration::from_secs(1)).await {
            tracing::warn!("registry change not published within 1s; answering anyway");
        }
    }
}
