//! Health and resilience, end to end (issue 3): active checks, passive
//! ejection, panic mode, retries and their budget, timeouts, slow start,
//! flapping and draining. Real hyper instances and wayfinder run in-process
//! on loopback ports; state is observed through the admin API
//! (`GET /v1/services`), what the instances receive and what clients get.
//!
//! Timing assertions are functional bounds with generous slack ("removed
//! within interval x threshold + one interval"), never performance figures.

mod support;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
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

use support::{
    empty, full, parse_config, post_order, refused_addr, request, service_at, start_proxy, within,
    Api, Backend, Body, H1Client, Reconnecting, Reply,
};
use wayfinder::app::Running;
use wayfinder::config::Config;

// === an instance whose health, speed and presence the test controls ===

/// `/healthz` answers 200.
const PASS: u8 = 0;
/// `/healthz` answers 503.
const FAIL: u8 = 1;
/// `/healthz` alternates: 200, 503, 200, ... one per check received.
const FLAP: u8 = 2;

/// What an [`Inst`] does, changeable while it runs.
#[derive(Debug, Default)]
struct Ctl {
    /// [`PASS`], [`FAIL`] or [`FLAP`].
    health: AtomicU8,
    /// Health checks received.
    checks: AtomicUsize,
    /// Other requests received.
    hits: AtomicUsize,
    /// Delay before answering any other request, in milliseconds.
    delay_ms: AtomicU64,
    /// Delay before answering requests for `/slow...`, in milliseconds.
    slow_ms: AtomicU64,
    /// Open client connections.
    conns: AtomicUsize,
}

/// A real HTTP/1.1 instance on a loopback port: `/healthz` answers as
/// [`Ctl::health`] says, anything else answers `200` with its name (also in
/// `x-backend`). It can be stopped (listener and connections closed, so
/// connecting is refused) and restarted on the same port.
struct Inst {
    name: String,
    addr: SocketAddr,
    ctl: Arc<Ctl>,
    server: Mutex<Option<(oneshot::Sender<()>, JoinHandle<()>)>>,
}

impl Inst {
    async fn start(name: &str) -> Inst {
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

    fn set_health(&self, mode: u8) {
        self.ctl.health.store(mode, SeqCst);
    }

    fn hits(&self) -> usize {
        self.ctl.hits.load(SeqCst)
    }

    fn checks(&self) -> usize {
        self.ctl.checks.load(SeqCst)
    }

    fn conns(&self) -> usize {
        self.ctl.conns.load(SeqCst)
    }

    /// Closes the listener and every connection; returns once they are gone.
    async fn stop(&self) {
        let server = self.server.lock().unwrap().take();
        if let Some((stop, task)) = server {
            let _ = stop.send(());
            let _ = task.await;
        }
    }

    /// Listens again on the same port.
    async fn restart(&self) {
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
            StatusCode::OK
        } else {
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
    let mut resp = Response::new(full(name.to_string()));
    resp.headers_mut()
        .insert("x-backend", name.parse().expect("backend name"));
    Ok(resp)
}

// === wayfinder with its admin API ===

/// wayfinder in this process, proxy and admin API on loopback ports.
struct Wf {
    addr: SocketAddr,
    api: Api,
    running: Running,
}

/// The config text for `tables` (which must start with a table header).
///
/// The admin API listens on `127.0.0.2:0` (Linux routes all of 127/8 to the
/// loopback interface): `127.0.0.1:0` for both listeners is rejected as a
/// clash, see [`admin_and_proxy_may_both_listen_on_port_zero`].
fn config_text(tables: &str) -> String {
    format!("listen = [\"127.0.0.1:0\"]\n[admin]\nlisten = \"127.0.0.2:0\"\n{tables}")
}

fn parse(tables: &str) -> Config {
    parse_config(&config_text(tables))
}

impl Wf {
    async fn start(tables: &str) -> Wf {
        let running = start_proxy(&parse(tables)).await.expect("start proxy");
        Wf {
            addr: running.listen[0],
            api: Api::new(running.admin.expect("admin listener")),
            running,
        }
    }

    /// `GET /v1/services` on the admin listener.
    async fn services(&self) -> Value {
        self.api.json("/v1/services").await
    }

    /// One service's entry in `GET /v1/services`.
    async fn service(&self, name: &str) -> Value {
        let doc = self.services().await;
        let svc = service_in(&doc, name);
        assert!(!svc.is_null(), "service {name} not in {doc}");
        svc
    }

    /// One instance's entry, or `Null` when it is not listed.
    async fn instance(&self, service: &str, addr: SocketAddr) -> Value {
        let svc = self.service(service).await;
        instance_in(&svc, addr)
    }

    /// Polls `GET /v1/services` every 5 ms until `cond` holds for `service`;
    /// returns the entry it held for.
    async fn until(&self, secs: u64, what: &str, mut cond: impl FnMut(&Value) -> bool) -> Value {
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
    async fn all_health(&self, service: &str, health: &str, secs: u64) {
        self.until(secs, &format!("{service}: all instances {health}"), |doc| {
            let svc = service_in(doc, service);
            let list = svc["instances"].as_array().cloned().unwrap_or_default();
            !list.is_empty() && list.iter().all(|i| i["health"] == health)
        })
        .await;
    }

    /// Waits until the instance at `addr` shows `health`; returns when.
    async fn health_is(&self, service: &str, addr: SocketAddr, health: &str, secs: u64) -> Instant {
        self.until(secs, &format!("{service} {addr} {health}"), |doc| {
            instance_in(&service_in(doc, service), addr)["health"] == health
        })
        .await;
        Instant::now()
    }
}

fn service_in(doc: &Value, name: &str) -> Value {
    doc["services"]
        .as_array()
        .and_then(|all| all.iter().find(|s| s["name"] == name))
        .cloned()
        .unwrap_or(Value::Null)
}

fn instance_in(svc: &Value, addr: SocketAddr) -> Value {
    let addr = addr.to_string();
    svc["instances"]
        .as_array()
        .and_then(|all| all.iter().find(|i| i["address"] == addr.as_str()))
        .cloned()
        .unwrap_or(Value::Null)
}

/// `[services.NAME]` listing `insts`, followed by `extra` keys of the table.
fn svc(name: &str, insts: &[&Inst], extra: &str) -> String {
    let addrs: Vec<SocketAddr> = insts.iter().map(|i| i.addr).collect();
    format!("{}{extra}", service_at(name, None, &addrs))
}

/// `[services.NAME.health]`: HTTP check of `/healthz` every `interval_ms`.
fn health_check(name: &str, interval_ms: u64, healthy: u32, unhealthy: u32) -> String {
    format!(
        "[services.{name}.health]\nkind = \"http\"\npath = \"/healthz\"\n\
         interval = \"{interval_ms}ms\"\ntimeout = \"{}ms\"\n\
         healthy_threshold = {healthy}\nunhealthy_threshold = {unhealthy}\njitter = \"10ms\"\n",
        interval_ms * 4 / 5
    )
}

// === load ===

/// One client request of a [`Load`].
#[derive(Debug)]
struct Sample {
    at: Instant,
    /// `Ok((status, backend))` or the client-side error.
    result: Result<(StatusCode, String), String>,
}

/// Clients sending GETs in a loop on keep-alive connections until finished.
struct Load {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicUsize>,
    tasks: Vec<JoinHandle<Vec<Sample>>>,
}

impl Load {
    fn start(addr: SocketAddr, host: &str, workers: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicUsize::new(0));
        let tasks = (0..workers)
            .map(|_| {
                let (stop, done, host) = (stop.clone(), done.clone(), host.to_owned());
                tokio::spawn(async move {
                    let mut out = Vec::new();
                    let mut client = Reconnecting::new(addr);
                    while !stop.load(SeqCst) {
                        let result = match client.get(&host, "/").await {
                            Ok(reply) => Ok((reply.status, backend_of(&reply))),
                            Err(e) => Err(e.to_string()),
                        };
                        out.push(Sample {
                            at: Instant::now(),
                            result,
                        });
                        done.fetch_add(1, SeqCst);
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    out
                })
            })
            .collect();
        Load { stop, done, tasks }
    }

    fn done(&self) -> usize {
        self.done.load(SeqCst)
    }

    /// Waits until `n` more requests have finished.
    async fn run_for(&self, n: usize) {
        let target = self.done() + n;
        support::wait_until(30, "load progress", || self.done() >= target).await;
    }

    async fn finish(self) -> Vec<Sample> {
        self.stop.store(true, SeqCst);
        let mut all = Vec::new();
        for t in self.tasks {
            all.extend(t.await.expect("client task"));
        }
        all.sort_by_key(|s| s.at);
        all
    }
}

fn backend_of(reply: &Reply) -> String {
    reply
        .headers
        .get("x-backend")
        .and_then(|v| v.to_str().ok())
        .map_or_else(|| reply.text(), str::to_owned)
}

/// Samples that are not `200`, as readable lines.
fn errors(samples: &[Sample]) -> Vec<String> {
    samples
        .iter()
        .filter_map(|s| match &s.result {
            Ok((StatusCode::OK, _)) => None,
            Ok((status, body)) => Some(format!("{status}: {body}")),
            Err(e) => Some(format!("client error: {e}")),
        })
        .collect()
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

// === 1. active checks remove and re-admit ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_health_check_removes_then_readmits_without_client_errors() {
    within(60, "remove and re-admit", async {
        let (interval, healthy, unhealthy) = (100u64, 2u32, 3u32);
        let insts = [
            Inst::start("a").await,
            Inst::start("b").await,
            Inst::start("c").await,
        ];
        let wf = Wf::start(&format!(
            "{}{}",
            svc(
                "hc",
                &[&insts[0], &insts[1], &insts[2]],
                "slow_start = \"0s\"\n"
            ),
            health_check("hc", interval, healthy, unhealthy)
        ))
        .await;
        wf.all_health("hc", "healthy", 10).await;
        let load = Load::start(wf.addr, "hc.svc", 4);
        load.run_for(100).await;
        let b = &insts[1];

        // /healthz turns 503: removed within interval x unhealthy_threshold
        // (+ one interval for the check in progress), plus slack.
        let turned = Instant::now();
        b.set_health(FAIL);
        let removed = wf.health_is("hc", b.addr, "unhealthy", 10).await;
        let took = removed - turned;
        let bound = Duration::from_millis(interval * u64::from(unhealthy) + interval + 600);
        println!("health removal: {} ms (bound {} ms)", ms(took), ms(bound));
        assert!(took <= bound, "removed after {took:?}, bound {bound:?}");
        let entry = wf.instance("hc", b.addr).await;
        assert_eq!(entry["available"], false, "{entry}");
        assert_eq!(entry["last_transition"]["to"], "unhealthy", "{entry}");
        let reason = entry["last_transition"]["reason"].as_str().unwrap_or("");
        assert!(
            reason.contains("3 consecutive checks failed") && reason.contains("503"),
            "transition reason: {reason:?}"
        );

        // Removed: no new requests reach it.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let hits_removed = b.hits();
        load.run_for(200).await;
        assert_eq!(b.hits(), hits_removed, "an unhealthy instance got requests");

        // Passing again: re-admitted after healthy_threshold passes.
        let turned = Instant::now();
        b.set_health(PASS);
        let back = wf.health_is("hc", b.addr, "healthy", 10).await;
        let took = back - turned;
        let bound = Duration::from_millis(interval * u64::from(healthy) + interval + 600);
        println!(
            "health re-admission: {} ms (bound {} ms)",
            ms(took),
            ms(bound)
        );
        assert!(took <= bound, "re-admitted after {took:?}, bound {bound:?}");
        let entry = wf.instance("hc", b.addr).await;
        let reason = entry["last_transition"]["reason"].as_str().unwrap_or("");
        assert!(
            reason.contains("2 consecutive checks passed"),
            "transition reason: {reason:?}"
        );
        let hits_back = b.hits();
        load.run_for(150).await;
        assert!(b.hits() > hits_back, "re-admitted instance gets no traffic");

        let samples = load.finish().await;
        assert_eq!(errors(&samples), Vec::<String>::new(), "client errors");
    })
    .await;
}

// === 2. killed instance: failover figures ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_instance_no_client_errors_and_restart_brings_it_back() {
    within(60, "kill and restart", async {
        let insts = [
            Inst::start("a").await,
            Inst::start("b").await,
            Inst::start("c").await,
        ];
        for i in &insts {
            i.ctl.delay_ms.store(2, SeqCst);
        }
        let wf = Wf::start(&format!(
            "{}{}[services.pool.outlier]\nbase_ejection = \"500ms\"\n",
            svc(
                "pool",
                &[&insts[0], &insts[1], &insts[2]],
                "slow_start = \"0s\"\n"
            ),
            health_check("pool", 100, 2, 2)
        ))
        .await;
        wf.all_health("pool", "healthy", 10).await;
        let load = Load::start(wf.addr, "pool.svc", 4);
        load.run_for(200).await;
        let b = &insts[1];

        let killed = Instant::now();
        b.stop().await;
        let mut unavailable = None;
        let unhealthy = within(10, "killed instance marked unhealthy", async {
            loop {
                let entry = wf.instance("pool", b.addr).await;
                if unavailable.is_none() && entry["available"] == false {
                    unavailable = Some(killed.elapsed());
                }
                if entry["health"] == "unhealthy" {
                    return killed.elapsed();
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        let unavailable = unavailable.unwrap_or(unhealthy);
        load.run_for(300).await;
        let hits_down = b.hits();

        let restarted = Instant::now();
        b.restart().await;
        wf.health_is("pool", b.addr, "healthy", 10).await;
        let readmitted = restarted.elapsed();
        within(10, "restarted instance gets traffic", async {
            while b.hits() == hits_down {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
        .await;
        let traffic = restarted.elapsed();
        load.run_for(200).await;
        let samples = load.finish().await;
        let errs = errors(&samples);

        println!("failover figures (3 instances, 4 clients, checks every 100ms, thresholds 2/2):");
        println!(
            "  requests: {}, client-visible errors: {}",
            samples.len(),
            errs.len()
        );
        println!(
            "  kill -> out of rotation (admin available=false): {} ms",
            ms(unavailable)
        );
        println!(
            "  kill -> marked unhealthy by active checks: {} ms",
            ms(unhealthy)
        );
        println!("  restart -> re-admitted (healthy): {} ms", ms(readmitted));
        println!("  restart -> first request served: {} ms", ms(traffic));

        assert_eq!(errs, Vec::<String>::new(), "clients saw errors");
        assert!(
            unhealthy <= Duration::from_millis(100 * 2 + 100 + 700),
            "{unhealthy:?}"
        );
        assert!(
            readmitted <= Duration::from_millis(100 * 2 + 100 + 700),
            "{readmitted:?}"
        );
        for i in &insts {
            assert!(i.hits() > 0, "{} got nothing", i.name);
        }
    })
    .await;
}

// === 3. hanging instance: 504 at the bound, then ejected ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_instance_times_out_with_504_and_is_ejected() {
    within(60, "hanging instance", async {
        let insts = [
            Inst::start("hang").await,
            Inst::start("ok1").await,
            Inst::start("ok2").await,
        ];
        let hang = &insts[0];
        hang.ctl.delay_ms.store(60_000, SeqCst);
        let wf = Wf::start(&svc(
            "stuck",
            &[&insts[0], &insts[1], &insts[2]],
            "[services.stuck.timeouts]\nresponse_header = \"300ms\"\n\
             [services.stuck.outlier]\nconsecutive_failures = 2\nbase_ejection = \"30s\"\n\
             max_ejection = \"30s\"\n",
        ))
        .await;
        let mut client = H1Client::connect(wf.addr).await.unwrap();
        let mut timeouts = Vec::new();
        let mut served = BTreeMap::<String, usize>::new();
        for _ in 0..30 {
            let started = Instant::now();
            let reply = client.get("stuck.svc", "/").await.unwrap();
            let took = started.elapsed();
            match reply.status {
                StatusCode::OK => *served.entry(backend_of(&reply)).or_default() += 1,
                StatusCode::GATEWAY_TIMEOUT => {
                    assert_eq!(
                        reply.text(),
                        format!(
                            "service \"stuck\" instance {} sent no response within 300ms\n",
                            hang.addr
                        )
                    );
                    timeouts.push(took);
                }
                other => panic!("unexpected {other}: {}", reply.text()),
            }
        }
        println!("504 after: {timeouts:?}");
        assert_eq!(
            timeouts.len(),
            2,
            "two timeouts in a row eject the instance (consecutive_failures = 2)"
        );
        for took in &timeouts {
            assert!(
                *took >= Duration::from_millis(290) && *took < Duration::from_millis(2300),
                "504 after {took:?}, configured 300ms"
            );
        }
        assert_eq!(
            hang.hits(),
            2,
            "the hanging instance got traffic after ejection"
        );
        assert_eq!(served.values().sum::<usize>(), 28, "{served:?}");
        assert!(
            served.contains_key("ok1") && served.contains_key("ok2"),
            "{served:?}"
        );
        let entry = wf.instance("stuck", hang.addr).await;
        assert_eq!(entry["available"], false, "{entry}");
        assert!(entry["ejected_for_ms"].as_u64().is_some(), "{entry}");
        assert_eq!(entry["ejections"], 1, "{entry}");
        assert_eq!(entry["last_transition"]["to"], "ejected", "{entry}");
    })
    .await;
}

// === 4. panic mode ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_mode_spreads_over_failing_instances_and_off_gives_503() {
    within(60, "panic mode", async {
        let on = [
            Inst::start("on1").await,
            Inst::start("on2").await,
            Inst::start("on3").await,
        ];
        let off = [Inst::start("off1").await, Inst::start("off2").await];
        for i in on.iter().chain(&off) {
            i.set_health(FAIL);
        }
        let wf = Wf::start(&format!(
            "{}{}{}{}",
            svc("on", &[&on[0], &on[1], &on[2]], "panic_threshold = 50\n"),
            health_check("on", 100, 2, 2),
            svc("off", &[&off[0], &off[1]], "panic_threshold = 0\n"),
            health_check("off", 100, 2, 2),
        ))
        .await;
        wf.all_health("on", "unhealthy", 10).await;
        wf.all_health("off", "unhealthy", 10).await;
        let on_svc = wf.service("on").await;
        assert_eq!(on_svc["panic"], true, "{on_svc}");
        assert_eq!(wf.service("off").await["panic"], false);

        let mut client = H1Client::connect(wf.addr).await.unwrap();
        for _ in 0..30 {
            let reply = client.get("on.svc", "/").await.unwrap();
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        }
        let hits: Vec<usize> = on.iter().map(Inst::hits).collect();
        assert_eq!(hits.iter().sum::<usize>(), 30);
        assert!(
            hits.iter().all(|&h| h >= 5),
            "panic mode should spread over all instances: {hits:?}"
        );

        for _ in 0..5 {
            let reply = client.get("off.svc", "/").await.unwrap();
            assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(
                reply.text(),
                "no available instance of service \"off\" (2 instances: 2 unhealthy, 0 ejected, 0 draining)\n"
            );
        }
        assert_eq!(off[0].hits() + off[1].hits(), 0);

        // One instance back above the threshold: panic mode ends and the
        // healthy instance takes everything.
        on[0].set_health(PASS);
        on[1].set_health(PASS);
        wf.health_is("on", on[1].addr, "healthy", 10).await;
        wf.health_is("on", on[0].addr, "healthy", 10).await;
        wf.until(5, "on: panic over", |doc| {
            service_in(doc, "on")["panic"] == false
        })
        .await;
        let stale = on[2].hits();
        for _ in 0..20 {
            let reply = client.get("on.svc", "/").await.unwrap();
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        }
        assert_eq!(
            on[2].hits(),
            stale,
            "unhealthy instance used outside panic mode"
        );
    })
    .await;
}

// === 5. retries: POST not replayed, GET retried, the budget caps ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_is_not_replayed_after_reaching_an_instance() {
    within(30, "POST not replayed", async {
        let sinks = [
            Backend::close_after_request("s1").await,
            Backend::close_after_request("s2").await,
        ];
        let addrs = [sinks[0].addr, sinks[1].addr];
        let wf = Wf::start(&format!(
            "{}max_attempts = 3\n",
            service_at("sink", None, &addrs)
        ))
        .await;
        let reply = post_order(wf.addr, "sink.svc").await.unwrap();
        assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
        assert!(
            reply.text().starts_with("service \"sink\" unreachable: "),
            "{}",
            reply.text()
        );
        assert_eq!(
            sinks[0].hits() + sinks[1].hits(),
            1,
            "the POST was replayed"
        );

        // Contrast: a bodyless GET that reached an instance is retried on
        // the other one; a bodyless POST is not idempotent, so it is not.
        let reply = support::get(wf.addr, "sink.svc", "/x").await.unwrap();
        assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "GET for contrast");
        let before = sinks[0].hits() + sinks[1].hits();
        assert_eq!(before, 3, "a GET is retried on the other instance");
        let mut client = H1Client::connect(wf.addr).await.unwrap();
        let post = request("POST", "sink.svc", "/empty")
            .header("content-length", "0")
            .body(empty())
            .unwrap();
        let reply = client.request(post).await.unwrap();
        assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
        assert_eq!(
            sinks[0].hits() + sinks[1].hits(),
            before + 1,
            "bodyless POST replayed"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_is_retried_on_another_instance_after_connect_failure() {
    within(30, "GET retried", async {
        let (_hold, dead) = refused_addr();
        let live = Inst::start("live").await;
        // Outlier detection off, so the dead instance stays in rotation and
        // every other request tries it first.
        let wf = Wf::start(&format!(
            "[proxy]\ndebug_header = true\n{}max_attempts = 3\n\
             [services.retry.outlier]\nconnect_failures = 0\nconsecutive_failures = 0\n\
             [services.retry.retry_budget]\nmin_per_second = 50\n",
            service_at("retry", None, &[dead, live.addr])
        ))
        .await;
        let mut client = H1Client::connect(wf.addr).await.unwrap();
        let mut retried = 0;
        for _ in 0..6 {
            let reply = client.get("retry.svc", "/").await.unwrap();
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
            assert_eq!(reply.text(), "live");
            let debug = reply
                .headers
                .get("x-wayfinder-debug")
                .expect("debug header")
                .to_str()
                .unwrap()
                .to_owned();
            let attempts: Vec<&str> = debug.split("; ").collect();
            let last = format!("attempt {} {} 200", attempts.len(), live.addr);
            assert_eq!(attempts.last().copied(), Some(last.as_str()), "{debug}");
            match attempts.len() {
                1 => {}
                2 => {
                    let first = format!("attempt 1 {dead} connect failed");
                    assert!(attempts[0].starts_with(&first), "{debug}");
                    retried += 1;
                }
                _ => panic!("more attempts than instances: {debug}"),
            }
        }
        // (Retry picks advance the round-robin cursor too, so with two
        // instances the dead one may come first for every request.)
        assert!(
            retried >= 3,
            "the dead instance was tried {retried} times in 6 requests"
        );
        assert_eq!(live.hits(), 6);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_budget_caps_retries() {
    within(60, "retry budget", async {
        let resets = [
            Backend::close_after_request("r1").await,
            Backend::close_after_request("r2").await,
            Backend::close_after_request("r3").await,
        ];
        let addrs: Vec<SocketAddr> = resets.iter().map(|b| b.addr).collect();
        let wf = Wf::start(&format!(
            "{}max_attempts = 3\n\
             [services.budget.outlier]\nconnect_failures = 0\nconsecutive_failures = 0\n\
             [services.budget.retry_budget]\npercent = 20\nmin_per_second = 0\n",
            service_at("budget", None, &addrs)
        ))
        .await;
        let requests = 200usize;
        let next = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let (next, addr) = (next.clone(), wf.addr);
            tasks.push(tokio::spawn(async move {
                let mut statuses = Vec::new();
                while next.fetch_add(1, SeqCst) < requests {
                    let reply = support::get(addr, "budget.svc", "/").await.unwrap();
                    statuses.push(reply.status);
                }
                statuses
            }));
        }
        let mut statuses = Vec::new();
        for t in tasks {
            statuses.extend(t.await.unwrap());
        }
        assert_eq!(statuses.len(), requests);
        assert!(
            statuses.iter().all(|s| *s == StatusCode::BAD_GATEWAY),
            "{statuses:?}"
        );
        let hits: usize = resets.iter().map(Backend::hits).sum();
        let retries = hits - requests;
        let svc = wf.service("budget").await;
        let refused = svc["retries_refused"].as_u64().unwrap_or(0);
        println!(
            "retry budget: {requests} requests, {retries} retries ({:.1}%), {refused} refused",
            retries as f64 * 100.0 / requests as f64
        );
        assert!(retries > 0, "the budget allowed no retry at all");
        assert!(
            retries <= requests / 5 + 3,
            "{retries} retries for {requests} requests: over the 20% budget"
        );
        assert!(refused > 0, "{svc}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_budget_counts_requests_served_before_the_first_retry() {
    // "retries <= percent of requests over the last ~10 s" (README): a
    // service that just served 100 requests may retry the next failure.
    within(30, "retry budget window", async {
        let insts = [Inst::start("up").await, Inst::start("down").await];
        let wf = Wf::start(&svc(
            "fresh",
            &[&insts[0], &insts[1]],
            "[services.fresh.retry_budget]\npercent = 20\nmin_per_second = 0\n",
        ))
        .await;
        let mut client = H1Client::connect(wf.addr).await.unwrap();
        for _ in 0..100 {
            let reply = client.get("fresh.svc", "/").await.unwrap();
            assert_eq!(reply.status, StatusCode::OK);
        }
        insts[1].stop().await;
        // The next two requests: one of them picks the stopped instance
        // first and needs a retry on the other.
        for _ in 0..2 {
            let reply = client.get("fresh.svc", "/").await.unwrap();
            assert_eq!(
                reply.status,
                StatusCode::OK,
                "retry refused although 100 requests were served just before: {}",
                reply.text()
            );
        }
    })
    .await;
}

// === 6. slow start ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_start_ramps_a_readmitted_instances_share() {
    within(60, "slow start", async {
        let insts = [Inst::start("steady").await, Inst::start("warm").await];
        let warm = &insts[1];
        let wf = Wf::start(&format!(
            "{}{}",
            svc(
                "ramp",
                &[&insts[0], &insts[1]],
                "slow_start = \"2s\"\npanic_threshold = 0\n"
            ),
            health_check("ramp", 100, 2, 2)
        ))
        .await;
        wf.all_health("ramp", "healthy", 10).await;
        let load = Load::start(wf.addr, "ramp.svc", 4);
        warm.set_health(FAIL);
        wf.health_is("ramp", warm.addr, "unhealthy", 10).await;
        load.run_for(50).await;
        warm.set_health(PASS);
        let admitted = wf.health_is("ramp", warm.addr, "healthy", 10).await;
        let weight = wf.instance("ramp", warm.addr).await["weight_percent"].clone();
        tokio::time::sleep(Duration::from_millis(2600)).await;
        let samples = load.finish().await;
        assert_eq!(errors(&samples), Vec::<String>::new());

        // Buckets of 500 ms after re-admission; the fifth is past the window.
        let mut buckets = [(0usize, 0usize); 5];
        for s in samples.iter().filter(|s| s.at >= admitted) {
            let i = ((s.at - admitted).as_millis() / 500) as usize;
            if i < buckets.len() {
                buckets[i].1 += 1;
                if matches!(&s.result, Ok((_, b)) if b == "warm") {
                    buckets[i].0 += 1;
                }
            }
        }
        let shares: Vec<f64> = buckets
            .iter()
            .map(|&(w, n)| if n == 0 { 0.0 } else { w as f64 / n as f64 })
            .collect();
        println!(
            "slow start: weight_percent at admission {weight}; warm share per 500ms bucket: {}",
            buckets
                .iter()
                .zip(&shares)
                .map(|(&(w, n), s)| format!("{:.0}% ({w}/{n})", s * 100.0))
                .collect::<Vec<_>>()
                .join(", ")
        );
        assert!(
            buckets.iter().all(|&(_, n)| n >= 20),
            "too few samples: {buckets:?}"
        );
        assert!(shares[0] < 0.30, "first bucket share {:.2}", shares[0]);
        assert!(
            shares[3] > 0.35,
            "last bucket of the window share {:.2}",
            shares[3]
        );
        assert!(shares[3] > shares[0] + 0.15, "no ramp: {shares:?}");
        for w in shares[..4].windows(2) {
            assert!(w[1] >= w[0] - 0.07, "share fell while ramping: {shares:?}");
        }
        assert!(
            (0.40..=0.60).contains(&shares[4]),
            "after the window: {shares:?}"
        );
    })
    .await;
}

// === 7. flapping ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flapping_instance_does_not_change_state() {
    within(60, "flapping", async {
        let insts = [
            Inst::start("stable").await,
            Inst::start("flap-up").await,
            Inst::start("flap-down").await,
        ];
        let (up, down) = (&insts[1], &insts[2]);
        down.set_health(FAIL);
        let interval = 150;
        let wf = Wf::start(&format!(
            "{}{}",
            svc(
                "flap",
                &[&insts[0], &insts[1], &insts[2]],
                "panic_threshold = 0\nslow_start = \"0s\"\n"
            ),
            health_check("flap", interval, 2, 2)
        ))
        .await;
        wf.health_is("flap", up.addr, "healthy", 10).await;
        wf.health_is("flap", down.addr, "unhealthy", 10).await;
        let up_before = transition(&wf.instance("flap", up.addr).await);
        let down_before = transition(&wf.instance("flap", down.addr).await);
        up.set_health(FLAP);
        down.set_health(FLAP);
        let (up_checks, down_checks) = (up.checks(), down.checks());
        within(20, "20 checks of each flapping instance", async {
            while up.checks() < up_checks + 20 || down.checks() < down_checks + 20 {
                let svc = wf.service("flap").await;
                let (u, d) = (instance_in(&svc, up.addr), instance_in(&svc, down.addr));
                assert_eq!(u["health"], "healthy", "{u}");
                assert_eq!(transition(&u), up_before, "flapping instance changed state");
                assert_eq!(d["health"], "unhealthy", "{d}");
                assert_eq!(
                    transition(&d),
                    down_before,
                    "flapping instance changed state"
                );
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        })
        .await;
        // The healthy flapper keeps serving; the unhealthy one gets nothing.
        let mut client = H1Client::connect(wf.addr).await.unwrap();
        for _ in 0..12 {
            let reply = client.get("flap.svc", "/").await.unwrap();
            assert_eq!(reply.status, StatusCode::OK);
        }
        assert!(up.hits() > 0);
        assert_eq!(down.hits(), 0);
    })
    .await;
}

/// An instance's last transition: what it changed to, why and when (not
/// the ever-growing `ago`).
fn transition(instance: &Value) -> (Value, Value, Value) {
    let t = &instance["last_transition"];
    (t["to"].clone(), t["reason"].clone(), t["at"].clone())
}

// === 8. bad health config ===

#[test]
fn impossible_health_config_is_rejected_with_the_key() {
    let base = "[services.bad]\ninstances = [\"127.0.0.1:9\"]\n[services.bad.health]\n";
    let cases = [
        (
            "kind = \"http\"\ninterval = \"1s\"\ntimeout = \"1s\"\n",
            "services.bad.health.timeout",
        ),
        (
            "kind = \"tcp\"\ninterval = \"1s\"\ntimeout = \"2s\"\n",
            "services.bad.health.timeout",
        ),
        (
            "kind = \"http\"\nhealthy_threshold = 0\n",
            "services.bad.health.healthy_threshold",
        ),
        (
            "kind = \"http\"\nunhealthy_threshold = 0\n",
            "services.bad.health.unhealthy_threshold",
        ),
        ("kind = \"grpc\"\n", "services.bad.health.kind"),
        (
            "kind = \"http\"\ninterval = \"1s\"\njitter = \"1s\"\n",
            "services.bad.health.jitter",
        ),
        (
            "kind = \"http\"\nexpect = [\"200-999\"]\n",
            "services.bad.health.expect[0]",
        ),
    ];
    for (health, key) in cases {
        let text = config_text(&format!("{base}{health}"));
        let err =
            Config::parse(&text, Path::new("bad.toml")).expect_err(&format!("accepted: {health}"));
        let shown = err.to_string();
        assert!(
            shown.contains(key),
            "{health:?}: error {shown:?} does not name {key}"
        );
        assert!(shown.starts_with("bad.toml:"), "{shown}");
    }
}

// === 9. draining on removal ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_instance_finishes_in_flight_request_and_gets_no_new_ones() {
    within(60, "drain on removal", async {
        let insts = [Inst::start("gone").await, Inst::start("kept").await];
        let (gone, kept) = (&insts[0], &insts[1]);
        for i in &insts {
            i.ctl.slow_ms.store(1500, SeqCst);
        }
        let wf = Wf::start(&svc("drain", &[gone, kept], "")).await;
        // Two slow requests: round robin puts one on each instance.
        let slow = |addr| {
            tokio::spawn(async move {
                let started = Instant::now();
                (
                    support::get(addr, "drain.svc", "/slow").await,
                    started.elapsed(),
                )
            })
        };
        let (r1, r2) = (slow(wf.addr), slow(wf.addr));
        support::wait_until(10, "one slow request on each", || {
            gone.hits() == 1 && kept.hits() == 1
        })
        .await;

        let removed = parse(&svc("drain", &[kept], ""));
        wf.running.registry.apply_config(&removed);
        wf.until(5, "drain: gone removed", |doc| {
            instance_in(&service_in(doc, "drain"), gone.addr).is_null()
        })
        .await;
        let mut client = H1Client::connect(wf.addr).await.unwrap();
        for _ in 0..20 {
            let reply = client.get("drain.svc", "/").await.unwrap();
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
            assert_eq!(reply.text(), "kept");
        }
        assert_eq!(gone.hits(), 1, "a removed instance got a new request");

        let mut bodies = Vec::new();
        for r in [r1, r2] {
            let (reply, took) = r.await.unwrap();
            let reply = reply.expect("slow request completed");
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
            assert!(took >= Duration::from_millis(1400), "{took:?}");
            bodies.push(reply.text());
        }
        bodies.sort();
        assert_eq!(bodies, ["gone", "kept"], "the in-flight request was cut");
        // Its connections close once the last request on it has finished.
        support::wait_until(5, "connections to the removed instance closed", || {
            gone.conns() == 0
        })
        .await;
        assert_eq!(gone.hits(), 1);
    })
    .await;
}

// === config: both listeners on port 0 ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_and_proxy_may_both_listen_on_port_zero() {
    // Port 0 asks the OS for a free port, so these never clash; tests (and
    // operators running several instances) rely on it.
    let text = "listen = [\"127.0.0.1:0\"]\n[admin]\nlisten = \"127.0.0.1:0\"\n";
    let config = Config::parse(text, Path::new("zero.toml"))
        .unwrap_or_else(|e| panic!("port 0 for both listeners rejected: {e}"));
    let running = wayfinder::app::start(&config).await.expect("start");
    let admin = running.admin.expect("admin listener");
    assert_ne!(admin, running.listen[0]);
    let reply = support::get(admin, "admin", "/healthz").await.unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    running.shutdown().await;
}
