//! Balancing: picks one member of a service among the eligible ones, by the
//! service's policy, and hands out the [`InFlightGuard`] that counts the
//! request against it. No I/O, no locks, no allocation: the weighted order is
//! precomputed into a [`Schedule`] when the snapshot is built, and a pick is
//! one atomic increment of the service's cursor plus a scan.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use crate::config::Balance;
use crate::registry::{InFlightGuard, InstanceState, Member, ServiceEntry};

/// Longest precomputed weighted order; larger weight sums are scaled down.
const MAX_SCHEDULE: u64 = 1 << 16;

/// The order in which round-robin visits members: for equal weights simply
/// 0..n (stored as nothing), otherwise the sequence nginx's smooth weighted
/// round-robin produces, so heavy members are spread out rather than bunched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    order: Box<[u32]>,
}

impl Schedule {
    /// The schedule for members with these weights, in member order.
    pub fn new(weights: impl Iterator<Item = u32>) -> Schedule {
        let weights: Vec<u64> = weights.map(|w| u64::from(w.max(1))).collect();
        if weights.windows(2).all(|w| w[0] == w[1]) {
            return Schedule {
                order: Box::new([]),
            };
        }
        let g = weights.iter().copied().fold(0, gcd);
        let mut weights: Vec<u64> = weights.iter().map(|w| w / g).collect();
        let total: u64 = weights.iter().sum();
        if total > MAX_SCHEDULE {
            // Keep proportions roughly, but never drop a member to zero.
            for w in &mut weights {
                *w = (*w * MAX_SCHEDULE / total).max(1);
            }
        }
        let total: i64 = weights.iter().sum::<u64>() as i64;
        let mut current = vec![0i64; weights.len()];
        let mut order = Vec::with_capacity(total as usize);
        for _ in 0..total {
            let mut best = 0;
            for (i, w) in weights.iter().enumerate() {
                current[i] += *w as i64;
                if current[i] > current[best] {
                    best = i;
                }
            }
            current[best] -= total;
            order.push(best as u32);
        }
        Schedule {
            order: order.into_boxed_slice(),
        }
    }

    /// Number of slots for `members` members.
    #[inline]
    fn len(&self, members: usize) -> usize {
        if self.order.is_empty() {
            members
        } else {
            self.order.len()
        }
    }

    /// The member index in `slot`.
    #[inline]
    fn member(&self, slot: usize) -> usize {
        if self.order.is_empty() {
            slot
        } else {
            self.order[slot] as usize
        }
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Instances already attempted for one request, so a retry goes elsewhere.
/// Fixed capacity (attempts are capped at 10 by config); no allocation.
#[derive(Debug, Default)]
pub struct Tried {
    ids: [usize; 10],
    len: usize,
}

impl Tried {
    /// Remembers `instance` as attempted.
    pub fn add(&mut self, instance: &Arc<InstanceState>) {
        if self.len < self.ids.len() {
            self.ids[self.len] = Arc::as_ptr(instance) as usize;
            self.len += 1;
        }
    }

    /// Whether `instance` was attempted.
    #[inline]
    pub fn contains(&self, instance: &Arc<InstanceState>) -> bool {
        let id = Arc::as_ptr(instance) as usize;
        self.ids[..self.len].contains(&id)
    }

    /// Number of attempts recorded.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing was attempted yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Picks a member of `service` that is available at `now_ms` and not in
/// `tried`, and starts counting a request against it.
#[inline]
pub fn pick(service: &ServiceEntry, now_ms: u64, tried: &Tried) -> Option<InFlightGuard> {
    let eligible = |m: &Member| m.instance.is_available(now_ms) && !tried.contains(&m.instance);
    let member = match service.policy {
        Balance::RoundRobin => round_robin(service, eligible),
        Balance::LeastConnections => least_connections(service, eligible),
    }?;
    Some(InFlightGuard::new(member.instance.clone()))
}

fn round_robin(service: &ServiceEntry, eligible: impl Fn(&Member) -> bool) -> Option<&Member> {
    let members = &service.members;
    let len = service.schedule.len(members.len());
    if len == 0 {
        return None;
    }
    let start = service.live.cursor.fetch_add(1, Relaxed);
    (0..len)
        .map(|i| &members[service.schedule.member((start.wrapping_add(i)) % len)])
        .find(|m| eligible(m))
}

fn least_connections(
    service: &ServiceEntry,
    eligible: impl Fn(&Member) -> bool,
) -> Option<&Member> {
    let members = &service.members;
    let n = members.len();
    if n == 0 {
        return None;
    }
    // Start the scan at a rotating offset: among equally loaded members the
    // first one seen wins, so rotating the start spreads ties evenly.
    let start = service.live.cursor.fetch_add(1, Relaxed) % n;
    let mut best: Option<(&Member, u64)> = None;
    for i in 0..n {
        let m = &members[(start + i) % n];
        if !eligible(m) {
            continue;
        }
        let load = m.instance.in_flight() as u64;
        match best {
            // load/weight < best_load/best_weight, without division.
            Some((b, b_load)) if load * u64::from(b.weight) >= b_load * u64::from(m.weight) => {}
            _ => best = Some((m, load)),
        }
    }
    best.map(|(m, _)| m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::registry::Registry;
    use std::collections::HashMap;
    use std::path::Path;

    fn registry(balance: &str, instances: &str) -> Arc<Registry> {
        let text = format!("[services.s]\nbalance = \"{balance}\"\ninstances = [{instances}]\n");
        Registry::new(&Config::parse(&text, Path::new("t.toml")).unwrap())
    }

    fn counts(reg: &Registry, n: usize) -> HashMap<u16, usize> {
        let snap = reg.load();
        let svc = snap.service("s").unwrap();
        let mut out = HashMap::new();
        for _ in 0..n {
            let g = pick(svc, crate::clock::now_ms(), &Tried::default()).unwrap();
            *out.entry(g.instance().addr().port()).or_default() += 1;
        }
        out
    }

    #[test]
    fn smooth_weighted_schedule_spreads_heavy_member() {
        let s = Schedule::new([5, 1, 1].into_iter());
        assert_eq!(&*s.order, &[0, 0, 1, 0, 2, 0, 0]);
        assert!(Schedule::new([3, 3, 3].into_iter()).order.is_empty());
        let s = Schedule::new([2, 4].into_iter());
        assert_eq!(&*s.order, &[1, 0, 1], "reduced by the gcd");
    }

    #[test]
    fn schedule_is_capped_but_keeps_every_member() {
        let s = Schedule::new((0..300).map(|i| if i == 0 { 1 } else { 1000 }));
        assert!(s.order.len() as u64 <= MAX_SCHEDULE + 300);
        assert!(s.order.contains(&0));
    }

    #[test]
    fn round_robin_is_even_and_weighted() {
        let reg = registry(
            "round_robin",
            "\"127.0.0.1:1\", \"127.0.0.1:2\", \"127.0.0.1:3\"",
        );
        let c = counts(&reg, 300);
        assert_eq!(c.values().copied().collect::<Vec<_>>(), vec![100; 3]);
        let reg = registry(
            "round_robin",
            "{ address = \"127.0.0.1:1\", weight = 3 }, \"127.0.0.1:2\"",
        );
        let c = counts(&reg, 400);
        assert_eq!((c[&1], c[&2]), (300, 100));
    }

    #[test]
    fn round_robin_skips_tried_and_unavailable() {
        let reg = registry("round_robin", "\"127.0.0.1:1\", \"127.0.0.1:2\"");
        let snap = reg.load();
        let svc = snap.service("s").unwrap();
        let now = crate::clock::now_ms();
        svc.members()[0].instance.record_connect_failure();
        for _ in 0..10 {
            let g = pick(svc, now, &Tried::default()).unwrap();
            assert_eq!(g.instance().addr().port(), 2);
        }
        let mut tried = Tried::default();
        tried.add(&svc.members()[1].instance);
        assert!(
            pick(svc, now, &tried).is_none(),
            "one down, one tried: nothing left"
        );
    }

    #[test]
    fn least_connections_prefers_idle_and_rotates_ties() {
        let reg = registry(
            "least_connections",
            "\"127.0.0.1:1\", \"127.0.0.1:2\", \"127.0.0.1:3\"",
        );
        let snap = reg.load();
        let svc = snap.service("s").unwrap();
        let now = crate::clock::now_ms();
        // Hold two requests on :1 and one on :2; :3 must win until it has two.
        let _a = InFlightGuard::new(svc.members()[0].instance.clone());
        let _b = InFlightGuard::new(svc.members()[0].instance.clone());
        let _c = InFlightGuard::new(svc.members()[1].instance.clone());
        let g = pick(svc, now, &Tried::default()).unwrap();
        assert_eq!(g.instance().addr().port(), 3);
        // Ties (all idle) are spread, not always the first member.
        drop((g, _a, _b, _c));
        let c = counts(&reg, 300);
        assert_eq!(c.len(), 3);
        assert!(c.values().all(|&n| n == 100), "{c:?}");
    }

    #[test]
    fn least_connections_respects_weight() {
        let reg = registry(
            "least_connections",
            "{ address = \"127.0.0.1:1\", weight = 2 }, \"127.0.0.1:2\"",
        );
        let snap = reg.load();
        let svc = snap.service("s").unwrap();
        let now = crate::clock::now_ms();
        let mut held = Vec::new();
        for _ in 0..30 {
            held.push(pick(svc, now, &Tried::default()).unwrap());
        }
        let on1 = held
            .iter()
            .filter(|g| g.instance().addr().port() == 1)
            .count();
        assert_eq!(on1, 20, "weight 2 carries twice the concurrent load");
    }
}
