//! The running process as the admin API shows it: readiness (`/readyz`),
//! `GET /v1/status` (version, uptime, snapshot, last reload, settings
//! waiting for a restart), `GET /v1/config` (the config in effect, secrets
//! redacted) and `GET /v1/routes` (the routing table in precedence order).
//!
//! [`RunState`] is written by the process (`app`: start, reloads,
//! shutdown) and read here.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::time::Instant;

use crate::clock;
use crate::config::{Config, HostMatch};
use crate::registry::Registry;

/// Where the process is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Binding, loading the registry (the state file, etcd's first
    /// listing): not ready.
    Starting,
    /// Serving: ready.
    Ready,
    /// Shutting down (the pre-stop delay, then the drain): not ready.
    Draining,
}

impl Phase {
    /// `starting`, `ready` or `draining`.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Ready => "ready",
            Phase::Draining => "draining",
        }
    }
}

/// How a reload of the config file ended.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum ReloadOutcome {
    /// The new file was applied.
    Applied {
        /// Settings it changed that apply at the next restart only.
        restart_needed: Vec<String>,
    },
    /// The file was valid and the same as the running config.
    Unchanged,
    /// The file was invalid (or unreadable); the running config stays.
    Rejected {
        /// The error, naming file, line and key.
        error: String,
    },
}

/// One reload.
#[derive(Debug, Clone)]
pub struct Reload {
    /// When it happened.
    pub at: SystemTime,
    /// The file read.
    pub file: PathBuf,
    /// How it ended.
    pub outcome: ReloadOutcome,
}

/// The state of the running process that the admin API shows.
#[derive(Debug)]
pub struct RunState {
    started: Instant,
    phase: AtomicU8,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The config in effect: the last one applied, with the settings that
    /// need a restart still at their values from start.
    config: Arc<Config>,
    /// The file it was loaded from, if any.
    file: Option<PathBuf>,
    /// Settings whose new value waits for a restart.
    restart_needed: Vec<String>,
    last_reload: Option<Reload>,
}

impl RunState {
    /// A process starting with `config` (read from `file`).
    pub fn new(config: &Config, file: Option<PathBuf>) -> Arc<RunState> {
        Arc::new(RunState {
            started: Instant::now(),
            phase: AtomicU8::new(Phase::Starting as u8),
            inner: Mutex::new(Inner {
                config: Arc::new(config.clone()),
                file,
                restart_needed: Vec::new(),
                last_reload: None,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Where the process is.
    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Acquire) {
            0 => Phase::Starting,
            1 => Phase::Ready,
            _ => Phase::Draining,
        }
    }

    /// Moves to `phase`. Draining is final.
    pub fn set_phase(&self, phase: Phase) {
        let _ = self
            .phase
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |now| {
                (now != Phase::Draining as u8).then_some(phase as u8)
            });
    }

    /// The config in effect.
    pub fn config(&self) -> Arc<Config> {
        self.lock().config.clone()
    }

    /// The file the config came from, if any.
    pub fn file(&self) -> Option<PathBuf> {
        self.lock().file.clone()
    }

    /// The last reload, if any.
    pub fn last_reload(&self) -> Option<Reload> {
        self.lock().last_reload.clone()
    }

    /// Settings whose new value waits for a restart.
    pub fn restart_needed(&self) -> Vec<String> {
        self.lock().restart_needed.clone()
    }

    /// Records a reload that applied `config` (the config now in effect)
    /// with `pending` settings waiting for a restart.
    pub fn record_applied(
        &self,
        file: PathBuf,
        config: Config,
        changed: Vec<String>,
        pending: Vec<String>,
    ) {
        let mut inner = self.lock();
        inner.config = Arc::new(config);
        inner.restart_needed = pending;
        inner.last_reload = Some(Reload {
            at: SystemTime::now(),
            file,
            outcome: ReloadOutcome::Applied {
                restart_needed: changed,
            },
        });
    }

    /// Records a reload that found nothing to change.
    pub fn record_unchanged(&self, file: PathBuf) {
        self.lock().last_reload = Some(Reload {
            at: SystemTime::now(),
            file,
            outcome: ReloadOutcome::Unchanged,
        });
    }

    /// Records a rejected reload.
    pub fn record_rejected(&self, file: PathBuf, error: String) {
        self.lock().last_reload = Some(Reload {
            at: SystemTime::now(),
            file,
            outcome: ReloadOutcome::Rejected { error },
        });
    }

    /// Time since start.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }
}

/// `GET /v1/status`.
#[derive(Debug, Serialize)]
pub struct StatusView {
    /// wayfinder's version.
    pub version: &'static str,
    /// Seconds since start.
    pub uptime_s: f64,
    /// Whether `/readyz` answers 200.
    pub ready: bool,
    /// `starting`, `ready` or `draining`.
    pub phase: &'static str,
    /// The published registry snapshot.
    pub snapshot: SnapshotView,
    /// The config file, if any.
    pub config_file: Option<String>,
    /// The last reload of the config file, if any.
    pub last_reload: Option<ReloadView>,
    /// Settings changed by reloads that apply at the next restart only.
    pub restart_needed: Vec<String>,
}

/// The snapshot part of [`StatusView`].
#[derive(Debug, Serialize)]
pub struct SnapshotView {
    /// Its version.
    pub version: u64,
    /// Milliseconds since it was built.
    pub age_ms: u128,
    /// Services in it.
    pub services: usize,
    /// Instances in it.
    pub instances: usize,
}

/// A reload in [`StatusView`].
#[derive(Debug, Serialize)]
pub struct ReloadView {
    /// `applied`, `unchanged` or `rejected`, with its details.
    #[serde(flatten)]
    pub outcome: ReloadOutcome,
    /// The file read.
    pub file: String,
    /// When, in seconds since the Unix epoch.
    pub at: f64,
    /// Seconds ago.
    pub ago_s: f64,
}

/// Builds the `GET /v1/status` answer.
pub fn status(state: &RunState, registry: &Registry) -> StatusView {
    let snap = registry.load();
    let now = SystemTime::now();
    let phase = state.phase();
    StatusView {
        version: env!("CARGO_PKG_VERSION"),
        uptime_s: state.uptime().as_secs_f64(),
        ready: phase == Phase::Ready,
        phase: phase.as_str(),
        snapshot: SnapshotView {
            version: snap.version(),
            age_ms: now
                .duration_since(snap.built_at())
                .map_or(0, |d| d.as_millis()),
            services: snap.service_count(),
            instances: snap.instance_count(),
        },
        config_file: state.file().map(|f| f.display().to_string()),
        last_reload: state.last_reload().map(|r| ReloadView {
            file: r.file.display().to_string(),
            at: r
                .at
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
            ago_s: now.duration_since(r.at).map_or(0.0, |d| d.as_secs_f64()),
            outcome: r.outcome,
        }),
        restart_needed: state.restart_needed(),
    }
}

/// `GET /v1/config`.
#[derive(Debug, Serialize)]
pub struct ConfigView {
    /// The file it was loaded from, if any.
    pub file: Option<String>,
    /// Settings whose new value (in the file) waits for a restart; the
    /// config below shows the value in effect.
    pub restart_needed: Vec<String>,
    /// The config in effect, secrets redacted.
    pub config: Arc<Config>,
}

/// Builds the `GET /v1/config` answer.
pub fn config(state: &RunState) -> ConfigView {
    ConfigView {
        file: state.file().map(|f| f.display().to_string()),
        restart_needed: state.restart_needed(),
        config: state.config(),
    }
}

/// `GET /v1/routes`.
#[derive(Debug, Serialize)]
pub struct RoutesView {
    /// Explicit routes, in the order they are tried.
    pub routes: Vec<RouteView>,
    /// What a request no route matches is tried against.
    pub conventions: ConventionsView,
}

/// One explicit route.
#[derive(Debug, Serialize)]
pub struct RouteView {
    /// `api.example.com`, `*.example.com`, or null for any host.
    pub host: Option<String>,
    /// Path prefix, matched on whole segments.
    pub path: String,
    /// Whether the prefix is removed before forwarding.
    pub strip_prefix: bool,
    /// The service it sends to.
    pub service: String,
    /// Instances of that service in the snapshot.
    pub instances: usize,
    /// Of those, how many take traffic now.
    pub available: usize,
}

/// The conventions part of [`RoutesView`].
#[derive(Debug, Serialize)]
pub struct ConventionsView {
    /// Host `NAME` + one of these suffixes names service `NAME`.
    pub host_suffixes: Vec<String>,
    /// Whether `/NAME/rest` names service `NAME` (forwarded as `/rest`).
    pub path: bool,
}

/// Builds the `GET /v1/routes` answer: the routes of the config in effect,
/// in the router's precedence (exact hosts, wildcard hosts by longest
/// suffix, then routes without a host; the longest path first within a
/// host).
pub fn routes(state: &RunState, registry: &Registry) -> RoutesView {
    let config = state.config();
    let snap = registry.load();
    let now = clock::now_ms();
    let mut list: Vec<&crate::config::Route> = config.routes.iter().collect();
    list.sort_by_key(|r| {
        let (class, host_len, host) = match &r.host {
            HostMatch::Exact(h) => (0, 0, h.clone()),
            HostMatch::Suffix(s) => (1, usize::MAX - s.len(), s.clone()),
            HostMatch::Any => (2, 0, String::new()),
        };
        (class, host_len, host, usize::MAX - r.path.len())
    });
    let routes = list
        .into_iter()
        .map(|r| {
            let (instances, available) = snap.service(&r.service).map_or((0, 0), |s| {
                let members = s.members();
                let up = members
                    .iter()
                    .filter(|m| m.instance.is_available(now))
                    .count();
                (members.len(), up)
            });
            RouteView {
                host: match &r.host {
                    HostMatch::Any => None,
                    HostMatch::Exact(h) => Some(h.clone()),
                    HostMatch::Suffix(s) => Some(format!("*{s}")),
                },
                path: r.path.clone(),
                strip_prefix: r.strip_prefix,
                service: r.service.to_string(),
                instances,
                available,
            }
        })
        .collect();
    RoutesView {
        routes,
        conventions: ConventionsView {
            host_suffixes: config.conventions.host_suffixes.clone(),
            path: config.conventions.path,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draining_is_final() {
        let config = Config::parse("", std::path::Path::new("t.toml")).unwrap();
        let state = RunState::new(&config, None);
        assert_eq!(state.phase(), Phase::Starting);
        state.set_phase(Phase::Ready);
        assert_eq!(state.phase(), Phase::Ready);
        state.set_phase(Phase::Draining);
        state.set_phase(Phase::Ready);
        assert_eq!(state.phase(), Phase::Draining);
    }
}
