//! The client side: accepts connections on the proxy's listeners and
//! serves HTTP/1.1 and HTTP/2 (prior knowledge) on them, one task per
//! connection. Each connection starts on the HTTP/1.1 fast path
//! ([`super::h1`]); what that path does not take continues on hyper, each
//! request handed to [`Proxy::handle`].
//!
//! Limits: at most `limits.max_connections` connections are served at once
//! (further clients wait in the kernel's accept backlog); a request head
//! must arrive within `timeouts.client_header` (which also closes idle
//! keep-alive connections); a write to a client that makes no progress for
//! `timeouts.client_send` closes the connection. HTTP/2 connections get
//! PINGs (`http2.keepalive_interval`, answered within
//! `http2.keepalive_timeout`), a bound on their streams, header list and
//! resets (rapid-reset protection), and are closed when no stream has been
//! open for `http2.idle_timeout` (`timeouts.client_header` before the first
//! one). Shutdown stops accepting at once, lets requests in flight
//! finish and closes each connection after its current request, up to the
//! drain timeout.

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

use super::observe::{Connection, Pending};
use super::policy::request::MAX_FIELDS;
use super::{h1, Client, Proxy};
use crate::clock;
use crate::config::{Config, Http2Settings};
use crate::tls::CertStore;

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
    /// Longest a write to a client may make no progress.
    pub client_send: Duration,
    /// `[http2]`.
    pub http2: Http2Settings,
    /// Whether HTTP/1.1 starts on the fast path.
    pub fast_path: bool,
}

impl ServerSettings {
    /// The settings in `config`.
    pub fn from_config(config: &Config) -> Self {
        ServerSettings {
            max_connections: config.startup.limits.max_connections,
            client_header_timeout: config.startup.timeouts.client_header,
            max_header_bytes: config.startup.limits.max_header_bytes,
            drain: config.startup.timeouts.shutdown_drain,
            client_send: config.startup.timeouts.client_send,
            http2: config.startup.http2.clone(),
            fast_path: config.startup.proxy.fast_path,
        }
    }
}

/// How connections wind down once the server stops accepting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drain {
    /// Idle connections close at once; busy ones after their response
    /// (SIGTERM: clients were told to go elsewhere during `pre_stop`).
    Prompt,
    /// Every HTTP/1 connection closes after its next response
    /// (`Connection: close`), or when idle for `timeouts.client_header`;
    /// HTTP/2 gets GOAWAY. For a hand-over to a successor process that
    /// keeps serving the same listeners: a client's next request is
    /// answered rather than racing a close.
    AfterNextResponse,
}

/// The state a connection watches: serving, or how to wind down.
pub(crate) type Stop = Option<Drain>;

/// Whether `stop` closes idle connections now.
pub(crate) fn closes_idle(stop: &Stop) -> bool {
    *stop == Some(Drain::Prompt)
}

/// A listening socket, plain or TLS.
#[derive(Debug)]
pub struct Listener {
    tcp: TcpListener,
    tls: Option<Arc<CertStore>>,
}

impl Listener {
    /// A TLS listener answering with the certificates of `store`.
    pub fn tls(tcp: TcpListener, store: Arc<CertStore>) -> Listener {
        Listener {
            tcp,
            tls: Some(store),
        }
    }
}

impl From<TcpListener> for Listener {
    fn from(tcp: TcpListener) -> Listener {
        Listener { tcp, tls: None }
    }
}

/// How often a TLS listener looks at its certificate files for changes.
const CERT_POLL: Duration = Duration::from_secs(1);

/// Serves `listeners` until `shutdown` completes, then drains the way it
/// says.
pub async fn serve<L: Into<Listener>>(
    listeners: Vec<L>,
    proxy: Arc<Proxy>,
    settings: ServerSettings,
    shutdown: impl Future<Output = Drain>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.client_header_timeout)
        // Room above the policy's limit, so that a request with too many
        // lines gets the policy's 431 with its message rather than hyper's.
        .max_headers(2 * MAX_FIELDS)
        .max_buf_size(HYPER_DEFAULT_MAX_BUF.max(settings.max_header_bytes + 8192));
    let h2 = &settings.http2;
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(settings.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(h2.max_concurrent_streams)
        .keep_alive_interval(h2.keepalive_interval)
        .keep_alive_timeout(h2.keepalive_timeout)
        .max_pending_accept_reset_streams(h2.max_pending_reset_streams)
        .max_local_error_reset_streams(h2.max_local_error_resets)
        // RFC 8441: WebSocket (and other upgrades a route allows) over
        // HTTP/2 streams; the request policy decides, as for HTTP/1.1.
        .enable_connect_protocol();
    let builder = Arc::new(builder);
    let slots = Arc::new(Semaphore::new(settings.max_connections));
    let (stop_tx, stop_rx) = watch::channel::<Stop>(None);
    // Every connection task holds a clone; recv() returns None once all
    // are gone.
    let (alive_tx, mut alive_rx) = mpsc::channel::<()>(1);

    let listeners: Vec<Listener> = listeners.into_iter().map(Into::into).collect();
    let watchers: Vec<JoinHandle<()>> = listeners
        .iter()
        .filter_map(|l| l.tls.clone())
        .map(|store| tokio::spawn(watch_certificates(store)))
        .collect();
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
                settings.clone(),
            ))
        })
        .collect();
    drop(alive_tx);

    let drain = shutdown.await;
    for a in acceptors.iter().chain(&watchers) {
        a.abort();
    }
    for a in acceptors {
        let _ = a.await;
    }
    let open = settings.max_connections - slots.available_permits();
    tracing::info!(open_connections = open, drain = ?settings.drain, mode = ?drain, "stopped accepting; draining");
    let _ = stop_tx.send(Some(drain));
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

/// Reloads a TLS listener's certificates when one of their files changes
/// (a bad file is logged and the running certificates stay).
async fn watch_certificates(store: Arc<CertStore>) {
    let mut failed = false;
    loop {
        tokio::time::sleep(CERT_POLL).await;
        if !store.changed() && !failed {
            continue;
        }
        match store.reload() {
            Ok(()) => {
                tracing::info!("TLS certificates reloaded");
                failed = false;
            }
            Err(e) if !failed || store.changed() => {
                tracing::error!(error = %e, "TLS certificates not reloaded; the running ones stay");
                failed = true;
            }
            Err(_) => {}
        }
    }
}

async fn accept_loop(
    listener: Listener,
    proxy: Arc<Proxy>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    slots: Arc<Semaphore>,
    stop: watch::Receiver<Stop>,
    alive: mpsc::Sender<()>,
    settings: ServerSettings,
) {
    let settings = Arc::new(settings);
    // One rustls configuration for the listener's life: it holds the
    // session cache and ticket keys (resumption), and reads certificates
    // from the store, which reloads swap.
    let acceptor = match listener.tls.as_ref().map(|store| store.server_config()) {
        None => None,
        Some(Ok(config)) => Some(tokio_rustls::TlsAcceptor::from(config)),
        Some(Err(e)) => {
            tracing::error!(error = %e, "TLS configuration refused; listener closed");
            return;
        }
    };
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.tcp.accept().await {
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
        let settings = settings.clone();
        if let Some(acceptor) = acceptor.clone() {
            tokio::spawn(async move {
                let mut counted = Connection::open(true);
                let handshake = acceptor.accept(stream);
                let tls =
                    match tokio::time::timeout(settings.client_header_timeout, handshake).await {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => {
                            tracing::debug!(client = %peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(client = %peer, "TLS handshake timed out");
                            return;
                        }
                    };
                let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                counted.set_h2(h2);
                let client = Client::new(peer, &proxy).over_tls();
                let state = Arc::new((proxy, client));
                let mut io = h1::Rewind::new(tls, bytes::Bytes::new(), settings.client_send);
                if h2 {
                    io.coalesce_writes();
                }
                serve_general(io, h2, state, &builder, &mut stop, peer, &settings).await;
                drop((permit, alive, counted));
            });
            continue;
        }
        tokio::spawn(async move {
            let mut counted = Connection::open(false);
            let client = Client::new(peer, &proxy);
            let state = Arc::new((proxy, client));
            let ended = if settings.fast_path {
                h1::serve(
                    &state.0,
                    &state.1,
                    stream,
                    &mut stop,
                    settings.client_header_timeout,
                )
                .await
            } else {
                h1::Ended::Fallback(stream, bytes::BytesMut::new())
            };
            if let h1::Ended::Fallback(stream, read) = ended {
                let mut io = h1::Rewind::new(stream, read.freeze(), settings.client_send);
                let h2 = io.is_h2_preface();
                if h2 {
                    io.coalesce_writes();
                }
                counted.set_h2(h2);
                serve_general(io, h2, state, &builder, &mut stop, peer, &settings).await;
            }
            drop((permit, alive, counted));
        });
    }
}

/// Serves the rest of a connection on the general path (hyper: HTTP/2,
/// HTTP/1.0, upgrades, streamed bodies). A watchdog closes the connection
/// once no request has been in progress for the idle timeout (HTTP/2:
/// `http2.idle_timeout`, or `timeouts.client_header` before the first
/// request; HTTP/1: `timeouts.client_header`); a connection that does not
/// close within a grace period after that is dropped.
async fn serve_general<S>(
    io: h1::Rewind<S>,
    h2: bool,
    state: Arc<(Arc<Proxy>, Client)>,
    builder: &auto::Builder<TokioExecutor>,
    stop: &mut watch::Receiver<Stop>,
    peer: SocketAddr,
    settings: &ServerSettings,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::default());
    let counter = activity.clone();
    let service = service_fn(move |req| {
        let state = state.clone();
        let active = counter.start();
        async move {
            let (resp, pending) = state.0.handle_observed(req, &state.1).await;
            Ok::<_, Infallible>(resp.map(|body| Counted {
                body,
                _active: active,
                pending: Some(pending),
                sent: 0,
                state,
            }))
        }
    });
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);
    let (first, idle) = if h2 {
        (settings.client_header_timeout, settings.http2.idle_timeout)
    } else {
        (
            settings.client_header_timeout,
            settings.client_header_timeout,
        )
    };
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = wind_down(stop, h2, &activity) => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
        () = activity.idle(first, idle) => {
            tracing::debug!(client = %peer, h2, "closing idle connection");
            conn.as_mut().graceful_shutdown();
            match tokio::time::timeout(CLOSE_GRACE, conn.as_mut()).await {
                Ok(r) => r,
                Err(_) => Ok(()),
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(client = %peer, error = %e, "client connection ended with an error");
    }
}

/// Completes when a general-path connection should be told to close:
/// at once on a prompt drain or for HTTP/2 (GOAWAY lets the client finish
/// and go elsewhere without a race); for HTTP/1 after a hand-over, once a
/// request is in progress (hyper then answers it with `Connection: close`).
async fn wind_down(stop: &mut watch::Receiver<Stop>, h2: bool, activity: &Activity) {
    let Ok(drain) = stop.wait_for(Option::is_some).await.map(|s| *s) else {
        return std::future::pending().await;
    };
    if drain == Some(Drain::AfterNextResponse) && !h2 {
        activity.busy().await;
    }
}

/// How long an idle connection told to close may take before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Requests in progress on one connection, and when the last one ended.
///
/// Starting and ending a request touches only atomics: the idle watch
/// checks them when its timer fires (one timer per connection, re-armed
/// only then). [`Activity::start`] notifies only for a connection's first
/// request (which ends the wait of `timeouts.client_header`) and for a
/// drain waiting for a request to start ([`Activity::busy`]).
#[derive(Debug, Default)]
struct Activity {
    active: std::sync::atomic::AtomicUsize,
    /// Requests started so far.
    started: std::sync::atomic::AtomicU64,
    /// When the last request ended ([`clock::now_ms`]; 0: none has).
    ended_ms: std::sync::atomic::AtomicU64,
    /// Someone waits in [`Activity::busy`].
    watched: std::sync::atomic::AtomicBool,
    changed: tokio::sync::Notify,
}

/// One request in progress; dropped with its response body.
struct Active(Arc<Activity>);

impl Drop for Active {
    fn drop(&mut self) {
        use std::sync::atomic::Ordering::{AcqRel, Acquire, Release};
        // The time is read only when the connection (probably) turns
        // idle: before the count drops, so the idle watch that sees it at
        // zero sees the time too; again after, for two requests ending at
        // once on two threads.
        if self.0.active.load(Acquire) == 1 {
            self.0.ended_ms.store(clock::now_ms(), Release);
        }
        if self.0.active.fetch_sub(1, AcqRel) == 1 {
            self.0.ended_ms.fetch_max(clock::now_ms(), AcqRel);
        }
    }
}

impl Activity {
    fn start(self: &Arc<Self>) -> Active {
        use std::sync::atomic::Ordering::{AcqRel, SeqCst};
        // SeqCst with `busy`'s store and load: one of the two sees the
        // other's write.
        self.active.fetch_add(1, SeqCst);
        // The first request ends the idle watch's wait for one (up to
        // `timeouts.client_header`): it is told, once.
        let first = self.started.fetch_add(1, AcqRel) == 0;
        if first || self.watched.load(SeqCst) {
            self.changed.notify_waiters();
        }
        Active(self.clone())
    }

    /// Completes once a request is in progress.
    async fn busy(&self) {
        use std::sync::atomic::Ordering::SeqCst;
        self.watched.store(true, SeqCst);
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.active.load(SeqCst) > 0 {
                return;
            }
            changed.await;
        }
    }

    /// Completes once no request has been in progress for `idle` (`first`
    /// before the first request).
    async fn idle(&self, first: Duration, idle: Duration) {
        use std::sync::atomic::Ordering::Acquire;
        let opened = clock::now_ms();
        loop {
            let now = clock::now_ms();
            let wait = if self.active.load(Acquire) > 0 {
                // Busy: look again after a whole idle period.
                idle
            } else if self.started.load(Acquire) == 0 {
                first.saturating_sub(Duration::from_millis(now - opened))
            } else {
                let quiet = now.saturating_sub(self.ended_ms.load(Acquire));
                idle.saturating_sub(Duration::from_millis(quiet))
            };
            if wait.is_zero() {
                return;
            }
            if self.started.load(Acquire) > 0 {
                tokio::time::sleep(wait).await;
                continue;
            }
            // No request yet: the first one cuts the wait short.
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.started.load(Acquire) > 0 {
                continue;
            }
            let _ = tokio::time::timeout(wait, changed).await;
        }
    }
}

/// A response body that keeps its request counted as in progress on its
/// connection until it is dropped, and then finishes it (metrics, access
/// log) with the bytes it carried.
struct Counted {
    body: super::ProxyBody,
    _active: Active,
    pending: Option<Pending>,
    sent: u64,
    state: Arc<(Arc<Proxy>, Client)>,
}

impl Drop for Counted {
    fn drop(&mut self) {
        if let Some(p) = self.pending.take() {
            self.state.0.finish(p.done(&self.state.1, self.sent));
        }
    }
}

impl http_body::Body for Counted {
    type Data = bytes::Bytes;
    type Error = <super::ProxyBody as http_body::Body>::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = std::pin::Pin::new(&mut self.body).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                self.sent += data.len() as u64;
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
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
