//! What a request asks of the balancer, for both codecs: the pools to try
//! (a header's or cookie's subset, the route's `match_tags` or its split's
//! share, then the other shares) and, for `consistent_hash`, the hash of
//! its key (a header, a cookie, the client's address or the path), and
//! the instance its sticky cookie names. Read
//! from the head's fields as either codec holds them, without allocating.
//! Also whether a request may be hedged ([`hedge_after`]), which both
//! codecs ask: the fast path hands such requests to hyper's, which hedges.

use super::policy::Fields;
use crate::balance::Choice;
use crate::config::{pair_hash, stable_hash, Balance, HashKey, RequestValue};
use crate::registry::{instance_hash, ServiceEntry};
use crate::router::TrafficRule;

/// The choice for a request to `service` on a route with `rule`.
pub(crate) fn choice<F: Fields + ?Sized>(
    service: &ServiceEntry,
    rule: Option<&TrafficRule>,
    fields: &F,
    path: &str,
    client_ip: &str,
) -> Choice {
    let mut c = Choice::ANY;
    if let Some(rule) = rule {
        let mut chosen = false;
        if let Some(sb) = rule.subset_by() {
            if let Some(i) = value(fields, &sb.from)
                .and_then(|v| service.pool_index(pair_hash(sb.tag.as_bytes(), v)))
            {
                c.then_pool(i);
                chosen = true;
            }
        }
        if let Some(fp) = rule.match_tags() {
            match service.pool_index(fp) {
                Some(i) => c.then_pool(i),
                None => c.pool_missing(),
            }
        } else if rule.splits() {
            let mut any = false;
            rule.split_order(|fp| {
                if let Some(i) = service.pool_index(fp) {
                    c.then_pool(i);
                    any = true;
                }
            });
            if !any {
                c.pool_missing();
            }
        } else if chosen {
            // The header's subset first, then every instance.
            c.then_pool(0);
        }
    }
    if let Some(name) = &service.policy().traffic.sticky_cookie {
        if let Some(id) = cookie(fields, name.as_bytes()).and_then(parse_hex) {
            c.set_sticky(id);
        }
    }
    if service.balance() == Balance::ConsistentHash {
        let key = match &service.policy().traffic.hash.key {
            HashKey::Header(name) => header(fields, name.as_bytes()),
            HashKey::Cookie(name) => cookie(fields, name.as_bytes()),
            HashKey::ClientAddress => Some(client_ip.as_bytes()),
            HashKey::Path => Some(path.split('?').next().unwrap_or(path).as_bytes()),
        };
        if let Some(k) = key {
            c.set_hash(stable_hash(k));
        }
    }
    c
}

/// After how long a request to `service` with `method` gets a second
/// attempt beside a first one still waiting: only when the service sets
/// `hedge_after`, the method is safe (GET, HEAD, OPTIONS, TRACE: sending
/// it twice at once changes nothing) and the request has no body.
pub(crate) fn hedge_after(
    service: &ServiceEntry,
    method: &str,
    bodyless: bool,
) -> Option<std::time::Duration> {
    let after = service.policy().traffic.hedge_after?;
    (bodyless && matches!(method, "GET" | "HEAD" | "OPTIONS" | "TRACE")).then_some(after)
}

/// The `Set-Cookie` value that keeps the client on the instance at
/// `addr`, when `service` has a sticky cookie and the request's did not
/// already name that instance.
pub(crate) fn sticky_cookie(
    service: &ServiceEntry,
    choice: &Choice,
    addr: std::net::SocketAddr,
) -> Option<String> {
    let name = service.policy().traffic.sticky_cookie.as_ref()?;
    let id = instance_hash(addr);
    (choice.sticky() != Some(id)).then(|| format!("{name}={id:016x}; Path=/; HttpOnly"))
}

/// A cookie value of 16 hex digits.
fn parse_hex(v: &[u8]) -> Option<u64> {
    if v.len() != 16 {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(v).ok()?, 16).ok()
}

/// The value `from` names in the request.
fn value<'f, F: Fields + ?Sized>(fields: &'f F, from: &RequestValue) -> Option<&'f [u8]> {
    match from {
        RequestValue::Header(name) => header(fields, name.as_bytes()),
        RequestValue::Cookie(name) => cookie(fields, name.as_bytes()),
    }
}

/// The first `name` field's value, trimmed.
fn header<'f, F: Fields + ?Sized>(fields: &'f F, name: &[u8]) -> Option<&'f [u8]> {
    (0..fields.len())
        .find(|&i| fields.name(i).eq_ignore_ascii_case(name))
        .map(|i| fields.value(i).trim_ascii())
        .filter(|v| !v.is_empty())
}

/// The value of cookie `name` in the `Cookie` fields.
fn cookie<'f, F: Fields + ?Sized>(fields: &'f F, name: &[u8]) -> Option<&'f [u8]> {
    (0..fields.len())
        .filter(|&i| fields.name(i).eq_ignore_ascii_case(b"cookie"))
        .flat_map(|i| fields.value(i).split(|&b| b == b';'))
        .find_map(|pair| {
            let pair = pair.trim_ascii();
            let eq = pair.iter().position(|&b| b == b'=')?;
            (pair[..eq].trim_ascii() == name).then(|| pair[eq + 1..].trim_ascii())
        })
        .filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(list: &[(&'static str, &'static str)]) -> Vec<(http::HeaderName, http::HeaderValue)> {
        list.iter()
            .map(|(n, v)| {
                (
                    http::HeaderName::from_static(n),
                    http::HeaderValue::from_static(v),
                )
            })
            .collect()
    }

    /// Issue 17: a 95/5 split holds within 1% over 100,000 requests (it is
    /// exact over every 100), a header names its subset whatever the
    /// split says, and a share with no instance passes to the other.
    #[test]
    fn split_holds_and_header_overrides() {
        use crate::balance::{pick_with, Tried};
        use crate::config::Config;
        use crate::registry::Registry;
        let text = "[[routes]]\nservice = \"s\"\n\
            split = [{ tags = { version = \"1\" }, weight = 95 }, { tags = { version = \"2\" }, weight = 5 }]\n\
            subset_by = { header = \"x-version\", tag = \"version\" }\n\
            [services.s]\ninstances = [\n\
            { address = \"127.0.0.1:1\", tags = { version = \"1\" } },\n\
            { address = \"127.0.0.1:2\", tags = { version = \"1\" } },\n\
            { address = \"127.0.0.1:3\", tags = { version = \"2\" } },\n]\n";
        let reg = Registry::new(&Config::parse(text, std::path::Path::new("t.toml")).unwrap());
        let snap = reg.load();
        let svc = snap.service("s").unwrap();
        let route = snap.router().route(Some("x"), "/").unwrap();
        let now = crate::clock::now_ms();
        let none = fields(&[]);
        let v2 = |f: &[(http::HeaderName, http::HeaderValue)]| {
            let c = choice(svc, route.traffic, f, "/", "10.0.0.1");
            let g = pick_with(svc, &c, now, &Tried::default()).unwrap();
            g.instance().addr().port() == 3
        };
        let n = 100_000;
        let canary = (0..n).filter(|_| v2(&none)).count();
        let share = canary as f64 / n as f64;
        println!(
            "split 95/5: {canary} of {n} requests to version 2 ({:.3}%)",
            share * 100.0
        );
        assert!((share - 0.05).abs() < 0.01, "{share}");
        assert_eq!(canary, 5_000, "exact over whole rounds");
        let asked = fields(&[("x-version", "2")]);
        assert!((0..100).all(|_| v2(&asked)), "the header's subset");
        let other = fields(&[("x-version", "9")]);
        assert_eq!(
            (0..100).filter(|_| v2(&other)).count(),
            5,
            "unknown value: the split"
        );
        // Version 2 drained: its share goes to version 1.
        svc.members()[2].instance.set_draining(true, "test");
        assert_eq!((0..100).filter(|_| v2(&none)).count(), 0);
        let c = choice(svc, route.traffic, &none[..], "/", "10.0.0.1");
        assert!(pick_with(svc, &c, now, &Tried::default()).is_ok());
    }

    /// Only safe methods without a body are hedged, and only where the
    /// service asks for it.
    #[test]
    fn hedging_takes_safe_bodyless_requests_only() {
        use crate::config::Config;
        use crate::registry::Registry;
        let text = "[services.h]\ninstances = [\"127.0.0.1:1\"]\nhedge_after = \"30ms\"\n\
                    [services.n]\ninstances = [\"127.0.0.1:2\"]\n";
        let reg = Registry::new(&Config::parse(text, std::path::Path::new("t.toml")).unwrap());
        let snap = reg.load();
        let (h, n) = (snap.service("h").unwrap(), snap.service("n").unwrap());
        let after = Some(std::time::Duration::from_millis(30));
        for m in ["GET", "HEAD", "OPTIONS", "TRACE"] {
            assert_eq!(hedge_after(h, m, true), after, "{m}");
            assert_eq!(hedge_after(h, m, false), None, "{m} with a body");
            assert_eq!(hedge_after(n, m, true), None, "{m}: not asked");
        }
        for m in ["POST", "PUT", "DELETE", "PATCH"] {
            assert_eq!(hedge_after(h, m, true), None, "{m}");
        }
    }

    #[test]
    fn reads_headers_and_cookies() {
        let f = fields(&[
            ("x-user", " alice "),
            ("cookie", "a=1; session=s3cr3t"),
            ("cookie", "b=2"),
        ]);
        assert_eq!(header(&f[..], b"X-User"), Some(&b"alice"[..]));
        assert_eq!(header(&f[..], b"x-none"), None);
        assert_eq!(cookie(&f[..], b"session"), Some(&b"s3cr3t"[..]));
        assert_eq!(cookie(&f[..], b"b"), Some(&b"2"[..]));
        assert_eq!(cookie(&f[..], b"sess"), None);
    }
}
