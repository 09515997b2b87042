//! Routing: maps a request's Host and path to the name of a service.
//!
//! Precedence, first match wins:
//! 1. Explicit `[[routes]]`, most specific host first: exact host, then
//!    wildcard hosts (`*.example.com`, longest suffix first), then routes with
//!    no host. Within a host, the longest matching path prefix wins. Prefixes
//!    match whole segments: `/api` matches `/api`, `/api/x` and `/api?q`, not
//!    `/apis`.
//! 2. The host convention: Host `NAME` + a configured suffix (`NAME.svc`).
//! 3. The path convention (when enabled): `/NAME/rest`, forwarded as `/rest`.
//!
//! A route with no host and path `/` therefore catches everything and leaves
//! nothing to the conventions. The router does not know whether the service
//! exists; the registry snapshot answers that.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use crate::config::{check_service_name, Config, HostMatch, RequireTls, RouteTraffic, SubsetBy};

/// The routing table built from one config.
#[derive(Debug, PartialEq)]
pub struct Router {
    exact: HashMap<String, Vec<PathRule>>,
    /// Longest suffix first.
    wildcard: Vec<(String, Vec<PathRule>)>,
    any: Vec<PathRule>,
    host_suffixes: Vec<String>,
    path_convention: bool,
    /// Upgrade protocols for routes that do not list their own, and for
    /// the conventions.
    default_upgrades: Vec<String>,
}

/// One path rule under a host; rules are kept longest prefix first.
#[derive(Debug, PartialEq)]
struct PathRule {
    prefix: String,
    strip: bool,
    service: Arc<str>,
    upgrades: Option<Vec<String>>,
    require_tls: Option<RequireTls>,
    traffic: Option<TrafficRule>,
}

/// What a route asks of its service's instances, ready for requests: the
/// fingerprints of the subsets it names, and the split's rotation.
#[derive(Debug)]
pub struct TrafficRule {
    /// `match_tags`' fingerprint.
    match_tags: Option<u64>,
    /// The split: each entry's fingerprint and the end of its range in
    /// `0..split_total`.
    split: Box<[(u64, u32)]>,
    split_total: u32,
    /// Requests the split has shared so far.
    cursor: AtomicUsize,
    /// `subset_by`.
    subset_by: Option<SubsetBy>,
    /// As configured (what two rules are compared by).
    config: RouteTraffic,
}

/// Steps through a split's range in an order that spreads each share out
/// (a prime larger than any range, so every position comes once per
/// round of `split_total` requests).
const SPLIT_STRIDE: u64 = 1_000_003;

impl TrafficRule {
    fn new(t: &RouteTraffic) -> Option<TrafficRule> {
        if t.is_empty() {
            return None;
        }
        let mut end = 0;
        let split = t
            .split
            .iter()
            .map(|e| {
                end += e.weight;
                (e.tags.fingerprint, end)
            })
            .collect();
        Some(TrafficRule {
            match_tags: t.match_tags.as_ref().map(|m| m.fingerprint),
            split,
            split_total: end,
            cursor: AtomicUsize::new(0),
            subset_by: t.subset_by.clone(),
            config: t.clone(),
        })
    }

    /// The fingerprint of the route's `match_tags`.
    pub fn match_tags(&self) -> Option<u64> {
        self.match_tags
    }

    /// `subset_by`, if set.
    pub fn subset_by(&self) -> Option<&SubsetBy> {
        self.subset_by.as_ref()
    }

    /// Whether the route splits.
    pub fn splits(&self) -> bool {
        !self.split.is_empty()
    }

    /// Takes the split's next turn: calls `each` with the fingerprint of
    /// the share this request belongs to, then with the others in order
    /// (where it goes if its share has no instance left). Over every
    /// `sum of weights` requests each share gets exactly its weight.
    pub fn split_order(&self, mut each: impl FnMut(u64)) {
        if self.split.is_empty() || self.split_total == 0 {
            return;
        }
        let total = u64::from(self.split_total);
        let n = self.cursor.fetch_add(1, Relaxed) as u64 % total;
        let at = (n * SPLIT_STRIDE % total) as u32;
        let chosen = self
            .split
            .iter()
            .position(|&(_, end)| at < end)
            .unwrap_or(0);
        each(self.split[chosen].0);
        for (i, &(fp, end)) in self.split.iter().enumerate() {
            let weight = end - if i == 0 { 0 } else { self.split[i - 1].1 };
            if i != chosen && weight > 0 {
                each(fp);
            }
        }
    }
}

impl PartialEq for TrafficRule {
    fn eq(&self, other: &Self) -> bool {
        self.config == other.config
    }
}

impl Eq for TrafficRule {}

/// Where a request goes.
#[derive(Debug, PartialEq, Eq)]
pub struct RouteTarget<'a> {
    /// The service name.
    pub(crate) service: Cow<'a, str>,
    /// How many leading bytes of the path to remove before forwarding.
    pub strip: usize,
    /// The upgrade protocols forwarded on this route (lower case).
    pub(crate) upgrades: &'a [String],
    /// What a plain-HTTP request on this route gets, if not served.
    pub(crate) require_tls: Option<RequireTls>,
    /// The route's subsets and split, if it has any.
    pub(crate) traffic: Option<&'a TrafficRule>,
}

impl RouteTarget<'_> {
    /// Whether an upgrade to `protocol` (a name, any case) is forwarded.
    pub(crate) fn allows_upgrade(&self, protocol: &[u8]) -> bool {
        self.upgrades
            .iter()
            .any(|p| p.as_bytes().eq_ignore_ascii_case(protocol))
    }
}

impl Router {
    /// Builds the table for `config`'s routes and conventions.
    pub(crate) fn new(config: &Config) -> Router {
        let mut exact: HashMap<String, Vec<PathRule>> = HashMap::new();
        let mut wildcard: Vec<(String, Vec<PathRule>)> = Vec::new();
        let mut any = Vec::new();
        for r in &config.routes {
            let rule = PathRule {
                prefix: r.path.clone(),
                strip: r.strip_prefix,
                service: r.service.clone(),
                upgrades: r.upgrades.clone(),
                require_tls: r.require_tls,
                traffic: TrafficRule::new(&r.traffic),
            };
            match &r.host {
                HostMatch::Any => any.push(rule),
                HostMatch::Exact(h) => exact.entry(h.clone()).or_default().push(rule),
                HostMatch::Suffix(s) => match wildcard.iter_mut().find(|(x, _)| x == s) {
                    Some((_, rules)) => rules.push(rule),
                    None => wildcard.push((s.clone(), vec![rule])),
                },
            }
        }
        let by_len =
            |rules: &mut Vec<PathRule>| rules.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        exact.values_mut().for_each(by_len);
        wildcard.iter_mut().for_each(|(_, r)| by_len(r));
        by_len(&mut any);
        wildcard.sort_by_key(|w| std::cmp::Reverse(w.0.len()));
        Router {
            exact,
            wildcard,
            any,
            host_suffixes: config.conventions.host_suffixes.clone(),
            path_convention: config.conventions.path,
            default_upgrades: config.proxy.upgrades.clone(),
        }
    }

    /// Routes a request. `host` is the Host header or URI authority as sent
    /// (any case, with or without port); `path` is the URI path.
    pub fn route<'a>(&'a self, host: Option<&'a str>, path: &str) -> Option<RouteTarget<'a>> {
        let host = host.map(normalize_host);
        if let Some(t) = self.explicit(host.as_deref(), path) {
            return Some(t);
        }
        if let Some(host) = &host {
            for suffix in &self.host_suffixes {
                if let Some(name) = strip_suffix(host, suffix) {
                    if check_service_name(name).is_ok() {
                        let service = match host {
                            Cow::Borrowed(h) => Cow::Borrowed(&h[..name.len()]),
                            Cow::Owned(_) => Cow::Owned(name.to_owned()),
                        };
                        return Some(RouteTarget {
                            service,
                            strip: 0,
                            upgrades: &self.default_upgrades,
                            require_tls: None,
                            traffic: None,
                        });
                    }
                }
            }
        }
        if self.path_convention {
            let rest = path.strip_prefix('/')?;
            let name = rest.split('/').next().unwrap_or("");
            if check_service_name(name).is_ok() {
                return Some(RouteTarget {
                    service: Cow::Owned(name.to_owned()),
                    strip: 1 + name.len(),
                    upgrades: &self.default_upgrades,
                    require_tls: None,
                    traffic: None,
                });
            }
        }
        None
    }

    fn explicit(&self, host: Option<&str>, path: &str) -> Option<RouteTarget<'_>> {
        if let Some(host) = host {
            if let Some(t) = self
                .exact
                .get(host)
                .and_then(|rules| self.match_path(rules, path))
            {
                return Some(t);
            }
            for (suffix, rules) in &self.wildcard {
                if strip_suffix(host, suffix).is_some() {
                    if let Some(t) = self.match_path(rules, path) {
                        return Some(t);
                    }
                }
            }
        }
        self.match_path(&self.any, path)
    }

    fn match_path<'a>(&'a self, rules: &'a [PathRule], path: &str) -> Option<RouteTarget<'a>> {
        rules
            .iter()
            .find(|r| prefix_matches(&r.prefix, path))
            .map(|r| RouteTarget {
                service: Cow::Borrowed(&r.service),
                strip: if r.strip && r.prefix != "/" {
                    r.prefix.len()
                } else {
                    0
                },
                upgrades: r.upgrades.as_deref().unwrap_or(&self.default_upgrades),
                require_tls: r.require_tls,
                traffic: r.traffic.as_ref(),
            })
    }
}

/// Whether `prefix` (no trailing slash unless it is "/") covers `path` on a
/// segment boundary.
#[inline]
fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// `host` minus a `.suffix`, when something remains.
fn strip_suffix<'h>(host: &'h str, suffix: &str) -> Option<&'h str> {
    host.strip_suffix(suffix).filter(|n| !n.is_empty())
}

/// Lower-cases (allocating only when needed) and removes a port and a
/// trailing dot.
fn normalize_host(host: &str) -> Cow<'_, str> {
    let without_port = if host.starts_with('[') {
        host.find(']').map_or(host, |end| &host[..=end])
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    let h = without_port.strip_suffix('.').unwrap_or(without_port);
    if h.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(h.to_ascii_lowercase())
    } else {
        Cow::Borrowed(h)
    }
}

/// Applies a route's prefix stripping to a path-and-query; an empty result
/// becomes "/".
pub(crate) fn strip_path(path_and_query: &str, strip: usize) -> Cow<'_, str> {
    if strip == 0 {
        return Cow::Borrowed(path_and_query);
    }
    let rest = &path_and_query[strip.min(path_and_query.len())..];
    if rest.starts_with('/') {
        Cow::Borrowed(rest)
    } else {
        Cow::Owned(format!("/{rest}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn router(routes: &str, conventions: &str) -> Router {
        let text = format!(
            "{conventions}\n{routes}\n[services.a]\ninstances = [\"127.0.0.1:1\"]\n[services.b]\ninstances = [\"127.0.0.1:2\"]\n[services.c]\ninstances = [\"127.0.0.1:3\"]\n"
        );
        Router::new(&Config::parse(&text, Path::new("t.toml")).unwrap())
    }

    fn svc<'a>(r: &'a Router, host: &'a str, path: &str) -> Option<(String, usize)> {
        r.route(Some(host), path)
            .map(|t| (t.service.into_owned(), t.strip))
    }

    const ROUTES: &str = r#"
[[routes]]
host = "api.example.com"
path = "/v1"
service = "a"
[[routes]]
host = "*.example.com"
service = "b"
[[routes]]
host = "*.eu.example.com"
service = "c"
[[routes]]
path = "/static"
strip_prefix = true
service = "c"
"#;

    #[test]
    fn exact_beats_wildcard_and_longest_suffix_wins() {
        let r = router(ROUTES, "");
        assert_eq!(
            svc(&r, "api.example.com", "/v1/users"),
            Some(("a".into(), 0))
        );
        assert_eq!(
            svc(&r, "API.Example.com:8080", "/v1"),
            Some(("a".into(), 0))
        );
        // Exact host, but no path rule matches: falls to the wildcard.
        assert_eq!(svc(&r, "api.example.com", "/v2"), Some(("b".into(), 0)));
        assert_eq!(svc(&r, "x.eu.example.com", "/"), Some(("c".into(), 0)));
        assert_eq!(svc(&r, "x.example.com.", "/"), Some(("b".into(), 0)));
    }

    #[test]
    fn prefixes_match_whole_segments_and_strip() {
        let r = router(ROUTES, "");
        assert_eq!(svc(&r, "other", "/static/app.js"), Some(("c".into(), 7)));
        assert_eq!(svc(&r, "other", "/static"), Some(("c".into(), 7)));
        assert_eq!(svc(&r, "other", "/staticfile"), None);
        assert_eq!(strip_path("/static/app.js?v=1", 7), "/app.js?v=1");
        assert_eq!(strip_path("/static?v=1", 7), "/?v=1");
        assert_eq!(strip_path("/static", 7), "/");
    }

    #[test]
    fn host_convention_after_routes() {
        let r = router(
            ROUTES,
            "[conventions]\nhost_suffixes = [\".svc\", \".svc.example.com\"]",
        );
        assert_eq!(svc(&r, "orders.svc", "/x"), Some(("orders".into(), 0)));
        assert_eq!(svc(&r, "Orders.SVC:80", "/x"), Some(("orders".into(), 0)));
        // *.example.com is an explicit route and wins over the convention.
        assert_eq!(
            svc(&r, "orders.svc.example.com", "/x"),
            Some(("b".into(), 0))
        );
        assert_eq!(svc(&r, "a.b.svc", "/x"), None, "a.b is not a service name");
        assert_eq!(svc(&r, ".svc", "/x"), None);
    }

    #[test]
    fn path_convention_when_enabled() {
        let r = router("", "[conventions]\npath = true");
        assert_eq!(
            svc(&r, "localhost", "/orders/items/1"),
            Some(("orders".into(), 7))
        );
        assert_eq!(svc(&r, "localhost", "/orders"), Some(("orders".into(), 7)));
        assert_eq!(svc(&r, "localhost", "/"), None);
        let off = router("", "");
        assert_eq!(svc(&off, "localhost", "/orders/x"), None);
    }

    #[test]
    fn ipv6_host_with_port() {
        assert_eq!(normalize_host("[::1]:8080"), "[::1]");
        assert_eq!(normalize_host("Example.com:80"), "example.com");
    }
}
