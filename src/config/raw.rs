//! The raw serde mirror of `wayfinder.toml`: every table rejects unknown keys,
//! durations are strings with units, and the fields that later validation
//! errors point at are wrapped in [`Spanned`] so the error can name a line.
//!
//! Nothing here is checked beyond its TOML type; `validate` turns it into
//! [`super::Config`].

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use toml::Spanned;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    /// Client-facing listener addresses. Default `["127.0.0.1:8080"]`.
    pub listen: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    pub admin: RawAdmin,
    #[serde(default)]
    pub registry: RawRegistry,
    #[serde(default)]
    pub runtime: RawRuntime,
    #[serde(default)]
    pub timeouts: RawTimeouts,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub conventions: RawConventions,
    #[serde(default)]
    pub proxy: RawProxy,
    #[serde(default)]
    pub http2: RawHttp2,
    #[serde(default)]
    pub routes: Vec<RawRoute>,
    #[serde(default)]
    pub services: BTreeMap<String, Spanned<RawService>>,
}

/// `[admin]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAdmin {
    /// Admin listener. Default `"127.0.0.1:9900"`; `"off"` disables it.
    pub listen: Option<Spanned<String>>,
    /// Bearer token required by mutating admin calls.
    pub token: Option<Spanned<String>>,
    /// Environment variable holding the token.
    pub token_env: Option<Spanned<String>>,
    /// Require the token for reads too (all but /healthz and /readyz). Default false.
    pub auth_reads: Option<Spanned<bool>>,
}

/// `[runtime]`: process tuning.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRuntime {
    pub worker_threads: Option<Spanned<i64>>,
}

/// `[registry]`: how sources merge and are guarded.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRegistry {
    pub self_preservation_percent: Option<Spanned<i64>>,
    pub max_staleness: Option<Spanned<Dur>>,
    pub state_file: Option<Spanned<String>>,
    pub default_ttl: Option<Spanned<Dur>>,
    pub max_hold: Option<Spanned<Dur>>,
    /// The shared registry; absent means registrations stay in this proxy.
    pub etcd: Option<Spanned<RawEtcd>>,
}

/// `[registry.etcd]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawEtcd {
    /// Client URLs, e.g. `["http://127.0.0.1:2379"]`. Required.
    pub endpoints: Spanned<Vec<Spanned<String>>>,
    /// Key prefix. Default `"/wayfinder/"`.
    pub prefix: Option<Spanned<String>>,
    /// etcd user, when etcd authentication is enabled. Default none.
    pub username: Option<Spanned<String>>,
    /// Its password (or use `password_env`).
    pub password: Option<Spanned<String>>,
    /// Environment variable holding the password.
    pub password_env: Option<Spanned<String>>,
    /// TCP connect to an endpoint. Default 2s.
    pub dial_timeout: Option<Spanned<Dur>>,
    /// One etcd call. Default 5s.
    pub request_timeout: Option<Spanned<Dur>>,
}

/// `[timeouts]`: every value is a duration string such as `"250ms"` or `"5s"`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTimeouts {
    /// Upstream TCP connect. Default 2s.
    pub connect: Option<Spanned<Dur>>,
    /// From sending the request to receiving the upstream response head. Default 30s.
    pub response_header: Option<Spanned<Dur>>,
    /// Waiting for a client's request head (also bounds keep-alive idle). Default 30s.
    pub client_header: Option<Spanned<Dur>>,
    /// How long an idle pooled upstream connection is kept. Default 60s.
    pub upstream_idle: Option<Spanned<Dur>>,
    /// How long shutdown waits for in-flight requests. Default 10s.
    pub shutdown_drain: Option<Spanned<Dur>>,
    /// Serving on, reported not ready, before the listeners close. Default 0s.
    pub pre_stop: Option<Spanned<Dur>>,
    /// Longest pause while a client sends a request body. Default 15s.
    pub client_body: Option<Spanned<Dur>>,
    /// Longest a client may leave a response unread (a write that makes no
    /// progress). Default 15s.
    pub client_send: Option<Spanned<Dur>>,
}

/// `[limits]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLimits {
    /// Largest request head (request line + headers) in bytes. Default 16384.
    pub max_header_bytes: Option<Spanned<i64>>,
    /// Most client connections open at once. Default 10000.
    pub max_connections: Option<Spanned<i64>>,
    /// Most idle pooled connections kept per instance. Default 64.
    pub max_idle_per_instance: Option<Spanned<i64>>,
    /// Longest request target in bytes (longer: 414). Default 8192.
    pub max_uri_bytes: Option<Spanned<i64>>,
}

/// `[conventions]`: reaching a registered service without a route.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConventions {
    /// Host suffixes: with `".svc"`, Host `NAME.svc` is service NAME. Default `[".svc"]`.
    pub host_suffixes: Option<Vec<Spanned<String>>>,
    /// When true, path `/NAME/rest` is service NAME, forwarded as `/rest`. Default false.
    pub path: Option<bool>,
}

/// `[proxy]`: forwarding behaviour.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawProxy {
    /// The pseudonym in the `Via` header. Default `"wayfinder"`.
    pub via: Option<Spanned<String>>,
    /// Attempts per request when an instance cannot be reached. Default 3.
    pub max_attempts: Option<Spanned<i64>>,
    /// Add the `x-wayfinder-debug` response header. Default false.
    pub debug_header: Option<bool>,
    /// Add the `x-wayfinder-snapshot` response header. Default false.
    pub snapshot_header: Option<bool>,
    /// Peers (addresses or CIDR blocks) whose `X-Forwarded-Proto`,
    /// `X-Forwarded-Host` and `Forwarded` are kept. Default none.
    pub trusted_proxies: Option<Vec<Spanned<String>>>,
    /// Write an RFC 7239 `Forwarded` header. Default false.
    pub forwarded: Option<bool>,
    /// Upgrade protocols forwarded when a route does not list its own.
    /// Default `["websocket"]`.
    pub upgrades: Option<Vec<Spanned<String>>>,
    /// Serve plain HTTP/1.1 on the fast path. Default true; false sends
    /// every request through hyper (for diagnosis).
    pub fast_path: Option<bool>,
}

/// `[http2]`: HTTP/2 client connections.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHttp2 {
    /// Streams a client may have open at once. Default 256.
    pub max_concurrent_streams: Option<Spanned<i64>>,
    /// PING interval on a connection. Default 20s.
    pub keepalive_interval: Option<Spanned<Dur>>,
    /// How long a PING may go unanswered before the connection closes. Default 10s.
    pub keepalive_timeout: Option<Spanned<Dur>>,
    /// A connection with no open stream for this long is closed. Default 60s.
    pub idle_timeout: Option<Spanned<Dur>>,
    /// Streams reset by the client before they were handled, at once
    /// (rapid-reset protection). Default 20.
    pub max_pending_reset_streams: Option<Spanned<i64>>,
    /// Streams the proxy may reset for protocol errors before it closes the
    /// connection. Default 1024.
    pub max_local_error_resets: Option<Spanned<i64>>,
}

/// One `[[routes]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRoute {
    /// `"api.example.com"` or `"*.example.com"`; absent means any host.
    pub host: Option<Spanned<String>>,
    /// Path prefix, matched on segment boundaries. Default `"/"`.
    pub path: Option<Spanned<String>>,
    /// Remove the matched prefix before forwarding. Default false.
    #[serde(default)]
    pub strip_prefix: bool,
    /// The service this route sends to.
    pub service: Spanned<String>,
    /// Upgrade protocols forwarded on this route. Default `proxy.upgrades`.
    pub upgrades: Option<Vec<Spanned<String>>>,
}

/// One `[services.NAME]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawService {
    /// Default round-robin.
    #[serde(default)]
    pub balance: Option<RawBalance>,
    /// Static instances; omitted for a service fed only by registry sources.
    pub instances: Option<Spanned<Vec<Spanned<RawInstance>>>>,
    /// Attempts per request; default `proxy.max_attempts`.
    pub max_attempts: Option<Spanned<i64>>,
    /// Ramp-up window for instances that just became healthy; "0s" is off.
    pub slow_start: Option<Spanned<Dur>>,
    /// Percent of healthy instances below which health is ignored.
    pub panic_threshold: Option<Spanned<i64>>,
    /// Per-service timeouts.
    #[serde(default)]
    pub timeouts: RawServiceTimeouts,
    /// Active health checks.
    pub health: Option<Spanned<RawHealth>>,
    /// Passive health (outlier detection).
    #[serde(default)]
    pub outlier: RawOutlier,
    /// Retry budget.
    #[serde(default)]
    pub retry_budget: RawRetryBudget,
    /// Instances resolved from DNS.
    pub dns: Option<Spanned<RawDns>>,
}

/// `[services.NAME.dns]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDns {
    /// The name to resolve. Required.
    pub name: Spanned<String>,
    /// `"a"` (A/AAAA plus `port`) or `"srv"`. Required.
    pub kind: RawDnsKind,
    /// The instances' port; required with `kind = "a"`, refused with `"srv"`.
    pub port: Option<Spanned<i64>>,
    /// `"IP:PORT"` of the nameserver. Default: the system's resolv.conf.
    pub nameserver: Option<Spanned<String>>,
    /// Shortest time between resolutions. Default 1s.
    pub min_refresh: Option<Spanned<Dur>>,
    /// Longest time between resolutions. Default 60s.
    pub max_refresh: Option<Spanned<Dur>>,
    /// How long NXDOMAIN may last before the set empties. Default 30s.
    pub nxdomain_grace: Option<Spanned<Dur>>,
}

/// DNS record kinds as written in TOML.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RawDnsKind {
    A,
    Srv,
}

/// `[services.NAME.timeouts]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawServiceTimeouts {
    pub connect: Option<Spanned<Dur>>,
    pub response_header: Option<Spanned<Dur>>,
    pub request: Option<Spanned<Dur>>,
}

/// `[services.NAME.health]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHealth {
    pub kind: RawCheckKind,
    pub path: Option<Spanned<String>>,
    pub method: Option<Spanned<String>>,
    pub host: Option<Spanned<String>>,
    pub expect: Option<Vec<Spanned<String>>>,
    pub interval: Option<Spanned<Dur>>,
    pub timeout: Option<Spanned<Dur>>,
    pub healthy_threshold: Option<Spanned<i64>>,
    pub unhealthy_threshold: Option<Spanned<i64>>,
    pub jitter: Option<Spanned<Dur>>,
    pub initial: Option<RawInitial>,
}

/// Check kinds as written in TOML.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RawCheckKind {
    Http,
    Tcp,
}

/// Health of an instance before its first check.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RawInitial {
    Unknown,
    Healthy,
}

/// `[services.NAME.outlier]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawOutlier {
    pub connect_failures: Option<Spanned<i64>>,
    pub consecutive_failures: Option<Spanned<i64>>,
    pub count_5xx: Option<bool>,
    pub base_ejection: Option<Spanned<Dur>>,
    pub max_ejection: Option<Spanned<Dur>>,
    pub max_ejected_percent: Option<Spanned<i64>>,
}

/// `[services.NAME.retry_budget]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRetryBudget {
    pub percent: Option<Spanned<i64>>,
    pub min_per_second: Option<Spanned<i64>>,
}

/// Balancing policy names as written in TOML.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RawBalance {
    RoundRobin,
    LeastConnections,
}

/// `"127.0.0.1:9001"` or `{ address = "127.0.0.1:9001", weight = 2 }`.
#[derive(Debug)]
pub(crate) enum RawInstance {
    Address(String),
    Table(RawInstanceTable),
}

impl<'de> Deserialize<'de> for RawInstance {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawInstance;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("\"IP:PORT\" or a table { address = \"IP:PORT\", weight = N }")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<RawInstance, E> {
                Ok(RawInstance::Address(s.to_owned()))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<RawInstance, A::Error> {
                RawInstanceTable::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(RawInstance::Table)
            }
        }
        d.deserialize_any(V)
    }
}

/// The table form of an instance.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawInstanceTable {
    pub address: String,
    pub weight: Option<i64>,
}

/// A duration written with units: `"250ms"`, `"5s"`, `"1m"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string such as \"250ms\" or \"5s\"")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Dur, E> {
                parse_duration(s).map(Dur).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

/// Parses a duration written with units, with our own message for each
/// way it can be wrong (the parser's own messages speak of offsets).
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    const HOW: &str = "write a number with a unit, e.g. \"250ms\", \"5s\" or \"1m\"";
    let t = s.trim();
    if t.is_empty() {
        return Err(format!("empty duration: {HOW}"));
    }
    if t.starts_with('-') {
        return Err(format!(
            "{s:?} is negative: a duration is zero or more; {HOW}"
        ));
    }
    humantime::parse_duration(t).map_err(|e| match e {
        humantime::DurationError::UnknownUnit { unit, .. } if unit.is_empty() => {
            format!("{s:?} has no unit; {HOW}")
        }
        humantime::DurationError::UnknownUnit { unit, .. } => {
            format!("{s:?}: unknown unit {unit:?} (use ns, us, ms, s, m, h or d); {HOW}")
        }
        humantime::DurationError::NumberOverflow => format!("{s:?} is too long a duration"),
        _ => format!("{s:?} is not a duration; {HOW}"),
    })
}

#[cfg(test)]
mod tests {
    use super::parse_duration;

    #[test]
    fn duration_messages_are_our_own() {
        assert_eq!(
            parse_duration("250ms"),
            Ok(std::time::Duration::from_millis(250))
        );
        let neg = parse_duration("-5s").unwrap_err();
        assert!(neg.contains("negative"), "{neg}");
        assert!(!neg.contains("expected"), "{neg}");
        assert!(parse_duration("5").unwrap_err().contains("no unit"));
        assert!(parse_duration("5 parsecs")
            .unwrap_err()
            .contains("\"parsecs\""));
        assert!(parse_duration("soon").unwrap_err().contains("\"250ms\""));
    }
}
