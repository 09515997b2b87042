//! Configuration: parses `wayfinder.toml` into typed, validated values.
//!
//! Two layers, as the file is read: [`raw`] mirrors the TOML with serde
//! (unknown keys rejected, durations with units), then `validate` checks
//! meaning (addresses, names, references between routes and services) and
//! builds the [`Config`] the rest of the proxy uses. Every error names the
//! file, the line and column, and the key path of what is wrong.

mod collect;
mod discovery;
mod forwarding;
mod raw;
mod serialize;
mod validate;

/// Helpers shared by the config unit tests.
#[cfg(test)]
mod test_util {
    use std::path::Path;

    use super::{Config, ConfigError};

    /// Parses `text` as `test.toml`.
    pub(super) fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"))
    }

    /// Every error `text` produces, as (line, key, message).
    pub(super) fn errs(text: &str) -> Vec<(usize, String, String)> {
        match parse(text).unwrap_err() {
            ConfigError::Several { errors, .. } => errors
                .into_iter()
                .map(|e| match e {
                    ConfigError::Invalid {
                        line, key, message, ..
                    } => (line, key, message),
                    e => panic!("unexpected {e}"),
                })
                .collect(),
            ConfigError::Invalid {
                line, key, message, ..
            } => vec![(line, key, message)],
            e => panic!("unexpected {e}"),
        }
    }

    /// The line, key and message of the error `text` must produce.
    pub(super) fn err(text: &str) -> (usize, String, String) {
        match parse(text).unwrap_err() {
            ConfigError::Invalid {
                line, key, message, ..
            } => (line, key, message),
            e => panic!("unexpected {e}"),
        }
    }
}

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

pub use serialize::REDACTED;

/// Most errors one file reports; further ones are counted, not listed.
pub const MAX_ERRORS: usize = 20;

/// A fully validated configuration. It serializes (for `GET /v1/config`)
/// with the file's key names and with secrets (the admin token, the etcd
/// password) replaced by [`REDACTED`].
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Where clients connect.
    pub listen: Vec<SocketAddr>,
    /// The admin API listener; `None` when disabled.
    pub admin: Option<SocketAddr>,
    /// Bearer token that admin calls must carry (the mutating ones, or all
    /// but `/healthz` and `/readyz` with [`Config::admin_auth_reads`]), if
    /// set. With `token_env`, the variable's value (`None` when only
    /// checked with [`Config::check`] and the variable is not set).
    pub admin_token: Option<String>,
    /// `admin.token_env`: the environment variable the token is read from.
    pub admin_token_env: Option<String>,
    /// `admin.auth_reads`: reads need the token too.
    pub admin_auth_reads: bool,
    /// `[registry]`.
    pub registry: RegistrySettings,
    /// `[runtime]`.
    pub runtime: Runtime,
    /// Timeouts on both sides of the proxy.
    pub timeouts: Timeouts,
    /// Size and count limits.
    pub limits: Limits,
    /// How a request reaches a service that has no explicit route.
    pub conventions: Conventions,
    /// Forwarding settings.
    pub proxy: ProxySettings,
    /// `[http2]`.
    pub http2: Http2Settings,
    /// Explicit routes, in file order.
    pub routes: Vec<Route>,
    /// Services declared in the file, by name.
    pub services: BTreeMap<Arc<str>, ServiceConfig>,
    /// The policy of services known only from a registry source (not
    /// declared in the file): the global timeouts and attempts, no active
    /// checks, default outlier detection.
    pub default_policy: Arc<ServicePolicy>,
}

/// `[runtime]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Runtime {
    /// Tokio worker threads; `None` means one per available core.
    pub worker_threads: Option<usize>,
}

/// `[registry]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RegistrySettings {
    /// Largest share of a service's instances one implicit update may
    /// remove (0 disables the guard).
    pub self_preservation_percent: u8,
    /// A failing source is reported stale after this long.
    #[serde(serialize_with = "serialize::duration")]
    pub max_staleness: Duration,
    /// Where the registration API's instances are saved, if anywhere.
    pub state_file: Option<PathBuf>,
    /// TTL of registrations that name none.
    #[serde(serialize_with = "serialize::duration")]
    pub default_ttl: Duration,
    /// Longest self-preservation holds back a removal; then it applies.
    pub max_hold: Duration,
    /// `[registry.etcd]`: the shared registry, when several proxies share one.
    pub etcd: Option<EtcdSettings>,
}

/// `[registry.etcd]`: etcd (v3, through its JSON gateway) as the registry
/// shared by several proxies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EtcdSettings {
    /// Client URLs (`http://host:port`), tried in order.
    #[serde(serialize_with = "serialize::uris")]
    pub endpoints: Vec<http::Uri>,
    /// Key prefix, starting and ending with `/`.
    pub prefix: String,
    /// User and password for etcd authentication, when enabled there.
    pub auth: Option<EtcdAuth>,
    /// TCP connect to an endpoint.
    #[serde(serialize_with = "serialize::duration")]
    pub dial_timeout: Duration,
    /// One etcd call (not the long-lived watch).
    #[serde(serialize_with = "serialize::duration")]
    pub request_timeout: Duration,
}

/// etcd credentials. Neither `Debug` nor `Serialize` shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct EtcdAuth {
    /// The etcd user.
    pub username: String,
    /// Its password.
    pub password: String,
}

impl std::fmt::Debug for EtcdAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdAuth")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// `[timeouts]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Timeouts {
    /// Upstream TCP connect.
    #[serde(serialize_with = "serialize::duration")]
    pub connect: Duration,
    /// From writing the request upstream to receiving the response head.
    #[serde(serialize_with = "serialize::duration")]
    pub response_header: Duration,
    /// Waiting for a complete request head from a client. The clock starts
    /// when the connection starts waiting for a request, so this also closes
    /// HTTP/1 keep-alive connections that stay idle for longer.
    #[serde(serialize_with = "serialize::duration")]
    pub client_header: Duration,
    /// How long an idle pooled upstream connection is kept before closing.
    #[serde(serialize_with = "serialize::duration")]
    pub upstream_idle: Duration,
    /// How long shutdown waits for in-flight requests before exiting.
    #[serde(serialize_with = "serialize::duration")]
    pub shutdown_drain: Duration,
    /// On SIGTERM/SIGINT: how long the proxy keeps serving, with `/readyz`
    /// reporting not ready, before it stops accepting (zero: at once).
    #[serde(serialize_with = "serialize::duration")]
    pub pre_stop: Duration,
    /// Longest pause while a client sends a request body.
    #[serde(serialize_with = "serialize::duration")]
    pub client_body: Duration,
    /// Longest a write to a client may make no progress.
    #[serde(serialize_with = "serialize::duration")]
    pub client_send: Duration,
}

/// `[limits]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Limits {
    /// Largest request head (request line and headers) accepted, in bytes.
    pub max_header_bytes: usize,
    /// Most client connections served at once; further clients wait in the
    /// kernel's accept backlog.
    pub max_connections: usize,
    /// Most idle pooled upstream connections kept per instance.
    pub max_idle_per_instance: usize,
    /// Longest request target accepted, in bytes.
    pub max_uri_bytes: usize,
}

/// `[conventions]`: routing without a route per service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Conventions {
    /// Lower-case host suffixes, each starting with a dot: `NAME` + suffix
    /// names service `NAME`.
    pub host_suffixes: Vec<String>,
    /// Whether `/NAME/rest` names service `NAME` (forwarded as `/rest`).
    pub path: bool,
}

/// `[proxy]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProxySettings {
    /// The pseudonym written into `Via`.
    pub via: String,
    /// Attempts per request when the picked instance cannot be reached.
    pub max_attempts: u32,
    /// Whether responses carry `x-wayfinder-debug` (which instance served,
    /// which attempts failed).
    pub debug_header: bool,
    /// Whether responses carry `x-wayfinder-snapshot: VERSION; age=MS`.
    pub snapshot_header: bool,
    /// Peers whose forwarding headers are kept.
    pub trusted_proxies: Vec<Cidr>,
    /// Whether the proxy writes an RFC 7239 `Forwarded` header.
    pub forwarded: bool,
    /// Upgrade protocols forwarded when a route does not list its own.
    pub upgrades: Vec<String>,
    /// Whether plain HTTP/1.1 takes the fast path.
    pub fast_path: bool,
}

/// An address block: `10.0.0.0/8`, `::1/128`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// The network address.
    pub addr: std::net::IpAddr,
    /// The prefix length.
    pub prefix: u8,
}

impl Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{}/{}", self.addr, self.prefix))
    }
}

/// `[http2]`: limits and timers of HTTP/2 client connections.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Http2Settings {
    /// Streams a client may have open at once.
    pub max_concurrent_streams: u32,
    /// PING interval.
    #[serde(serialize_with = "serialize::duration")]
    pub keepalive_interval: Duration,
    /// How long a PING may go unanswered.
    #[serde(serialize_with = "serialize::duration")]
    pub keepalive_timeout: Duration,
    /// A connection with no open stream for this long is closed.
    #[serde(serialize_with = "serialize::duration")]
    pub idle_timeout: Duration,
    /// Streams reset by the client before being handled, at once.
    pub max_pending_reset_streams: usize,
    /// Streams reset for protocol errors before the connection closes.
    pub max_local_error_resets: usize,
}

/// One explicit route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Which Host values match.
    pub host: HostMatch,
    /// Path prefix, starting with `/`, matched on segment boundaries.
    pub path: String,
    /// Whether the matched prefix is removed before forwarding.
    pub strip_prefix: bool,
    /// The service the route sends to.
    pub service: Arc<str>,
    /// Upgrade protocols forwarded on this route (`None`: `proxy.upgrades`).
    pub upgrades: Option<Vec<String>>,
}

/// The Host part of a route.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostMatch {
    /// Any Host.
    Any,
    /// Exactly this lower-case host.
    Exact(String),
    /// Any host ending in this lower-case suffix, which starts with a dot
    /// (from `*.example.com`).
    Suffix(String),
}

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
}

/// `[services.NAME.timeouts]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceTimeouts {
    /// TCP connect to an instance.
    pub connect: Duration,
    /// Request written to response head received, per attempt.
    pub response_header: Duration,
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
}

/// An instance written in the config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StaticInstance {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Relative share of traffic, 1 to 1000.
    pub weight: u32,
}

/// Why a configuration was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: cannot read: {source}")]
    Read {
        /// The file.
        file: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file was read but its content is wrong.
    #[error("{file}:{line}:{column}: {key}: {message}")]
    Invalid {
        /// The file.
        file: PathBuf,
        /// 1-based line of the offending value (0 when unknown).
        line: usize,
        /// 1-based column.
        column: usize,
        /// Dotted key path, e.g. `services.api.instances[1]`.
        key: String,
        /// What is wrong, and what is expected.
        message: String,
    },
    /// More than one thing is wrong: each error on its own line, in file
    /// order, at most [`MAX_ERRORS`] of them.
    #[error("{}", several(errors, *truncated))]
    Several {
        /// The errors, each an [`ConfigError::Invalid`], in line order.
        errors: Vec<ConfigError>,
        /// Whether checking stopped at [`MAX_ERRORS`] with more to find.
        truncated: bool,
    },
}

fn several(errors: &[ConfigError], truncated: bool) -> String {
    let head = if truncated {
        format!("more than {MAX_ERRORS} errors; the first {MAX_ERRORS}:")
    } else {
        format!("{} errors:", errors.len())
    };
    let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
    format!("{head}\n{}", lines.join("\n"))
}

impl ConfigError {
    /// The key path the error names (the first one's when there are
    /// several), if it is about content.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } => Some(key),
            ConfigError::Read { .. } => None,
            ConfigError::Several { errors, .. } => errors.first().and_then(ConfigError::key),
        }
    }

    /// The 1-based line the error names (the first one's), if known.
    pub fn line(&self) -> Option<usize> {
        match self {
            ConfigError::Invalid { line, .. } if *line > 0 => Some(*line),
            ConfigError::Several { errors, .. } => errors.first().and_then(ConfigError::line),
            _ => None,
        }
    }

    /// Each error on its own: the listed ones of [`ConfigError::Several`],
    /// else this one.
    pub fn each(&self) -> Vec<&ConfigError> {
        match self {
            ConfigError::Several { errors, .. } => errors.iter().collect(),
            e => vec![e],
        }
    }
}

/// What `wayfinder check` found in a valid file.
#[derive(Debug)]
pub struct Checked {
    /// The config. Secrets read from environment variables that are not set
    /// where the check ran are missing from it: use it to report, not to run.
    pub config: Config,
    /// Things worth a word that do not make the file invalid.
    pub warnings: Vec<String>,
}

impl Config {
    /// Reads and validates the file at `path`, for running: environment
    /// variables it names (`admin.token_env`, `registry.etcd.password_env`)
    /// must be set.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = read(path)?;
        Config::parse(&text, path)
    }

    /// Reads and validates the file at `path` without the environment it
    /// will run in: the variables it names are checked by name, not value
    /// (an unset one is a warning). Also returns the warnings `run` logs at
    /// start.
    pub fn check(path: &Path) -> Result<Checked, ConfigError> {
        let text = read(path)?;
        let (config, mut warnings) = validate::parse(&text, path, collect::Env::ShapeOnly)?;
        warnings.extend(config.warnings());
        Ok(Checked { config, warnings })
    }

    /// Validates `text`; `file` is only used to name the source in errors.
    /// The environment variables it names must be set.
    pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
        validate::parse(text, file, collect::Env::Require).map(|(c, _)| c)
    }

    /// Number of static instances across all services.
    pub fn static_instance_count(&self) -> usize {
        self.services.values().map(|s| s.instances.len()).sum()
    }

    /// What in this config deserves a warning without being an error: an
    /// admin API reachable beyond loopback with no token, or with reads left
    /// open.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        let Some(admin) = self.admin else {
            return out;
        };
        if admin.ip().is_loopback() {
            return out;
        }
        let token = self.admin_token.is_some() || self.admin_token_env.is_some();
        if !token {
            out.push(format!(
                "admin.listen {admin} is not a loopback address and no admin.token is set: \
                 anyone who can reach it can register, drain and deregister instances and \
                 read the registry; set admin.token (or token_env) and admin.auth_reads = true"
            ));
        } else if !self.admin_auth_reads {
            out.push(format!(
                "admin.listen {admin} is not a loopback address and admin.auth_reads is off: \
                 reads (/v1/services, /v1/registry, /v1/config, ...) need no token; \
                 set admin.auth_reads = true to require it"
            ));
        }
        out
    }
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        file: path.to_owned(),
        source,
    })
}

/// Checks a service name: 1 to 63 characters from `a-z`, `0-9`, `-` and `_`,
/// starting with a letter or digit, so it can stand as a DNS label in a Host.
pub fn check_service_name(name: &str) -> Result<(), String> {
    let ok_len = (1..=63).contains(&name.len());
    let mut bytes = name.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let rest_ok =
        bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok_len && first_ok && rest_ok {
        Ok(())
    } else {
        Err(format!(
            "invalid service name {name:?}: use 1-63 characters a-z, 0-9, '-' or '_', starting with a letter or digit"
        ))
    }
}
