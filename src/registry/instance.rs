//! Live per-instance state: the part of an instance that changes per request
//! (in-flight count, connect-failure backoff, idle upstream connections) and
//! therefore lives outside the immutable snapshot, keyed by identity, so a
//! snapshot swap never resets it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use crate::clock;
use crate::proxy::upstream::IdlePool;

/// What makes two instances the same instance: the service and the address.
/// Sources may also give an instance id; it is metadata, not identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InstanceKey {
    /// The service the instance belongs to.
    pub service: Arc<str>,
    /// Where it listens.
    pub addr: SocketAddr,
}

/// First backoff after an instance refuses connections; doubles per further
/// failure up to [`MAX_BACKOFF`].
const BASE_BACKOFF: Duration = Duration::from_secs(1);
/// Longest backoff after repeated connect failures.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Live state of one instance, shared by every snapshot that lists it and by
/// every request in flight to it.
#[derive(Debug)]
pub struct InstanceState {
    key: InstanceKey,
    in_flight: AtomicUsize,
    requests: AtomicU64,
    consecutive_failures: AtomicU32,
    /// `clock::now_ms()` until which the instance is skipped; 0 when usable.
    down_until_ms: AtomicU64,
    /// Idle keep-alive connections to this instance; dropped (and so closed)
    /// with the state once the instance has left the registry and its last
    /// request has finished.
    pub(crate) idle: IdlePool,
}

impl InstanceState {
    /// Fresh state for an instance that just appeared.
    pub fn new(key: InstanceKey, max_idle: usize) -> Self {
        InstanceState {
            key,
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            consecutive_failures: AtomicU32::new(0),
            down_until_ms: AtomicU64::new(0),
            idle: IdlePool::new(max_idle),
        }
    }

    /// Identity.
    pub fn key(&self) -> &InstanceKey {
        &self.key
    }

    /// Where the instance listens.
    pub fn addr(&self) -> SocketAddr {
        self.key.addr
    }

    /// Requests dispatched and not yet finished (response body done or failed).
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Relaxed)
    }

    /// Requests dispatched since the instance appeared.
    pub fn requests(&self) -> u64 {
        self.requests.load(Relaxed)
    }

    /// Connect failures since the last success.
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures.load(Relaxed)
    }

    /// Whether the instance may be picked at `now_ms`.
    #[inline]
    pub fn is_available(&self, now_ms: u64) -> bool {
        let until = self.down_until_ms.load(Relaxed);
        until == 0 || until <= now_ms
    }

    /// Records a failed connect attempt: the instance is skipped for a backoff
    /// that doubles with each consecutive failure (1s, 2s, 4s ... 30s).
    pub fn record_connect_failure(&self) {
        let n = self.consecutive_failures.fetch_add(1, Relaxed) + 1;
        let backoff = BASE_BACKOFF
            .saturating_mul(1u32 << (n - 1).min(15))
            .min(MAX_BACKOFF);
        let until = clock::now_ms() + backoff.as_millis() as u64;
        self.down_until_ms.store(until, Relaxed);
        if n == 1 {
            tracing::warn!(service = %self.key.service, instance = %self.key.addr, "instance refused a connection; skipping it for {backoff:?}");
        }
    }

    /// Records a successful exchange: clears any backoff. Written only when
    /// something was set, so the common path does not dirty the cache line.
    #[inline]
    pub fn record_success(&self) {
        if self.consecutive_failures.load(Relaxed) != 0 {
            if self.consecutive_failures.swap(0, Relaxed) != 0 {
                tracing::info!(service = %self.key.service, instance = %self.key.addr, "instance reachable again");
            }
            self.down_until_ms.store(0, Relaxed);
        }
    }
}

/// Counts one in-flight request against an instance for as long as it lives.
///
/// Created when an instance is picked and moved into the response body, so
/// the count drops when the body ends, errors or is abandoned, never by hand.
#[derive(Debug)]
pub struct InFlightGuard {
    instance: Arc<InstanceState>,
}

impl InFlightGuard {
    /// Starts counting a request against `instance`.
    #[inline]
    pub fn new(instance: Arc<InstanceState>) -> Self {
        instance.in_flight.fetch_add(1, Relaxed);
        instance.requests.fetch_add(1, Relaxed);
        InFlightGuard { instance }
    }

    /// The instance being counted against.
    #[inline]
    pub fn instance(&self) -> &Arc<InstanceState> {
        &self.instance
    }
}

impl Drop for InFlightGuard {
    #[inline]
    fn drop(&mut self) {
        self.instance.in_flight.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> Arc<InstanceState> {
        Arc::new(InstanceState::new(
            InstanceKey {
                service: "a".into(),
                addr: "127.0.0.1:1".parse().unwrap(),
            },
            4,
        ))
    }

    #[test]
    fn guard_counts_until_dropped() {
        let s = state();
        let g1 = InFlightGuard::new(s.clone());
        let g2 = InFlightGuard::new(s.clone());
        assert_eq!(s.in_flight(), 2);
        drop(g1);
        assert_eq!(s.in_flight(), 1);
        drop(g2);
        assert_eq!(s.in_flight(), 0);
        assert_eq!(s.requests(), 2);
    }

    #[test]
    fn connect_failures_back_off_and_success_clears() {
        let s = state();
        let now = clock::now_ms();
        assert!(s.is_available(now));
        s.record_connect_failure();
        assert!(!s.is_available(now));
        assert!(s.is_available(now + 1_001));
        s.record_connect_failure();
        assert!(
            !s.is_available(now + 1_001),
            "second failure doubles the backoff"
        );
        s.record_success();
        assert!(s.is_available(now));
        assert_eq!(s.consecutive_failures(), 0);
    }
}
