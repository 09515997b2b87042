//! `random` (weighted, by a random slot of the pool's schedule) and
//! `p2c_ewma`: two members drawn at random, the one with the lower cost
//! wins, cost being the member's latency average times its requests in
//! flight plus one, over its weight (as in Finagle and Linkerd). The
//! average is one that a single slow response cannot take over (see
//! [`Latency`](crate::registry::Latency)); a member with no average yet, or
//! one not heard from for long, is neutral: compared at its partner's
//! latency, so only the loads decide. The random numbers come from a
//! per-thread xorshift generator: no lock, no shared cache line.

use std::cell::Cell;

use super::rotate::round_robin;
use super::Cx;
use crate::registry::{Estimate, Member, Pool};

thread_local! {
    static STATE: Cell<u64> = Cell::new(seed());
}

/// A per-thread seed from the standard library's random hasher keys.
fn seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0x5EED);
    h.finish() | 1
}

/// The next number of this thread's generator (xorshift64*).
#[inline]
pub(crate) fn next() -> u64 {
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    })
}

/// A number in `0..n` (`n` > 0), from the high bits without division.
#[inline]
fn below(n: usize) -> usize {
    (((next() >> 32) * n as u64) >> 32) as usize
}

/// A usable member of `pool` in proportion to its weight: the round-robin
/// scan from a random slot of the schedule.
#[inline]
pub(super) fn random<'a>(cx: &'a Cx<'_>, pool: &Pool) -> Option<&'a Member> {
    let len = pool.schedule().len(pool.members().len());
    if len == 0 {
        return None;
    }
    round_robin(cx, pool, below(len))
}

/// The cheaper of two random usable members of `pool`.
#[inline]
pub(super) fn p2c_ewma<'a>(cx: &'a Cx<'_>, pool: &Pool) -> Option<&'a Member> {
    let members = pool.members();
    let n = members.len();
    match n {
        0 => return None,
        1 => {
            let m = cx.member(members[0]);
            return cx.usable(m).then_some(m);
        }
        _ => {}
    }
    let a = below(n);
    let b = (a + 1 + below(n - 1)) % n;
    let (ma, mb) = (cx.member(members[a]), cx.member(members[b]));
    match (cx.usable(ma), cx.usable(mb)) {
        (true, true) => Some(if cheaper(cx, mb, ma) { mb } else { ma }),
        (true, false) => Some(ma),
        (false, true) => Some(mb),
        // Both drawn are out: the cheapest of all the usable (rare).
        (false, false) => members
            .iter()
            .map(|&i| cx.member(i))
            .filter(|m| cx.usable(m))
            .reduce(|best, m| if cheaper(cx, m, best) { m } else { best }),
    }
}

/// Whether `a` costs less than `b`.
#[inline]
fn cheaper(cx: &Cx<'_>, a: &Member, b: &Member) -> bool {
    let decay = cx.service.policy().traffic.p2c.decay;
    let (la, lb) = Estimate::compared(
        a.instance.latency().estimate(cx.now_ms, decay),
        b.instance.latency().estimate(cx.now_ms, decay),
    );
    let cost = |lat: f64, m: &Member| {
        let weight = (u64::from(m.weight) * cx.warmth(m)) as f64;
        lat * (m.instance.in_flight() as f64 + 1.0) / weight
    };
    cost(la, a) < cost(lb, b)
}
