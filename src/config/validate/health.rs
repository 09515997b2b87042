//! `[services.NAME.health]`: the active check of a service's instances
//! (kind, request, statuses that pass, timing, thresholds).

use toml::Spanned;

use crate::config::check::Cx;
use crate::config::defaults;
use crate::config::raw::{RawCheckKind, RawHealth, RawInitial};
use crate::config::{CheckKind, HealthCheck};

/// `[services.NAME.health]`.
pub(super) fn check(cx: &Cx<'_>, raw: &Spanned<RawHealth>, key: &str) -> HealthCheck {
    use defaults::health as d;
    let h = raw.get_ref();
    let interval = cx.duration_or(&h.interval, &format!("{key}.interval"), d::INTERVAL);
    let default_timeout = d::TIMEOUT.min(interval / 2);
    let timeout = cx.duration_or(&h.timeout, &format!("{key}.timeout"), default_timeout);
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
        RawCheckKind::Http => http_check(cx, raw, key),
    };
    let threshold = |v: &Option<Spanned<i64>>, name: &str, default: u32| {
        cx.int_or(v, &format!("{key}.{name}"), default, 1..=100)
    };
    let default_jitter = interval / d::JITTER_DIVISOR;
    HealthCheck {
        kind,
        interval,
        timeout,
        healthy_threshold: threshold(
            &h.healthy_threshold,
            "healthy_threshold",
            d::HEALTHY_THRESHOLD,
        ),
        unhealthy_threshold: threshold(
            &h.unhealthy_threshold,
            "unhealthy_threshold",
            d::UNHEALTHY_THRESHOLD,
        ),
        jitter: match &h.jitter {
            None => default_jitter,
            Some(j) if j.get_ref().0 >= interval => {
                cx.push(cx.err_at(j, format!("{key}.jitter"), "must be shorter than interval"));
                default_jitter
            }
            Some(j) => j.get_ref().0,
        },
        start_healthy: matches!(h.initial, Some(RawInitial::Healthy)),
    }
}

/// The request of a `kind = "http"` check: path, method, Host, and the
/// statuses that pass.
fn http_check(cx: &Cx<'_>, raw: &Spanned<RawHealth>, key: &str) -> CheckKind {
    use defaults::health as d;
    let h = raw.get_ref();
    let path = match &h.path {
        None => d::PATH.to_owned(),
        Some(p)
            if p.get_ref().starts_with('/')
                && http::uri::PathAndQuery::try_from(p.get_ref().as_str()).is_ok() =>
        {
            p.get_ref().clone()
        }
        Some(p) => {
            cx.push(cx.err_at(p, format!("{key}.path"), "must be a path starting with '/'"));
            d::PATH.to_owned()
        }
    };
    let method = match &h.method {
        None => d::METHOD,
        Some(m) => match http::Method::from_bytes(m.get_ref().to_ascii_uppercase().as_bytes()) {
            Ok(method) => method,
            Err(_) => {
                cx.push(cx.err_at(m, format!("{key}.method"), "not an HTTP method"));
                d::METHOD
            }
        },
    };
    let host = match &h.host {
        None => None,
        Some(v) if http::HeaderValue::from_str(v.get_ref()).is_ok() && !v.get_ref().is_empty() => {
            Some(v.get_ref().clone())
        }
        Some(v) => {
            cx.push(cx.err_at(v, format!("{key}.host"), "not a usable Host header value"));
            None
        }
    };
    let expect = match &h.expect {
        None => vec![d::EXPECT],
        Some(list) if list.is_empty() => {
            cx.push(cx.err_at(
                raw,
                format!("{key}.expect"),
                "needs at least one status or range, e.g. [\"200-399\"]",
            ));
            vec![d::EXPECT]
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
                        format!(
                            "{:?} is not a status (\"204\") or range (\"200-399\") within 100-599",
                            r.get_ref()
                        ),
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::test_util::{err, parse};
    use crate::config::CheckKind;

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
