//! The admin API, served on its own listener (loopback by default), never
//! on the proxy's: liveness, the registry as the proxy routes it, the
//! registration API and client-side discovery queries.
//!
//! | call | what |
//! |---|---|
//! | `GET /healthz` | `200 ok` while the process serves |
//! | `GET /v1/status` | snapshot version and age, counts |
//! | `GET /v1/services` | every service and instance with its combined state |
//! | `GET /v1/sources` | per source: state, last success/error, instances, held-back removals |
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
//! When a token is configured, every call that changes something (PUT,
//! POST, DELETE) needs `Authorization: Bearer TOKEN` or gets 401.

mod registry_api;
pub mod services;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::net::TcpListener;

use crate::proxy::ProxyBody;
use crate::registry::registrations::Registrations;
use crate::registry::Registry;

/// Largest request body the admin API reads.
pub const MAX_BODY: usize = 64 * 1024;

/// What the admin API works on.
#[derive(Debug, Clone)]
pub struct Admin {
    /// The registry.
    pub registry: Arc<Registry>,
    /// The registration source.
    pub registrations: Arc<Registrations>,
    /// Token mutating calls must carry, if any.
    pub token: Option<Arc<str>>,
    /// TTL of registrations that name none.
    pub default_ttl: Duration,
}

/// Serves the admin API on `listener` until `shutdown` completes.
pub async fn serve(listener: TcpListener, admin: Admin, shutdown: impl Future<Output = ()>) {
    let admin = Arc::new(admin);
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => return,
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let admin = admin.clone();
                async move { Ok::<_, Infallible>(admin.handle(req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

impl Admin {
    /// Answers one admin request.
    pub async fn handle(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        let mutating = matches!(
            *req.method(),
            Method::PUT | Method::POST | Method::DELETE | Method::PATCH
        );
        if mutating && !self.authorized(&req) {
            let mut resp = text(StatusCode::UNAUTHORIZED, "missing or wrong bearer token\n");
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return resp;
        }
        let path = req.uri().path().to_owned();
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        match (req.method().clone(), segments.as_slice()) {
            (Method::GET, ["healthz"]) => text(StatusCode::OK, "ok\n"),
            (Method::GET, ["v1", "status"]) => {
                json(StatusCode::OK, &services::status(&self.registry))
            }
            (Method::GET, ["v1", "services"]) => {
                json(StatusCode::OK, &services::services(&self.registry))
            }
            (_, ["healthz"] | ["v1", "status" | "services"]) => method_not_allowed("GET"),
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
        let Some(given) = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        else {
            return false;
        };
        constant_time_eq(given.trim().as_bytes(), token.as_bytes())
    }
}

/// Compares without an early exit, so timing does not leak the token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Reads a request body of at most [`MAX_BODY`] bytes.
async fn read_body(body: Incoming) -> Result<Bytes, Response<ProxyBody>> {
    match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(text(
                StatusCode::BAD_REQUEST,
                &format!("body: longer than {MAX_BODY} bytes\n"),
            ))
        }
        Err(e) => Err(text(StatusCode::BAD_REQUEST, &format!("body: {e}\n"))),
    }
}

/// A query parameter's value.
fn query_param<'a>(req: &'a Request<Incoming>, name: &str) -> Option<&'a str> {
    req.uri()
        .query()?
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn method_not_allowed(allowed: &'static str) -> Response<ProxyBody> {
    let mut resp = text(
        StatusCode::METHOD_NOT_ALLOWED,
        &format!("method not allowed; use {allowed}\n"),
    );
    resp.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allowed));
    resp
}

fn text(status: StatusCode, body: &str) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::full(body.to_owned()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn json(status: StatusCode, value: &impl Serialize) -> Response<ProxyBody> {
    match serde_json::to_vec_pretty(value) {
        Ok(mut body) => {
            body.push(b'\n');
            let mut resp = Response::new(ProxyBody::full(body));
            *resp.status_mut() = status;
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            resp
        }
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("could not encode: {e}\n"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"secret-token", b"secret-token"));
        assert!(!constant_time_eq(b"secret-token", b"secret-tokem"));
        assert!(!constant_time_eq(b"short", b"longer"));
    }
}
