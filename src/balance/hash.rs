//! `consistent_hash` with bounded load ("Consistent Hashing with Bounded
//! Loads", Mirrokni, Thorup and Zadimoghaddam): a request goes to the
//! first member at or after its key's point on the pool's ring that is
//! usable and carries less than `load_factor` times its weighted share of
//! the requests in flight (this one included); walking on along the ring
//! spreads a hot key's overflow over the next members. A request without
//! a key (the header or cookie is missing) is balanced round-robin.

use super::rotate::round_robin;
use super::Cx;
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
        let (mut load, mut weight) = (1u64, 0u64);
        for &i in pool.members() {
            let m = cx.member(i);
            if cx.usable(m) {
                load += m.instance.in_flight() as u64;
                weight += u64::from(m.weight);
            }
        }
        (load * u64::from(factor), weight.max(1))
    });
    let start = ring.position(hash);
    let len = ring.len();
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
            }
            None => return Some(m),
        }
    }
    None
}
