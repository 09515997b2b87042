//! The running process, on top of every other module: starts what the
//! config describes in order ([`start`]: listeners, registry and its
//! sources, the admin API answering `/readyz` with 503 until the registry
//! is loaded, health checks, the proxy server, the idle-connection
//! reaper), reloads the config file ([`Running::reload`]), and on shutdown reports
//! not ready, waits the pre-stop delay while still serving, then stops
//! everything in order. A second SIGTERM/SIGINT during shutdown exits at
//! once ([`signals`]). [`logging`] sets up the log output `wayfinder`
//! writes. [`handoff`] is the hot restart: handing the listeners and the
//! registrations to a successor process, or taking them over.

pub mod cert;
pub mod handoff;
pub mod logging;
mod reload;
pub mod signals;
mod start;
mod upgrade;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::admin::state::{Phase, RunState};
use crate::config::Config;
use crate::proxy::server::Drain;
use crate::registry::dns::DnsSources;
use crate::registry::registrations::Registrations;
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
    /// `--takeover` or `--handoff-socket` failed.
    #[error(transparent)]
    Handoff(#[from] handoff::HandoffError),
}

/// Hot restart options of `wayfinder run`.
#[derive(Debug, Clone, Default)]
pub struct Handoff {
    /// `--handoff-socket`: where to listen for a successor.
    pub listen: Option<PathBuf>,
    /// `--takeover`: the running proxy's hand-over socket.
    pub takeover: Option<PathBuf>,
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
    /// The registrations (handed to a successor process).
    registrations: Arc<Registrations>,
    /// Duplicates of the listening sockets, for a successor process.
    handed: Vec<handoff::Handed>,
    /// `true` pauses the admin API (during a hand-over).
    admin_pause: watch::Sender<bool>,
    /// Expires registrations; stopped after a hand-over, so this process
    /// no longer changes them (nor the state file).
    expiry: JoinHandle<()>,
    /// The access log's writer, flushed once the drain ends.
    access_log: Option<crate::proxy::access_log::AccessLog>,
    /// Tells the server to stop accepting and drain.
    stop: oneshot::Sender<Drain>,
    /// Ends when the server, the admin API and the background tasks have
    /// stopped.
    done: JoinHandle<()>,
}

/// Longest wait at exit for the access log's last lines to be written.
const ACCESS_LOG_FLUSH: std::time::Duration = std::time::Duration::from_secs(2);

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
        let _ = self.stop.send(Drain::Prompt);
        let _ = self.done.await;
        if let Some(log) = &self.access_log {
            log.flush(ACCESS_LOG_FLUSH).await;
        }
    }

    /// After a successor process took over: stops accepting at once (no
    /// pre-stop delay: the successor serves the same listeners), closes
    /// each connection after its next response, and returns when the
    /// drain ends.
    pub async fn drain_after_hand_over(self) {
        self.state.set_phase(Phase::Draining);
        self.expiry.abort();
        let _ = self.stop.send(Drain::AfterNextResponse);
        let _ = self.done.await;
        if let Some(log) = &self.access_log {
            log.flush(ACCESS_LOG_FLUSH).await;
        }
    }

    /// What a successor takes over from this process, unless it is ready
    /// to refuse (gossip's UDP socket is not handed over).
    fn offerer(&mut self) -> handoff::Offerer {
        handoff::Offerer {
            sockets: std::mem::take(&mut self.handed),
            registrations: self.registrations.clone(),
            registry: self.registry.clone(),
            admin_pause: self.admin_pause.clone(),
            refuse: self.gossip.is_some().then(|| {
                "[registry.gossip] is on: its UDP socket cannot be handed over; restart instead"
                    .to_owned()
            }),
        }
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
/// is watched and reloaded on change or SIGHUP. With `handoff.takeover`,
/// the listeners and registrations of the proxy running there are taken
/// over (it then drains and exits); with `handoff.listen`, a successor
/// may take over from this one, which then drains
/// ([`Running::drain_after_hand_over`]) and returns.
pub async fn run(
    config: &Config,
    path: Option<&Path>,
    handoff: &Handoff,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    let mut successor = match &handoff.listen {
        Some(socket) => Some(handoff::HandoffSocket::bind(socket)?),
        None => None,
    };
    let mut inherited = match &handoff.takeover {
        Some(socket) => Some(handoff::take_over(socket).await?),
        None => None,
    };
    let mut running = start_from(config, path, inherited.as_mut()).await?;
    // The socket path passes to this process once it serves.
    let published = match successor.as_mut().map(handoff::HandoffSocket::publish) {
        Some(Ok(inode)) => Some(inode),
        Some(Err(e)) => {
            tracing::error!(error = %e, "no hot restart from this process");
            successor = None;
            None
        }
        None => None,
    };
    if let Some(i) = inherited {
        if let Err(e) = i.confirm() {
            tracing::warn!(error = %e, "could not tell the previous process to drain; it keeps serving beside this one");
        }
    }
    let sigusr2 = upgrade::on_sigusr2(handoff.listen.clone());
    upgrade::ready();
    let offerer = running.offerer();
    let running = Arc::new(running);
    if let Some(path) = path {
        running.spawn_reloader(path.to_owned(), config.clone(), true);
    }
    let handed_over = async move {
        match successor {
            Some(l) => tokio::select! {
                () = handoff::serve(l, offerer) => {}
                () = sigusr2 => {}
            },
            None => sigusr2.await,
        }
    };
    let handed_over = tokio::select! {
        () = shutdown => false,
        () = handed_over => true,
    };
    // Listening before readiness turns: whoever sees `/readyz` say
    // "draining" can force the exit with a second signal.
    let force = signals::next_stop_signal();
    running.state.set_phase(Phase::Draining);
    let Ok(running) = Arc::try_unwrap(running) else {
        tracing::warn!("reloader still holds the proxy; exiting without drain");
        return Ok(());
    };
    if handed_over {
        tracing::info!("handed over to the successor; draining");
        tokio::select! {
            () = running.drain_after_hand_over() => {}
            () = force => {
                tracing::warn!("second signal: exiting now, without waiting for the drain");
                return Err(RunError::Forced);
            }
        }
        return Ok(());
    }
    if let (Some(socket), Some(inode)) = (&handoff.listen, published) {
        handoff::remove_if_ours(socket, inode);
    }
    tracing::info!("shutting down");
    tokio::select! {
        () = running.shutdown() => Ok(()),
        () = force => {
            tracing::warn!("second signal: exiting now, without waiting for the pre-stop delay or the drain");
            Err(RunError::Forced)
        }
    }
}
