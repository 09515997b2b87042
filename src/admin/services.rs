//! `GET /v1/services` and `GET /v1/status`: the registry as the proxy
//! routes it right now, with every instance's combined state.

use std::time::SystemTime;

use serde::Serialize;

use crate::clock;
use crate::config::Balance;
use crate::registry::Registry;

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

/// Builds the `GET /v1/services` answer.
pub fn services(registry: &Registry) -> ServicesView {
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

/// `GET /v1/status`.
#[derive(Debug, Serialize)]
pub struct StatusView {
    /// Snapshot version.
    pub version: u64,
    /// Milliseconds since the snapshot was built.
    pub age_ms: u128,
    /// Services in the snapshot.
    pub services: usize,
    /// Instances in the snapshot.
    pub instances: usize,
}

/// Builds the `GET /v1/status` answer.
pub fn status(registry: &Registry) -> StatusView {
    let snap = registry.load();
    StatusView {
        version: snap.version(),
        age_ms: SystemTime::now()
            .duration_since(snap.built_at())
            .map_or(0, |d| d.as_millis()),
        services: snap.service_count(),
        instances: snap.instance_count(),
    }
}
