//! Balancing: picks one member of a service among the eligible ones, by the
//! service's policy, and hands out the [`InFlightGuard`] that counts the
//! request against it. No I/O, no locks, no allocation: the weighted order is
//! precomputed into a [`Schedule`](crate::registry::Schedule) when the
//! snapshot is built, and a pick is one atomic increment of the service's
//! cursor plus a scan. It reads the registry through its methods only.

use std::sync::Arc;
use std::time::Duration;

use crate::config::Balance;
use crate::registry::{InFlightGuard, InstanceState, Member, ServiceEntry};

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

/// Picks a member of `service` that may take traffic at `now_ms` and is not
/// in `tried`, and starts counting a request against it.
///
/// Normally only available members qualify (not failing an active check, not
/// ejected, not draining). In panic mode (which health turns on and off, see
/// `health::panic`) unhealthy
/// and ejected members qualify too, so traffic spreads over them instead of
/// failing; a draining member (drained by its source or an operator, or
/// removed) never does. Members in their slow-start window count with a
/// reduced weight.
#[inline]
pub fn pick(service: &ServiceEntry, now_ms: u64, tried: &Tried) -> Option<InFlightGuard> {
    let panic = service.live().in_panic();
    let eligible =
        |m: &Member| eligible(panic, &m.instance, now_ms) && !tried.contains(&m.instance);
    let slow_start = service.policy().slow_start;
    let retry = !tried.is_empty();
    let member = match service.balance() {
        Balance::RoundRobin | Balance::P2cEwma | Balance::ConsistentHash | Balance::Random => {
            round_robin(service, retry, eligible, now_ms, slow_start)
        }
        Balance::LeastConnections => {
            least_connections(service, retry, eligible, now_ms, slow_start)
        }
    }?;
    Some(InFlightGuard::new(member.instance.clone()))
}

/// Whether `instance` may get a new request: available, or in panic mode
/// merely not draining.
#[inline]
fn eligible(panic: bool, instance: &InstanceState, now_ms: u64) -> bool {
    if panic {
        instance.takes_new_requests()
    } else {
        instance.is_available(now_ms)
    }
}

/// Whether a new request for `service` could be sent to `member` now (the
/// rule [`pick`] follows, retries aside).
pub fn routable(service: &ServiceEntry, member: &Member, now_ms: u64) -> bool {
    eligible(service.live().in_panic(), &member.instance, now_ms)
}

/// A number in 0..1000 derived from `seed`, for slow-start admission: a
/// multiplicative hash, so consecutive seeds are spread out.
#[inline]
fn chance(seed: usize) -> u64 {
    ((seed as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) % 1000
}

/// The rotation cursor's next position. First attempts advance it (so it
/// also counts requests, for the retry budget); retries only read it, so a
/// retry does not shift the rotation for the requests that follow.
#[inline]
fn advance(service: &ServiceEntry, retry: bool) -> usize {
    if retry {
        service.live().turn()
    } else {
        service.live().next_turn()
    }
}

fn round_robin(
    service: &ServiceEntry,
    retry: bool,
    eligible: impl Fn(&Member) -> bool,
    now_ms: u64,
    slow_start: Duration,
) -> Option<&Member> {
    let members = service.members();
    let len = service.schedule().len(members.len());
    if len == 0 {
        return None;
    }
    let start = advance(service, retry);
    let mut fallback = None;
    for i in 0..len {
        let slot = start.wrapping_add(i);
        let m = &members[service.schedule().member(slot % len)];
        if !eligible(m) {
            continue;
        }
        if slow_start.is_zero() {
            return Some(m);
        }
        // A warming member takes its turn only with probability warmth.
        let warmth = m.instance.warmth(now_ms, slow_start);
        if warmth >= 1000 || chance(slot) < warmth {
            return Some(m);
        }
        fallback.get_or_insert(m);
    }
    fallback
}

fn least_connections(
    service: &ServiceEntry,
    retry: bool,
    eligible: impl Fn(&Member) -> bool,
    now_ms: u64,
    slow_start: Duration,
) -> Option<&Member> {
    let members = service.members();
    let n = members.len();
    if n == 0 {
        return None;
    }
    // Start the scan at a rotating offset: among equally loaded members the
    // first one seen wins, so rotating the start spreads ties evenly.
    let start = advance(service, retry) % n;
    let mut best: Option<(&Member, u64, u64)> = None;
    for i in 0..n {
        let m = &members[(start + i) % n];
        if !eligible(m) {
            continue;
        }
        let load = m.instance.in_flight() as u64;
        let weight = if slow_start.is_zero() {
            u64::from(m.weight) * 1000
        } else {
            u64::from(m.weight) * m.instance.warmth(now_ms, slow_start)
        };
        match best {
            // load/weight < best_load/best_weight, without division.
            Some((_, b_load, b_weight)) if load * b_weight >= b_load * weight => {}
            _ => best = Some((m, load, weight)),
        }
    }
    best.map(|(m, _, _)| m)
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
        svc.members()[0].instance.eject_until(now + 60_000);
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

    fn service_with(extra: &str) -> Arc<Registry> {
        let text = format!("[services.s]\ninstances = [\"127.0.0.1:1\", \"127.0.0.1:2\", \"127.0.0.1:3\", \"127.0.0.1:4\"]\n{extra}");
        Registry::new(&Config::parse(&text, Path::new("t.toml")).unwrap())
    }

    #[test]
    fn panic_mode_spreads_over_all_members() {
        let reg = service_with("panic_threshold = 50\n");
        let snap = reg.load();
        let svc = snap.service("s").unwrap();
        let now = crate::clock::now_ms();
        for m in &svc.members()[..3] {
            m.instance.eject_until(now + 60_000);
        }
        assert!(
            crate::health::panic::update(svc, now),
            "1 of 4 available is under 50%"
        );
        let mut seen = std::collections::HashSet::new();
        for _ in 0..8 {
            seen.insert(
                pick(svc, now, &Tried::default())
                    .unwrap()
                    .instance()
                    .addr()
                    .port(),
            );
        }
        assert_eq!(seen.len(), 4, "panic mode uses ejected members too");

        let reg = service_with("panic_threshold = 0\n");
        let snap = reg.load();
        let svc = snap.service("s").unwrap();
        for m in svc.members() {
            m.instance.eject_until(now + 60_000);
        }
        assert!(!crate::health::panic::update(svc, now));
        assert!(
            pick(svc, now, &Tried::default()).is_none(),
            "no panic mode: nothing to pick"
        );
    }

    /// Issue 12.1: draining members are never picked, in panic mode or not,
    /// and do not count toward the panic threshold.
    #[test]
    fn panic_mode_never_picks_draining_members() {
        let text = "[services.s]\ninstances = [\"127.0.0.1:1\", \"127.0.0.1:2\", \"127.0.0.1:3\"]\npanic_threshold = 50\n";
        let reg = Registry::new(&Config::parse(text, Path::new("t.toml")).unwrap());
        let snap = reg.load();
        let svc = snap.service("s").unwrap();
        let now = crate::clock::now_ms();
        let m = svc.members();
        m[0].instance.set_draining(true, "test");
        m[1].instance.set_draining(true, "test");
        assert!(
            !crate::health::panic::update(svc, now),
            "two of three draining: the one left is 100% of those counted"
        );
        let ports = |n: usize| -> std::collections::BTreeSet<u16> {
            (0..n)
                .map(|_| {
                    pick(svc, now, &Tried::default())
                        .unwrap()
                        .instance()
                        .addr()
                        .port()
                })
                .collect()
        };
        assert_eq!(ports(9), [3].into());
        assert!(!routable(svc, &m[0], now) && routable(svc, &m[2], now));

        // The one left fails: panic mode, which widens to unhealthy members
        // only, never to draining ones.
        m[2].instance.eject_until(now + 60_000);
        assert!(
            crate::health::panic::update(svc, now),
            "0 of 1 counted available"
        );
        assert_eq!(ports(9), [3].into());
        assert!(!routable(svc, &m[1], now) && routable(svc, &m[2], now));

        // A member removed from the registry is never picked either.
        m[2].instance.mark_removed();
        assert!(pick(svc, now, &Tried::default()).is_none());

        // Least-connections follows the same rule.
        let text = text.replace(
            "[services.s]\n",
            "[services.s]\nbalance = \"least_connections\"\n",
        );
        let reg = Registry::new(&Config::parse(&text, Path::new("t.toml")).unwrap());
        let snap = reg.load();
        let svc = snap.service("s").unwrap();
        let m = svc.members();
        m[0].instance.set_draining(true, "test");
        m[1].instance.set_draining(true, "test");
        m[2].instance.eject_until(now + 60_000);
        assert!(crate::health::panic::update(svc, now));
        let held: Vec<_> = (0..6)
            .map(|_| pick(svc, now, &Tried::default()).unwrap())
            .collect();
        assert!(held.iter().all(|g| g.instance().addr().port() == 3));
    }

    #[test]
    fn slow_start_reduces_a_warming_members_share() {
        let reg = service_with("slow_start = \"10s\"\n");
        let snap = reg.load();
        let svc = snap.service("s").unwrap();
        let now = crate::clock::now_ms();
        svc.members()[0].instance.start_warming(now);
        let mut on_warming = 0;
        for _ in 0..4000 {
            if pick(svc, now, &Tried::default())
                .unwrap()
                .instance()
                .addr()
                .port()
                == 1
            {
                on_warming += 1;
            }
        }
        // Full share would be 1000; at 10% warmth its turns mostly pass on.
        assert!(on_warming < 300, "warming member got {on_warming} of 4000");
        assert!(
            on_warming > 20,
            "warming member still gets some: {on_warming}"
        );
    }
}
