//! `[services.NAME]` and its tables: the name, static instances,
//! balancing, and the policy (attempts, timeouts, outlier detection, panic
//! threshold, slow start, retry budget) over the global defaults. Its
//! `[services.NAME.health]` is validated in `health`, its
//! `[services.NAME.dns]` in `discovery`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;

use super::{discovery, health, traffic, upstream};
use crate::config::check::{duration, duration_or_zero, Cx};
use crate::config::defaults;
use crate::config::raw::{Dur, RawBalance, RawInstance, RawService};
use crate::config::{
    check_service_name, Balance, LatencyOutlier, Outlier, ProxySettings, RetryBudget,
    ServiceConfig, ServicePolicy, ServiceTimeouts, StaticInstance, SuccessRate, Timeouts, Upstream,
};

/// The policy of a service that does not set its own: the global
/// `[timeouts]` and `proxy.max_attempts`, no active checks, and the
/// defaults of the other tables.
pub(super) fn default_policy(
    timeouts: &Timeouts,
    proxy: &ProxySettings,
    zone: Option<Arc<crate::config::Zone>>,
) -> ServicePolicy {
    use defaults::{outlier as o, retry_budget as b, service as s};
    ServicePolicy {
        max_attempts: proxy.max_attempts,
        timeouts: ServiceTimeouts {
            connect: timeouts.connect,
            response_header: timeouts.response_header,
            response_body: timeouts.response_body,
            request: None,
        },
        health: None,
        outlier: Outlier {
            connect_failures: o::CONNECT_FAILURES,
            consecutive_failures: o::CONSECUTIVE_FAILURES,
            count_5xx: o::COUNT_5XX,
            base_ejection: o::BASE_EJECTION,
            max_ejection: o::MAX_EJECTION,
            max_ejected_percent: o::MAX_EJECTED_PERCENT,
            success_rate: SuccessRate {
                min_requests: o::SUCCESS_RATE_MIN_REQUESTS,
                min_instances: o::SUCCESS_RATE_MIN_INSTANCES,
                stdev_factor_milli: o::SUCCESS_RATE_STDEV_FACTOR_MILLI,
                interval: o::SUCCESS_RATE_INTERVAL,
            },
            latency: LatencyOutlier {
                min_requests: o::LATENCY_MIN_REQUESTS,
                min_instances: o::LATENCY_MIN_INSTANCES,
                factor_milli: o::LATENCY_FACTOR_MILLI,
                floor: o::LATENCY_FLOOR,
                interval: o::LATENCY_INTERVAL,
            },
        },
        panic_threshold: s::PANIC_THRESHOLD,
        slow_start: s::SLOW_START,
        retry_budget: RetryBudget {
            percent: b::PERCENT,
            min_per_second: b::MIN_PER_SECOND,
        },
        upstream: Upstream::default(),
        traffic: traffic::default_traffic(zone),
    }
}

/// Every `[services.NAME]`, by name.
pub(super) fn services(
    cx: &Cx<'_>,
    raw: &BTreeMap<String, Spanned<RawService>>,
    defaults: &ServicePolicy,
) -> BTreeMap<Arc<str>, ServiceConfig> {
    let mut out = BTreeMap::new();
    for (name, svc) in raw {
        let key = format!("services.{name}");
        if let Err(m) = check_service_name(name) {
            // Kept, so routes naming it do not add errors of their own.
            cx.push(cx.err_at(svc, &key, m));
        }
        let s = svc.get_ref();
        let name: Arc<str> = Arc::from(name.as_str());
        let balance = match s.balance {
            None | Some(RawBalance::RoundRobin) => Balance::RoundRobin,
            Some(RawBalance::LeastConnections) => Balance::LeastConnections,
            Some(RawBalance::P2cEwma) => Balance::P2cEwma,
            Some(RawBalance::ConsistentHash) => Balance::ConsistentHash,
            Some(RawBalance::Random) => Balance::Random,
        };
        out.insert(
            name.clone(),
            ServiceConfig {
                name,
                balance,
                instances: instances(cx, s, &key),
                policy: Arc::new(policy(cx, s, &key, defaults, balance)),
                dns: s
                    .dns
                    .as_ref()
                    .and_then(|d| cx.ok(discovery::dns(cx, d, &format!("{key}.dns")))),
            },
        );
    }
    out
}

/// `services.NAME.instances`: addresses (not port 0, none twice) and
/// weights.
fn instances(cx: &Cx<'_>, s: &RawService, key: &str) -> Vec<StaticInstance> {
    let raw: &[Spanned<RawInstance>] = match &s.instances {
        // A service fed only by registrations, DNS or etcd.
        None => &[],
        Some(list) if list.get_ref().is_empty() => {
            cx.push(cx.err_at(
                list,
                format!("{key}.instances"),
                "an empty list names no instance: list at least one (\"127.0.0.1:9001\"), \
                 or omit `instances` for a service whose instances register themselves \
                 or come from DNS",
            ));
            &[]
        }
        Some(list) => list.get_ref(),
    };
    let mut out: Vec<StaticInstance> = Vec::with_capacity(raw.len());
    for (i, inst) in raw.iter().enumerate() {
        let ikey = format!("{key}.instances[{i}]");
        let (addr, weight, tags) = match inst.get_ref() {
            RawInstance::Address(a) => (a, None, None),
            RawInstance::Table(t) => (&t.address, t.weight, t.tags.as_ref()),
        };
        let Ok(addr) = addr.parse::<SocketAddr>() else {
            cx.push(cx.err_at(
                inst,
                &ikey,
                format!("{addr:?} is not an IP:PORT address (e.g. \"127.0.0.1:9001\")"),
            ));
            continue;
        };
        if addr.port() == 0 {
            cx.push(cx.err_at(inst, &ikey, format!("{addr}: port 0 cannot be an instance")));
            continue;
        }
        let weight = match weight {
            None => defaults::service::WEIGHT,
            Some(w @ 1..=1000) => w as u32,
            Some(w) => {
                cx.push(cx.err_at(
                    inst,
                    format!("{ikey}.weight"),
                    format!("{w} is out of range 1..=1000"),
                ));
                continue;
            }
        };
        if out.iter().any(|x| x.addr == addr) {
            cx.push(cx.err_at(
                inst,
                &ikey,
                format!("{addr} is listed twice in this service"),
            ));
            continue;
        }
        out.push(StaticInstance {
            addr,
            weight,
            tags: tags.map(|t| Arc::new(t.clone())),
        });
    }
    out
}

/// A service's policy: its own settings over the defaults.
fn policy(
    cx: &Cx<'_>,
    s: &RawService,
    key: &str,
    defaults: &ServicePolicy,
    balance: Balance,
) -> ServicePolicy {
    let dur = |v: &Option<Spanned<Dur>>, name: &str, default: Duration| {
        cx.duration_or(v, &format!("{key}.{name}"), default)
    };
    let num = |v: &Option<Spanned<i64>>, name: &str, default: u32, range| {
        cx.int_or(v, &format!("{key}.{name}"), default, range)
    };
    let pct = |v: &Option<Spanned<i64>>, name: &str, default: u8| {
        cx.int_or(v, &format!("{key}.{name}"), default, 0..=100)
    };
    let t = &s.timeouts;
    let timeouts = ServiceTimeouts {
        connect: dur(&t.connect, "timeouts.connect", defaults.timeouts.connect),
        response_header: dur(
            &t.response_header,
            "timeouts.response_header",
            defaults.timeouts.response_header,
        ),
        response_body: dur(
            &t.response_body,
            "timeouts.response_body",
            defaults.timeouts.response_body,
        ),
        request: match &t.request {
            None => None,
            Some(_) => cx.ok(duration(
                cx,
                &t.request,
                &format!("{key}.timeouts.request"),
                Duration::ZERO,
            )),
        },
    };
    let o = &s.outlier;
    let d = &defaults.outlier;
    let outlier = Outlier {
        connect_failures: num(
            &o.connect_failures,
            "outlier.connect_failures",
            d.connect_failures,
            0..=1000,
        ),
        consecutive_failures: num(
            &o.consecutive_failures,
            "outlier.consecutive_failures",
            d.consecutive_failures,
            0..=1000,
        ),
        count_5xx: o.count_5xx.unwrap_or(d.count_5xx),
        base_ejection: dur(&o.base_ejection, "outlier.base_ejection", d.base_ejection),
        max_ejection: dur(&o.max_ejection, "outlier.max_ejection", d.max_ejection),
        max_ejected_percent: pct(
            &o.max_ejected_percent,
            "outlier.max_ejected_percent",
            d.max_ejected_percent,
        ),
        success_rate: SuccessRate {
            min_requests: num(
                &o.success_rate_min_requests,
                "outlier.success_rate_min_requests",
                d.success_rate.min_requests,
                0..=1_000_000,
            ),
            min_instances: num(
                &o.success_rate_min_instances,
                "outlier.success_rate_min_instances",
                d.success_rate.min_instances,
                2..=10_000,
            ),
            stdev_factor_milli: match &o.success_rate_stdev_factor {
                None => d.success_rate.stdev_factor_milli,
                Some(f) if (0.1..=10.0).contains(f.get_ref()) => {
                    (f.get_ref() * 1000.0).round() as u32
                }
                Some(f) => {
                    cx.push(cx.err_at(
                        f,
                        format!("{key}.outlier.success_rate_stdev_factor"),
                        format!("{} is out of range 0.1..=10.0", f.get_ref()),
                    ));
                    d.success_rate.stdev_factor_milli
                }
            },
            interval: dur(
                &o.success_rate_interval,
                "outlier.success_rate_interval",
                d.success_rate.interval,
            ),
        },
        latency: LatencyOutlier {
            min_requests: num(
                &o.latency_min_requests,
                "outlier.latency_min_requests",
                d.latency.min_requests,
                0..=1_000_000,
            ),
            min_instances: num(
                &o.latency_min_instances,
                "outlier.latency_min_instances",
                d.latency.min_instances,
                2..=10_000,
            ),
            factor_milli: match &o.latency_factor {
                None => d.latency.factor_milli,
                Some(f) if (1.1..=100.0).contains(f.get_ref()) => {
                    (f.get_ref() * 1000.0).round() as u32
                }
                Some(f) => {
                    cx.push(cx.err_at(
                        f,
                        format!("{key}.outlier.latency_factor"),
                        format!(
                            "{} is out of range 1.1..=100.0 (times the others' median p99)",
                            f.get_ref()
                        ),
                    ));
                    d.latency.factor_milli
                }
            },
            floor: o
                .latency_floor
                .as_ref()
                .map_or(d.latency.floor, |f| f.get_ref().0),
            interval: dur(
                &o.latency_interval,
                "outlier.latency_interval",
                d.latency.interval,
            ),
        },
    };
    if outlier.max_ejection < outlier.base_ejection {
        let at = o
            .max_ejection
            .as_ref()
            .or(o.base_ejection.as_ref())
            .map(Spanned::span);
        cx.push(cx.err(
            at,
            format!("{key}.outlier.max_ejection"),
            format!(
                "max_ejection ({:?}) is shorter than base_ejection ({:?})",
                outlier.max_ejection, outlier.base_ejection
            ),
        ));
    }
    let b = &s.retry_budget;
    let retry_budget = RetryBudget {
        percent: num(
            &b.percent,
            "retry_budget.percent",
            defaults.retry_budget.percent,
            0..=100,
        ),
        min_per_second: num(
            &b.min_per_second,
            "retry_budget.min_per_second",
            defaults.retry_budget.min_per_second,
            0..=100_000,
        ),
    };
    ServicePolicy {
        max_attempts: num(
            &s.max_attempts,
            "max_attempts",
            defaults.max_attempts,
            1..=10,
        ),
        timeouts,
        health: s
            .health
            .as_ref()
            .map(|h| health::check(cx, h, &format!("{key}.health"))),
        outlier,
        panic_threshold: pct(
            &s.panic_threshold,
            "panic_threshold",
            defaults.panic_threshold,
        ),
        // Zero is allowed: no ramp-up.
        slow_start: duration_or_zero(&s.slow_start, defaults.slow_start),
        retry_budget,
        upstream: upstream::upstream(cx, s, key),
        traffic: traffic::service(cx, s, key, balance, defaults.traffic.zone.clone()),
    }
}

#[cfg(test)]
mod tests {
    use crate::config::test_util::{err, parse};

    #[test]
    fn bad_instance_address_and_weight() {
        let (line, key, _) =
            err("[services.a]\ninstances = [\n \"127.0.0.1:1\",\n \"localhost\"]\n");
        assert_eq!((line, key.as_str()), (4, "services.a.instances[1]"));
        let (_, key, _) =
            err("[services.a]\ninstances = [{ address = \"127.0.0.1:1\", weight = 0 }]\n");
        assert_eq!(key, "services.a.instances[0].weight");
        let (_, key, msg) = err("[services.a]\ninstances = [{ adress = \"127.0.0.1:1\" }]\n");
        assert!(msg.contains("adress"), "{key}: {msg}");
    }

    #[test]
    fn service_without_instances_and_bad_names() {
        let (_, key, _) = err("[services.a]\ninstances = []\n");
        assert_eq!(key, "services.a.instances");
        let (_, key, _) = err("[services.Bad]\ninstances = [\"127.0.0.1:1\"]\n");
        assert_eq!(key, "services.Bad");
    }

    #[test]
    fn service_without_instances_key_is_accepted() {
        // Fed by registrations, DNS or etcd: no static instances.
        let c = parse("[services.a]\nbalance = \"least_connections\"\n").unwrap();
        assert!(c.services["a"].instances.is_empty());
    }
}
