//! The running process, on top of every other module: starts what the
//! config describes in order ([`start`]: listeners, registry and its
//! sources, the admin API answering `/readyz` with 503 until the registry
//! is loaded, health checks, the proxy server, the idle-connection
//! reaper), reloads the config file ([`Running::reload`]), and on shutdown reports
//! not ready, waits the pre-stop delay while still serving, then stops
//! everything in order. A second SIGTERM/SIGINT during shutdown exits at
//! once ([`signals`]). [`logging`] sets up the log output `wayfinder`
//! writes.

pub mod cert;
pub mod logging;
mod reload;
pub mod signals;
mod start;

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::admin::state::{Phase, RunState};
use crate::config::Config;
use crate::registry::dns::DnsSources;
use crate::registry::Registry;

pub(crate) use start::start_from;
pub use start::{start, StartError};

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
    /// Addresses of the TLS listeners (`[[tls]]`), likewise.
    pub listen_tls: Vec<SocketAddr>,
    /// Their certificates (read again on SIGHUP).
    cert_stores: Vec<Arc<crate::tls::CertStore>>,
    /// The admin API's address, when enabled.
    pub admin: Option<SocketAddr>,
    /// The registry it routes through.
    pub registry: Arc<Registry>,
    /// Readiness, reloads and the config in effect, as the admin API shows
    /// them.
    pub(crate) state: Arc<RunState>,
    /// The config the process started with (what restart-only settings
    /// keep until the next start).
    started: Config,
    /// Whether the last reload was rejected (the `config` source then
    /// shows it as its error).
    reload_failed: AtomicBool,
    /// One resolving task per service with a `[services.NAME.dns]` table.
    dns: Mutex<DnsSources>,
    /// This proxy's membership of a gossip fleet: it leaves at shutdown.
    gossip: Option<Arc<crate::registry::gossip::Gossip>>,
    /// Tells the server to stop accepting and drain.
    stop: oneshot::Sender<()>,
    /// Ends when the server, the admin API and the background tasks have
    /// stopped.
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
        if let Some(g) = &self.gossip {
            // Its registrations leave every proxy explicitly while this
            // one still serves what is in flight.
            g.leave().await;
        }
        let _ = self.stop.send(());
        let _ = self.done.await;
    }
}

/// A multi-thread Tokio runtime with `workers` threads (default: Tokio's,
/// one per core, or `TOKIO_WORKER_THREADS`).
pub fn runtime(workers: Option<usize>) -> std::io::Result<tokio::runtime::Runtime> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = workers {
        b.worker_threads(n);
    }
    b.enable_all().build()
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
    let force = signals::next_stop_signal();
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
