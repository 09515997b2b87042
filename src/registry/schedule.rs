//! The weighted round-robin order of a service's members, precomputed when
//! a snapshot is built so that a pick is one atomic increment and an index.
//! A leaf: it knows weights and nothing else.

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
    pub fn len(&self, members: usize) -> usize {
        if self.order.is_empty() {
            members
        } else {
            self.order.len()
        }
    }

    /// The member index in `slot` (below [`Schedule::len`]).
    #[inline]
    pub fn member(&self, slot: usize) -> usize {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smooth_weighted_schedule_spreads_heavy_member() {
        let s = Schedule::new([5, 1, 1].into_iter());
        assert_eq!(&*s.order, &[0, 0, 1, 0, 2, 0, 0]);
        assert_eq!((s.len(3), s.member(3)), (7, 0));
        let s = Schedule::new([3, 3, 3].into_iter());
        assert!(s.order.is_empty());
        assert_eq!((s.len(3), s.member(2)), (3, 2), "equal weights: 0..n");
        let s = Schedule::new([2, 4].into_iter());
        assert_eq!(&*s.order, &[1, 0, 1], "reduced by the gcd");
    }

    #[test]
    fn schedule_is_capped_but_keeps_every_member() {
        let s = Schedule::new((0..300).map(|i| if i == 0 { 1 } else { 1000 }));
        assert!(s.order.len() as u64 <= MAX_SCHEDULE + 300);
        assert!(s.order.contains(&0));
        for m in 1..300 {
            assert!(s.order.contains(&m), "member {m} kept");
        }
    }
}
