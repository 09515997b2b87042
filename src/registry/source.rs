//! The source interface and the registry's record of each source: every
//! producer of instances (the static TOML list, the registration API, etcd,
//! DNS) reports its *whole* current set under its own name
//! ([`Registry::report`]), and the registry keeps each source's last good
//! set, how its reports have gone ([`SourceStatus`]) and which of its
//! removals self-preservation holds back.
//!
//! Merge rule: the union of all sources, keyed by [`super::InstanceKey`]
//! (service + address). When two sources list the same instance, the one
//! reported first (the static config is always first) decides its weight
//! and id. A source that fails simply does not report: its last good set
//! stays in force.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use super::diff::changed_services;
use super::preserve::{Bursts, HeldInstance, HeldMap, Removals};
use super::{BuildState, Registry};
use crate::clock;
use crate::config::Config;

/// Name of the static-config source.
pub const STATIC_SOURCE: &str = "config";

/// One instance as a source reports it.
#[derive(Debug, Clone, Eq)]
pub struct InstanceSpec {
    /// The service it belongs to.
    pub service: Arc<str>,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Relative share of traffic (at least 1).
    pub weight: u32,
    /// The id the source knows it by, if any.
    pub id: Option<Arc<str>>,
    /// Metadata.
    pub tags: Option<Arc<BTreeMap<String, String>>>,
    /// Asked to drain: kept listed, takes no new requests.
    pub draining: bool,
}

/// Equal strings, checked by pointer first: specs compared across
/// rebuilds usually share their `Arc`s, and `Arc<str>`'s own `==` always
/// compares the bytes.
#[inline]
pub(crate) fn same_str(a: &Arc<str>, b: &Arc<str>) -> bool {
    Arc::ptr_eq(a, b) || a == b
}

impl PartialEq for InstanceSpec {
    fn eq(&self, other: &Self) -> bool {
        self.addr == other.addr
            && self.weight == other.weight
            && self.draining == other.draining
            && same_str(&self.service, &other.service)
            && match (&self.id, &other.id) {
                (Some(a), Some(b)) => same_str(a, b),
                (a, b) => a.is_none() && b.is_none(),
            }
            && match (&self.tags, &other.tags) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b) || a == b,
                (a, b) => a.is_none() && b.is_none(),
            }
    }
}

impl InstanceSpec {
    /// A plain instance: weight 1, no id, no tags.
    pub fn new(service: Arc<str>, addr: SocketAddr) -> Self {
        InstanceSpec {
            service,
            addr,
            weight: 1,
            id: None,
            tags: None,
            draining: false,
        }
    }
}

/// The static instances written in the config file.
pub fn static_instances(config: &Config) -> Vec<InstanceSpec> {
    config
        .services
        .values()
        .flat_map(|svc| {
            svc.instances.iter().map(move |i| InstanceSpec {
                service: svc.name.clone(),
                addr: i.addr,
                weight: i.weight,
                id: None,
                tags: i.tags.clone(),
                draining: false,
            })
        })
        .collect()
}

/// One source's last good set and how its reports have gone.
#[derive(Debug)]
pub(super) struct SourceEntry {
    pub(super) name: Arc<str>,
    pub(super) set: Vec<InstanceSpec>,
    /// Removals the self-preservation guard kept (still in `set`).
    pub(super) held: HeldMap,
    /// Last successful report, as shown.
    last_ok: Option<SystemTime>,
    /// The same, `clock::now_ms()`, for its age.
    last_ok_ms: Option<u64>,
    last_error: Option<(SystemTime, String)>,
    stale_logged: bool,
    /// Per service: implicit removals in the current burst window.
    pub(super) bursts: Bursts,
}

impl SourceEntry {
    pub(super) fn new(name: Arc<str>, set: Vec<InstanceSpec>) -> Self {
        let mut entry = SourceEntry {
            name,
            set,
            held: BTreeMap::new(),
            last_ok: None,
            last_ok_ms: None,
            last_error: None,
            stale_logged: false,
            bursts: Bursts::new(),
        };
        entry.reported();
        entry
    }

    /// Records a successful report, now.
    pub(super) fn reported(&mut self) {
        self.last_ok = Some(SystemTime::now());
        self.last_ok_ms = Some(clock::now_ms());
    }
}

/// A source's status, for `GET /v1/sources`.
#[derive(Debug, Clone)]
pub struct SourceStatus {
    /// Its name.
    pub name: Arc<str>,
    /// `ok`, `failing` (last refresh failed, within max staleness),
    /// `stale` (failing for longer), or `starting`.
    pub state: &'static str,
    /// Last successful report.
    pub last_success: Option<SystemTime>,
    /// Last error and when.
    pub last_error: Option<(SystemTime, String)>,
    /// Instances in its current set.
    pub instances: usize,
    /// Removals held back by self-preservation.
    pub held_back: Vec<HeldInstance>,
}

/// `sources`' entry for `name`, added (last: later sources lose conflicts)
/// if it has not reported before.
fn source_entry<'a>(sources: &'a mut Vec<SourceEntry>, name: &str) -> &'a mut SourceEntry {
    let i = match sources.iter().position(|e| &*e.name == name) {
        Some(i) => i,
        None => {
            sources.push(SourceEntry::new(Arc::from(name), Vec::new()));
            sources.len() - 1
        }
    };
    &mut sources[i]
}

impl Registry {
    /// Replaces the whole instance set reported by `source`; removals are
    /// implicit (subject to the self-preservation guard).
    pub fn update_source(&self, source: &str, instances: Vec<InstanceSpec>) {
        self.report(source, instances, Removals::Implicit);
    }

    /// Replaces the whole instance set reported by `source`.
    ///
    /// Self-preservation: unless `removals` is [`Removals::Explicit`]
    /// (deregistrations), an update that would remove more than
    /// `registry.self_preservation_percent` of a service's instances, or the
    /// last of them, keeps those instances and records them as held back
    /// (see [`Registry::sources`], [`Registry::release_held`]) for at most
    /// `registry.max_hold`.
    pub fn report(&self, source: &str, instances: Vec<InstanceSpec>, removals: Removals) {
        let cause = |_: &InstanceSpec| format!("no longer listed by source {source}");
        self.report_because(source, instances, removals, &cause);
    }

    /// [`Registry::report`], with `cause` saying why an instance left the
    /// source's set (shown with a held-back removal).
    pub fn report_because(
        &self,
        source: &str,
        mut instances: Vec<InstanceSpec>,
        removals: Removals,
        cause: &dyn Fn(&InstanceSpec) -> String,
    ) {
        let current = self.load_full();
        let now = clock::now_ms();
        let mut guard = self.lock();
        let st: &mut BuildState = &mut guard;
        let entry = source_entry(&mut st.sources, source);
        let held = st
            .preserve
            .hold_back(entry, &instances, &removals, &current, now, cause);
        instances.extend(held.values().map(|h| h.spec.clone()));
        let mut changed = changed_services(&entry.set, &instances);
        // A hold that starts or ends changes how the instance is shown.
        changed.extend(
            held.iter()
                .filter(|(k, h)| {
                    entry
                        .held
                        .get(*k)
                        .is_none_or(|o| !Arc::ptr_eq(&o.back, &h.back))
                })
                .chain(entry.held.iter().filter(|(k, _)| !held.contains_key(*k)))
                .map(|((service, _), _)| service.clone()),
        );
        entry.set = instances;
        entry.held = held;
        entry.reported();
        entry.stale_logged = false;
        if let Some((_, e)) = entry.last_error.take() {
            tracing::info!(source, previous_error = %e, "source reporting again");
        }
        st.dirty.extend(changed);
        self.touched(guard);
    }

    /// Records that `source` failed to refresh: its last good set keeps
    /// serving. Logged once per distinct error.
    pub fn source_failed(&self, source: &str, error: String) {
        let mut st = self.lock();
        let Some(entry) = st.sources.iter_mut().find(|e| &*e.name == source) else {
            st.sources
                .push(SourceEntry::new(Arc::from(source), Vec::new()));
            let entry = st.sources.last_mut().expect("just pushed");
            tracing::warn!(source, %error, "source failed before its first report");
            entry.last_error = Some((SystemTime::now(), error));
            return;
        };
        if entry.last_error.as_ref().map(|(_, e)| e) != Some(&error) {
            tracing::warn!(source, %error, instances = entry.set.len(), "source failed; keeping its last good set");
        }
        entry.last_error = Some((SystemTime::now(), error));
    }

    /// Every source's status.
    pub fn sources(&self) -> Vec<SourceStatus> {
        let mut st = self.lock();
        let max = st.max_staleness;
        let max_ms = max.as_millis() as u64;
        let now = clock::now_ms();
        st.sources
            .iter_mut()
            .map(|e| {
                let age = e.last_ok_ms.map(|t| now.saturating_sub(t));
                let stale = e.last_error.is_some() && age.is_none_or(|a| a > max_ms);
                if stale && !e.stale_logged {
                    tracing::warn!(source = %e.name, max_staleness = ?max, "source is stale; its last set still serves");
                    e.stale_logged = true;
                }
                SourceStatus {
                    name: e.name.clone(),
                    state: if stale {
                        "stale"
                    } else if e.last_error.is_some() {
                        "failing"
                    } else if e.last_ok.is_some() {
                        "ok"
                    } else {
                        "starting"
                    },
                    last_success: e.last_ok,
                    last_error: e.last_error.clone(),
                    instances: e.set.len(),
                    held_back: e
                        .held
                        .values()
                        .map(|h| HeldInstance {
                            service: h.spec.service.clone(),
                            addr: h.spec.addr,
                            id: h.spec.id.clone(),
                            held: h.back.clone(),
                        })
                        .collect(),
                }
            })
            .collect()
    }
}
