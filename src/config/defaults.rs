//! Every default of `wayfinder.toml`, written once. The raw mirror's docs
//! point here (`raw.rs`), validation applies these values (`validate`), and
//! a test checks that an empty file gets exactly them. One module per
//! table, named as in the file.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// `listen`: where clients connect.
pub(crate) const LISTEN: SocketAddr = SocketAddr::new(LOOPBACK, 8080);

/// `[admin]`.
pub(crate) mod admin {
    use super::*;

    /// `admin.listen` (`"off"` disables the admin API).
    pub(crate) const LISTEN: SocketAddr = SocketAddr::new(LOOPBACK, 9900);
    /// `admin.auth_reads`.
    pub(crate) const AUTH_READS: bool = false;
}

/// `[registry]`.
pub(crate) mod registry {
    use super::*;

    /// `registry.self_preservation_percent`.
    pub(crate) const SELF_PRESERVATION_PERCENT: u8 = 50;
    /// `registry.max_staleness`.
    pub(crate) const MAX_STALENESS: Duration = Duration::from_secs(300);
    /// `registry.default_ttl`.
    pub(crate) const DEFAULT_TTL: Duration = Duration::from_secs(30);
    /// `registry.max_hold`.
    pub(crate) const MAX_HOLD: Duration = Duration::from_secs(300);
}

/// `[registry.etcd]`.
pub(crate) mod etcd {
    use super::*;

    /// `registry.etcd.prefix`.
    pub(crate) const PREFIX: &str = "/wayfinder/";
    /// The port of an endpoint that names none (etcd's client port).
    pub(crate) const PORT: u16 = 2379;
    /// `registry.etcd.dial_timeout`.
    pub(crate) const DIAL_TIMEOUT: Duration = Duration::from_secs(2);
    /// `registry.etcd.request_timeout`.
    pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
}

/// `[registry.gossip]`.
pub(crate) mod gossip {
    use super::*;

    /// `registry.gossip.bind`.
    pub(crate) const BIND: SocketAddr = SocketAddr::new(LOOPBACK, 7946);
    /// `registry.gossip.cluster`.
    pub(crate) const CLUSTER: &str = "wayfinder";
    /// `registry.gossip.failure_detection`.
    pub(crate) const FAILURE_DETECTION: Duration = Duration::from_secs(4);
    /// `registry.gossip.phi_threshold`.
    pub(crate) const PHI_THRESHOLD: u8 = 8;
    /// `registry.gossip.retry_join_max`.
    pub(crate) const RETRY_JOIN_MAX: Duration = Duration::from_secs(30);
    /// `registry.gossip.leave_timeout`.
    pub(crate) const LEAVE_TIMEOUT: Duration = Duration::from_secs(2);
    /// Shortest secret accepted, in bytes.
    pub(crate) const MIN_SECRET: usize = 16;
}

/// `[registry.serf]`.
pub(crate) mod serf {
    use super::*;

    /// `registry.serf.rpc` (the agent's default `-rpc-addr`).
    pub(crate) const RPC: SocketAddr = SocketAddr::new(LOOPBACK, 7373);
    /// `registry.serf.retry_max`.
    pub(crate) const RETRY_MAX: Duration = Duration::from_secs(10);
}

/// `[timeouts]`.
pub(crate) mod timeouts {
    use super::*;

    /// `timeouts.connect`.
    pub(crate) const CONNECT: Duration = Duration::from_secs(2);
    /// `timeouts.response_header`.
    pub(crate) const RESPONSE_HEADER: Duration = Duration::from_secs(30);
    /// `timeouts.client_header`.
    pub(crate) const CLIENT_HEADER: Duration = Duration::from_secs(30);
    /// `timeouts.response_body`: as Envoy's stream idle timeout, long
    /// enough for quiet server streams (nginx's `proxy_read_timeout` is
    /// 60 s).
    pub(crate) const RESPONSE_BODY: Duration = Duration::from_secs(300);
    /// `timeouts.upstream_idle`.
    pub(crate) const UPSTREAM_IDLE: Duration = Duration::from_secs(60);
    /// `timeouts.shutdown_drain`.
    pub(crate) const SHUTDOWN_DRAIN: Duration = Duration::from_secs(10);
    /// `timeouts.pre_stop` (zero: stop accepting at once).
    pub(crate) const PRE_STOP: Duration = Duration::ZERO;
    /// `timeouts.client_body`.
    pub(crate) const CLIENT_BODY: Duration = Duration::from_secs(15);
    /// `timeouts.client_send`.
    pub(crate) const CLIENT_SEND: Duration = Duration::from_secs(15);
}

/// `[limits]`.
pub(crate) mod limits {
    /// `limits.max_header_bytes`.
    pub(crate) const MAX_HEADER_BYTES: usize = 16 * 1024;
    /// `limits.max_connections`.
    pub(crate) const MAX_CONNECTIONS: usize = 10_000;
    /// `limits.max_idle_per_instance`.
    pub(crate) const MAX_IDLE_PER_INSTANCE: usize = 64;
    /// `limits.max_uri_bytes`.
    pub(crate) const MAX_URI_BYTES: usize = 8 * 1024;
}

/// `[conventions]`.
pub(crate) mod conventions {
    /// `conventions.host_suffixes`.
    pub(crate) const HOST_SUFFIXES: &[&str] = &[".svc"];
    /// `conventions.path`.
    pub(crate) const PATH: bool = false;
}

/// `[proxy]`.
pub(crate) mod proxy {
    /// `proxy.via`.
    pub(crate) const VIA: &str = "wayfinder";
    /// `proxy.max_attempts`.
    pub(crate) const MAX_ATTEMPTS: u32 = 3;
    /// `proxy.debug_header`.
    pub(crate) const DEBUG_HEADER: bool = false;
    /// `proxy.snapshot_header`.
    pub(crate) const SNAPSHOT_HEADER: bool = false;
    /// `proxy.forwarded`.
    pub(crate) const FORWARDED: bool = false;
    /// `proxy.upgrades`.
    pub(crate) const UPGRADES: &[&str] = &["websocket"];
    /// `proxy.fast_path`.
    pub(crate) const FAST_PATH: bool = true;
    /// `proxy.request_id`.
    pub(crate) const REQUEST_ID: bool = false;
    /// `proxy.request_id_header`.
    pub(crate) const REQUEST_ID_HEADER: &str = "x-request-id";
}

/// `[metrics]`.
pub(crate) mod metrics {
    /// `metrics.enabled`.
    pub(crate) const ENABLED: bool = true;
}

/// `[access_log]`.
pub(crate) mod access_log {
    /// `access_log.enabled`.
    pub(crate) const ENABLED: bool = false;
    /// `access_log.path`.
    pub(crate) const PATH: &str = "stdout";
    /// `access_log.format`.
    pub(crate) const FORMAT: &str = "text";
    /// `access_log.queue`.
    pub(crate) const QUEUE: usize = 8192;
}

/// `[http2]`.
pub(crate) mod http2 {
    use super::*;

    /// `http2.max_concurrent_streams`.
    pub(crate) const MAX_CONCURRENT_STREAMS: u32 = 256;
    /// `http2.keepalive_interval`.
    pub(crate) const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
    /// `http2.keepalive_timeout`.
    pub(crate) const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
    /// `http2.idle_timeout`.
    pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
    /// `http2.max_pending_reset_streams`.
    pub(crate) const MAX_PENDING_RESET_STREAMS: usize = 20;
    /// `http2.max_local_error_resets`.
    pub(crate) const MAX_LOCAL_ERROR_RESETS: usize = 1024;
    /// `http2.upstream_max_streams`.
    pub(crate) const UPSTREAM_MAX_STREAMS: usize = 100;
    /// `http2.upstream_max_connections`.
    pub(crate) const UPSTREAM_MAX_CONNECTIONS: usize = 4;
}

/// `[[routes]]`.
pub(crate) mod route {
    /// `routes[].path`.
    pub(crate) const PATH: &str = "/";
}

/// `[services.NAME]` (the service's own keys; `max_attempts` and its
/// `timeouts` default to the global `proxy.max_attempts` and `[timeouts]`).
pub(crate) mod service {
    use super::*;

    /// `instances[].weight`.
    pub(crate) const WEIGHT: u32 = 1;
    /// `panic_threshold`.
    pub(crate) const PANIC_THRESHOLD: u8 = 50;
    /// `slow_start` (zero: off).
    pub(crate) const SLOW_START: Duration = Duration::ZERO;
}

/// `[services.NAME.outlier]`.
pub(crate) mod outlier {
    use super::*;

    /// `outlier.connect_failures`.
    pub(crate) const CONNECT_FAILURES: u32 = 1;
    /// `outlier.consecutive_failures`.
    pub(crate) const CONSECUTIVE_FAILURES: u32 = 5;
    /// `outlier.count_5xx`.
    pub(crate) const COUNT_5XX: bool = false;
    /// `outlier.base_ejection`.
    pub(crate) const BASE_EJECTION: Duration = Duration::from_secs(1);
    /// `outlier.max_ejection`.
    pub(crate) const MAX_EJECTION: Duration = Duration::from_secs(30);
    /// `outlier.max_ejected_percent`.
    pub(crate) const MAX_EJECTED_PERCENT: u8 = 50;
    /// `outlier.success_rate_min_requests` (0: success-rate detection off).
    pub(crate) const SUCCESS_RATE_MIN_REQUESTS: u32 = 0;
    /// `outlier.success_rate_min_instances` (Envoy's default).
    pub(crate) const SUCCESS_RATE_MIN_INSTANCES: u32 = 5;
    /// `outlier.success_rate_stdev_factor`, in thousandths (Envoy's 1.9).
    pub(crate) const SUCCESS_RATE_STDEV_FACTOR_MILLI: u32 = 1900;
    /// `outlier.success_rate_interval`.
    pub(crate) const SUCCESS_RATE_INTERVAL: Duration = Duration::from_secs(10);
    /// `outlier.latency_min_requests` (0: latency detection off).
    pub(crate) const LATENCY_MIN_REQUESTS: u32 = 0;
    /// `outlier.latency_min_instances`: the median of two others already
    /// outvotes one slow instance.
    pub(crate) const LATENCY_MIN_INSTANCES: u32 = 3;
    /// `outlier.latency_factor`, in thousandths.
    pub(crate) const LATENCY_FACTOR_MILLI: u32 = 3000;
    /// `outlier.latency_floor`.
    pub(crate) const LATENCY_FLOOR: Duration = Duration::from_millis(10);
    /// `outlier.latency_interval`.
    pub(crate) const LATENCY_INTERVAL: Duration = Duration::from_secs(10);
}

/// `[services.NAME.retry_budget]`.
pub(crate) mod retry_budget {
    /// `retry_budget.percent`.
    pub(crate) const PERCENT: u32 = 20;
    /// `retry_budget.min_per_second`.
    pub(crate) const MIN_PER_SECOND: u32 = 5;
}

/// `[services.NAME.health]`.
pub(crate) mod health {
    use super::*;

    /// `health.interval`.
    pub(crate) const INTERVAL: Duration = Duration::from_secs(5);
    /// `health.timeout`, or half the interval when that is shorter.
    pub(crate) const TIMEOUT: Duration = Duration::from_secs(1);
    /// `health.healthy_threshold`.
    pub(crate) const HEALTHY_THRESHOLD: u32 = 2;
    /// `health.unhealthy_threshold`.
    pub(crate) const UNHEALTHY_THRESHOLD: u32 = 3;
    /// `health.jitter` is the interval divided by this.
    pub(crate) const JITTER_DIVISOR: u32 = 10;
    /// `health.path` (kind `"http"`).
    pub(crate) const PATH: &str = "/healthz";
    /// `health.method` (kind `"http"`).
    pub(crate) const METHOD: http::Method = http::Method::GET;
    /// `health.expect` (kind `"http"`): 200 to 399.
    pub(crate) const EXPECT: (u16, u16) = (200, 399);
}

/// `[services.NAME.dns]`.
pub(crate) mod dns {
    use super::*;

    /// `dns.min_refresh`.
    pub(crate) const MIN_REFRESH: Duration = Duration::from_secs(1);
    /// `dns.max_refresh`.
    pub(crate) const MAX_REFRESH: Duration = Duration::from_secs(60);
    /// `dns.nxdomain_grace` (zero: empty the set at the first NXDOMAIN).
    pub(crate) const NXDOMAIN_GRACE: Duration = Duration::from_secs(30);
}

/// `[services.NAME.p2c_ewma]`.
pub(crate) mod p2c {
    use super::*;

    /// `p2c_ewma.decay` (Linkerd's default).
    pub(crate) const DECAY: Duration = Duration::from_secs(10);
}

/// `[services.NAME.consistent_hash]`.
pub(crate) mod hash {
    /// `consistent_hash.key`: `"client_address"`.
    pub(crate) const KEY: crate::config::HashKey = crate::config::HashKey::ClientAddress;
    /// `consistent_hash.load_factor` in thousandths (1.25, as in the
    /// bounded-load paper's experiments).
    pub(crate) const LOAD_FACTOR_MILLI: u32 = 1250;
}

/// `[services.NAME.queue]` (and `max_in_flight`).
pub(crate) mod queue {
    use super::*;

    /// `max_in_flight` (0: no limit).
    pub(crate) const MAX_IN_FLIGHT: u32 = 0;
    /// `queue.size` (0: nobody waits).
    pub(crate) const SIZE: u32 = 0;
    /// `queue.timeout`.
    pub(crate) const TIMEOUT: Duration = Duration::from_secs(1);
}

/// `[zone]`.
pub(crate) mod zone {
    /// `zone.tag`.
    pub(crate) const TAG: &str = "zone";
    /// `zone.min_available_percent`.
    pub(crate) const MIN_AVAILABLE_PERCENT: u8 = 70;
}
