//! `round_robin` (smooth weighted, over the pool's precomputed schedule)
//! and `least_connections` (fewest in flight relative to weight, ties
//! rotated).

use super::Cx;
use crate::registry::{Member, Pool};

/// A number in 0..1000 derived from `seed`, for slow-start admission: a
/// multiplicative hash, so consecutive seeds are spread out.
#[inline]
pub(super) fn chance(seed: usize) -> u64 {
    ((seed as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) % 1000
}

/// The first usable member of `pool`'s schedule from slot `start` on. A
/// warming member takes its turn only with probability warmth (it is kept
/// as a fallback).
#[inline]
pub(super) fn round_robin<'a>(cx: &'a Cx<'_>, pool: &Pool, start: usize) -> Option<&'a Member> {
    let members = pool.members();
    let schedule = pool.schedule();
    let len = schedule.len(members.len());
    if len == 0 {
        return None;
    }
    let mut fallback = None;
    for i in 0..len {
        let slot = start.wrapping_add(i);
        let m = cx.member(members[schedule.member(slot % len)]);
        if !cx.usable(m) {
            continue;
        }
        if cx.slow_start.is_zero() {
            return Some(m);
        }
        let warmth = cx.warmth(m);
        if warmth >= 1000 || chance(slot) < warmth {
            return Some(m);
        }
        fallback.get_or_insert(m);
    }
    fallback
}

/// The usable member of `pool` with the fewest requests in flight for its
/// weight.
#[inline]
pub(super) fn least_connections<'a>(cx: &'a Cx<'_>, pool: &Pool) -> Option<&'a Member> {
    let members = pool.members();
    let n = members.len();
    if n == 0 {
        return None;
    }
    // Start the scan at a rotating offset: among equally loaded members the
    // first one seen wins, so rotating the start spreads ties evenly.
    let start = cx.start(pool) % n;
    let mut best: Option<(&Member, u64, u64)> = None;
    for i in 0..n {
        let m = cx.member(members[(start + i) % n]);
        if !cx.usable(m) {
            continue;
        }
        let load = m.instance.in_flight() as u64;
        let weight = u64::from(m.weight) * cx.warmth(m);
        match best {
            // load/weight < best_load/best_weight, without division.
            Some((_, b_load, b_weight)) if load * b_weight >= b_load * weight => {}
            _ => best = Some((m, load, weight)),
        }
    }
    best.map(|(m, _, _)| m)
}
