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

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock;

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
