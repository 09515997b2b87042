//! Diffing one build against the last: the sources' sets merged into a
//! comparable [`Shape`] of the next snapshot (one entry per service, each
//! instance placed with its source, drain and hold), compared with the
//! shape the published snapshot was built from, so a rebuild touches only
//! the services that changed and publishes nothing when none did.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::SystemTime;

use super::preserve::{HeldBack, HeldMap};
use super::source::{self, InstanceSpec, SourceEntry};
use super::{BuildState, InstanceKey};
use crate::config::{Balance, Protocol, ServicePolicy, PROTOCOL_TAG};
use crate::router::Router;

/// What the next rebuild must look at again.
#[derive(Debug)]
pub(super) enum Dirty {
    /// Everything (first build, config reload).
    All,
    /// Only these services; every other one is as published.
    Services(BTreeSet<Arc<str>>),
}

/// Above this many changed services a rebuild merges every source again
/// instead of service by service.
pub(super) const INCREMENTAL_LIMIT: usize = 32;

impl Dirty {
    pub(super) fn extend(&mut self, names: impl IntoIterator<Item = Arc<str>>) {
        if let Dirty::Services(set) = self {
            set.extend(names);
        }
    }
}

/// The services whose instances differ between two versions of one
/// source's set.
pub(super) fn changed_services(old: &[InstanceSpec], new: &[InstanceSpec]) -> Vec<Arc<str>> {
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
pub(super) struct Shape {
    pub(super) router: Arc<Router>,
    pub(super) services: BTreeMap<Arc<str>, (Balance, Arc<ServicePolicy>, Vec<Placed>)>,
}

/// An instance spec together with the source that reported it, whether an
/// operator drained it and whether its removal is held back.
#[derive(Debug)]
pub(super) struct Placed {
    pub(super) spec: InstanceSpec,
    pub(super) source: Arc<str>,
    pub(super) operator_drain: bool,
    pub(super) held: Option<Arc<HeldBack>>,
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
/// `policy`, or a copy speaking the protocol the members' registrations
/// declare with their `protocol` tag, when the config does not write the
/// service's `protocol`. Members without the tag do not count; members that
/// disagree, or declare a protocol the service's `tls` setting cannot carry
/// (`h2c` with TLS, `h2` without), leave the policy as it is, with a
/// warning.
fn declared_protocol(
    service: &Arc<str>,
    policy: &Arc<ServicePolicy>,
    members: &[Placed],
) -> Arc<ServicePolicy> {
    if policy.upstream.protocol_written {
        return policy.clone();
    }
    let mut declared: Option<(&str, Protocol)> = None;
    for m in members {
        let Some(value) = m.spec.tags.as_ref().and_then(|t| t.get(PROTOCOL_TAG)) else {
            continue;
        };
        let Some(protocol) = Protocol::from_tag(value).filter(|p| policy.upstream.fits(*p)) else {
            tracing::warn!(%service, instance = %m.spec.addr, value = %value, tls = policy.upstream.tls.is_some(),
                "protocol tag ignored: not http1, h2c, h2 or auto, or not possible with the service's tls setting");
            return policy.clone();
        };
        match declared {
            Some((_, p)) if p != protocol => {
                tracing::warn!(%service, first = declared.map_or("", |d| d.0), other = %value,
                    "instances declare different protocols: the service's own is used");
                return policy.clone();
            }
            _ => declared = Some((value, protocol)),
        }
    }
    match declared {
        Some((_, protocol)) if protocol != policy.upstream.protocol => {
            let mut next = ServicePolicy::clone(policy);
            next.upstream.protocol = protocol;
            Arc::new(next)
        }
        _ => policy.clone(),
    }
}

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

impl BuildState {
    /// Merges the sources into a comparable description of the next snapshot.
    pub(super) fn shape(&self) -> Shape {
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
        for (name, (_, policy, members)) in services.iter_mut() {
            settle(name, members, &self.operator_drains);
            *policy = declared_protocol(name, policy, members);
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
        let (balance, policy) = match self.policies.get(name) {
            Some((balance, policy)) => (*balance, policy),
            None if members.is_empty() => return None,
            None => (Balance::default(), &self.default_policy),
        };
        let policy = declared_protocol(name, policy, &members);
        Some((balance, policy, members))
    }

    /// Brings the published `shape` up to date for the services in
    /// `names` (all others are unchanged). Returns the services whose
    /// entries changed, or `None` when the snapshot would be the same.
    pub(super) fn update_shape(
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
    pub(super) fn changes(&self, shape: &Shape) -> Option<HashSet<Arc<str>>> {
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
}
