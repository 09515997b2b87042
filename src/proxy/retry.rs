//! The retry budget: retries allowed per service on top of its requests,
//! so that during an outage retries cannot multiply the load on the
//! instances that are left.
//!
//! A retry is allowed while the retries of the last two windows (5 s each)
//! stay under `percent` of the requests in those windows plus
//! `min_per_second` for each second they span. Requests are counted by the
//! service's pick cursor (which the balancer bumps once per request, not per
//! retry), so the request path pays nothing for the budget; only retries
//! take its lock. The first window starts when the service appears; after a
//! gap longer than two windows without retries, the previous window is
//! estimated from the average request rate over the gap.

use crate::registry::ServiceEntry;

const WINDOW_MS: u64 = 5_000;

/// Takes one retry from `service`'s budget at `now_ms`; false when spent.
pub fn take(service: &ServiceEntry, now_ms: u64) -> bool {
    let budget = &service.policy().retry_budget;
    let picks = service.live().turn();
    let mut w = service.live().budget();
    if w.started_ms == 0 {
        w.started_ms = now_ms;
        w.picks_at_start = 0;
    }
    let age = now_ms.saturating_sub(w.started_ms);
    if age >= WINDOW_MS {
        let picks_in = picks.wrapping_sub(w.picks_at_start);
        if age < 2 * WINDOW_MS {
            w.prev_picks = picks_in;
            w.prev_retries = w.retries;
        } else {
            // A long quiet spell: one window's worth at the average rate.
            w.prev_picks = (picks_in as u64 * WINDOW_MS / age) as usize;
            w.prev_retries = w.retries * WINDOW_MS / age;
        }
        w.started_ms = now_ms;
        w.picks_at_start = picks;
        w.retries = 0;
    }
    let has_prev = w.prev_picks > 0 || w.prev_retries > 0 || age >= WINDOW_MS;
    let span_ms = now_ms.saturating_sub(w.started_ms) + if has_prev { WINDOW_MS } else { 0 };
    let requests = (picks.wrapping_sub(w.picks_at_start) + w.prev_picks) as u64;
    let allowed = requests * u64::from(budget.percent) / 100
        + u64::from(budget.min_per_second) * (span_ms / 1000).max(1);
    if w.retries + w.prev_retries < allowed {
        w.retries += 1;
        true
    } else {
        w.refused += 1;
        false
    }
}

/// Retries refused by `service`'s budget since it appeared.
pub fn refused(service: &ServiceEntry) -> u64 {
    service.live().budget().refused
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::registry::Registry;
    use std::path::Path;

    #[test]
    fn budget_caps_retries_at_percent_of_requests() {
        let text = "[services.s]\ninstances = [\"127.0.0.1:1\"]\n[services.s.retry_budget]\npercent = 20\nmin_per_second = 0\n";
        let reg = Registry::new(&Config::parse(text, Path::new("t.toml")).unwrap());
        let snap = reg.load();
        let svc = snap.service("s").unwrap();
        let now = crate::clock::now_ms();
        assert!(!take(svc, now), "no requests yet, no minimum: no retry");
        // 100 requests happen in the window: 20 retries allowed.
        (0..100).for_each(|_| {
            svc.live().next_turn();
        });
        let granted = (0..50).filter(|_| take(svc, now + 10)).count();
        assert_eq!(granted, 20);
        assert_eq!(refused(svc), 31);
        // A minute later with no new requests: the estimate from the
        // average rate leaves little budget.
        let later = (0..50).filter(|_| take(svc, now + 60_000)).count();
        assert!(later <= 2, "{later}");
    }

    #[test]
    fn minimum_allows_retries_at_low_traffic() {
        let text = "[services.s]\ninstances = [\"127.0.0.1:1\"]\n[services.s.retry_budget]\npercent = 0\nmin_per_second = 3\n";
        let reg = Registry::new(&Config::parse(text, Path::new("t.toml")).unwrap());
        let snap = reg.load();
        let svc = snap.service("s").unwrap();
        let granted = (0..10).filter(|_| take(svc, 1_000)).count();
        assert_eq!(granted, 3);
    }
}
