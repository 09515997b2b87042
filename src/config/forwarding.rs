//! Validation of the settings that shape forwarding on the client side:
//! `[proxy]` trust and upgrade settings, route upgrade lists, the client
//! body and send timeouts, `limits.max_uri_bytes` and `[http2]`.

use std::net::IpAddr;
use std::time::Duration;

use toml::Spanned;

use super::collect::Cx;
use super::raw::{RawConfig, RawHttp2};
use super::validate::{duration, int};
use super::{Cidr, ConfigError, Http2Settings};

/// Upgrade protocols allowed when a route does not say: `["websocket"]`.
pub(super) fn default_upgrades() -> Vec<String> {
    vec!["websocket".to_owned()]
}

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
pub(super) fn http2(cx: &Cx<'_>, raw: &RawConfig) -> Http2Settings {
    let h: &RawHttp2 = &raw.http2;
    let secs = Duration::from_secs;
    let dur = |v, key, default| cx.keep(duration(cx, v, key, default), default);
    Http2Settings {
        max_concurrent_streams: cx.keep(
            int(
                cx,
                &h.max_concurrent_streams,
                "http2.max_concurrent_streams",
                256,
                1..=65_536,
            ),
            256,
        ),
        keepalive_interval: dur(&h.keepalive_interval, "http2.keepalive_interval", secs(20)),
        keepalive_timeout: dur(&h.keepalive_timeout, "http2.keepalive_timeout", secs(10)),
        idle_timeout: dur(&h.idle_timeout, "http2.idle_timeout", secs(60)),
        max_pending_reset_streams: cx.keep(
            int(
                cx,
                &h.max_pending_reset_streams,
                "http2.max_pending_reset_streams",
                20,
                1..=10_000,
            ),
            20,
        ),
        max_local_error_resets: cx.keep(
            int(
                cx,
                &h.max_local_error_resets,
                "http2.max_local_error_resets",
                1024,
                1..=1_000_000,
            ),
            1024,
        ),
    }
}

impl std::str::FromStr for Cidr {
    type Err = ();

    fn from_str(s: &str) -> Result<Cidr, ()> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| ())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p.parse::<u8>().ok().filter(|&p| p <= max).ok_or(())?,
        };
        Ok(Cidr { addr, prefix })
    }
}

impl Cidr {
    /// Whether `ip` is inside the block (IPv4-mapped IPv6 addresses count
    /// as their IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{err, parse};
    use super::*;

    #[test]
    fn cidr_blocks() {
        let net: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(net.contains("10.1.2.3".parse().unwrap()));
        assert!(net.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!net.contains("11.0.0.1".parse().unwrap()));
        let one: Cidr = "::1".parse().unwrap();
        assert!(one.contains("::1".parse().unwrap()));
        assert!(!one.contains("::2".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("1.2.3.4".parse().unwrap()));
        for bad in ["10.0.0.0/33", "x", "10.0.0.0/", "::1/129"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn forwarding_settings_parse_and_are_checked() {
        let c = parse(
            "[proxy]\ntrusted_proxies = [\"10.0.0.0/8\"]\nforwarded = true\nupgrades = [\"websocket\", \"x-proto\"]\n[limits]\nmax_uri_bytes = 4096\n[timeouts]\nclient_body = \"5s\"\nclient_send = \"6s\"\n[http2]\nmax_concurrent_streams = 10\n",
        )
        .unwrap();
        assert_eq!(c.proxy.trusted_proxies.len(), 1);
        assert!(c.proxy.forwarded);
        assert_eq!(c.proxy.upgrades, ["websocket", "x-proto"]);
        assert_eq!(c.limits.max_uri_bytes, 4096);
        assert_eq!(c.timeouts.client_body, Duration::from_secs(5));
        assert_eq!(c.timeouts.client_send, Duration::from_secs(6));
        assert_eq!(c.http2.max_concurrent_streams, 10);
        let d = parse("").unwrap();
        assert_eq!(d.proxy.upgrades, ["websocket"]);
        assert!(d.proxy.trusted_proxies.is_empty() && !d.proxy.forwarded && d.proxy.fast_path);
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
