//! The validation step: from the raw serde mirror to a typed [`Config`],
//! turning every problem into a [`ConfigError`] that names file, line and
//! key. A problem is recorded in the context ([`Cx`]) and checking goes on
//! with a fallback value, so one run reports every error.
//!
//! One module per part of the file: [`global`] (the top-level tables),
//! [`services`] and their [`health`] checks, [`routes`] (which refer to
//! services), [`discovery`] (`[registry.etcd]` and `[services.NAME.dns]`)
//! [`membership`] (`[registry.gossip]` and `[registry.serf]`)
//! and [`forwarding`] (upgrade lists, `proxy.trusted_proxies`, `[http2]`).
//! They share `check` and the defaults; this module puts their parts
//! together.

mod discovery;
mod forwarding;
mod global;
mod health;
mod membership;
mod observe;
mod routes;
mod services;
mod tls;
mod traffic;
mod upstream;

pub(crate) use traffic::reattach_subsets;

use std::path::Path;
use std::sync::Arc;

use super::check::{Cx, Env};
use super::collect::parse_raw;
use super::raw::RawConfig;
use super::{Config, ConfigError, Startup};

/// Parses and validates; see [`Config::parse`] and [`Config::check`].
/// Returns the config and the warnings met on the way.
pub(super) fn parse(
    text: &str,
    file: &Path,
    env: Env,
) -> Result<(Config, Vec<String>), ConfigError> {
    let cx = Cx::new(text, file, env);
    let raw = parse_raw(&cx)?;
    let config = build(&cx, raw);
    let config = cx.finish(config)?;
    Ok((config, cx.warnings()))
}

/// Every part of the file, in file order; errors are recorded in `cx`.
fn build(cx: &Cx<'_>, raw: RawConfig) -> Config {
    let listen = global::listen(cx, &raw.listen);
    let tls = tls::tls(cx, &raw.tls, &listen);
    let every_listener: Vec<_> = listen
        .iter()
        .chain(tls.iter().flat_map(|t| &t.listen))
        .copied()
        .collect();
    let admin = global::admin(cx, &raw.admin, &every_listener);
    let (registry, registrations) = global::registry(cx, &raw.registry);
    let runtime = global::runtime(cx, &raw.runtime);
    let (timeouts, connection_timeouts) = global::timeouts(cx, &raw.timeouts);
    let limits = global::limits(cx, &raw.limits);
    let conventions = global::conventions(cx, &raw.conventions);
    let (proxy, forwarding) = global::proxy(cx, &raw.proxy);
    let http2 = forwarding::http2(cx, &raw.http2);
    let zone = traffic::zone(cx, &raw.zone);
    let metrics = observe::metrics(&raw.metrics);
    let access_log = observe::access_log(cx, &raw.access_log);
    let default_policy = services::default_policy(&timeouts, &proxy, zone.clone());
    let mut services = services::services(cx, &raw.services, &default_policy);
    let routes = routes::routes(cx, &raw.routes, &services);
    traffic::attach_subsets(&mut services, &routes);
    Config {
        startup: Startup {
            listen,
            admin,
            registry: registrations,
            runtime,
            timeouts: connection_timeouts,
            limits,
            proxy: forwarding,
            http2,
            tls,
            metrics,
            access_log,
        },
        registry,
        timeouts,
        proxy,
        conventions,
        routes,
        services,
        default_policy: Arc::new(default_policy),
        zone,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::defaults;
    use crate::config::test_util::{err, parse};
    use crate::config::{Balance, HostMatch};

    const GOOD: &str = r#"
listen = ["127.0.0.1:8080"]
[timeouts]
connect = "250ms"
[[routes]]
host = "*.Example.com"
path = "/api/"
strip_prefix = true
service = "api"
[services.api]
balance = "least_connections"
instances = ["127.0.0.1:9001", { address = "127.0.0.1:9002", weight = 3 }]
"#;

    #[test]
    fn good_file_parses_with_defaults() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.timeouts.connect, Duration::from_millis(250));
        assert_eq!(c.timeouts.response_header, Duration::from_secs(30));
        assert_eq!(
            c.startup.admin.listen,
            Some("127.0.0.1:9900".parse().unwrap())
        );
        assert_eq!(c.routes[0].host, HostMatch::Suffix(".example.com".into()));
        assert_eq!(c.routes[0].path, "/api");
        let api = &c.services["api"];
        assert_eq!(api.balance, Balance::LeastConnections);
        assert_eq!(api.instances[1].weight, 3);
        assert_eq!(c.conventions.host_suffixes, vec![".svc".to_owned()]);
    }

    /// An empty file gets every default of [`defaults`], each applied
    /// where its key says.
    #[test]
    fn empty_file_gets_the_named_defaults() {
        let c = parse("[services.a]\n[services.a.health]\nkind = \"http\"\n[services.b.dns]\nname = \"b.test\"\nkind = \"srv\"\n[[routes]]\nservice = \"a\"\n").unwrap();
        let s = &c.startup;
        assert_eq!(s.listen, [defaults::LISTEN]);
        assert_eq!(s.admin.listen, Some(defaults::admin::LISTEN));
        assert_eq!(s.admin.auth_reads, defaults::admin::AUTH_READS);
        assert_eq!(s.registry.default_ttl, defaults::registry::DEFAULT_TTL);
        assert_eq!(s.timeouts.client_header, defaults::timeouts::CLIENT_HEADER);
        assert_eq!(s.timeouts.upstream_idle, defaults::timeouts::UPSTREAM_IDLE);
        assert_eq!(
            s.timeouts.shutdown_drain,
            defaults::timeouts::SHUTDOWN_DRAIN
        );
        assert_eq!(s.timeouts.client_body, defaults::timeouts::CLIENT_BODY);
        assert_eq!(s.timeouts.client_send, defaults::timeouts::CLIENT_SEND);
        assert_eq!(
            s.limits.max_header_bytes,
            defaults::limits::MAX_HEADER_BYTES
        );
        assert_eq!(s.limits.max_connections, defaults::limits::MAX_CONNECTIONS);
        assert_eq!(
            s.limits.max_idle_per_instance,
            defaults::limits::MAX_IDLE_PER_INSTANCE
        );
        assert_eq!(s.limits.max_uri_bytes, defaults::limits::MAX_URI_BYTES);
        assert_eq!(s.proxy.via, defaults::proxy::VIA);
        assert_eq!(s.proxy.debug_header, defaults::proxy::DEBUG_HEADER);
        assert_eq!(s.proxy.snapshot_header, defaults::proxy::SNAPSHOT_HEADER);
        assert_eq!(s.proxy.forwarded, defaults::proxy::FORWARDED);
        assert_eq!(s.proxy.fast_path, defaults::proxy::FAST_PATH);
        let h2 = &s.http2;
        assert_eq!(
            h2.max_concurrent_streams,
            defaults::http2::MAX_CONCURRENT_STREAMS
        );
        assert_eq!(h2.keepalive_interval, defaults::http2::KEEPALIVE_INTERVAL);
        assert_eq!(h2.keepalive_timeout, defaults::http2::KEEPALIVE_TIMEOUT);
        assert_eq!(h2.idle_timeout, defaults::http2::IDLE_TIMEOUT);
        assert_eq!(
            h2.max_pending_reset_streams,
            defaults::http2::MAX_PENDING_RESET_STREAMS
        );
        assert_eq!(
            h2.max_local_error_resets,
            defaults::http2::MAX_LOCAL_ERROR_RESETS
        );
        assert_eq!(
            c.registry.self_preservation_percent,
            defaults::registry::SELF_PRESERVATION_PERCENT
        );
        assert_eq!(c.registry.max_staleness, defaults::registry::MAX_STALENESS);
        assert_eq!(c.registry.max_hold, defaults::registry::MAX_HOLD);
        assert_eq!(c.timeouts.connect, defaults::timeouts::CONNECT);
        assert_eq!(
            c.timeouts.response_header,
            defaults::timeouts::RESPONSE_HEADER
        );
        assert_eq!(c.timeouts.pre_stop, defaults::timeouts::PRE_STOP);
        assert_eq!(c.proxy.max_attempts, defaults::proxy::MAX_ATTEMPTS);
        assert_eq!(c.proxy.upgrades, defaults::proxy::UPGRADES);
        assert_eq!(
            c.conventions.host_suffixes,
            defaults::conventions::HOST_SUFFIXES
        );
        assert_eq!(c.conventions.path, defaults::conventions::PATH);
        assert_eq!(c.routes[0].path, defaults::route::PATH);
        let p = &c.services["a"].policy;
        assert_eq!(p.panic_threshold, defaults::service::PANIC_THRESHOLD);
        assert_eq!(p.slow_start, defaults::service::SLOW_START);
        assert_eq!(
            p.outlier.connect_failures,
            defaults::outlier::CONNECT_FAILURES
        );
        assert_eq!(
            p.outlier.consecutive_failures,
            defaults::outlier::CONSECUTIVE_FAILURES
        );
        assert_eq!(p.outlier.count_5xx, defaults::outlier::COUNT_5XX);
        assert_eq!(p.outlier.base_ejection, defaults::outlier::BASE_EJECTION);
        assert_eq!(p.outlier.max_ejection, defaults::outlier::MAX_EJECTION);
        assert_eq!(
            p.outlier.max_ejected_percent,
            defaults::outlier::MAX_EJECTED_PERCENT
        );
        assert_eq!(p.retry_budget.percent, defaults::retry_budget::PERCENT);
        assert_eq!(
            p.retry_budget.min_per_second,
            defaults::retry_budget::MIN_PER_SECOND
        );
        assert_eq!(p.outlier, c.default_policy.outlier);
        assert_eq!(p.retry_budget, c.default_policy.retry_budget);
        let h = p.health.as_ref().unwrap();
        assert_eq!(h.interval, defaults::health::INTERVAL);
        assert_eq!(h.timeout, defaults::health::TIMEOUT);
        assert_eq!(h.healthy_threshold, defaults::health::HEALTHY_THRESHOLD);
        assert_eq!(h.unhealthy_threshold, defaults::health::UNHEALTHY_THRESHOLD);
        assert_eq!(h.jitter, h.interval / defaults::health::JITTER_DIVISOR);
        let d = c.services["b"].dns.as_ref().unwrap();
        assert_eq!(d.min_refresh, defaults::dns::MIN_REFRESH);
        assert_eq!(d.max_refresh, defaults::dns::MAX_REFRESH);
        assert_eq!(d.nxdomain_grace, defaults::dns::NXDOMAIN_GRACE);
    }

    #[test]
    fn unknown_key_names_path_and_line() {
        let (line, key, msg) =
            err("[services.api]\ninstances = [\"127.0.0.1:1\"]\nbalanse = \"x\"\n");
        assert_eq!(line, 3);
        assert_eq!(key, "services.api.balanse");
        assert!(msg.contains("unknown field `balanse`"), "{msg}");
    }

    #[test]
    fn wrong_type_and_bad_enum_are_named() {
        let (line, key, _) = err("[limits]\nmax_connections = \"many\"\n");
        assert_eq!((line, key.as_str()), (2, "limits.max_connections"));
        let (line, key, msg) =
            err("[services.a]\nbalance = \"fastest\"\ninstances = [\"127.0.0.1:1\"]\n");
        assert_eq!((line, key.as_str()), (2, "services.a.balance"));
        assert!(msg.contains("round_robin"), "{msg}");
    }

    #[test]
    fn bad_duration_says_how_to_write_one() {
        let (line, key, msg) = err("[timeouts]\nconnect = \"5\"\n");
        assert_eq!((line, key.as_str()), (2, "timeouts.connect"));
        assert!(msg.contains("\"250ms\""), "{msg}");
        let (_, _, msg) = err("[timeouts]\nconnect = \"0s\"\n");
        assert!(msg.contains("greater than zero"));
    }

    #[test]
    fn response_body_pause_defaults_inherits_and_is_set_per_service() {
        let c = parse(
            "[services.a]\ninstances = [\"127.0.0.1:1\"]\n\
             [services.b]\ninstances = [\"127.0.0.1:2\"]\n\
             [services.b.timeouts]\nresponse_body = \"10m\"\n",
        )
        .unwrap();
        let d = defaults::timeouts::RESPONSE_BODY;
        assert_eq!(c.timeouts.response_body, d);
        assert_eq!(c.services["a"].policy.timeouts.response_body, d);
        assert_eq!(c.default_policy.timeouts.response_body, d);
        assert_eq!(
            c.services["b"].policy.timeouts.response_body,
            Duration::from_secs(600)
        );
        // The global value is every service's default, registry-only ones
        // included.
        let c = parse(
            "[timeouts]\nresponse_body = \"45s\"\n\
             [services.a]\ninstances = [\"127.0.0.1:1\"]\n",
        )
        .unwrap();
        assert_eq!(
            c.services["a"].policy.timeouts.response_body,
            Duration::from_secs(45)
        );
        assert_eq!(
            c.default_policy.timeouts.response_body,
            Duration::from_secs(45)
        );
        let (line, key, msg) = err("[services.a]\ninstances = [\"127.0.0.1:1\"]\n\
             [services.a.timeouts]\nresponse_body = \"0s\"\n");
        assert_eq!(
            (line, key.as_str()),
            (4, "services.a.timeouts.response_body")
        );
        assert!(msg.contains("greater than zero"), "{msg}");
    }

    #[test]
    fn duplicate_service_is_a_syntax_error_with_line() {
        let (line, _, msg) = err("[services.a]\ninstances = [\"127.0.0.1:1\"]\n[services.a]\ninstances = [\"127.0.0.1:2\"]\n");
        assert_eq!(line, 3, "{msg}");
    }
}
