//! A service's pools: the members a pick chooses among, each with what
//! its policy needs precomputed when the snapshot is built: the whole
//! service first, then one per subset its routes select (`match_tags`,
//! `split`) and one per value of each tag a route's `subset_by` reads;
//! each with its weighted round-robin [`Schedule`], its hash [`Ring`] for
//! `consistent_hash`, and its members in this proxy's zone when `[zone]`
//! is set. The request path only indexes them.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};

use super::ring::Ring;
use super::schedule::Schedule;
use super::snapshot::Member;
use crate::config::{pair_hash, Balance, Traffic};

/// The key of the pool holding every member.
pub const WHOLE: u64 = 0;

/// Some members of a service, ready to be picked from.
#[derive(Debug)]
pub struct Pool {
    /// [`WHOLE`], or the fingerprint of the tags its members carry.
    key: u64,
    /// Indices into the service's members, in member order.
    members: Box<[u32]>,
    /// Weighted round-robin order over `members`.
    schedule: Schedule,
    /// The hash ring over `members`, for `consistent_hash`.
    ring: Option<Ring>,
    /// Rotation of this pool (the whole pool rotates the service's cursor).
    cursor: AtomicUsize,
    /// Its members in this proxy's zone, when some but not all are.
    local: Option<Box<Pool>>,
    /// Whether enough of the local members are available to keep traffic
    /// in the zone (health recomputes it with panic mode).
    local_ok: AtomicBool,
    /// The weight of its members that could take a request, as balancing
    /// last counted it: the millisecond (low 32 bits of `clock::now_ms()`)
    /// in the high half, the weight in the low half.
    usable_weight: AtomicU64,
}

impl Pool {
    fn new(key: u64, members: Vec<u32>, all: &[Member], balance: Balance, seed: usize) -> Pool {
        let schedule = Schedule::new(members.iter().map(|&i| all[i as usize].weight));
        let ring = (balance == Balance::ConsistentHash).then(|| {
            let ids: Vec<(u64, u32)> = members
                .iter()
                .map(|&i| {
                    let m = &all[i as usize];
                    (m.key_hash, m.weight)
                })
                .collect();
            Ring::new(&ids)
        });
        Pool {
            key,
            members: members.into_boxed_slice(),
            schedule,
            ring,
            cursor: AtomicUsize::new(seed),
            local: None,
            local_ok: AtomicBool::new(false),
            usable_weight: AtomicU64::new(0),
        }
    }

    /// [`WHOLE`] or the fingerprint of its tags.
    #[inline]
    pub fn key(&self) -> u64 {
        self.key
    }

    /// Whether this is the pool of every member.
    #[inline]
    pub fn is_whole(&self) -> bool {
        self.key == WHOLE
    }

    /// Its members, as indices into [`ServiceEntry::members`](super::ServiceEntry::members).
    #[inline]
    pub fn members(&self) -> &[u32] {
        &self.members
    }

    /// The weighted round-robin order over [`Pool::members`].
    #[inline]
    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    /// The hash ring (services balanced by `consistent_hash` only).
    #[inline]
    pub fn ring(&self) -> Option<&Ring> {
        self.ring.as_ref()
    }

    /// Takes this pool's next turn (see [`ServiceLive::next_turn`](super::ServiceLive::next_turn)).
    #[inline]
    pub fn next_turn(&self) -> usize {
        self.cursor.fetch_add(1, Relaxed)
    }

    /// This pool's cursor, unmoved.
    #[inline]
    pub fn turn(&self) -> usize {
        self.cursor.load(Relaxed)
    }

    /// Its members in this proxy's zone, if some but not all are there.
    #[inline]
    pub fn local(&self) -> Option<&Pool> {
        self.local.as_deref()
    }

    /// The local part when traffic stays in the zone, else `None`.
    #[inline]
    pub fn preferred_local(&self) -> Option<&Pool> {
        self.local
            .as_deref()
            .filter(|_| self.local_ok.load(Relaxed))
    }

    /// The usable weight noted by [`Pool::note_usable_weight`] during the
    /// millisecond `now_ms`, if one was.
    #[inline]
    pub fn usable_weight(&self, now_ms: u64) -> Option<u32> {
        let v = self.usable_weight.load(Relaxed);
        (v >> 32 == now_ms & 0xFFFF_FFFF).then_some(v as u32)
    }

    /// Notes the weight of the members that could take a request at
    /// `now_ms` (balancing counts it at most once a millisecond).
    #[inline]
    pub fn note_usable_weight(&self, now_ms: u64, weight: u32) {
        let v = ((now_ms & 0xFFFF_FFFF) << 32) | u64::from(weight);
        self.usable_weight.store(v, Relaxed);
    }

    /// Sets whether traffic stays in the zone; returns the old value.
    pub fn set_local_ok(&self, ok: bool) -> bool {
        self.local_ok.swap(ok, Relaxed)
    }
}

/// The pools of a service with these members and traffic settings; `seed`
/// starts the cursors of subset pools (so a rebuild does not send each
/// subset's next request to its first member).
pub(super) fn build(
    members: &[Member],
    traffic: &Traffic,
    balance: Balance,
    seed: usize,
) -> Box<[Pool]> {
    let mut sets: Vec<(u64, Vec<u32>)> = vec![(WHOLE, (0..members.len() as u32).collect())];
    for set in &traffic.subsets {
        if sets.iter().any(|(k, _)| *k == set.fingerprint) {
            continue;
        }
        let picked = members
            .iter()
            .enumerate()
            .filter(|(_, m)| set.matches(m.tags.as_deref()))
            .map(|(i, _)| i as u32)
            .collect();
        sets.push((set.fingerprint, picked));
    }
    for tag in &traffic.subset_keys {
        let mut by_value: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
        for (i, m) in members.iter().enumerate() {
            if let Some(v) = m.tags.as_deref().and_then(|t| t.get(&**tag)) {
                by_value.entry(v).or_default().push(i as u32);
            }
        }
        for (value, picked) in by_value {
            let key = pair_hash(tag.as_bytes(), value.as_bytes());
            if !sets.iter().any(|(k, _)| *k == key) {
                sets.push((key, picked));
            }
        }
    }
    sets.into_iter()
        .map(|(key, picked)| {
            let local: Option<Vec<u32>> = traffic.zone.as_ref().and_then(|z| {
                let here: Vec<u32> = picked
                    .iter()
                    .copied()
                    .filter(|&i| {
                        members[i as usize]
                            .tags
                            .as_deref()
                            .and_then(|t| t.get(&z.tag))
                            .is_some_and(|v| *v == z.name)
                    })
                    .collect();
                (!here.is_empty() && here.len() < picked.len()).then_some(here)
            });
            let mut pool = Pool::new(key, picked, members, balance, seed);
            pool.local = local.map(|l| Box::new(Pool::new(key, l, members, balance, seed)));
            pool
        })
        .collect()
}
