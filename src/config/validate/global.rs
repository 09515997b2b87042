//! The top-level tables: `listen`, `[admin]`, `[registry]`, `[runtime]`,
//! `[timeouts]`, `[limits]`, `[conventions]` and `[proxy]`. Each function
//! validates one table and returns its typed parts (a table whose keys are
//! partly read at start and partly reloadable gives both parts).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use toml::Spanned;

use super::{discovery, forwarding, membership};
use crate::config::check::{duration_or_zero, int, socket_addr, valid_host_chars, Cx};
use crate::config::defaults;
use crate::config::raw::{
    RawAdmin, RawConventions, RawLimits, RawProxy, RawRegistry, RawRuntime, RawTimeouts,
};
use crate::config::{
    AdminSettings, ConfigError, ConnectionTimeouts, Conventions, ForwardingSettings, Limits,
    ProxySettings, RegistrationSettings, RegistrySettings, Runtime, Timeouts,
};

/// `listen`: the client listeners, none listed twice or overlapping.
pub(super) fn listen(cx: &Cx<'_>, raw: &Option<Spanned<Vec<Spanned<String>>>>) -> Vec<SocketAddr> {
    let mut listen = Vec::new();
    match raw {
        None => listen.push(defaults::LISTEN),
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
    listen
}

/// Whether two listener addresses would take the same port: the same
/// address, or a wildcard (`0.0.0.0`, `[::]`) and any address of its family
/// on the same port. IPv6 listeners are IPv6-only, so the families never
/// meet. Port 0 asks the OS for a free port, different for each listener.
pub(super) fn overlap(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port()
        && a.port() != 0
        && a.is_ipv4() == b.is_ipv4()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// A listener address: an IPv4-mapped IPv6 address cannot be bound by an
/// IPv6-only listener, so it is written as IPv4.
pub(super) fn listen_addr(
    cx: &Cx<'_>,
    s: &Spanned<String>,
    key: &str,
) -> Result<SocketAddr, ConfigError> {
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

/// `[admin]`; `listen` is the client listeners it must not overlap.
pub(super) fn admin(cx: &Cx<'_>, a: &RawAdmin, listen: &[SocketAddr]) -> AdminSettings {
    let addr = match &a.listen {
        None => Some(defaults::admin::LISTEN),
        Some(s) if s.get_ref() == "off" => None,
        Some(s) => cx.ok(listen_addr(cx, s, "admin.listen")),
    };
    if let (Some(admin), Some(at)) = (addr, &a.listen) {
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
    let (token, token_env) = match (&a.token, &a.token_env) {
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
    let auth_reads = match &a.auth_reads {
        Some(b) if *b.get_ref() && a.token.is_none() && a.token_env.is_none() => {
            cx.push(cx.err_at(
                b,
                "admin.auth_reads",
                "there is no token to require: set admin.token or admin.token_env",
            ));
            defaults::admin::AUTH_READS
        }
        Some(b) => *b.get_ref(),
        None => defaults::admin::AUTH_READS,
    };
    AdminSettings {
        listen: addr,
        token,
        token_env,
        auth_reads,
    }
}

/// `[registry]`: the settings a reload applies, and where registrations
/// are kept (read at start).
pub(super) fn registry(cx: &Cx<'_>, r: &RawRegistry) -> (RegistrySettings, RegistrationSettings) {
    use defaults::registry as d;
    let reloadable = RegistrySettings {
        self_preservation_percent: cx.int_or(
            &r.self_preservation_percent,
            "registry.self_preservation_percent",
            d::SELF_PRESERVATION_PERCENT,
            0..=100,
        ),
        max_staleness: cx.duration_or(&r.max_staleness, "registry.max_staleness", d::MAX_STALENESS),
        max_hold: cx.duration_or(&r.max_hold, "registry.max_hold", d::MAX_HOLD),
    };
    if let (Some(f), Some(_)) = (&r.state_file, &r.etcd) {
        cx.push(cx.err_at(
            f,
            "registry.state_file",
            "not used with [registry.etcd]: etcd keeps the registrations; remove state_file",
        ));
    }
    let startup = RegistrationSettings {
        // Relative to the config file's directory.
        state_file: r.state_file.as_ref().map(|f| {
            let p = PathBuf::from(f.get_ref());
            if p.is_relative() {
                cx.file().parent().unwrap_or(Path::new(".")).join(p)
            } else {
                p
            }
        }),
        default_ttl: cx.duration_or(&r.default_ttl, "registry.default_ttl", d::DEFAULT_TTL),
        etcd: r.etcd.as_ref().and_then(|e| cx.ok(discovery::etcd(cx, e))),
        gossip: r
            .gossip
            .as_ref()
            .and_then(|g| cx.ok(membership::gossip(cx, g))),
        serf: r.serf.as_ref().and_then(|s| cx.ok(membership::serf(cx, s))),
    };
    if let (Some(g), Some(_)) = (&r.gossip, &r.etcd) {
        cx.push(cx.err_at(
            g,
            "registry.gossip",
            "not used with [registry.etcd]: the registration API writes to one shared \
             registry; pick etcd or gossip",
        ));
    }
    (reloadable, startup)
}

/// `[runtime]`.
pub(super) fn runtime(cx: &Cx<'_>, r: &RawRuntime) -> Runtime {
    Runtime {
        // Absent: one per core (Tokio's default).
        worker_threads: match &r.worker_threads {
            None => None,
            Some(_) => cx.ok(int(
                cx,
                &r.worker_threads,
                "runtime.worker_threads",
                1,
                1..=1024,
            )),
        },
    }
}

/// `[timeouts]`: the reloadable ones (request defaults, pre-stop), and
/// those of connections (read at start).
pub(super) fn timeouts(cx: &Cx<'_>, t: &RawTimeouts) -> (Timeouts, ConnectionTimeouts) {
    use defaults::timeouts as d;
    let reloadable = Timeouts {
        connect: cx.duration_or(&t.connect, "timeouts.connect", d::CONNECT),
        response_header: cx.duration_or(
            &t.response_header,
            "timeouts.response_header",
            d::RESPONSE_HEADER,
        ),
        response_body: cx.duration_or(&t.response_body, "timeouts.response_body", d::RESPONSE_BODY),
        // Zero is allowed: no pre-stop delay.
        pre_stop: duration_or_zero(&t.pre_stop, d::PRE_STOP),
    };
    let connections = ConnectionTimeouts {
        client_header: cx.duration_or(&t.client_header, "timeouts.client_header", d::CLIENT_HEADER),
        upstream_idle: cx.duration_or(&t.upstream_idle, "timeouts.upstream_idle", d::UPSTREAM_IDLE),
        shutdown_drain: cx.duration_or(
            &t.shutdown_drain,
            "timeouts.shutdown_drain",
            d::SHUTDOWN_DRAIN,
        ),
        client_body: cx.duration_or(&t.client_body, "timeouts.client_body", d::CLIENT_BODY),
        client_send: cx.duration_or(&t.client_send, "timeouts.client_send", d::CLIENT_SEND),
    };
    (reloadable, connections)
}

/// `[limits]`.
pub(super) fn limits(cx: &Cx<'_>, l: &RawLimits) -> Limits {
    use defaults::limits as d;
    Limits {
        max_header_bytes: cx.int_or(
            &l.max_header_bytes,
            "limits.max_header_bytes",
            d::MAX_HEADER_BYTES,
            1024..=1024 * 1024,
        ),
        max_connections: cx.int_or(
            &l.max_connections,
            "limits.max_connections",
            d::MAX_CONNECTIONS,
            1..=10_000_000,
        ),
        max_idle_per_instance: cx.int_or(
            &l.max_idle_per_instance,
            "limits.max_idle_per_instance",
            d::MAX_IDLE_PER_INSTANCE,
            0..=100_000,
        ),
        max_uri_bytes: cx.int_or(
            &l.max_uri_bytes,
            "limits.max_uri_bytes",
            d::MAX_URI_BYTES,
            256..=1024 * 1024,
        ),
    }
}

/// `[conventions]`.
pub(super) fn conventions(cx: &Cx<'_>, c: &RawConventions) -> Conventions {
    use defaults::conventions as d;
    Conventions {
        host_suffixes: match &c.host_suffixes {
            None => d::HOST_SUFFIXES.iter().map(|&s| s.to_owned()).collect(),
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
        path: c.path.unwrap_or(d::PATH),
    }
}

/// A host suffix: a leading dot, then a host name.
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

/// `[proxy]`: the reloadable settings (attempts, upgrades), and how
/// requests are rewritten (read at start).
pub(super) fn proxy(cx: &Cx<'_>, p: &RawProxy) -> (ProxySettings, ForwardingSettings) {
    use defaults::proxy as d;
    let via = match &p.via {
        None => d::VIA.to_owned(),
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
                d::VIA.to_owned()
            }
        }
    };
    let reloadable = ProxySettings {
        max_attempts: cx.int_or(
            &p.max_attempts,
            "proxy.max_attempts",
            d::MAX_ATTEMPTS,
            1..=10,
        ),
        upgrades: cx
            .ok(forwarding::upgrades(cx, &p.upgrades, "proxy.upgrades"))
            .flatten()
            .unwrap_or_else(|| d::UPGRADES.iter().map(|&s| s.to_owned()).collect()),
    };
    let startup = ForwardingSettings {
        via,
        debug_header: p.debug_header.unwrap_or(d::DEBUG_HEADER),
        snapshot_header: p.snapshot_header.unwrap_or(d::SNAPSHOT_HEADER),
        trusted_proxies: cx.keep(
            forwarding::trusted_proxies(cx, &p.trusted_proxies),
            Vec::new(),
        ),
        forwarded: p.forwarded.unwrap_or(d::FORWARDED),
        fast_path: p.fast_path.unwrap_or(d::FAST_PATH),
        request_id: p.request_id.unwrap_or(d::REQUEST_ID),
        request_id_header: match &p.request_id_header {
            None => d::REQUEST_ID_HEADER.to_owned(),
            Some(v) => {
                let name = v.get_ref().to_ascii_lowercase();
                let ok = http::HeaderName::from_bytes(name.as_bytes()).is_ok()
                    && !matches!(
                        name.as_str(),
                        "host"
                            | "connection"
                            | "content-length"
                            | "transfer-encoding"
                            | "te"
                            | "upgrade"
                            | "via"
                            | "forwarded"
                            | "keep-alive"
                            | "trailer"
                            | "proxy-connection"
                    )
                    && !name.starts_with("x-forwarded-");
                if !ok {
                    cx.push(cx.err_at(
                        v,
                        "proxy.request_id_header",
                        "use a header name of its own, e.g. \"x-request-id\" \
                         (not one the proxy manages)",
                    ));
                }
                name
            }
        },
    };
    (reloadable, startup)
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use crate::config::check::Env;
    use crate::config::test_util::{err, parse};

    #[test]
    fn overlapping_listeners_are_refused_and_the_dual_stack_pair_is_not() {
        let c = parse("listen = [\"0.0.0.0:8080\", \"[::]:8080\"]\n").unwrap();
        assert_eq!(c.startup.listen.len(), 2);
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
        let (c, warnings) = super::super::parse(text, Path::new("t.toml"), Env::ShapeOnly).unwrap();
        assert_eq!(c.startup.admin.token, None);
        assert_eq!(
            c.startup.admin.token_env.as_deref(),
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
        assert_eq!(c.startup.admin.listen, None);
        let (_, key, _) = err("listen = [\"127.0.0.1:9\"]\n[admin]\nlisten = \"127.0.0.1:9\"\n");
        assert_eq!(key, "admin.listen");
    }

    #[test]
    fn registry_settings_and_state_file_relative_to_the_config() {
        let c = crate::config::Config::parse(
            "[registry]\nstate_file = \"s.json\"\nmax_hold = \"1m\"\n",
            Path::new("/etc/wayfinder/w.toml"),
        )
        .unwrap();
        assert_eq!(
            c.startup.registry.state_file.as_deref(),
            Some(Path::new("/etc/wayfinder/s.json"))
        );
        assert_eq!(c.registry.max_hold, Duration::from_secs(60));
        let (_, key, _) = err("[registry]\nself_preservation_percent = 101\n");
        assert_eq!(key, "registry.self_preservation_percent");
        let (_, key, _) = err("[conventions]\nhost_suffixes = [\"svc\"]\n");
        assert_eq!(key, "conventions.host_suffixes[0]");
        let (_, key, _) = err("[proxy]\nvia = \"a b\"\n");
        assert_eq!(key, "proxy.via");
    }
}
