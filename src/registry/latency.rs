//! An instance's latency as `p2c_ewma` sees it: a moving average of
//! response times that one response moves by a tenth of the way
//! ([`WEIGHT`]), a response slower than twice the average counting as
//! twice the average ([`CAP`]), so one latency spike on a fast instance,
//! or a stall of the machine that delays every response in flight at
//! once, cannot make it look as slow as a persistently slow one; a lasting
//! change is taken within a few dozen responses. The average also forgets in
//! time (time constant `decay`): a response after a pause counts more, as
//! the old average is weighted down by `e^(-pause/decay)` too, and when
//! read the estimate comes with that much trust, so that an instance not
//! heard from drifts back to neutral (compared like a new one, by load
//! alone) and is tried again after a while.
//!
//! Two atomics (the average as `f64` bits and when it was taken, on the
//! [`clock`](crate::clock) in milliseconds): concurrent updates may lose
//! one another's sample, which only makes the average a little less exact.
//!
//! [`LatencyWindow`] is what latency outlier detection reads instead: a
//! histogram of response times since the last judgement, from which the
//! window's p99 is read.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// How far one response moves a busy instance's average towards itself:
/// a tenth of the way.
pub const WEIGHT: f64 = 0.1;

/// A response counts as at most this many times the average: a spike of
/// 20 ms on a 1 ms instance makes it look 1.1 ms slow, four in a row (a
/// stall) 1.46 ms, and ten responses later it is back under 1.2 ms; an
/// instance that turns 10x slower for good looks 5x slower after 17
/// responses and 9x after 40 (its in-flight count rises at once, though).
pub const CAP: f64 = 2.0;

/// The latency estimate of one instance.
#[derive(Debug, Default)]
pub struct Latency {
    /// Nanoseconds, as `f64` bits; 0 until the first observation.
    estimate: AtomicU64,
    /// `clock::now_ms()` of the last observation.
    at_ms: AtomicU64,
}

/// An instance's latency estimate as read at some time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    /// The average response time, in nanoseconds.
    pub nanos: f64,
    /// How much it still counts: 1 just after a response,
    /// `e^(-since/decay)` after a silence of `since`.
    pub trust: f64,
}

/// `e^(-elapsed/decay)`: how much of the old estimate is left.
#[inline]
fn kept(elapsed_ms: u64, decay: Duration) -> f64 {
    if elapsed_ms == 0 {
        return 1.0;
    }
    let tau = decay.as_millis().max(1) as f64;
    (-(elapsed_ms as f64) / tau).exp()
}

impl Latency {
    /// Records a response that took `took`, at `now_ms`: the old average
    /// keeps `(1 - WEIGHT) x e^(-elapsed/decay)` of its weight against the
    /// response, counted as at most `CAP` times the old average.
    pub fn observe(&self, took: Duration, now_ms: u64, decay: Duration) {
        let rtt = (took.as_nanos() as f64).max(1.0);
        let old = f64::from_bits(self.estimate.load(Relaxed));
        let next = if old == 0.0 {
            rtt
        } else {
            let keep =
                (1.0 - WEIGHT) * kept(now_ms.saturating_sub(self.at_ms.load(Relaxed)), decay);
            old * keep + rtt.min(old * CAP) * (1.0 - keep)
        };
        self.estimate.store(next.max(1.0).to_bits(), Relaxed);
        self.at_ms.store(now_ms, Relaxed);
    }

    /// The estimate at `now_ms`, with its trust faded for the time since
    /// the last observation; `None` before the first one.
    #[inline]
    pub fn estimate(&self, now_ms: u64, decay: Duration) -> Option<Estimate> {
        let nanos = f64::from_bits(self.estimate.load(Relaxed));
        if nanos == 0.0 {
            return None;
        }
        let since = now_ms.saturating_sub(self.at_ms.load(Relaxed));
        Some(Estimate {
            nanos,
            trust: kept(since, decay),
        })
    }
}

impl Estimate {
    /// The latencies two instances are compared at: each one's estimate,
    /// drawn towards neutral as its trust fades. Neutral is the
    /// trust-weighted mean of the two, so a trusted estimate barely moves
    /// while a stale one ends near its partner's; an instance with no
    /// estimate takes its partner's (both none: equal), so that only the
    /// loads decide.
    #[inline]
    pub fn compared(a: Option<Estimate>, b: Option<Estimate>) -> (f64, f64) {
        match (a, b) {
            (Some(a), Some(b)) => {
                let trust = a.trust + b.trust;
                let mid = if trust > 1e-9 {
                    (a.nanos * a.trust + b.nanos * b.trust) / trust
                } else {
                    (a.nanos + b.nanos) / 2.0
                };
                (
                    mid + (a.nanos - mid) * a.trust,
                    mid + (b.nanos - mid) * b.trust,
                )
            }
            (Some(a), None) => (a.nanos, a.nanos),
            (None, Some(b)) => (b.nanos, b.nanos),
            (None, None) => (1.0, 1.0),
        }
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

    fn ms(l: &Latency) -> f64 {
        l.estimate(clock::now_ms(), DECAY).unwrap().nanos / MS
    }

    /// While responses keep coming, each moves the average a tenth of the
    /// way, counted as at most twice the average: one spike, or a burst
    /// of them, does not take it over; a lasting change does.
    #[tokio::test(start_paused = true)]
    async fn one_response_moves_a_busy_average_a_tenth() {
        let l = Latency::default();
        assert_eq!(l.estimate(clock::now_ms(), DECAY), None, "neutral at first");
        l.observe(Duration::from_millis(1), clock::now_ms(), DECAY);
        assert_eq!(ms(&l), 1.0, "the first response is the average");
        l.observe(Duration::from_micros(1500), clock::now_ms(), DECAY);
        assert!((ms(&l) - 1.05).abs() < 1e-9, "a tenth: {}", ms(&l));
        l.observe(Duration::from_millis(21), clock::now_ms(), DECAY);
        assert!((ms(&l) - 1.155).abs() < 1e-9, "spike, capped: {}", ms(&l));
        for _ in 0..3 {
            l.observe(Duration::from_millis(21), clock::now_ms(), DECAY);
        }
        assert!(ms(&l) < 1.6, "a burst of four: {}", ms(&l));
        for _ in 0..10 {
            tokio::time::advance(Duration::from_millis(1)).await;
            l.observe(Duration::from_millis(1), clock::now_ms(), DECAY);
        }
        assert!(ms(&l) < 1.2, "forgotten in ten responses: {}", ms(&l));
        for _ in 0..45 {
            tokio::time::advance(Duration::from_millis(1)).await;
            l.observe(Duration::from_millis(10), clock::now_ms(), DECAY);
        }
        assert!(ms(&l) > 9.0, "a lasting change is taken: {}", ms(&l));
    }

    /// The average forgets in time too: after a silence the new response
    /// counts more, and while silent the estimate loses trust (1/e after
    /// `decay`).
    #[tokio::test(start_paused = true)]
    async fn an_idle_average_loses_weight_and_trust_in_time() {
        let l = Latency::default();
        l.observe(Duration::from_millis(10), clock::now_ms(), DECAY);
        assert_eq!(l.estimate(clock::now_ms(), DECAY).unwrap().trust, 1.0);
        tokio::time::advance(DECAY).await;
        let e = l.estimate(clock::now_ms(), DECAY).unwrap();
        assert!((e.trust - (-1f64).exp()).abs() < 1e-9, "{e:?}");
        assert_eq!(e.nanos, 10.0 * MS, "the value stays; its trust fades");
        l.observe(Duration::from_millis(1), clock::now_ms(), DECAY);
        let keep = 0.9 * (-1f64).exp();
        let want = 10.0 * keep + (1.0 - keep);
        assert!((ms(&l) - want).abs() < 1e-9, "{} vs {want}", ms(&l));
        assert_eq!(l.estimate(clock::now_ms(), DECAY).unwrap().trust, 1.0);
    }

    /// Two estimates are compared as they are while trusted; a stale one
    /// drifts to its partner's (neutral), a missing one takes it at once.
    #[test]
    fn compared_drifts_to_neutral_as_trust_fades() {
        let e = |ms: f64, trust: f64| Some(Estimate { nanos: ms, trust });
        assert_eq!(Estimate::compared(e(1.0, 1.0), e(10.0, 1.0)), (1.0, 10.0));
        let (a, b) = Estimate::compared(e(1.0, 1.0), e(10.0, 0.5));
        assert!(a < 1.0 + 1e-9 && (4.0..8.0).contains(&b), "{a} {b}");
        let (a, b) = Estimate::compared(e(1.0, 1.0), e(10.0, 0.001));
        assert!((b - a) / a < 0.02, "stale: about neutral: {a} {b}");
        assert_eq!(Estimate::compared(e(1.0, 0.0), e(10.0, 0.0)), (5.5, 5.5));
        assert_eq!(Estimate::compared(None, e(3.0, 0.2)), (3.0, 3.0));
        assert_eq!(Estimate::compared(None, None), (1.0, 1.0));
    }
}
