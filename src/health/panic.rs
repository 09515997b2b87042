//! Panic mode: when too few of a service's instances are available, the
//! balancer ignores health for it and spreads traffic over every instance
//! that has not been drained, instead of failing requests or crushing the
//! few that are left.
//!
//! The rule lives here; the flag lives in the service's live state in the
//! registry, which calls [`update`] (installed by [`super::spawn_supervisor`]
//! through [`Registry::reassess_with`](crate::registry::Registry::reassess_with))
//! for every service it rebuilds. Health transitions call it too, and the
//! supervisor sweeps every service periodically, since ejections end by
//! time rather than by an event. The same calls keep the zone preference
//! of `[zone]` up to date ([`crate::balance::zone`]).

use crate::registry::{Health, ServiceEntry};

/// Recomputes `service`'s panic flag at `now_ms`: on when fewer than
/// `panic_threshold` percent of its members are available. Draining
/// members (which panic mode never uses) and members whose first check has
/// not run yet are left out of the count, so a fresh service does not start
/// in panic mode and draining half of a service does not start it either.
/// Logs each change once. Returns whether panic mode is on.
pub fn update(service: &ServiceEntry, now_ms: u64) -> bool {
    let threshold = usize::from(service.policy().panic_threshold);
    let (mut counted, mut available) = (0usize, 0usize);
    for m in service.members() {
        if m.instance.health() == Health::Unknown || !m.instance.takes_new_requests() {
            continue;
        }
        counted += 1;
        if m.instance.is_available(now_ms) {
            available += 1;
        }
    }
    let panic = threshold > 0 && counted > 0 && available * 100 < threshold * counted;
    let was = service.live().set_panic(panic);
    // Zone preference follows the same events (and yields to panic mode).
    crate::balance::zone::reassess(service, now_ms);
    if panic != was {
        if panic {
            tracing::warn!(service = %service.name(), available, of = counted, threshold_percent = threshold, "panic mode: too few instances available, ignoring health");
        } else {
            tracing::info!(service = %service.name(), available, of = counted, "panic mode over");
        }
    }
    panic
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock;
    use crate::config::Config;
    use crate::registry::{InstanceSpec, Registry};
    use std::path::Path;
    use std::sync::Arc;
    use std::time::Duration;

    fn registry() -> Arc<Registry> {
        let text = "[services.s]\ninstances = [\"127.0.0.1:1\", \"127.0.0.1:2\", \"127.0.0.1:3\", \"127.0.0.1:4\"]\npanic_threshold = 50\n";
        Registry::new(&Config::parse(text, Path::new("t.toml")).unwrap())
    }

    #[test]
    fn counts_only_checked_members_that_take_requests() {
        let reg = registry();
        let snap = reg.load_full();
        let svc = snap.service("s").unwrap();
        let m = svc.members();
        let now = clock::now_ms();
        m[0].instance.eject_until(now + 1_000);
        m[1].instance.set_health(Health::Unknown);
        m[2].instance.set_health(Health::Unknown);
        assert!(
            !update(svc, now),
            "members not checked yet are left out: 1 of 2 available"
        );
        m[1].instance.set_health(Health::Unhealthy);
        assert!(update(svc, now), "1 of 3 available is under 50%");
        assert!(svc.live().in_panic());
        m[1].instance.set_draining(true, "test");
        assert!(
            !update(svc, now),
            "draining members are left out: 1 of 2 available"
        );
        assert!(!svc.live().in_panic());
    }

    /// With the rule installed, a rebuild decides panic mode before the
    /// new snapshot is published; without it, the registry leaves the
    /// flag alone (the registry does not know the rule).
    #[test]
    fn a_rebuild_applies_the_installed_rule() {
        let reg = registry();
        let now = clock::now_ms();
        for m in &reg.load().service("s").unwrap().members()[..3] {
            m.instance.eject_until(now + 60_000);
        }
        reg.update_source(
            "api",
            vec![InstanceSpec::new(
                "s".into(),
                "127.0.0.1:5".parse().unwrap(),
            )],
        );
        assert!(reg.rebuild());
        assert!(!reg.load().service("s").unwrap().live().in_panic());
        reg.reassess_with(update);
        reg.update_source("api", vec![]);
        assert!(reg.rebuild());
        assert!(
            reg.load().service("s").unwrap().live().in_panic(),
            "published with panic mode on: 1 of 4 available"
        );
    }

    /// Ejections end by time, not by an event: the supervisor's periodic
    /// sweep turns panic mode off once they have ended.
    #[tokio::test(start_paused = true)]
    async fn supervisor_ends_panic_mode_when_ejections_end() {
        let reg = registry();
        let _supervisor = super::super::spawn_supervisor(&reg);
        let snap = reg.load_full();
        let svc = snap.service("s").unwrap();
        let now = clock::now_ms();
        for m in &svc.members()[..3] {
            m.instance.eject_until(now + 10_000);
        }
        assert!(update(svc, now));
        tokio::time::sleep(Duration::from_millis(9_000)).await;
        assert!(svc.live().in_panic(), "ejections still running");
        tokio::time::sleep(Duration::from_millis(1_300)).await;
        assert!(!svc.live().in_panic(), "swept after the ejections ended");
    }
}
