//! The typed settings of one service: `[services.NAME]` and its tables
//! (instances, balancing, timeouts, active and passive health, retry
//! budget, DNS discovery), as validation builds them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

/// One `[services.NAME]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceConfig {
    /// The service's name.
    pub name: Arc<str>,
    /// How instances are picked.
    pub balance: Balance,
    /// Instances written in the file.
    pub instances: Vec<StaticInstance>,
    /// Health, retry and timeout behaviour.
    pub policy: Arc<ServicePolicy>,
    /// `[services.NAME.dns]`: instances found in DNS, when configured.
    pub dns: Option<DnsDiscovery>,
}

/// `[services.NAME.dns]`: a service's instances resolved from DNS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsDiscovery {
    /// The name to resolve.
    pub name: String,
    /// Which records, and where the port comes from.
    pub kind: DnsKind,
    /// The nameserver to ask; `None` uses the system's `resolv.conf`.
    pub nameserver: Option<SocketAddr>,
    /// Shortest time between two resolutions, whatever the record TTL.
    pub min_refresh: Duration,
    /// Longest time between two resolutions, whatever the record TTL.
    pub max_refresh: Duration,
    /// How long a name may stay NXDOMAIN (or without records) before the
    /// service's DNS instances are removed.
    pub nxdomain_grace: Duration,
}

/// The records a [`DnsDiscovery`] asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsKind {
    /// A and AAAA records; every address gets this port.
    A {
        /// The instances' port.
        port: u16,
    },
    /// SRV records: target, port and weight per instance.
    Srv,
}

/// How the proxy treats one service's instances: timeouts, retries, active
/// and passive health, slow start and panic mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePolicy {
    /// Attempts per request (first try included).
    pub max_attempts: u32,
    /// Timeouts for requests to this service.
    pub timeouts: ServiceTimeouts,
    /// Active health checks, when configured.
    pub health: Option<HealthCheck>,
    /// Passive health.
    pub outlier: Outlier,
    /// When fewer than this percent of the instances are usable, health is
    /// ignored and traffic spreads over all of them (0 disables).
    pub panic_threshold: u8,
    /// Ramp-up window of an instance that just became healthy (zero: off).
    pub slow_start: Duration,
    /// Retry budget.
    pub retry_budget: RetryBudget,
    /// How instances are spoken to: protocol and TLS.
    pub upstream: Upstream,
    /// Balancing settings, limits, subsets and zone.
    pub traffic: super::traffic::Traffic,
}

/// `protocol` and `tls` of a service: how the proxy speaks to its
/// instances.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Upstream {
    /// The protocol, as written (or as the instances' registrations
    /// declare it, when the file does not write it).
    pub protocol: Protocol,
    /// `protocol` is written in the file: registrations cannot change it.
    pub protocol_written: bool,
    /// TLS towards the instances (`tls = true`, a `tls` table, or implied
    /// by `protocol = "h2"`), loaded; `None` is plain TCP.
    pub tls: Option<Arc<crate::tls::ClientTls>>,
}

impl Upstream {
    /// HTTP/1.1 over plain TCP (what the fast path speaks).
    pub fn is_plain_http1(&self) -> bool {
        self.tls.is_none() && matches!(self.protocol, Protocol::Http1 | Protocol::Auto)
    }

    /// Whether requests may go over HTTP/2 (`h2c`, `h2`, or `auto` over
    /// TLS).
    pub fn may_use_h2(&self) -> bool {
        self.is_h2_only() || (self.protocol == Protocol::Auto && self.tls.is_some())
    }

    /// HTTP/2 whatever the instance says (`h2c`, `h2`).
    pub fn is_h2_only(&self) -> bool {
        matches!(self.protocol, Protocol::H2c | Protocol::H2)
    }

    /// Whether instances may be spoken to with `protocol` over this
    /// upstream's TLS setting: `h2c` and `http1` without TLS, `h2`, `auto`
    /// and `http1` with it.
    pub fn fits(&self, protocol: Protocol) -> bool {
        match protocol {
            Protocol::Http1 => true,
            Protocol::H2c => self.tls.is_none(),
            Protocol::H2 | Protocol::Auto => self.tls.is_some(),
        }
    }
}

impl Protocol {
    /// The name as written in the config and in tags.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http1 => "http1",
            Protocol::H2c => "h2c",
            Protocol::H2 => "h2",
            Protocol::Auto => "auto",
        }
    }

    /// The value of a registration's `protocol` tag.
    pub fn from_tag(value: &str) -> Option<Protocol> {
        match value {
            "http1" => Some(Protocol::Http1),
            "h2c" => Some(Protocol::H2c),
            "h2" => Some(Protocol::H2),
            "auto" => Some(Protocol::Auto),
            _ => None,
        }
    }
}

/// The tag by which a registration declares the protocol its instance
/// speaks (`http1`, `h2c`, `h2`, `auto`), for services whose config does
/// not write `protocol`.
pub const PROTOCOL_TAG: &str = "protocol";

/// `protocol`: what the proxy speaks to a service's instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP/1.1 (over TLS when `tls` is set, ALPN `http/1.1`).
    #[default]
    Http1,
    /// HTTP/2 over plain TCP, by prior knowledge.
    H2c,
    /// HTTP/2 over TLS (ALPN `h2`; the instance must accept it).
    H2,
    /// Over TLS, what the instance picks by ALPN (`h2` or `http/1.1`);
    /// over plain TCP, HTTP/1.1.
    Auto,
}

/// `[services.NAME.timeouts]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceTimeouts {
    /// TCP connect to an instance.
    pub connect: Duration,
    /// Request written to response head received, per attempt.
    pub response_header: Duration,
    /// Longest pause while an instance sends a response body.
    pub response_body: Duration,
    /// Whole request until the response head, all attempts included.
    pub request: Option<Duration>,
}

/// `[services.NAME.health]`: an active check run against every instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// What is checked.
    pub kind: CheckKind,
    /// Time between checks of one instance.
    pub interval: Duration,
    /// Time one check may take.
    pub timeout: Duration,
    /// Consecutive passes that bring an unhealthy instance back.
    pub healthy_threshold: u32,
    /// Consecutive failures that take a healthy instance out.
    pub unhealthy_threshold: u32,
    /// Up to this much random delay added to each interval.
    pub jitter: Duration,
    /// Whether a new instance takes traffic before its first check passes.
    pub start_healthy: bool,
}

/// The kind of active check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckKind {
    /// An HTTP request whose status must fall in one of the ranges.
    Http {
        /// Request method.
        method: http::Method,
        /// Request path.
        path: String,
        /// Host header; the instance address when absent.
        host: Option<String>,
        /// Accepted status ranges, inclusive.
        expect: Vec<(u16, u16)>,
    },
    /// A TCP connect.
    Tcp,
}

/// `[services.NAME.outlier]`: passive health from real traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outlier {
    /// Consecutive connect failures (refused, timed out) that eject (0: off).
    pub connect_failures: u32,
    /// Consecutive failures of any kind (connect, reset, timeout, and 5xx
    /// when counted) that eject (0: off).
    pub consecutive_failures: u32,
    /// Whether 5xx responses count as failures.
    pub count_5xx: bool,
    /// First ejection's length; doubles with each consecutive ejection.
    pub base_ejection: Duration,
    /// Longest ejection.
    pub max_ejection: Duration,
    /// Most of a service's instances ejected at once, in percent (at least
    /// one instance can always be ejected).
    pub max_ejected_percent: u8,
    /// Ejection of instances whose success rate stands well below their
    /// peers'.
    pub success_rate: SuccessRate,
    /// Ejection of instances whose p99 response time stands well above
    /// their peers'.
    pub latency: LatencyOutlier,
}

/// Latency outlier detection (`outlier.latency_*`): every `interval`, the
/// instances with at least `min_requests` timed responses are compared;
/// with at least `min_instances` of them, one whose p99 time to the
/// response head is above `factor` times the median p99 of the others,
/// and above `floor`, is ejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatencyOutlier {
    /// Timed responses an instance needs in an interval to be judged (0:
    /// off).
    pub min_requests: u32,
    /// Instances with enough responses needed for any judgement.
    pub min_instances: u32,
    /// How many times the others' median p99 ejects, in thousandths.
    pub factor_milli: u32,
    /// A p99 at or below this never ejects (a fast service's jitter).
    pub floor: Duration,
    /// How often p99s are compared (and the windows start again).
    pub interval: Duration,
}

/// Success-rate outlier detection (`outlier.success_rate_*`): every
/// `interval`, the instances with at least `min_requests` outcomes are
/// compared; with at least `min_instances` of them, one whose success rate
/// is below the mean minus `stdev_factor` standard deviations is ejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SuccessRate {
    /// Outcomes an instance needs in an interval to be judged (0: off).
    pub min_requests: u32,
    /// Instances with enough outcomes needed for any judgement.
    pub min_instances: u32,
    /// Standard deviations below the mean, in thousandths.
    pub stdev_factor_milli: u32,
    /// How often rates are compared (and counted from zero again).
    pub interval: Duration,
}

/// `[services.NAME.retry_budget]`: retries allowed on top of requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RetryBudget {
    /// Retries as a percent of requests over the last ten seconds.
    pub percent: u32,
    /// Retries always allowed per second, however few the requests.
    pub min_per_second: u32,
}

/// A balancing policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Balance {
    /// Smooth weighted round-robin.
    #[default]
    RoundRobin,
    /// Fewest in-flight requests (relative to weight), ties rotated.
    LeastConnections,
    /// Power of two random choices over the latency average times the
    /// in-flight requests.
    P2cEwma,
    /// A hash ring over a request key, with bounded load.
    ConsistentHash,
    /// Weighted random.
    Random,
}

impl Balance {
    /// The name it is written with in the file.
    pub fn name(self) -> &'static str {
        match self {
            Balance::RoundRobin => "round_robin",
            Balance::LeastConnections => "least_connections",
            Balance::P2cEwma => "p2c_ewma",
            Balance::ConsistentHash => "consistent_hash",
            Balance::Random => "random",
        }
    }
}

/// An instance written in the config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticInstance {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Relative share of traffic, 1 to 1000.
    pub weight: u32,
    /// Its tags, if any.
    pub tags: Option<Arc<super::traffic::Tags>>,
}
