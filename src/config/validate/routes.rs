//! `[[routes]]`: host and path syntax, the service each names (which must
//! be declared), and no two routes matching the same host and path.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use super::{forwarding, traffic};
use crate::config::check::{valid_host_chars, Cx};
use crate::config::defaults;
use crate::config::raw::{RawRequireTls, RawRoute};
use crate::config::{check_service_name, ConfigError, HostMatch, RequireTls, Route, ServiceConfig};

/// Every route, in file order; `services` are the declared services.
pub(super) fn routes(
    cx: &Cx<'_>,
    raw: &[RawRoute],
    services: &BTreeMap<Arc<str>, ServiceConfig>,
) -> Vec<Route> {
    let mut out = Vec::with_capacity(raw.len());
    let mut seen = HashSet::new();
    let mut names = HashSet::new();
    for (i, r) in raw.iter().enumerate() {
        if let Some(route) = cx.ok(route(cx, r, i, services)) {
            if let (Some(name), Some(at)) = (&route.name, &r.name) {
                if !names.insert(name.clone()) {
                    cx.push(cx.err_at(
                        at,
                        format!("routes[{i}].name"),
                        format!("another route is already named {name:?}"),
                    ));
                    continue;
                }
            }
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

/// `routes[i]`.
fn route(
    cx: &Cx<'_>,
    r: &RawRoute,
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
        None => defaults::route::PATH.to_owned(),
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
    let Some((service_name, _)) = services.get_key_value(service.as_str()) else {
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
    let traffic = traffic::route(cx, r, &key)?;
    let name = match &r.name {
        None => None,
        Some(n) => match check_service_name(n.get_ref()) {
            Ok(()) => Some(Arc::from(n.get_ref().as_str())),
            Err(e) => {
                let e = e.replace("service name", "route name");
                return Err(cx.err_at(n, format!("{key}.name"), e));
            }
        },
    };
    Ok(Route {
        name,
        host,
        path,
        strip_prefix: r.strip_prefix,
        service: service_name.clone(),
        upgrades,
        require_tls: r.require_tls.map(|t| match t {
            RawRequireTls::Redirect => RequireTls::Redirect,
            RawRequireTls::Refuse => RequireTls::Refuse,
        }),
        traffic,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::test_util::err;

    #[test]
    fn route_to_undeclared_service() {
        let (line, key, msg) =
            err("[[routes]]\nservice = \"nope\"\n[services.a]\ninstances = [\"127.0.0.1:1\"]\n");
        assert_eq!((line, key.as_str()), (2, "routes[0].service"));
        assert!(msg.contains("declared: a"), "{msg}");
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
        let (line, key, msg) = err(&format!(
            "[[routes]]\nname = \"shop\"\npath = \"/x\"\nservice = \"a\"\n\
             [[routes]]\nname = \"shop\"\npath = \"/y\"\nservice = \"a\"\n{base}"
        ));
        assert_eq!((line, key.as_str()), (6, "routes[1].name"), "{msg}");
        let (_, key, _) = err(&format!(
            "[[routes]]\nname = \"no spaces\"\nservice = \"a\"\n{base}"
        ));
        assert_eq!(key, "routes[0].name");
    }
}
