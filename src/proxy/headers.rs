//! Header rewriting between client and instance: hop-by-hop headers are
//! removed in both directions (RFC 9110 section 7.6.1: `Connection` and every header
//! it lists, `Keep-Alive`, `Proxy-Connection`, `TE`, `Trailer`,
//! `Transfer-Encoding`, `Upgrade`), and requests gain `X-Forwarded-For`
//! (appended to any existing chain), `X-Forwarded-Proto` and
//! `X-Forwarded-Host` (kept when a proxy in front already set them), and
//! `Via`. An upgrade handshake keeps `Upgrade` and `Connection: upgrade`.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

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

/// Whether a `Connection` header in `headers` lists `name`.
fn listed_in_connection(headers: &HeaderMap, name: &HeaderName) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case(name.as_str()))
}

/// What the proxy adds to a forwarded request.
#[derive(Debug)]
pub struct Forwarding<'a> {
    /// The client's address, already formatted.
    pub client_ip: &'a HeaderValue,
    /// The `Via` entry for this hop (`1.1 wayfinder`).
    pub via: &'a HeaderValue,
    /// The request's host, for `X-Forwarded-Host` and, when the client
    /// spoke HTTP/2 and sent no `Host`, for `Host`.
    pub host: Option<&'a str>,
    /// The client's `Upgrade` header when the request asks for an upgrade.
    pub upgrade: Option<&'a HeaderValue>,
}

/// The headers to send upstream for a client request with headers `src`.
pub fn request_headers(src: &HeaderMap, fwd: &Forwarding<'_>) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(src.len() + 5);
    let has_connection = src.contains_key(header::CONNECTION);
    let mut xff: Option<HeaderValue> = None;
    for (name, value) in src {
        if is_hop_by_hop(name) || (has_connection && listed_in_connection(src, name)) {
            continue;
        }
        if name == X_FORWARDED_FOR {
            xff = Some(match xff {
                None => value.clone(),
                Some(prev) => join(&prev, value.as_bytes()),
            });
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    let xff = match xff {
        None => fwd.client_ip.clone(),
        Some(prev) => join(&prev, fwd.client_ip.as_bytes()),
    };
    out.insert(X_FORWARDED_FOR.clone(), xff);
    if !out.contains_key(&X_FORWARDED_PROTO) {
        out.insert(X_FORWARDED_PROTO.clone(), HTTP.clone());
    }
    if let Some(host) = fwd.host {
        if !out.contains_key(&X_FORWARDED_HOST) {
            if let Ok(v) = HeaderValue::from_str(host) {
                out.insert(X_FORWARDED_HOST.clone(), v);
            }
        }
        if !out.contains_key(header::HOST) {
            if let Ok(v) = HeaderValue::from_str(host) {
                out.insert(header::HOST, v);
            }
        }
    }
    out.append(header::VIA, fwd.via.clone());
    if let Some(upgrade) = fwd.upgrade {
        out.insert(header::UPGRADE, upgrade.clone());
        out.insert(header::CONNECTION, UPGRADE.clone());
    }
    out
}

/// Removes hop-by-hop headers from an instance's response, in place. For a
/// `101 Switching Protocols` answer, `Upgrade` and `Connection` stay.
pub fn clean_response_headers(headers: &mut HeaderMap, switching: bool) {
    if switching {
        for name in [
            &KEEP_ALIVE,
            &PROXY_CONNECTION,
            &header::TE,
            &header::TRAILER,
            &header::TRANSFER_ENCODING,
        ] {
            headers.remove(name);
        }
        return;
    }
    if headers.contains_key(header::CONNECTION) {
        let listed: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .collect();
        for name in listed {
            headers.remove(name);
        }
        headers.remove(header::CONNECTION);
    }
    for name in [
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &header::TE,
        &header::TRAILER,
        &header::TRANSFER_ENCODING,
        &header::UPGRADE,
    ] {
        if headers.contains_key(name) {
            headers.remove(name);
        }
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

fn join(prev: &HeaderValue, next: &[u8]) -> HeaderValue {
    let mut buf = Vec::with_capacity(prev.len() + 2 + next.len());
    buf.extend_from_slice(prev.as_bytes());
    buf.extend_from_slice(b", ");
    buf.extend_from_slice(next);
    HeaderValue::from_bytes(&buf).unwrap_or_else(|_| prev.clone())
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
            host: Some("api.svc"),
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
        f.upgrade = Some(&up);
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
