//! The validation step: from the raw serde mirror to a typed [`Config`],
//! turning every problem into a [`ConfigError`] that names file, line and
//! key. A problem is recorded and checking goes on with a fallback value,
//! so one run reports every error (see [`super::collect`]).

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;

use super::collect::{parse_raw, Cx, Env};
use super::discovery;
use super::forwarding;

use super::raw::{
    Dur, RawBalance, RawCheckKind, RawConfig, RawHealth, RawInitial, RawInstance, RawService,
};
use super::{
    check_service_name, Balance, CheckKind, Config, ConfigError, Conventions, HealthCheck,
    HostMatch, Limits, Outlier, ProxySettings, RegistrySettings, RetryBudget, Route, Runtime,
    ServiceConfig, ServicePolicy, ServiceTimeouts, StaticInstance, Timeouts,
};

/// Parses and validates; see [`Config::parse`] and [`Config::check`].
/// Returns the config and the warnings met on the way.
pub(super) fn parse(
    text: &str,
    file: &Path,
    env: Env,
) -> Result<(Config, Vec<String>), ConfigError> {
    let cx = Cx::new(text, file, env);
    let raw = parse_raw(&cx)?;
    let config = build(&cx, raw);
    let config = cx.finish(config)?;
    Ok((config, cx.warnings()))
}

/// Whether two listener addresses would take the same port: the same
/// address, or a wildcard (`0.0.0.0`, `[::]`) and any address of its family
/// on the same port. IPv6 listeners are IPv6-only, so the families never
/// meet. Port 0 asks the OS for a free port, different for each listener.
fn overlap(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port()
        && a.port() != 0
        && a.is_ipv4() == b.is_ipv4()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// A listener address: an IPv4-mapped IPv6 address cannot be bound by an
/// IPv6-only listener, so it is written as IPv4.
fn listen_addr(cx: &Cx<'_>, s: &Spanned<String>, key: &str) -> Result<SocketAddr, ConfigError> {
    let addr = socket_addr(cx, s, key)?;
    if let IpAddr::V6(v6) = addr.ip() {
        if let Some(v4) = v6.to_ipv4_mapped() {
            return Err(cx.err_at(
                s,
                key,
                format!(
                    "{addr} is an IPv4-mapped address: IPv6 listeners are IPv6-only; write {}",
                    SocketAddr::new(IpAddr::V4(v4), addr.port())
                ),
            ));
        }
    }
    Ok(addr)
}

fn build(cx: &Cx<'_>, raw: RawConfig) -> Config {
    let mut listen = Vec::new();
    match &raw.listen {
        None => listen.push(SocketAddr::from(([127, 0, 0, 1], 8080))),
        Some(list) if list.get_ref().is_empty() => cx.push(cx.err_at(
            list,
            "listen",
            "needs at least one address, e.g. [\"127.0.0.1:8080\"]",
        )),
        Some(list) => {
            for (i, s) in list.get_ref().iter().enumerate() {
                let key = format!("listen[{i}]");
                let Some(addr) = cx.ok(listen_addr(cx, s, &key)) else {
                    continue;
                };
                let clash = listen
                    .iter()
                    .position(|&other| other == addr || overlap(other, addr));
                match clash {
                    Some(j) if listen[j] == addr => {
                        cx.push(cx.err_at(s, key, format!("{addr} is listed twice")));
                    }
                    Some(j) => cx.push(cx.err_at(
                        s,
                        key,
                        format!(
                            "{addr} overlaps listen[{j}] {}: a wildcard address takes the port \
                             on every address of its family, so the second bind would fail",
                            listen[j]
                        ),
                    )),
                    None => {}
                }
                listen.push(addr);
            }
        }
    }
    let admin = match &raw.admin.listen {
        None => Some(SocketAddr::from(([127, 0, 0, 1], 9900))),
        Some(s) if s.get_ref() == "off" => None,
        Some(s) => cx.ok(listen_addr(cx, s, "admin.listen")),
    };
    if let (Some(admin), Some(at)) = (admin, &raw.admin.listen) {
        if let Some(l) = listen.iter().find(|&&l| l == admin && l.port() != 0) {
            cx.push(cx.err_at(
                at,
                "admin.listen",
                format!("{l} is also a client listener; the admin API needs its own address"),
            ));
        } else if let Some(l) = listen.iter().find(|&&l| overlap(l, admin)) {
            cx.push(cx.err_at(
                at,
                "admin.listen",
                format!(
                    "{admin} overlaps the client listener {l} (same port, and one is a wildcard \
                     address); the admin API needs its own port"
                ),
            ));
        }
    }

    let a = &raw.admin;
    let (admin_token, admin_token_env) = match (&a.token, &a.token_env) {
        (Some(t), Some(_)) => {
            cx.push(cx.err_at(t, "admin.token", "set token or token_env, not both"));
            (None, None)
        }
        (Some(t), None) if t.get_ref().len() < 8 => {
            cx.push(cx.err_at(t, "admin.token", "use at least 8 characters"));
            (None, None)
        }
        (Some(t), None) => (Some(t.get_ref().clone()), None),
        (None, Some(var)) => (
            cx.ok(cx.env_var(var, "admin.token_env")).flatten(),
            Some(var.get_ref().clone()),
        ),
        (None, None) => (None, None),
    };
    let admin_auth_reads = match &a.auth_reads {
        Some(b) if *b.get_ref() && a.token.is_none() && a.token_env.is_none() => {
            cx.push(cx.err_at(
                b,
                "admin.auth_reads",
                "there is no token to require: set admin.token or admin.token_env",
            ));
            false
        }
        Some(b) => *b.get_ref(),
        None => false,
    };
    let runtime = Runtime {
        worker_threads: match &raw.runtime.worker_threads {
            None => None,
            Some(n) => cx.ok(int(
                cx,
                &Some(n.clone()),
                "runtime.worker_threads",
                1,
                1..=1024,
            )),
        },
    };
    let r = &raw.registry;
    let registry = RegistrySettings {
        self_preservation_percent: cx.keep(
            int(
                cx,
                &r.self_preservation_percent,
                "registry.self_preservation_percent",
                50,
                0..=100,
            ),
            50,
        ),
        max_staleness: cx.keep(
            duration(
                cx,
                &r.max_staleness,
                "registry.max_staleness",
                Duration::from_secs(300),
            ),
            Duration::from_secs(300),
        ),
        state_file: r.state_file.as_ref().map(|f| {
            let p = std::path::PathBuf::from(f.get_ref());
            if p.is_relative() {
                cx.file().parent().unwrap_or(Path::new(".")).join(p)
            } else {
                p
            }
        }),
        default_ttl: cx.keep(
            duration(
                cx,
                &r.default_ttl,
                "registry.default_ttl",
                Duration::from_secs(30),
            ),
            Duration::from_secs(30),
        ),
        max_hold: cx.keep(
            duration(
                cx,
                &r.max_hold,
                "registry.max_hold",
                Duration::from_secs(300),
            ),
            Duration::from_secs(300),
        ),
        etcd: r.etcd.as_ref().and_then(|e| cx.ok(discovery::etcd(cx, e))),
    };
    if let (Some(f), Some(_)) = (&r.state_file, &r.etcd) {
        cx.push(cx.err_at(
            f,
            "registry.state_file",
            "not used with [registry.etcd]: etcd keeps the registrations; remove state_file",
        ));
    }

    let t = &raw.timeouts;
    let secs = Duration::from_secs;
    let timeouts = Timeouts {
        connect: cx.keep(
            duration(cx, &t.connect, "timeouts.connect", secs(2)),
            secs(2),
        ),
        response_header: cx.keep(
            duration(cx, &t.response_header, "timeouts.response_header", secs(30)),
            secs(30),
        ),
        client_header: cx.keep(
            duration(cx, &t.client_header, "timeouts.client_header", secs(30)),
            secs(30),
        ),
        upstream_idle: cx.keep(
            duration(cx, &t.upstream_idle, "timeouts.upstream_idle", secs(60)),
            secs(60),
        ),
        shutdown_drain: cx.keep(
            duration(cx, &t.shutdown_drain, "timeouts.shutdown_drain", secs(10)),
            secs(10),
        ),
        // Zero is allowed: no pre-stop delay.
        pre_stop: t
            .pre_stop
            .as_ref()
            .map_or(Duration::ZERO, |d| d.get_ref().0),
        client_body: cx.keep(
            duration(cx, &t.client_body, "timeouts.client_body", secs(15)),
            secs(15),
        ),
        client_send: cx.keep(
            duration(cx, &t.client_send, "timeouts.client_send", secs(15)),
            secs(15),
        ),
    };

    let l = &raw.limits;
    let limits = Limits {
        max_header_bytes: cx.keep(
            int(
                cx,
                &l.max_header_bytes,
                "limits.max_header_bytes",
                16 * 1024,
                1024..=1024 * 1024,
            ),
            16 * 1024,
        ),
        max_connections: cx.keep(
            int(
                cx,
                &l.max_connections,
                "limits.max_connections",
                10_000,
                1..=10_000_000,
            ),
            10_000,
        ),
        max_idle_per_instance: cx.keep(
            int(
                cx,
                &l.max_idle_per_instance,
                "limits.max_idle_per_instance",
                64,
                0..=100_000,
            ),
            64,
        ),
        max_uri_bytes: cx.keep(
            int(
                cx,
                &l.max_uri_bytes,
                "limits.max_uri_bytes",
                8 * 1024,
                256..=1024 * 1024,
            ),
            8 * 1024,
        ),
    };

    let conventions = Conventions {
        host_suffixes: match &raw.conventions.host_suffixes {
            None => vec![".svc".to_owned()],
            Some(list) => list
                .iter()
                .enumerate()
                .filter_map(|(i, s)| {
                    cx.ok(host_suffix(
                        cx,
                        s,
                        &format!("conventions.host_suffixes[{i}]"),
                    ))
                })
                .collect(),
        },
        path: raw.conventions.path.unwrap_or(false),
    };

    let p = &raw.proxy;
    let via = match &p.via {
        None => "wayfinder".to_owned(),
        Some(v) => {
            let ok = !v.get_ref().is_empty()
                && v.get_ref()
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
            if ok {
                v.get_ref().clone()
            } else {
                cx.push(cx.err_at(
                    v,
                    "proxy.via",
                    "use letters, digits, '-', '.' or '_' (a Via pseudonym)",
                ));
                "wayfinder".to_owned()
            }
        }
    };
    let proxy = ProxySettings {
        via,
        max_attempts: cx.keep(int(cx, &p.max_attempts, "proxy.max_attempts", 3, 1..=10), 3),
        debug_header: p.debug_header.unwrap_or(false),
        snapshot_header: p.snapshot_header.unwrap_or(false),
        trusted_proxies: cx.keep(
            forwarding::trusted_proxies(cx, &p.trusted_proxies),
            Vec::new(),
        ),
        forwarded: p.forwarded.unwrap_or(false),
        upgrades: cx
            .ok(forwarding::upgrades(cx, &p.upgrades, "proxy.upgrades"))
            .flatten()
            .unwrap_or_else(forwarding::default_upgrades),
        fast_path: p.fast_path.unwrap_or(true),
    };
    let http2 = forwarding::http2(cx, &raw);

    let default_policy = ServicePolicy {
        max_attempts: proxy.max_attempts,
        timeouts: ServiceTimeouts {
            connect: timeouts.connect,
            response_header: timeouts.response_header,
            request: None,
        },
        health: None,
        outlier: Outlier {
            connect_failures: 1,
            consecutive_failures: 5,
            count_5xx: false,
            base_ejection: Duration::from_secs(1),
            max_ejection: Duration::from_secs(30),
            max_ejected_percent: 50,
        },
        panic_threshold: 50,
        slow_start: Duration::ZERO,
        retry_budget: RetryBudget {
            percent: 20,
            min_per_second: 5,
        },
    };
    let services = services(cx, &raw.services, &default_policy);
    let routes = routes(cx, &raw, &services);

    Config {
        listen,
        admin,
        admin_token,
        admin_token_env,
        admin_auth_reads,
        registry,
        runtime,
        timeouts,
        limits,
        conventions,
        proxy,
        http2,
        routes,
        services,
        default_policy: Arc::new(default_policy),
    }
}

pub(super) fn socket_addr(
    cx: &Cx<'_>,
    s: &Spanned<String>,
    key: &str,
) -> Result<SocketAddr, ConfigError> {
    s.get_ref().parse().map_err(|_| {
        cx.err_at(
            s,
            key,
            format!(
                "{:?} is not an IP:PORT address (e.g. \"127.0.0.1:8080\" or \"[::1]:8080\")",
                s.get_ref()
            ),
        )
    })
}

pub(super) fn duration(
    cx: &Cx<'_>,
    v: &Option<Spanned<Dur>>,
    key: &str,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match v {
        None => Ok(default),
        Some(d) if d.get_ref().0.is_zero() => Err(cx.err_at(d, key, "must be greater than zero")),
        Some(d) => Ok(d.get_ref().0),
    }
}

pub(super) fn int<T: TryFrom<i64>>(
    cx: &Cx<'_>,
    v: &Option<Spanned<i64>>,
    key: &str,
    default: T,
    range: std::ops::RangeInclusive<i64>,
) -> Result<T, ConfigError> {
    match v {
        None => Ok(default),
        Some(n) if range.contains(n.get_ref()) => {
            T::try_from(*n.get_ref()).map_err(|_| cx.err_at(n, key, "out of range"))
        }
        Some(n) => Err(cx.err_at(
            n,
            key,
            format!(
                "{} is out of range {}..={}",
                n.get_ref(),
                range.start(),
                range.end()
            ),
        )),
    }
}

fn host_suffix(cx: &Cx<'_>, s: &Spanned<String>, key: &str) -> Result<String, ConfigError> {
    let v = s.get_ref().to_ascii_lowercase();
    if v.len() < 2 || !v.starts_with('.') || !valid_host_chars(&v[1..]) {
        return Err(cx.err_at(
            s,
            key,
            format!(
                "{:?} is not a host suffix: write it with a leading dot, e.g. \".svc\"",
                s.get_ref()
            ),
        ));
    }
    Ok(v)
}

pub(super) fn valid_host_chars(h: &str) -> bool {
    !h.is_empty()
        && !h.starts_with('.')
        && !h.ends_with('.')
        && !h.contains("..")
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
}

/// A service's policy: its own settings over the defaults.
fn policy(cx: &Cx<'_>, s: &RawService, key: &str, defaults: &ServicePolicy) -> ServicePolicy {
    let dur = |v: &Option<Spanned<Dur>>, name: &str, default: Duration| {
        cx.keep(duration(cx, v, &format!("{key}.{name}"), default), default)
    };
    let num = |v: &Option<Spanned<i64>>, name: &str, default: u32, range| {
        cx.keep(
            int(cx, v, &format!("{key}.{name}"), default, range),
            default,
        )
    };
    let t = &s.timeouts;
    let timeouts = ServiceTimeouts {
        connect: dur(&t.connect, "timeouts.connect", defaults.timeouts.connect),
        response_header: dur(
            &t.response_header,
            "timeouts.response_header",
            defaults.timeouts.response_header,
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
        max_ejected_percent: cx.keep(
            int(
                cx,
                &o.max_ejected_percent,
                &format!("{key}.outlier.max_ejected_percent"),
                d.max_ejected_percent,
                0..=100,
            ),
            d.max_ejected_percent,
        ),
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
            .map(|h| health(cx, h, &format!("{key}.health"))),
        outlier,
        panic_threshold: cx.keep(
            int(
                cx,
                &s.panic_threshold,
                &format!("{key}.panic_threshold"),
                defaults.panic_threshold,
                0..=100,
            ),
            defaults.panic_threshold,
        ),
        slow_start: match &s.slow_start {
            None => defaults.slow_start,
            Some(d) => d.get_ref().0,
        },
        retry_budget,
    }
}

/// `[services.NAME.health]`.
fn health(cx: &Cx<'_>, raw: &Spanned<RawHealth>, key: &str) -> HealthCheck {
    let h = raw.get_ref();
    let default_interval = Duration::from_secs(5);
    let interval = cx.keep(
        duration(
            cx,
            &h.interval,
            &format!("{key}.interval"),
            default_interval,
        ),
        default_interval,
    );
    let default_timeout = Duration::from_secs(1).min(interval / 2);
    let timeout = cx.keep(
        duration(cx, &h.timeout, &format!("{key}.timeout"), default_timeout),
        default_timeout,
    );
    if timeout >= interval {
        let at = h.timeout.as_ref().map_or(raw.span(), Spanned::span);
        cx.push(cx.err(
            Some(at),
            format!("{key}.timeout"),
            format!("timeout ({timeout:?}) must be shorter than interval ({interval:?}), or checks overlap"),
        ));
    }
    let kind = match h.kind {
        RawCheckKind::Tcp => {
            for (field, set) in [
                ("path", h.path.is_some()),
                ("method", h.method.is_some()),
                ("host", h.host.is_some()),
                ("expect", h.expect.is_some()),
            ] {
                if set {
                    cx.push(cx.err_at(
                        raw,
                        format!("{key}.{field}"),
                        format!("{field} applies to kind = \"http\" only"),
                    ));
                }
            }
            CheckKind::Tcp
        }
        RawCheckKind::Http => {
            let path = match &h.path {
                None => "/healthz".to_owned(),
                Some(p)
                    if p.get_ref().starts_with('/')
                        && http::uri::PathAndQuery::try_from(p.get_ref().as_str()).is_ok() =>
                {
                    p.get_ref().clone()
                }
                Some(p) => {
                    cx.push(cx.err_at(
                        p,
                        format!("{key}.path"),
                        "must be a path starting with '/'",
                    ));
                    "/healthz".to_owned()
                }
            };
            let method = match &h.method {
                None => http::Method::GET,
                Some(m) => {
                    match http::Method::from_bytes(m.get_ref().to_ascii_uppercase().as_bytes()) {
                        Ok(method) => method,
                        Err(_) => {
                            cx.push(cx.err_at(m, format!("{key}.method"), "not an HTTP method"));
                            http::Method::GET
                        }
                    }
                }
            };
            let host = match &h.host {
                None => None,
                Some(v)
                    if http::HeaderValue::from_str(v.get_ref()).is_ok()
                        && !v.get_ref().is_empty() =>
                {
                    Some(v.get_ref().clone())
                }
                Some(v) => {
                    cx.push(cx.err_at(v, format!("{key}.host"), "not a usable Host header value"));
                    None
                }
            };
            let expect = match &h.expect {
                None => vec![(200, 399)],
                Some(list) if list.is_empty() => {
                    cx.push(cx.err_at(
                        raw,
                        format!("{key}.expect"),
                        "needs at least one status or range, e.g. [\"200-399\"]",
                    ));
                    vec![(200, 399)]
                }
                Some(list) => list
                    .iter()
                    .enumerate()
                    .filter_map(|(i, r)| {
                        let range = status_range(r.get_ref());
                        if range.is_none() {
                            cx.push(cx.err_at(
                                r,
                                format!("{key}.expect[{i}]"),
                                format!("{:?} is not a status (\"204\") or range (\"200-399\") within 100-599", r.get_ref()),
                            ));
                        }
                        range
                    })
                    .collect(),
            };
            CheckKind::Http {
                method,
                path,
                host,
                expect,
            }
        }
    };
    let threshold = |v: &Option<Spanned<i64>>, name: &str, default: u32| {
        cx.keep(
            int(cx, v, &format!("{key}.{name}"), default, 1..=100),
            default,
        )
    };
    HealthCheck {
        kind,
        interval,
        timeout,
        healthy_threshold: threshold(&h.healthy_threshold, "healthy_threshold", 2),
        unhealthy_threshold: threshold(&h.unhealthy_threshold, "unhealthy_threshold", 3),
        jitter: match &h.jitter {
            None => interval / 10,
            Some(j) if j.get_ref().0 >= interval => {
                cx.push(cx.err_at(j, format!("{key}.jitter"), "must be shorter than interval"));
                interval / 10
            }
            Some(j) => j.get_ref().0,
        },
        start_healthy: matches!(h.initial, Some(RawInitial::Healthy)),
    }
}

/// `"204"` or `"200-399"`.
fn status_range(s: &str) -> Option<(u16, u16)> {
    let (lo, hi) = match s.split_once('-') {
        Some((lo, hi)) => (lo.trim().parse().ok()?, hi.trim().parse().ok()?),
        None => {
            let v: u16 = s.trim().parse().ok()?;
            (v, v)
        }
    };
    ((100..=599).contains(&lo) && (100..=599).contains(&hi) && lo <= hi).then_some((lo, hi))
}

fn services(
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
        let raw_instances: &[Spanned<RawInstance>] = match &s.instances {
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
        let mut instances: Vec<StaticInstance> = Vec::with_capacity(raw_instances.len());
        for (i, inst) in raw_instances.iter().enumerate() {
            let ikey = format!("{key}.instances[{i}]");
            let (addr, weight) = match inst.get_ref() {
                RawInstance::Address(a) => (a, None),
                RawInstance::Table(t) => (&t.address, t.weight),
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
                None => 1,
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
            if instances.iter().any(|x| x.addr == addr) {
                cx.push(cx.err_at(
                    inst,
                    &ikey,
                    format!("{addr} is listed twice in this service"),
                ));
                continue;
            }
            instances.push(StaticInstance { addr, weight });
        }
        let name: Arc<str> = Arc::from(name.as_str());
        out.insert(
            name.clone(),
            ServiceConfig {
                name,
                balance: match s.balance {
                    None | Some(RawBalance::RoundRobin) => Balance::RoundRobin,
                    Some(RawBalance::LeastConnections) => Balance::LeastConnections,
                },
                instances,
                policy: Arc::new(policy(cx, s, &key, defaults)),
                dns: s
                    .dns
                    .as_ref()
                    .and_then(|d| cx.ok(discovery::dns(cx, d, &format!("{key}.dns")))),
            },
        );
    }
    out
}

fn routes(
    cx: &Cx<'_>,
    raw: &RawConfig,
    services: &BTreeMap<Arc<str>, ServiceConfig>,
) -> Vec<Route> {
    let mut out = Vec::with_capacity(raw.routes.len());
    let mut seen = HashSet::new();
    for (i, r) in raw.routes.iter().enumerate() {
        if let Some(route) = cx.ok(route(cx, r, i, services)) {
            if seen.insert((route.host.clone(), route.path.clone())) {
                out.push(route);
            } else {
                cx.push(cx.err_at(
                    &r.service,
                    format!("routes[{i}]"),
                    "another route already matches the same host and path",
                ));
            }
        }
    }
    out
}

fn route(
    cx: &Cx<'_>,
    r: &super::raw::RawRoute,
    i: usize,
    services: &BTreeMap<Arc<str>, ServiceConfig>,
) -> Result<Route, ConfigError> {
    let key = format!("routes[{i}]");
    let host = match &r.host {
        None => HostMatch::Any,
        Some(h) => {
            let v = h.get_ref().to_ascii_lowercase();
            if let Some(suffix) = v.strip_prefix('*') {
                if !suffix.starts_with('.') || !valid_host_chars(&suffix[1..]) {
                    return Err(cx.err_at(
                        h,
                        format!("{key}.host"),
                        format!(
                            "{:?}: a wildcard host is written \"*.example.com\"",
                            h.get_ref()
                        ),
                    ));
                }
                HostMatch::Suffix(suffix.to_owned())
            } else if valid_host_chars(&v) {
                HostMatch::Exact(v)
            } else {
                return Err(cx.err_at(
                    h,
                    format!("{key}.host"),
                    format!("{:?} is not a host name (no port, no scheme)", h.get_ref()),
                ));
            }
        }
    };
    let path = match &r.path {
        None => "/".to_owned(),
        Some(p) => {
            let v = p.get_ref();
            if !v.starts_with('/') || v.contains(['?', '#', ' ']) {
                return Err(cx.err_at(
                    p,
                    format!("{key}.path"),
                    format!("{v:?} is not a path prefix: it starts with '/' and has no query"),
                ));
            }
            // "/api/" and "/api" mean the same prefix; keep one form.
            if v.len() > 1 {
                v.trim_end_matches('/').to_owned()
            } else {
                v.clone()
            }
        }
    };
    let service = r.service.get_ref();
    let Some((name, _)) = services.get_key_value(service.as_str()) else {
        let known: Vec<&str> = services.keys().map(|k| &**k).collect();
        return Err(cx.err_at(
            &r.service,
            format!("{key}.service"),
            format!(
                "no service named {service:?} is declared (declared: {})",
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            ),
        ));
    };
    let upgrades = forwarding::upgrades(cx, &r.upgrades, &format!("{key}.upgrades"))?;
    Ok(Route {
        host,
        path,
        strip_prefix: r.strip_prefix,
        service: name.clone(),
        upgrades,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_util::{err, parse};

    const GOOD: &str = r#"
listen = ["127.0.0.1:8080"]
[timeouts]
connect = "250ms"
[[routes]]
host = "*.Example.com"
path = "/api/"
strip_prefix = true
service = "api"
[services.api]
balance = "least_connections"
instances = ["127.0.0.1:9001", { address = "127.0.0.1:9002", weight = 3 }]
"#;

    #[test]
    fn good_file_parses_with_defaults() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.timeouts.connect, Duration::from_millis(250));
        assert_eq!(c.timeouts.response_header, Duration::from_secs(30));
        assert_eq!(c.admin, Some("127.0.0.1:9900".parse().unwrap()));
        assert_eq!(c.routes[0].host, HostMatch::Suffix(".example.com".into()));
        assert_eq!(c.routes[0].path, "/api");
        let api = &c.services["api"];
        assert_eq!(api.balance, Balance::LeastConnections);
        assert_eq!(api.instances[1].weight, 3);
        assert_eq!(c.conventions.host_suffixes, vec![".svc".to_owned()]);
    }

    #[test]
    fn unknown_key_names_path_and_line() {
        let (line, key, msg) =
            err("[services.api]\ninstances = [\"127.0.0.1:1\"]\nbalanse = \"x\"\n");
        assert_eq!(line, 3);
        assert_eq!(key, "services.api.balanse");
        assert!(msg.contains("unknown field `balanse`"), "{msg}");
    }

    #[test]
    fn wrong_type_and_bad_enum_are_named() {
        let (line, key, _) = err("[limits]\nmax_connections = \"many\"\n");
        assert_eq!((line, key.as_str()), (2, "limits.max_connections"));
        let (line, key, msg) =
            err("[services.a]\nbalance = \"random\"\ninstances = [\"127.0.0.1:1\"]\n");
        assert_eq!((line, key.as_str()), (2, "services.a.balance"));
        assert!(msg.contains("round_robin"), "{msg}");
    }

    #[test]
    fn bad_duration_says_how_to_write_one() {
        let (line, key, msg) = err("[timeouts]\nconnect = \"5\"\n");
        assert_eq!((line, key.as_str()), (2, "timeouts.connect"));
        assert!(msg.contains("\"250ms\""), "{msg}");
        let (_, _, msg) = err("[timeouts]\nconnect = \"0s\"\n");
        assert!(msg.contains("greater than zero"));
    }

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
    fn route_to_undeclared_service() {
        let (line, key, msg) =
            err("[[routes]]\nservice = \"nope\"\n[services.a]\ninstances = [\"127.0.0.1:1\"]\n");
        assert_eq!((line, key.as_str()), (2, "routes[0].service"));
        assert!(msg.contains("declared: a"), "{msg}");
    }

    #[test]
    fn duplicate_service_is_a_syntax_error_with_line() {
        let (line, _, msg) = err("[services.a]\ninstances = [\"127.0.0.1:1\"]\n[services.a]\ninstances = [\"127.0.0.1:2\"]\n");
        assert_eq!(line, 3, "{msg}");
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

    #[test]
    fn overlapping_listeners_are_refused_and_the_dual_stack_pair_is_not() {
        let c = parse("listen = [\"0.0.0.0:8080\", \"[::]:8080\"]\n").unwrap();
        assert_eq!(c.listen.len(), 2);
        let (_, key, msg) = err("listen = [\"0.0.0.0:8080\", \"127.0.0.1:8080\"]\n");
        assert_eq!(key, "listen[1]");
        assert!(msg.contains("overlaps listen[0] 0.0.0.0:8080"), "{msg}");
        let (_, key, _) = err("listen = [\"[::1]:8080\", \"[::]:8080\"]\n");
        assert_eq!(key, "listen[1]");
        let (_, key, msg) = err("listen = [\"[::ffff:127.0.0.1]:8080\"]\n");
        assert_eq!(key, "listen[0]");
        assert!(msg.contains("write 127.0.0.1:8080"), "{msg}");
        // Different ports, and port 0 (a fresh port each), do not clash.
        parse("listen = [\"0.0.0.0:8080\", \"127.0.0.1:8081\", \"0.0.0.0:0\", \"127.0.0.1:0\"]\n")
            .unwrap();
        let (_, key, msg) =
            err("listen = [\"0.0.0.0:8080\"]\n[admin]\nlisten = \"127.0.0.1:8080\"\n");
        assert_eq!(key, "admin.listen");
        assert!(
            msg.contains("overlaps the client listener 0.0.0.0:8080"),
            "{msg}"
        );
    }

    #[test]
    fn auth_reads_needs_a_token_and_open_admin_apis_are_warned_about() {
        let (_, key, _) = err("[admin]\nauth_reads = true\n");
        assert_eq!(key, "admin.auth_reads");
        let open = parse("[admin]\nlisten = \"0.0.0.0:9900\"\n").unwrap();
        assert!(open.warnings()[0].contains("no admin.token is set"));
        let reads = parse("[admin]\nlisten = \"[::]:9900\"\ntoken = \"12345678\"\n").unwrap();
        assert!(reads.warnings()[0].contains("admin.auth_reads is off"));
        let closed =
            parse("[admin]\nlisten = \"0.0.0.0:9900\"\ntoken = \"12345678\"\nauth_reads = true\n")
                .unwrap();
        assert!(closed.warnings().is_empty());
        assert!(
            parse("").unwrap().warnings().is_empty(),
            "loopback by default"
        );
    }

    #[test]
    fn token_env_is_checked_by_name_when_only_checking() {
        let text = "[admin]\ntoken_env = \"WAYFINDER_UNIT_TEST_UNSET_VAR\"\n";
        let (_, key, _) = err(text);
        assert_eq!(key, "admin.token_env");
        let (c, warnings) = super::parse(text, Path::new("t.toml"), Env::ShapeOnly).unwrap();
        assert_eq!(c.admin_token, None);
        assert_eq!(
            c.admin_token_env.as_deref(),
            Some("WAYFINDER_UNIT_TEST_UNSET_VAR")
        );
        assert!(
            warnings[0].contains("WAYFINDER_UNIT_TEST_UNSET_VAR"),
            "{warnings:?}"
        );
        assert!(c.warnings().is_empty(), "a token is configured");
        let (_, key, _) = err("[admin]\ntoken_env = \"A=B\"\n");
        assert_eq!(key, "admin.token_env");
    }

    #[test]
    fn pre_stop_defaults_to_zero_and_takes_zero() {
        assert!(parse("").unwrap().timeouts.pre_stop.is_zero());
        let c = parse("[timeouts]\npre_stop = \"0s\"\n").unwrap();
        assert!(c.timeouts.pre_stop.is_zero());
        let c = parse("[timeouts]\npre_stop = \"15s\"\n").unwrap();
        assert_eq!(c.timeouts.pre_stop, Duration::from_secs(15));
    }

    #[test]
    fn admin_off_and_clash() {
        let c = parse("[admin]\nlisten = \"off\"\n").unwrap();
        assert_eq!(c.admin, None);
        let (_, key, _) = err("listen = [\"127.0.0.1:9\"]\n[admin]\nlisten = \"127.0.0.1:9\"\n");
        assert_eq!(key, "admin.listen");
    }

    #[test]
    fn route_checks() {
        let base = "[services.a]\ninstances = [\"127.0.0.1:1\"]\n";
        let (_, key, _) = err(&format!(
            "[[routes]]\nhost = \"*example.com\"\nservice = \"a\"\n{base}"
        ));
        assert_eq!(key, "routes[0].host");
        let (_, key, _) = err(&format!(
            "[[routes]]\npath = \"api\"\nservice = \"a\"\n{base}"
        ));
        assert_eq!(key, "routes[0].path");
        let (_, key, _) = err(&format!("[[routes]]\npath = \"/x\"\nservice = \"a\"\n[[routes]]\npath = \"/x/\"\nservice = \"a\"\n{base}"));
        assert_eq!(key, "routes[1]");
    }

    const SVC: &str = "[services.a]\ninstances = [\"127.0.0.1:1\"]\n";

    #[test]
    fn health_section_parses_with_defaults() {
        let c = parse(&format!("{SVC}[services.a.health]\nkind = \"http\"\npath = \"/ready\"\nexpect = [\"200\", \"300-302\"]\ninterval = \"2s\"\n")).unwrap();
        let p = &c.services["a"].policy;
        let h = p.health.as_ref().unwrap();
        assert_eq!(h.interval, Duration::from_secs(2));
        assert_eq!(h.timeout, Duration::from_secs(1));
        assert_eq!((h.healthy_threshold, h.unhealthy_threshold), (2, 3));
        assert!(!h.start_healthy);
        match &h.kind {
            CheckKind::Http {
                path,
                expect,
                method,
                ..
            } => {
                assert_eq!(path, "/ready");
                assert_eq!(expect, &[(200, 200), (300, 302)]);
                assert_eq!(method, http::Method::GET);
            }
            CheckKind::Tcp => panic!("kind"),
        }
        assert_eq!(p.panic_threshold, 50);
        assert_eq!(p.outlier.connect_failures, 1);
        assert_eq!(c.default_policy.max_attempts, 3);
    }

    #[test]
    fn impossible_health_values_are_named() {
        let (line, key, msg) = err(&format!(
            "{SVC}[services.a.health]\nkind = \"tcp\"\ninterval = \"1s\"\ntimeout = \"1s\"\n"
        ));
        assert_eq!((line, key.as_str()), (6, "services.a.health.timeout"));
        assert!(msg.contains("shorter than interval"), "{msg}");
        let (_, key, _) = err(&format!(
            "{SVC}[services.a.health]\nkind = \"tcp\"\nhealthy_threshold = 0\n"
        ));
        assert_eq!(key, "services.a.health.healthy_threshold");
        let (line, key, msg) = err(&format!("{SVC}[services.a.health]\nkind = \"grpc\"\n"));
        assert_eq!((line, key.as_str()), (4, "services.a.health.kind"));
        assert!(msg.contains("http") && msg.contains("tcp"), "{msg}");
        let (_, key, _) = err(&format!(
            "{SVC}[services.a.health]\nkind = \"tcp\"\npath = \"/x\"\n"
        ));
        assert_eq!(key, "services.a.health.path");
        let (_, key, _) = err(&format!(
            "{SVC}[services.a.health]\nkind = \"http\"\nexpect = [\"700\"]\n"
        ));
        assert_eq!(key, "services.a.health.expect[0]");
        let (_, key, _) = err(&format!(
            "{SVC}[services.a.outlier]\nbase_ejection = \"10s\"\nmax_ejection = \"1s\"\n"
        ));
        assert_eq!(key, "services.a.outlier.max_ejection");
        let (_, key, _) = err(&format!("{SVC}panic_threshold = 101\n"));
        assert_eq!(key, "services.a.panic_threshold");
    }
}
