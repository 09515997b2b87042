//! Starting the process: checks the state file, binds every listener
//! (so a taken port fails the start with the address named), then starts
//! the registry, its sources, the admin API, health checks, the access
//! log, the proxy server and the idle-connection reaper, and reports
//! ready.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{oneshot, watch};

use super::handoff::{Handed, Inherited, ListenerRole};
use super::Running;
use crate::admin;
use crate::admin::state::{Phase, RunState};
use crate::config::{AccessLogFormat, Config};
use crate::proxy::access_log::{AccessLog, Format, Target};
use crate::proxy::server::{self, Drain, Listener, ServerSettings};
use crate::proxy::Proxy;
use crate::registry::dns::DnsSources;
use crate::registry::etcd::EtcdStore;
use crate::registry::gossip::{Announced, Gossip, Role};
use crate::registry::registrations::{LocalStore, Registrations};
use crate::registry::serf::SerfSource;
use crate::registry::Registry;
use crate::tls::CertStore;

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
    /// A TLS listener's certificates could not be loaded.
    #[error("[[tls]] listener {addr}: {source}")]
    Tls {
        /// The listener.
        addr: SocketAddr,
        /// What is wrong with which file.
        source: Box<crate::tls::TlsError>,
    },
    /// `[registry.gossip]` could not start (its UDP address is taken...).
    #[error(transparent)]
    Gossip(#[from] crate::registry::gossip::GossipError),
    /// `access_log.path` cannot be opened for appending.
    #[error("access_log.path {}: {source}", path.display())]
    AccessLog {
        /// The file.
        path: PathBuf,
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
    start_from(config, None, None).await
}

/// A listener for `addr`: the one a predecessor handed over for it, or a
/// new one; with a duplicate of it kept for handing over in turn.
fn listener(
    addr: SocketAddr,
    role: ListenerRole,
    inherited: &mut Option<&mut Inherited>,
    handed: &mut Vec<Handed>,
) -> Result<tokio::net::TcpListener, StartError> {
    let what = match role {
        ListenerRole::Proxy => "proxy",
        ListenerRole::Tls => "proxy (TLS)",
        ListenerRole::Admin => "admin",
    };
    let fail = |source| StartError::Bind {
        addr,
        role: what,
        source,
    };
    let l = match inherited.as_deref_mut().and_then(|i| i.take(role, addr)) {
        Some(l) => tokio::net::TcpListener::from_std(l).map_err(fail)?,
        None => server::bind(addr).map_err(fail)?,
    };
    let fd = std::os::fd::AsFd::as_fd(&l)
        .try_clone_to_owned()
        .map_err(fail)?;
    handed.push(Handed {
        role,
        addr: l.local_addr().unwrap_or(addr),
        fd,
    });
    Ok(l)
}

/// [`start`], with the file `config` was read from (shown by the admin
/// API) and the listeners and state a predecessor process handed over.
pub(crate) async fn start_from(
    config: &Config,
    file: Option<&Path>,
    mut inherited: Option<&mut Inherited>,
) -> Result<Running, StartError> {
    if let Some(path) = &config.startup.registry.state_file {
        check_state_file(path)?;
    }
    let mut handed = Vec::new();
    let mut listeners: Vec<Listener> = Vec::with_capacity(config.startup.listen.len());
    let mut listen = Vec::with_capacity(config.startup.listen.len());
    for &addr in &config.startup.listen {
        let l = listener(addr, ListenerRole::Proxy, &mut inherited, &mut handed)?;
        listen.push(l.local_addr().unwrap_or(addr));
        listeners.push(l.into());
    }
    let mut listen_tls = Vec::new();
    let mut cert_stores = Vec::new();
    for t in &config.startup.tls {
        let files = t.certificates.clone();
        let first = t
            .listen
            .first()
            .copied()
            .unwrap_or(([0, 0, 0, 0], 0).into());
        let store = CertStore::new(files).map_err(|source| StartError::Tls {
            addr: first,
            source: Box::new(source),
        })?;
        for &addr in &t.listen {
            let l = listener(addr, ListenerRole::Tls, &mut inherited, &mut handed)?;
            listen_tls.push(l.local_addr().unwrap_or(addr));
            listeners.push(Listener::tls(l, store.clone()));
        }
        cert_stores.push(store);
    }
    let admin_listener = match config.startup.admin.listen {
        Some(addr) => Some(listener(
            addr,
            ListenerRole::Admin,
            &mut inherited,
            &mut handed,
        )?),
        None => None,
    };
    let admin_addr = admin_listener.as_ref().and_then(|l| l.local_addr().ok());
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }
    let state = RunState::new(config, file.map(Path::to_owned));
    crate::registry::stats::set_enabled(config.startup.metrics.enabled);
    let access_log = start_access_log(config)?;

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
    let gossip = match &config.startup.registry.gossip {
        Some(settings) => Some(Gossip::start(settings, Role::Proxy, Some(&registry)).await?),
        None => None,
    };
    let registrations = match (&etcd, &gossip) {
        (Some((store, _, _)), _) => Registrations::with_store(&registry, store.clone()),
        (None, Some(g)) => {
            // This proxy's registrations stay here (TTLs, state file) and
            // are gossiped to the fleet as this member's.
            let local = LocalStore::new(&registry, config.startup.registry.state_file.clone());
            let announced = Announced::new(local);
            g.spawn_publisher(announced.clone());
            Registrations::with_store(&registry, announced)
        }
        (None, None) => Registrations::new(&registry, config.startup.registry.state_file.clone()),
    };
    let serf = config
        .startup
        .registry
        .serf
        .as_ref()
        .map(|s| SerfSource::spawn(s, &registry));
    if let Some(i) = inherited {
        i.restore(&registrations, &registry);
    }
    let expiry = tokio::spawn(registrations.clone().run_expiry());

    // The admin API answers from here on: `/readyz` says "starting" until
    // the registry is loaded.
    let (admin_stop_tx, admin_stop) = oneshot::channel::<()>();
    let (admin_pause, admin_paused) = watch::channel(false);
    let admin = admin::Admin {
        registry: registry.clone(),
        registrations: registrations.clone(),
        token: config.startup.admin.token.as_deref().map(Arc::from),
        auth_reads: config.startup.admin.auth_reads,
        default_ttl: config.startup.registry.default_ttl,
        state: state.clone(),
        gossip: gossip.clone(),
        metrics: Arc::new(admin::metrics::registry(registry.clone())),
    };
    let admin_task = admin_listener.map(|l| {
        tokio::spawn(admin::serve(
            l,
            admin,
            async move {
                let _ = admin_stop.await;
            },
            admin_paused,
        ))
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
    let mut proxy =
        Proxy::new(registry.clone(), config).with_https_port(listen_tls.first().map(|a| a.port()));
    if let Some(log) = &access_log {
        proxy = proxy.with_access_log(log.clone());
    }
    let proxy = Arc::new(proxy);
    let snap = registry.load();
    tracing::info!(
        listen = ?listen,
        listen_tls = ?listen_tls,
        admin = %admin_addr.map_or_else(|| "off".to_owned(), |a| a.to_string()),
        services = snap.service_count(),
        instances = snap.instance_count(),
        "wayfinder listening"
    );
    drop(snap);

    let (stop, stopped) = oneshot::channel::<Drain>();
    let reaper = tokio::spawn(reap_idle(
        proxy.clone(),
        config.startup.timeouts.upstream_idle,
    ));
    let settings = ServerSettings::from_config(config);
    let done = tokio::spawn(async move {
        server::serve(listeners, proxy, settings, async move {
            stopped.await.unwrap_or(Drain::Prompt)
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
        if let Some(t) = serf {
            t.abort();
        }
    });
    state.set_phase(Phase::Ready);
    Ok(Running {
        listen,
        listen_tls,
        cert_stores,
        admin: admin_addr,
        registry,
        state,
        started: config.clone(),
        reload_failed: AtomicBool::new(false),
        dns: Mutex::new(dns),
        gossip,
        registrations,
        handed,
        admin_pause,
        expiry,
        access_log,
        stop,
        done,
    })
}

/// Starts the access log's writer when `[access_log]` is on; a log file
/// is reopened on SIGUSR1 (after logrotate moved it).
fn start_access_log(config: &Config) -> Result<Option<AccessLog>, StartError> {
    let settings = &config.startup.access_log;
    if !settings.enabled {
        return Ok(None);
    }
    let target = match &settings.path {
        Some(p) => Target::File(p.clone()),
        None => Target::Stdout,
    };
    let format = match settings.format {
        AccessLogFormat::Text => Format::Text,
        AccessLogFormat::Json => Format::Json,
    };
    let log = AccessLog::start(target, format, settings.queue).map_err(|source| {
        StartError::AccessLog {
            path: settings.path.clone().unwrap_or_default(),
            source,
        }
    })?;
    if settings.path.is_some() {
        if let Ok(mut usr1) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())
        {
            let log = log.clone();
            tokio::spawn(async move {
                while usr1.recv().await.is_some() {
                    tracing::info!("SIGUSR1: reopening the access log");
                    log.reopen();
                }
            });
        }
    }
    Ok(Some(log))
}

/// Closes pooled upstream connections idle for longer than `idle`, checking
/// a few times per `idle`.
async fn reap_idle(proxy: Arc<Proxy>, idle: Duration) {
    let period = (idle / 4).clamp(Duration::from_millis(250), Duration::from_secs(15));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        proxy.reap_idle();
    }
}
