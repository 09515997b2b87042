//! Changing a route's canary split without a restart:
//! `PUT /v1/routes/{name}/split` with `{"split": [{"tags": {...},
//! "weight": N}, ...]}` (checked by the same rules as the file's
//! `split`), `DELETE` of the same path to go back to the file's. The
//! answer comes once the published snapshot routes by the new split.
//!
//! Precedence: a split set here lasts until a reload changes that
//! route's `split` in the file (or removes the route), or the process
//! restarts; then the file's applies. `GET /v1/routes` shows each
//! route's split in effect and where it comes from.

use std::collections::BTreeMap;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;

use super::respond::{json, method_not_allowed, read_body, text};
use super::status::split_view;
use super::Admin;
use crate::config::{check_split, SetSplitError};
use crate::proxy::ProxyBody;

/// The body of `PUT /v1/routes/{name}/split`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SplitBody {
    split: Vec<EntryBody>,
}

/// One entry: `{"tags": {"version": "2"}, "weight": 5}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryBody {
    tags: BTreeMap<String, String>,
    weight: i64,
}

impl Admin {
    /// `PUT` / `DELETE /v1/routes/{name}/split`.
    pub(super) async fn route_split(
        &self,
        req: Request<Incoming>,
        route: &str,
    ) -> Response<ProxyBody> {
        let split = match *req.method() {
            Method::PUT => {
                let body = match read_body(req.into_body()).await {
                    Ok(b) => b,
                    Err(resp) => return resp,
                };
                let raw: SplitBody = match serde_json::from_slice(&body) {
                    Ok(r) => r,
                    Err(e) => return text(StatusCode::BAD_REQUEST, &format!("body: {e}\n")),
                };
                let entries: Vec<_> = raw.split.iter().map(|e| (&e.tags, e.weight)).collect();
                match check_split(&entries) {
                    Ok(split) => Some(split),
                    Err(e) => return text(StatusCode::BAD_REQUEST, &format!("split: {e}\n")),
                }
            }
            Method::DELETE => None,
            _ => return method_not_allowed("PUT, DELETE"),
        };
        let set = split.is_some();
        match self.registry.set_split(route, split) {
            Ok(()) => {
                self.settled().await;
                tracing::info!(
                    route,
                    "route split {} through the admin API",
                    if set { "set" } else { "reset to the file's" }
                );
                let overrides = self.registry.split_overrides();
                let config = self.state.config();
                let file = config
                    .routes
                    .iter()
                    .find(|r| r.name.as_deref() == Some(route))
                    .map(|r| r.traffic.split.as_slice())
                    .unwrap_or_default();
                json(StatusCode::OK, &split_view(route, file, &overrides))
            }
            Err(e @ SetSplitError::UnknownRoute(_)) => {
                text(StatusCode::NOT_FOUND, &format!("{e}\n"))
            }
            Err(e @ SetSplitError::MatchTags(_)) => text(StatusCode::CONFLICT, &format!("{e}\n")),
        }
    }
}
