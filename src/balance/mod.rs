//! Balancing: picks one member of a service among the eligible ones, by the
//! service's policy, and hands out the [`InFlightGuard`] that counts the
//! request against it. No I/O, no locks, no allocation: what a policy needs
//! (the weighted order, the hash ring, each subset's and zone's members) is
//! precomputed in the service's [`Pool`]s when the snapshot is built, and a
//! pick reads atomics in the live state. It reads the registry through its
//! methods only.
//!
//! A request's [`Choice`] names the pools to try in order (a route's
//! subset, a split's share, then the others) and, for `consistent_hash`,
//! the hash of its key. Within a pool, the zone's members are tried first
//! while enough of them are available (`zone`, kept up to date by health
//! with panic mode). Every policy skips what is not [eligible](routable):
//! unhealthy or ejected members outside panic mode, draining ones always,
//! those already tried by this request, and those at their `max_in_flight`
//! (then the pick reports [`Unpicked::Saturated`] and the caller may wait
//! in the service's [`queue`]).
//!
//! - `rotate.rs`: `round_robin` (smooth weighted) and `least_connections`;
//! - `random.rs`: `random` and `p2c_ewma`, and the per-thread generator;
//! - `hash.rs`: `consistent_hash` with bounded load;
//! - [`zone`]: whether a pool's zone part has enough available members;
//! - [`queue`]: waiting for an instance below its limit.

mod hash;
pub mod queue;
mod random;
mod rotate;
pub mod zone;

use std::cell::Cell;
use std::sync::Arc;
use std::time::Duration;

use crate::config::Balance;
use crate::registry::{InFlightGuard, InstanceState, Member, Pool, ServiceEntry};

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

/// Most pools one request names (a split's entries and a header's subset).
const MAX_POOLS: usize = 10;

/// What a request asks of the pick: the pools to try, in order (none:
/// the whole service), and the hash of its key for `consistent_hash`.
/// Plain data, built per request without allocating.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Choice {
    pools: [u16; MAX_POOLS],
    len: u8,
    hash: Option<u64>,
    /// The instance the client's sticky cookie names.
    sticky: Option<u64>,
    /// A pool was asked for that the service does not have (its subset
    /// has no member): nothing else is tried.
    missing: bool,
}

impl Choice {
    /// Every member of the service, no key.
    pub const ANY: Choice = Choice {
        pools: [0; MAX_POOLS],
        len: 0,
        hash: None,
        sticky: None,
        missing: false,
    };

    /// Adds the pool at `index` (of [`ServiceEntry::pools`]) to try next.
    #[inline]
    pub fn then_pool(&mut self, index: usize) {
        let i = index as u16;
        if (self.len as usize) < MAX_POOLS && !self.pools[..self.len as usize].contains(&i) {
            self.pools[self.len as usize] = i;
            self.len += 1;
        }
    }

    /// Notes that a pool the request must use does not exist: it finds
    /// no instance (unless another pool was added before).
    #[inline]
    pub fn pool_missing(&mut self) {
        self.missing = true;
    }

    /// Sets the hash of the request's key.
    #[inline]
    pub fn set_hash(&mut self, hash: u64) {
        self.hash = Some(hash);
    }

    /// Sets the instance the request's sticky cookie names (its
    /// [`instance_hash`](crate::registry::instance_hash)).
    #[inline]
    pub fn set_sticky(&mut self, id: u64) {
        self.sticky = Some(id);
    }

    /// The instance the request's sticky cookie names.
    #[inline]
    pub fn sticky(&self) -> Option<u64> {
        self.sticky
    }

    /// The hash of the request's key, if it has one.
    #[inline]
    pub fn hash(&self) -> Option<u64> {
        self.hash
    }

    /// The pools to try, in order.
    #[inline]
    pub fn pools(&self) -> &[u16] {
        const WHOLE: [u16; 1] = [0];
        match (self.len, self.missing) {
            (0, false) => &WHOLE,
            _ => &self.pools[..self.len as usize],
        }
    }
}

/// Why no member was picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unpicked {
    /// No member may take a request (none, all unhealthy, draining or
    /// tried).
    Unavailable,
    /// Some could, but each is at its `max_in_flight`.
    Saturated,
}

/// Picks a member of `service` that may take traffic at `now_ms` and is not
/// in `tried`, with no key and no subset, and starts counting a request
/// against it. See [`pick_with`].
#[inline]
pub fn pick(service: &ServiceEntry, now_ms: u64, tried: &Tried) -> Option<InFlightGuard> {
    pick_with(service, &Choice::ANY, now_ms, tried).ok()
}

/// Picks a member of `service` for a request that asks `choice`, and
/// starts counting the request against it.
///
/// Normally only available members qualify (not failing an active check, not
/// ejected, not draining). In panic mode (which health turns on and off, see
/// `health::panic`) unhealthy and ejected members qualify too, so traffic
/// spreads over them instead of failing; a draining member (drained by its
/// source or an operator, or removed) never does. Members in their
/// slow-start window count with a reduced weight. A member at its
/// `max_in_flight` is passed over.
#[inline]
pub fn pick_with(
    service: &ServiceEntry,
    choice: &Choice,
    now_ms: u64,
    tried: &Tried,
) -> Result<InFlightGuard, Unpicked> {
    let retry = !tried.is_empty();
    // First attempts advance the service's cursor (so it also counts
    // requests, for the retry budget); retries only read it, so a retry
    // does not shift the rotation for the requests that follow.
    let turn = if retry {
        service.live().turn()
    } else {
        service.live().next_turn()
    };
    let traffic = &service.policy().traffic;
    let cx = Cx {
        service,
        panic: service.live().in_panic(),
        now_ms,
        tried,
        retry,
        turn,
        slow_start: service.policy().slow_start,
        limit: traffic.max_in_flight,
        saturated: Cell::new(false),
    };
    let pools = service.pools();
    if let Some(id) = choice.sticky {
        if let Some(g) = cx.sticky(choice, id) {
            return Ok(g);
        }
    }
    for &i in choice.pools() {
        let Some(pool) = pools.get(i as usize) else {
            continue;
        };
        if let Some(local) = pool.preferred_local() {
            if let Some(g) = cx.pick_in(local, choice) {
                return Ok(g);
            }
        }
        if let Some(g) = cx.pick_in(pool, choice) {
            return Ok(g);
        }
    }
    Err(if cx.saturated.get() {
        Unpicked::Saturated
    } else {
        Unpicked::Unavailable
    })
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
/// rule [`pick`] follows, retries and limits aside).
pub fn routable(service: &ServiceEntry, member: &Member, now_ms: u64) -> bool {
    eligible(service.live().in_panic(), &member.instance, now_ms)
}

/// One pick's context: what every policy needs to know.
struct Cx<'a> {
    service: &'a ServiceEntry,
    panic: bool,
    now_ms: u64,
    tried: &'a Tried,
    retry: bool,
    /// The service cursor's position for this request.
    turn: usize,
    slow_start: Duration,
    /// `max_in_flight` (0: none).
    limit: u32,
    /// A member was passed over for being at its limit.
    saturated: Cell<bool>,
}

impl Cx<'_> {
    /// Picks in `pool` by the service's policy.
    #[inline]
    fn pick_in(&self, pool: &Pool, choice: &Choice) -> Option<InFlightGuard> {
        // A member seen below its limit may reach it before it is counted
        // (a concurrent request took the last place): then pick again.
        for _ in 0..3 {
            let m = match self.service.balance() {
                Balance::RoundRobin => rotate::round_robin(self, pool, self.start(pool)),
                Balance::LeastConnections => rotate::least_connections(self, pool),
                Balance::Random => random::random(self, pool),
                Balance::P2cEwma => random::p2c_ewma(self, pool),
                Balance::ConsistentHash => hash::consistent(self, pool, choice.hash()),
            }?;
            match InFlightGuard::within(&m.instance, self.limit) {
                Some(g) => return Some(g),
                None => self.saturated.set(true),
            }
        }
        None
    }

    /// The member a sticky cookie names, if it is in one of the pools the
    /// request may use and may take it.
    #[inline]
    fn sticky(&self, choice: &Choice, id: u64) -> Option<InFlightGuard> {
        let pools = self.service.pools();
        let m = choice
            .pools()
            .iter()
            .filter_map(|&i| pools.get(i as usize))
            .flat_map(|p| p.members().iter().map(|&i| self.member(i)))
            .find(|m| m.key_hash == id)?;
        if !self.usable(m) {
            return None;
        }
        InFlightGuard::within(&m.instance, self.limit)
    }

    /// The member at index `i` of the service.
    #[inline]
    fn member(&self, i: u32) -> &Member {
        &self.service.members()[i as usize]
    }

    /// Whether `m` may take this request: eligible, not tried, below its
    /// limit (noting when that alone ruled it out).
    #[inline]
    fn usable(&self, m: &Member) -> bool {
        if !eligible(self.panic, &m.instance, self.now_ms) || self.tried.contains(&m.instance) {
            return false;
        }
        if self.limit != 0 && m.instance.in_flight() >= self.limit as usize {
            self.saturated.set(true);
            return false;
        }
        true
    }

    /// The member's share in thousandths of its weight (slow start).
    #[inline]
    fn warmth(&self, m: &Member) -> u64 {
        if self.slow_start.is_zero() {
            1000
        } else {
            m.instance.warmth(self.now_ms, self.slow_start)
        }
    }

    /// The rotation's position in `pool`: the service's cursor for the
    /// whole service, the pool's own for a subset or a zone.
    #[inline]
    fn start(&self, pool: &Pool) -> usize {
        if std::ptr::eq(pool, &self.service.pools()[0]) {
            self.turn
        } else if self.retry {
            pool.turn()
        } else {
            pool.next_turn()
        }
    }
}

#[cfg(test)]
mod tests;
