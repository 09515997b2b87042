//! The running process as the admin API shows it: `GET /v1/status`
//! (version, uptime, snapshot, last reload, settings waiting for a
//! restart), `GET /v1/config` (the config in effect, secrets redacted) and
//! `GET /v1/routes` (the routing table in precedence order), built from
//! [`RunState`] and the registry.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use serde::Serialize;

use super::state::{Phase, ReloadOutcome, RunState};
use crate::clock;
use crate::config::{Config, HostMatch, SplitEntry};
use crate::registry::Registry;

/// `GET /v1/status`.
#[derive(Debug, Serialize)]
pub(crate) struct StatusView {
    /// wayfinder's version.
    pub version: &'static str,
    /// Seconds since start.
    pub uptime_s: f64,
    /// Whether `/readyz` answers 200.
    pub ready: bool,
    /// `starting`, `ready` or `draining`.
    pub phase: &'static str,
    /// The published registry snapshot.
    pub snapshot: SnapshotView,
    /// The config file, if any.
    pub config_file: Option<String>,
    /// The last reload of the config file, if any.
    pub last_reload: Option<ReloadView>,
    /// Settings changed by reloads that apply at the next restart only.
    pub restart_needed: Vec<String>,
}

/// The snapshot part of [`StatusView`].
#[derive(Debug, Serialize)]
pub(crate) struct SnapshotView {
    /// Its version.
    pub version: u64,
    /// Milliseconds since it was built.
    pub age_ms: u128,
    /// Services in it.
    pub services: usize,
    /// Instances in it.
    pub instances: usize,
}

/// A reload in [`StatusView`].
#[derive(Debug, Serialize)]
pub(crate) struct ReloadView {
    /// `applied`, `unchanged` or `rejected`, with its details.
    #[serde(flatten)]
    pub outcome: ReloadOutcome,
    /// The file read.
    pub file: String,
    /// When, in seconds since the Unix epoch.
    pub at: f64,
    /// Seconds ago.
    pub ago_s: f64,
}

/// Builds the `GET /v1/status` answer.
pub(crate) fn status(state: &RunState, registry: &Registry) -> StatusView {
    let snap = registry.load();
    let now = SystemTime::now();
    let phase = state.phase();
    StatusView {
        version: env!("CARGO_PKG_VERSION"),
        uptime_s: state.uptime().as_secs_f64(),
        ready: phase == Phase::Ready,
        phase: phase.as_str(),
        snapshot: SnapshotView {
            version: snap.version(),
            age_ms: now
                .duration_since(snap.built_at())
                .map_or(0, |d| d.as_millis()),
            services: snap.service_count(),
            instances: snap.instance_count(),
        },
        config_file: state.file().map(|f| f.display().to_string()),
        last_reload: state.last_reload().map(|r| ReloadView {
            file: r.file.display().to_string(),
            at: r
                .at
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
            ago_s: now.duration_since(r.at).map_or(0.0, |d| d.as_secs_f64()),
            outcome: r.outcome,
        }),
        restart_needed: state.restart_needed(),
    }
}

/// `GET /v1/config`.
#[derive(Debug, Serialize)]
pub(crate) struct ConfigView {
    /// The file it was loaded from, if any.
    pub file: Option<String>,
    /// Settings whose new value (in the file) waits for a restart; the
    /// config below shows the value in effect.
    pub restart_needed: Vec<String>,
    /// The config in effect, secrets redacted.
    pub config: Arc<Config>,
}

/// Builds the `GET /v1/config` answer.
pub(crate) fn config(state: &RunState) -> ConfigView {
    ConfigView {
        file: state.file().map(|f| f.display().to_string()),
        restart_needed: state.restart_needed(),
        config: state.config(),
    }
}

/// `GET /v1/routes`.
#[derive(Debug, Serialize)]
pub(crate) struct RoutesView {
    /// Explicit routes, in the order they are tried.
    pub routes: Vec<RouteView>,
    /// What a request no route matches is tried against.
    pub conventions: ConventionsView,
}

/// One explicit route.
#[derive(Debug, Serialize)]
pub(crate) struct RouteView {
    /// Its name, when it has one (the admin API's handle on it).
    pub name: Option<String>,
    /// Its split in effect, with where it comes from.
    #[serde(flatten)]
    pub split: SplitView,
    /// `api.example.com`, `*.example.com`, or null for any host.
    pub host: Option<String>,
    /// Path prefix, matched on whole segments.
    pub path: String,
    /// Whether the prefix is removed before forwarding.
    pub strip_prefix: bool,
    /// The service it sends to.
    pub service: String,
    /// Instances of that service in the snapshot.
    pub instances: usize,
    /// Of those, how many take traffic now.
    pub available: usize,
}

/// A route's split in effect.
#[derive(Debug, Serialize)]
pub(crate) struct SplitView {
    /// `[{"tags": {...}, "weight": N}]`; empty when the route does not
    /// split.
    pub split: Vec<SplitEntryView>,
    /// `"config"` (the file) or `"admin_api"`; null without a split.
    pub split_from: Option<&'static str>,
}

/// One entry of a [`SplitView`].
#[derive(Debug, Serialize)]
pub(crate) struct SplitEntryView {
    /// The subset's tags.
    pub tags: BTreeMap<String, String>,
    /// Its share.
    pub weight: u32,
}

/// The split in effect on the route named `name` (`file`: its split in
/// the file), given the splits set through the admin API.
pub(crate) fn split_view(
    name: &str,
    file: &[SplitEntry],
    overrides: &BTreeMap<Arc<str>, Vec<SplitEntry>>,
) -> SplitView {
    let (split, from) = match overrides.get(name) {
        Some(s) => (s.as_slice(), "admin_api"),
        None => (file, "config"),
    };
    SplitView {
        split: split
            .iter()
            .map(|e| SplitEntryView {
                tags: (*e.tags.tags).clone(),
                weight: e.weight,
            })
            .collect(),
        split_from: (!split.is_empty()).then_some(from),
    }
}

/// The conventions part of [`RoutesView`].
#[derive(Debug, Serialize)]
pub(crate) struct ConventionsView {
    /// Host `NAME` + one of these suffixes names service `NAME`.
    pub host_suffixes: Vec<String>,
    /// Whether `/NAME/rest` names service `NAME` (forwarded as `/rest`).
    pub path: bool,
}

/// Builds the `GET /v1/routes` answer: the routes of the config in effect,
/// in the router's precedence (exact hosts, wildcard hosts by longest
/// suffix, then routes without a host; the longest path first within a
/// host).
pub(crate) fn routes(state: &RunState, registry: &Registry) -> RoutesView {
    let config = state.config();
    let snap = registry.load();
    let now = clock::now_ms();
    let overrides = registry.split_overrides();
    let mut list: Vec<&crate::config::Route> = config.routes.iter().collect();
    list.sort_by_key(|r| {
        let (class, host_len, host) = match &r.host {
            HostMatch::Exact(h) => (0, 0, h.clone()),
            HostMatch::Suffix(s) => (1, usize::MAX - s.len(), s.clone()),
            HostMatch::Any => (2, 0, String::new()),
        };
        (class, host_len, host, usize::MAX - r.path.len())
    });
    let routes = list
        .into_iter()
        .map(|r| {
            let (instances, available) = snap.service(&r.service).map_or((0, 0), |s| {
                let members = s.members();
                let up = members
                    .iter()
                    .filter(|m| m.instance.is_available(now))
                    .count();
                (members.len(), up)
            });
            RouteView {
                name: r.name.as_deref().map(str::to_owned),
                // Names are never empty: an unnamed route has no override.
                split: split_view(
                    r.name.as_deref().unwrap_or_default(),
                    &r.traffic.split,
                    &overrides,
                ),
                host: match &r.host {
                    HostMatch::Any => None,
                    HostMatch::Exact(h) => Some(h.clone()),
                    HostMatch::Suffix(s) => Some(format!("*{s}")),
                },
                path: r.path.clone(),
                strip_prefix: r.strip_prefix,
                service: r.service.to_string(),
                instances,
                available,
            }
        })
        .collect();
    RoutesView {
        routes,
        conventions: ConventionsView {
            host_suffixes: config.conventions.host_suffixes.clone(),
            path: config.conventions.path,
        },
    }
}
