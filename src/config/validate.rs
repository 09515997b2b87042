//! The validation step: from the raw serde mirror to a typed [`Config`],
//! turning every problem into a [`ConfigError`] that names file, line and key.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;

use super::discovery;

use super::raw::{
    Dur, RawBalance, RawCheckKind, RawConfig, RawHealth, RawInitial, RawInstance, RawService,
};
use super::{
    check_service_name, Balance, CheckKind, Config, ConfigError, Conventions, HealthCheck,
    HostMatch, Limits, Outlier, ProxySettings, RegistrySettings, RetryBudget, Route, Runtime,
    ServiceConfig, ServicePolicy, ServiceTimeouts, StaticInstance, Timeouts,
};

/// Parses and validates; see [`Config::parse`].
pub(super) fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
    let cx = Cx { text, file };
    let raw = parse_raw(&cx)?;
    build(&cx, raw)
}

/// What every error needs: the text (to turn spans into lines) and the file name.
pub(super) struct Cx<'a> {
    text: &'a str,
    file: &'a Path,
}

impl Cx<'_> {
    pub(super) fn err(
        &self,
        span: Option<Range<usize>>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        let (line, column) = match span {
            Some(span) => line_col(self.text, span.start),
            None => (0, 0),
        };
        ConfigError::Invalid {
            file: self.file.to_owned(),
            line,
            column,
            key: key.into(),
            message: message.into(),
        }
    }

    pub(super) fn err_at<T>(
        &self,
        at: &Spanned<T>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        self.err(Some(at.span()), key, message)
    }
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.bytes().filter(|&b| b == b'\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    (line, column)
}

fn parse_raw(cx: &Cx<'_>) -> Result<RawConfig, ConfigError> {
    let de = toml::de::Deserializer::parse(cx.text)
        .map_err(|e| cx.err(e.span(), "(syntax)", e.message().trim()))?;
    serde_path_to_error::deserialize::<_, RawConfig>(de).map_err(|e| {
        let key = clean_path(&e.path().to_string());
        let inner = e.into_inner();
        cx.err(inner.span(), key, inner.message().trim())
    })
}

/// Drops the private field names `toml::Spanned` uses, so the path reads as the user wrote it.
fn clean_path(path: &str) -> String {
    let kept: Vec<&str> = path
        .split('.')
        .filter(|seg| !seg.starts_with("$__serde_spanned"))
        .collect();
    let joined = kept.join(".");
    if joined.is_empty() {
        "(top level)".to_owned()
    } else {
        joined
    }
}

fn build(cx: &Cx<'_>, raw: RawConfig) -> Result<Config, ConfigError> {
    let listen = match &raw.listen {
        None => vec![SocketAddr::from(([127, 0, 0, 1], 8080))],
        Some(list) => {
            if list.get_ref().is_empty() {
                return Err(cx.err_at(
                    list,
                    "listen",
                    "needs at least one address, e.g. [\"127.0.0.1:8080\"]",
                ));
            }
            let mut out = Vec::new();
            for (i, addr) in list.get_ref().iter().enumerate() {
                let parsed = socket_addr(cx, addr, &format!("listen[{i}]"))?;
                if out.contains(&parsed) {
                    return Err(cx.err_at(
                        addr,
                        format!("listen[{i}]"),
                        format!("{parsed} is listed twice"),
                    ));
                }
                out.push(parsed);
            }
            out
        }
    };
    let admin = match &raw.admin.listen {
        None => Some(SocketAddr::from(([127, 0, 0, 1], 9900))),
        Some(s) if s.get_ref() == "off" => None,
        Some(s) => Some(socket_addr(cx, s, "admin.listen")?),
    };
    if let Some(admin) = admin {
        // Port 0 asks the OS for a free port, different for each listener.
        if admin.port() != 0 && listen.contains(&admin) {
            return Err(cx.err_at(
                raw.admin
                    .listen
                    .as_ref()
                    .expect("admin address came from the file"),
                "admin.listen",
                format!("{admin} is also a client listener; the admin API needs its own address"),
            ));
        }
    }

    let admin_token = match (&raw.admin.token, &raw.admin.token_env) {
        (Some(t), Some(_)) => {
            return Err(cx.err_at(t, "admin.token", "set token or token_env, not both"));
        }
        (Some(t), None) if t.get_ref().len() < 8 => {
            return Err(cx.err_at(t, "admin.token", "use at least 8 characters"));
        }
        (Some(t), None) => Some(t.get_ref().clone()),
        (None, Some(var)) => match std::env::var(var.get_ref()) {
            Ok(v) if !v.is_empty() => Some(v),
            _ => {
                return Err(cx.err_at(
                    var,
                    "admin.token_env",
                    format!("environment variable {} is not set or empty", var.get_ref()),
                ))
            }
        },
        (None, None) => None,
    };
    let runtime = Runtime {
        worker_threads: match &raw.runtime.worker_threads {
            None => None,
            Some(n) => Some(int(
                cx,
                &Some(n.clone()),
                "runtime.worker_threads",
                1,
                1..=1024,
            )?),
        },
    };
    let r = &raw.registry;
    let registry = RegistrySettings {
        self_preservation_percent: int(
            cx,
            &r.self_preservation_percent,
            "registry.self_preservation_percent",
            50,
            0..=100,
        )?,
        max_staleness: duration(
            cx,
            &r.max_staleness,
            "registry.max_staleness",
            Duration::from_secs(300),
        )?,
        state_file: r.state_file.as_ref().map(|f| {
            let p = std::path::PathBuf::from(f.get_ref());
            if p.is_relative() {
                cx.file.parent().unwrap_or(Path::new(".")).join(p)
            } else {
                p
            }
        }),
        default_ttl: duration(
            cx,
            &r.default_ttl,
            "registry.default_ttl",
            Duration::from_secs(30),
        )?,
        max_hold: duration(
            cx,
            &r.max_hold,
            "registry.max_hold",
            Duration::from_secs(300),
        )?,
        etcd: r
            .etcd
            .as_ref()
            .map(|e| discovery::etcd(cx, e))
            .transpose()?,
    };
    if let (Some(f), Some(_)) = (&r.state_file, &registry.etcd) {
        return Err(cx.err_at(
            f,
            "registry.state_file",
            "not used with [registry.etcd]: etcd keeps the registrations; remove state_file",
        ));
    }

    let t = &raw.timeouts;
    let timeouts = Timeouts {
        connect: duration(cx, &t.connect, "timeouts.connect", Duration::from_secs(2))?,
        response_header: duration(
            cx,
            &t.response_header,
            "timeouts.response_header",
            Duration::from_secs(30),
        )?,
        client_header: duration(
            cx,
            &t.client_header,
            "timeouts.client_header",
            Duration::from_secs(30),
        )?,
        upstream_idle: duration(
            cx,
            &t.upstream_idle,
            "timeouts.upstream_idle",
            Duration::from_secs(60),
        )?,
        shutdown_drain: duration(
            cx,
            &t.shutdown_drain,
            "timeouts.shutdown_drain",
            Duration::from_secs(10),
        )?,
    };

    let l = &raw.limits;
    let limits = Limits {
        max_header_bytes: int(
            cx,
            &l.max_header_bytes,
            "limits.max_header_bytes",
            16 * 1024,
            1024..=1024 * 1024,
        )?,
        max_connections: int(
            cx,
            &l.max_connections,
            "limits.max_connections",
            10_000,
            1..=10_000_000,
        )?,
        max_idle_per_instance: int(
            cx,
            &l.max_idle_per_instance,
            "limits.max_idle_per_instance",
            64,
            0..=100_000,
        )?,
    };

    let conventions = Conventions {
        host_suffixes: match &raw.conventions.host_suffixes {
            None => vec![".svc".to_owned()],
            Some(list) => list
                .iter()
                .enumerate()
                .map(|(i, s)| host_suffix(cx, s, &format!("conventions.host_suffixes[{i}]")))
                .collect::<Result<_, _>>()?,
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
            if !ok {
                return Err(cx.err_at(
                    v,
                    "proxy.via",
                    "use letters, digits, '-', '.' or '_' (a Via pseudonym)",
                ));
            }
            v.get_ref().clone()
        }
    };
    let proxy = ProxySettings {
        via,
        max_attempts: int(cx, &p.max_attempts, "proxy.max_attempts", 3, 1..=10)?,
        debug_header: p.debug_header.unwrap_or(false),
        snapshot_header: p.snapshot_header.unwrap_or(false),
    };

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
    let services = services(cx, &raw.services, &default_policy)?;
    let routes = routes(cx, &raw, &services)?;

    Ok(Config {
        listen,
        admin,
        admin_token,
        registry,
        runtime,
        timeouts,
        limits,
        conventions,
        proxy,
        routes,
        services,
        default_policy: Arc::new(default_policy),
    })
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
fn policy(
    cx: &Cx<'_>,
    s: &RawService,
    key: &str,
    defaults: &ServicePolicy,
) -> Result<ServicePolicy, ConfigError> {
    let t = &s.timeouts;
    let timeouts = ServiceTimeouts {
        connect: duration(
            cx,
            &t.connect,
            &format!("{key}.timeouts.connect"),
            defaults.timeouts.connect,
        )?,
        response_header: duration(
            cx,
            &t.response_header,
            &format!("{key}.timeouts.response_header"),
            defaults.timeouts.response_header,
        )?,
        request: match &t.request {
            None => None,
            Some(_) => Some(duration(
                cx,
                &t.request,
                &format!("{key}.timeouts.request"),
                Duration::ZERO,
            )?),
        },
    };
    let o = &s.outlier;
    let d = &defaults.outlier;
    let okey = format!("{key}.outlier");
    let outlier = Outlier {
        connect_failures: int(
            cx,
            &o.connect_failures,
            &format!("{okey}.connect_failures"),
            d.connect_failures,
            0..=1000,
        )?,
        consecutive_failures: int(
            cx,
            &o.consecutive_failures,
            &format!("{okey}.consecutive_failures"),
            d.consecutive_failures,
            0..=1000,
        )?,
        count_5xx: o.count_5xx.unwrap_or(d.count_5xx),
        base_ejection: duration(
            cx,
            &o.base_ejection,
            &format!("{okey}.base_ejection"),
            d.base_ejection,
        )?,
        max_ejection: duration(
            cx,
            &o.max_ejection,
            &format!("{okey}.max_ejection"),
            d.max_ejection,
        )?,
        max_ejected_percent: int(
            cx,
            &o.max_ejected_percent,
            &format!("{okey}.max_ejected_percent"),
            d.max_ejected_percent,
            0..=100,
        )?,
    };
    if outlier.max_ejection < outlier.base_ejection {
        let at = o
            .max_ejection
            .as_ref()
            .or(o.base_ejection.as_ref())
            .map(Spanned::span);
        return Err(cx.err(
            at,
            format!("{okey}.max_ejection"),
            format!(
                "max_ejection ({:?}) is shorter than base_ejection ({:?})",
                outlier.max_ejection, outlier.base_ejection
            ),
        ));
    }
    let b = &s.retry_budget;
    let bkey = format!("{key}.retry_budget");
    let retry_budget = RetryBudget {
        percent: int(
            cx,
            &b.percent,
            &format!("{bkey}.percent"),
            defaults.retry_budget.percent,
            0..=100,
        )?,
        min_per_second: int(
            cx,
            &b.min_per_second,
            &format!("{bkey}.min_per_second"),
            defaults.retry_budget.min_per_second,
            0..=100_000,
        )?,
    };
    Ok(ServicePolicy {
        max_attempts: int(
            cx,
            &s.max_attempts,
            &format!("{key}.max_attempts"),
            defaults.max_attempts,
            1..=10,
        )?,
        timeouts,
        health: match &s.health {
            None => None,
            Some(h) => Some(health(cx, h, &format!("{key}.health"))?),
        },
        outlier,
        panic_threshold: int(
            cx,
            &s.panic_threshold,
            &format!("{key}.panic_threshold"),
            defaults.panic_threshold,
            0..=100,
        )?,
        slow_start: match &s.slow_start {
            None => defaults.slow_start,
            Some(d) => d.get_ref().0,
        },
        retry_budget,
    })
}

/// `[services.NAME.health]`.
fn health(cx: &Cx<'_>, raw: &Spanned<RawHealth>, key: &str) -> Result<HealthCheck, ConfigError> {
    let h = raw.get_ref();
    let interval = duration(
        cx,
        &h.interval,
        &format!("{key}.interval"),
        Duration::from_secs(5),
    )?;
    let timeout = duration(
        cx,
        &h.timeout,
        &format!("{key}.timeout"),
        Duration::from_secs(1).min(interval / 2),
    )?;
    if timeout >= interval {
        let at = h.timeout.as_ref().map_or(raw.span(), Spanned::span);
        return Err(cx.err(
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
                    return Err(cx.err_at(
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
                    return Err(cx.err_at(
                        p,
                        format!("{key}.path"),
                        "must be a path starting with '/'",
                    ))
                }
            };
            let method = match &h.method {
                None => http::Method::GET,
                Some(m) => {
                    match http::Method::from_bytes(m.get_ref().to_ascii_uppercase().as_bytes()) {
                        Ok(method) => method,
                        Err(_) => {
                            return Err(cx.err_at(m, format!("{key}.method"), "not an HTTP method"))
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
                    return Err(cx.err_at(
                        v,
                        format!("{key}.host"),
                        "not a usable Host header value",
                    ))
                }
            };
            let expect = match &h.expect {
                None => vec![(200, 399)],
                Some(list) if list.is_empty() => {
                    return Err(cx.err_at(raw, format!("{key}.expect"), "needs at least one status or range, e.g. [\"200-399\"]"))
                }
                Some(list) => list
                    .iter()
                    .enumerate()
                    .map(|(i, r)| status_range(r.get_ref()).ok_or_else(|| {
                        cx.err_at(r, format!("{key}.expect[{i}]"), format!("{:?} is not a status (\"204\") or range (\"200-399\") within 100-599", r.get_ref()))
                    }))
                    .collect::<Result<_, _>>()?,
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
        int(cx, v, &format!("{key}.{name}"), default, 1..=100)
    };
    Ok(HealthCheck {
        kind,
        interval,
        timeout,
        healthy_threshold: threshold(&h.healthy_threshold, "healthy_threshold", 2)?,
        unhealthy_threshold: threshold(&h.unhealthy_threshold, "unhealthy_threshold", 3)?,
        jitter: match &h.jitter {
            None => interval / 10,
            Some(j) if j.get_ref().0 >= interval => {
                return Err(cx.err_at(j, format!("{key}.jitter"), "must be shorter than interval"))
            }
            Some(j) => j.get_ref().0,
        },
        start_healthy: matches!(h.initial, Some(RawInitial::Healthy)),
    })
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
) -> Result<BTreeMap<Arc<str>, ServiceConfig>, ConfigError> {
    let mut out = BTreeMap::new();
    for (name, svc) in raw {
        let key = format!("services.{name}");
        check_service_name(name).map_err(|m| cx.err_at(svc, &key, m))?;
        let s = svc.get_ref();
        let raw_instances: &[Spanned<RawInstance>] = match &s.instances {
            // A service fed only by the registration API (or another source).
            None => &[],
            Some(list) if list.get_ref().is_empty() => {
                return Err(cx.err_at(
                    list,
                    format!("{key}.instances"),
                    "an empty list names no instance: list at least one (\"127.0.0.1:9001\"), \
                     or omit `instances` for a service whose instances register themselves",
                ));
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
            let addr: SocketAddr = addr.parse().map_err(|_| {
                cx.err_at(
                    inst,
                    &ikey,
                    format!("{addr:?} is not an IP:PORT address (e.g. \"127.0.0.1:9001\")"),
                )
            })?;
            if addr.port() == 0 {
                return Err(cx.err_at(
                    inst,
                    &ikey,
                    format!("{addr}: port 0 cannot be an instance"),
                ));
            }
            let weight = match weight {
                None => 1,
                Some(w @ 1..=1000) => w as u32,
                Some(w) => {
                    return Err(cx.err_at(
                        inst,
                        format!("{ikey}.weight"),
                        format!("{w} is out of range 1..=1000"),
                    ))
                }
            };
            if instances.iter().any(|x| x.addr == addr) {
                return Err(cx.err_at(
                    inst,
                    &ikey,
                    format!("{addr} is listed twice in this service"),
                ));
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
                policy: Arc::new(policy(cx, s, &key, defaults)?),
                dns: s
                    .dns
                    .as_ref()
                    .map(|d| discovery::dns(cx, d, &format!("{key}.dns")))
                    .transpose()?,
            },
        );
    }
    Ok(out)
}

fn routes(
    cx: &Cx<'_>,
    raw: &RawConfig,
    services: &BTreeMap<Arc<str>, ServiceConfig>,
) -> Result<Vec<Route>, ConfigError> {
    let mut out = Vec::with_capacity(raw.routes.len());
    let mut seen = HashSet::new();
    for (i, r) in raw.routes.iter().enumerate() {
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
        if !seen.insert((host.clone(), path.clone())) {
            return Err(cx.err_at(
                &r.service,
                &key,
                "another route already matches the same host and path",
            ));
        }
        out.push(Route {
            host,
            path,
            strip_prefix: r.strip_prefix,
            service: name.clone(),
        });
    }
    Ok(out)
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

    #[test]
    fn line_col_counts_from_one() {
        assert_eq!(line_col("ab\ncd", 0), (1, 1));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
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
