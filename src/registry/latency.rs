//! An instance's latency as `p2c_ewma` sees it: a peak-sensitive moving
//! average of response times (as in Finagle and Linkerd). A response slower
//! than the average replaces it at once; faster ones pull it down with a
//! weight that grows with the time since the last one (time constant
//! `decay`). Between responses the estimate fades towards zero, so an
//! instance that was avoided for being slow is tried again after a while.
//!
//! Two atomics (the estimate as `f64` bits and when it was taken, on the
//! [`clock`](crate::clock) in milliseconds): concurrent updates may lose
//! one another's sample, which only makes the average a little less exact.
//!
//! [`LatencyWindow`] is what latency outlier detection reads instead: a
//! histogram of response times since the last judgement, from which the
//! window's p99 is read.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// The latency estimate of one instance.
#[derive(Debug, Default)]
pub struct Latency {
    /// Nanoseconds, as `f64` bits; 0 until the first observation.
    estimate: AtomicU64,
    /// `clock::now_ms()` of the last observation.
    at_ms: AtomicU64,
}

/// `e^(-elapsed/decay)`: how much of the old estimate is left.
#[inline]
fn kept(elapsed_ms: u64, decay: Duration) -> f64 {
    let tau = decay.as_millis().max(1) as f64;
    (-(elapsed_ms as f64) / tau).exp()
}

impl Latency {
    /// Records a response that took `took`, at `now_ms`.
    pub fn observe(&self, took: Duration, now_ms: u64, decay: Duration) {
        let rtt = took.as_nanos() as f64;
        let old = f64::from_bits(self.estimate.load(Relaxed));
        let next = if old == 0.0 || rtt > old {
            rtt
        } else {
            let w = kept(now_ms.saturating_sub(self.at_ms.load(Relaxed)), decay);
            old * w + rtt * (1.0 - w)
        };
        self.estimate.store(next.max(1.0).to_bits(), Relaxed);
        self.at_ms.store(now_ms, Relaxed);
    }

    /// The estimate in nanoseconds at `now_ms`, faded for the time since
    /// the last observation; `None` before the first one.
    #[inline]
    pub fn estimate(&self, now_ms: u64, decay: Duration) -> Option<f64> {
        let e = f64::from_bits(self.estimate.load(Relaxed));
        if e == 0.0 {
            return None;
        }
        let since = now_ms.saturating_sub(self.at_ms.load(Relaxed));
        Some(if since == 0 {
            e
        } else {
            e * kept(since, decay)
        })
    }
}

/// Buckets per doubling of the time: bounds 19% to 25% apart.
const PER_DOUBLING: u32 = 4;
/// The lowest bucket holds times under `1 << MIN_SHIFT` µs (128 µs).
const MIN_SHIFT: u32 = 7;
/// Bucket 0, then 15.75 doublings: the last one holds 8 s and more.
const BUCKETS: usize = 64;

/// Response times of one instance since the window was last taken: a
/// log-linear histogram (four buckets per doubling from 128 µs), one
/// relaxed atomic add per response.
#[derive(Debug)]
pub struct LatencyWindow {
    counts: [AtomicU32; BUCKETS],
    /// The last window's p99 in µs, when it had enough responses (0:
    /// none), for the admin views.
    last_p99_us: AtomicU64,
}

impl Default for LatencyWindow {
    fn default() -> Self {
        LatencyWindow {
            counts: std::array::from_fn(|_| AtomicU32::new(0)),
            last_p99_us: AtomicU64::new(0),
        }
    }
}

/// The bucket of a time of `us` microseconds.
#[inline]
fn bucket(us: u64) -> usize {
    if us < 1 << MIN_SHIFT {
        return 0;
    }
    let log = 63 - us.leading_zeros();
    let sub = (us >> (log - 2)) & 3;
    let i = 1 + (log - MIN_SHIFT) as usize * PER_DOUBLING as usize + sub as usize;
    i.min(BUCKETS - 1)
}

/// The upper bound of bucket `i`, in µs.
fn upper_us(i: usize) -> u64 {
    if i == 0 {
        return 1 << MIN_SHIFT;
    }
    let log = MIN_SHIFT + (i as u32 - 1) / PER_DOUBLING;
    let sub = u64::from((i as u32 - 1) % PER_DOUBLING);
    (5 + sub) << (log - 2)
}

impl LatencyWindow {
    /// Counts one response that took `took`.
    #[inline]
    pub fn record(&self, took: Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.counts[bucket(us)].fetch_add(1, Relaxed);
    }

    /// Empties the window: the responses it counted and their p99 (the
    /// upper bound of the bucket holding it, so at most 25% high).
    pub fn take(&self) -> (u64, Duration) {
        let mut counts = [0u32; BUCKETS];
        for (c, a) in counts.iter_mut().zip(&self.counts) {
            *c = a.swap(0, Relaxed);
        }
        let total: u64 = counts.iter().map(|&c| u64::from(c)).sum();
        // The smallest time at or above 99% of the responses.
        let rank = total - total / 100;
        let mut seen = 0;
        for (i, &c) in counts.iter().enumerate() {
            seen += u64::from(c);
            if seen >= rank && total > 0 {
                return (total, Duration::from_micros(upper_us(i)));
            }
        }
        (total, Duration::ZERO)
    }

    /// Keeps `p99` (`None`: too few responses) as the last judged one.
    pub fn set_last_p99(&self, p99: Option<Duration>) {
        let us = p99.map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        self.last_p99_us.store(us, Relaxed);
    }

    /// The p99 of the last window judged with enough responses.
    pub fn last_p99(&self) -> Option<Duration> {
        match self.last_p99_us.load(Relaxed) {
            0 => None,
            us => Some(Duration::from_micros(us)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock;

    #[test]
    fn window_buckets_and_p99() {
        // Every bucket's bounds contain what it counts.
        for us in [0, 127, 128, 159, 160, 1_000, 9_999, 123_456, 5_000_000] {
            let i = bucket(us);
            assert!(us < upper_us(i), "{us} in bucket {i} < {}", upper_us(i));
            if i > 0 {
                assert!(us >= upper_us(i - 1), "{us} above bucket {}", i - 1);
            }
        }
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
        let w = LatencyWindow::default();
        assert_eq!(w.take(), (0, Duration::ZERO));
        for _ in 0..990 {
            w.record(Duration::from_millis(2));
        }
        for _ in 0..10 {
            w.record(Duration::from_millis(100));
        }
        let (n, p99) = w.take();
        assert_eq!(n, 1000);
        // 2 ms lies in [1792, 2048) µs.
        assert_eq!(p99, Duration::from_micros(2048), "the 990th of 1000");
        w.record(Duration::from_millis(100));
        let (n, p99) = w.take();
        assert_eq!(n, 1);
        assert!(p99 > Duration::from_millis(100) && p99 <= Duration::from_millis(125));
        assert_eq!(w.take().0, 0, "taken: empty again");
    }

    const DECAY: Duration = Duration::from_secs(10);
    const MS: f64 = 1e6;

    /// Peak-EWMA with paused time: a slow response counts at once, fast
    /// ones pull the average down by the time passed, and an estimate
    /// nobody refreshes fades (1/e after `decay`).
    #[tokio::test(start_paused = true)]
    async fn peak_ewma_decays_on_the_clock() {
        let l = Latency::default();
        assert_eq!(l.estimate(clock::now_ms(), DECAY), None, "neutral at first");
        l.observe(Duration::from_millis(10), clock::now_ms(), DECAY);
        assert_eq!(l.estimate(clock::now_ms(), DECAY), Some(10.0 * MS));
        l.observe(Duration::from_millis(100), clock::now_ms(), DECAY);
        assert_eq!(
            l.estimate(clock::now_ms(), DECAY),
            Some(100.0 * MS),
            "peak: at once"
        );

        tokio::time::advance(Duration::from_secs(1)).await;
        l.observe(Duration::from_millis(10), clock::now_ms(), DECAY);
        let e = l.estimate(clock::now_ms(), DECAY).unwrap() / MS;
        let want = 100.0 * (-0.1f64).exp() + 10.0 * (1.0 - (-0.1f64).exp());
        assert!((e - want).abs() < 0.01, "{e} vs {want}");

        tokio::time::advance(DECAY).await;
        let faded = l.estimate(clock::now_ms(), DECAY).unwrap() / MS;
        assert!((faded - want / std::f64::consts::E).abs() < 0.01, "{faded}");
    }
}
