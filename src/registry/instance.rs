//! Live per-instance state: the part of an instance that changes per request
//! or per health event (in-flight count, health, ejection, slow start, its
//! [`Lifecycle`]) and therefore lives outside the immutable snapshot, keyed
//! by identity, so a snapshot swap never resets it. Other modules change it
//! only through methods that say what happens (`record_failure`, `eject`,
//! `mark_unhealthy`, ...); a higher layer keeps its own per-instance things
//! (the proxy's idle connections) in its [`Slot`].

use std::net::SocketAddr;
use std::sync::atomic::{
    AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering::Relaxed,
};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use super::attach::Slot;
use super::latency::{Latency, LatencyWindow};
use super::snapshot::Waiters;
use super::state::{Health, InstanceKey, Lifecycle, Transition};
use super::stats::InstanceStats;

/// Live state of one instance, shared by every snapshot that lists it and by
/// every request in flight to it. The request path only reads and bumps
/// atomics here (through the methods below); the transition record is
/// written on state changes only.
#[derive(Debug)]
pub struct InstanceState {
    key: InstanceKey,
    in_flight: AtomicUsize,
    requests: AtomicU64,
    health: AtomicU8,
    /// A [`Lifecycle`].
    lifecycle: AtomicU8,
    /// `clock::now_ms()` until which passive health keeps it out; 0 if none.
    ejected_until_ms: AtomicU64,
    /// Start of the slow-start ramp; 0 when fully warm.
    warm_from_ms: AtomicU64,
    /// Joined a running service: ramp up once its first check passes.
    late_joiner: AtomicBool,
    /// Consecutive connect failures since the last success.
    connect_failures: AtomicU32,
    /// Consecutive failures of any kind since the last success.
    failures: AtomicU32,
    /// Consecutive ejections, for the growing ejection time.
    ejection_streak: AtomicU32,
    ejections: AtomicU64,
    transition: Mutex<Option<Transition>>,
    /// The last change of health (active check or passive ejection), kept
    /// apart from drains so `proxy_health` can say why it is unhealthy.
    health_transition: Mutex<Option<Transition>>,
    /// Active checks run so far, and the last one's outcome.
    checks: AtomicU64,
    last_check: Mutex<Option<Result<(), String>>>,
    /// Woken after every active check (registration calls wait on it).
    checked: tokio::sync::Notify,
    /// What a higher layer keeps for this instance (the proxy: its idle
    /// upstream connections), dropped with the state once the instance has
    /// left the registry and its last request has finished.
    attachment: Slot,
    /// Its response times, for `p2c_ewma`.
    latency: Latency,
    /// Its response times since the last latency outlier judgement.
    latency_window: LatencyWindow,
    /// Outcomes since success rates were last compared: successes in the
    /// low 32 bits, failures in the high 32 (one atomic add per outcome).
    outcomes: AtomicU64,
    /// Its service's queue, woken when one of its requests ends.
    waiters: OnceLock<Arc<Waiters>>,
    /// Its answers and failures, for the metrics.
    stats: InstanceStats,
}

impl InstanceState {
    /// Fresh state for an instance that just appeared, with the given
    /// starting health.
    pub fn new(key: InstanceKey, health: Health) -> Self {
        InstanceState {
            key,
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            health: AtomicU8::new(health as u8),
            lifecycle: AtomicU8::new(Lifecycle::Serving as u8),
            ejected_until_ms: AtomicU64::new(0),
            warm_from_ms: AtomicU64::new(0),
            late_joiner: AtomicBool::new(false),
            connect_failures: AtomicU32::new(0),
            failures: AtomicU32::new(0),
            ejection_streak: AtomicU32::new(0),
            ejections: AtomicU64::new(0),
            transition: Mutex::new(None),
            health_transition: Mutex::new(None),
            checks: AtomicU64::new(0),
            last_check: Mutex::new(None),
            checked: tokio::sync::Notify::new(),
            attachment: Slot::default(),
            latency: Latency::default(),
            latency_window: LatencyWindow::default(),
            outcomes: AtomicU64::new(0),
            waiters: OnceLock::new(),
            stats: InstanceStats::default(),
        }
    }

    /// Links it to its service's queue (once; an instance belongs to one
    /// service).
    pub(crate) fn link_waiters(&self, waiters: &Arc<Waiters>) {
        let _ = self.waiters.set(waiters.clone());
    }

    /// Its response-time average (fed by the proxy for `p2c_ewma`).
    #[inline]
    pub fn latency(&self) -> &Latency {
        &self.latency
    }

    /// Its response times for latency outlier detection.
    #[inline]
    pub fn latency_window(&self) -> &LatencyWindow {
        &self.latency_window
    }

    /// Identity.
    pub fn key(&self) -> &InstanceKey {
        &self.key
    }

    /// Where the instance listens.
    #[inline]
    pub fn addr(&self) -> SocketAddr {
        self.key.addr
    }

    /// What a higher layer attached to this instance (see [`Slot`]).
    #[inline]
    pub fn attachment(&self) -> &Slot {
        &self.attachment
    }

    /// Its answers and failures, for the metrics.
    #[inline]
    pub fn stats(&self) -> &InstanceStats {
        &self.stats
    }

    /// Requests dispatched and not yet finished (response body done or failed).
    #[inline]
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Relaxed)
    }

    /// Requests dispatched since the instance appeared.
    pub fn requests(&self) -> u64 {
        self.requests.load(Relaxed)
    }

    // === health ===

    /// Active health.
    #[inline]
    pub fn health(&self) -> Health {
        Health::from_u8(self.health.load(Relaxed))
    }

    /// Sets the active health; returns the previous value.
    pub fn set_health(&self, health: Health) -> Health {
        Health::from_u8(self.health.swap(health as u8, Relaxed))
    }

    /// Marks it healthy because of `reason` (logged, and shown as its last
    /// health transition).
    pub fn mark_healthy(&self, reason: String) {
        self.set_health(Health::Healthy);
        self.note_health("healthy", reason);
    }

    /// Marks it unhealthy because of `reason` (logged, and shown as its
    /// last health transition); what was kept for its requests (idle
    /// connections) is let go.
    pub fn mark_unhealthy(&self, reason: String) {
        self.set_health(Health::Unhealthy);
        self.attachment.release();
        self.note_health("unhealthy", reason);
    }

    /// Whether it joined a service that was already running (rather than
    /// being there at start): it ramps up once its first check passes.
    pub fn is_late_joiner(&self) -> bool {
        self.late_joiner.load(Relaxed)
    }

    /// Records that it joined a running service.
    pub(crate) fn mark_late_joiner(&self) {
        self.late_joiner.store(true, Relaxed);
    }

    // === passive health: outcomes and ejections ===

    /// Records a successful exchange: the consecutive failure counts start
    /// again from zero, and a run of ejections ends. Returns whether it
    /// ended one (the instance answers again after an ejection). Writes
    /// shared state only when there is something to reset, so the common
    /// path stays read-only.
    #[inline]
    pub fn record_success(&self) -> bool {
        if self.failures.load(Relaxed) != 0 || self.connect_failures.load(Relaxed) != 0 {
            self.failures.store(0, Relaxed);
            self.connect_failures.store(0, Relaxed);
        }
        self.ejection_streak.load(Relaxed) != 0 && self.ejection_streak.swap(0, Relaxed) != 0
    }

    /// Records a failed attempt (`connect`: the connection could not be
    /// made). Returns the consecutive failures so far: of any kind, and of
    /// connects (0 unless this one was a connect failure).
    pub fn record_failure(&self, connect: bool) -> (u32, u32) {
        let any = self.failures.fetch_add(1, Relaxed) + 1;
        let connects = if connect {
            self.connect_failures.fetch_add(1, Relaxed) + 1
        } else {
            0
        };
        (any, connects)
    }

    /// Counts one outcome for success-rate outlier detection.
    #[inline]
    pub fn count_outcome(&self, ok: bool) {
        self.outcomes
            .fetch_add(if ok { 1 } else { 1 << 32 }, Relaxed);
    }

    /// The outcomes counted since the last call: (successes, failures).
    pub fn take_outcomes(&self) -> (u32, u32) {
        let v = self.outcomes.swap(0, Relaxed);
        (v as u32, (v >> 32) as u32)
    }

    /// Consecutive failures of any kind since the last success.
    pub fn consecutive_failures(&self) -> u32 {
        self.failures.load(Relaxed)
    }

    /// Ejects it from `now_ms` for as long as `length` says for the run of
    /// consecutive ejections this one makes (1 for the first since the
    /// last success); the failure counts start again. Returns the length.
    pub fn eject(&self, now_ms: u64, length: impl FnOnce(u32) -> Duration) -> Duration {
        let streak = self.ejection_streak.fetch_add(1, Relaxed) + 1;
        let length = length(streak);
        self.eject_until(now_ms.saturating_add(length.as_millis() as u64));
        self.failures.store(0, Relaxed);
        self.connect_failures.store(0, Relaxed);
        length
    }

    /// Whether passive health has it ejected at `now_ms`.
    #[inline]
    pub fn is_ejected(&self, now_ms: u64) -> bool {
        self.ejected_until_ms.load(Relaxed) > now_ms
    }

    /// When the current ejection ends (`clock::now_ms` scale), 0 if none.
    pub fn ejected_until_ms(&self) -> u64 {
        self.ejected_until_ms.load(Relaxed)
    }

    /// Ejects it until `until_ms`.
    pub fn eject_until(&self, until_ms: u64) {
        self.ejected_until_ms.store(until_ms, Relaxed);
        self.ejections.fetch_add(1, Relaxed);
    }

    /// Ends any ejection now.
    pub fn clear_ejection(&self) {
        self.ejected_until_ms.store(0, Relaxed);
    }

    /// Times it was ejected.
    pub fn ejections(&self) -> u64 {
        self.ejections.load(Relaxed)
    }

    // === availability and lifecycle ===

    /// Whether the instance may take traffic at `now_ms` in normal mode:
    /// not failing its active check, not ejected, serving.
    #[inline]
    pub fn is_available(&self, now_ms: u64) -> bool {
        matches!(self.health(), Health::NotChecked | Health::Healthy)
            && !self.is_ejected(now_ms)
            && self.takes_new_requests()
    }

    /// Where it is in its life.
    #[inline]
    pub fn lifecycle(&self) -> Lifecycle {
        Lifecycle::from_u8(self.lifecycle.load(Relaxed))
    }

    /// Whether it may get new requests at all: [`Lifecycle::Serving`].
    /// Panic mode never widens the choice beyond these.
    #[inline]
    pub fn takes_new_requests(&self) -> bool {
        self.lifecycle() == Lifecycle::Serving
    }

    /// Starts draining it (or, with `drain` false, cancels the drain);
    /// `reason` names who asked. A removed instance stays removed.
    pub(crate) fn set_draining(&self, drain: bool, reason: &str) {
        let (from, to) = if drain {
            (Lifecycle::Serving, Lifecycle::Draining)
        } else {
            (Lifecycle::Draining, Lifecycle::Serving)
        };
        let changed = self
            .lifecycle
            .compare_exchange(from as u8, to as u8, Relaxed, Relaxed)
            .is_ok();
        if changed {
            self.attachment.release();
            let to = if drain { "draining" } else { "available" };
            self.note_transition(to, reason.to_owned());
        }
    }

    /// Marks it as gone from the registry: no new requests reach it (no
    /// snapshot lists it any more), what was kept for it (idle
    /// connections) is let go now.
    pub(crate) fn mark_removed(&self) {
        let was = self.lifecycle.swap(Lifecycle::Removed as u8, Relaxed);
        if was != Lifecycle::Removed as u8 {
            self.attachment.release();
            self.note_transition("removed", "no source lists it any more".to_owned());
        }
    }

    // === slow start ===

    /// Starts a slow-start ramp at `now_ms`.
    pub fn start_warming(&self, now_ms: u64) {
        self.warm_from_ms.store(now_ms, Relaxed);
    }

    /// Share of its weight the instance gets at `now_ms`, in thousandths:
    /// ramps linearly from 100 (10%) to 1000 over `window`.
    #[inline]
    pub fn warmth(&self, now_ms: u64, window: Duration) -> u64 {
        let from = self.warm_from_ms.load(Relaxed);
        if from == 0 {
            return 1000;
        }
        let window_ms = window.as_millis() as u64;
        let elapsed = now_ms.saturating_sub(from);
        if window_ms == 0 || elapsed >= window_ms {
            self.warm_from_ms.store(0, Relaxed);
            return 1000;
        }
        (elapsed * 1000 / window_ms).max(100)
    }

    // === what operators see ===

    /// Records a state change (and logs it, once per transition).
    pub fn note_transition(&self, to: &'static str, reason: String) {
        tracing::info!(service = %self.key.service, instance = %self.key.addr, state = to, %reason, "instance state changed");
        let mut t = self.transition.lock().unwrap_or_else(|e| e.into_inner());
        *t = Some(Transition {
            to,
            reason,
            at: SystemTime::now(),
        });
    }

    /// The last state change, if any.
    pub fn last_transition(&self) -> Option<Transition> {
        self.transition
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Records (and logs) a change of health: an active check's verdict or
    /// a passive ejection and its end.
    pub fn note_health(&self, to: &'static str, reason: String) {
        self.stats.health_changed();
        self.note_transition(to, reason.clone());
        *self
            .health_transition
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(Transition {
            to,
            reason,
            at: SystemTime::now(),
        });
    }

    /// The last change of health, if any.
    pub fn last_health_transition(&self) -> Option<Transition> {
        self.health_transition
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Records one active check's outcome and wakes whoever waits for it.
    pub fn record_check(&self, outcome: Result<(), String>) {
        *self.last_check.lock().unwrap_or_else(|e| e.into_inner()) = Some(outcome);
        self.checks.fetch_add(1, Relaxed);
        self.checked.notify_waiters();
    }

    /// Active checks run so far.
    pub fn checks_run(&self) -> u64 {
        self.checks.load(Relaxed)
    }

    /// The last active check's outcome (`Err` says why it failed).
    pub fn last_check(&self) -> Option<Result<(), String>> {
        self.last_check
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits until an active check has run (or has already), at most until
    /// `deadline`; whether one has.
    pub async fn wait_checked(&self, deadline: tokio::time::Instant) -> bool {
        loop {
            let notified = self.checked.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.checks_run() > 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.checks_run() > 0;
            }
        }
    }
}

/// Counts one in-flight request against an instance for as long as it lives.
///
/// Created when an instance is picked and moved into the response body, so
/// the count drops when the body ends, errors or is abandoned, never by hand.
/// The request counts in its service's total too (see [`Waiters`]) when the
/// instance is linked to its service (always, once it is in a snapshot)
/// and the service keeps that total (`consistent_hash` with a load bound).
#[derive(Debug)]
pub struct InFlightGuard {
    instance: Arc<InstanceState>,
    /// Counted in the service's total (linked, and the total kept then).
    counted: bool,
}

impl InFlightGuard {
    /// Starts counting a request against `instance`.
    #[inline]
    pub fn new(instance: Arc<InstanceState>) -> Self {
        instance.in_flight.fetch_add(1, Relaxed);
        InFlightGuard::counted(instance)
    }

    /// The guard of a request already counted in the instance's
    /// `in_flight`: counts it as a request, and in the service's total.
    #[inline]
    fn counted(instance: Arc<InstanceState>) -> Self {
        instance.requests.fetch_add(1, Relaxed);
        let counted = instance.waiters.get().is_some_and(|w| w.started());
        InFlightGuard { instance, counted }
    }

    /// Starts counting a request against `instance` if it has fewer than
    /// `limit` in flight (0: no limit); `None` when it is at its limit.
    #[inline]
    pub fn within(instance: &Arc<InstanceState>, limit: u32) -> Option<Self> {
        if limit == 0 {
            return Some(InFlightGuard::new(instance.clone()));
        }
        let before = instance.in_flight.fetch_add(1, Relaxed);
        if before >= limit as usize {
            instance.in_flight.fetch_sub(1, Relaxed);
            return None;
        }
        Some(InFlightGuard::counted(instance.clone()))
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
        self.instance
            .in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        if let Some(w) = self.instance.waiters.get() {
            if self.counted {
                w.finished();
            } else {
                w.released();
            }
        }
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
            Health::NotChecked,
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
    fn availability_follows_health_and_ejection() {
        let s = state();
        assert!(s.is_available(1_000));
        s.eject_until(2_000);
        assert!(!s.is_available(1_999));
        assert!(s.is_available(2_000));
        s.set_health(Health::Unknown);
        assert!(!s.is_available(5_000));
        s.set_health(Health::Healthy);
        assert!(s.is_available(5_000));
    }

    #[test]
    fn warmth_ramps_from_ten_percent() {
        let s = state();
        let w = Duration::from_secs(10);
        assert_eq!(s.warmth(5, w), 1000);
        s.start_warming(1_000);
        assert_eq!(s.warmth(1_000, w), 100);
        assert_eq!(s.warmth(6_000, w), 500);
        assert_eq!(s.warmth(11_000, w), 1000);
        assert_eq!(s.warmth(1_000, w), 1000, "ramp over, stays warm");
    }
}
