//! Self-preservation: an update that would remove too many of a service's
//! instances at once, without asking for it, is not trusted.
//!
//! A removal is *asked for* when the update says so ([`Removals`]:
//! deregistrations, an edited file, an etcd delete with its marker); every
//! other removal is only *observed* (a TTL lapsing, a source's list
//! shrinking) and meets the guard: when the observed removals from one
//! service within a burst window of [`BURST_MS`] add up to more than
//! `registry.self_preservation_percent` of its instances, or would remove
//! the last one, the instances stay listed and their removals are *held
//! back* ([`HeldBack`]) until the source lists them again, an operator
//! releases the hold, or `registry.max_hold` passes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::source::{self, InstanceSpec, SourceEntry};
use super::{Registry, Snapshot};

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
    /// The removals named as asked for, as a set to look up; empty for
    /// `Implicit` (and unused for `Explicit`, which asks for every one).
    fn asked(&self) -> HashSet<(&str, SocketAddr)> {
        match self {
            Removals::Explicit | Removals::Implicit => HashSet::new(),
            Removals::Only(keys) => keys.iter().map(|(s, a)| (&**s, *a)).collect(),
        }
    }
}

/// How long implicit removals from one service add up as one burst.
pub(super) const BURST_MS: u64 = 10_000;

/// Implicit removals from one service in the current burst window.
#[derive(Debug)]
pub(super) struct Burst {
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
pub(super) struct Held {
    pub(super) spec: InstanceSpec,
    pub(super) back: Arc<HeldBack>,
}

/// Held-back removals of one source by (service, address).
pub(super) type HeldMap = BTreeMap<(Arc<str>, SocketAddr), Held>;

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

/// The guard's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Preservation {
    /// Largest share (percent) of a service's instances one burst of
    /// observed removals may take; 0 turns the guard off.
    pub(super) percent: u8,
    /// Longest a removal is held back; then it applies.
    pub(super) max_hold: Duration,
}

impl Preservation {
    /// The removals from `entry`'s set that its new set `instances` would
    /// make and that the guard holds back at `now_ms`, with the holds
    /// already in force kept as they were. `current` gives the services'
    /// sizes; `cause` says why an instance left (shown with its hold).
    /// Linear in the sizes of both sets.
    pub(super) fn hold_back(
        &self,
        entry: &mut SourceEntry,
        instances: &[InstanceSpec],
        removals: &Removals,
        current: &Snapshot,
        now: u64,
        cause: &dyn Fn(&InstanceSpec) -> String,
    ) -> HeldMap {
        let mut held: HeldMap = BTreeMap::new();
        let preserve = self.percent;
        if preserve == 0 || *removals == Removals::Explicit {
            return held;
        }
        let source = &*entry.name;
        let max_hold_ms = self.max_hold.as_millis() as u64;
        // One pass over each set: a watch event of a source mirroring
        // 10,000 instances must not compare every pair.
        let listed: HashSet<(&str, SocketAddr)> =
            instances.iter().map(|n| (&*n.service, n.addr)).collect();
        let asked = removals.asked();
        let mut removed: BTreeMap<Arc<str>, Vec<InstanceSpec>> = BTreeMap::new();
        for old in &entry.set {
            let key = (&*old.service, old.addr);
            if !listed.contains(&key) && !asked.contains(&key) {
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
            if total == 0 || !too_many {
                burst.removed = cumulative;
                continue;
            }
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
        }
        held
    }
}

/// Per service: observed removals in the current burst window.
pub(super) type Bursts = HashMap<Arc<str>, Burst>;

impl Registry {
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
    pub(super) fn next_hold_deadline(&self) -> Option<u64> {
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
}
