//! The running process: binds the listeners, builds the registry and starts
//! its refresher, the admin API (answering `/readyz` with 503 while the
//! rest starts), the proxy server and the idle-connection reaper; reloads
//! the config file; and on shutdown reports not ready, waits the pre-stop
//! delay while still serving, then stops everything in order. A second
//! SIGTERM/SIGINT during shutdown exits at once.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::admin;
use crate::admin::status::{Phase, RunState};
use crate::config::{Config, ConfigError};
use crate::proxy::server::{self, ServerSettings};
use crate::proxy::Proxy;
use crate::registry::dns::DnsSources;
use crate::registry::etcd::EtcdStore;
use crate::registry::registrations::Registrations;
use crate::registry::{static_instances, Registry, Removals, STATIC_SOURCE};

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr} ({role}): {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// `proxy` or `admin`.
        role: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// `registry.state_file` cannot be written (or read).
    #[error("registry.state_file {}: {what}: {source}", path.display())]
    StateFile {
        /// The file.
        path: PathBuf,
        /// What was tried.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Why `wayfinder run` ended with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// It could not start.
    #[error(transparent)]
    Start(#[from] StartError),
    /// A second SIGTERM/SIGINT arrived during shutdown: exited without
    /// waiting for the pre-stop delay or the drain to end.
    #[error("second signal during shutdown: exited at once, requests in flight were cut")]
    Forced,
}

/// A started proxy.
#[derive(Debug)]
pub struct Running {
    /// Addresses the proxy listens on (with the real ports when the config
    /// asked for port 0).
    pub listen: Vec<SocketAddr>,
    /// The admin API's address, when enabled.
    pub admin: Option<SocketAddr>,
    /// The registry it routes through.
    pub registry: Arc<Registry>,
    /// The registration source behind the admin API.
    pub registrations: Arc<Registrations>,
    /// Readiness, reloads and the config in effect, as the admin API shows
    /// them.
    pub state: Arc<RunState>,
    /// The config the process started with (what restart-only settings
    /// keep until the next start).
    started: Config,
    /// Whether the last reload was rejected (the `config` source then
    /// shows it as its error).
    reload_failed: AtomicBool,
    /// One resolving task per service with a `[services.NAME.dns]` table.
    dns: Mutex<DnsSources>,
    stop: oneshot::Sender<()>,
    done: JoinHandle<()>,
}

impl Running {
    /// Reports not ready (`/readyz` 503), keeps serving for the configured
    /// pre-stop delay (`timeouts.pre_stop`), then stops accepting, drains
    /// requests in flight (up to the drain timeout) and returns when
    /// everything has stopped.
    pub async fn shutdown(self) {
        self.state.set_phase(Phase::Draining);
        let pre_stop = self.state.config().timeouts.pre_stop;
        if !pre_stop.is_zero() {
            tracing::info!(
                ?pre_stop,
                "pre-stop: /readyz reports not ready; still serving until the delay ends"
            );
            tokio::time::sleep(pre_stop).await;
            tracing::info!("pre-stop delay over");
        }
        let _ = self.stop.send(());
        let _ = self.done.await;
    }
}

/// Checks that `registry.state_file` can be saved where it is (a file
/// written beside it and renamed over it, as each save does) and, when it
/// exists, read.
fn check_state_file(path: &Path) -> Result<(), StartError> {
    let fail = |what, source| StartError::StateFile {
        path: path.to_owned(),
        what,
        source,
    };
    if path.exists() {
        std::fs::File::open(path).map_err(|e| fail("cannot read it", e))?;
        if path.is_dir() {
            return Err(fail(
                "is a directory",
                std::io::Error::other("a state file must be a file"),
            ));
        }
    }
    let tmp = path.with_extension("tmp");
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(|e| {
            fail(
                "cannot write beside it (registrations could not be saved)",
                e,
            )
        })?;
    let _ = std::fs::remove_file(&tmp);
    Ok(())
}

/// Binds and starts everything `config` describes. Must be called inside a
/// Tokio runtime.
pub async fn start(config: &Config) -> Result<Running, StartError> {
    start_from(config, None).await
}

/// [`start`], with the file `config` was read from (shown by the admin
/// API).
pub async fn start_from(config: &Config, file: Option<&Path>) -> Result<Running, StartError> {
    if let Some(path) = &config.startup.registry.state_file {
        check_state_file(path)?;
    }
    let mut listeners = Vec::with_capacity(config.startup.listen.len());
    let mut listen = Vec::with_capacity(config.startup.listen.len());
    for &addr in &config.startup.listen {
        let l = server::bind(addr).map_err(|source| StartError::Bind {
            addr,
            role: "proxy",
            source,
        })?;
        listen.push(l.local_addr().unwrap_or(addr));
        listeners.push(l);
    }
    let admin_listener = match config.startup.admin.listen {
        Some(addr) => Some(server::bind(addr).map_err(|source| StartError::Bind {
            addr,
            role: "admin",
            source,
        })?),
        None => None,
    };
    let admin_addr = admin_listener.as_ref().and_then(|l| l.local_addr().ok());
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }
    let state = RunState::new(config, file.map(Path::to_owned));

    let registry = Registry::new(config);
    tokio::spawn(registry.clone().run_refresher());
    let etcd = config.startup.registry.etcd.as_ref().map(|settings| {
        let store = EtcdStore::new(settings, &registry);
        let task = store.spawn();
        (
            store,
            task,
            settings.dial_timeout + settings.request_timeout,
        )
    });
    let registrations = match &etcd {
        Some((store, _, _)) => Registrations::with_etcd(&registry, store.clone()),
        None => Registrations::new(&registry, config.startup.registry.state_file.clone()),
    };
    tokio::spawn(registrations.clone().run_expiry());

    // The admin API answers from here on: `/readyz` says "starting" until
    // the registry is loaded.
    let (admin_stop_tx, admin_stop) = oneshot::channel::<()>();
    let admin = admin::Admin {
        registry: registry.clone(),
        registrations: registrations.clone(),
        token: config.startup.admin.token.as_deref().map(Arc::from),
        auth_reads: config.startup.admin.auth_reads,
        default_ttl: config.startup.registry.default_ttl,
        state: state.clone(),
    };
    let admin_task = admin_listener.map(|l| {
        tokio::spawn(admin::serve(l, admin, async move {
            let _ = admin_stop.await;
        }))
    });

    let etcd_task = match etcd {
        Some((store, task, wait)) => {
            // Serve with the shared registry loaded when etcd answers in
            // time; otherwise start anyway (the source keeps retrying).
            if store.wait_listed(wait).await {
                registry.rebuild();
            } else {
                tracing::warn!(
                    "etcd not listed yet; serving without its instances until it answers"
                );
            }
            Some(task)
        }
        None => {
            // The state file's registrations are in the first snapshot.
            registry.rebuild();
            None
        }
    };
    let dns = DnsSources::start(&registry, config);
    let health = crate::health::spawn_supervisor(&registry);
    let proxy = Arc::new(Proxy::new(registry.clone(), config));
    let snap = registry.load();
    tracing::info!(
        listen = ?listen,
        admin = %admin_addr.map_or_else(|| "off".to_owned(), |a| a.to_string()),
        services = snap.service_count(),
        instances = snap.instance_count(),
        "wayfinder listening"
    );
    drop(snap);

    let (stop, stopped) = oneshot::channel::<()>();
    let reaper = tokio::spawn(reap_idle(
        proxy.clone(),
        config.startup.timeouts.upstream_idle,
    ));
    let settings = ServerSettings::from_config(config);
    let done = tokio::spawn(async move {
        server::serve(listeners, proxy, settings, async move {
            let _ = stopped.await;
        })
        .await;
        let _ = admin_stop_tx.send(());
        if let Some(t) = admin_task {
            let _ = t.await;
        }
        reaper.abort();
        health.abort();
        if let Some(t) = etcd_task {
            t.abort();
        }
    });
    state.set_phase(Phase::Ready);
    Ok(Running {
        listen,
        admin: admin_addr,
        registry,
        registrations,
        state,
        started: config.clone(),
        reload_failed: AtomicBool::new(false),
        dns: Mutex::new(dns),
        stop,
        done,
    })
}

/// The settings read only at start ([`Config::startup`]): the keys that
/// differ between `old` and `new`, and `new` with them kept at their `old`
/// values (what is in effect until a restart).
fn restart_only(old: &Config, new: &Config) -> (Vec<String>, Config) {
    let changed = old.startup.changed_keys(&new.startup);
    let effective = Config {
        startup: old.startup.clone(),
        ..new.clone()
    };
    (changed, effective)
}

impl Running {
    /// Reloads the config file at `path` (`current` is the last config
    /// applied) and applies routes, services, policies, static instances
    /// and the pre-stop delay. An invalid file changes nothing; its error
    /// is returned, logged, shown by `GET /v1/status` and as the `config`
    /// source's error in `GET /v1/sources`. Settings read only at start
    /// are listed in the log line and in `GET /v1/status`.
    pub fn reload(&self, path: &Path, current: &mut Config) -> Result<bool, ConfigError> {
        let new = match Config::load(path) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "config reload rejected; the running config stays");
                self.state.record_rejected(path.to_owned(), e.to_string());
                self.registry
                    .source_failed(STATIC_SOURCE, format!("rejected reload: {e}"));
                self.reload_failed.store(true, Ordering::Relaxed);
                return Err(e);
            }
        };
        if new == *current {
            self.state.record_unchanged(path.to_owned());
            self.clear_reload_error(current);
            return Ok(false);
        }
        let (changed, _) = restart_only(current, &new);
        let (pending, effective) = restart_only(&self.started, &new);
        self.registry.apply_config(&effective);
        self.dns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .apply(&self.registry, &effective);
        self.clear_reload_error(&effective);
        if changed.is_empty() {
            tracing::info!(file = %path.display(), routes = new.routes.len(), services = new.services.len(), "config reloaded");
        } else {
            tracing::warn!(
                file = %path.display(),
                routes = new.routes.len(),
                services = new.services.len(),
                restart_needed = %changed.join(", "),
                "config reloaded; changed settings that apply only at the next restart: {}",
                changed.join(", ")
            );
        }
        self.state
            .record_applied(path.to_owned(), effective, changed, pending);
        *current = new;
        Ok(true)
    }

    /// After a valid reload: the `config` source no longer shows the error
    /// of an earlier rejected one.
    fn clear_reload_error(&self, config: &Config) {
        if self.reload_failed.swap(false, Ordering::Relaxed) {
            self.registry
                .report(STATIC_SOURCE, static_instances(config), Removals::Explicit);
        }
    }

    /// Watches `path` (checked every second) and, with `sighup`, SIGHUP;
    /// reloads on change. Runs until the process ends.
    pub fn spawn_reloader(self: &Arc<Self>, path: PathBuf, mut current: Config, sighup: bool) {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            let stamp = |p: &Path| {
                std::fs::metadata(p)
                    .ok()
                    .map(|m| (m.modified().ok(), m.len()))
            };
            let mut last = stamp(&path);
            let mut hup = if sighup {
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok()
            } else {
                None
            };
            loop {
                let by_signal = tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => false,
                    Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
                };
                let now = stamp(&path);
                if !by_signal && now == last {
                    continue;
                }
                last = now;
                let Some(running) = me.upgrade() else { return };
                let _ = running.reload(&path, &mut current);
            }
        });
    }
}

/// Completes on the next SIGTERM or SIGINT (never, if neither can be
/// listened for). Listening starts when this is called.
fn next_stop_signal() -> impl Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate()).ok();
    let int = signal(SignalKind::interrupt()).ok();
    async move {
        let wait = |s: Option<tokio::signal::unix::Signal>| async move {
            match s {
                Some(mut s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            () = wait(term) => {}
            () = wait(int) => {}
        }
    }
}

/// Starts the proxy and serves until `shutdown` completes, then shuts down
/// (see [`Running::shutdown`]); a SIGTERM or SIGINT during the shutdown
/// ends it at once with [`RunError::Forced`]. With `path`, the config file
/// is watched and reloaded on change or SIGHUP.
pub async fn run(
    config: &Config,
    path: Option<&Path>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    let running = Arc::new(start_from(config, path).await?);
    if let Some(path) = path {
        running.spawn_reloader(path.to_owned(), config.clone(), true);
    }
    shutdown.await;
    // Listening before readiness turns: whoever sees `/readyz` say
    // "draining" can force the exit with a second signal.
    let force = next_stop_signal();
    running.state.set_phase(Phase::Draining);
    let Ok(running) = Arc::try_unwrap(running) else {
        tracing::warn!("reloader still holds the proxy; exiting without drain");
        return Ok(());
    };
    tracing::info!("shutting down");
    tokio::select! {
        () = running.shutdown() => Ok(()),
        () = force => {
            tracing::warn!("second signal: exiting now, without waiting for the pre-stop delay or the drain");
            Err(RunError::Forced)
        }
    }
}

async fn reap_idle(proxy: Arc<Proxy>, idle: Duration) {
    let period = (idle / 4).clamp(Duration::from_millis(250), Duration::from_secs(15));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        proxy.reap_idle();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A config file in the temp directory, removed on drop.
    struct TempConfig(PathBuf);

    impl TempConfig {
        fn new(name: &str, text: &str) -> TempConfig {
            let path =
                std::env::temp_dir().join(format!("wayfinder-{name}-{}.toml", std::process::id()));
            std::fs::write(&path, text).unwrap();
            TempConfig(path)
        }
    }

    impl Drop for TempConfig {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    /// Every setting read only at start is named when a reload changes it
    /// and keeps its value until a restart, while the rest applies: the
    /// whole startup part is compared (before, a hand-kept list missed
    /// `proxy.trusted_proxies`, `[http2]` and others, and a reload showed
    /// their new values as in effect).
    #[tokio::test]
    async fn reload_names_changed_startup_settings_and_keeps_them() {
        let base = "listen = [\"127.0.0.1:0\"]\n[admin]\nlisten = \"off\"\n";
        let file = TempConfig::new("app-reload-startup", base);
        let mut current = Config::load(&file.0).unwrap();
        let running = start_from(&current, Some(&file.0)).await.unwrap();
        std::fs::write(
            &file.0,
            format!(
                "{base}[timeouts]\nconnect = \"1s\"\n\
                 [proxy]\ntrusted_proxies = [\"10.0.0.0/8\"]\n[http2]\nidle_timeout = \"5s\"\n"
            ),
        )
        .unwrap();
        assert!(running.reload(&file.0, &mut current).unwrap());
        assert_eq!(
            running.state.restart_needed(),
            ["proxy.trusted_proxies", "http2.idle_timeout"]
        );
        let effective = serde_json::to_value(&*running.state.config()).unwrap();
        assert_eq!(effective["proxy"]["trusted_proxies"], serde_json::json!([]));
        assert_eq!(effective["http2"]["idle_timeout"], "1m");
        assert_eq!(
            effective["timeouts"]["connect"], "1s",
            "reloadable: applied"
        );
        running.shutdown().await;
    }
}
