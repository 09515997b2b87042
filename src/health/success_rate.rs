//! Success-rate outlier detection (`outlier.success_rate_*`, as Envoy's):
//! the forwarding path counts each instance's successes and failures
//! (connect failures, resets, timeouts, bad responses and 5xx answers);
//! every `success_rate_interval` the supervisor compares the instances
//! that saw at least `success_rate_min_requests` outcomes and, when there
//! are at least `success_rate_min_instances` of them, ejects those whose
//! success rate is below the mean minus `success_rate_stdev_factor`
//! standard deviations, for the usual ejection time and within
//! `max_ejected_percent`. The counts then start again from zero.

use crate::registry::ServiceEntry;

/// Most instances judged at once (the rates sit on the stack).
const MAX_JUDGED: usize = 256;

/// Compares `service`'s instances' success rates at `now_ms` and ejects
/// the outliers; returns how many it ejected.
pub fn evaluate(service: &ServiceEntry, now_ms: u64) -> usize {
    let o = &service.policy().outlier;
    let sr = o.success_rate;
    if sr.min_requests == 0 {
        return 0;
    }
    let members = service.members();
    let mut rates = [(0usize, 0f64); MAX_JUDGED];
    let mut n = 0;
    for (i, m) in members.iter().enumerate() {
        let (ok, failed) = m.instance.take_outcomes();
        let total = u64::from(ok) + u64::from(failed);
        if total >= u64::from(sr.min_requests) && n < MAX_JUDGED && !m.instance.is_ejected(now_ms) {
            rates[n] = (i, ok as f64 / total as f64);
            n += 1;
        }
    }
    if n < sr.min_instances as usize {
        return 0;
    }
    let rates = &rates[..n];
    let mean = rates.iter().map(|r| r.1).sum::<f64>() / n as f64;
    let var = rates.iter().map(|r| (r.1 - mean).powi(2)).sum::<f64>() / n as f64;
    let threshold = mean - f64::from(sr.stdev_factor_milli) / 1000.0 * var.sqrt();
    let cap = (members.len() * usize::from(o.max_ejected_percent) / 100).max(1);
    let mut ejected_now = members
        .iter()
        .filter(|m| m.instance.is_ejected(now_ms))
        .count();
    let mut count = 0;
    for &(i, rate) in rates {
        if rate >= threshold {
            continue;
        }
        if ejected_now >= cap {
            tracing::debug!(service = %service.name(), "success-rate outlier not ejected: ejection cap reached");
            break;
        }
        super::passive::eject_outlier(
            service,
            &members[i].instance,
            now_ms,
            format_args!(
                "success rate {:.1}% below its peers' (mean {:.1}%, threshold {:.1}%)",
                rate * 100.0,
                mean * 100.0,
                threshold * 100.0
            ),
        );
        ejected_now += 1;
        count += 1;
    }
    if count > 0 {
        super::panic::update(service, now_ms);
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::registry::Registry;
    use std::path::Path;

    #[test]
    fn the_failing_instance_among_healthy_peers_is_ejected() {
        let instances: Vec<String> = (1..=6).map(|p| format!("\"127.0.0.1:{p}\"")).collect();
        let text = format!(
            "[services.s]\ninstances = [{}]\n[services.s.outlier]\n\
             success_rate_min_requests = 50\nsuccess_rate_min_instances = 5\n",
            instances.join(",")
        );
        let reg = Registry::new(&Config::parse(&text, Path::new("t.toml")).unwrap());
        let snap = reg.load();
        let svc = snap.service("s").unwrap();
        let now = crate::clock::now_ms();
        let feed = |i: usize, ok: u32, failed: u32| {
            for _ in 0..ok {
                svc.members()[i].instance.count_outcome(true);
            }
            for _ in 0..failed {
                svc.members()[i].instance.count_outcome(false);
            }
        };
        for i in 0..5 {
            feed(i, 99, 1);
        }
        feed(5, 60, 40);
        assert_eq!(evaluate(svc, now), 1);
        assert!(svc.members()[5].instance.is_ejected(now));
        assert!((0..5).all(|i| !svc.members()[i].instance.is_ejected(now)));
        // Counted again from zero: too few outcomes now, nothing judged.
        assert_eq!(evaluate(svc, now), 0);
        // Too few instances with enough outcomes: nobody is judged.
        for i in 0..3 {
            feed(i, 10, 90);
        }
        feed(3, 100, 0);
        assert_eq!(evaluate(svc, now), 0);
    }
}
