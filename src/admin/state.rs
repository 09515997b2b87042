//! The state of the running process that the admin API shows: where it
//! is in its life ([`Phase`], answered by `/readyz`), the config in
//! effect, and the last reload. Written by the process (`app`: start,
//! reloads, shutdown), read by the admin API's views.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::time::Instant;

use crate::config::Config;

/// Where the process is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
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
    pub(crate) fn as_str(self) -> &'static str {
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
pub(crate) enum ReloadOutcome {
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
pub(crate) struct Reload {
    /// When it happened.
    pub at: SystemTime,
    /// The file read.
    pub file: PathBuf,
    /// How it ended.
    pub outcome: ReloadOutcome,
}

/// The state of the running process that the admin API shows.
#[derive(Debug)]
pub(crate) struct RunState {
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
    pub(crate) fn new(config: &Config, file: Option<PathBuf>) -> Arc<RunState> {
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
    pub(crate) fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Acquire) {
            0 => Phase::Starting,
            1 => Phase::Ready,
            _ => Phase::Draining,
        }
    }

    /// Moves to `phase`. Draining is final.
    pub(crate) fn set_phase(&self, phase: Phase) {
        let _ = self
            .phase
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |now| {
                (now != Phase::Draining as u8).then_some(phase as u8)
            });
    }

    /// The config in effect.
    pub(crate) fn config(&self) -> Arc<Config> {
        self.lock().config.clone()
    }

    /// The file the config came from, if any.
    pub(crate) fn file(&self) -> Option<PathBuf> {
        self.lock().file.clone()
    }

    /// The last reload, if any.
    pub(crate) fn last_reload(&self) -> Option<Reload> {
        self.lock().last_reload.clone()
    }

    /// Settings whose new value waits for a restart.
    pub(crate) fn restart_needed(&self) -> Vec<String> {
        self.lock().restart_needed.clone()
    }

    /// Records a reload that applied `config` (the config now in effect)
    /// with `pending` settings waiting for a restart.
    pub(crate) fn record_applied(
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
    pub(crate) fn record_unchanged(&self, file: PathBuf) {
        self.lock().last_reload = Some(Reload {
            at: SystemTime::now(),
            file,
            outcome: ReloadOutcome::Unchanged,
        });
    }

    /// Records a rejected reload.
    pub(crate) fn record_rejected(&self, file: PathBuf, error: String) {
        self.lock().last_reload = Some(Reload {
            at: SystemTime::now(),
            file,
            outcome: ReloadOutcome::Rejected { error },
        });
    }

    /// Time since start.
    pub(crate) fn uptime(&self) -> Duration {
        self.started.elapsed()
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
