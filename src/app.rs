//! The running process: binds the listeners, builds the registry and starts
//! its refresher, the proxy server, the admin API and the idle-connection
//! reaper, and stops them all in order on shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::admin;
use crate::config::{Config, ConfigError};
use crate::proxy::server::{self, ServerSettings};
use crate::proxy::Proxy;
use crate::registry::dns::DnsSources;
use crate::registry::etcd::EtcdStore;
use crate::registry::registrations::Registrations;
use crate::registry::Registry;

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
    /// One resolving task per service with a `[services.NAME.dns]` table.
    dns: Mutex<DnsSources>,
    stop: oneshot::Sender<()>,
    done: JoinHandle<()>,
}

impl Running {
    /// Stops accepting, drains requests in flight (up to the configured
    /// drain timeout) and returns when everything has stopped.
    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        let _ = self.done.await;
    }
}

/// Binds and starts everything `config` describes. Must be called inside a
/// Tokio runtime.
pub async fn start(config: &Config) -> Result<Running, StartError> {
    let mut listeners = Vec::with_capacity(config.listen.len());
    let mut listen = Vec::with_capacity(config.listen.len());
    for &addr in &config.listen {
        let l = server::bind(addr).map_err(|source| StartError::Bind {
            addr,
            role: "proxy",
            source,
        })?;
        listen.push(l.local_addr().unwrap_or(addr));
        listeners.push(l);
    }
    let admin_listener = match config.admin {
        Some(addr) => Some(server::bind(addr).map_err(|source| StartError::Bind {
            addr,
            role: "admin",
            source,
        })?),
        None => None,
    };
    let admin_addr = admin_listener.as_ref().and_then(|l| l.local_addr().ok());

    let registry = Registry::new(config);
    tokio::spawn(registry.clone().run_refresher());
    let etcd = match &config.registry.etcd {
        Some(settings) => {
            let store = EtcdStore::new(settings, &registry);
            let task = store.spawn();
            // Serve with the shared registry loaded when etcd answers in
            // time; otherwise start anyway (the source keeps retrying).
            if store
                .wait_listed(settings.dial_timeout + settings.request_timeout)
                .await
            {
                registry.rebuild();
            } else {
                tracing::warn!(
                    "etcd not listed yet; serving without its instances until it answers"
                );
            }
            Some((store, task))
        }
        None => None,
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
    let (admin_stop_tx, admin_stop) = oneshot::channel::<()>();
    let (registrations, etcd_task) = match etcd {
        Some((store, task)) => (Registrations::with_etcd(&registry, store), Some(task)),
        None => (
            Registrations::new(&registry, config.registry.state_file.clone()),
            None,
        ),
    };
    tokio::spawn(registrations.clone().run_expiry());
    let admin = admin::Admin {
        registry: registry.clone(),
        registrations: registrations.clone(),
        token: config.admin_token.as_deref().map(Arc::from),
        default_ttl: config.registry.default_ttl,
    };
    let admin_task = admin_listener.map(|l| {
        tokio::spawn(admin::serve(l, admin, async move {
            let _ = admin_stop.await;
        }))
    });
    let reaper = tokio::spawn(reap_idle(proxy.clone(), config.timeouts.upstream_idle));
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
    Ok(Running {
        listen,
        admin: admin_addr,
        registry,
        registrations,
        dns: Mutex::new(dns),
        stop,
        done,
    })
}

impl Running {
    /// Reloads the config file at `path` and applies routes, services,
    /// policies and static instances. An invalid file changes nothing and
    /// its error is returned (and logged).
    pub fn reload(&self, path: &Path, current: &mut Config) -> Result<bool, ConfigError> {
        let new = match Config::load(path) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "config reload rejected; the running config stays");
                return Err(e);
            }
        };
        if new == *current {
            return Ok(false);
        }
        let restart_needed = new.listen != current.listen
            || new.admin != current.admin
            || new.limits != current.limits
            || new.timeouts.client_header != current.timeouts.client_header
            || new.timeouts.upstream_idle != current.timeouts.upstream_idle
            || new.proxy.debug_header != current.proxy.debug_header
            || new.proxy.snapshot_header != current.proxy.snapshot_header
            || new.proxy.via != current.proxy.via
            || new.admin_token != current.admin_token
            || new.registry.etcd != current.registry.etcd;
        if restart_needed {
            tracing::warn!("config changes to listen, admin, limits, proxy headers, client timeouts or [registry.etcd] apply at the next restart");
        }
        self.registry.apply_config(&new);
        self.dns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .apply(&self.registry, &new);
        tracing::info!(file = %path.display(), routes = new.routes.len(), services = new.services.len(), "config reloaded");
        *current = new;
        Ok(true)
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

/// Starts the proxy and serves until `shutdown` completes, then drains.
/// With `path`, the config file is watched and reloaded on change or SIGHUP.
pub async fn run(
    config: &Config,
    path: Option<&Path>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartError> {
    let running = Arc::new(start(config).await?);
    if let Some(path) = path {
        running.spawn_reloader(path.to_owned(), config.clone(), true);
    }
    shutdown.await;
    let Ok(running) = Arc::try_unwrap(running) else {
        tracing::warn!("reloader still holds the proxy; exiting without drain");
        return Ok(());
    };
    tracing::info!("shutting down");
    running.shutdown().await;
    Ok(())
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
