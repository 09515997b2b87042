//! Traffic settings: `[zone]`, a service's balancing tables
//! (`p2c_ewma`, `consistent_hash`), `max_in_flight` and `queue`, and a
//! route's `match_tags`, `split` and `subset_by`; then the subsets the
//! routes ask of each service, handed to that service's policy so the
//! registry precomputes them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;

use crate::config::check::{duration, Cx};
use crate::config::defaults;
use crate::config::raw::{RawRoute, RawService, RawZone};
use crate::config::traffic::{
    check_split, ConsistentHash, HashKey, P2cEwma, Queue, RequestValue, RouteTraffic, SplitError,
    SubsetBy, TagSet, Tags, Traffic, Zone,
};
use crate::config::{Balance, ConfigError, Route, ServiceConfig};

/// `[zone]`.
pub(super) fn zone(cx: &Cx<'_>, raw: &Option<Spanned<RawZone>>) -> Option<Arc<Zone>> {
    let z = raw.as_ref()?.get_ref();
    let name = z.name.get_ref().trim();
    if name.is_empty() {
        cx.push(cx.err_at(&z.name, "zone.name", "the zone's name is empty"));
    }
    let tag = match &z.tag {
        Some(t) if t.get_ref().is_empty() => {
            cx.push(cx.err_at(t, "zone.tag", "the tag name is empty"));
            defaults::zone::TAG.to_owned()
        }
        Some(t) => t.get_ref().clone(),
        None => defaults::zone::TAG.to_owned(),
    };
    Some(Arc::new(Zone {
        name: name.to_owned(),
        tag,
        min_available_percent: cx.int_or(
            &z.min_available_percent,
            "zone.min_available_percent",
            defaults::zone::MIN_AVAILABLE_PERCENT,
            0..=100,
        ),
    }))
}

/// The traffic settings of a service that sets none of its own.
pub(super) fn default_traffic(zone: Option<Arc<Zone>>) -> Traffic {
    Traffic {
        p2c: P2cEwma {
            decay: defaults::p2c::DECAY,
        },
        hash: ConsistentHash {
            key: defaults::hash::KEY,
            load_factor_milli: defaults::hash::LOAD_FACTOR_MILLI,
        },
        max_in_flight: defaults::queue::MAX_IN_FLIGHT,
        queue: Queue {
            size: defaults::queue::SIZE,
            timeout: defaults::queue::TIMEOUT,
        },
        subsets: Vec::new(),
        subset_keys: Vec::new(),
        zone,
        sticky_cookie: None,
        hedge_after: None,
    }
}

/// A service's traffic settings at `key` (`services.NAME`).
pub(super) fn service(
    cx: &Cx<'_>,
    s: &RawService,
    key: &str,
    balance: Balance,
    zone: Option<Arc<Zone>>,
) -> Traffic {
    let mut t = default_traffic(zone);
    let only_with = |table: &'static str, wanted: Balance, at: std::ops::Range<usize>| {
        if balance != wanted {
            cx.push(cx.err(
                Some(at),
                format!("{key}.{table}"),
                format!(
                    "[{key}.{table}] applies only with balance = \"{table}\" (this service's is \"{}\")",
                    balance.name()
                ),
            ));
        }
    };
    if let Some(p) = &s.p2c_ewma {
        only_with("p2c_ewma", Balance::P2cEwma, p.span());
        t.p2c.decay = cx.keep(
            duration(
                cx,
                &p.get_ref().decay,
                &format!("{key}.p2c_ewma.decay"),
                t.p2c.decay,
            ),
            t.p2c.decay,
        );
    }
    if let Some(h) = &s.consistent_hash {
        only_with("consistent_hash", Balance::ConsistentHash, h.span());
        let h = h.get_ref();
        if let Some(k) = &h.key {
            if let Some(parsed) = cx.ok(hash_key(cx, k, &format!("{key}.consistent_hash.key"))) {
                t.hash.key = parsed;
            }
        }
        if let Some(f) = &h.load_factor {
            let v = *f.get_ref();
            if v == 0.0 || (1.0..=100.0).contains(&v) {
                t.hash.load_factor_milli = (v * 1000.0).round() as u32;
            } else {
                cx.push(cx.err_at(
                    f,
                    format!("{key}.consistent_hash.load_factor"),
                    format!("{v} is neither 0 (unbounded) nor within 1.0..=100.0: an instance may take at most load_factor times the mean load"),
                ));
            }
        }
    }
    if let Some(c) = &s.sticky_cookie {
        if is_token(c.get_ref()) {
            t.sticky_cookie = Some(c.get_ref().clone());
        } else {
            cx.push(cx.err_at(
                c,
                format!("{key}.sticky_cookie"),
                format!("{:?} is not a valid cookie name", c.get_ref()),
            ));
        }
    }
    if s.hedge_after.is_some() {
        t.hedge_after = cx.ok(duration(
            cx,
            &s.hedge_after,
            &format!("{key}.hedge_after"),
            Duration::ZERO,
        ));
    }
    t.max_in_flight = cx.int_or(
        &s.max_in_flight,
        &format!("{key}.max_in_flight"),
        t.max_in_flight,
        0..=1_000_000,
    );
    if let Some(q) = &s.queue {
        if t.max_in_flight == 0 {
            cx.push(cx.err_at(
                q,
                format!("{key}.queue"),
                "a queue needs max_in_flight: without a per-instance limit nothing ever waits",
            ));
        }
        let q = q.get_ref();
        t.queue.size = cx.int_or(
            &q.size,
            &format!("{key}.queue.size"),
            t.queue.size,
            0..=1_000_000,
        );
        t.queue.timeout = cx.keep(
            duration(
                cx,
                &q.timeout,
                &format!("{key}.queue.timeout"),
                t.queue.timeout,
            ),
            t.queue.timeout,
        );
    }
    t
}

/// `"header:NAME"`, `"cookie:NAME"`, `"client_address"` or `"path"`.
fn hash_key(cx: &Cx<'_>, v: &Spanned<String>, key: &str) -> Result<HashKey, ConfigError> {
    let s = v.get_ref();
    let bad = |why: &str| {
        cx.err_at(
            v,
            key,
            format!("{s:?}: {why}; write \"header:NAME\", \"cookie:NAME\", \"client_address\" or \"path\""),
        )
    };
    match s.split_once(':') {
        None if s == "client_address" => Ok(HashKey::ClientAddress),
        None if s == "path" => Ok(HashKey::Path),
        None => Err(bad("not a hash key")),
        Some(("header", name)) if is_token(name) => Ok(HashKey::Header(name.to_ascii_lowercase())),
        Some(("cookie", name)) if is_token(name) => Ok(HashKey::Cookie(name.to_owned())),
        Some(("header" | "cookie", _)) => Err(bad("the name is not a valid header or cookie name")),
        Some(_) => Err(bad("not a hash key")),
    }
}

/// Whether `s` is an HTTP token (RFC 9110 section 5.6.2): a valid header
/// or cookie name.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A non-empty tag map at `key`.
fn tag_set(
    cx: &Cx<'_>,
    v: &Spanned<BTreeMap<String, String>>,
    key: &str,
) -> Result<TagSet, ConfigError> {
    let tags = v.get_ref();
    if tags.is_empty() {
        return Err(cx.err_at(
            v,
            key,
            "names no tag: write at least one, e.g. { version = \"2\" }",
        ));
    }
    if tags.keys().any(String::is_empty) {
        return Err(cx.err_at(v, key, "a tag name is empty"));
    }
    Ok(TagSet::new(Tags::clone(tags)))
}

/// `routes[i]`'s `match_tags`, `split` and `subset_by` (`key`: `routes[i]`).
pub(super) fn route(cx: &Cx<'_>, r: &RawRoute, key: &str) -> Result<RouteTraffic, ConfigError> {
    let match_tags = match &r.match_tags {
        Some(m) => Some(tag_set(cx, m, &format!("{key}.match_tags"))?),
        None => None,
    };
    let mut split = Vec::new();
    if let Some(list) = &r.split {
        let k = format!("{key}.split");
        if match_tags.is_some() {
            return Err(cx.err_at(
                list,
                &k,
                "split and match_tags exclude each other: put the tags in each split entry",
            ));
        }
        let raw = list.get_ref();
        let entries: Vec<(&Tags, i64)> = raw
            .iter()
            .map(|e| (e.get_ref().tags.get_ref(), *e.get_ref().weight.get_ref()))
            .collect();
        split = check_split(&entries).map_err(|e| match e.entry() {
            None => cx.err_at(list, &k, e.to_string()),
            Some(j) => {
                let entry = raw[j].get_ref();
                match e {
                    SplitError::Weight(..) => {
                        cx.err_at(&entry.weight, format!("{k}[{j}].weight"), e.to_string())
                    }
                    _ => cx.err_at(&entry.tags, format!("{k}[{j}].tags"), e.to_string()),
                }
            }
        })?;
    }
    let subset_by = match &r.subset_by {
        None => None,
        Some(sb) => {
            let k = format!("{key}.subset_by");
            let v = sb.get_ref();
            let from = match (&v.header, &v.cookie) {
                (Some(h), None) if is_token(h.get_ref()) => {
                    RequestValue::Header(h.get_ref().to_ascii_lowercase())
                }
                (None, Some(c)) if is_token(c.get_ref()) => RequestValue::Cookie(c.get_ref().clone()),
                (Some(h), None) => {
                    return Err(cx.err_at(h, format!("{k}.header"), "not a valid header name"))
                }
                (None, Some(c)) => {
                    return Err(cx.err_at(c, format!("{k}.cookie"), "not a valid cookie name"))
                }
                _ => {
                    return Err(cx.err_at(
                        sb,
                        &k,
                        "name exactly one of header or cookie, e.g. { header = \"x-version\", tag = \"version\" }",
                    ))
                }
            };
            if v.tag.get_ref().is_empty() {
                return Err(cx.err_at(&v.tag, format!("{k}.tag"), "the tag name is empty"));
            }
            Some(SubsetBy {
                from,
                tag: Arc::from(v.tag.get_ref().as_str()),
            })
        }
    };
    Ok(RouteTraffic {
        match_tags,
        split,
        subset_by,
    })
}

/// [`attach_subsets`] afresh: each service's subsets are those its routes
/// select now (after a route's split changed).
pub(crate) fn reattach_subsets(services: &mut BTreeMap<Arc<str>, ServiceConfig>, routes: &[Route]) {
    for svc in services.values_mut() {
        let t = &svc.policy.traffic;
        if !t.subsets.is_empty() || !t.subset_keys.is_empty() {
            let traffic = &mut Arc::make_mut(&mut svc.policy).traffic;
            traffic.subsets.clear();
            traffic.subset_keys.clear();
        }
    }
    attach_subsets(services, routes);
}

/// Hands each service the subsets its routes select, so the registry
/// builds them with the service's entry.
pub(super) fn attach_subsets(services: &mut BTreeMap<Arc<str>, ServiceConfig>, routes: &[Route]) {
    for r in routes {
        let Some(svc) = services.get_mut(&r.service) else {
            continue;
        };
        let t = &r.traffic;
        if t.is_empty() {
            continue;
        }
        let policy = Arc::make_mut(&mut svc.policy);
        let traffic = &mut policy.traffic;
        for set in t.match_tags.iter().chain(t.split.iter().map(|s| &s.tags)) {
            if !traffic.subsets.contains(set) {
                traffic.subsets.push(set.clone());
            }
        }
        if let Some(sb) = &t.subset_by {
            if !traffic.subset_keys.contains(&sb.tag) {
                traffic.subset_keys.push(sb.tag.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::test_util::{err, parse};
    use crate::config::{Balance, HashKey, RequestValue};

    const SVC: &str = "[services.a]\ninstances = [\"127.0.0.1:1\"]\n";

    #[test]
    fn balancing_tables_parse_and_apply() {
        let c = parse(
            "[services.a]\nbalance = \"consistent_hash\"\nmax_in_flight = 10\n\
             instances = [{ address = \"127.0.0.1:1\", tags = { version = \"2\" } }]\n\
             [services.a.consistent_hash]\nkey = \"header:X-User\"\nload_factor = 1.5\n\
             [services.a.queue]\nsize = 50\ntimeout = \"250ms\"\n\
             [services.b]\nbalance = \"p2c_ewma\"\n[services.b.p2c_ewma]\ndecay = \"2s\"\n\
             [services.c]\nbalance = \"random\"\n",
        )
        .unwrap();
        let a = &c.services["a"];
        assert_eq!(a.balance, Balance::ConsistentHash);
        let t = &a.policy.traffic;
        assert_eq!(t.hash.key, HashKey::Header("x-user".into()));
        assert_eq!(t.hash.load_factor_milli, 1500);
        assert_eq!((t.max_in_flight, t.queue.size), (10, 50));
        assert_eq!(t.queue.timeout.as_millis(), 250);
        assert_eq!(a.instances[0].tags.as_ref().unwrap()["version"], "2");
        assert_eq!(c.services["b"].policy.traffic.p2c.decay.as_secs(), 2);
        assert_eq!(c.services["c"].balance, Balance::Random);
    }

    #[test]
    fn balancing_errors_name_their_key() {
        let (line, key, msg) =
            err("[services.a]\nbalance = \"round_robin\"\n[services.a.p2c_ewma]\ndecay = \"1s\"\n");
        assert_eq!((line, key.as_str()), (3, "services.a.p2c_ewma"));
        assert!(msg.contains("round_robin"), "{msg}");
        let (_, key, _) = err(
            "[services.a]\nbalance = \"consistent_hash\"\n[services.a.consistent_hash]\nkey = \"query:x\"\n",
        );
        assert_eq!(key, "services.a.consistent_hash.key");
        let (_, key, _) = err(
            "[services.a]\nbalance = \"consistent_hash\"\n[services.a.consistent_hash]\nload_factor = 0.5\n",
        );
        assert_eq!(key, "services.a.consistent_hash.load_factor");
        let (_, key, _) = err("[services.a]\n[services.a.queue]\nsize = 5\n");
        assert_eq!(key, "services.a.queue");
        let (_, key, _) = err("[services.a]\nbalance = \"fastest\"\n");
        assert_eq!(key, "services.a.balance");
    }

    #[test]
    fn route_subsets_are_checked_and_handed_to_the_service() {
        let c = parse(&format!(
            "[[routes]]\npath = \"/a\"\nservice = \"a\"\nmatch_tags = {{ version = \"2\" }}\n\
             [[routes]]\npath = \"/b\"\nservice = \"a\"\n\
             split = [{{ tags = {{ version = \"1\" }}, weight = 95 }}, {{ tags = {{ version = \"2\" }}, weight = 5 }}]\n\
             subset_by = {{ header = \"X-Version\", tag = \"version\" }}\n{SVC}"
        ))
        .unwrap();
        let t = &c.routes[1].traffic;
        assert_eq!(t.split.len(), 2);
        assert_eq!(t.split[1].weight, 5);
        let sb = t.subset_by.as_ref().unwrap();
        assert_eq!(sb.from, RequestValue::Header("x-version".into()));
        let p = &c.services["a"].policy.traffic;
        assert_eq!(p.subsets.len(), 2, "version 2 once, version 1");
        assert_eq!(&*p.subset_keys, &[std::sync::Arc::from("version")]);

        let (_, key, _) = err(&format!(
            "[[routes]]\nservice = \"a\"\nsplit = [{{ tags = {{ v = \"1\" }}, weight = 1 }}]\n{SVC}"
        ));
        assert_eq!(key, "routes[0].split");
        let (_, key, _) = err(&format!(
            "[[routes]]\nservice = \"a\"\nmatch_tags = {{ v = \"1\" }}\n\
             split = [{{ tags = {{ v = \"1\" }}, weight = 1 }}, {{ tags = {{ v = \"2\" }}, weight = 1 }}]\n{SVC}"
        ));
        assert_eq!(key, "routes[0].split");
        let (_, key, _) = err(&format!(
            "[[routes]]\nservice = \"a\"\nsubset_by = {{ header = \"x\", cookie = \"y\", tag = \"v\" }}\n{SVC}"
        ));
        assert_eq!(key, "routes[0].subset_by");
        let (_, key, _) = err(&format!(
            "[[routes]]\nservice = \"a\"\nmatch_tags = {{}}\n{SVC}"
        ));
        assert_eq!(key, "routes[0].match_tags");
    }

    #[test]
    fn latency_outlier_keys_parse_and_errors_name_their_key() {
        let c = parse(&format!(
            "{SVC}[services.a.outlier]\nlatency_min_requests = 50\nlatency_min_instances = 2\n\
             latency_factor = 2.5\nlatency_floor = \"5ms\"\nlatency_interval = \"2s\"\n"
        ))
        .unwrap();
        let l = c.services["a"].policy.outlier.latency;
        assert_eq!(
            (l.min_requests, l.min_instances, l.factor_milli),
            (50, 2, 2500)
        );
        assert_eq!((l.floor.as_millis(), l.interval.as_secs()), (5, 2));
        assert_eq!(
            c.default_policy.outlier.latency.min_requests, 0,
            "off by default"
        );
        for (bad, key) in [
            ("latency_factor = 1.0", "services.a.outlier.latency_factor"),
            (
                "latency_min_instances = 1",
                "services.a.outlier.latency_min_instances",
            ),
            (
                "latency_min_requests = -1",
                "services.a.outlier.latency_min_requests",
            ),
            (
                "latency_interval = \"0s\"",
                "services.a.outlier.latency_interval",
            ),
        ] {
            let (line, k, _) = err(&format!("{SVC}[services.a.outlier]\n{bad}\n"));
            assert_eq!((line, k.as_str()), (4, key), "{bad}");
        }
    }

    #[test]
    fn zone_reaches_every_policy() {
        let c = parse(&format!(
            "[zone]\nname = \"a\"\nmin_available_percent = 50\n{SVC}"
        ))
        .unwrap();
        let z = c.zone.as_ref().unwrap();
        assert_eq!(
            (z.name.as_str(), z.tag.as_str(), z.min_available_percent),
            ("a", "zone", 50)
        );
        assert_eq!(c.services["a"].policy.traffic.zone.as_ref(), Some(z));
        assert_eq!(c.default_policy.traffic.zone.as_ref(), Some(z));
        let (_, key, _) = err(&format!(
            "[zone]\nname = \"a\"\nmin_available_percent = 101\n{SVC}"
        ));
        assert_eq!(key, "zone.min_available_percent");
    }
}
