//! Validation of the settings that shape forwarding on the client side:
//! upgrade protocol lists (`proxy.upgrades`, `routes[].upgrades`),
//! `proxy.trusted_proxies` and `[http2]`.

use toml::Spanned;

use crate::config::check::Cx;
use crate::config::defaults::http2 as d;
use crate::config::raw::RawHttp2;
use crate::config::{Cidr, ConfigError, Http2Settings};

/// Parses a list of upgrade protocol names (tokens; `h2c` is refused: an
/// HTTP/2 upgrade would leave the proxy's request handling behind).
pub(super) fn upgrades(
    cx: &Cx<'_>,
    list: &Option<Vec<Spanned<String>>>,
    key: &str,
) -> Result<Option<Vec<String>>, ConfigError> {
    let Some(list) = list else { return Ok(None) };
    let mut out = Vec::with_capacity(list.len());
    for (i, p) in list.iter().enumerate() {
        let v = p.get_ref().to_ascii_lowercase();
        let token = !v.is_empty()
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !token {
            return Err(cx.err_at(
                p,
                format!("{key}[{i}]"),
                format!(
                    "{:?} is not a protocol name (e.g. \"websocket\")",
                    p.get_ref()
                ),
            ));
        }
        if v == "h2c" {
            return Err(cx.err_at(
                p,
                format!("{key}[{i}]"),
                "h2c upgrades are not proxied: clients speak HTTP/2 to the proxy with prior knowledge",
            ));
        }
        out.push(v);
    }
    Ok(Some(out))
}

/// Parses `proxy.trusted_proxies`.
pub(super) fn trusted_proxies(
    cx: &Cx<'_>,
    list: &Option<Vec<Spanned<String>>>,
) -> Result<Vec<Cidr>, ConfigError> {
    let Some(list) = list else {
        return Ok(Vec::new());
    };
    list.iter()
        .enumerate()
        .map(|(i, s)| {
            s.get_ref().parse::<Cidr>().map_err(|()| {
                cx.err_at(
                    s,
                    format!("proxy.trusted_proxies[{i}]"),
                    format!(
                        "{:?} is not an address or CIDR block (e.g. \"10.0.0.0/8\", \"::1\")",
                        s.get_ref()
                    ),
                )
            })
        })
        .collect()
}

/// Parses `[http2]`; a bad value is recorded and its default kept.
pub(super) fn http2(cx: &Cx<'_>, h: &RawHttp2) -> Http2Settings {
    Http2Settings {
        max_concurrent_streams: cx.int_or(
            &h.max_concurrent_streams,
            "http2.max_concurrent_streams",
            d::MAX_CONCURRENT_STREAMS,
            1..=65_536,
        ),
        keepalive_interval: cx.duration_or(
            &h.keepalive_interval,
            "http2.keepalive_interval",
            d::KEEPALIVE_INTERVAL,
        ),
        keepalive_timeout: cx.duration_or(
            &h.keepalive_timeout,
            "http2.keepalive_timeout",
            d::KEEPALIVE_TIMEOUT,
        ),
        idle_timeout: cx.duration_or(&h.idle_timeout, "http2.idle_timeout", d::IDLE_TIMEOUT),
        max_pending_reset_streams: cx.int_or(
            &h.max_pending_reset_streams,
            "http2.max_pending_reset_streams",
            d::MAX_PENDING_RESET_STREAMS,
            1..=10_000,
        ),
        max_local_error_resets: cx.int_or(
            &h.max_local_error_resets,
            "http2.max_local_error_resets",
            d::MAX_LOCAL_ERROR_RESETS,
            1..=1_000_000,
        ),
        upstream_max_streams: cx.int_or(
            &h.upstream_max_streams,
            "http2.upstream_max_streams",
            d::UPSTREAM_MAX_STREAMS,
            1..=10_000,
        ),
        upstream_max_connections: cx.int_or(
            &h.upstream_max_connections,
            "http2.upstream_max_connections",
            d::UPSTREAM_MAX_CONNECTIONS,
            1..=64,
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::test_util::{err, parse};

    #[test]
    fn forwarding_settings_parse_and_are_checked() {
        let c = parse(
            "[proxy]\ntrusted_proxies = [\"10.0.0.0/8\"]\nforwarded = true\nupgrades = [\"websocket\", \"x-proto\"]\n[limits]\nmax_uri_bytes = 4096\n[timeouts]\nclient_body = \"5s\"\nclient_send = \"6s\"\n[http2]\nmax_concurrent_streams = 10\n",
        )
        .unwrap();
        assert_eq!(c.startup.proxy.trusted_proxies.len(), 1);
        assert!(c.startup.proxy.forwarded);
        assert_eq!(c.proxy.upgrades, ["websocket", "x-proto"]);
        assert_eq!(c.startup.limits.max_uri_bytes, 4096);
        assert_eq!(c.startup.timeouts.client_body, Duration::from_secs(5));
        assert_eq!(c.startup.timeouts.client_send, Duration::from_secs(6));
        assert_eq!(c.startup.http2.max_concurrent_streams, 10);
        let d = parse("").unwrap();
        assert_eq!(d.proxy.upgrades, ["websocket"]);
        let f = &d.startup.proxy;
        assert!(f.trusted_proxies.is_empty() && !f.forwarded && f.fast_path);
        let (line, key, msg) = err("[proxy]\ntrusted_proxies = [\"10.0.0.0/40\"]\n");
        assert_eq!((line, key.as_str()), (2, "proxy.trusted_proxies[0]"));
        assert!(msg.contains("CIDR"), "{msg}");
        let (_, key, msg) = err("[proxy]\nupgrades = [\"h2c\"]\n");
        assert_eq!(key, "proxy.upgrades[0]");
        assert!(msg.contains("h2c"), "{msg}");
        let (_, key, _) = err("[limits]\nmax_uri_bytes = 10\n");
        assert_eq!(key, "limits.max_uri_bytes");
    }
}
