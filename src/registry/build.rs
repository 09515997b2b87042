//! Building the snapshot: each changed service's entry made from its
//! shape, every member attached to its live state by identity (new
//! instances get fresh state with their starting health, and ramp up when
//! they join a running service), instances no source lists any more marked
//! removed; and a registration's word on an instance's health.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Weak};

use super::diff::{Placed, Shape};
use super::pool;
use super::snapshot::{Member, ServiceEntry, ServiceLive, Snapshot};
use super::{BuildState, Health, InstanceKey, InstanceState, Registry};
use crate::clock;
use crate::config::{Balance, ServicePolicy};

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
    /// Builds the snapshot for `shape`, attaching live state by identity.
    /// Services not in `changed` keep their entry in `current` (built from
    /// the published shape) as it is, so the cost of a rebuild follows what
    /// changed, not the registry's size.
    pub(super) fn materialize(
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
            let old_entry = current.service(name);
            if let (false, Some(entry)) = (changed.contains(name), old_entry) {
                services.insert(name.clone(), entry.clone());
                continue;
            }
            if let Some(entry) = old_entry {
                left.extend(entry.members().iter().map(|m| m.instance.key().clone()));
            }
            let service_live = self
                .service_live
                .entry(name.clone())
                .or_insert_with(|| Arc::new(ServiceLive::new(now)))
                .clone();
            let members: Box<[Member]> = specs
                .iter()
                .map(|p| {
                    let member = self.member(name, policy, p, now, first_build);
                    member.instance.link_waiters(service_live.waiters());
                    placed.insert(member.instance.key().clone());
                    member
                })
                .collect();
            // Only consistent_hash's load bound reads the service's total
            // in flight: no other service's requests pay for counting it.
            service_live.waiters().track_in_flight(
                *balance == Balance::ConsistentHash && policy.traffic.hash.load_factor_milli > 0,
            );
            let pools = pool::build(&members, &policy.traffic, *balance, service_live.turn());
            let entry = ServiceEntry {
                name: name.clone(),
                balance: *balance,
                policy: policy.clone(),
                members,
                pools,
                live: service_live,
                // Its content changed with this version.
                index: self.version,
            };
            if let Some(reassess) = self.reassess {
                reassess(&entry, now);
            }
            services.insert(name.clone(), Arc::new(entry));
        }
        // Instances gone from every source drain: no snapshot lists them,
        // their idle connections close, requests in flight finish.
        for key in left {
            if placed.contains(&key) {
                continue;
            }
            if let Some(state) = self.live.remove(&key).and_then(|w| w.upgrade()) {
                state.mark_removed();
            }
        }
        self.service_live
            .retain(|name, _| services.contains_key(name));
        Snapshot::new(self.version, self.router.clone(), services)
    }
}

impl BuildState {
    /// The member `p` of service `name`: its live state (kept by identity,
    /// or fresh), with the drain its source or an operator asked for.
    fn member(
        &mut self,
        name: &Arc<str>,
        policy: &ServicePolicy,
        p: &Placed,
        now: u64,
        first_build: bool,
    ) -> Member {
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
            None => self.fresh_state(&key, policy, now, first_build),
        };
        self.live.insert(key, Arc::downgrade(&state));
        let reason = match (p.operator_drain, spec.draining) {
            (true, _) => "drained by an operator",
            (false, true) => "drain requested by its source",
            (false, false) => "drain cancelled",
        };
        state.set_draining(p.operator_drain || spec.draining, reason);
        Member {
            instance: state,
            weight: spec.weight,
            key_hash: super::ring::instance_hash(spec.addr),
            id: spec.id.clone(),
            tags: spec.tags.clone(),
            source: source.clone(),
            draining: spec.draining,
            operator_drain: p.operator_drain,
            held: p.held.clone(),
        }
    }

    /// Live state for an instance that just appeared: its starting health
    /// (healthy if its registration vouched for it), and a slow-start ramp
    /// when it joins a running service (once its first check passes, if it
    /// is checked).
    fn fresh_state(
        &mut self,
        key: &InstanceKey,
        policy: &ServicePolicy,
        now: u64,
        first_build: bool,
    ) -> Arc<InstanceState> {
        let mut health = initial_health(policy);
        let vouched = self.vouched.remove(key).is_some() && health == Health::Unknown;
        if vouched {
            health = Health::Healthy;
        }
        let state = Arc::new(InstanceState::new(key.clone(), health));
        if vouched {
            state.note_health("healthy", VOUCHED.to_owned());
        }
        if !first_build && !policy.slow_start.is_zero() {
            if state.is_available(now) {
                state.start_warming(now);
            } else {
                state.mark_late_joiner();
            }
        }
        state
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

impl Registry {
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
        let reassess = st.reassess;
        match st.live.get(&key).and_then(Weak::upgrade) {
            Some(state) => {
                drop(st);
                if state.health() == Health::Unknown {
                    state.mark_healthy(VOUCHED.to_owned());
                    let now = clock::now_ms();
                    if let Some(svc) = self.load().service(service) {
                        // A late joiner ramps up as after a first pass.
                        if state.is_late_joiner() && !svc.policy().slow_start.is_zero() {
                            state.start_warming(now);
                        }
                        if let Some(reassess) = reassess {
                            reassess(svc, now);
                        }
                    }
                }
            }
            None => {
                st.vouched.insert(key, clock::now_ms());
            }
        }
    }
}
