//! The hash ring of a pool, for `consistent_hash`: every member placed at
//! many points of a 64-bit circle (more for a heavier member), sorted, so
//! a key's owner is the first point at or after the key's hash. Built when
//! a snapshot is built; a lookup is a binary search. When a member leaves,
//! only the keys that landed on its points move (about 1/n of them), each
//! to the member whose point follows.

use std::net::{IpAddr, SocketAddr};

use crate::config::{mix, stable_hash};

/// The identity of an instance on rings and in sticky cookies: a stable
/// hash of its IP address and port (no allocation).
#[inline]
pub fn instance_hash(addr: SocketAddr) -> u64 {
    let mut buf = [0u8; 18];
    let n = match addr.ip() {
        IpAddr::V4(ip) => {
            buf[..4].copy_from_slice(&ip.octets());
            4
        }
        IpAddr::V6(ip) => {
            buf[..16].copy_from_slice(&ip.octets());
            16
        }
    };
    buf[n..n + 2].copy_from_slice(&addr.port().to_be_bytes());
    stable_hash(&buf[..n + 2])
}

/// Points per unit of weight.
const POINTS_PER_WEIGHT: u64 = 160;

/// Most points in one ring; heavier rings are scaled down (each member
/// keeps at least one point).
const MAX_POINTS: u64 = 1 << 18;

/// A sorted circle of `(point, member)`; `member` indexes the pool's
/// member list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ring {
    points: Box<[(u64, u32)]>,
}

impl Ring {
    /// The ring for members with these identities (a stable hash of each
    /// member's address) and weights, in pool order.
    pub fn new(members: &[(u64, u32)]) -> Ring {
        let total: u64 = members.iter().map(|&(_, w)| u64::from(w.max(1))).sum();
        let per_weight = if total * POINTS_PER_WEIGHT > MAX_POINTS {
            None
        } else {
            Some(POINTS_PER_WEIGHT)
        };
        let mut points = Vec::new();
        for (i, &(id, weight)) in members.iter().enumerate() {
            let w = u64::from(weight.max(1));
            let n = match per_weight {
                Some(p) => w * p,
                None => (w * MAX_POINTS / total).max(1),
            };
            for replica in 0..n {
                // Each point depends only on the member's identity and its
                // replica number, so other members joining or leaving
                // never move it.
                let point =
                    mix(id ^ mix(replica.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15)));
                points.push((point, i as u32));
            }
        }
        points.sort_unstable();
        Ring {
            points: points.into_boxed_slice(),
        }
    }

    /// Number of points.
    #[inline]
    pub fn len(&self) -> usize {
        self.points.len()
    }

    /// Whether the ring has no point (no member).
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// The position of the first point at or after `hash`, wrapping.
    #[inline]
    pub fn position(&self, hash: u64) -> usize {
        let i = self.points.partition_point(|&(p, _)| p < hash);
        if i == self.points.len() {
            0
        } else {
            i
        }
    }

    /// The member at position `i` (below [`Ring::len`]).
    #[inline]
    pub fn member_at(&self, i: usize) -> u32 {
        self.points[i].1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::stable_hash;

    fn ids(n: usize) -> Vec<(u64, u32)> {
        (0..n)
            .map(|i| (stable_hash(format!("10.0.0.{i}:80").as_bytes()), 1))
            .collect()
    }

    fn owner(ring: &Ring, members: &[(u64, u32)], key: u64) -> u64 {
        members[ring.member_at(ring.position(key)) as usize].0
    }

    /// Issue 17: the share of keys moved when one of 10 instances leaves
    /// (printed; `cargo test --lib ring -- --nocapture`). Only the leaving
    /// instance's keys move: about 1/10.
    #[test]
    fn one_of_ten_leaving_moves_only_its_keys() {
        let all = ids(10);
        let ring = Ring::new(&all);
        let rest: Vec<_> = all
            .iter()
            .copied()
            .filter(|&(id, _)| id != all[3].0)
            .collect();
        let smaller = Ring::new(&rest);
        let keys = 100_000u64;
        let (mut moved, mut on_leaver) = (0, 0);
        let mut per_member = std::collections::HashMap::new();
        for k in 0..keys {
            let h = stable_hash(&k.to_le_bytes());
            let before = owner(&ring, &all, h);
            let after = owner(&smaller, &rest, h);
            *per_member.entry(before).or_insert(0u64) += 1;
            if before == all[3].0 {
                on_leaver += 1;
            }
            if before != after {
                moved += 1;
                assert_eq!(before, all[3].0, "a key of a staying member moved");
            }
        }
        let share = moved as f64 / keys as f64;
        let (lo, hi) = (
            *per_member.values().min().unwrap() as f64 / (keys as f64 / 10.0),
            *per_member.values().max().unwrap() as f64 / (keys as f64 / 10.0),
        );
        println!(
            "consistent_hash ring: {moved} of {keys} keys moved ({:.2}%) when 1 of 10 instances left; \
             ideal 10%; per-instance share {lo:.2}x..{hi:.2}x of the mean",
            share * 100.0
        );
        assert_eq!(moved, on_leaver);
        assert!((0.07..0.13).contains(&share), "{share}");
        assert!(lo > 0.8 && hi < 1.2, "{lo}..{hi}");
    }

    #[test]
    fn weight_scales_the_share() {
        let mut m = ids(2);
        m[0].1 = 3;
        let ring = Ring::new(&m);
        let on0 = (0..40_000u64)
            .filter(|k| owner(&ring, &m, stable_hash(&k.to_le_bytes())) == m[0].0)
            .count();
        assert!((27_000..33_000).contains(&on0), "{on0}");
        assert!(Ring::new(&[]).is_empty());
    }
}
