//! Validation of the membership sources: `[registry.gossip]` and
//! `[registry.serf]`. Same rules as the rest of `validate`: every error
//! names the line and key.

use std::net::SocketAddr;
use std::time::Duration;

use toml::Spanned;

use crate::config::check::{duration, int, socket_addr, Cx};
use crate::config::defaults::{gossip as dg, serf as ds};
use crate::config::raw::{RawGossip, RawSerf};
use crate::config::serialize::fmt_duration;
use crate::config::{ConfigError, GossipSettings, SerfSettings};

/// `[registry.gossip]`.
pub(super) fn gossip(cx: &Cx<'_>, raw: &Spanned<RawGossip>) -> Result<GossipSettings, ConfigError> {
    let g = raw.get_ref();
    let bind = match &g.bind {
        Some(b) => socket_addr(cx, b, "registry.gossip.bind")?,
        None => dg::BIND,
    };
    let advertise = match &g.advertise {
        Some(a) => {
            let addr = socket_addr(cx, a, "registry.gossip.advertise")?;
            if addr.ip().is_unspecified() || addr.port() == 0 {
                return Err(cx.err_at(
                    a,
                    "registry.gossip.advertise",
                    format!("{addr}: other members cannot reach an unspecified address or port 0"),
                ));
            }
            addr
        }
        None if bind.ip().is_unspecified() => {
            return Err(cx.err_at(
                raw,
                "registry.gossip.advertise",
                format!(
                    "bind = \"{bind}\" listens on every address: set advertise to the one \
                     other members reach this one at"
                ),
            ))
        }
        None => bind,
    };
    let mut join = Vec::new();
    if let Some(list) = &g.join {
        for (i, s) in list.get_ref().iter().enumerate() {
            let key = format!("registry.gossip.join[{i}]");
            let v = s.get_ref();
            let ok = v
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
            if !ok {
                return Err(cx.err_at(
                    s,
                    key,
                    format!("{v:?} is not a seed like \"10.0.0.2:7946\" or \"gossip-1:7946\""),
                ));
            }
            join.push(v.clone());
        }
    }
    let cluster = match &g.cluster {
        None => dg::CLUSTER.to_owned(),
        Some(c) if name_ok(c.get_ref()) => c.get_ref().clone(),
        Some(c) => {
            return Err(cx.err_at(
                c,
                "registry.gossip.cluster",
                "a cluster name is 1 to 64 letters, digits, '-', '_' or '.'",
            ))
        }
    };
    let name = match &g.name {
        None => format!("wayfinder@{advertise}"),
        Some(n) if !n.get_ref().is_empty() && n.get_ref().len() <= 128 => n.get_ref().clone(),
        Some(n) => {
            return Err(cx.err_at(
                n,
                "registry.gossip.name",
                "a member name is 1 to 128 characters",
            ))
        }
    };
    let secret = secret(
        cx,
        &g.secret,
        &g.secret_env,
        "registry.gossip.secret",
        "registry.gossip.secret_env",
    )?;
    if let (Some(s), Some(span)) = (&secret, g.secret.as_ref().map(Spanned::span)) {
        if s.len() < dg::MIN_SECRET {
            return Err(cx.err(
                Some(span),
                "registry.gossip.secret",
                format!(
                    "too short: use at least {} random characters (e.g. `openssl rand -base64 32`)",
                    dg::MIN_SECRET
                ),
            ));
        }
    }
    let observations = match &g.observations {
        None => false,
        Some(o) => match o.get_ref().as_str() {
            "off" => false,
            "share" => true,
            other => {
                return Err(cx.err_at(
                    o,
                    "registry.gossip.observations",
                    format!("{other:?}: expected \"off\" or \"share\""),
                ))
            }
        },
    };
    let (failure_detection, interval) = detection(cx, g)?;
    Ok(GossipSettings {
        name,
        bind,
        advertise,
        join,
        cluster,
        secret,
        secret_env: g.secret_env.as_ref().map(|v| v.get_ref().clone()),
        failure_detection,
        interval,
        phi_threshold: int(
            cx,
            &g.phi_threshold,
            "registry.gossip.phi_threshold",
            dg::PHI_THRESHOLD,
            2..=64,
        )?,
        retry_join_max: duration(
            cx,
            &g.retry_join_max,
            "registry.gossip.retry_join_max",
            dg::RETRY_JOIN_MAX,
        )?,
        leave_timeout: duration(
            cx,
            &g.leave_timeout,
            "registry.gossip.leave_timeout",
            dg::LEAVE_TIMEOUT,
        )?,
        share_ejections: observations,
    })
}

/// `failure_detection` and `interval`: the rounds (a sixth of the
/// detection time by default) must be short enough for a member's last
/// heartbeat to spread and leave rounds of silence to judge by.
fn detection(cx: &Cx<'_>, g: &RawGossip) -> Result<(Duration, Duration), ConfigError> {
    let failure_detection = duration(
        cx,
        &g.failure_detection,
        "registry.gossip.failure_detection",
        dg::FAILURE_DETECTION,
    )?;
    if let Some(f) = &g.failure_detection {
        if failure_detection < MIN_FAILURE_DETECTION {
            return Err(cx.err_at(
                f,
                "registry.gossip.failure_detection",
                format!(
                    "{}: at least {} (a busy machine delays heartbeats by that much)",
                    fmt_duration(failure_detection),
                    fmt_duration(MIN_FAILURE_DETECTION)
                ),
            ));
        }
    }
    let longest = GossipSettings::interval_for(failure_detection);
    let interval = match &g.interval {
        None => GossipSettings::interval_for(failure_detection),
        Some(i) => {
            let interval = duration(cx, &g.interval, "registry.gossip.interval", longest)?;
            if interval > longest {
                return Err(cx.err_at(
                    i,
                    "registry.gossip.interval",
                    format!(
                        "rounds of {} cannot declare a member dead within failure_detection = {} \
                         (its last heartbeat takes rounds to spread): use at most {}, or a \
                         longer failure_detection",
                        fmt_duration(interval),
                        fmt_duration(failure_detection),
                        fmt_duration(longest)
                    ),
                ));
            }
            interval
        }
    };
    Ok((failure_detection, interval))
}

/// The shortest `failure_detection` accepted.
const MIN_FAILURE_DETECTION: Duration = Duration::from_secs(1);

/// `[registry.serf]`.
pub(super) fn serf(cx: &Cx<'_>, raw: &Spanned<RawSerf>) -> Result<SerfSettings, ConfigError> {
    let s = raw.get_ref();
    let rpc: SocketAddr = match &s.rpc {
        Some(a) => socket_addr(cx, a, "registry.serf.rpc")?,
        None => ds::RPC,
    };
    let tag_prefix = match &s.tag_prefix {
        None => String::new(),
        Some(p) if p.get_ref().chars().all(|c| !c.is_whitespace() && c != '=') => {
            p.get_ref().clone()
        }
        Some(p) => {
            return Err(cx.err_at(
                p,
                "registry.serf.tag_prefix",
                "a tag prefix has no spaces and no '='",
            ))
        }
    };
    Ok(SerfSettings {
        rpc,
        auth_key: secret(
            cx,
            &s.auth_key,
            &s.auth_key_env,
            "registry.serf.auth_key",
            "registry.serf.auth_key_env",
        )?,
        auth_key_env: s.auth_key_env.as_ref().map(|v| v.get_ref().clone()),
        tag_prefix,
        retry_max: duration(cx, &s.retry_max, "registry.serf.retry_max", ds::RETRY_MAX)?,
    })
}

/// A secret given in the file or through an environment variable (not
/// both). Only checking with the variable unset: `None`.
fn secret(
    cx: &Cx<'_>,
    value: &Option<Spanned<String>>,
    env: &Option<Spanned<String>>,
    key: &str,
    env_key: &str,
) -> Result<Option<String>, ConfigError> {
    match (value, env) {
        (Some(v), Some(_)) => Err(cx.err_at(
            v,
            key,
            format!("set {} or {}, not both", leaf(key), leaf(env_key)),
        )),
        (Some(v), None) if v.get_ref().is_empty() => {
            Err(cx.err_at(v, key, "empty: remove it or set a value"))
        }
        (Some(v), None) => Ok(Some(v.get_ref().clone())),
        (None, Some(var)) => cx.env_var(var, env_key),
        (None, None) => Ok(None),
    }
}

fn leaf(key: &str) -> &str {
    key.rsplit('.').next().unwrap_or(key)
}

fn name_ok(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use crate::config::test_util::{err, parse};

    #[test]
    fn gossip_section_parses_with_defaults() {
        let c = parse("[registry.gossip]\njoin = [\"127.0.0.1:7947\"]\n").unwrap();
        let g = c.startup.registry.gossip.clone().unwrap();
        assert_eq!(g.bind.to_string(), "127.0.0.1:7946");
        assert_eq!(g.advertise, g.bind);
        assert_eq!(g.name, "wayfinder@127.0.0.1:7946");
        assert_eq!(g.cluster, "wayfinder");
        assert_eq!(g.join, ["127.0.0.1:7947"]);
        assert!(g.secret.is_none());
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(v["registry"]["gossip"]["failure_detection"], "4s");
        assert_eq!(v["registry"]["gossip"]["interval"], "666ms");
        assert_eq!(v["registry"]["gossip"]["observations"], "off");
    }

    #[test]
    fn gossip_secret_is_redacted_and_checked() {
        let c = parse("[registry.gossip]\nsecret = \"0123456789abcdef0123\"\n").unwrap();
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(
            v["registry"]["gossip"]["secret"],
            crate::config::serialize::REDACTED
        );
        let (line, key, _) = err("[registry.gossip]\n\nsecret = \"short\"\n");
        assert_eq!((line, key.as_str()), (3, "registry.gossip.secret"));
    }

    #[test]
    fn gossip_mistakes_are_named() {
        let (_, key, msg) = err("[registry.gossip]\nbind = \"0.0.0.0:7946\"\n");
        assert_eq!(key, "registry.gossip.advertise", "{msg}");
        let (_, key, _) = err("[registry.gossip]\njoin = [\"nohost\"]\n");
        assert_eq!(key, "registry.gossip.join[0]");
        let (_, key, _) = err("[registry.gossip]\ncluster = \"a b\"\n");
        assert_eq!(key, "registry.gossip.cluster");
        let (_, key, _) = err("[registry.gossip]\nobservations = \"vote\"\n");
        assert_eq!(key, "registry.gossip.observations");
        let (_, key, _) = err("[registry.gossip]\nphi_threshold = 1\n");
        assert_eq!(key, "registry.gossip.phi_threshold");
        let (_, key, _) = err("[registry.gossip]\nfailure_detection = \"500ms\"\n");
        assert_eq!(key, "registry.gossip.failure_detection");
        let (line, key, msg) =
            err("[registry.gossip]\nfailure_detection = \"4s\"\ninterval = \"2s\"\n");
        assert_eq!(
            (line, key.as_str()),
            (3, "registry.gossip.interval"),
            "{msg}"
        );
        assert!(msg.contains("at most 666ms"), "{msg}");
    }

    #[test]
    fn rounds_derive_from_the_failure_detection_time() {
        use std::time::Duration;
        let g = |text: &str| parse(text).unwrap().startup.registry.gossip.unwrap();
        let d = g("[registry.gossip]\n");
        assert_eq!(d.failure_detection, Duration::from_secs(4));
        assert_eq!(d.interval, Duration::from_millis(666));
        assert_eq!(d.silence(), Duration::from_millis(2668));
        let d = g("[registry.gossip]\nfailure_detection = \"12s\"\n");
        assert_eq!(d.interval, Duration::from_secs(2));
        let d = g("[registry.gossip]\ninterval = \"200ms\"\n");
        assert_eq!(d.failure_detection, Duration::from_secs(4));
        assert_eq!(d.interval, Duration::from_millis(200));
        assert_eq!(d.silence(), Duration::from_millis(3600));
    }

    #[test]
    fn serf_section_parses() {
        let c = parse(
            "[registry.serf]\nrpc = \"127.0.0.1:7474\"\nauth_key = \"k\"\ntag_prefix = \"wf-\"\n",
        )
        .unwrap();
        let s = c.startup.registry.serf.unwrap();
        assert_eq!(s.rpc.port(), 7474);
        assert_eq!(s.tag_prefix, "wf-");
        let (_, key, _) = err("[registry.serf]\nrpc = \"localhost\"\n");
        assert_eq!(key, "registry.serf.rpc");
    }
}
