//! `GET /v1/sources`: per source, its state, last success and error,
//! instance count and the removals self-preservation holds back.

use std::net::SocketAddr;
use std::time::SystemTime;

use http::{Response, StatusCode};
use serde::Serialize;

use super::respond::json;
use super::services::HeldView;
use super::Admin;
use crate::clock;
use crate::proxy::ProxyBody;

/// `GET /v1/sources` entry.
#[derive(Debug, Serialize)]
pub(super) struct SourceInfo {
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
    /// `GET /v1/sources`.
    pub(super) fn sources(&self) -> Response<ProxyBody> {
        json(StatusCode::OK, &self.source_list())
    }

    /// Every source's entry, as `GET /v1/sources` lists them.
    pub(super) fn source_list(&self) -> Vec<SourceInfo> {
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
        list
    }
}
