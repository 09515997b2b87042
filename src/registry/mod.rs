//! The registry: owns the published [`Snapshot`] and everything needed to
//! rebuild it: the instance sets reported by each source, the services and
//! routes from the config, and the table of live per-instance state.
//!
//! Readers call [`Registry::load`] (one `ArcSwap` load, no lock). Writers
//! (sources, config reload) record their input and wake the refresher task,
//! which rebuilds and swaps the snapshot only when the result differs from
//! what is published. Bursts of updates coalesce into one rebuild.
//!
//! The registry depends on nothing above it (config, router and the clock
//! only): what higher layers keep per instance or per service goes in a
//! [`Slot`], and what they derive from a service's members (panic mode)
//! they install with [`Registry::reassess_with`].
//!
//! Files, in the order an update flows through them:
//! - `source.rs`: the source interface, each source's last good set and
//!   status ([`Registry::report`], [`Registry::sources`]);
//! - `preserve.rs`: the self-preservation guard and its held-back removals;
//! - `drain.rs`: the operator's drains;
//! - `diff.rs`: merging the sources into the next snapshot's shape and
//!   comparing it with the published one;
//! - `build.rs`: making the changed services' entries, live state attached
//!   by identity;
//! - `snapshot.rs`, `instance.rs`, `state.rs`, `attach.rs`: what is
//!   published, and the live state it points to; `stats.rs`: the counters
//!   and histograms kept with that live state for the metrics;
//! - `pool.rs`, `schedule.rs`, `ring.rs`, `latency.rs`: what balancing
//!   reads: each service's pools (subsets, zone) with their precomputed
//!   round-robin order and hash ring, and an instance's latency average;
//! - this file: the handle, the build state and the refresher;
//! - [`registrations`], [`etcd`], [`dns`], [`gossip`], [`serf`]: the
//!   sources besides the config.

mod attach;
mod build;
mod diff;
pub mod dns;
mod drain;
pub mod etcd;
pub mod gossip;
mod instance;
mod latency;
mod pool;
mod preserve;
pub mod registrations;
mod ring;
mod schedule;
pub mod serf;
mod snapshot;
mod source;
mod state;
pub mod stats;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use arc_swap::{ArcSwap, Guard};
use tokio::sync::Notify;

pub use attach::{Attachment, Slot};
pub use drain::DrainError;
pub use instance::{InFlightGuard, InstanceState};
pub use latency::{Estimate, Latency, LatencyWindow};
pub use pool::{Pool, WHOLE};
pub use preserve::{HeldBack, HeldInstance, Removals};
pub use ring::{instance_hash, Ring};
pub use schedule::Schedule;
pub use snapshot::{Member, ServiceEntry, ServiceLive, Snapshot, Waiters};
pub use source::{static_instances, InstanceSpec, SourceStatus, STATIC_SOURCE};
pub use state::{Health, InstanceKey, Lifecycle, Transition};

use diff::{Dirty, Shape, INCREMENTAL_LIMIT};
use preserve::Preservation;
use source::SourceEntry;

use crate::clock;
use crate::config::{Balance, Config, ServicePolicy, SetSplitError, SplitEntry};
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
    /// How long rebuilds take, for the metrics.
    rebuilds: stats::RebuildStats,
}

/// What a higher layer derives from a service's members and keeps in its
/// live state, recomputed at `now_ms` whenever the members may have
/// changed (health: the panic-mode flag). See [`Registry::reassess_with`].
pub type Reassess = fn(&ServiceEntry, u64) -> bool;

/// Inputs of the next rebuild and the live state carried across rebuilds.
#[derive(Debug)]
struct BuildState {
    /// Applied to every service entry built, before it is published.
    reassess: Option<Reassess>,
    /// The config last applied (the file's), and the route splits set
    /// through the admin API over it, by route name: the router and the
    /// policies are built from the two.
    config: Arc<Config>,
    splits: BTreeMap<Arc<str>, Vec<SplitEntry>>,
    router: Arc<Router>,
    policies: BTreeMap<Arc<str>, (Balance, Arc<ServicePolicy>)>,
    default_policy: Arc<ServicePolicy>,
    /// Sources in the order they first reported; earlier wins on conflicts.
    sources: Vec<SourceEntry>,
    /// The self-preservation guard's settings.
    preserve: Preservation,
    /// Longest a source may go without a successful report before it is
    /// reported stale (its last set keeps serving).
    max_staleness: Duration,
    /// Instances drained by an operator, by identity, whatever their source;
    /// kept across config reloads until cancelled.
    operator_drains: BTreeMap<InstanceKey, SystemTime>,
    /// Instances whose registration carried a passing check of its own:
    /// they start healthy when they appear (`clock::now_ms()` of the call,
    /// so unclaimed entries are dropped after a while).
    vouched: HashMap<InstanceKey, u64>,
    /// Counts input changes; a rebuild takes in all of them up to its start.
    inputs: u64,
    live: HashMap<InstanceKey, Weak<InstanceState>>,
    service_live: HashMap<Arc<str>, Arc<ServiceLive>>,
    /// What the published snapshot was built from, to detect "no change".
    published: Option<Shape>,
    /// Services whose inputs changed since the last rebuild.
    dirty: Dirty,
    version: u64,
}

impl Registry {
    /// A registry holding `config`'s routes, services and static instances,
    /// with its first snapshot already published.
    pub fn new(config: &Config) -> Arc<Registry> {
        let router = Arc::new(Router::new(config));
        let state = BuildState {
            reassess: None,
            config: Arc::new(config.clone()),
            splits: BTreeMap::new(),
            router: router.clone(),
            policies: policies(config),
            default_policy: config.default_policy.clone(),
            sources: vec![SourceEntry::new(
                Arc::from(STATIC_SOURCE),
                static_instances(config),
            )],
            preserve: guard(config),
            max_staleness: config.registry.max_staleness,
            operator_drains: BTreeMap::new(),
            vouched: HashMap::new(),
            inputs: 0,
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
            rebuilds: stats::RebuildStats::default(),
        });
        registry.rebuild();
        registry
    }

    /// Has `reassess` applied to every service entry a rebuild builds,
    /// before it is published, and to a service whose instance was vouched
    /// healthy. Health installs its panic-mode rule here, so the registry
    /// need not know it.
    pub fn reassess_with(&self, reassess: Reassess) {
        self.lock().reassess = Some(reassess);
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

    /// How long published rebuilds took.
    pub fn rebuild_stats(&self) -> &stats::RebuildStats {
        &self.rebuilds
    }

    /// A receiver that sees the version of every snapshot published.
    pub fn watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.published.subscribe()
    }

    /// Applies a reloaded config: routes, service policies and static
    /// instances. Live state of unchanged instances is kept.
    pub fn apply_config(&self, config: &Config) {
        let mut st = self.lock();
        // A split set through the admin API lasts while the file leaves
        // that route's split as it was.
        let old = std::mem::replace(&mut st.config, Arc::new(config.clone()));
        let file_split = |c: &Config, name: &str| {
            c.routes
                .iter()
                .find(|r| r.name.as_deref() == Some(name))
                .filter(|r| r.traffic.match_tags.is_none())
                .map(|r| r.traffic.split.clone())
        };
        st.splits.retain(|name, _| {
            let kept = file_split(&old, name).is_some() && file_split(&old, name) == file_split(config, name);
            if !kept {
                tracing::info!(route = %name, "the file changed the route's split: the split set through the admin API no longer applies");
            }
            kept
        });
        let effective = config
            .with_splits(&st.splits)
            .unwrap_or_else(|_| config.clone());
        let config = &effective;
        st.router = Arc::new(Router::new(config));
        st.policies = policies(config);
        st.default_policy = config.default_policy.clone();
        let max_hold_changed = st.preserve.max_hold != config.registry.max_hold;
        st.preserve = guard(config);
        st.max_staleness = config.registry.max_staleness;
        if max_hold_changed {
            // Holds in force end `max_hold` after they began, as now set.
            let max_hold_ms = st.preserve.max_hold.as_millis() as u64;
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
            e.reported();
        }
        st.dirty = Dirty::All;
        self.touched(st);
    }

    /// Sets the split of the route named `route` (`None`: back to the
    /// file's), effective with the next rebuild. It lasts until a reload
    /// changes that route's split in the file, or the process restarts.
    pub fn set_split(
        &self,
        route: &str,
        split: Option<Vec<SplitEntry>>,
    ) -> Result<(), SetSplitError> {
        let mut st = self.lock();
        let mut splits = st.splits.clone();
        match split {
            Some(s) => {
                splits.insert(Arc::from(route), s);
            }
            None => {
                splits.remove(route);
            }
        }
        // Checks the route exists (and takes a split) in the file too.
        let mut probe = splits.clone();
        probe.entry(Arc::from(route)).or_default();
        st.config.with_splits(&probe)?;
        let effective = st.config.with_splits(&splits)?;
        st.router = Arc::new(Router::new(&effective));
        st.policies = policies(&effective);
        st.splits = splits;
        st.dirty = Dirty::All;
        self.touched(st);
        Ok(())
    }

    /// The route splits set through the admin API, by route name.
    pub fn split_overrides(&self) -> BTreeMap<Arc<str>, Vec<SplitEntry>> {
        self.lock().splits.clone()
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
        let started = tokio::time::Instant::now();
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
        self.rebuilds.record(started.elapsed());
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

/// The self-preservation guard `config` sets.
fn guard(config: &Config) -> Preservation {
    Preservation {
        percent: config.registry.self_preservation_percent,
        max_hold: config.registry.max_hold,
    }
}

fn policies(config: &Config) -> BTreeMap<Arc<str>, (Balance, Arc<ServicePolicy>)> {
    config
        .services
        .values()
        .map(|s| (s.name.clone(), (s.balance, s.policy.clone())))
        .collect()
}

#[cfg(test)]
mod tests;
