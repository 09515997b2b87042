//! Where a request is for: the request target (RFC 9112 section 3.2) and
//! the `Host` field, checked and reduced to the authority the proxy routes
//! by and sends on as `Host`, and the origin-form target for the instance.
//!
//! Rules, the same on both codecs:
//! - origin-form (`/path?q`): the authority is the `Host` field;
//! - absolute-form (`http://a.example/x`): the authority is the target's,
//!   and the instance gets `Host: a.example` whatever `Host` said (RFC 9112
//!   section 3.2.2);
//! - authority-form is only for `CONNECT`, which the proxy answers with 405;
//! - asterisk-form (`*`) only with `OPTIONS`;
//! - exactly one `Host` field, whose value is `uri-host [":" port]` (no
//!   user info, path, query, white space or empty value): else 400;
//! - a target over `limits.max_uri_bytes`: 414; a fragment (which a client
//!   must not send) is cut off, as hyper's URI parser does.

use std::borrow::Cow;

use super::super::error::ProxyError;
use crate::router::strip_path;

/// The authority and target of a request, after the checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Target<'a> {
    /// What routing uses and what the instance receives as `Host`.
    pub authority: &'a str,
    /// The authority came from an absolute-form target: the received
    /// `Host` line is replaced.
    pub from_target: bool,
    /// The origin-form path and query to forward (`*` for `OPTIONS *`).
    pub path_and_query: &'a str,
}

impl<'a> Target<'a> {
    /// The path the router matches (no query; `/` for `*` and for an
    /// absolute-form target with an empty path).
    pub(crate) fn path(&self) -> &'a str {
        if self.path_and_query == "*" || self.path_and_query.starts_with('?') {
            return "/";
        }
        self.path_and_query
            .split_once('?')
            .map_or(self.path_and_query, |(p, _)| p)
    }

    /// The target sent to the instance: the path and query with the
    /// route's `strip` leading bytes removed (`/` when nothing is left).
    pub(crate) fn forward(&self, strip: usize) -> Cow<'a, str> {
        match self.path_and_query {
            "*" => Cow::Borrowed("*"),
            pq if pq.starts_with('?') => Cow::Owned(format!("/{pq}")),
            pq => strip_path(pq, strip),
        }
    }
}

/// Checks a request's target and `Host` fields (`hosts`: every `Host`
/// value received) and finds its authority. With `host_optional` (HTTP/2,
/// whose `:authority` makes the target absolute) a missing `Host` is fine
/// when the target names its authority.
pub(crate) fn resolve<'a>(
    method: &str,
    target: &'a str,
    hosts: &[&'a [u8]],
    max_uri_bytes: usize,
    host_optional: bool,
) -> Result<Target<'a>, ProxyError> {
    if target.len() > max_uri_bytes {
        return Err(ProxyError::UriTooLong {
            size: target.len(),
            limit: max_uri_bytes,
        });
    }
    if method == "CONNECT" {
        return Err(ProxyError::MethodNotAllowed("CONNECT"));
    }
    let host = match hosts {
        [] if host_optional && !target.starts_with('/') => &b"-"[..],
        [] => return Err(ProxyError::BadRequest("missing Host header")),
        [one] => *one,
        _ => return Err(ProxyError::BadRequest("more than one Host header")),
    };
    let host = std::str::from_utf8(host)
        .ok()
        .filter(|h| valid_authority(h))
        .ok_or(ProxyError::BadRequest("invalid Host header"))?;
    // One plain pass (targets are short, a char searcher costs more): the
    // fragment, and any byte no URI has (RFC 3986: visible ASCII only).
    // httparse lets obs-text through; the instance and the hyper path
    // (http::Uri) must not be left to read it each their own way.
    let mut fragment = None;
    for (i, b) in target.bytes().enumerate() {
        if !(0x21..=0x7e).contains(&b) {
            return Err(ProxyError::BadRequest(
                "request target is not visible ASCII",
            ));
        }
        if b == b'#' && fragment.is_none() {
            fragment = Some(i);
        }
    }
    let target = fragment.map_or(target, |i| &target[..i]);
    if target.starts_with('/') {
        return Ok(Target {
            authority: host,
            from_target: false,
            path_and_query: target,
        });
    }
    if target == "*" {
        return if method == "OPTIONS" {
            Ok(Target {
                authority: host,
                from_target: false,
                path_and_query: "*",
            })
        } else {
            Err(ProxyError::BadRequest(
                "asterisk-form target without OPTIONS",
            ))
        };
    }
    let Some((authority, rest)) = absolute_form(target) else {
        return Err(ProxyError::BadRequest(
            "request target is not origin-form or absolute-form",
        ));
    };
    if !valid_authority(authority) {
        return Err(ProxyError::BadRequest(
            "invalid authority in request target",
        ));
    }
    Ok(Target {
        authority,
        from_target: true,
        path_and_query: rest,
    })
}

/// Splits an `http://` or `https://` absolute-form target into its
/// authority and the path and query after it (`/` when empty; `?q` alone
/// when the path is empty but a query follows: see [`Target::forward`]).
fn absolute_form(target: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = target.split_once("://")?;
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return None;
    }
    match rest.find(['/', '?']) {
        None => Some((rest, "/")),
        Some(i) => Some((&rest[..i], &rest[i..])),
    }
}

/// Whether `s` is `uri-host [":" port]` (RFC 3986 section 3.2.2): an IP
/// literal in brackets, or a reg-name of unreserved characters,
/// percent-encodings and sub-delims, optionally followed by a decimal port.
/// Empty values, user info (`@`), paths, queries and white space are not.
/// One pass over the bytes with a table: this runs for every request.
pub(crate) fn valid_authority(s: &str) -> bool {
    let b = s.as_bytes();
    if b.first() == Some(&b'[') {
        return valid_ip_literal(b);
    }
    // The host: reg-name bytes up to the last ':' (a reg-name has none).
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if REG_NAME[usize::from(c)] {
            i += 1;
        } else if c == b'%' {
            if !(b.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && b.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
            {
                return false;
            }
            i += 3;
        } else if c == b':' {
            return i > 0 && valid_port(&b[i + 1..]);
        } else {
            return false;
        }
    }
    i > 0
}

/// `[` IPv6 or dotted hex `]` [`:` port].
fn valid_ip_literal(b: &[u8]) -> bool {
    let Some(end) = b.iter().position(|&c| c == b']') else {
        return false;
    };
    let inside = &b[1..end];
    if inside.is_empty()
        || !inside
            .iter()
            .all(|&c| c.is_ascii_hexdigit() || c == b':' || c == b'.')
    {
        return false;
    }
    match &b[end + 1..] {
        [] => true,
        [b':', port @ ..] => valid_port(port),
        _ => false,
    }
}

/// Up to five digits (RFC 3986 allows an empty port).
fn valid_port(p: &[u8]) -> bool {
    p.len() <= 5 && p.iter().all(u8::is_ascii_digit)
}

/// The bytes a reg-name takes as they are: unreserved and sub-delims.
static REG_NAME: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        t[c] = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
            );
        c += 1;
    }
    t
};

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(method: &str, target: &str, host: &str) -> Target<'static> {
        let target: &'static str = Box::leak(target.to_owned().into_boxed_str());
        let host: &'static [u8] = Box::leak(host.as_bytes().to_vec().into_boxed_slice());
        resolve(method, target, &[host], 8192, false).unwrap()
    }

    fn status(method: &str, target: &str, hosts: &[&str]) -> u16 {
        let hosts: Vec<&[u8]> = hosts.iter().map(|h| h.as_bytes()).collect();
        match resolve(method, target, &hosts, 64, false) {
            Ok(_) => 200,
            Err(e) => e.status().as_u16(),
        }
    }

    #[test]
    fn origin_and_absolute_forms() {
        let t = ok("GET", "/a/b?c", "Shop.Example:8080");
        assert_eq!(
            (t.authority, t.from_target, t.path(), t.path_and_query),
            ("Shop.Example:8080", false, "/a/b", "/a/b?c")
        );
        let t = ok("GET", "http://a.example/x?y", "b.example");
        assert_eq!(
            (t.authority, t.from_target, t.path_and_query),
            ("a.example", true, "/x?y")
        );
        let t = ok("GET", "HTTPS://a.example", "b");
        assert_eq!((t.authority, t.path_and_query), ("a.example", "/"));
        let t = ok("OPTIONS", "*", "b");
        assert_eq!((t.path_and_query, t.path()), ("*", "/"));
        let t = ok("GET", "/", "[::1]:80");
        assert_eq!(t.authority, "[::1]:80");
    }

    #[test]
    fn refusals() {
        assert_eq!(status("CONNECT", "b.example:80", &["b"]), 405);
        assert_eq!(status("GET", "b.example:80", &["b"]), 400, "authority-form");
        assert_eq!(status("GET", "*", &["b"]), 400);
        assert_eq!(status("GET", "/", &[]), 400);
        assert!(
            resolve("GET", "https://a/x", &[], 64, true).is_ok(),
            "HTTP/2"
        );
        assert!(resolve("GET", "/x", &[], 64, true).is_err());
        assert_eq!(status("GET", "/", &["a", "b"]), 400);
        assert_eq!(
            ok("GET", "/a#f", "b").path_and_query,
            "/a",
            "fragment cut off"
        );
        let q = ok("GET", "http://a?q", "b");
        assert_eq!((q.path(), q.forward(0).as_ref()), ("/", "/?q"));
        assert_eq!(status("GET", &format!("/{}", "a".repeat(64)), &["b"]), 414);
        assert_eq!(status("GET", "ftp://a/x", &["b"]), 400);
        assert_eq!(status("GET", "http://u:p@a/x", &["b"]), 400);
        for host in [
            "",
            "b.example evil",
            "b/x?y",
            "user:pw@b",
            "b:x",
            "b:123456",
            "[::1",
            "[zz]",
            ":80",
            "a\tb",
            "%zz",
            "%4",
        ] {
            assert_eq!(status("GET", "/", &[host]), 400, "{host:?}");
        }
        for host in [
            "b",
            "b.example:8080",
            "B-1.example",
            "10.0.0.1",
            "[::1]",
            "a%41b",
            "b:",
        ] {
            assert_eq!(status("GET", "/", &[host]), 200, "{host:?}");
        }
    }
}
