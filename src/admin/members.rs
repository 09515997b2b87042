//! `GET /v1/members`: the gossip fleet as this proxy sees it: each member
//! with its state (alive, dead, left), gossip address, when it last
//! changed and what it publishes; the instances proxies report ejected
//! (shared observations, advisory) with who reports them; and this
//! member's gossip traffic. 404 when `[registry.gossip]` is not set.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use http::{Response, StatusCode};
use serde::Serialize;

use super::respond::{json, text};
use super::Admin;
use crate::proxy::ProxyBody;
use crate::registry::gossip::{Published, Role};

#[derive(Debug, Serialize)]
struct Members {
    this: String,
    members: Vec<MemberView>,
    ejections: Vec<EjectionView>,
    traffic: TrafficView,
}

#[derive(Debug, Serialize)]
struct MemberView {
    name: String,
    generation: u64,
    address: SocketAddr,
    state: &'static str,
    role: Role,
    /// Seconds since its state or what it published last changed.
    last_update_ago_s: Option<f64>,
    publishes: Published,
}

#[derive(Debug, Serialize)]
struct EjectionView {
    service: String,
    address: SocketAddr,
    /// The proxies reporting it ejected.
    reported_by: Vec<String>,
}

#[derive(Debug, Serialize)]
struct TrafficView {
    sent_bytes: u64,
    received_bytes: u64,
    rejected_datagrams: u64,
}

impl Admin {
    /// `GET /v1/members`.
    pub(super) fn members(&self) -> Response<ProxyBody> {
        let Some(gossip) = &self.gossip else {
            return text(
                StatusCode::NOT_FOUND,
                "this proxy is not in a gossip fleet ([registry.gossip] is not set)\n",
            );
        };
        let now = SystemTime::now();
        let members = gossip
            .members()
            .into_iter()
            .map(|m| MemberView {
                name: m.name.to_string(),
                generation: m.generation,
                address: m.addr,
                state: m.state,
                role: m.published.role,
                last_update_ago_s: m
                    .changed
                    .map(|t| now.duration_since(t).map_or(0.0, |d| d.as_secs_f64())),
                publishes: m.published,
            })
            .collect();
        let ejections = gossip
            .shared_ejections()
            .into_iter()
            .map(|((service, address), by)| EjectionView {
                service: service.to_string(),
                address,
                reported_by: by.iter().map(ToString::to_string).collect(),
            })
            .collect();
        let t = gossip.traffic();
        json(
            StatusCode::OK,
            &Members {
                this: gossip.name().to_owned(),
                members,
                ejections,
                traffic: TrafficView {
                    sent_bytes: t.sent_bytes.load(Ordering::Relaxed),
                    received_bytes: t.received_bytes.load(Ordering::Relaxed),
                    rejected_datagrams: t.rejected.load(Ordering::Relaxed),
                },
            },
        )
    }
}
