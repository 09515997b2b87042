//! The immutable read model the request path sees: the router and every
//! service with its members, each member already holding the `Arc` of its
//! live state. Built off the hot path by the refresher; never mutated after
//! publication (only the atomics inside the live state change).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::Arc;
use std::time::SystemTime;

use crate::config::{Balance, ServicePolicy};
use crate::router::Router;

use super::attach::Slot;
use super::instance::InstanceState;
use super::pool::Pool;
use super::schedule::Schedule;
use super::stats::ServiceStats;

/// One published view of the registry.
#[derive(Debug)]
pub struct Snapshot {
    version: u64,
    built_at: SystemTime,
    router: Arc<Router>,
    services: HashMap<Arc<str>, Arc<ServiceEntry>>,
    instance_count: usize,
}

impl Snapshot {
    pub(super) fn new(
        version: u64,
        router: Arc<Router>,
        services: HashMap<Arc<str>, Arc<ServiceEntry>>,
    ) -> Self {
        let instance_count = services.values().map(|s| s.members.len()).sum();
        Snapshot {
            version,
            built_at: SystemTime::now(),
            router,
            services,
            instance_count,
        }
    }

    /// Increases by one with every published change.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// When this snapshot was built.
    pub fn built_at(&self) -> SystemTime {
        self.built_at
    }

    /// The routing table in force with this snapshot.
    #[inline]
    pub fn router(&self) -> &Router {
        &self.router
    }

    /// The service named `name`, if any source or the config knows it.
    #[inline]
    pub fn service(&self, name: &str) -> Option<&Arc<ServiceEntry>> {
        self.services.get(name)
    }

    /// Every service, in no particular order.
    pub fn services(&self) -> impl Iterator<Item = &Arc<ServiceEntry>> {
        self.services.values()
    }

    /// Every service with its name, in no particular order.
    pub(super) fn services_by_name(&self) -> impl Iterator<Item = (&Arc<str>, &Arc<ServiceEntry>)> {
        self.services.iter()
    }

    /// Number of services.
    pub fn service_count(&self) -> usize {
        self.services.len()
    }

    /// Number of instances across all services.
    pub fn instance_count(&self) -> usize {
        self.instance_count
    }
}

/// A service as published: its policy, its members and the pools a pick
/// chooses among (the whole service first, then its subsets), each with
/// its precomputed round-robin schedule and hash ring.
#[derive(Debug)]
pub struct ServiceEntry {
    pub(super) name: Arc<str>,
    pub(super) balance: Balance,
    pub(super) policy: Arc<ServicePolicy>,
    pub(super) members: Box<[Member]>,
    /// Never empty: `pools[0]` holds every member.
    pub(super) pools: Box<[Pool]>,
    pub(super) live: Arc<ServiceLive>,
    /// Snapshot version at which this service's content last changed.
    pub(super) index: u64,
}

impl ServiceEntry {
    /// The service's name.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// Its balancing policy.
    pub fn balance(&self) -> Balance {
        self.balance
    }

    /// Its timeouts, retries and health settings.
    pub fn policy(&self) -> &Arc<ServicePolicy> {
        &self.policy
    }

    /// The snapshot version at which this service last changed (members,
    /// weights, tags, policy); long polls wait for it to pass a value.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// State that outlives snapshots (rotation, panic mode, what a higher
    /// layer attaches).
    pub fn live(&self) -> &ServiceLive {
        &self.live
    }

    /// Its instances, sorted by address.
    #[inline]
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// The weighted round-robin order over [`ServiceEntry::members`].
    #[inline]
    pub fn schedule(&self) -> &Schedule {
        self.pools[0].schedule()
    }

    /// Its pools: every member first, then the subsets its routes select.
    #[inline]
    pub fn pools(&self) -> &[Pool] {
        &self.pools
    }

    /// The index of the pool whose members carry the tags with this
    /// fingerprint ([`TagSet`](crate::config::TagSet)), if the service
    /// keeps one.
    #[inline]
    pub fn pool_index(&self, key: u64) -> Option<usize> {
        self.pools.iter().position(|p| p.key() == key)
    }
}

/// One instance of a service inside a snapshot.
#[derive(Debug)]
pub struct Member {
    /// Live state, shared with older and newer snapshots.
    pub instance: Arc<InstanceState>,
    /// Relative share of traffic.
    pub weight: u32,
    /// [`instance_hash`](super::instance_hash) of its address: its
    /// identity on hash rings and in sticky cookies.
    pub key_hash: u64,
    /// The instance id a source gave, if any.
    pub id: Option<Arc<str>>,
    /// Tags (metadata) a source gave.
    pub tags: Option<Arc<BTreeMap<String, String>>>,
    /// The source the instance came from.
    pub source: Arc<str>,
    /// Its source asked it to drain (a registration's drain).
    pub draining: bool,
    /// An operator drained it (`PUT /v1/services/{service}/instances/{addr}/drain`).
    pub operator_drain: bool,
    /// Self-preservation holds back its removal: why and since when.
    pub held: Option<Arc<super::HeldBack>>,
}

/// Per-service state that must survive swaps: the rotation cursor (so a
/// swap does not restart round-robin at the first member; it also counts
/// first attempts, which the retry budget uses as its request count), the
/// panic-mode flag, and what a higher layer attaches (the proxy: the retry
/// budget's window).
#[derive(Debug)]
pub struct ServiceLive {
    cursor: AtomicUsize,
    panic: AtomicBool,
    /// Requests waiting for an instance below its `max_in_flight`.
    waiters: Arc<Waiters>,
    /// `clock::now_ms()` when the service appeared.
    since_ms: u64,
    attachment: Slot,
    stats: ServiceStats,
}

impl ServiceLive {
    /// Live state for a service that appears at `now_ms`.
    pub(super) fn new(now_ms: u64) -> Self {
        ServiceLive {
            cursor: AtomicUsize::new(0),
            panic: AtomicBool::new(false),
            waiters: Arc::new(Waiters::default()),
            since_ms: now_ms,
            attachment: Slot::default(),
            stats: ServiceStats::default(),
        }
    }

    /// Its request latencies, retries and own answers, for the metrics.
    #[inline]
    pub fn stats(&self) -> &ServiceStats {
        &self.stats
    }

    /// When the service appeared (`clock::now_ms()` scale).
    pub fn since_ms(&self) -> u64 {
        self.since_ms
    }

    /// What a higher layer attached to this service (see [`Slot`]).
    pub fn attachment(&self) -> &Slot {
        &self.attachment
    }

    /// The requests waiting for one of its instances to drop below its
    /// `max_in_flight`.
    #[inline]
    pub fn waiters(&self) -> &Arc<Waiters> {
        &self.waiters
    }

    /// Takes the next turn of the rotation: the cursor's position, which
    /// then moves on by one. Called once per request (not per retry).
    #[inline]
    pub fn next_turn(&self) -> usize {
        self.cursor.fetch_add(1, Relaxed)
    }

    /// The cursor's position, without moving it: the turns taken so far,
    /// that is the requests balanced since the service appeared (wrapping).
    #[inline]
    pub fn turn(&self) -> usize {
        self.cursor.load(Relaxed)
    }

    /// Whether panic mode is on: too few instances usable, so health is
    /// ignored.
    #[inline]
    pub fn in_panic(&self) -> bool {
        self.panic.load(Relaxed)
    }

    /// Turns panic mode on or off (health decides when); returns whether
    /// it was on.
    pub fn set_panic(&self, on: bool) -> bool {
        self.panic.swap(on, Relaxed)
    }
}

/// Requests of one service waiting for an instance below its
/// `max_in_flight`: how many, and the signal an instance's finished
/// request gives them (every instance of the service holds this, so the
/// end of a request costs one load when nobody waits). Also the
/// service's requests in flight, all instances together, counted by the
/// same [`InFlightGuard`](super::InFlightGuard)s as each instance's (read
/// by `consistent_hash`'s load bound instead of a sum over the members).
#[derive(Debug, Default)]
pub struct Waiters {
    count: AtomicUsize,
    signal: tokio::sync::Notify,
    in_flight: AtomicUsize,
    /// The total is kept (the service balances by `consistent_hash` with a
    /// load bound); each guard remembers whether it counted, so turning it
    /// on or off by a reload leaves the total consistent.
    tracked: AtomicBool,
}

impl Waiters {
    /// Joins the wait if fewer than `max` wait; whether it did (then
    /// [`Waiters::leave`] must follow).
    pub fn join(&self, max: usize) -> bool {
        let before = self.count.fetch_add(1, SeqCst);
        if before >= max {
            self.count.fetch_sub(1, SeqCst);
            return false;
        }
        true
    }

    /// Leaves the wait.
    pub fn leave(&self) {
        self.count.fetch_sub(1, SeqCst);
    }

    /// Requests waiting now.
    pub fn waiting(&self) -> usize {
        self.count.load(Relaxed)
    }

    /// What a waiter awaits (create it, `enable` it, then check again).
    pub fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.signal.notified()
    }

    /// Whether the service's total in flight is kept (set at each
    /// snapshot build from the service's balancing).
    pub(super) fn track_in_flight(&self, on: bool) {
        self.tracked.store(on, Relaxed);
    }

    /// A request to one of the service's instances started: counted in the
    /// total when it is kept (what this returns; the request's
    /// [`finished`](Self::finished) then uncounts it).
    #[inline]
    pub(super) fn started(&self) -> bool {
        let tracked = self.tracked.load(Relaxed);
        if tracked {
            self.in_flight.fetch_add(1, Relaxed);
        }
        tracked
    }

    /// The service's requests in flight, all instances together.
    #[inline]
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Relaxed)
    }

    /// An instance finished a request: wakes one waiter, if any.
    #[inline]
    pub(super) fn finished(&self) {
        self.in_flight.fetch_sub(1, Relaxed);
        self.released();
    }

    /// A place an instance's limit held became free: wakes one waiter, if
    /// any.
    #[inline]
    pub fn released(&self) {
        if self.count.load(SeqCst) > 0 {
            self.signal.notify_one();
        }
    }
}
