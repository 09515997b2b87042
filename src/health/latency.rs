//! Latency outlier detection (`outlier.latency_*`): the forwarding path
//! counts each instance's times to the response head (and the time a
//! timed-out or hedged-over attempt had waited, a lower bound) in a
//! histogram; every `latency_interval` the supervisor reads each
//! instance's p99 over the interval and, when at least
//! `latency_min_instances` instances saw `latency_min_requests`
//! responses, ejects those whose p99 is above `latency_factor` times the
//! median p99 of the others and above `latency_floor`, slowest first, for
//! the usual ejection time and within `max_ejected_percent`. The windows
//! then start again.
//!
//! Why p99 against the others' median: the p99 is what a slow instance
//! does to a service's tail, and the median of the others is not moved by
//! the instance judged nor by one other outlier, where a mean and
//! standard deviation (as success rates use) would be dragged by the very
//! instance they should expose when there are few instances.

use std::time::Duration;

use crate::registry::ServiceEntry;

/// Most instances judged at once (the p99s sit on the stack).
const MAX_JUDGED: usize = 256;

/// Compares `service`'s instances' p99 latencies at `now_ms` and ejects
/// the outliers; returns how many it ejected.
pub fn evaluate(service: &ServiceEntry, now_ms: u64) -> usize {
    let o = &service.policy().outlier;
    let cfg = o.latency;
    if cfg.min_requests == 0 {
        return 0;
    }
    let members = service.members();
    // (member index, p99 in µs), then sorted by p99.
    let mut judged = [(0usize, 0u64); MAX_JUDGED];
    let mut n = 0;
    for (i, m) in members.iter().enumerate() {
        let window = m.instance.latency_window();
        let (count, p99) = window.take();
        let enough = count >= u64::from(cfg.min_requests);
        window.set_last_p99(enough.then_some(p99));
        if enough && n < MAX_JUDGED && !m.instance.is_ejected(now_ms) {
            judged[n] = (i, p99.as_micros() as u64);
            n += 1;
        }
    }
    if n < cfg.min_instances as usize {
        return 0;
    }
    let judged = &mut judged[..n];
    judged.sort_unstable_by_key(|&(_, p99)| p99);
    let sorted: [u64; MAX_JUDGED] = std::array::from_fn(|k| judged.get(k).map_or(0, |j| j.1));
    let sorted = &sorted[..n];
    let cap = (members.len() * usize::from(o.max_ejected_percent) / 100).max(1);
    let ejected_before = members
        .iter()
        .filter(|m| m.instance.is_ejected(now_ms))
        .count();
    let mut ejected_now = ejected_before;
    let floor = cfg.floor.as_micros() as u64;
    // Slowest first, so the cap keeps the worst out.
    for k in (0..n).rev() {
        let (i, p99) = judged[k];
        let median = median_without(sorted, k);
        let threshold = (median as f64 * f64::from(cfg.factor_milli) / 1000.0) as u64;
        if p99 <= threshold || p99 <= floor {
            // The rest are faster still.
            break;
        }
        if ejected_now >= cap {
            tracing::debug!(service = %service.name(), "latency outlier not ejected: ejection cap reached");
            break;
        }
        super::passive::eject_outlier(
            service,
            &members[i].instance,
            now_ms,
            format_args!(
                "p99 latency {:?} above {:.1}x its peers' median p99 ({:?})",
                Duration::from_micros(p99),
                f64::from(cfg.factor_milli) / 1000.0,
                Duration::from_micros(median),
            ),
        );
        ejected_now += 1;
    }
    let count = ejected_now - ejected_before;
    if count > 0 {
        super::panic::update(service, now_ms);
    }
    count
}

/// The median of `sorted` (ascending, at least two values) without the
/// value at index `skip`.
fn median_without(sorted: &[u64], skip: usize) -> u64 {
    let m = sorted.len() - 1;
    let at = |j: usize| sorted[if j < skip { j } else { j + 1 }];
    if m % 2 == 1 {
        at(m / 2)
    } else {
        (at(m / 2 - 1) + at(m / 2)) / 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::registry::Registry;
    use std::path::Path;

    fn registry(outlier: &str, n: u16) -> std::sync::Arc<Registry> {
        let instances: Vec<String> = (1..=n).map(|p| format!("\"127.0.0.1:{p}\"")).collect();
        let text = format!(
            "[services.s]\ninstances = [{}]\npanic_threshold = 0\n[services.s.outlier]\n{outlier}\n",
            instances.join(",")
        );
        Registry::new(&Config::parse(&text, Path::new("t.toml")).unwrap())
    }

    fn feed(svc: &ServiceEntry, i: usize, n: usize, ms: u64) {
        for _ in 0..n {
            svc.members()[i]
                .instance
                .latency_window()
                .record(Duration::from_millis(ms));
        }
    }

    #[test]
    fn median_of_the_others() {
        assert_eq!(median_without(&[1, 2, 100], 2), 1);
        assert_eq!(median_without(&[1, 2, 100], 0), 51);
        assert_eq!(median_without(&[1, 2, 3, 100], 3), 2);
        assert_eq!(median_without(&[5, 100], 1), 5);
    }

    /// The slow instance among fast peers is ejected; the fast ones are
    /// not; the windows start again after each judgement; too few
    /// responses or instances judge nobody.
    #[test]
    fn the_slow_instance_among_fast_peers_is_ejected() {
        let reg = registry("latency_min_requests = 20\nlatency_min_instances = 3", 4);
        let snap = reg.load();
        let svc = snap.service("s").unwrap();
        let now = crate::clock::now_ms();
        for i in 0..3 {
            feed(svc, i, 50, 2 + i as u64);
        }
        feed(svc, 3, 50, 60);
        assert_eq!(evaluate(svc, now), 1);
        let ejected: Vec<bool> = svc
            .members()
            .iter()
            .map(|m| m.instance.is_ejected(now))
            .collect();
        assert_eq!(ejected, [false, false, false, true]);
        assert!(
            svc.members()[3].instance.latency_window().last_p99()
                >= Some(Duration::from_millis(60))
        );
        // Windows taken: nothing to judge now.
        assert_eq!(evaluate(svc, now), 0);
        // Two instances with enough responses: fewer than min_instances.
        feed(svc, 0, 50, 2);
        feed(svc, 1, 50, 200);
        feed(svc, 2, 5, 2);
        assert_eq!(evaluate(svc, now), 0);
    }

    /// Slower, but within the factor, or under the floor: kept.
    #[test]
    fn factor_and_floor_keep_instances() {
        let reg = registry("latency_min_requests = 10\nlatency_factor = 3.0", 3);
        let snap = reg.load();
        let svc = snap.service("s").unwrap();
        let now = crate::clock::now_ms();
        feed(svc, 0, 10, 20);
        feed(svc, 1, 10, 20);
        feed(svc, 2, 10, 50);
        assert_eq!(evaluate(svc, now), 0, "2.5x: within the factor");
        // 0.5 ms against 8 ms: 16x, but under the 10 ms floor.
        feed(svc, 0, 10, 0);
        feed(svc, 1, 10, 0);
        feed(svc, 2, 10, 8);
        assert_eq!(evaluate(svc, now), 0, "under the floor");
    }

    /// `max_ejected_percent` bounds latency ejections too, slowest first.
    #[test]
    fn the_cap_keeps_the_slowest_out_first() {
        let reg = registry(
            "latency_min_requests = 10\nlatency_min_instances = 2\nmax_ejected_percent = 20",
            6,
        );
        let snap = reg.load();
        let svc = snap.service("s").unwrap();
        let now = crate::clock::now_ms();
        for i in 0..4 {
            feed(svc, i, 10, 2);
        }
        feed(svc, 4, 10, 100);
        feed(svc, 5, 10, 400);
        assert_eq!(evaluate(svc, now), 1, "20% of 6 instances: one");
        assert!(svc.members()[5].instance.is_ejected(now));
        assert!(!svc.members()[4].instance.is_ejected(now));
    }

    /// On the (paused) clock: ejected for `base_ejection`, back after it,
    /// and judged again by the next window.
    #[tokio::test(start_paused = true)]
    async fn ejection_follows_the_clock() {
        let reg = registry(
            "latency_min_requests = 10\nbase_ejection = \"2s\"\nmax_ejection = \"10s\"",
            3,
        );
        let snap = reg.load();
        let svc = snap.service("s").unwrap();
        let slow = &svc.members()[2].instance;
        let round = || {
            feed(svc, 0, 10, 1);
            feed(svc, 1, 10, 1);
            feed(svc, 2, 10, 80);
            evaluate(svc, crate::clock::now_ms())
        };
        assert_eq!(round(), 1);
        tokio::time::advance(Duration::from_millis(1_999)).await;
        assert!(slow.is_ejected(crate::clock::now_ms()));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(!slow.is_ejected(crate::clock::now_ms()), "back after 2 s");
        assert_eq!(round(), 1, "still slow: out again");
        tokio::time::advance(Duration::from_millis(3_999)).await;
        assert!(slow.is_ejected(crate::clock::now_ms()), "doubled: 4 s");
        assert_eq!(slow.ejections(), 2);
    }
}
