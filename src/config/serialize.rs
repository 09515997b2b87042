//! How a [`Config`] serializes (for `GET /v1/config`): the file's key
//! names, durations written as in the file (`"250ms"`), and secrets (the
//! admin token, the etcd password) replaced by [`REDACTED`], so no view of
//! the config can show one.

use std::net::SocketAddr;
use std::time::Duration;

use serde::ser::{SerializeMap, SerializeStruct, Serializer};
use serde::Serialize;

use super::traffic::{HashKey, RequestValue, RouteTraffic, TagSet, Traffic, Zone};
use super::{
    Balance, CheckKind, Config, DnsDiscovery, DnsKind, HealthCheck, HostMatch, Outlier, Route,
    ServiceConfig, ServicePolicy, ServiceTimeouts, StaticInstance,
};

/// What a secret serializes as.
pub(crate) const REDACTED: &str = "<redacted>";

/// A duration as written in the file: `"250ms"`, `"5s"`, `"1m 30s"`, `"0s"`.
pub(super) fn duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&fmt_duration(*d))
}

/// A duration as written in the file.
pub(super) fn fmt_duration(d: Duration) -> String {
    if d.is_zero() {
        "0s".to_owned()
    } else {
        humantime::format_duration(d).to_string()
    }
}

/// URIs as strings.
pub(super) fn uris<S: Serializer>(list: &[http::Uri], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(list.iter().map(ToString::to_string))
}

struct Dur(Duration);

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        duration(&self.0, s)
    }
}

/// A secret: [`REDACTED`] when set.
pub(super) fn secret<S: Serializer>(v: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_some(&v.as_ref().map(|_| REDACTED))
}

/// `admin.listen`: the address, or `"off"`.
pub(super) fn admin_listen<S: Serializer>(v: &Option<SocketAddr>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(addr) => s.collect_str(addr),
        None => s.serialize_str("off"),
    }
}

/// One table of the file whose keys are split between the startup part
/// and the reloadable part: both parts' keys in one table.
#[derive(Serialize)]
struct Table<'a, A: Serialize, B: Serialize> {
    #[serde(flatten)]
    reloadable: &'a A,
    #[serde(flatten)]
    startup: &'a B,
}

/// The config as the file is written: the startup part's tables merged
/// with the reloadable part's.
impl Serialize for Config {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let st = &self.startup;
        let mut m = s.serialize_struct("Config", 13)?;
        m.serialize_field("listen", &st.listen)?;
        m.serialize_field("admin", &st.admin)?;
        m.serialize_field(
            "registry",
            &Table {
                reloadable: &self.registry,
                startup: &st.registry,
            },
        )?;
        m.serialize_field("runtime", &st.runtime)?;
        m.serialize_field(
            "timeouts",
            &Table {
                reloadable: &self.timeouts,
                startup: &st.timeouts,
            },
        )?;
        m.serialize_field("limits", &st.limits)?;
        m.serialize_field("conventions", &self.conventions)?;
        m.serialize_field(
            "proxy",
            &Table {
                reloadable: &self.proxy,
                startup: &st.proxy,
            },
        )?;
        m.serialize_field("http2", &st.http2)?;
        m.serialize_field("metrics", &st.metrics)?;
        m.serialize_field("access_log", &st.access_log)?;
        m.serialize_field("routes", &self.routes)?;
        m.serialize_field("services", &self.services)?;
        m.serialize_field("zone", &self.zone.as_deref())?;
        m.end()
    }
}

impl Serialize for HostMatch {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            HostMatch::Any => s.serialize_none(),
            HostMatch::Exact(h) => s.serialize_str(h),
            HostMatch::Suffix(suffix) => s.serialize_str(&format!("*{suffix}")),
        }
    }
}

impl Serialize for Route {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_struct("Route", 7)?;
        m.serialize_field("name", &self.name.as_deref())?;
        m.serialize_field("host", &self.host)?;
        m.serialize_field("path", &self.path)?;
        m.serialize_field("strip_prefix", &self.strip_prefix)?;
        m.serialize_field("service", &*self.service)?;
        m.serialize_field("upgrades", &self.upgrades)?;
        m.serialize_field("require_tls", &self.require_tls)?;
        route_traffic(&mut m, &self.traffic)?;
        m.end()
    }
}

fn route_traffic<M: SerializeStruct>(m: &mut M, t: &RouteTraffic) -> Result<(), M::Error> {
    m.serialize_field("match_tags", &t.match_tags)?;
    let split: Vec<_> = t
        .split
        .iter()
        .map(|e| SplitOut {
            tags: &e.tags,
            weight: e.weight,
        })
        .collect();
    m.serialize_field("split", &split)?;
    m.serialize_field(
        "subset_by",
        &t.subset_by.as_ref().map(|sb| {
            let mut out = serde_json::Map::new();
            let (k, v) = match &sb.from {
                RequestValue::Header(h) => ("header", h),
                RequestValue::Cookie(c) => ("cookie", c),
            };
            out.insert(k.into(), v.clone().into());
            out.insert("tag".into(), sb.tag.to_string().into());
            out
        }),
    )
}

#[derive(Serialize)]
struct SplitOut<'a> {
    tags: &'a TagSet,
    weight: u32,
}

impl Serialize for TagSet {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.tags.serialize(s)
    }
}

impl Serialize for HashKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            HashKey::Header(h) => s.collect_str(&format_args!("header:{h}")),
            HashKey::Cookie(c) => s.collect_str(&format_args!("cookie:{c}")),
            HashKey::ClientAddress => s.serialize_str("client_address"),
            HashKey::Path => s.serialize_str("path"),
        }
    }
}

impl Serialize for Zone {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_struct("Zone", 3)?;
        m.serialize_field("name", &self.name)?;
        m.serialize_field("tag", &self.tag)?;
        m.serialize_field("min_available_percent", &self.min_available_percent)?;
        m.end()
    }
}

/// A service's traffic keys, as in `[services.NAME]` (the subsets and
/// zone come from the routes and `[zone]`, and show there).
fn traffic_entries<M: SerializeMap>(m: &mut M, t: &Traffic) -> Result<(), M::Error> {
    #[derive(Serialize)]
    struct P2c {
        decay: Dur,
    }
    #[derive(Serialize)]
    struct Hash<'a> {
        key: &'a HashKey,
        load_factor: f64,
    }
    #[derive(Serialize)]
    struct Queue {
        size: u32,
        timeout: Dur,
    }
    m.serialize_entry(
        "p2c_ewma",
        &P2c {
            decay: Dur(t.p2c.decay),
        },
    )?;
    m.serialize_entry(
        "consistent_hash",
        &Hash {
            key: &t.hash.key,
            load_factor: f64::from(t.hash.load_factor_milli) / 1000.0,
        },
    )?;
    m.serialize_entry("max_in_flight", &t.max_in_flight)?;
    m.serialize_entry("sticky_cookie", &t.sticky_cookie)?;
    m.serialize_entry("hedge_after", &t.hedge_after.map(Dur))?;
    m.serialize_entry(
        "queue",
        &Queue {
            size: t.queue.size,
            timeout: Dur(t.queue.timeout),
        },
    )
}

impl Serialize for Balance {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl Serialize for StaticInstance {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_struct("Instance", 3)?;
        m.serialize_field("address", &self.addr.to_string())?;
        m.serialize_field("weight", &self.weight)?;
        m.serialize_field("tags", &self.tags)?;
        m.end()
    }
}

/// A service: its own keys, then its policy's, as in `[services.NAME]`.
impl Serialize for ServiceConfig {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("balance", &self.balance)?;
        m.serialize_entry("instances", &self.instances)?;
        policy_entries(&mut m, &self.policy)?;
        m.serialize_entry("dns", &self.dns)?;
        m.end()
    }
}

fn policy_entries<M: SerializeMap>(m: &mut M, p: &ServicePolicy) -> Result<(), M::Error> {
    m.serialize_entry("max_attempts", &p.max_attempts)?;
    m.serialize_entry("slow_start", &Dur(p.slow_start))?;
    m.serialize_entry("panic_threshold", &p.panic_threshold)?;
    m.serialize_entry("timeouts", &p.timeouts)?;
    m.serialize_entry("health", &p.health)?;
    m.serialize_entry("outlier", &p.outlier)?;
    m.serialize_entry("retry_budget", &p.retry_budget)?;
    m.serialize_entry("protocol", &p.upstream.protocol)?;
    m.serialize_entry("tls", &p.upstream.tls.as_ref().map(|t| t.settings()))?;
    traffic_entries(m, &p.traffic)
}

impl Serialize for ServicePolicy {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        policy_entries(&mut m, self)?;
        m.end()
    }
}

impl Serialize for ServiceTimeouts {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_struct("ServiceTimeouts", 4)?;
        m.serialize_field("connect", &Dur(self.connect))?;
        m.serialize_field("response_header", &Dur(self.response_header))?;
        m.serialize_field("response_body", &Dur(self.response_body))?;
        m.serialize_field("request", &self.request.map(Dur))?;
        m.end()
    }
}

impl Serialize for HealthCheck {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        match &self.kind {
            CheckKind::Tcp => m.serialize_entry("kind", "tcp")?,
            CheckKind::Http {
                method,
                path,
                host,
                expect,
            } => {
                m.serialize_entry("kind", "http")?;
                m.serialize_entry("method", method.as_str())?;
                m.serialize_entry("path", path)?;
                m.serialize_entry("host", host)?;
                let ranges: Vec<String> = expect
                    .iter()
                    .map(|&(lo, hi)| {
                        if lo == hi {
                            lo.to_string()
                        } else {
                            format!("{lo}-{hi}")
                        }
                    })
                    .collect();
                m.serialize_entry("expect", &ranges)?;
            }
        }
        m.serialize_entry("interval", &Dur(self.interval))?;
        m.serialize_entry("timeout", &Dur(self.timeout))?;
        m.serialize_entry("healthy_threshold", &self.healthy_threshold)?;
        m.serialize_entry("unhealthy_threshold", &self.unhealthy_threshold)?;
        m.serialize_entry("jitter", &Dur(self.jitter))?;
        m.serialize_entry(
            "initial",
            if self.start_healthy {
                "healthy"
            } else {
                "unknown"
            },
        )?;
        m.end()
    }
}

impl Serialize for Outlier {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_struct("Outlier", 15)?;
        m.serialize_field("connect_failures", &self.connect_failures)?;
        m.serialize_field("consecutive_failures", &self.consecutive_failures)?;
        m.serialize_field("count_5xx", &self.count_5xx)?;
        m.serialize_field("base_ejection", &Dur(self.base_ejection))?;
        m.serialize_field("max_ejection", &Dur(self.max_ejection))?;
        m.serialize_field("max_ejected_percent", &self.max_ejected_percent)?;
        let r = &self.success_rate;
        m.serialize_field("success_rate_min_requests", &r.min_requests)?;
        m.serialize_field("success_rate_min_instances", &r.min_instances)?;
        m.serialize_field(
            "success_rate_stdev_factor",
            &(f64::from(r.stdev_factor_milli) / 1000.0),
        )?;
        m.serialize_field("success_rate_interval", &Dur(r.interval))?;
        let l = &self.latency;
        m.serialize_field("latency_min_requests", &l.min_requests)?;
        m.serialize_field("latency_min_instances", &l.min_instances)?;
        m.serialize_field("latency_factor", &(f64::from(l.factor_milli) / 1000.0))?;
        m.serialize_field("latency_floor", &Dur(l.floor))?;
        m.serialize_field("latency_interval", &Dur(l.interval))?;
        m.end()
    }
}

impl Serialize for DnsDiscovery {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("name", &self.name)?;
        match self.kind {
            DnsKind::A { port } => {
                m.serialize_entry("kind", "a")?;
                m.serialize_entry("port", &port)?;
            }
            DnsKind::Srv => m.serialize_entry("kind", "srv")?,
        }
        m.serialize_entry("nameserver", &self.nameserver.map(|a| a.to_string()))?;
        m.serialize_entry("min_refresh", &Dur(self.min_refresh))?;
        m.serialize_entry("max_refresh", &Dur(self.max_refresh))?;
        m.serialize_entry("nxdomain_grace", &Dur(self.nxdomain_grace))?;
        m.end()
    }
}

/// `access_log.path`: the file, or `"stdout"`.
pub(super) fn log_path<S: Serializer>(
    path: &Option<std::path::PathBuf>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match path {
        Some(p) => s.collect_str(&p.display()),
        None => s.serialize_str("stdout"),
    }
}

#[cfg(test)]
mod tests {
    use crate::config::test_util::parse;

    #[test]
    fn secrets_are_redacted_and_durations_read_as_written() {
        let c = parse(
            "[admin]\ntoken = \"admin-secret-1\"\n\
             [timeouts]\nconnect = \"250ms\"\n\
             [registry.etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\nusername = \"u\"\npassword = \"etcd-secret-2\"\n\
             [[routes]]\nhost = \"*.example.com\"\nservice = \"a\"\n\
             [services.a]\ninstances = [\"127.0.0.1:1\"]\n[services.a.health]\nkind = \"http\"\n",
        )
        .unwrap();
        let v = serde_json::to_value(&c).unwrap();
        let text = v.to_string();
        assert!(!text.contains("admin-secret-1"), "{text}");
        assert!(!text.contains("etcd-secret-2"), "{text}");
        assert_eq!(v["admin"]["token"], super::REDACTED);
        assert_eq!(v["registry"]["etcd"]["auth"]["password"], super::REDACTED);
        assert_eq!(v["registry"]["etcd"]["auth"]["username"], "u");
        assert_eq!(v["timeouts"]["connect"], "250ms");
        assert_eq!(v["timeouts"]["pre_stop"], "0s");
        assert_eq!(v["timeouts"]["client_header"], "30s");
        assert_eq!(v["admin"]["listen"], "127.0.0.1:9900");
        assert_eq!(v["proxy"]["max_attempts"], 3);
        assert_eq!(v["proxy"]["via"], "wayfinder");
        // Written as in the file (it was `{"secs": 300, "nanos": 0}`).
        assert_eq!(v["registry"]["max_hold"], "5m");
        assert_eq!(v["registry"]["default_ttl"], "30s");
        assert_eq!(v["routes"][0]["host"], "*.example.com");
        assert_eq!(v["services"]["a"]["health"]["expect"][0], "200-399");
        assert_eq!(v["services"]["a"]["instances"][0]["address"], "127.0.0.1:1");
    }
}
