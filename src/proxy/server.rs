//! The client side: accepts connections on the proxy's listeners and
//! serves HTTP/1.1 and HTTP/2 (prior knowledge) on them, one task per
//! connection. Each connection starts on the HTTP/1.1 fast path
//! ([`super::h1`]); what that path does not take continues on hyper, each
//! request handed to [`Proxy::handle`].
//!
//! Limits: at most `limits.max_connections` connections are served at once
//! (further clients wait in the kernel's accept backlog); a request head
//! must arrive within `timeouts.client_header` (which also closes idle
//! keep-alive connections). Shutdown stops accepting at once, lets requests
//! in flight finish and closes each connection after its current request,
//! up to the drain timeout.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinHandle;

use super::forward::Client;
use super::{h1, Proxy};
use crate::config::Config;

/// hyper's own read-buffer ceiling; raised only when the header limit needs
/// more, so oversized heads up to the limit reach our own 431 with a body.
const HYPER_DEFAULT_MAX_BUF: usize = 8192 + 4096 * 100;

/// Server-side settings taken from the config.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// Most connections served at once.
    pub max_connections: usize,
    /// Deadline for a request head.
    pub client_header_timeout: Duration,
    /// Largest request head.
    pub max_header_bytes: usize,
    /// How long shutdown waits for in-flight requests.
    pub drain: Duration,
}

impl ServerSettings {
    /// The settings in `config`.
    pub fn from_config(config: &Config) -> Self {
        ServerSettings {
            max_connections: config.limits.max_connections,
            client_header_timeout: config.timeouts.client_header,
            max_header_bytes: config.limits.max_header_bytes,
            drain: config.timeouts.shutdown_drain,
        }
    }
}

/// Serves `listeners` until `shutdown` completes, then drains.
pub async fn serve(
    listeners: Vec<TcpListener>,
    proxy: Arc<Proxy>,
    settings: ServerSettings,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.client_header_timeout)
        .max_buf_size(HYPER_DEFAULT_MAX_BUF.max(settings.max_header_bytes + 8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(settings.max_header_bytes).unwrap_or(u32::MAX));
    let builder = Arc::new(builder);
    let slots = Arc::new(Semaphore::new(settings.max_connections));
    let (stop_tx, stop_rx) = watch::channel(false);
    // Every connection task holds a clone; recv() returns None once all
    // are gone.
    let (alive_tx, mut alive_rx) = mpsc::channel::<()>(1);

    let acceptors: Vec<JoinHandle<()>> = listeners
        .into_iter()
        .map(|listener| {
            tokio::spawn(accept_loop(
                listener,
                proxy.clone(),
                builder.clone(),
                slots.clone(),
                stop_rx.clone(),
                alive_tx.clone(),
                settings.client_header_timeout,
            ))
        })
        .collect();
    drop(alive_tx);

    shutdown.await;
    for a in &acceptors {
        a.abort();
    }
    for a in acceptors {
        let _ = a.await;
    }
    let open = settings.max_connections - slots.available_permits();
    tracing::info!(open_connections = open, drain = ?settings.drain, "stopped accepting; draining");
    let _ = stop_tx.send(true);
    match tokio::time::timeout(settings.drain, alive_rx.recv()).await {
        Ok(_) => tracing::info!("drained"),
        Err(_) => {
            let open = settings.max_connections - slots.available_permits();
            tracing::warn!(
                open_connections = open,
                "drain timeout reached; closing remaining connections"
            );
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    slots: Arc<Semaphore>,
    stop: watch::Receiver<bool>,
    alive: mpsc::Sender<()>,
    header_timeout: Duration,
) {
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of
                // spinning, keep the listener.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let proxy = proxy.clone();
        let builder = builder.clone();
        let mut stop = stop.clone();
        let alive = alive.clone();
        tokio::spawn(async move {
            let state = Arc::new((proxy, Client::new(peer)));
            let ended = h1::serve(&state.0, &state.1, stream, &mut stop, header_timeout).await;
            if let h1::Ended::Fallback(stream, read) = ended {
                let io = TokioIo::new(h1::Rewind::new(stream, read.freeze()));
                serve_general(io, state, &builder, &mut stop, peer).await;
            }
            drop((permit, alive));
        });
    }
}

/// Serves the rest of a connection on the general path (hyper: HTTP/2,
/// HTTP/1.0, upgrades, streamed bodies).
async fn serve_general(
    io: TokioIo<h1::Rewind>,
    state: Arc<(Arc<Proxy>, Client)>,
    builder: &auto::Builder<TokioExecutor>,
    stop: &mut watch::Receiver<bool>,
    peer: SocketAddr,
) {
    let service = service_fn(move |req| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(state.0.handle(req, &state.1).await) }
    });
    let conn = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = async { let _ = stop.wait_for(|s| *s).await; } => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(client = %peer, error = %e, "client connection ended with an error");
    }
}

/// Binds a listener on `addr` with a deep accept backlog and address reuse,
/// so a restarted proxy can bind while old connections sit in TIME_WAIT.
/// An IPv6 listener is IPv6-only (as nginx's), so `[::]:P` and `0.0.0.0:P`
/// can both be listed.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}
