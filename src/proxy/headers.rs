//! Header rewriting between client and instance: hop-by-hop headers are
//! removed in both directions (RFC 9110 section 7.6.1: `Connection` and every header
//! it lists, `Keep-Alive`, `Proxy-Connection`, `TE`, `Trailer`,
//! `Transfer-Encoding`, `Upgrade`), and requests gain `X-Forwarded-For`
//! (appended to any existing chain), `X-Forwarded-Proto` and
//! `X-Forwarded-Host` (kept when a proxy in front already set them), and
//! `Via`. An upgrade handshake keeps `Upgrade` and `Connection: upgrade`.

use http::header::{self, Entry, HeaderMap, HeaderName, HeaderValue};

/// `X-Forwarded-For`.
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`.
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Host`.
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static HTTP: HeaderValue = HeaderValue::from_static("http");
static UPGRADE: HeaderValue = HeaderValue::from_static("upgrade");

/// Whether `name` is hop-by-hop by definition (not counting the headers a
/// `Connection` header lists).
#[inline]
fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == KEEP_ALIVE
        || name == PROXY_CONNECTION
        || name == header::TE
        || name == header::TRAILER
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
}

/// What the proxy adds to a forwarded request.
#[derive(Debug)]
pub struct Forwarding<'a> {
    /// The client's address, already formatted.
    pub client_ip: &'a HeaderValue,
    /// The `Via` entry for this hop (`1.1 wayfinder`).
    pub via: &'a HeaderValue,
    /// The request's host (Host header or URI authority), for
    /// `X-Forwarded-Host` and, when the request has no `Host` header (HTTP/2,
    /// absolute-form), for `Host`.
    pub host: Option<HeaderValue>,
    /// The client's `Upgrade` header when the request asks for an upgrade.
    pub upgrade: Option<HeaderValue>,
}

/// The headers to send upstream for a client request with headers `src`
/// (a copy of `src` rewritten by [`rewrite_request_headers`]).
pub fn request_headers(src: &HeaderMap, fwd: &Forwarding<'_>) -> HeaderMap {
    let mut out = src.clone();
    rewrite_request_headers(&mut out, fwd);
    out
}

/// Rewrites a client request's headers in place for forwarding: removes
/// hop-by-hop headers (and `Expect`, which the proxy answers itself), joins
/// `X-Forwarded-For` and appends the client, sets `X-Forwarded-Proto`,
/// `X-Forwarded-Host` and `Host` when absent, appends `Via`. Headers that are
/// not present cost one comparison each, no hashing.
pub fn rewrite_request_headers(headers: &mut HeaderMap, fwd: &Forwarding<'_>) {
    let (mut hop, mut connection, mut has_host) = (false, false, false);
    for name in headers.keys() {
        if name == header::HOST {
            has_host = true;
        } else if name == header::CONNECTION {
            connection = true;
            hop = true;
        } else if is_hop_by_hop(name) || name == header::EXPECT {
            hop = true;
        }
    }
    if hop {
        strip_hop_by_hop(headers, connection, false);
        headers.remove(header::EXPECT);
    }
    match headers.entry(X_FORWARDED_FOR.clone()) {
        Entry::Vacant(v) => {
            v.insert(fwd.client_ip.clone());
        }
        Entry::Occupied(mut o) => {
            let mut joined: Vec<u8> = Vec::new();
            for v in o.iter() {
                if !joined.is_empty() {
                    joined.extend_from_slice(b", ");
                }
                joined.extend_from_slice(v.as_bytes());
            }
            joined.extend_from_slice(b", ");
            joined.extend_from_slice(fwd.client_ip.as_bytes());
            if let Ok(v) = HeaderValue::from_bytes(&joined) {
                o.insert(v);
            }
        }
    }
    headers
        .entry(X_FORWARDED_PROTO.clone())
        .or_insert_with(|| HTTP.clone());
    if let Some(host) = &fwd.host {
        headers
            .entry(X_FORWARDED_HOST.clone())
            .or_insert_with(|| host.clone());
        if !has_host {
            headers.insert(header::HOST, host.clone());
        }
    }
    headers.append(header::VIA, fwd.via.clone());
    if let Some(upgrade) = &fwd.upgrade {
        headers.insert(header::UPGRADE, upgrade.clone());
        headers.insert(header::CONNECTION, UPGRADE.clone());
    }
}

/// The header names a `Connection` header lists, other than the tokens that
/// name no header (`close`, `keep-alive` is removed anyway, `upgrade`).
fn connection_listed(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| {
            !t.eq_ignore_ascii_case("close")
                && !t.eq_ignore_ascii_case("keep-alive")
                && !t.eq_ignore_ascii_case("upgrade")
        })
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect()
}

/// Removes hop-by-hop headers from an instance's response, in place. For a
/// `101 Switching Protocols` answer, `Upgrade` and `Connection` stay. One
/// pass over the names finds what is there; only those are removed.
pub fn clean_response_headers(headers: &mut HeaderMap, switching: bool) {
    let (mut hop, mut connection) = (false, false);
    for name in headers.keys() {
        if name == header::CONNECTION {
            connection = true;
            hop = true;
        } else if is_hop_by_hop(name) {
            hop = true;
        }
    }
    if !hop {
        return;
    }
    strip_hop_by_hop(headers, connection && !switching, switching);
}

/// Removes the hop-by-hop headers (and, with `listed`, those `Connection`
/// names); `keep_upgrade` keeps `Connection` and `Upgrade` for a 101.
fn strip_hop_by_hop(headers: &mut HeaderMap, listed: bool, keep_upgrade: bool) {
    if listed {
        for name in connection_listed(headers) {
            headers.remove(name);
        }
    }
    for name in [
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &header::TE,
        &header::TRAILER,
        &header::TRANSFER_ENCODING,
    ] {
        headers.remove(name);
    }
    if !keep_upgrade {
        headers.remove(header::CONNECTION);
        headers.remove(header::UPGRADE);
    }
}

/// Whether the client asks to upgrade the connection (`Connection: upgrade`
/// plus an `Upgrade` header); returns the `Upgrade` value.
pub fn upgrade_request(headers: &HeaderMap) -> Option<&HeaderValue> {
    let upgrade = headers.get(header::UPGRADE)?;
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        .then_some(upgrade)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        m
    }

    fn fwd<'a>(ip: &'a HeaderValue, via: &'a HeaderValue) -> Forwarding<'a> {
        Forwarding {
            client_ip: ip,
            via,
            host: Some(HeaderValue::from_static("api.svc")),
            upgrade: None,
        }
    }

    #[test]
    fn removes_hop_by_hop_and_connection_listed() {
        let src = map(&[
            ("host", "api.svc"),
            ("connection", "keep-alive, X-Secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("proxy-connection", "keep-alive"),
            ("accept", "*/*"),
            ("accept", "text/plain"),
        ]);
        let (ip, via) = (
            HeaderValue::from_static("10.0.0.9"),
            HeaderValue::from_static("1.1 wayfinder"),
        );
        let out = request_headers(&src, &fwd(&ip, &via));
        for gone in [
            "connection",
            "keep-alive",
            "x-secret",
            "te",
            "transfer-encoding",
            "upgrade",
            "proxy-connection",
        ] {
            assert!(!out.contains_key(gone), "{gone} forwarded");
        }
        assert_eq!(out.get_all("accept").iter().count(), 2);
        assert_eq!(out["host"], "api.svc");
        assert_eq!(out["x-forwarded-for"], "10.0.0.9");
        assert_eq!(out["x-forwarded-proto"], "http");
        assert_eq!(out["x-forwarded-host"], "api.svc");
        assert_eq!(out["via"], "1.1 wayfinder");
    }

    #[test]
    fn appends_to_an_existing_forwarded_chain() {
        let src = map(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "2.2.2.2"),
            ("x-forwarded-proto", "https"),
            ("via", "1.0 edge"),
        ]);
        let (ip, via) = (
            HeaderValue::from_static("10.0.0.9"),
            HeaderValue::from_static("1.1 wayfinder"),
        );
        let out = request_headers(&src, &fwd(&ip, &via));
        assert_eq!(out["x-forwarded-for"], "1.1.1.1, 2.2.2.2, 10.0.0.9");
        assert_eq!(out["x-forwarded-proto"], "https");
        let via: Vec<_> = out.get_all("via").iter().collect();
        assert_eq!(via, ["1.0 edge", "1.1 wayfinder"]);
        assert_eq!(out["host"], "api.svc", "host filled in for HTTP/2 clients");
    }

    #[test]
    fn upgrade_keeps_upgrade_headers() {
        let src = map(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-key", "k"),
        ]);
        let up = upgrade_request(&src).unwrap().clone();
        let (ip, via) = (
            HeaderValue::from_static("10.0.0.9"),
            HeaderValue::from_static("1.1 wayfinder"),
        );
        let mut f = fwd(&ip, &via);
        f.upgrade = Some(up);
        let out = request_headers(&src, &f);
        assert_eq!(out["upgrade"], "websocket");
        assert_eq!(out["connection"], "upgrade");
        assert_eq!(out["sec-websocket-key"], "k");
        assert!(upgrade_request(&map(&[("upgrade", "websocket")])).is_none());
    }

    #[test]
    fn response_loses_hop_by_hop() {
        let mut h = map(&[
            ("connection", "close, x-hop"),
            ("x-hop", "1"),
            ("keep-alive", "5"),
            ("content-type", "text/plain"),
        ]);
        clean_response_headers(&mut h, false);
        assert_eq!(h.len(), 1);
        let mut h = map(&[("connection", "upgrade"), ("upgrade", "websocket")]);
        clean_response_headers(&mut h, true);
        assert_eq!(h.len(), 2);
    }
}
