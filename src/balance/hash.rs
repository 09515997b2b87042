//! `consistent_hash` with bounded load ("Consistent Hashing with Bounded
//! Loads", Mirrokni, Thorup and Zadimoghaddam): a request goes to the
//! first member at or after its key's point on the pool's ring that is
//! usable and carries less than `load_factor` times its weighted share of
//! the requests in flight (this one included); walking on along the ring
//! spreads a hot key's overflow over the next members. A request without
//! a key (the header or cookie is missing) is balanced round-robin.
//!
//! The bound costs O(1) for the whole service: the requests in flight
//! are the service's running total (kept by the in-flight guards), and
//! the weight of the members that may take requests is counted at most
//! once a millisecond and noted in the pool. A subset or zone pool sums
//! its members' loads and weights per pick instead (those pools are
//! small, and the service's total would count other pools' requests).
//! Should every usable member sit at its bound (the noted weight counts a
//! member this request already tried), the first usable one on the ring
//! takes the request.

use super::rotate::round_robin;
use super::{eligible, Cx};
use crate::registry::{Member, Pool};

/// The member for the key hashed to `hash` in `pool`.
#[inline]
pub(super) fn consistent<'a>(cx: &'a Cx<'_>, pool: &Pool, hash: Option<u64>) -> Option<&'a Member> {
    let (Some(hash), Some(ring)) = (hash, pool.ring()) else {
        return round_robin(cx, pool, cx.start(pool));
    };
    if ring.is_empty() {
        return None;
    }
    let factor = cx.service.policy().traffic.hash.load_factor_milli;
    // The bound: load_factor x (requests in flight + this one) x the
    // member's share of the usable weight.
    let bound = (factor > 0).then(|| {
        let (load, weight) = load_and_weight(cx, pool);
        (load * u64::from(factor), weight.max(1))
    });
    let start = ring.position(hash);
    let len = ring.len();
    let mut first = None;
    for step in 0..len {
        let m = cx.member(pool.members()[ring.member_at((start + step) % len) as usize]);
        if !cx.usable(m) {
            continue;
        }
        match bound {
            // in_flight < factor/1000 * load * weight/total, in integers.
            Some((load_milli, total)) => {
                let cap_milli = load_milli * u64::from(m.weight);
                if (m.instance.in_flight() as u64) * 1000 * total < cap_milli {
                    return Some(m);
                }
                first = first.or(Some(m));
            }
            None => return Some(m),
        }
    }
    first
}

/// The requests in flight in `pool` plus this one, and the weight of its
/// members that may take it.
#[inline]
fn load_and_weight(cx: &Cx<'_>, pool: &Pool) -> (u64, u64) {
    if std::ptr::eq(pool, &cx.service.pools()[0]) {
        let load = cx.service.live().waiters().in_flight() as u64 + 1;
        let weight = match pool.usable_weight(cx.now_ms) {
            Some(w) => w,
            None => {
                let w = pool
                    .members()
                    .iter()
                    .map(|&i| cx.member(i))
                    .filter(|m| eligible(cx.panic, &m.instance, cx.now_ms))
                    .fold(0u32, |sum, m| sum.saturating_add(m.weight));
                pool.note_usable_weight(cx.now_ms, w);
                w
            }
        };
        return (load, u64::from(weight));
    }
    let (mut load, mut weight) = (1u64, 0u64);
    for &i in pool.members() {
        let m = cx.member(i);
        if cx.usable(m) {
            load += m.instance.in_flight() as u64;
            weight += u64::from(m.weight);
        }
    }
    (load, weight)
}
