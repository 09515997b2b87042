//! Request counters and latency histograms kept with the live state, for
//! the metrics the admin API serves: per instance in its
//! [`super::InstanceState`], per service in its [`super::ServiceLive`],
//! per registry for its rebuilds. Everything is a relaxed atomic made when
//! the instance or service first appears, so the request path bumps a few
//! counters and takes no lock, allocates nothing and formats no label; the
//! scrape reads them through the current snapshot, so an instance that
//! leaves the registry leaves the metrics with it.
//!
//! Counting can be switched off (`[metrics] enabled = false`): the request
//! path then skips it after one relaxed load.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

static ENABLED: AtomicBool = AtomicBool::new(true);

/// Whether requests are counted (`[metrics] enabled`).
#[inline]
pub fn enabled() -> bool {
    ENABLED.load(Relaxed)
}

/// Turns request counting on or off for the process.
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Relaxed);
}

/// Upper bounds of the latency buckets, in microseconds: 0.5 ms to 10 s.
pub const BUCKETS_US: [u64; 14] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000,
];

/// A latency histogram with fixed buckets ([`BUCKETS_US`] and +Inf): one
/// atomic per bucket and one for the sum, so observing is two relaxed adds.
#[derive(Debug, Default)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS_US.len() + 1],
    sum_us: AtomicU64,
}

impl Histogram {
    /// Records one duration.
    #[inline]
    pub fn observe(&self, d: Duration) {
        let us = d.as_micros().min(u128::from(u64::MAX)) as u64;
        let i = BUCKETS_US
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(BUCKETS_US.len());
        self.counts[i].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(us, Relaxed);
    }

    /// The sum in seconds, the count, and each bucket's own count with its
    /// upper bound in seconds (`f64::MAX` standing for +Inf, last), as
    /// `prometheus-client`'s encoder takes them (it sums them up itself).
    pub fn read(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let mut total = 0;
        let mut buckets = Vec::with_capacity(self.counts.len());
        for (i, c) in self.counts.iter().enumerate() {
            let n = c.load(Relaxed);
            total += n;
            let bound = BUCKETS_US.get(i).map_or(f64::MAX, |&us| us as f64 / 1e6);
            buckets.push((bound, n));
        }
        (self.sum_us.load(Relaxed) as f64 / 1e6, total, buckets)
    }
}

/// Index of a status code's class: 0 for 1xx ... 4 for 5xx.
#[inline]
pub fn class_index(status: u16) -> usize {
    usize::from(status / 100).clamp(1, 5) - 1
}

/// The label of each class index.
pub const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The `method` label's values: the common methods, and `other` for any
/// other (so a client cannot grow the label set).
pub const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "other",
];

/// [`METHODS`]' `other`.
pub const METHOD_OTHER: usize = 7;

/// Index of `method` in [`METHODS`].
#[inline]
pub fn method_index(method: &str) -> usize {
    match method {
        "GET" => 0,
        "HEAD" => 1,
        "POST" => 2,
        "PUT" => 3,
        "DELETE" => 4,
        "PATCH" => 5,
        "OPTIONS" => 6,
        _ => METHOD_OTHER,
    }
}

/// Answers counted by method ([`METHODS`]) and status class ([`CLASSES`]).
#[derive(Debug, Default)]
struct Answers([[AtomicU64; 5]; 8]);

impl Answers {
    #[inline]
    fn count(&self, method: usize, status: u16) {
        self.0[method][class_index(status)].fetch_add(1, Relaxed);
    }

    fn by_method(&self) -> [[u64; 5]; 8] {
        std::array::from_fn(|m| std::array::from_fn(|c| self.0[m][c].load(Relaxed)))
    }

    fn by_class(&self) -> [u64; 5] {
        std::array::from_fn(|c| self.0.iter().map(|m| m[c].load(Relaxed)).sum())
    }
}

/// What one instance has seen: answers it gave by status class, and the
/// ways its attempts failed.
#[derive(Debug, Default)]
pub struct InstanceStats {
    responses: Answers,
    connect_failures: AtomicU64,
    timeouts: AtomicU64,
    resets: AtomicU64,
    health_transitions: AtomicU64,
}

/// How an attempt on an instance failed, for [`InstanceStats::failed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptFailure {
    /// The connection could not be made (refused, timed out, unreachable).
    Connect,
    /// No response head within the response-header timeout.
    Timeout,
    /// The connection broke after the request was written.
    Reset,
}

impl InstanceStats {
    /// Counts one request (its [`method_index`]) this instance answered
    /// with `status`.
    #[inline]
    pub fn answered(&self, method: usize, status: u16) {
        self.responses.count(method, status);
    }

    /// Counts one failed attempt.
    #[inline]
    pub fn failed(&self, how: AttemptFailure) {
        let c = match how {
            AttemptFailure::Connect => &self.connect_failures,
            AttemptFailure::Timeout => &self.timeouts,
            AttemptFailure::Reset => &self.resets,
        };
        c.fetch_add(1, Relaxed);
    }

    /// Counts one change of health (active check or ejection).
    pub fn health_changed(&self) {
        self.health_transitions.fetch_add(1, Relaxed);
    }

    /// Requests answered, by status class ([`CLASSES`]).
    pub fn responses(&self) -> [u64; 5] {
        self.responses.by_class()
    }

    /// Requests answered, by method ([`METHODS`]) and status class.
    pub fn responses_by_method(&self) -> [[u64; 5]; 8] {
        self.responses.by_method()
    }

    /// Failed attempts: connect failures, timeouts, resets.
    pub fn failures(&self) -> (u64, u64, u64) {
        (
            self.connect_failures.load(Relaxed),
            self.timeouts.load(Relaxed),
            self.resets.load(Relaxed),
        )
    }

    /// Health changes so far.
    pub fn health_transitions(&self) -> u64 {
        self.health_transitions.load(Relaxed)
    }
}

/// What one service has seen: request and upstream latency, retries, and
/// the answers the proxy gave itself (no instance answered).
#[derive(Debug, Default)]
pub struct ServiceStats {
    /// Whole requests, first byte in to last byte out.
    pub duration: Histogram,
    /// From sending a request to an instance to its response head.
    pub upstream_ttfb: Histogram,
    local: Answers,
    retries: AtomicU64,
}

impl ServiceStats {
    /// Counts one request (its [`method_index`]) the proxy answered itself
    /// with `status`.
    #[inline]
    pub fn answered_locally(&self, method: usize, status: u16) {
        self.local.count(method, status);
    }

    /// Counts one retry (an attempt after the first).
    #[inline]
    pub fn retried(&self) {
        self.retries.fetch_add(1, Relaxed);
    }

    /// Requests the proxy answered itself, by status class.
    pub fn local_responses(&self) -> [u64; 5] {
        self.local.by_class()
    }

    /// Requests the proxy answered itself, by method and status class.
    pub fn local_responses_by_method(&self) -> [[u64; 5]; 8] {
        self.local.by_method()
    }

    /// Retries made.
    pub fn retries(&self) -> u64 {
        self.retries.load(Relaxed)
    }
}

/// The registry's own work: snapshot rebuilds and how long they took.
#[derive(Debug, Default)]
pub struct RebuildStats {
    /// Duration of each rebuild that published a snapshot.
    pub duration: Histogram,
    last_us: AtomicU64,
}

impl RebuildStats {
    /// Records one published rebuild.
    pub fn record(&self, d: Duration) {
        self.duration.observe(d);
        self.last_us
            .store(d.as_micros().min(u128::from(u64::MAX)) as u64, Relaxed);
    }

    /// The last published rebuild's duration.
    pub fn last(&self) -> Duration {
        Duration::from_micros(self.last_us.load(Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_count_their_own() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(200));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(60));
        let (sum, count, buckets) = h.read();
        assert_eq!(count, 3);
        assert!((sum - 60.0032).abs() < 1e-9, "{sum}");
        assert_eq!(buckets[0], (0.0005, 1));
        assert_eq!(buckets[3], (0.005, 1));
        assert_eq!(buckets[13], (10.0, 0));
        assert_eq!(buckets[14], (f64::MAX, 1));
    }

    #[test]
    fn status_classes() {
        assert_eq!(class_index(101), 0);
        assert_eq!(class_index(204), 1);
        assert_eq!(class_index(404), 3);
        assert_eq!(class_index(599), 4);
        assert_eq!(class_index(42), 0);
        assert_eq!(class_index(999), 4);
    }
}
