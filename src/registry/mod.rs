//! The registry: owns the published [`Snapshot`] and everything needed to
//! rebuild it: the instance sets reported by each source, the services and
//! routes from the config, and the table of live per-instance state.
//!
//! Readers call [`Registry::load`] (one `ArcSwap` load, no lock). Writers
//! (sources, config reload) record their input and wake the refresher task,
//! which rebuilds and swaps the snapshot only when the result differs from
//! what is published. Bursts of updates coalesce into one rebuild.

pub mod dns;
pub mod etcd;
mod instance;
pub mod registrations;
mod snapshot;
mod source;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use arc_swap::{ArcSwap, Guard};
use tokio::sync::Notify;

pub use instance::{Health, InFlightGuard, InstanceKey, InstanceState, Transition};
pub use snapshot::{Member, RetryWindow, ServiceEntry, ServiceLive, Snapshot};
pub use source::{static_instances, InstanceSpec, STATIC_SOURCE};

use crate::balance::Schedule;
use crate::clock;
use crate::config::{Balance, Config, ServicePolicy};
use crate::router::Router;

/// The registry shared by the proxy, the admin API and the sources.
#[derive(Debug)]
pub struct Registry {
    current: ArcSwap<Snapshot>,
    build: Mutex<BuildState>,
    /// Wakes the refresher; shared so the refresher can wait on it without
    /// keeping the registry alive.
    changed: Arc<Notify>,
    /// The published version, for watchers (health supervisor, long polls).
    published: tokio::sync::watch::Sender<u64>,
    /// The input generation the last rebuild took in (see
    /// [`Registry::settled`]).
    settled: tokio::sync::watch::Sender<u64>,
}

/// Inputs of the next rebuild and the live state carried across rebuilds.
#[derive(Debug)]
struct BuildState {
    router: Arc<Router>,
    policies: BTreeMap<Arc<str>, (Balance, Arc<ServicePolicy>)>,
    default_policy: Arc<ServicePolicy>,
    max_idle: usize,
    /// Sources in the order they first reported; earlier wins on conflicts.
    sources: Vec<SourceEntry>,
    /// Self-preservation: largest share (percent) of a service's instances
    /// one implicit update may remove; 0 disables the guard.
    preserve_percent: u8,
    /// Longest a source may go without a successful report before it is
    /// reported stale (its last set keeps serving).
    max_staleness: Duration,
    /// Longest a held-back removal is held; then it applies.
    max_hold: Duration,
    /// Instances drained by an operator, by identity, whatever their source;
    /// kept across config reloads until cancelled.
    operator_drains: BTreeMap<InstanceKey, SystemTime>,
    /// Instances whose registration carried a passing check of its own:
    /// they start healthy when they appear (`clock::now_ms()` of the call,
    /// so unclaimed entries are dropped after a while).
    vouched: HashMap<InstanceKey, u64>,
    /// Counts input changes; a rebuild takes in all of them up to its start.
    inputs: u64,
    /// Per service: the version at which its published content last changed.
    service_index: HashMap<Arc<str>, u64>,
    live: HashMap<InstanceKey, Weak<InstanceState>>,
    service_live: HashMap<Arc<str>, Arc<ServiceLive>>,
    /// What the published snapshot was built from, to detect "no change".
    published: Option<Shape>,
    /// Services whose inputs changed since the last rebuild.
    dirty: Dirty,
    version: u64,
}

/// What the next rebuild must look at again.
#[derive(Debug)]
enum Dirty {
    /// Everything (first build, config reload).
    All,
    /// Only these services; every other one is as published.
    Services(BTreeSet<Arc<str>>),
}

/// Above this many changed services a rebuild merges every source again
/// instead of service by service.
const INCREMENTAL_LIMIT: usize = 32;

impl Dirty {
    fn extend(&mut self, names: impl IntoIterator<Item = Arc<str>>) {
        if let Dirty::Services(set) = self {
            set.extend(names);
        }
    }
}

/// The services whose instances differ between two versions of one
/// source's set.
fn changed_services(old: &[InstanceSpec], new: &[InstanceSpec]) -> Vec<Arc<str>> {
    if let (Some(old), Some(new)) = (runs(old), runs(new)) {
        let mut changed: Vec<Arc<str>> = new
            .iter()
            .filter(|(name, specs)| old.get(*name) != Some(*specs))
            .map(|(name, _)| (*name).clone())
            .collect();
        changed.extend(
            old.keys()
                .filter(|name| !new.contains_key(*name))
                .map(|name| (*name).clone()),
        );
        return changed;
    }
    let mut by_service: BTreeMap<&Arc<str>, (Vec<&InstanceSpec>, Vec<&InstanceSpec>)> =
        BTreeMap::new();
    for spec in old {
        by_service.entry(&spec.service).or_default().0.push(spec);
    }
    for spec in new {
        by_service.entry(&spec.service).or_default().1.push(spec);
    }
    by_service
        .into_iter()
        .filter(|(_, (a, b))| a != b)
        .map(|(name, _)| name.clone())
        .collect()
}

/// A set that lists each service's instances together, as one slice per
/// service (one map insertion per service); `None` when some service's
/// instances are spread out.
fn runs(set: &[InstanceSpec]) -> Option<BTreeMap<&Arc<str>, &[InstanceSpec]>> {
    let mut map = BTreeMap::new();
    let mut start = 0;
    for i in 1..=set.len() {
        if i == set.len() || !source::same_str(&set[i].service, &set[start].service) {
            if map.insert(&set[start].service, &set[start..i]).is_some() {
                return None;
            }
            start = i;
        }
    }
    Some(map)
}

/// Everything a snapshot's content depends on, in comparable form.
#[derive(Debug, PartialEq)]
struct Shape {
    router: Arc<Router>,
    services: BTreeMap<Arc<str>, (Balance, Arc<ServicePolicy>, Vec<Placed>)>,
}

/// Whether an update's removals were asked for (deregistrations, an edited
/// file) or merely observed (TTL expiry, a source's list shrinking).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removals {
    /// Every removal was asked for: applied as reported.
    Explicit,
    /// Observed: subject to the self-preservation guard.
    Implicit,
    /// These instances (service, address) were asked to go; any other
    /// removal (including earlier held-back ones) is still guarded.
    Only(Vec<(Arc<str>, SocketAddr)>),
}

impl Removals {
    /// Whether the removal of `addr` from `service` was asked for.
    fn names(&self, service: &Arc<str>, addr: SocketAddr) -> bool {
        match self {
            Removals::Explicit => true,
            Removals::Implicit => false,
            Removals::Only(keys) => keys.iter().any(|(s, a)| s == service && *a == addr),
        }
    }
}

/// How long implicit removals from one service add up as one burst.
const BURST_MS: u64 = 10_000;

/// Implicit removals from one service in the current burst window.
#[derive(Debug)]
struct Burst {
    started_ms: u64,
    /// The service's size when the burst began.
    base: usize,
    removed: usize,
}

/// A removal the self-preservation guard holds back: the instance stays
/// listed (and routable) until its source lists it again, an operator
/// releases the hold, or `registry.max_hold` passes; then it is removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldBack {
    /// Why the instance was to leave and why its removal is held back.
    pub reason: String,
    /// When the removal was first held back.
    pub since: SystemTime,
    /// `clock::now_ms()` when it was first held back.
    pub since_ms: u64,
    /// `clock::now_ms()` at which the removal applies anyway.
    pub until_ms: u64,
}

/// A held-back removal and the instance it keeps.
#[derive(Debug, Clone)]
struct Held {
    spec: InstanceSpec,
    back: Arc<HeldBack>,
}

/// Held-back removals of one source by (service, address).
type HeldMap = BTreeMap<(Arc<str>, SocketAddr), Held>;

/// One source's last good set and how its reports have gone.
#[derive(Debug)]
struct SourceEntry {
    name: Arc<str>,
    set: Vec<InstanceSpec>,
    /// Removals the self-preservation guard kept (still in `set`).
    held: HeldMap,
    last_ok: Option<SystemTime>,
    last_error: Option<(SystemTime, String)>,
    stale_logged: bool,
    /// Per service: implicit removals in the current burst window.
    bursts: HashMap<Arc<str>, Burst>,
}

impl SourceEntry {
    fn new(name: Arc<str>, set: Vec<InstanceSpec>) -> Self {
        SourceEntry {
            name,
            set,
            held: BTreeMap::new(),
            last_ok: Some(SystemTime::now()),
            last_error: None,
            stale_logged: false,
            bursts: HashMap::new(),
        }
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

/// An instance whose removal is held back, for `GET /v1/sources`.
#[derive(Debug, Clone)]
pub struct HeldInstance {
    /// Its service.
    pub service: Arc<str>,
    /// Its address.
    pub addr: SocketAddr,
    /// The id its source gave, if any.
    pub id: Option<Arc<str>>,
    /// Why and since when.
    pub held: Arc<HeldBack>,
}

/// Why an operator drain call could not apply.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DrainError {
    /// No source lists the instance (and, to cancel, no drain is recorded).
    #[error("service {service:?} has no instance {addr}")]
    UnknownInstance {
        /// Service.
        service: String,
        /// Address.
        addr: SocketAddr,
    },
}

/// An instance spec together with the source that reported it, whether an
/// operator drained it and whether its removal is held back.
#[derive(Debug)]
struct Placed {
    spec: InstanceSpec,
    source: Arc<str>,
    operator_drain: bool,
    held: Option<Arc<HeldBack>>,
}

impl Placed {
    fn new(spec: &InstanceSpec, source: &Arc<str>, held: &HeldMap) -> Placed {
        Placed {
            spec: spec.clone(),
            source: source.clone(),
            operator_drain: false,
            held: if held.is_empty() {
                None
            } else {
                held.get(&(spec.service.clone(), spec.addr))
                    .map(|h| h.back.clone())
            },
        }
    }
}

impl PartialEq for Placed {
    fn eq(&self, other: &Self) -> bool {
        source::same_str(&self.source, &other.source)
            && self.spec == other.spec
            && self.operator_drain == other.operator_drain
            && match (&self.held, &other.held) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b) || a == b,
                (a, b) => a.is_none() && b.is_none(),
            }
    }
}

/// Sorts one service's placed instances by address and keeps one per
/// address: the earliest source's, held back only if every source that
/// lists it holds it; then marks the operator's drains.
fn settle(
    service: &Arc<str>,
    members: &mut Vec<Placed>,
    drains: &BTreeMap<InstanceKey, SystemTime>,
) {
    // Stable sort keeps source order among equal addresses, so the dedup
    // keeps the earliest source's entry.
    members.sort_by_key(|m| m.spec.addr);
    members.dedup_by(|later, kept| {
        let same = later.spec.addr == kept.spec.addr;
        if same && later.held.is_none() {
            kept.held = None;
        }
        same
    });
    if !drains.is_empty() {
        for m in members.iter_mut() {
            m.operator_drain = drains.contains_key(&InstanceKey {
                service: service.clone(),
                addr: m.spec.addr,
            });
        }
    }
}

impl Registry {
    /// A registry holding `config`'s routes, services and static instances,
    /// with its first snapshot already published.
    pub fn new(config: &Config) -> Arc<Registry> {
        let router = Arc::new(Router::new(config));
        let state = BuildState {
            router: router.clone(),
            policies: policies(config),
            default_policy: config.default_policy.clone(),
            max_idle: config.startup.limits.max_idle_per_instance,
            sources: vec![SourceEntry::new(
                Arc::from(STATIC_SOURCE),
                static_instances(config),
            )],
            preserve_percent: config.registry.self_preservation_percent,
            max_staleness: config.registry.max_staleness,
            max_hold: config.registry.max_hold,
            operator_drains: BTreeMap::new(),
            vouched: HashMap::new(),
            inputs: 0,
            service_index: HashMap::new(),
            live: HashMap::new(),
            service_live: HashMap::new(),
            published: None,
            dirty: Dirty::All,
            version: 0,
        };
        let registry = Arc::new(Registry {
            current: ArcSwap::from_pointee(Snapshot::new(0, router, HashMap::new())),
            build: Mutex::new(state),
            changed: Arc::new(Notify::new()),
            published: tokio::sync::watch::Sender::new(0),
            settled: tokio::sync::watch::Sender::new(0),
        });
        registry.rebuild();
        registry
    }

    /// The current snapshot. Hold the guard briefly: take what is needed
    /// (an `Arc<ServiceEntry>`, a pick) and drop it before awaiting.
    #[inline]
    pub fn load(&self) -> Guard<Arc<Snapshot>> {
        self.current.load()
    }

    /// The current snapshot as an owned `Arc`, for long-lived readers.
    pub fn load_full(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// A receiver that sees the version of every snapshot published.
    pub fn watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.published.subscribe()
    }

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
        let mut st = self.lock();
        let preserve = st.preserve_percent;
        let max_hold_ms = st.max_hold.as_millis() as u64;
        let idx = match st.sources.iter().position(|e| &*e.name == source) {
            Some(i) => i,
            None => {
                st.sources
                    .push(SourceEntry::new(Arc::from(source), Vec::new()));
                st.sources.len() - 1
            }
        };
        let entry = &mut st.sources[idx];
        let mut held: HeldMap = BTreeMap::new();
        if preserve > 0 && removals != Removals::Explicit {
            let mut removed: BTreeMap<Arc<str>, Vec<InstanceSpec>> = BTreeMap::new();
            for old in &entry.set {
                let kept = instances
                    .iter()
                    .any(|n| n.service == old.service && n.addr == old.addr);
                if !kept && !removals.names(&old.service, old.addr) {
                    removed
                        .entry(old.service.clone())
                        .or_default()
                        .push(old.clone());
                }
            }
            for (service, gone) in removed {
                let total = current.service(&service).map_or(0, |s| s.members().len());
                // Removals within one burst window add up against the size
                // the service had when the burst began.
                let burst = entry.bursts.entry(service.clone()).or_insert(Burst {
                    started_ms: now,
                    base: total,
                    removed: 0,
                });
                if now.saturating_sub(burst.started_ms) > BURST_MS {
                    *burst = Burst {
                        started_ms: now,
                        base: total,
                        removed: 0,
                    };
                }
                let cumulative = burst.removed + gone.len();
                let too_many = cumulative * 100 > usize::from(preserve) * burst.base.max(total)
                    || gone.len() >= total;
                if total > 0 && too_many {
                    let why = if gone.len() >= total {
                        format!("it would leave service {service} without instances")
                    } else {
                        format!(
                            "{cumulative} of {} instances of service {service} would leave within {}s, over registry.self_preservation_percent = {preserve}",
                            burst.base.max(total),
                            BURST_MS / 1000
                        )
                    };
                    let mut newly = 0;
                    for g in gone.iter() {
                        let key = (g.service.clone(), g.addr);
                        let back = match entry.held.get(&key) {
                            Some(h) => h.back.clone(),
                            None => {
                                newly += 1;
                                Arc::new(HeldBack {
                                    reason: format!(
                                        "{}; removal held back by self-preservation: {why}",
                                        cause(g)
                                    ),
                                    since: SystemTime::now(),
                                    since_ms: now,
                                    until_ms: now + max_hold_ms,
                                })
                            }
                        };
                        held.insert(
                            key,
                            Held {
                                spec: g.clone(),
                                back,
                            },
                        );
                    }
                    if newly > 0 {
                        tracing::warn!(
                            source, service = %service, removing = gone.len(), of = total, reason = %why,
                            "self-preservation: holding back removal of too many instances at once, for at most registry.max_hold; release with POST /v1/sources/{source}/release"
                        );
                    }
                } else {
                    burst.removed = cumulative;
                }
            }
        }
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
        entry.last_ok = Some(SystemTime::now());
        entry.stale_logged = false;
        if let Some((_, e)) = entry.last_error.take() {
            tracing::info!(source, previous_error = %e, "source reporting again");
        }
        st.dirty.extend(changed);
        self.touched(st);
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

    /// Applies the removals the self-preservation guard held back for
    /// `source`; returns how many instances it removed.
    pub fn release_held(&self, source: &str) -> Option<usize> {
        let mut st = self.lock();
        let entry = st.sources.iter_mut().find(|e| &*e.name == source)?;
        let held = std::mem::take(&mut entry.held);
        entry
            .set
            .retain(|s| !held.contains_key(&(s.service.clone(), s.addr)));
        st.dirty
            .extend(held.keys().map(|(service, _)| service.clone()));
        self.touched(st);
        tracing::info!(
            source,
            released = held.len(),
            "held-back removals released by operator"
        );
        Some(held.len())
    }

    /// Applies the held-back removals held for `registry.max_hold` by
    /// `now_ms`; returns how many.
    pub fn apply_overdue_holds(&self, now_ms: u64) -> usize {
        let mut st = self.lock();
        let mut services = Vec::new();
        for entry in &mut st.sources {
            let due: Vec<(Arc<str>, SocketAddr)> = entry
                .held
                .iter()
                .filter(|(_, h)| h.back.until_ms <= now_ms)
                .map(|(k, _)| k.clone())
                .collect();
            for key in due {
                if let Some(h) = entry.held.remove(&key) {
                    tracing::warn!(
                        source = %entry.name, service = %key.0, instance = %key.1,
                        reason = %h.back.reason,
                        "self-preservation: held-back removal applies now, held for registry.max_hold"
                    );
                    entry
                        .set
                        .retain(|s| !(s.addr == key.1 && source::same_str(&s.service, &key.0)));
                    services.push(key.0);
                }
            }
        }
        let n = services.len();
        if n > 0 {
            st.dirty.extend(services);
            self.touched(st);
        }
        n
    }

    /// When the next held-back removal applies (`clock::now_ms()` scale).
    fn next_hold_deadline(&self) -> Option<u64> {
        let st = self.lock();
        st.sources
            .iter()
            .flat_map(|e| e.held.values().map(|h| h.back.until_ms))
            .min()
    }

    /// The hold on the removal of `addr` from `service` reported by
    /// `source`, if self-preservation holds it back.
    pub fn held_back(
        &self,
        source: &str,
        service: &str,
        addr: SocketAddr,
    ) -> Option<Arc<HeldBack>> {
        let st = self.lock();
        let entry = st.sources.iter().find(|e| &*e.name == source)?;
        entry
            .held
            .get(&(Arc::from(service), addr))
            .map(|h| h.back.clone())
    }

    /// Drains (or, with `drain` false, undrains) the instance `addr` of
    /// `service`, whatever source lists it: it keeps its place but takes no
    /// new requests, in panic mode too. The drain lasts, across config
    /// reloads and the instance leaving and coming back, until cancelled.
    /// Returns whether anything changed. Draining needs a listed instance;
    /// cancelling needs a recorded drain or a listed instance.
    pub fn set_operator_drain(
        &self,
        service: &str,
        addr: SocketAddr,
        drain: bool,
    ) -> Result<bool, DrainError> {
        let key = InstanceKey {
            service: Arc::from(service),
            addr,
        };
        let mut st = self.lock();
        let listed = st.sources.iter().any(|e| {
            e.set
                .iter()
                .any(|s| s.addr == addr && &*s.service == service)
        });
        let changed = if drain {
            if !listed {
                return Err(DrainError::UnknownInstance {
                    service: service.to_owned(),
                    addr,
                });
            }
            st.operator_drains
                .insert(key.clone(), SystemTime::now())
                .is_none()
        } else {
            let had = st.operator_drains.remove(&key).is_some();
            if !had && !listed {
                return Err(DrainError::UnknownInstance {
                    service: service.to_owned(),
                    addr,
                });
            }
            had
        };
        if changed {
            tracing::info!(service, instance = %addr, drain, "operator drain changed");
            st.dirty.extend([key.service]);
            self.touched(st);
        }
        Ok(changed)
    }

    /// The operator's drains (service, address, since when), including
    /// those of instances no source lists right now.
    pub fn operator_drains(&self) -> Vec<(InstanceKey, SystemTime)> {
        let st = self.lock();
        st.operator_drains
            .iter()
            .map(|(k, t)| (k.clone(), *t))
            .collect()
    }

    /// Restores operator drains saved earlier (at start, from the state
    /// file).
    pub fn restore_operator_drains(
        &self,
        drains: impl IntoIterator<Item = (InstanceKey, SystemTime)>,
    ) {
        let mut st = self.lock();
        let mut services = Vec::new();
        for (key, since) in drains {
            services.push(key.service.clone());
            st.operator_drains.insert(key, since);
        }
        if !services.is_empty() {
            st.dirty.extend(services);
            self.touched(st);
        }
    }

    /// Takes a registration's word that `addr` of `service` passed its own
    /// check: an instance whose first active check has not run yet starts
    /// healthy (now, or when it appears). Health the proxy's checks already
    /// decided is kept.
    pub fn vouch_healthy(&self, service: &str, addr: SocketAddr) {
        let key = InstanceKey {
            service: Arc::from(service),
            addr,
        };
        let mut st = self.lock();
        match st.live.get(&key).and_then(Weak::upgrade) {
            Some(state) => {
                drop(st);
                if state.health() == Health::Unknown {
                    state.set_health(Health::Healthy);
                    state.note_health("healthy", VOUCHED.to_owned());
                    let now = clock::now_ms();
                    if let Some(svc) = self.load().service(service) {
                        // A late joiner ramps up as after a first pass.
                        let late = state.late_joiner.load(std::sync::atomic::Ordering::Relaxed);
                        if late && !svc.policy().slow_start.is_zero() {
                            state.start_warming(now);
                        }
                        crate::balance::update_panic(svc, now);
                    }
                }
            }
            None => {
                st.vouched.insert(key, clock::now_ms());
            }
        }
    }

    /// Every source's status.
    pub fn sources(&self) -> Vec<SourceStatus> {
        let mut st = self.lock();
        let max = st.max_staleness;
        let now = SystemTime::now();
        st.sources
            .iter_mut()
            .map(|e| {
                let age = e.last_ok.and_then(|t| now.duration_since(t).ok());
                let stale = e.last_error.is_some() && age.is_none_or(|a| a > max);
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

    /// The version at which `service`'s published content last changed;
    /// 0 when unknown.
    pub fn service_index(&self, service: &str) -> u64 {
        self.lock().service_index.get(service).copied().unwrap_or(0)
    }

    /// Applies a reloaded config: routes, service policies and static
    /// instances. Live state of unchanged instances is kept.
    pub fn apply_config(&self, config: &Config) {
        let mut st = self.lock();
        st.router = Arc::new(Router::new(config));
        st.policies = policies(config);
        st.default_policy = config.default_policy.clone();
        st.max_idle = config.startup.limits.max_idle_per_instance;
        st.preserve_percent = config.registry.self_preservation_percent;
        st.max_staleness = config.registry.max_staleness;
        if st.max_hold != config.registry.max_hold {
            // Holds in force end `max_hold` after they began, as now set.
            st.max_hold = config.registry.max_hold;
            let max_hold_ms = st.max_hold.as_millis() as u64;
            for e in &mut st.sources {
                for h in e.held.values_mut() {
                    let mut back = (*h.back).clone();
                    back.until_ms = back.since_ms + max_hold_ms;
                    h.back = Arc::new(back);
                }
            }
        }
        let statics = static_instances(config);
        if let Some(e) = st.sources.iter_mut().find(|e| &*e.name == STATIC_SOURCE) {
            // Editing the file is an explicit act: no guard.
            e.set = statics;
            e.held.clear();
            e.last_ok = Some(SystemTime::now());
        }
        st.dirty = Dirty::All;
        self.touched(st);
    }

    /// Rebuilds from the recorded inputs and publishes the result if it
    /// differs from the current snapshot. Returns whether it published.
    pub fn rebuild(&self) -> bool {
        let (published, generation) = self.rebuild_inner();
        self.settled.send_if_modified(|g| {
            let newer = generation > *g;
            if newer {
                *g = generation;
            }
            newer
        });
        published
    }

    /// Records an input change (the caller has marked what is dirty) and
    /// wakes the refresher.
    fn touched(&self, mut st: std::sync::MutexGuard<'_, BuildState>) {
        st.inputs += 1;
        drop(st);
        self.changed.notify_one();
    }

    /// Waits (at most `limit`) until every input change made so far is in
    /// the published snapshot (or made no difference to it); whether it is.
    pub async fn settled(&self, limit: Duration) -> bool {
        let target = self.lock().inputs;
        let mut rx = self.settled.subscribe();
        tokio::time::timeout(limit, rx.wait_for(|g| *g >= target))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// [`Registry::rebuild`]; also returns the input generation it took in.
    fn rebuild_inner(&self) -> (bool, u64) {
        let mut st = self.lock();
        let generation = st.inputs;
        let dirty = std::mem::replace(&mut st.dirty, Dirty::Services(BTreeSet::new()));
        let (shape, changed) = match (dirty, st.published.take()) {
            (Dirty::Services(names), Some(mut shape)) if names.len() <= INCREMENTAL_LIMIT => {
                match st.update_shape(&mut shape, names) {
                    Some(changed) => (shape, changed),
                    None => {
                        st.published = Some(shape);
                        return (false, generation);
                    }
                }
            }
            (_, published) => {
                st.published = published;
                let shape = st.shape();
                let Some(changed) = st.changes(&shape) else {
                    return (false, generation);
                };
                (shape, changed)
            }
        };
        st.version += 1;
        let current = self.current.load_full();
        let snapshot = st.materialize(&shape, &changed, &current);
        let (services, instances) = (snapshot.service_count(), snapshot.instance_count());
        self.current.store(Arc::new(snapshot));
        tracing::debug!(
            version = st.version,
            services,
            instances,
            "published registry snapshot"
        );
        st.published = Some(shape);
        self.published.send_replace(st.version);
        (true, generation)
    }

    /// The refresher: rebuilds whenever an input changed. Bursts of updates
    /// coalesce into one rebuild (the notification holds one permit). Runs
    /// until the registry is dropped by everyone else.
    /// It also applies held-back removals when their `registry.max_hold`
    /// passes.
    pub async fn run_refresher(self: Arc<Self>) {
        let changed = self.changed.clone();
        let weak = Arc::downgrade(&self);
        drop(self);
        loop {
            let Some(deadline) = weak.upgrade().map(|me| me.next_hold_deadline()) else {
                return;
            };
            match deadline {
                Some(at) => {
                    let wait = Duration::from_millis(at.saturating_sub(clock::now_ms()));
                    tokio::select! {
                        () = changed.notified() => {}
                        () = tokio::time::sleep(wait) => {}
                    }
                }
                None => changed.notified().await,
            }
            let Some(me) = weak.upgrade() else {
                return;
            };
            me.apply_overdue_holds(clock::now_ms());
            // Off the proxy's worker threads: a rebuild of a large
            // registry takes a millisecond or more, which must not stall
            // the requests of the worker it would otherwise run on.
            let _ = tokio::task::spawn_blocking(move || me.rebuild()).await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BuildState> {
        // A panic while building leaves the inputs intact; keep serving.
        self.build.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn policies(config: &Config) -> BTreeMap<Arc<str>, (Balance, Arc<ServicePolicy>)> {
    config
        .services
        .values()
        .map(|s| (s.name.clone(), (s.balance, s.policy.clone())))
        .collect()
}

/// Why an instance started healthy before the proxy's first check.
const VOUCHED: &str = "its registration reported a passing check of its own";

/// How long a registration's word on its health waits for the instance to
/// appear.
const VOUCH_KEEP_MS: u64 = 60_000;

/// The health a new instance starts with under `policy`.
fn initial_health(policy: &ServicePolicy) -> Health {
    match &policy.health {
        None => Health::NotChecked,
        Some(h) if h.start_healthy => Health::Healthy,
        Some(_) => Health::Unknown,
    }
}

impl BuildState {
    /// Merges the sources into a comparable description of the next snapshot.
    fn shape(&self) -> Shape {
        let mut services: BTreeMap<Arc<str>, (Balance, Arc<ServicePolicy>, Vec<Placed>)> = self
            .policies
            .iter()
            .map(|(name, (balance, policy))| (name.clone(), (*balance, policy.clone(), Vec::new())))
            .collect();
        // Sets usually list a service's instances together: gather each
        // run of one service, and look the service up once per run.
        let mut run: Vec<Placed> = Vec::new();
        let mut flush = |run: &mut Vec<Placed>| {
            if let Some(first) = run.first() {
                let (_, _, members) =
                    services
                        .entry(first.spec.service.clone())
                        .or_insert_with(|| {
                            (Balance::default(), self.default_policy.clone(), Vec::new())
                        });
                members.append(run);
            }
        };
        for SourceEntry {
            name: source,
            set,
            held,
            ..
        } in &self.sources
        {
            for spec in set {
                if run.first().is_some_and(|f| f.spec.service != spec.service) {
                    flush(&mut run);
                }
                run.push(Placed::new(spec, source, held));
            }
            flush(&mut run);
        }
        for (name, (_, _, members)) in services.iter_mut() {
            settle(name, members, &self.operator_drains);
        }
        Shape {
            router: self.router.clone(),
            services,
        }
    }

    /// One service's entry in the next shape, merged from every source;
    /// `None` when no source lists it and the config does not name it.
    fn service_shape(&self, name: &Arc<str>) -> Option<(Balance, Arc<ServicePolicy>, Vec<Placed>)> {
        let mut members: Vec<Placed> = Vec::new();
        for SourceEntry {
            name: source,
            set,
            held,
            ..
        } in &self.sources
        {
            members.extend(
                set.iter()
                    .filter(|spec| source::same_str(&spec.service, name))
                    .map(|spec| Placed::new(spec, source, held)),
            );
        }
        settle(name, &mut members, &self.operator_drains);
        match self.policies.get(name) {
            Some((balance, policy)) => Some((*balance, policy.clone(), members)),
            None if members.is_empty() => None,
            None => Some((Balance::default(), self.default_policy.clone(), members)),
        }
    }

    /// Brings the published `shape` up to date for the services in
    /// `names` (all others are unchanged). Returns the services whose
    /// entries changed, or `None` when the snapshot would be the same.
    fn update_shape(
        &self,
        shape: &mut Shape,
        names: BTreeSet<Arc<str>>,
    ) -> Option<HashSet<Arc<str>>> {
        let mut changed = HashSet::new();
        let mut removed = false;
        for name in names {
            match self.service_shape(&name) {
                Some(entry) => {
                    if shape.services.get(&name) != Some(&entry) {
                        shape.services.insert(name.clone(), entry);
                        changed.insert(name);
                    }
                }
                None => removed |= shape.services.remove(&name).is_some(),
            }
        }
        let router_changed = !Arc::ptr_eq(&shape.router, &self.router);
        if router_changed {
            shape.router = self.router.clone();
        }
        (!changed.is_empty() || removed || router_changed).then_some(changed)
    }

    /// What differs between `shape` and the published one: `None` when
    /// nothing does, else the services whose entries must be rebuilt (new
    /// ones included; removed ones and a new router change the snapshot
    /// without naming a service).
    fn changes(&self, shape: &Shape) -> Option<HashSet<Arc<str>>> {
        let Some(old) = &self.published else {
            return Some(shape.services.keys().cloned().collect());
        };
        let changed: HashSet<Arc<str>> = shape
            .services
            .iter()
            .filter(|(name, new)| old.services.get(*name) != Some(new))
            .map(|(name, _)| name.clone())
            .collect();
        let removed = old
            .services
            .keys()
            .any(|name| !shape.services.contains_key(name));
        (!changed.is_empty() || removed || old.router != shape.router).then_some(changed)
    }

    /// Builds the snapshot for `shape`, attaching live state by identity.
    /// Services not in `changed` keep their entry in `current` (built from
    /// the published shape) as it is, so the cost of a rebuild follows what
    /// changed, not the registry's size.
    fn materialize(
        &mut self,
        shape: &Shape,
        changed: &HashSet<Arc<str>>,
        current: &Snapshot,
    ) -> Snapshot {
        let now = clock::now_ms();
        let first_build = self.version == 1;
        self.vouched
            .retain(|_, at| now.saturating_sub(*at) < VOUCH_KEEP_MS);
        let mut services = HashMap::with_capacity(shape.services.len());
        // Instances of changed or removed services: they drain unless they
        // are placed again below.
        let mut left: Vec<InstanceKey> = Vec::new();
        let mut placed: HashSet<InstanceKey> = HashSet::new();
        for (name, entry) in current.services_by_name() {
            if !shape.services.contains_key(name) {
                left.extend(entry.members().iter().map(|m| m.instance.key().clone()));
            }
        }
        for (name, (balance, policy, specs)) in &shape.services {
            let unchanged = !changed.contains(name);
            let old_entry = current.service(name);
            if let (true, Some(entry)) = (unchanged, old_entry) {
                services.insert(name.clone(), entry.clone());
                continue;
            }
            if let Some(entry) = old_entry {
                left.extend(entry.members().iter().map(|m| m.instance.key().clone()));
            }
            let members: Box<[Member]> = specs
                .iter()
                .map(|p| {
                    let Placed { spec, source, .. } = p;
                    let key = InstanceKey {
                        service: name.clone(),
                        addr: spec.addr,
                    };
                    let state = match self.live.get(&key).and_then(Weak::upgrade) {
                        Some(state) => {
                            adjust_health(&state, policy);
                            state
                        }
                        None => {
                            let mut health = initial_health(policy);
                            let vouched =
                                self.vouched.remove(&key).is_some() && health == Health::Unknown;
                            if vouched {
                                health = Health::Healthy;
                            }
                            let state =
                                Arc::new(InstanceState::new(key.clone(), self.max_idle, health));
                            if vouched {
                                state.note_health("healthy", VOUCHED.to_owned());
                            }
                            // Instances joining a running service ramp up;
                            // those checked first ramp once they pass.
                            if !first_build && !policy.slow_start.is_zero() {
                                if state.is_available(now) {
                                    state.start_warming(now);
                                } else {
                                    state
                                        .late_joiner
                                        .store(true, std::sync::atomic::Ordering::Relaxed);
                                }
                            }
                            state
                        }
                    };
                    self.live.insert(key.clone(), Arc::downgrade(&state));
                    placed.insert(key);
                    let reason = match (p.operator_drain, spec.draining) {
                        (true, _) => "drained by an operator",
                        (false, true) => "drain requested by its source",
                        (false, false) => "drain cancelled",
                    };
                    state.set_admin_drain(p.operator_drain || spec.draining, reason);
                    Member {
                        instance: state,
                        weight: spec.weight,
                        id: spec.id.clone(),
                        tags: spec.tags.clone(),
                        source: source.clone(),
                        draining: spec.draining,
                        operator_drain: p.operator_drain,
                        held: p.held.clone(),
                    }
                })
                .collect();
            let index = match self.service_index.get(name) {
                Some(&i) if unchanged => i,
                _ => self.version,
            };
            self.service_index.insert(name.clone(), index);
            let schedule = Schedule::new(members.iter().map(|m| m.weight));
            let service_live = self
                .service_live
                .entry(name.clone())
                .or_insert_with(|| Arc::new(ServiceLive::new(now)))
                .clone();
            let entry = ServiceEntry {
                name: name.clone(),
                balance: *balance,
                policy: policy.clone(),
                members,
                schedule,
                live: service_live,
                index,
            };
            crate::balance::update_panic(&entry, now);
            services.insert(name.clone(), Arc::new(entry));
        }
        // Instances gone from every source drain: no snapshot lists them,
        // their idle connections close, requests in flight finish.
        for key in left {
            if placed.contains(&key) {
                continue;
            }
            if let Some(state) = self.live.remove(&key).and_then(|w| w.upgrade()) {
                state.start_draining();
            }
        }
        self.service_live
            .retain(|name, _| services.contains_key(name));
        Snapshot::new(self.version, self.router.clone(), services)
    }
}

/// Brings a kept instance's health in line with a changed policy: checks
/// added make it wait for a pass, checks removed make it usable.
fn adjust_health(state: &InstanceState, policy: &ServicePolicy) {
    match (&policy.health, state.health()) {
        (None, Health::NotChecked)
        | (Some(_), Health::Unknown | Health::Healthy | Health::Unhealthy) => {}
        (None, _) => {
            state.set_health(Health::NotChecked);
        }
        (Some(_), Health::NotChecked) => {
            state.set_health(initial_health(policy));
        }
    }
}

#[cfg(test)]
mod tests;
