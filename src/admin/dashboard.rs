//! The dashboard: one page (`GET /` or `GET /dashboard`, HTML, CSS and
//! script embedded in the binary, nothing loaded from elsewhere) that
//! shows the services and their instances (health, ejection, drains,
//! slow-start weight, in-flight count, request and error rates), the
//! sources, the last state transitions and the discovery events as they
//! happen, and offers drain / cancel drain / release held-back removals.
//!
//! The page long-polls `GET /v1/dashboard?index=N&wait=1s`: the answer
//! comes as soon as the registry publishes a snapshot newer than `N`, and
//! after `wait` otherwise (health, counts and rates change without a new
//! snapshot). Its actions call the admin API's own endpoints, with the
//! bearer token the operator types into the page (kept in the page's
//! memory, never in a URL or in storage).

use std::time::Duration;

use http::{header, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::Serialize;

use super::params::long_poll_params;
use super::respond::{json, text};
use super::services::{self, ServicesView};
use super::sources::SourceInfo;
use super::Admin;
use crate::proxy::ProxyBody;

/// The page.
const PAGE: &str = include_str!("dashboard/index.html");

/// Longest the page's poll waits for a change.
const MAX_POLL: Duration = Duration::from_secs(5);

/// `GET /v1/dashboard`.
#[derive(Debug, Serialize)]
struct DashboardView {
    #[serde(flatten)]
    services: ServicesView,
    sources: Vec<SourceInfo>,
    /// Whether changing calls need the bearer token.
    token_required: bool,
}

impl Admin {
    /// `GET /` and `GET /dashboard`: the page.
    pub(super) fn dashboard_page(&self) -> Response<ProxyBody> {
        let mut resp = Response::new(ProxyBody::full(PAGE));
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        // Everything the page needs is in it; it talks to this origin only.
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                 connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'",
            ),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        resp
    }

    /// `GET /v1/dashboard[?index=N&wait=1s]`: services, instances and
    /// sources in one answer, held until the snapshot passes `index` or
    /// `wait` (at most 5 s) passes.
    pub(super) async fn dashboard_state(&self, req: &Request<Incoming>) -> Response<ProxyBody> {
        let (index, wait) = match long_poll_params(req.uri().query()) {
            Ok(p) => p,
            Err(msg) => return text(StatusCode::BAD_REQUEST, &msg),
        };
        if let Some(index) = index {
            let mut versions = self.registry.watch();
            let deadline = tokio::time::Instant::now() + wait.min(MAX_POLL);
            while self.registry.load().version() <= index {
                match tokio::time::timeout_at(deadline, versions.changed()).await {
                    Ok(Ok(())) => {}
                    _ => break,
                }
            }
        }
        json(
            StatusCode::OK,
            &DashboardView {
                services: services::services(&self.registry),
                sources: self.source_list(),
                token_required: self.token.is_some(),
            },
        )
    }
}
