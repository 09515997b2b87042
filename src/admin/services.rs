//! `GET /v1/services`: the registry as the proxy
//! routes it right now, with every instance's combined state. The
//! per-instance state ([`InstanceStatus`], [`ProxyHealth`], [`HeldView`]) is
//! built here for every view that shows an instance, so they all agree.

use std::time::SystemTime;

use serde::Serialize;

use crate::balance;
use crate::clock;
use crate::registry::{Health, HeldBack, Member, Registry, ServiceEntry};

/// The proxy's view of one instance's health, as registration calls and
/// every instance view report it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct ProxyHealth {
    /// `unknown` (no check has decided yet, or the proxy does not list the
    /// instance), `healthy`, `unhealthy` (its active check fails) or
    /// `ejected` (passive health took it out for a while).
    pub state: &'static str,
    /// Why: the last health transition's reason, or the failing check's
    /// detail while undecided.
    pub reason: Option<String>,
    /// Whether a new request could be sent to it now.
    pub routable: bool,
}

impl ProxyHealth {
    /// For an instance the proxy does not list (yet).
    pub(crate) fn unlisted() -> ProxyHealth {
        ProxyHealth {
            state: "unknown",
            reason: Some("not in the proxy's routing table".to_owned()),
            routable: false,
        }
    }

    /// For `member` of `service` at `now_ms`.
    pub(crate) fn of(service: &ServiceEntry, member: &Member, now_ms: u64) -> ProxyHealth {
        let i = &member.instance;
        let health_reason = |to: &[&str]| {
            i.last_health_transition()
                .filter(|t| to.contains(&t.to))
                .map(|t| t.reason)
        };
        let (state, reason) = if i.is_ejected(now_ms) {
            ("ejected", health_reason(&["ejected"]))
        } else {
            match i.health() {
                Health::Unknown => (
                    "unknown",
                    Some(match i.last_check() {
                        Some(Err(e)) => format!("last health check failed: {e}"),
                        _ => "waiting for the first health check".to_owned(),
                    }),
                ),
                Health::Unhealthy => ("unhealthy", health_reason(&["unhealthy"])),
                Health::Healthy | Health::NotChecked => {
                    ("healthy", health_reason(&["healthy", "available"]))
                }
            }
        };
        ProxyHealth {
            state,
            reason,
            routable: balance::routable(service, member, now_ms),
        }
    }
}

/// A removal self-preservation holds back.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct HeldView {
    /// Why the instance was to leave and why it stays.
    pub reason: String,
    /// When the hold began, in seconds since the Unix epoch.
    pub since: f64,
    /// Seconds held so far.
    pub held_for_s: f64,
    /// Seconds until the removal applies anyway (`registry.max_hold`).
    pub applies_in_s: f64,
}

impl HeldView {
    /// The view of `held` at `now_ms`.
    pub(crate) fn of(held: &HeldBack, now_ms: u64) -> HeldView {
        HeldView {
            reason: held.reason.clone(),
            since: epoch_s(held.since),
            held_for_s: now_ms.saturating_sub(held.since_ms) as f64 / 1000.0,
            applies_in_s: held.until_ms.saturating_sub(now_ms) as f64 / 1000.0,
        }
    }
}

/// One instance's state, the same in `GET /v1/services`, `GET /v1/registry`
/// and `GET /v1/registry/{service}`.
#[derive(Debug, Serialize)]
pub(crate) struct InstanceStatus {
    /// Active health: `not_checked`, `unknown`, `healthy`, `unhealthy`.
    pub health: &'static str,
    /// Whether it takes traffic in normal mode (healthy or unchecked, not
    /// ejected, not draining).
    pub available: bool,
    /// Whether a new request could be sent to it now (panic mode included).
    pub routable: bool,
    /// Whether it takes no new requests because it drains.
    pub draining: bool,
    /// Who drained it: `operator` and/or `source` (its registration).
    pub drained_by: Vec<&'static str>,
    /// Its removal is held back by self-preservation: why, since when.
    pub held_back: Option<HeldView>,
    /// The proxy's view of its health.
    pub proxy_health: ProxyHealth,
}

impl InstanceStatus {
    /// The state of `member` of `service` at `now_ms`.
    pub(crate) fn of(service: &ServiceEntry, member: &Member, now_ms: u64) -> InstanceStatus {
        let i = &member.instance;
        let mut drained_by = Vec::new();
        if member.operator_drain {
            drained_by.push("operator");
        }
        if member.draining {
            drained_by.push("source");
        }
        InstanceStatus {
            health: i.health().as_str(),
            available: i.is_available(now_ms),
            routable: balance::routable(service, member, now_ms),
            draining: !i.takes_new_requests(),
            drained_by,
            held_back: member.held.as_deref().map(|h| HeldView::of(h, now_ms)),
            proxy_health: ProxyHealth::of(service, member, now_ms),
        }
    }
}

/// Seconds since the Unix epoch.
fn epoch_s(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// `GET /v1/services`.
#[derive(Debug, Serialize)]
pub(crate) struct ServicesView {
    /// Snapshot version.
    pub version: u64,
    /// Milliseconds since the snapshot was built.
    pub age_ms: u128,
    /// Services by name.
    pub services: Vec<ServiceView>,
}

/// One service.
#[derive(Debug, Serialize)]
pub(crate) struct ServiceView {
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
pub(crate) struct TransitionView {
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
pub(crate) struct InstanceView {
    /// `host:port`.
    pub address: String,
    /// Id given by its source, if any.
    pub id: Option<String>,
    /// The source that reported it.
    pub source: String,
    /// Relative share of traffic.
    pub weight: u32,
    /// Health, availability, drains, held-back removal, `proxy_health`.
    #[serde(flatten)]
    pub status: InstanceStatus,
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
    /// Requests it answered with a 5xx, and attempts on it that failed
    /// (connect failures, timeouts, resets), since it appeared.
    pub errors: u64,
    /// Failures since the last success.
    pub consecutive_failures: u32,
    /// Its p99 time to the response head over the last window latency
    /// outlier detection judged it on, in milliseconds (null when off or
    /// with too few responses).
    pub latency_p99_ms: Option<f64>,
    /// Idle pooled connections.
    pub idle_connections: usize,
    /// Shared HTTP/2 connections open to the instance.
    pub h2_connections: usize,
    /// Streams open on them.
    pub h2_streams: usize,
}

/// Builds the `GET /v1/services` answer.
pub(crate) fn services(registry: &Registry) -> ServicesView {
    let snap = registry.load_full();
    let now = clock::now_ms();
    let mut services: Vec<ServiceView> = snap
        .services()
        .map(|s| ServiceView {
            name: s.name().to_string(),
            balance: s.balance().name(),
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
                    status: InstanceStatus::of(s, m, now),
                    ejected_for_ms: m
                        .instance
                        .is_ejected(now)
                        .then(|| m.instance.ejected_until_ms().saturating_sub(now)),
                    ejections: m.instance.ejections(),
                    weight_percent: m.instance.warmth(now, s.policy().slow_start) / 10,
                    last_transition: m.instance.last_transition().map(|t| TransitionView {
                        to: t.to,
                        reason: t.reason,
                        at: epoch_s(t.at),
                        ago: SystemTime::now()
                            .duration_since(t.at)
                            .map_or(0.0, |d| d.as_secs_f64()),
                    }),
                    in_flight: m.instance.in_flight(),
                    requests: m.instance.requests(),
                    errors: {
                        let s = m.instance.stats();
                        let (c, t, r) = s.failures();
                        s.responses()[4] + c + t + r
                    },
                    consecutive_failures: m.instance.consecutive_failures(),
                    latency_p99_ms: m
                        .instance
                        .latency_window()
                        .last_p99()
                        .map(|d| d.as_secs_f64() * 1000.0),
                    idle_connections: crate::proxy::upstream::idle_connections(&m.instance),
                    h2_connections: crate::proxy::upstream::h2_connections(&m.instance).0,
                    h2_streams: crate::proxy::upstream::h2_connections(&m.instance).1,
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
