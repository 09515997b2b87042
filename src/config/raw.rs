//! The raw serde mirror of `wayfinder.toml`: every table rejects unknown keys,
//! durations are strings with units, and the fields that later validation
//! errors point at are wrapped in [`Spanned`] so the error can name a line.
//!
//! Nothing here is checked beyond its TOML type; `validate` turns it into
//! [`super::Config`]. Each field's doc names its default in
//! [`super::defaults`], where the value is written once.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use toml::Spanned;

pub(crate) use super::check::Dur;
#[allow(unused_imports)] // Named in the docs.
use super::defaults as d;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    /// Client-facing listener addresses. Default [`d::LISTEN`] alone.
    pub listen: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    pub admin: RawAdmin,
    #[serde(default)]
    pub registry: RawRegistry,
    #[serde(default)]
    pub runtime: RawRuntime,
    #[serde(default)]
    pub timeouts: RawTimeouts,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub conventions: RawConventions,
    #[serde(default)]
    pub proxy: RawProxy,
    #[serde(default)]
    pub http2: RawHttp2,
    #[serde(default)]
    pub metrics: RawMetrics,
    #[serde(default)]
    pub access_log: RawAccessLog,
    /// TLS listeners. Default none.
    #[serde(default)]
    pub tls: Vec<RawTls>,
    #[serde(default)]
    pub routes: Vec<RawRoute>,
    #[serde(default)]
    pub services: BTreeMap<String, Spanned<RawService>>,
    /// This proxy's zone. Default none (no zone preference).
    pub zone: Option<Spanned<RawZone>>,
}

/// `[zone]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawZone {
    /// This proxy's zone. Required.
    pub name: Spanned<String>,
    /// The instance tag naming an instance's zone. Default
    /// [`d::zone::TAG`].
    pub tag: Option<Spanned<String>>,
    /// Percent of the zone's instances that must be available to keep
    /// traffic in the zone. Default [`d::zone::MIN_AVAILABLE_PERCENT`].
    pub min_available_percent: Option<Spanned<i64>>,
}

/// `[admin]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAdmin {
    /// Admin listener; `"off"` disables it. Default [`d::admin::LISTEN`].
    pub listen: Option<Spanned<String>>,
    /// Bearer token required by mutating admin calls. Default none.
    pub token: Option<Spanned<String>>,
    /// Environment variable holding the token. Default none.
    pub token_env: Option<Spanned<String>>,
    /// Require the token for reads too (all but /healthz and /readyz).
    /// Default [`d::admin::AUTH_READS`].
    pub auth_reads: Option<Spanned<bool>>,
}

/// `[runtime]`: process tuning.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRuntime {
    /// Tokio worker threads, 1 to 1024. Default: one per available core.
    pub worker_threads: Option<Spanned<i64>>,
}

/// `[registry]`: how sources merge and are guarded.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRegistry {
    /// Largest share of a service one implicit update may remove, 0 to 100
    /// (0: off). Default [`d::registry::SELF_PRESERVATION_PERCENT`].
    pub self_preservation_percent: Option<Spanned<i64>>,
    /// A failing source is reported stale after this. Default
    /// [`d::registry::MAX_STALENESS`].
    pub max_staleness: Option<Spanned<Dur>>,
    /// Where registrations are saved, relative to the config file's
    /// directory. Default none (not saved).
    pub state_file: Option<Spanned<String>>,
    /// TTL of registrations that name none. Default
    /// [`d::registry::DEFAULT_TTL`].
    pub default_ttl: Option<Spanned<Dur>>,
    /// Longest a held-back removal waits. Default [`d::registry::MAX_HOLD`].
    pub max_hold: Option<Spanned<Dur>>,
    /// The shared registry; absent means registrations stay in this proxy.
    pub etcd: Option<Spanned<RawEtcd>>,
    /// The gossip fleet; absent means this proxy gossips with no one.
    pub gossip: Option<Spanned<RawGossip>>,
    /// A Serf cluster to follow; absent means none.
    pub serf: Option<Spanned<RawSerf>>,
}

/// `[registry.gossip]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawGossip {
    /// This member's name. Default `wayfinder@ADVERTISE`.
    pub name: Option<Spanned<String>>,
    /// UDP `IP:PORT` to listen on. Default [`d::gossip::BIND`].
    pub bind: Option<Spanned<String>>,
    /// `IP:PORT` others reach this member at. Default: `bind` (required
    /// when `bind` is an unspecified address such as `0.0.0.0`).
    pub advertise: Option<Spanned<String>>,
    /// Seeds, `host:port`. Default none (the first member).
    pub join: Option<Spanned<Vec<Spanned<String>>>>,
    /// Cluster name. Default [`d::gossip::CLUSTER`].
    pub cluster: Option<Spanned<String>>,
    /// Shared secret (or use `secret_env`). Default none (gossip in clear).
    pub secret: Option<Spanned<String>>,
    /// Environment variable holding the secret. Default none.
    pub secret_env: Option<Spanned<String>>,
    /// How soon a stopped member is declared dead everywhere. Default
    /// [`d::gossip::FAILURE_DETECTION`].
    pub failure_detection: Option<Spanned<Dur>>,
    /// Time between gossip rounds. Default (and longest): a sixth of
    /// `failure_detection`.
    pub interval: Option<Spanned<Dur>>,
    /// Phi-accrual threshold, 2 to 64. Default [`d::gossip::PHI_THRESHOLD`].
    pub phi_threshold: Option<Spanned<i64>>,
    /// Longest wait between join attempts. Default
    /// [`d::gossip::RETRY_JOIN_MAX`].
    pub retry_join_max: Option<Spanned<Dur>>,
    /// How long a leaving member gossips its departure. Default
    /// [`d::gossip::LEAVE_TIMEOUT`].
    pub leave_timeout: Option<Spanned<Dur>>,
    /// `"off"` or `"share"` (publish this proxy's ejections). Default
    /// `"off"`.
    pub observations: Option<Spanned<String>>,
}

/// `[registry.serf]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSerf {
    /// The agent's RPC `IP:PORT`. Default [`d::serf::RPC`].
    pub rpc: Option<Spanned<String>>,
    /// RPC auth key (or use `auth_key_env`). Default none.
    pub auth_key: Option<Spanned<String>>,
    /// Environment variable holding the auth key. Default none.
    pub auth_key_env: Option<Spanned<String>>,
    /// Prefix of the tags naming instances. Default `""`.
    pub tag_prefix: Option<Spanned<String>>,
    /// Longest wait between reconnections. Default [`d::serf::RETRY_MAX`].
    pub retry_max: Option<Spanned<Dur>>,
}

/// `[registry.etcd]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawEtcd {
    /// Client URLs, e.g. `["http://127.0.0.1:2379"]`. Required.
    pub endpoints: Spanned<Vec<Spanned<String>>>,
    /// Key prefix. Default [`d::etcd::PREFIX`].
    pub prefix: Option<Spanned<String>>,
    /// etcd user, when etcd authentication is enabled. Default none.
    pub username: Option<Spanned<String>>,
    /// Its password (or use `password_env`). Default none.
    pub password: Option<Spanned<String>>,
    /// Environment variable holding the password. Default none.
    pub password_env: Option<Spanned<String>>,
    /// TCP connect to an endpoint. Default [`d::etcd::DIAL_TIMEOUT`].
    pub dial_timeout: Option<Spanned<Dur>>,
    /// One etcd call. Default [`d::etcd::REQUEST_TIMEOUT`].
    pub request_timeout: Option<Spanned<Dur>>,
}

/// `[timeouts]`: every value is a duration string such as `"250ms"` or `"5s"`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTimeouts {
    /// Upstream TCP connect. Default [`d::timeouts::CONNECT`].
    pub connect: Option<Spanned<Dur>>,
    /// From sending the request to receiving the upstream response head.
    /// Default [`d::timeouts::RESPONSE_HEADER`].
    pub response_header: Option<Spanned<Dur>>,
    /// Longest pause while an instance sends a response body. Default
    /// [`d::timeouts::RESPONSE_BODY`].
    pub response_body: Option<Spanned<Dur>>,
    /// Waiting for a client's request head (also bounds keep-alive idle).
    /// Default [`d::timeouts::CLIENT_HEADER`].
    pub client_header: Option<Spanned<Dur>>,
    /// How long an idle pooled upstream connection is kept. Default
    /// [`d::timeouts::UPSTREAM_IDLE`].
    pub upstream_idle: Option<Spanned<Dur>>,
    /// How long shutdown waits for in-flight requests. Default
    /// [`d::timeouts::SHUTDOWN_DRAIN`].
    pub shutdown_drain: Option<Spanned<Dur>>,
    /// Serving on, reported not ready, before the listeners close. Default
    /// [`d::timeouts::PRE_STOP`].
    pub pre_stop: Option<Spanned<Dur>>,
    /// Longest pause while a client sends a request body. Default
    /// [`d::timeouts::CLIENT_BODY`].
    pub client_body: Option<Spanned<Dur>>,
    /// Longest a client may leave a response unread (a write that makes no
    /// progress). Default [`d::timeouts::CLIENT_SEND`].
    pub client_send: Option<Spanned<Dur>>,
}

/// `[limits]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLimits {
    /// Largest request head (request line + headers) in bytes. Default
    /// [`d::limits::MAX_HEADER_BYTES`].
    pub max_header_bytes: Option<Spanned<i64>>,
    /// Most client connections open at once. Default
    /// [`d::limits::MAX_CONNECTIONS`].
    pub max_connections: Option<Spanned<i64>>,
    /// Most idle pooled connections kept per instance. Default
    /// [`d::limits::MAX_IDLE_PER_INSTANCE`].
    pub max_idle_per_instance: Option<Spanned<i64>>,
    /// Longest request target in bytes (longer: 414). Default
    /// [`d::limits::MAX_URI_BYTES`].
    pub max_uri_bytes: Option<Spanned<i64>>,
}

/// `[conventions]`: reaching a registered service without a route.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConventions {
    /// Host suffixes: with `".svc"`, Host `NAME.svc` is service NAME.
    /// Default [`d::conventions::HOST_SUFFIXES`].
    pub host_suffixes: Option<Vec<Spanned<String>>>,
    /// When true, path `/NAME/rest` is service NAME, forwarded as `/rest`.
    /// Default [`d::conventions::PATH`].
    pub path: Option<bool>,
}

/// `[proxy]`: forwarding behaviour.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawProxy {
    /// The pseudonym in the `Via` header. Default [`d::proxy::VIA`].
    pub via: Option<Spanned<String>>,
    /// Attempts per request when an instance cannot be reached. Default
    /// [`d::proxy::MAX_ATTEMPTS`].
    pub max_attempts: Option<Spanned<i64>>,
    /// Add the `x-wayfinder-debug` response header. Default
    /// [`d::proxy::DEBUG_HEADER`].
    pub debug_header: Option<bool>,
    /// Add the `x-wayfinder-snapshot` response header. Default
    /// [`d::proxy::SNAPSHOT_HEADER`].
    pub snapshot_header: Option<bool>,
    /// Peers (addresses or CIDR blocks) whose `X-Forwarded-Proto`,
    /// `X-Forwarded-Host` and `Forwarded` are kept. Default none.
    pub trusted_proxies: Option<Vec<Spanned<String>>>,
    /// Write an RFC 7239 `Forwarded` header. Default [`d::proxy::FORWARDED`].
    pub forwarded: Option<bool>,
    /// Upgrade protocols forwarded when a route does not list its own.
    /// Default [`d::proxy::UPGRADES`].
    pub upgrades: Option<Vec<Spanned<String>>>,
    /// Serve plain HTTP/1.1 on the fast path; false sends every request
    /// through hyper (for diagnosis). Default [`d::proxy::FAST_PATH`].
    pub fast_path: Option<bool>,
    /// Keep or make a request id, forward it and return it. Default
    /// [`d::proxy::REQUEST_ID`].
    pub request_id: Option<bool>,
    /// The header carrying it. Default [`d::proxy::REQUEST_ID_HEADER`].
    pub request_id_header: Option<Spanned<String>>,
}

/// `[metrics]`: `GET /metrics` on the admin listener.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMetrics {
    /// Count requests. Default [`d::metrics::ENABLED`].
    pub enabled: Option<bool>,
}

/// `[access_log]`: one line per request.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAccessLog {
    /// Default [`d::access_log::ENABLED`].
    pub enabled: Option<bool>,
    /// `"stdout"` or a file path. Default [`d::access_log::PATH`].
    pub path: Option<Spanned<String>>,
    /// `"text"` or `"json"`. Default [`d::access_log::FORMAT`].
    pub format: Option<Spanned<String>>,
    /// Lines queued for the writer before new ones are dropped. Default
    /// [`d::access_log::QUEUE`].
    pub queue: Option<Spanned<i64>>,
}

/// `[http2]`: HTTP/2 client connections.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHttp2 {
    /// Streams a client may have open at once. Default
    /// [`d::http2::MAX_CONCURRENT_STREAMS`].
    pub max_concurrent_streams: Option<Spanned<i64>>,
    /// PING interval on a connection. Default
    /// [`d::http2::KEEPALIVE_INTERVAL`].
    pub keepalive_interval: Option<Spanned<Dur>>,
    /// How long a PING may go unanswered before the connection closes.
    /// Default [`d::http2::KEEPALIVE_TIMEOUT`].
    pub keepalive_timeout: Option<Spanned<Dur>>,
    /// A connection with no open stream for this long is closed. Default
    /// [`d::http2::IDLE_TIMEOUT`].
    pub idle_timeout: Option<Spanned<Dur>>,
    /// Streams reset by the client before they were handled, at once
    /// (rapid-reset protection). Default [`d::http2::MAX_PENDING_RESET_STREAMS`].
    pub max_pending_reset_streams: Option<Spanned<i64>>,
    /// Streams the proxy may reset for protocol errors before it closes the
    /// connection. Default [`d::http2::MAX_LOCAL_ERROR_RESETS`].
    pub max_local_error_resets: Option<Spanned<i64>>,
    /// Streams the proxy opens at once on one HTTP/2 connection to an
    /// instance. Default [`d::http2::UPSTREAM_MAX_STREAMS`].
    pub upstream_max_streams: Option<Spanned<i64>>,
    /// HTTP/2 connections the proxy opens to one instance. Default
    /// [`d::http2::UPSTREAM_MAX_CONNECTIONS`].
    pub upstream_max_connections: Option<Spanned<i64>>,
}

/// One `[[tls]]` table: addresses served over TLS and their certificates.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTls {
    /// Listener addresses ("IP:PORT"). Required.
    pub listen: Spanned<Vec<Spanned<String>>>,
    /// Certificate chains and keys (PEM files, relative to the config
    /// file's directory); the first is the default. Required.
    pub certificates: Spanned<Vec<RawCertificate>>,
}

/// `{ cert = "...", key = "..." }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCertificate {
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
}

/// What a route does with a request that did not come over TLS.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RawRequireTls {
    Redirect,
    Refuse,
}

/// One `[[routes]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRoute {
    /// A name for the admin API (`PUT /v1/routes/{name}/split`). Default
    /// none.
    pub name: Option<Spanned<String>>,
    /// `"api.example.com"` or `"*.example.com"`; absent means any host.
    pub host: Option<Spanned<String>>,
    /// Path prefix, matched on segment boundaries. Default [`d::route::PATH`].
    pub path: Option<Spanned<String>>,
    /// Remove the matched prefix before forwarding. Default false.
    #[serde(default)]
    pub strip_prefix: bool,
    /// The service this route sends to.
    pub service: Spanned<String>,
    /// Upgrade protocols forwarded on this route. Default: `proxy.upgrades`.
    pub upgrades: Option<Vec<Spanned<String>>>,
    /// Plain-HTTP requests: `"redirect"` (308 to https) or `"refuse"`
    /// (403). Default: served.
    pub require_tls: Option<RawRequireTls>,
    /// Only instances carrying these tags. Default: every instance.
    pub match_tags: Option<Spanned<BTreeMap<String, String>>>,
    /// Requests shared between subsets by weight. Default none.
    pub split: Option<Spanned<Vec<Spanned<RawSplit>>>>,
    /// A request header or cookie naming the subset. Default none.
    pub subset_by: Option<Spanned<RawSubsetBy>>,
}

/// `{ tags = { version = "2" }, weight = 5 }` in a route's `split`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSplit {
    /// The subset's tags. Required.
    pub tags: Spanned<BTreeMap<String, String>>,
    /// Its relative share, 0 to 10000. Required.
    pub weight: Spanned<i64>,
}

/// `{ header = "x-version", tag = "version" }` or `{ cookie = ..., tag = ... }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSubsetBy {
    /// The request header whose value names the subset.
    pub header: Option<Spanned<String>>,
    /// The cookie whose value names the subset.
    pub cookie: Option<Spanned<String>>,
    /// The instance tag compared with that value. Required.
    pub tag: Spanned<String>,
}

/// One `[services.NAME]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawService {
    /// How instances are picked. Default round-robin.
    #[serde(default)]
    pub balance: Option<RawBalance>,
    /// Static instances; omitted for a service fed only by registry sources.
    pub instances: Option<Spanned<Vec<Spanned<RawInstance>>>>,
    /// Attempts per request. Default: `proxy.max_attempts`.
    pub max_attempts: Option<Spanned<i64>>,
    /// Ramp-up window for instances that just became healthy; "0s" is off.
    /// Default [`d::service::SLOW_START`].
    pub slow_start: Option<Spanned<Dur>>,
    /// Percent of healthy instances below which health is ignored. Default
    /// [`d::service::PANIC_THRESHOLD`].
    pub panic_threshold: Option<Spanned<i64>>,
    /// Per-service timeouts. Default: the global `[timeouts]`.
    #[serde(default)]
    pub timeouts: RawServiceTimeouts,
    /// Active health checks. Default none.
    pub health: Option<Spanned<RawHealth>>,
    /// Passive health (outlier detection).
    #[serde(default)]
    pub outlier: RawOutlier,
    /// Retry budget.
    #[serde(default)]
    pub retry_budget: RawRetryBudget,
    /// Instances resolved from DNS. Default none.
    pub dns: Option<Spanned<RawDns>>,
    /// The protocol spoken to instances. Default `"http1"`.
    pub protocol: Option<Spanned<RawProtocol>>,
    /// TLS towards instances: `true`, or a table. Default none.
    pub tls: Option<Spanned<RawUpstreamTls>>,
    /// `balance = "p2c_ewma"` settings. Default: see [`RawP2c`].
    pub p2c_ewma: Option<Spanned<RawP2c>>,
    /// `balance = "consistent_hash"` settings. Default: see [`RawHash`].
    pub consistent_hash: Option<Spanned<RawHash>>,
    /// Requests one instance may have at once. Default 0 (no limit).
    pub max_in_flight: Option<Spanned<i64>>,
    /// A cookie the proxy sets to keep a client on its instance. Default
    /// none.
    pub sticky_cookie: Option<Spanned<String>>,
    /// A safe request without a body still waiting this long gets a
    /// second attempt on another instance. Default none (no hedging).
    pub hedge_after: Option<Spanned<Dur>>,
    /// Where requests wait when every instance is at `max_in_flight`.
    /// Default: see [`RawQueue`].
    pub queue: Option<Spanned<RawQueue>>,
}

/// `[services.NAME.p2c_ewma]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawP2c {
    /// Time constant of the latency average. Default [`d::p2c::DECAY`].
    pub decay: Option<Spanned<Dur>>,
}

/// `[services.NAME.consistent_hash]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHash {
    /// `"header:NAME"`, `"cookie:NAME"`, `"client_address"` or `"path"`.
    /// Default [`d::hash::KEY`].
    pub key: Option<Spanned<String>>,
    /// Bounded load: at most this times the mean load per instance, 1.0
    /// or more; 0 is unbounded. Default [`d::hash::LOAD_FACTOR_MILLI`]
    /// thousandths.
    pub load_factor: Option<Spanned<f64>>,
}

/// `[services.NAME.queue]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawQueue {
    /// Requests that may wait at once. Default [`d::queue::SIZE`].
    pub size: Option<Spanned<i64>>,
    /// Longest wait. Default [`d::queue::TIMEOUT`].
    pub timeout: Option<Spanned<Dur>>,
}

/// `protocol` of a service.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum RawProtocol {
    Http1,
    H2c,
    H2,
    Auto,
}

/// `tls = true | false` or `[services.NAME.tls]`.
#[derive(Debug)]
pub(crate) enum RawUpstreamTls {
    Off,
    On(RawUpstreamTlsTable),
}

/// `[services.NAME.tls]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawUpstreamTlsTable {
    /// PEM CA certificates to trust. Default: the system's trust store.
    pub ca_file: Option<Spanned<String>>,
    /// SNI and the name verified. Default: the instance's IP address.
    pub server_name: Option<Spanned<String>>,
    /// Client certificate chain (mTLS); with `key`.
    pub cert: Option<Spanned<String>>,
    /// Client certificate key; with `cert`.
    pub key: Option<Spanned<String>>,
    /// Accept any certificate. Default false.
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

impl<'de> Deserialize<'de> for RawUpstreamTls {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawUpstreamTls;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("true, false or a table (ca_file, server_name, cert, key, insecure_skip_verify)")
            }
            fn visit_bool<E: de::Error>(self, on: bool) -> Result<Self::Value, E> {
                Ok(if on {
                    RawUpstreamTls::On(RawUpstreamTlsTable::default())
                } else {
                    RawUpstreamTls::Off
                })
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                RawUpstreamTlsTable::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(RawUpstreamTls::On)
            }
        }
        de.deserialize_any(V)
    }
}

/// `[services.NAME.dns]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDns {
    /// The name to resolve. Required.
    pub name: Spanned<String>,
    /// `"a"` (A/AAAA plus `port`) or `"srv"`. Required.
    pub kind: RawDnsKind,
    /// The instances' port; required with `kind = "a"`, refused with `"srv"`.
    pub port: Option<Spanned<i64>>,
    /// `"IP:PORT"` of the nameserver. Default: the system's resolv.conf.
    pub nameserver: Option<Spanned<String>>,
    /// Shortest time between resolutions. Default [`d::dns::MIN_REFRESH`].
    pub min_refresh: Option<Spanned<Dur>>,
    /// Longest time between resolutions. Default [`d::dns::MAX_REFRESH`].
    pub max_refresh: Option<Spanned<Dur>>,
    /// How long NXDOMAIN may last before the set empties. Default
    /// [`d::dns::NXDOMAIN_GRACE`].
    pub nxdomain_grace: Option<Spanned<Dur>>,
}

/// DNS record kinds as written in TOML.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RawDnsKind {
    A,
    Srv,
}

/// `[services.NAME.timeouts]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawServiceTimeouts {
    /// TCP connect to an instance. Default: `timeouts.connect`.
    pub connect: Option<Spanned<Dur>>,
    /// Per attempt, request written to response head. Default:
    /// `timeouts.response_header`.
    pub response_header: Option<Spanned<Dur>>,
    /// Longest pause while an instance sends a response body. Default:
    /// `timeouts.response_body`.
    pub response_body: Option<Spanned<Dur>>,
    /// The whole request until the response head, all attempts included.
    /// Default none.
    pub request: Option<Spanned<Dur>>,
}

/// `[services.NAME.health]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHealth {
    /// `"http"` or `"tcp"`. Required.
    pub kind: RawCheckKind,
    /// The path checked (http). Default [`d::health::PATH`].
    pub path: Option<Spanned<String>>,
    /// The method (http). Default [`d::health::METHOD`].
    pub method: Option<Spanned<String>>,
    /// The Host header (http). Default: the instance's address.
    pub host: Option<Spanned<String>>,
    /// Statuses that pass, `"204"` or `"200-399"` (http). Default
    /// [`d::health::EXPECT`].
    pub expect: Option<Vec<Spanned<String>>>,
    /// Time between checks of one instance. Default [`d::health::INTERVAL`].
    pub interval: Option<Spanned<Dur>>,
    /// Time one check may take. Default [`d::health::TIMEOUT`], or half the
    /// interval when shorter.
    pub timeout: Option<Spanned<Dur>>,
    /// Passes that bring an instance back. Default
    /// [`d::health::HEALTHY_THRESHOLD`].
    pub healthy_threshold: Option<Spanned<i64>>,
    /// Failures that take an instance out. Default
    /// [`d::health::UNHEALTHY_THRESHOLD`].
    pub unhealthy_threshold: Option<Spanned<i64>>,
    /// Random delay added to each interval, up to this. Default: the
    /// interval divided by [`d::health::JITTER_DIVISOR`].
    pub jitter: Option<Spanned<Dur>>,
    /// Health before the first check. Default unknown.
    pub initial: Option<RawInitial>,
}

/// Check kinds as written in TOML.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RawCheckKind {
    Http,
    Tcp,
}

/// Health of an instance before its first check.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RawInitial {
    Unknown,
    Healthy,
}

/// `[services.NAME.outlier]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawOutlier {
    /// Consecutive connect failures that eject (0: off). Default
    /// [`d::outlier::CONNECT_FAILURES`].
    pub connect_failures: Option<Spanned<i64>>,
    /// Consecutive failures of any kind that eject (0: off). Default
    /// [`d::outlier::CONSECUTIVE_FAILURES`].
    pub consecutive_failures: Option<Spanned<i64>>,
    /// Whether 5xx responses count as failures. Default
    /// [`d::outlier::COUNT_5XX`].
    pub count_5xx: Option<bool>,
    /// The first ejection's length. Default [`d::outlier::BASE_EJECTION`].
    pub base_ejection: Option<Spanned<Dur>>,
    /// The longest ejection. Default [`d::outlier::MAX_EJECTION`].
    pub max_ejection: Option<Spanned<Dur>>,
    /// Most instances ejected at once, in percent. Default
    /// [`d::outlier::MAX_EJECTED_PERCENT`].
    pub max_ejected_percent: Option<Spanned<i64>>,
    /// Outcomes an instance needs per interval to be judged by success
    /// rate (0: off). Default [`d::outlier::SUCCESS_RATE_MIN_REQUESTS`].
    pub success_rate_min_requests: Option<Spanned<i64>>,
    /// Instances with enough outcomes needed to judge any. Default
    /// [`d::outlier::SUCCESS_RATE_MIN_INSTANCES`].
    pub success_rate_min_instances: Option<Spanned<i64>>,
    /// Standard deviations below the mean that eject. Default
    /// [`d::outlier::SUCCESS_RATE_STDEV_FACTOR_MILLI`] thousandths.
    pub success_rate_stdev_factor: Option<Spanned<f64>>,
    /// How often success rates are compared. Default
    /// [`d::outlier::SUCCESS_RATE_INTERVAL`].
    pub success_rate_interval: Option<Spanned<Dur>>,
    /// Timed responses an instance needs per interval to be judged by
    /// latency (0: off). Default [`d::outlier::LATENCY_MIN_REQUESTS`].
    pub latency_min_requests: Option<Spanned<i64>>,
    /// Instances with enough responses needed to judge any. Default
    /// [`d::outlier::LATENCY_MIN_INSTANCES`].
    pub latency_min_instances: Option<Spanned<i64>>,
    /// Times the others' median p99 that ejects. Default
    /// [`d::outlier::LATENCY_FACTOR_MILLI`] thousandths.
    pub latency_factor: Option<Spanned<f64>>,
    /// A p99 at or below this never ejects. Default
    /// [`d::outlier::LATENCY_FLOOR`].
    pub latency_floor: Option<Spanned<Dur>>,
    /// How often p99s are compared. Default
    /// [`d::outlier::LATENCY_INTERVAL`].
    pub latency_interval: Option<Spanned<Dur>>,
}

/// `[services.NAME.retry_budget]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRetryBudget {
    /// Retries as a percent of requests. Default
    /// [`d::retry_budget::PERCENT`].
    pub percent: Option<Spanned<i64>>,
    /// Retries always allowed per second. Default
    /// [`d::retry_budget::MIN_PER_SECOND`].
    pub min_per_second: Option<Spanned<i64>>,
}

/// Balancing policy names as written in TOML.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RawBalance {
    RoundRobin,
    LeastConnections,
    P2cEwma,
    ConsistentHash,
    Random,
}

/// `"127.0.0.1:9001"` or `{ address = "127.0.0.1:9001", weight = 2 }`.
#[derive(Debug)]
pub(crate) enum RawInstance {
    Address(String),
    Table(RawInstanceTable),
}

impl<'de> Deserialize<'de> for RawInstance {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawInstance;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("\"IP:PORT\" or a table { address = \"IP:PORT\", weight = N }")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<RawInstance, E> {
                Ok(RawInstance::Address(s.to_owned()))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<RawInstance, A::Error> {
                RawInstanceTable::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(RawInstance::Table)
            }
        }
        d.deserialize_any(V)
    }
}

/// The table form of an instance.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawInstanceTable {
    /// `"IP:PORT"`. Required.
    pub address: String,
    /// Relative share of traffic, 1 to 1000. Default
    /// [`d::service::WEIGHT`].
    pub weight: Option<i64>,
    /// Tags (metadata): `{ version = "2", zone = "a" }`. Default none.
    pub tags: Option<BTreeMap<String, String>>,
}
