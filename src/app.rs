//! The running process: binds the listeners, builds the registry and starts
//! its refresher, the proxy server, the admin API and the idle-connection
//! reaper, and stops them all in order on shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::admin;
use crate::config::Config;
use crate::proxy::server::{self, ServerSettings};
use crate::proxy::Proxy;
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
    let health = crate::health::spawn_supervisor(&registry);
    let proxy = Arc::new(Proxy::new(registry.clone(), config));
    let snap = registry.load();
    tracing::info!(
        listen = ?listen,
        admin = ?admin_addr,
        services = snap.service_count(),
        instances = snap.instance_count(),
        "wayfinder listening"
    );
    drop(snap);

    let (stop, stopped) = oneshot::channel::<()>();
    let (admin_stop_tx, admin_stop) = oneshot::channel::<()>();
    let registrations = Registrations::new(&registry, config.registry.state_file.clone());
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
    });
    Ok(Running {
        listen,
        admin: admin_addr,
        registry,
        registrations,
        stop,
        done,
    })
}

/// Starts the proxy and serves until `shutdown` completes, then drains.
pub async fn run(config: &Config, shutdown: impl Future<Output = ()>) -> Result<(), StartError> {
    let running = start(config).await?;
    shutdown.await;
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
