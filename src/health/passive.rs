//! Passive health (outlier detection): the forwarding path reports each
//! attempt's outcome here.
//!
//! An instance is ejected after `outlier.connect_failures` consecutive
//! connect failures or `outlier.consecutive_failures` consecutive failures
//! of any kind (connect, reset before a response, response timeout, and 5xx
//! when `count_5xx` is on). The ejection lasts `base_ejection` doubled for
//! each consecutive ejection, up to `max_ejection`; the next success resets
//! the doubling. At most `max_ejected_percent` of a service's instances
//! (and always at least one) are ejected at once.

use std::fmt;
use std::time::Duration;

use crate::registry::{InstanceState, ServiceEntry};

/// What went wrong with one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The TCP connect failed or timed out.
    Connect,
    /// The connection failed after the request was sent, before a response.
    Reset,
    /// No response head within the response-header timeout.
    Timeout,
    /// A 5xx response (counted only when `count_5xx` is on).
    Status5xx,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Failure::Connect => "connect failure",
            Failure::Reset => "connection reset before response",
            Failure::Timeout => "response timeout",
            Failure::Status5xx => "5xx response",
        })
    }
}

/// Records a successful exchange with `instance`. Touches shared state only
/// when there is something to reset, so the common path stays read-only.
/// An answer that comes while the instance is ejected (to a request sent
/// before) changes nothing: the ejection and its reason stand.
#[inline]
pub fn on_success(instance: &InstanceState) {
    let until = instance.ejected_until_ms();
    if until != 0 && instance.is_ejected(crate::clock::now_ms()) {
        return;
    }
    if instance.record_success() {
        instance.note_health("available", "answered again after an ejection".to_owned());
    }
}

/// Records a failed attempt on `instance` of `service` at `now_ms`;
/// returns whether this ejected it.
pub fn on_failure(
    service: &ServiceEntry,
    instance: &InstanceState,
    failure: Failure,
    now_ms: u64,
) -> bool {
    let o = &service.policy().outlier;
    if failure == Failure::Status5xx && !o.count_5xx {
        return false;
    }
    let (any, connect) = instance.record_failure(failure == Failure::Connect);
    let by_connects = o.connect_failures > 0 && connect >= o.connect_failures;
    let tripped = by_connects || (o.consecutive_failures > 0 && any >= o.consecutive_failures);
    if !tripped || instance.is_ejected(now_ms) {
        return false;
    }
    let members = service.members();
    let ejected = members
        .iter()
        .filter(|m| m.instance.is_ejected(now_ms))
        .count();
    let cap = (members.len() * usize::from(o.max_ejected_percent) / 100).max(1);
    if ejected >= cap {
        tracing::debug!(service = %service.name(), instance = %instance.addr(), ejected, cap, "not ejecting: ejection cap reached");
        return false;
    }
    let length = instance.eject(now_ms, |streak| {
        ejection_length(o.base_ejection, o.max_ejection, streak)
    });
    let count = if by_connects { connect } else { any };
    instance.note_health(
        "ejected",
        format!("{count} consecutive failures (last: {failure}); ejected for {length:?}"),
    );
    super::panic::update(service, now_ms);
    true
}

/// Ejects `instance`, an outlier among `service`'s instances (success
/// rate, latency), for the service's ejection length, and notes `why` with
/// that length as its health transition.
pub(super) fn eject_outlier(
    service: &ServiceEntry,
    instance: &InstanceState,
    now_ms: u64,
    why: fmt::Arguments<'_>,
) {
    let o = &service.policy().outlier;
    let length = instance.eject(now_ms, |streak| {
        ejection_length(o.base_ejection, o.max_ejection, streak)
    });
    instance.note_health("ejected", format!("{why}; ejected for {length:?}"));
}

/// `base` doubled per consecutive ejection after the first, capped at `max`.
pub(super) fn ejection_length(base: Duration, max: Duration, streak: u32) -> Duration {
    base.saturating_mul(1u32 << (streak.saturating_sub(1)).min(20))
        .min(max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::registry::Registry;
    use std::path::Path;

    fn registry(outlier: &str, n: u16) -> std::sync::Arc<Registry> {
        let instances: Vec<String> = (1..=n).map(|p| format!("\"127.0.0.1:{p}\"")).collect();
        let text = format!("[services.s]\ninstances = [{}]\npanic_threshold = 0\n[services.s.outlier]\n{outlier}\n", instances.join(","));
        Registry::new(&Config::parse(&text, Path::new("t.toml")).unwrap())
    }

    #[test]
    fn ejection_doubles_and_caps() {
        let (b, m) = (Duration::from_secs(1), Duration::from_secs(5));
        let lens: Vec<u64> = (1..=5)
            .map(|s| ejection_length(b, m, s).as_secs())
            .collect();
        assert_eq!(lens, [1, 2, 4, 5, 5]);
    }

    #[test]
    fn consecutive_failures_eject_and_success_resets() {
        let reg = registry("consecutive_failures = 3\nconnect_failures = 0", 4);
        let snap = reg.load();
        let svc = snap.service("s").unwrap();
        let i = &svc.members()[0].instance;
        assert!(!on_failure(svc, i, Failure::Reset, 1000));
        assert!(!on_failure(svc, i, Failure::Timeout, 1000));
        on_success(i);
        assert!(!on_failure(svc, i, Failure::Reset, 1000));
        assert!(!on_failure(svc, i, Failure::Reset, 1000));
        assert!(
            on_failure(svc, i, Failure::Reset, 1000),
            "third in a row ejects"
        );
        assert!(i.is_ejected(1500) && !i.is_ejected(2000));
        assert!(
            !on_failure(svc, i, Failure::Status5xx, 1000),
            "5xx not counted by default"
        );
    }

    #[test]
    fn ejection_cap_keeps_instances() {
        let reg = registry("connect_failures = 1\nmax_ejected_percent = 50", 4);
        let snap = reg.load();
        let svc = snap.service("s").unwrap();
        let ejected: Vec<bool> = svc
            .members()
            .iter()
            .map(|m| on_failure(svc, &m.instance, Failure::Connect, 1000))
            .collect();
        assert_eq!(ejected, [true, true, false, false]);
        // A single-instance service can always eject its one instance.
        let reg = registry("connect_failures = 1\nmax_ejected_percent = 0", 1);
        let snap = reg.load();
        let svc = snap.service("s").unwrap();
        assert!(on_failure(
            svc,
            &svc.members()[0].instance,
            Failure::Connect,
            1000
        ));
    }

    /// The backoff on the (paused) clock: each ejection in a run lasts
    /// twice the one before, up to `max_ejection`; a success ends the run.
    #[tokio::test(start_paused = true)]
    async fn ejection_backoff_follows_the_clock() {
        let reg = registry(
            "connect_failures = 1\nbase_ejection = \"1s\"\nmax_ejection = \"3s\"\nmax_ejected_percent = 100",
            2,
        );
        let snap = reg.load();
        let svc = snap.service("s").unwrap();
        let i = &svc.members()[0].instance;
        let ms = |n: u64| tokio::time::advance(Duration::from_millis(n));
        let ejected = || i.is_ejected(crate::clock::now_ms());
        for length in [1_000, 2_000, 3_000, 3_000] {
            assert!(on_failure(svc, i, Failure::Connect, crate::clock::now_ms()));
            ms(length - 1).await;
            assert!(ejected(), "{length} ms ejection still on");
            ms(1).await;
            assert!(!ejected(), "{length} ms ejection over");
        }
        on_success(i);
        assert!(on_failure(svc, i, Failure::Connect, crate::clock::now_ms()));
        // A late answer (to a request sent before) while ejected: the
        // ejection, its run and its reason stand.
        on_success(i);
        assert!(ejected());
        let reason = i.last_transition().map(|t| t.reason).unwrap_or_default();
        assert!(reason.contains("ejected for"), "{reason}");
        ms(1_000).await;
        assert!(!ejected(), "back to 1 s after a success");
        assert_eq!(i.ejections(), 5);
    }
}
