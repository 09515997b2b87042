//! The proxy: the server side that accepts client connections ([`server`]),
//! the forwarding of one request to a picked instance with retries and
//! error answers ([`forward`] over hyper, [`h1`] the HTTP/1.1 fast path,
//! both through one attempt loop), and the upstream connection pool
//! ([`upstream`]). It reads the registry snapshot once per request and takes
//! no lock on the way.

pub mod access_log;
mod attempt;
pub mod body;
pub mod error;
mod forward;
mod grpc;
mod h1;
pub mod headers;
mod hedge;
pub mod observe;
pub(crate) mod policy;
pub mod request_body;
pub mod retry;
mod route;
pub mod server;
pub(crate) mod traffic;
mod tunnel;
pub(crate) mod upstream;

use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;

pub use body::ProxyBody;
pub use error::ProxyError;
#[cfg(feature = "fuzzing")]
pub(crate) use h1::fuzz as fuzz_hooks;
pub use upstream::ConnectError;

use crate::config::{Cidr, Config};
use crate::registry::Registry;

/// Everything a request needs besides itself: the registry and the settings
/// fixed at start.
#[derive(Debug)]
pub struct Proxy {
    registry: Arc<Registry>,
    settings: Settings,
}

/// Forwarding settings taken from the config.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub upstream_idle: Duration,
    /// `limits.max_idle_per_instance`: idle connections kept per instance
    /// (of each kind).
    pub max_idle: usize,
    pub max_header_bytes: usize,
    pub debug_header: bool,
    pub snapshot_header: bool,
    /// `Via` values for HTTP/1.0, HTTP/1.1 and HTTP/2 clients (RFC 9110
    /// section 7.6.3: the version received).
    pub via_h10: HeaderValue,
    pub via_h1: HeaderValue,
    pub via_h2: HeaderValue,
    /// Peers whose forwarding headers are kept.
    pub trusted_proxies: Vec<Cidr>,
    /// Write an RFC 7239 `Forwarded` header.
    pub forwarded: bool,
    /// `limits.max_uri_bytes`.
    pub max_uri_bytes: usize,
    /// Longest pause in a client's request body.
    pub client_body: Duration,
    /// Longest a write to a client may stall.
    pub client_send: Duration,
    /// The port of the first TLS listener (where a route that requires
    /// TLS redirects plain requests), if there is one.
    pub https_port: Option<u16>,
    /// `http2.upstream_max_streams`.
    pub h2_streams: usize,
    /// `http2.upstream_max_connections`.
    pub h2_connections: usize,
    /// `http2.keepalive_interval` and `keepalive_timeout`, for shared
    /// upstream connections too.
    pub h2_keepalive: (Duration, Duration),
    /// The request id header (lowercase), when request ids are on.
    pub request_id: Option<&'static [u8]>,
    /// Where finished requests are logged, when the access log is on.
    pub access_log: Option<access_log::AccessLog>,
}

/// What the proxy knows about the client connection a request came on.
#[derive(Debug, Clone)]
pub struct Client {
    /// The client's address.
    peer: std::net::SocketAddr,
    /// The client's IP, formatted once per connection.
    ip: Box<str>,
    /// The client is one of `proxy.trusted_proxies`.
    trusted: bool,
    /// The connection is TLS (`https`).
    tls: bool,
}

impl Client {
    /// Describes a client connecting from `peer` to `proxy`.
    pub fn new(peer: std::net::SocketAddr, proxy: &Proxy) -> Client {
        let ip = peer.ip();
        Client {
            peer,
            ip: ip.to_string().into_boxed_str(),
            trusted: proxy
                .settings
                .trusted_proxies
                .iter()
                .any(|net| net.contains(ip)),
            tls: false,
        }
    }

    /// The client's address.
    pub(crate) fn peer(&self) -> std::net::SocketAddr {
        self.peer
    }

    /// Whether the connection is TLS.
    pub(crate) fn is_tls(&self) -> bool {
        self.tls
    }

    /// The same client, on a TLS connection.
    pub fn over_tls(mut self) -> Client {
        self.tls = true;
        self
    }

    /// The hop a request on this connection came over, for the forwarding
    /// policy; `via` is the `Via` entry for the request's version.
    pub(crate) fn hop<'a>(
        &'a self,
        settings: &'a Settings,
        via: &'a HeaderValue,
    ) -> policy::request::Hop<'a> {
        policy::request::Hop {
            client_ip: &self.ip,
            trusted: self.trusted,
            proto: if self.tls { "https" } else { "http" },
            via: via.as_bytes(),
            forwarded: settings.forwarded,
            max_uri_bytes: settings.max_uri_bytes,
            request_id: settings.request_id,
        }
    }
}

impl Proxy {
    /// A proxy forwarding through `registry` with `config`'s settings.
    pub fn new(registry: Arc<Registry>, config: &Config) -> Proxy {
        let via = |v: &str| {
            HeaderValue::from_str(&format!("{v} {}", config.startup.proxy.via))
                .unwrap_or_else(|_| HeaderValue::from_static("1.1 wayfinder"))
        };
        Proxy {
            registry,
            settings: Settings {
                upstream_idle: config.startup.timeouts.upstream_idle,
                max_idle: config.startup.limits.max_idle_per_instance,
                max_header_bytes: config.startup.limits.max_header_bytes,
                debug_header: config.startup.proxy.debug_header,
                snapshot_header: config.startup.proxy.snapshot_header,
                via_h10: via("1.0"),
                via_h1: via("1.1"),
                via_h2: via("2"),
                trusted_proxies: config.startup.proxy.trusted_proxies.clone(),
                forwarded: config.startup.proxy.forwarded,
                max_uri_bytes: config.startup.limits.max_uri_bytes,
                client_body: config.startup.timeouts.client_body,
                client_send: config.startup.timeouts.client_send,
                https_port: config
                    .startup
                    .tls
                    .iter()
                    .flat_map(|t| &t.listen)
                    .next()
                    .map(|a| a.port()),
                h2_streams: config.startup.http2.upstream_max_streams,
                h2_connections: config.startup.http2.upstream_max_connections,
                h2_keepalive: (
                    config.startup.http2.keepalive_interval,
                    config.startup.http2.keepalive_timeout,
                ),
                request_id: config.startup.proxy.request_id.then(|| {
                    // Once per proxy built: the policy writes header names
                    // as static bytes.
                    &*Box::leak(
                        config
                            .startup
                            .proxy
                            .request_id_header
                            .to_ascii_lowercase()
                            .into_bytes()
                            .into_boxed_slice(),
                    )
                }),
                access_log: None,
            },
        }
    }

    /// Logs every finished request to `log`.
    pub fn with_access_log(mut self, log: access_log::AccessLog) -> Proxy {
        self.settings.access_log = Some(log);
        self
    }

    /// Where a route that requires TLS redirects plain requests: the port
    /// the first TLS listener actually bound.
    pub fn with_https_port(mut self, port: Option<u16>) -> Proxy {
        self.settings.https_port = port;
        self
    }

    /// The registry requests are routed through.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Closes upstream connections idle for longer than the configured
    /// idle timeout. Called periodically by the server.
    pub fn reap_idle(&self) {
        let snapshot = self.registry.load_full();
        for service in snapshot.services() {
            for member in service.members() {
                if let Some(pool) = upstream::pool_of(&member.instance) {
                    pool.reap(self.settings.upstream_idle);
                }
            }
        }
    }
}
