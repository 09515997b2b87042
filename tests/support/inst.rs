//! An instance whose health, speed and presence the test controls
//! ([`Inst`]), the config tables that list and check such instances
//! ([`inst_service`], [`health_check`]), and what the admin API's
//! `GET /v1/services` shows about them ([`Api::services`] and the waits
//! built on it).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpSocket;
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};

use super::{empty, full, service_at, within, Api, Body, Gate};

/// `/healthz` answers 200.
pub const PASS: u8 = 0;
/// `/healthz` answers 503.
pub const FAIL: u8 = 1;
/// `/healthz` alternates: 200, 503, 200, ... one per check received.
pub const FLAP: u8 = 2;

/// What an [`Inst`] does, changeable while it runs.
#[derive(Debug, Default)]
pub struct Ctl {
    /// [`PASS`], [`FAIL`] or [`FLAP`].
    pub health: AtomicU8,
    /// Health checks received.
    pub checks: AtomicUsize,
    /// Health checks answered 200.
    pub passed: AtomicUsize,
    /// Health checks answered 503.
    pub failed: AtomicUsize,
    /// Other requests received.
    pub hits: AtomicUsize,
    /// Delay before answering any other request, in milliseconds.
    pub delay_ms: AtomicU64,
    /// Delay before answering requests for `/slow...`, in milliseconds.
    pub slow_ms: AtomicU64,
    /// While set, requests for `/slow...` wait for [`Ctl::slow_gate`] to
    /// open before they are answered.
    pub hold_slow: AtomicBool,
    /// What held `/slow...` requests wait for.
    pub slow_gate: Gate,
    /// Open client connections.
    pub conns: AtomicUsize,
}

/// A real HTTP/1.1 instance on a loopback port: `/healthz` answers as
/// [`Ctl::health`] says, anything else answers `200` with its name (also in
/// `x-backend`). It can be stopped (listener and connections closed, so
/// connecting is refused) and restarted on the same port.
pub struct Inst {
    /// Its name, the body of its answers.
    pub name: String,
    /// Where it listens.
    pub addr: SocketAddr,
    /// What it does, changeable while it runs.
    pub ctl: Arc<Ctl>,
    server: Mutex<Option<(oneshot::Sender<()>, JoinHandle<()>)>>,
}

impl Inst {
    /// Starts `name` on a loopback port, passing its checks.
    pub async fn start(name: &str) -> Inst {
        let listener = listen("127.0.0.1:0".parse().unwrap());
        let addr = listener.local_addr().unwrap();
        let inst = Inst {
            name: name.to_owned(),
            addr,
            ctl: Arc::new(Ctl::default()),
            server: Mutex::new(None),
        };
        inst.serve(listener);
        inst
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(serve_inst(
            listener,
            Arc::from(self.name.as_str()),
            self.ctl.clone(),
            stopped,
        ));
        *self.server.lock().unwrap() = Some((stop, task));
    }

    /// Sets what `/healthz` answers: [`PASS`], [`FAIL`] or [`FLAP`].
    pub fn set_health(&self, mode: u8) {
        self.ctl.health.store(mode, SeqCst);
    }

    /// Requests received other than health checks.
    pub fn hits(&self) -> usize {
        self.ctl.hits.load(SeqCst)
    }

    /// Health checks received.
    pub fn checks(&self) -> usize {
        self.ctl.checks.load(SeqCst)
    }

    /// Health checks answered 200 so far.
    pub fn passed_checks(&self) -> usize {
        self.ctl.passed.load(SeqCst)
    }

    /// Health checks answered 503 so far.
    pub fn failed_checks(&self) -> usize {
        self.ctl.failed.load(SeqCst)
    }

    /// Open client connections.
    pub fn conns(&self) -> usize {
        self.ctl.conns.load(SeqCst)
    }

    /// Closes the listener and every connection; returns once they are gone.
    pub async fn stop(&self) {
        let server = self.server.lock().unwrap().take();
        if let Some((stop, task)) = server {
            let _ = stop.send(());
            let _ = task.await;
        }
    }

    /// Listens again on the same port.
    pub async fn restart(&self) {
        self.stop().await;
        self.serve(listen(self.addr));
    }
}

impl Drop for Inst {
    fn drop(&mut self) {
        if let Some((_, task)) = self.server.lock().unwrap().take() {
            // Dropping the task's future drops its JoinSet, which aborts the
            // connection tasks.
            task.abort();
        }
    }
}

fn listen(addr: SocketAddr) -> tokio::net::TcpListener {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_reuseaddr(true).expect("SO_REUSEADDR");
    socket
        .bind(addr)
        .unwrap_or_else(|e| panic!("bind {addr}: {e}"));
    socket.listen(1024).expect("listen")
}

async fn serve_inst(
    listener: tokio::net::TcpListener,
    name: Arc<str>,
    ctl: Arc<Ctl>,
    mut stop: oneshot::Receiver<()>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                };
                let (name, ctl) = (name.clone(), ctl.clone());
                conns.spawn(async move {
                    let _open = ConnCount::new(ctl.clone());
                    let service = service_fn(move |req| answer(req, name.clone(), ctl.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        }
    }
    drop(listener);
    conns.shutdown().await;
}

/// Counts an open connection for as long as it lives.
struct ConnCount(Arc<Ctl>);

impl ConnCount {
    fn new(ctl: Arc<Ctl>) -> ConnCount {
        ctl.conns.fetch_add(1, SeqCst);
        ConnCount(ctl)
    }
}

impl Drop for ConnCount {
    fn drop(&mut self) {
        self.0.conns.fetch_sub(1, SeqCst);
    }
}

async fn answer(
    req: Request<Incoming>,
    name: Arc<str>,
    ctl: Arc<Ctl>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path();
    if path == "/healthz" {
        let n = ctl.checks.fetch_add(1, SeqCst);
        let pass = match ctl.health.load(SeqCst) {
            PASS => true,
            FLAP => n % 2 == 0,
            _ => false,
        };
        let status = if pass {
            ctl.passed.fetch_add(1, SeqCst);
            StatusCode::OK
        } else {
            ctl.failed.fetch_add(1, SeqCst);
            StatusCode::SERVICE_UNAVAILABLE
        };
        let mut resp = Response::new(empty());
        *resp.status_mut() = status;
        return Ok(resp);
    }
    ctl.hits.fetch_add(1, SeqCst);
    let delay = if path.starts_with("/slow") {
        ctl.slow_ms.load(SeqCst)
    } else {
        ctl.delay_ms.load(SeqCst)
    };
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    if path.starts_with("/slow") && ctl.hold_slow.load(SeqCst) {
        ctl.slow_gate.passed().await;
    }
    let mut resp = Response::new(full(name.to_string()));
    resp.headers_mut()
        .insert("x-backend", name.parse().expect("backend name"));
    Ok(resp)
}

// === config tables and the admin API's view ===

/// The entry of service `name` in a `GET /v1/services` document (`Null`
/// when it is not listed).
pub fn service_in(doc: &Value, name: &str) -> Value {
    doc["services"]
        .as_array()
        .and_then(|all| all.iter().find(|s| s["name"] == name))
        .cloned()
        .unwrap_or(Value::Null)
}

/// The entry of the instance at `addr` in a service's entry (`Null` when
/// it is not listed).
pub fn instance_in(svc: &Value, addr: SocketAddr) -> Value {
    let addr = addr.to_string();
    svc["instances"]
        .as_array()
        .and_then(|all| all.iter().find(|i| i["address"] == addr.as_str()))
        .cloned()
        .unwrap_or(Value::Null)
}

/// `[services.NAME]` listing `insts`, followed by `extra` keys of the table.
pub fn inst_service(name: &str, insts: &[&Inst], extra: &str) -> String {
    let addrs: Vec<SocketAddr> = insts.iter().map(|i| i.addr).collect();
    format!("{}{extra}", service_at(name, None, &addrs))
}

/// `[services.NAME.health]`: HTTP check of `/healthz` every `interval_ms`.
pub fn health_check(name: &str, interval_ms: u64, healthy: u32, unhealthy: u32) -> String {
    format!(
        "[services.{name}.health]\nkind = \"http\"\npath = \"/healthz\"\n\
         interval = \"{interval_ms}ms\"\ntimeout = \"{}ms\"\n\
         healthy_threshold = {healthy}\nunhealthy_threshold = {unhealthy}\njitter = \"10ms\"\n",
        interval_ms * 4 / 5
    )
}

// === what `GET /v1/services` shows ===

impl Api {
    /// `GET /v1/services`.
    pub async fn services(&self) -> Value {
        self.json("/v1/services").await
    }

    /// One service's entry in `GET /v1/services`; it must be listed.
    pub async fn service(&self, name: &str) -> Value {
        let doc = self.services().await;
        let svc = service_in(&doc, name);
        assert!(!svc.is_null(), "service {name} not in {doc}");
        svc
    }

    /// One instance's entry, or `Null` when it is not listed.
    pub async fn instance(&self, service: &str, addr: SocketAddr) -> Value {
        let svc = self.service(service).await;
        instance_in(&svc, addr)
    }

    /// Polls `GET /v1/services` every 5 ms until `cond` holds for it
    /// (bounded); returns the document it held for.
    pub async fn until(
        &self,
        secs: u64,
        what: &str,
        mut cond: impl FnMut(&Value) -> bool,
    ) -> Value {
        within(secs, what, async {
            loop {
                let doc = self.services().await;
                if cond(&doc) {
                    return doc;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
    }

    /// Waits until every instance of `service` shows `health`.
    pub async fn all_health(&self, service: &str, health: &str, secs: u64) {
        self.until(secs, &format!("{service}: all instances {health}"), |doc| {
            let svc = service_in(doc, service);
            let list = svc["instances"].as_array().cloned().unwrap_or_default();
            !list.is_empty() && list.iter().all(|i| i["health"] == health)
        })
        .await;
    }

    /// Waits until the instance at `addr` shows `health`; returns when it
    /// was seen.
    pub async fn health_is(
        &self,
        service: &str,
        addr: SocketAddr,
        health: &str,
        secs: u64,
    ) -> Instant {
        self.until(secs, &format!("{service} {addr} {health}"), |doc| {
            instance_in(&service_in(doc, service), addr)["health"] == health
        })
        .await;
        Instant::now()
    }
}
