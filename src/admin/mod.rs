//! The admin API, served on its own listener (loopback by default), never
//! on the proxy's: liveness and readiness, the running state and config,
//! the registry as the proxy routes it, the registration API and
//! client-side discovery queries.
//!
//! | call | what |
//! |---|---|
//! | `GET /healthz` | `200 ok` while the process serves |
//! | `GET /metrics` | Prometheus text format, or OpenMetrics by `Accept` |
//! | `GET /`, `GET /dashboard` | the dashboard page (embedded, no external assets) |
//! | `GET /v1/dashboard[?index=N&wait=1s]` | what the page shows, long-polled |
//! | `GET /readyz` | `200 ready`; `503 starting` until the registry is loaded, `503 draining` from SIGTERM/SIGINT on |
//! | `GET /v1/status` | version, uptime, readiness, snapshot version and age, last reload, settings waiting for a restart |
//! | `GET /v1/config` | the config in effect, secrets redacted |
//! | `GET /v1/routes` | explicit routes in precedence order, and the conventions |
//! | `PUT` / `DELETE /v1/routes/{name}/split` | set a named route's split / back to the file's |
//! | `GET /v1/services` | every service and instance with its combined state |
//! | `GET /v1/sources` | per source: state, last success/error, instances, held-back removals |
//! | `GET /v1/members` | the gossip fleet: members, their state and what they publish |
//! | `POST /v1/sources/{source}/release` | apply removals self-preservation held back |
//! | `GET /v1/registry[?index=N&wait=30s]` | all services' instances (long poll on the snapshot version) |
//! | `GET /v1/registry/{service}[?healthy=true&index=N&wait=30s]` | one service (long poll on its index) |
//! | `PUT /v1/registry/{service}/{id}` | register or update (JSON body) |
//! | `PUT /v1/registry/{service}/{id}/heartbeat` | renew the TTL |
//! | `PUT /v1/registry/{service}/{id}/drain` | stop new requests, keep in-flight ones |
//! | `GET /v1/registry/{service}/{id}[?wait=drained&timeout=30s]` | one registration and its in-flight count |
//! | `DELETE /v1/registry/{service}/{id}` | deregister |
//! | `PUT` / `DELETE /v1/services/{service}/instances/{addr}/drain` | drain any instance / cancel |
//!
//! `HEAD` is answered like `GET`, without the body. When a token is
//! configured, every call that changes something (PUT, POST, DELETE)
//! needs `Authorization: Bearer TOKEN` (the scheme in any case) or gets
//! 401; with `admin.auth_reads` every call does, except `/healthz` and
//! `/readyz`. This is decided here, before any endpoint runs.
//!
//! Where each call is answered: `registry_api` routes the `/v1/registry`,
//! `/v1/sources` and drain calls to `registrations`, `discovery`,
//! `sources` and `drain`; [`services`] and [`status`] build the read-only
//! views, from the registry and from [`state`] (the running process's
//! state, written by `app`); `params` decodes request parameters and
//! `respond` writes the answers.

mod dashboard;
mod discovery;
mod drain;
mod members;
pub(crate) mod metrics;
mod params;
mod registrations;
mod registry_api;
mod respond;
pub(crate) mod services;
mod sources;
mod split;
pub(crate) mod state;
pub(crate) mod status;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;

use respond::{json, method_not_allowed, text, without_body};

use crate::proxy::ProxyBody;
use crate::registry::registrations::Registrations;
use crate::registry::Registry;

/// What the admin API works on.
#[derive(Debug, Clone)]
pub(crate) struct Admin {
    /// The registry.
    pub registry: Arc<Registry>,
    /// The registration source.
    pub registrations: Arc<Registrations>,
    /// Token mutating calls must carry, if any.
    pub token: Option<Arc<str>>,
    /// Whether every call but `/healthz` and `/readyz` needs the token.
    pub auth_reads: bool,
    /// TTL of registrations that name none.
    pub default_ttl: Duration,
    /// The running process: readiness, reloads, the config in effect.
    pub state: Arc<state::RunState>,
    /// This proxy's membership of a gossip fleet, if any.
    pub gossip: Option<Arc<crate::registry::gossip::Gossip>>,
    /// What `GET /metrics` encodes (see [`metrics::registry`]).
    pub metrics: Arc<prometheus_client::registry::Registry>,
}

/// Serves the admin API on `listener` until `shutdown` completes. While
/// `paused` is `true` (a successor process is taking over) it accepts no
/// connection and closes those it has after their current request, so
/// clients reconnect to whichever process accepts next.
pub(crate) async fn serve(
    listener: TcpListener,
    admin: Admin,
    shutdown: impl Future<Output = ()>,
    mut paused: watch::Receiver<bool>,
) {
    let admin = Arc::new(admin);
    tokio::pin!(shutdown);
    // Until the pausing side is gone.
    let mut pausable = true;
    loop {
        if *paused.borrow_and_update() {
            tokio::select! {
                r = paused.wait_for(|p| !*p) => if r.map(|_| ()).is_err() { return },
                () = &mut shutdown => return,
            }
            continue;
        }
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            r = paused.changed(), if pausable => {
                pausable = r.is_ok();
                continue;
            }
            () = &mut shutdown => return,
        };
        let admin = admin.clone();
        let mut paused = paused.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let admin = admin.clone();
                async move { Ok::<_, Infallible>(admin.handle(req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                Ok(()) = async { paused.wait_for(|p| *p).await.map(|_| ()) } => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
}

impl Admin {
    /// Answers one admin request.
    pub(crate) async fn handle(&self, mut req: Request<Incoming>) -> Response<ProxyBody> {
        let head = req.method() == Method::HEAD;
        if head {
            *req.method_mut() = Method::GET;
        }
        let resp = self.dispatch(req).await;
        if head {
            without_body(resp)
        } else {
            resp
        }
    }

    async fn dispatch(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        let path = req.uri().path().to_owned();
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let probe = matches!(segments.as_slice(), ["healthz" | "readyz"]);
        let mutating = matches!(
            *req.method(),
            Method::PUT | Method::POST | Method::DELETE | Method::PATCH
        );
        let needs_token = mutating || (self.auth_reads && !probe);
        if needs_token && !self.authorized(&req) {
            let mut resp = text(StatusCode::UNAUTHORIZED, "missing or wrong bearer token\n");
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return resp;
        }
        match (req.method().clone(), segments.as_slice()) {
            (Method::GET, ["healthz"]) => text(StatusCode::OK, "ok\n"),
            (Method::GET, ["readyz"]) => match self.state.phase() {
                state::Phase::Ready => text(StatusCode::OK, "ready\n"),
                phase => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("{}\n", phase.as_str()),
                ),
            },
            (Method::GET, [""] | ["dashboard"]) => self.dashboard_page(),
            (Method::GET, ["v1", "dashboard"]) => self.dashboard_state(&req).await,
            (Method::GET, ["metrics"]) => {
                let accept = req
                    .headers()
                    .get(header::ACCEPT)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                let (body, content_type) = metrics::render(&self.metrics, accept);
                let mut resp = text(StatusCode::OK, &body);
                resp.headers_mut()
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
                resp
            }
            (Method::GET, ["v1", "status"]) => {
                json(StatusCode::OK, &status::status(&self.state, &self.registry))
            }
            (Method::GET, ["v1", "config"]) => json(StatusCode::OK, &status::config(&self.state)),
            (Method::GET, ["v1", "routes"]) => {
                json(StatusCode::OK, &status::routes(&self.state, &self.registry))
            }
            (Method::GET, ["v1", "services"]) => {
                json(StatusCode::OK, &services::services(&self.registry))
            }
            (Method::GET, ["v1", "members"]) => self.members(),
            (
                _,
                ["healthz" | "readyz" | "metrics" | "dashboard" | ""]
                | ["v1", "status" | "config" | "routes" | "services" | "members" | "dashboard"],
            ) => method_not_allowed("GET, HEAD"),
            (_, ["v1", "routes", route, "split"]) => self.route_split(req, route).await,
            (_, ["v1", "sources" | "registry", ..] | ["v1", "services", _, ..]) => {
                self.registry_call(req, &segments).await
            }
            _ => text(
                StatusCode::NOT_FOUND,
                &format!("no admin endpoint at {path}\n"),
            ),
        }
    }

    fn authorized(&self, req: &Request<Incoming>) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer);
        given.is_some_and(|given| constant_time_eq(given.as_bytes(), token.as_bytes()))
    }
}

/// The token of an `Authorization: Bearer TOKEN` value; the scheme is
/// case-insensitive (RFC 9110, section 11.1).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim_start().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Compares without an early exit, so timing does not leak the token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer abc"), Some("abc"));
        assert_eq!(bearer("BEARER  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer"), None);
        assert_eq!(bearer("Bearer "), None);
    }

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"secret-token", b"secret-token"));
        assert!(!constant_time_eq(b"secret-token", b"secret-tokem"));
        assert!(!constant_time_eq(b"short", b"longer"));
    }

    /// Serves an admin API for an empty config on a loopback port.
    async fn serve_admin() -> std::net::SocketAddr {
        let config = crate::config::Config::parse("", std::path::Path::new("t.toml")).unwrap();
        let registry = Registry::new(&config);
        let admin = Admin {
            registrations: Registrations::new(&registry, None),
            metrics: Arc::new(metrics::registry(registry.clone())),
            registry,
            token: None,
            auth_reads: false,
            default_ttl: Duration::from_secs(30),
            state: state::RunState::new(&config, None),
            gossip: None,
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(
            listener,
            admin,
            std::future::pending(),
            watch::channel(false).1,
        ));
        addr
    }

    /// The status line of `GET target` (the connection closed after it).
    async fn get_status(addr: std::net::SocketAddr, target: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let exchange = async {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(
                format!("GET {target} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await
            .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        let out = tokio::time::timeout(Duration::from_secs(10), exchange)
            .await
            .expect("the admin API answers within 10s");
        out.lines().next().unwrap_or_default().to_owned()
    }

    /// Query values are form-decoded: a client that encodes `wait=1m 30s`
    /// as `1m%2030s` or `1m+30s` is understood (it got 400 before: the
    /// escapes reached the duration parser).
    #[tokio::test]
    async fn query_parameters_are_percent_decoded() {
        let addr = serve_admin().await;
        for target in ["/v1/registry?wait=1m%2030s", "/v1/registry?wait=1m+30s"] {
            assert_eq!(
                get_status(addr, target).await,
                "HTTP/1.1 200 OK",
                "{target}"
            );
        }
        assert_eq!(
            get_status(addr, "/v1/registry?wait=soon").await,
            "HTTP/1.1 400 Bad Request"
        );
    }
}
