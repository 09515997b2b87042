//! Configuration: parses `wayfinder.toml` into typed, validated values.
//! Every other module reads its settings from the [`Config`] built here;
//! this module imports none of them.
//!
//! ```text
//! text ──collect──▶ raw::RawConfig ──validate──▶ Config { startup: Startup, reloadable parts }
//!       TOML syntax, types,            meaning: addresses, names, ranges,
//!       unknown keys                   references between routes and services
//! ```
//!
//! - `raw`: the serde mirror of the file (unknown keys rejected, durations
//!   with units, values kept with their position).
//! - `defaults`: every default, written once.
//! - `collect`: reads the text into the mirror, collecting every syntax,
//!   type and unknown-key error.
//! - `check`: what all validation shares: the error context (file, line,
//!   key; errors collected, not returned at the first) and the checks of
//!   durations, ranges, addresses and host names.
//! - `validate`: one module per part of the file (global tables, services
//!   and their health checks, routes, discovery, forwarding), each building
//!   its typed values.
//! - The typed config: [`Config`] (what a reload applies) holding
//!   [`Startup`] (what is read only at start, compared as a whole on
//!   reload); `service` (one service's settings); [`ConfigError`].
//! - `serialize`: how the config reads in `GET /v1/config`, secrets
//!   redacted.
//!
//! Every error names the file, the line and column, and the key path of
//! what is wrong; one run reports every error (up to 20).
//!
//! Imports between these modules go one way (`a → b`: a uses b); `error`
//! and `defaults` are leaves, and no two siblings use each other:
//!
//! ```text
//! check → error                     raw → check (Dur)
//! collect → check, error, raw       startup → serialize (helpers)
//! validate → collect, check, raw, defaults, the typed config
//!   validate::{global, services} → discovery, forwarding, health (siblings below them)
//! serialize → the typed config (mod, service)
//! ```

mod check;
mod collect;
pub(crate) mod defaults;
mod error;
mod membership;
mod raw;
mod serialize;
mod service;
mod startup;
mod traffic;
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
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

pub use error::ConfigError;
pub use membership::{GossipSettings, SerfSettings};
pub use service::{
    Balance, CheckKind, DnsDiscovery, DnsKind, HealthCheck, LatencyOutlier, Outlier, Protocol,
    RetryBudget, ServiceConfig, ServicePolicy, ServiceTimeouts, StaticInstance, SuccessRate,
    Upstream, PROTOCOL_TAG,
};
pub use startup::{
    AccessLogFormat, AccessLogSettings, AdminSettings, Cidr, ConnectionTimeouts, EtcdAuth,
    EtcdSettings, ForwardingSettings, Http2Settings, Limits, MetricsSettings, RegistrationSettings,
    Runtime, Startup, TlsListener,
};
pub use traffic::{
    check_split, mix, pair_hash, stable_hash, ConsistentHash, HashKey, P2cEwma, Queue,
    RequestValue, RouteTraffic, SetSplitError, SplitEntry, SplitError, SubsetBy, TagSet, Tags,
    Traffic, Zone, MAX_SPLIT,
};

/// A fully validated configuration. [`Config::startup`] holds what the
/// process reads only when it starts; everything else is what a reload
/// applies. It serializes (for `GET /v1/config`) as the file is written,
/// with secrets (the admin token, the etcd password) replaced by
/// `<redacted>`.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Settings read only at start: a reload that changes them applies
    /// them at the next restart.
    pub startup: Startup,
    /// The `[registry]` settings a reload applies: how sources merge and
    /// are guarded.
    pub registry: RegistrySettings,
    /// The `[timeouts]` a reload applies.
    pub timeouts: Timeouts,
    /// The `[proxy]` settings a reload applies.
    pub proxy: ProxySettings,
    /// How a request reaches a service that has no explicit route.
    pub conventions: Conventions,
    /// Explicit routes, in file order.
    pub routes: Vec<Route>,
    /// Services declared in the file, by name.
    pub services: BTreeMap<Arc<str>, ServiceConfig>,
    /// The policy of services known only from a registry source (not
    /// declared in the file): the global timeouts and attempts, no active
    /// checks, default outlier detection.
    pub default_policy: Arc<ServicePolicy>,
    /// `[zone]`: this proxy's zone, when set (also in every policy's
    /// traffic settings).
    pub zone: Option<Arc<Zone>>,
}

/// The `[registry]` settings a reload applies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RegistrySettings {
    /// Largest share of a service's instances one implicit update may
    /// remove (0 disables the guard).
    pub self_preservation_percent: u8,
    /// A failing source is reported stale after this long.
    #[serde(serialize_with = "serialize::duration")]
    pub max_staleness: Duration,
    /// Longest self-preservation holds back a removal; then it applies.
    #[serde(serialize_with = "serialize::duration")]
    pub max_hold: Duration,
}

/// The `[timeouts]` a reload applies: the defaults of every service's
/// request timeouts, and the pre-stop delay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Timeouts {
    /// Upstream TCP connect.
    #[serde(serialize_with = "serialize::duration")]
    pub connect: Duration,
    /// From writing the request upstream to receiving the response head.
    #[serde(serialize_with = "serialize::duration")]
    pub response_header: Duration,
    /// Longest pause while an instance sends a response body.
    #[serde(serialize_with = "serialize::duration")]
    pub response_body: Duration,
    /// On SIGTERM/SIGINT: how long the proxy keeps serving, with `/readyz`
    /// reporting not ready, before it stops accepting (zero: at once).
    #[serde(serialize_with = "serialize::duration")]
    pub pre_stop: Duration,
}

/// The `[proxy]` settings a reload applies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProxySettings {
    /// Attempts per request when the picked instance cannot be reached.
    pub max_attempts: u32,
    /// Upgrade protocols forwarded when a route does not list its own.
    pub upgrades: Vec<String>,
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

/// One explicit route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Its name, for the admin API (unique among routes).
    pub name: Option<Arc<str>>,
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
    /// What happens to a plain-HTTP request (`None`: it is served).
    pub require_tls: Option<RequireTls>,
    /// Which of the service's instances it reaches (`match_tags`,
    /// `split`, `subset_by`).
    pub traffic: RouteTraffic,
}

/// What a route that requires TLS does with a plain-HTTP request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RequireTls {
    /// `308 Permanent Redirect` to the same URL over https.
    Redirect,
    /// `403 Forbidden`.
    Refuse,
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
        let (config, mut warnings) = validate::parse(&text, path, check::Env::ShapeOnly)?;
        warnings.extend(config.warnings());
        Ok(Checked { config, warnings })
    }

    /// Validates `text`; `file` is only used to name the source in errors.
    /// The environment variables it names must be set.
    pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
        validate::parse(text, file, check::Env::Require).map(|(c, _)| c)
    }

    /// Number of static instances across all services.
    pub fn static_instance_count(&self) -> usize {
        self.services.values().map(|s| s.instances.len()).sum()
    }

    /// What in this config deserves a warning without being an error: an
    /// admin API reachable beyond loopback with no token, or with reads left
    /// open.
    pub(crate) fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        let a = &self.startup.admin;
        let Some(admin) = a.listen else {
            return out;
        };
        if admin.ip().is_loopback() {
            return out;
        }
        let token = a.token.is_some() || a.token_env.is_some();
        if !token {
            out.push(format!(
                "admin.listen {admin} is not a loopback address and no admin.token is set: \
                 anyone who can reach it can register, drain and deregister instances and \
                 read the registry; set admin.token (or token_env) and admin.auth_reads = true"
            ));
        } else if !a.auth_reads {
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
pub(crate) fn check_service_name(name: &str) -> Result<(), String> {
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
