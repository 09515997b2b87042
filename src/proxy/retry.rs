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

use std::any::Any;
use std::sync::{Mutex, MutexGuard};

use crate::registry::{Attachment, ServiceEntry};

const WINDOW_MS: u64 = 5_000;

/// A service's retry budget, kept in the attachment slot of its live state
/// (so it survives snapshot swaps); locked only on the retry path.
#[derive(Debug)]
struct Budget(Mutex<Window>);

impl Attachment for Budget {
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// Retries and picks counted over two consecutive windows.
#[derive(Debug, Default)]
struct Window {
    started_ms: u64,
    picks_at_start: usize,
    retries: u64,
    prev_picks: usize,
    prev_retries: u64,
    /// Retries refused since the service appeared.
    refused: u64,
}

/// `service`'s budget window, locked; made on first use, its first window
/// starting when the service appeared.
fn window(service: &ServiceEntry) -> Option<MutexGuard<'_, Window>> {
    let live = service.live();
    let budget = live.attachment().get_or_init(|| {
        Budget(Mutex::new(Window {
            started_ms: live.since_ms(),
            ..Window::default()
        }))
    })?;
    Some(budget.0.lock().unwrap_or_else(|e| e.into_inner()))
}

/// Takes one retry from `service`'s budget at `now_ms`; false when spent.
pub fn take(service: &ServiceEntry, now_ms: u64) -> bool {
    let budget = &service.policy().retry_budget;
    let picks = service.live().turn();
    let Some(mut w) = window(service) else {
        return false;
    };
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
    window(service).map_or(0, |w| w.refused)
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
        // average rate (8 requests and 1 retry per window) leaves none.
        let later = (0..50).filter(|_| take(svc, now + 60_000)).count();
        assert_eq!(later, 0);
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

    /// The windows move with the clock (paused here): retries granted in a
    /// window count against the next one too, and stop counting after that.
    #[tokio::test(start_paused = true)]
    async fn windows_follow_the_clock() {
        let text = "[services.s]\ninstances = [\"127.0.0.1:1\"]\n[services.s.retry_budget]\npercent = 20\nmin_per_second = 0\n";
        let reg = Registry::new(&Config::parse(text, Path::new("t.toml")).unwrap());
        let snap = reg.load_full();
        let svc = snap.service("s").unwrap();
        let requests = |n: usize| {
            for _ in 0..n {
                svc.live().next_turn();
            }
        };
        let granted = || {
            (0..100)
                .filter(|_| take(svc, crate::clock::now_ms()))
                .count()
        };
        let step = |ms: u64| tokio::time::advance(std::time::Duration::from_millis(ms));

        // Window A: 100 requests, so 20 retries.
        requests(100);
        assert_eq!(granted(), 20);
        step(4_999).await;
        assert_eq!(granted(), 0, "still window A");
        // Window B: A's 100 requests and 20 retries still count.
        step(1).await;
        assert_eq!(granted(), 0);
        requests(50);
        assert_eq!(granted(), 10, "150 requests in A and B: 30 retries");
        // Window C: A no longer counts; B's 50 requests and 10 retries do.
        step(5_000).await;
        assert_eq!(granted(), 0);
        requests(100);
        assert_eq!(granted(), 20, "150 requests in B and C: 30 retries");
        assert_eq!(refused(svc), 80 + 100 + 100 + 90 + 100 + 80);
    }

    /// At low traffic the per-second minimum refills as (paused) time
    /// passes, over the span of the last two windows.
    #[tokio::test(start_paused = true)]
    async fn minimum_refills_with_time() {
        let text = "[services.s]\ninstances = [\"127.0.0.1:1\"]\n[services.s.retry_budget]\npercent = 0\nmin_per_second = 2\n";
        let reg = Registry::new(&Config::parse(text, Path::new("t.toml")).unwrap());
        let snap = reg.load_full();
        let svc = snap.service("s").unwrap();
        let granted = || {
            (0..100)
                .filter(|_| take(svc, crate::clock::now_ms()))
                .count()
        };
        let step = |ms: u64| tokio::time::advance(std::time::Duration::from_millis(ms));
        assert_eq!(granted(), 2, "the first second's worth");
        step(3_000).await;
        assert_eq!(granted(), 4, "3 s: 6 in all");
        step(2_000).await;
        assert_eq!(granted(), 4, "a new window: 6 of 10 used over 5 s");
        step(5_000).await;
        assert_eq!(granted(), 6, "the first window's 6 no longer count");
    }
}
