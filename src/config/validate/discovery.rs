//! Validation of the discovery sections that reach outside the process:
//! `[registry.etcd]` (the shared registry) and `[services.NAME.dns]`.
//! Same rules as the rest of `validate`: every error names the line and key.

use toml::Spanned;

use crate::config::check::{duration, duration_or_zero, int, socket_addr, valid_host_chars, Cx};
use crate::config::defaults::{dns as dns_defaults, etcd as etcd_defaults};
use crate::config::raw::{RawDns, RawDnsKind, RawEtcd};
use crate::config::{ConfigError, DnsDiscovery, DnsKind, EtcdAuth, EtcdSettings};

/// `[registry.etcd]`.
pub(super) fn etcd(cx: &Cx<'_>, raw: &Spanned<RawEtcd>) -> Result<EtcdSettings, ConfigError> {
    let e = raw.get_ref();
    if e.endpoints.get_ref().is_empty() {
        return Err(cx.err_at(
            &e.endpoints,
            "registry.etcd.endpoints",
            "needs at least one endpoint, e.g. [\"http://127.0.0.1:2379\"]",
        ));
    }
    let mut endpoints = Vec::with_capacity(e.endpoints.get_ref().len());
    for (i, s) in e.endpoints.get_ref().iter().enumerate() {
        let key = format!("registry.etcd.endpoints[{i}]");
        let uri = endpoint(s.get_ref()).map_err(|m| cx.err_at(s, &key, m))?;
        if endpoints.contains(&uri) {
            return Err(cx.err_at(s, key, format!("{uri} is listed twice")));
        }
        endpoints.push(uri);
    }
    let prefix = match &e.prefix {
        None => etcd_defaults::PREFIX.to_owned(),
        Some(p) => {
            let v = p.get_ref();
            if !v.starts_with('/') || v.chars().any(char::is_whitespace) {
                return Err(cx.err_at(
                    p,
                    "registry.etcd.prefix",
                    format!("{v:?}: a key prefix starts with '/' and has no spaces, e.g. \"/wayfinder/\""),
                ));
            }
            if v.ends_with('/') {
                v.clone()
            } else {
                format!("{v}/")
            }
        }
    };
    let password = match (&e.password, &e.password_env) {
        (Some(p), Some(_)) => {
            return Err(cx.err_at(
                p,
                "registry.etcd.password",
                "set password or password_env, not both",
            ))
        }
        (Some(p), None) => Some((p.get_ref().clone(), p.span())),
        // Only checking (`wayfinder check`) with the variable unset: an
        // empty password stands in for it.
        (None, Some(var)) => Some((
            cx.env_var(var, "registry.etcd.password_env")?
                .unwrap_or_default(),
            var.span(),
        )),
        (None, None) => None,
    };
    let auth = match (&e.username, password) {
        (Some(u), Some((password, _))) if !u.get_ref().is_empty() => Some(EtcdAuth {
            username: u.get_ref().clone(),
            password,
        }),
        (Some(u), _) => {
            return Err(cx.err_at(
                u,
                "registry.etcd.username",
                "a non-empty username needs a password (password or password_env)",
            ))
        }
        (None, Some((_, span))) => {
            return Err(cx.err(
                Some(span),
                "registry.etcd.password",
                "a password needs a username",
            ))
        }
        (None, None) => None,
    };
    Ok(EtcdSettings {
        endpoints,
        prefix,
        auth,
        dial_timeout: duration(
            cx,
            &e.dial_timeout,
            "registry.etcd.dial_timeout",
            etcd_defaults::DIAL_TIMEOUT,
        )?,
        request_timeout: duration(
            cx,
            &e.request_timeout,
            "registry.etcd.request_timeout",
            etcd_defaults::REQUEST_TIMEOUT,
        )?,
    })
}

/// `http://host[:port]` (no path, no query) as a URI with an explicit port.
fn endpoint(s: &str) -> Result<http::Uri, String> {
    let bad = || format!("{s:?} is not an etcd client URL like \"http://127.0.0.1:2379\"");
    let uri: http::Uri = s.parse().map_err(|_| bad())?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(format!(
                "{s:?}: https endpoints are not supported (no TLS client); use http:// on a \
                 trusted network or a local TLS-terminating proxy"
            ))
        }
        _ => return Err(bad()),
    }
    let authority = uri.authority().ok_or_else(bad)?;
    let path_ok = matches!(uri.path(), "" | "/") && uri.query().is_none();
    if !path_ok || authority.as_str().contains('@') {
        return Err(bad());
    }
    let port = authority.port_u16().unwrap_or(etcd_defaults::PORT);
    if port == 0 {
        return Err(format!("{s:?}: port 0 cannot be an etcd endpoint"));
    }
    format!("http://{}:{port}", authority.host())
        .parse()
        .map_err(|_| bad())
}

/// `[services.NAME.dns]`; `key` is its dotted path.
pub(super) fn dns(
    cx: &Cx<'_>,
    raw: &Spanned<RawDns>,
    key: &str,
) -> Result<DnsDiscovery, ConfigError> {
    let d = raw.get_ref();
    let name = d.name.get_ref();
    let bare = name.strip_suffix('.').unwrap_or(name);
    if bare.len() > 253 || !valid_host_chars(bare) {
        return Err(cx.err_at(
            &d.name,
            format!("{key}.name"),
            format!("{name:?} is not a DNS name (e.g. \"api.service.consul\" or \"_http._tcp.api.example.com\")"),
        ));
    }
    let kind = match (d.kind, &d.port) {
        (RawDnsKind::A, None) => {
            return Err(cx.err_at(
                raw,
                format!("{key}.port"),
                "kind = \"a\" needs the instances' port, e.g. port = 8080",
            ))
        }
        (RawDnsKind::A, Some(_)) => DnsKind::A {
            port: int(cx, &d.port, &format!("{key}.port"), 0, 1..=65535)?,
        },
        (RawDnsKind::Srv, Some(p)) => {
            return Err(cx.err_at(
                p,
                format!("{key}.port"),
                "SRV records carry their own ports; remove port (or use kind = \"a\")",
            ))
        }
        (RawDnsKind::Srv, None) => DnsKind::Srv,
    };
    let nameserver = match &d.nameserver {
        None => None,
        Some(s) => {
            let addr = socket_addr(cx, s, &format!("{key}.nameserver"))?;
            if addr.port() == 0 {
                return Err(cx.err_at(
                    s,
                    format!("{key}.nameserver"),
                    "port 0 cannot be a nameserver",
                ));
            }
            Some(addr)
        }
    };
    let min_refresh = duration(
        cx,
        &d.min_refresh,
        &format!("{key}.min_refresh"),
        dns_defaults::MIN_REFRESH,
    )?;
    let max_refresh = duration(
        cx,
        &d.max_refresh,
        &format!("{key}.max_refresh"),
        dns_defaults::MAX_REFRESH,
    )?;
    if max_refresh < min_refresh {
        let at = d
            .max_refresh
            .as_ref()
            .or(d.min_refresh.as_ref())
            .map(Spanned::span);
        return Err(cx.err(
            at,
            format!("{key}.max_refresh"),
            format!("max_refresh ({max_refresh:?}) is shorter than min_refresh ({min_refresh:?})"),
        ));
    }
    Ok(DnsDiscovery {
        name: name.clone(),
        kind,
        nameserver,
        min_refresh,
        max_refresh,
        // Zero is allowed: empty the set at the first NXDOMAIN.
        nxdomain_grace: duration_or_zero(&d.nxdomain_grace, dns_defaults::NXDOMAIN_GRACE),
    })
}

#[cfg(test)]
mod tests {
    use crate::config::test_util::{err, parse};
    use crate::config::DnsKind;

    #[test]
    fn etcd_section_parses_with_defaults() {
        let c =
            parse("[registry.etcd]\nendpoints = [\"http://127.0.0.1:2379\", \"http://etcd-2\"]\n")
                .unwrap();
        let e = c.startup.registry.etcd.unwrap();
        assert_eq!(e.endpoints[1].to_string(), "http://etcd-2:2379/");
        assert_eq!(e.prefix, "/wayfinder/");
        assert_eq!(e.dial_timeout, std::time::Duration::from_secs(2));
        assert_eq!(e.request_timeout, std::time::Duration::from_secs(5));
        assert!(e.auth.is_none());
        let c = parse("[registry.etcd]\nendpoints = [\"http://[::1]:2379\"]\nprefix = \"/x\"\nusername = \"u\"\npassword = \"secret\"\n").unwrap();
        let e = c.startup.registry.etcd.unwrap();
        assert_eq!(e.prefix, "/x/");
        let auth = e.auth.unwrap();
        assert_eq!(auth.username, "u");
        assert!(!format!("{auth:?}").contains("secret"));
    }

    #[test]
    fn etcd_mistakes_are_named() {
        let (line, key, msg) =
            err("[registry.etcd]\nendpoints = [\n \"https://127.0.0.1:2379\"]\n");
        assert_eq!((line, key.as_str()), (3, "registry.etcd.endpoints[0]"));
        assert!(msg.contains("https"), "{msg}");
        let (_, key, _) = err("[registry.etcd]\nendpoints = [\"http://h:1/v3\"]\n");
        assert_eq!(key, "registry.etcd.endpoints[0]");
        let (_, key, _) = err("[registry.etcd]\nendpoints = []\n");
        assert_eq!(key, "registry.etcd.endpoints");
        let (_, key, _) = err("[registry.etcd]\nendpoints = [\"http://h\"]\nprefix = \"x/\"\n");
        assert_eq!(key, "registry.etcd.prefix");
        let (_, key, _) = err("[registry.etcd]\nendpoints = [\"http://h\"]\nusername = \"u\"\n");
        assert_eq!(key, "registry.etcd.username");
        let (_, key, _) = err("[registry.etcd]\nendpoints = [\"http://h\"]\npassword = \"p\"\n");
        assert_eq!(key, "registry.etcd.password");
        let (_, key, msg) = err("[registry.etcd]\nendpoints = [\"http://h\"]\nendpoint = 1\n");
        assert!(msg.contains("unknown field"), "{key}: {msg}");
        let (_, key, _) = err(
            "[registry]\nstate_file = \"s.json\"\n[registry.etcd]\nendpoints = [\"http://h\"]\n",
        );
        assert_eq!(key, "registry.state_file");
    }

    #[test]
    fn dns_section_parses_with_defaults() {
        let c = parse("[services.a.dns]\nname = \"a.example.com.\"\nkind = \"a\"\nport = 8080\nnameserver = \"127.0.0.1:5353\"\n").unwrap();
        let d = c.services["a"].dns.clone().unwrap();
        assert_eq!(d.kind, DnsKind::A { port: 8080 });
        assert_eq!(d.nameserver, Some("127.0.0.1:5353".parse().unwrap()));
        assert_eq!(d.min_refresh, std::time::Duration::from_secs(1));
        assert_eq!(d.max_refresh, std::time::Duration::from_secs(60));
        assert_eq!(d.nxdomain_grace, std::time::Duration::from_secs(30));
        let c = parse("[services.a.dns]\nname = \"_http._tcp.a.test\"\nkind = \"srv\"\nnxdomain_grace = \"0s\"\n").unwrap();
        let d = c.services["a"].dns.clone().unwrap();
        assert_eq!(d.kind, DnsKind::Srv);
        assert!(d.nxdomain_grace.is_zero());
    }

    #[test]
    fn dns_mistakes_are_named() {
        let (line, key, _) = err("[services.a.dns]\nname = \"a.test\"\nkind = \"a\"\n");
        assert_eq!((line, key.as_str()), (1, "services.a.dns.port"));
        let (line, key, _) =
            err("[services.a.dns]\nname = \"a.test\"\nkind = \"srv\"\nport = 80\n");
        assert_eq!((line, key.as_str()), (4, "services.a.dns.port"));
        let (_, key, _) = err("[services.a.dns]\nname = \"a test\"\nkind = \"srv\"\n");
        assert_eq!(key, "services.a.dns.name");
        let (_, key, msg) = err("[services.a.dns]\nname = \"a.test\"\nkind = \"aaaa\"\n");
        assert!(msg.contains("srv"), "{key}: {msg}");
        let (_, key, _) = err("[services.a.dns]\nname = \"a.test\"\nkind = \"srv\"\nmin_refresh = \"10s\"\nmax_refresh = \"1s\"\n");
        assert_eq!(key, "services.a.dns.max_refresh");
        let (_, key, _) = err(
            "[services.a.dns]\nname = \"a.test\"\nkind = \"srv\"\nnameserver = \"localhost\"\n",
        );
        assert_eq!(key, "services.a.dns.nameserver");
    }
}
