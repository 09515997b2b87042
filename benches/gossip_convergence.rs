//! Convergence of a fleet of N `wayfinder run` proxies, real processes on
//! loopback, sharing their registry either by gossip (`[registry.gossip]`,
//! sealed) or through one etcd (`[registry.etcd]`), measured by the same
//! harness:
//! - registration: time from sending `PUT /v1/registry/...` to one proxy
//!   until every proxy lists the instance (each proxy is watched with a
//!   long poll on the service's index, so watching costs no polling; then
//!   one request through every proxy checks it routes there);
//! - failure: time from SIGKILL of one of three registrar agents until no
//!   proxy lists its instance (gossip: a `wayfinder register --gossip`
//!   member, declared dead by the failure detector; etcd: a `wayfinder
//!   register` whose lease of `--ttl 2s` expires);
//! - idle traffic: bytes per second each member sends over 10 s of quiet
//!   (gossip: its sealed datagrams; etcd: what the proxy sends to etcd and,
//!   in parentheses, what etcd sends back, counted by a relay between them).
//!
//! A timing harness, not a criterion bench (the quantity is seconds of
//! gossip, not nanoseconds of CPU). `cargo bench --bench gossip_convergence`
//! runs 5, 20 and 50 proxies with gossip at the default settings
//! (`failure_detection = "4s"`, rounds of a sixth of it) and with etcd;
//! `CONVERGENCE=gossip:50:500ms,gossip:50:2s:8s,etcd:5` picks other rows
//! (`KIND:PROXIES[:INTERVAL[:FAILURE_DETECTION]]`, an empty interval for
//! the default one), `CONVERGENCE_ROUNDS` the rounds per row (default 3). `cargo test --all-targets` runs one small gossip fleet once
//! as a smoke test.

#[path = "../tests/support/mod.rs"]
#[allow(unused_imports)]
mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use support::fleet::{Agent, FleetOptions, FleetProxy, ProxyView, SECRET};
use support::{full, get, request, send, wayfinder, Backend, ConfigFile, Daemon, Proc};

const LIMIT: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug)]
enum Kind {
    /// `failure_detection` and `interval` (empty: the default for it).
    Gossip(&'static str, &'static str),
    Etcd,
}

struct Row {
    kind: Kind,
    proxies: usize,
    register_ms: Vec<f64>,
    detect_ms: Vec<f64>,
    idle: String,
}

// === watching every proxy ===

/// The addresses `view` lists for `service`, and the service's index.
async fn listed(view: &ProxyView, service: &str, index: u64) -> (Vec<SocketAddr>, u64) {
    let path = format!("/v1/registry/{service}?index={index}&wait=5s");
    let Ok(r) = get(view.at.admin(), "admin", &path).await else {
        tokio::time::sleep(Duration::from_millis(5)).await;
        return (Vec::new(), index);
    };
    let doc: Value = serde_json::from_slice(&r.body).unwrap_or_default();
    let addrs = doc["instances"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["address"].as_str()?.parse().ok())
        .collect();
    let next = doc["index"].as_u64().unwrap_or(index);
    if next == index {
        // Nothing new (a timeout, or a service not known yet).
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    (addrs, next)
}

/// Time from `start` until every proxy's listing of `service` satisfies
/// `done` (each proxy watched by a task of its own).
async fn until_all(
    views: &[ProxyView],
    service: &str,
    start: Instant,
    done: fn(&[SocketAddr], SocketAddr) -> bool,
    addr: SocketAddr,
) -> Duration {
    let mut tasks = JoinSet::new();
    for v in views {
        let (v, service) = (v.clone(), service.to_owned());
        tasks.spawn(async move {
            let mut index = 0;
            loop {
                let (addrs, next) = listed(&v, &service, index).await;
                if done(&addrs, addr) {
                    return start.elapsed();
                }
                assert!(start.elapsed() < LIMIT, "no convergence within {LIMIT:?}");
                index = next;
            }
        });
    }
    let mut slowest = Duration::ZERO;
    while let Some(t) = tasks.join_next().await {
        slowest = slowest.max(t.expect("watch task"));
    }
    slowest
}

// === etcd, and a counting relay to it ===

struct Etcd {
    _daemon: Daemon,
    addr: SocketAddr,
}

impl Etcd {
    async fn start() -> Etcd {
        let bin = Daemon::binary("WAYFINDER_ETCD", "/usr/bin/etcd", "etcd-server");
        for _ in 0..10 {
            let (client, peer) = (support::ReservedPort::tcp(), support::ReservedPort::tcp());
            let addr = client.addr();
            let url = format!("http://{addr}");
            let peer_url = format!("http://{}", peer.addr());
            let mut daemon = Daemon::new("etcd");
            let mut cmd = std::process::Command::new(&bin);
            cmd.arg("--name=default")
                .arg(format!("--data-dir={}", daemon.dir.join("data").display()))
                .arg(format!("--listen-client-urls={url}"))
                .arg(format!("--advertise-client-urls={url}"))
                .arg(format!("--listen-peer-urls={peer_url}"))
                .arg(format!("--initial-advertise-peer-urls={peer_url}"))
                .arg(format!("--initial-cluster=default={peer_url}"))
                .arg("--heartbeat-interval=50")
                .arg("--election-timeout=500");
            client.release();
            peer.release();
            let ready = move || async move {
                get(addr, "etcd", "/version")
                    .await
                    .is_ok_and(|r| r.status == 200)
            };
            match daemon
                .try_spawn(
                    cmd,
                    |_| true,
                    Duration::from_secs(30),
                    Duration::from_millis(20),
                    ready,
                )
                .await
            {
                Ok(()) => {
                    return Etcd {
                        _daemon: daemon,
                        addr,
                    }
                }
                Err(log) if support::address_in_use(&log) => continue,
                Err(log) => panic!("etcd exited during start:\n{log}"),
            }
        }
        panic!("etcd could not bind its ports in 10 tries");
    }
}

/// A TCP relay to `to` counting the bytes each way.
struct Relay {
    addr: SocketAddr,
    up: Arc<AtomicU64>,
    down: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(to: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let addr = listener.local_addr().unwrap();
        let (up, down) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (u, d) = (up.clone(), down.clone());
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let (u, d) = (u.clone(), d.clone());
                conns.spawn(async move {
                    let Ok(server) = TcpStream::connect(to).await else {
                        return;
                    };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::join!(pipe(cr, sw, &u), pipe(sr, cw, &d));
                });
            }
        });
        Relay {
            addr,
            up,
            down,
            task,
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    count: &AtomicU64,
) {
    let mut buf = vec![0u8; 16 * 1024];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0 || to.write_all(&buf[..n]).await.is_err() {
            break;
        }
        count.fetch_add(n as u64, Ordering::Relaxed);
    }
    let _ = to.shutdown().await;
}

/// A `wayfinder run` proxy following etcd through its relay.
struct EtcdProxy {
    _proc: Proc,
    view: ProxyView,
    relay: Relay,
    _config: ConfigFile,
}

impl EtcdProxy {
    async fn start(name: &str, etcd: SocketAddr, prefix: &str) -> EtcdProxy {
        let relay = Relay::start(etcd).await;
        let text = format!(
            "listen = [\"127.0.0.1:0\"]\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [registry]\nself_preservation_percent = 50\n\
             [registry.etcd]\nendpoints = [\"http://{}\"]\nprefix = \"{prefix}\"\n",
            relay.addr
        );
        let config = ConfigFile::new(name, &text);
        let proc = Proc::spawn(wayfinder(&[
            "run",
            "--config",
            config.path.to_str().expect("utf-8 path"),
        ]));
        let at = proc.listening(30).await;
        EtcdProxy {
            _proc: proc,
            view: ProxyView { at },
            relay,
            _config: config,
        }
    }
}

// === one row ===

/// The fleet under test: its proxies, kept running while it lives.
enum Fleet {
    Gossip(Vec<FleetProxy>),
    /// etcd (kept running) and the proxies following it.
    Etcd {
        _etcd: Etcd,
        proxies: Vec<EtcdProxy>,
    },
}

impl Fleet {
    fn views(&self) -> Vec<ProxyView> {
        match self {
            Fleet::Gossip(ps) => ps.iter().map(|p| p.view.clone()).collect(),
            Fleet::Etcd { proxies: ps, .. } => ps.iter().map(|p| p.view.clone()).collect(),
        }
    }

    async fn start(kind: Kind, n: usize) -> Fleet {
        match kind {
            Kind::Gossip(failure_detection, interval) => {
                let opts = FleetOptions {
                    failure_detection,
                    interval,
                    ..FleetOptions::default()
                };
                let first = FleetProxy::start("bench-0", &opts).await;
                let seed = first.gossip;
                let mut proxies = vec![first];
                for i in 1..n {
                    let o = FleetOptions {
                        join: vec![seed],
                        ..opts.clone()
                    };
                    proxies.push(FleetProxy::start(&format!("bench-{i}"), &o).await);
                }
                // Everyone sees everyone.
                let start = Instant::now();
                for p in &proxies {
                    loop {
                        let m = p.admin_json("/v1/members").await;
                        let alive = m["members"]
                            .as_array()
                            .map_or(0, |m| m.iter().filter(|m| m["state"] == "alive").count());
                        if alive == n {
                            break;
                        }
                        assert!(start.elapsed() < LIMIT, "fleet of {n} did not form");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                Fleet::Gossip(proxies)
            }
            Kind::Etcd => {
                let etcd = Etcd::start().await;
                let prefix = format!("/bench-{n}/");
                let mut proxies = Vec::new();
                for i in 0..n {
                    proxies.push(EtcdProxy::start(&format!("etcd-{i}"), etcd.addr, &prefix).await);
                }
                Fleet::Etcd {
                    _etcd: etcd,
                    proxies,
                }
            }
        }
    }

    /// Idle traffic per member over `window`, as shown in the table.
    async fn idle(&self, window: Duration) -> String {
        match self {
            Fleet::Gossip(ps) => {
                let sent = async || {
                    let mut total = 0;
                    for p in ps {
                        total += p.admin_json("/v1/members").await["traffic"]["sent_bytes"]
                            .as_u64()
                            .unwrap_or(0);
                    }
                    total
                };
                let (b0, t0) = (sent().await, Instant::now());
                tokio::time::sleep(window).await;
                let bps = (sent().await - b0) as f64 / t0.elapsed().as_secs_f64() / ps.len() as f64;
                format!("{:.1} KB/s", bps / 1000.0)
            }
            Fleet::Etcd { proxies: ps, .. } => {
                let count = || {
                    ps.iter().fold((0, 0), |(u, d), p| {
                        (
                            u + p.relay.up.load(Ordering::Relaxed),
                            d + p.relay.down.load(Ordering::Relaxed),
                        )
                    })
                };
                let ((u0, d0), t0) = (count(), Instant::now());
                tokio::time::sleep(window).await;
                let (u1, d1) = count();
                let per = |b: u64| b as f64 / t0.elapsed().as_secs_f64() / ps.len() as f64;
                format!("{:.0} B/s ({:.0} B/s back)", per(u1 - u0), per(d1 - d0))
            }
        }
    }

    /// Three registrar agents for `service`, registering `backends`.
    fn agents(&self, kind: Kind, service: &str, backends: &[Backend]) -> Vec<Proc> {
        match (self, kind) {
            (Fleet::Gossip(ps), Kind::Gossip(detection, interval)) => backends
                .iter()
                .map(|b| {
                    let timing = (detection, interval);
                    Agent::spawn(service, b.addr, ps[0].gossip, SECRET, "0s", timing).proc
                })
                .collect(),
            (Fleet::Etcd { proxies: ps, .. }, _) => backends
                .iter()
                .enumerate()
                .map(|(i, b)| {
                    let registry = format!("http://{}", ps[i % ps.len()].view.at.admin());
                    Proc::spawn(wayfinder(&[
                        "register",
                        "--registry",
                        &registry,
                        "--service",
                        service,
                        "--address",
                        &b.addr.to_string(),
                        "--ttl",
                        "2s",
                        "--drain-timeout",
                        "0s",
                    ]))
                })
                .collect(),
            _ => unreachable!("agents of the fleet's kind"),
        }
    }
}

async fn measure(kind: Kind, n: usize, rounds: usize) -> Row {
    let fleet = Fleet::start(kind, n).await;
    let views = fleet.views();
    let idle = fleet.idle(Duration::from_secs(10)).await;

    let mut register_ms = Vec::new();
    let mut detect_ms = Vec::new();
    for round in 0..rounds {
        // Registration through one proxy, watched on all.
        let b = Backend::start(&format!("reg-{round}")).await;
        let service = format!("conv{round}");
        let body = format!("{{\"address\":\"{}\",\"ttl\":\"60s\"}}", b.addr);
        let path = format!("/v1/registry/{service}/r{round}");
        let through = views[round % n].at.admin();
        let start = Instant::now();
        let (r, took) = tokio::join!(
            send(
                through,
                request("PUT", "admin", &path).body(full(body)).unwrap()
            ),
            until_all(&views, &service, start, |a, x| a.contains(&x), b.addr)
        );
        assert!(r.unwrap().status.is_success());
        register_ms.push(took.as_secs_f64() * 1000.0);
        for v in &views {
            assert_eq!(v.route(&service).await.as_deref(), Some(b.name()));
        }
        let _ = send(
            through,
            request("DELETE", "admin", &path)
                .body(support::empty())
                .unwrap(),
        )
        .await;

        // Failure detection: three agents, one SIGKILLed.
        let backends = [
            Backend::start("a").await,
            Backend::start("b").await,
            Backend::start("c").await,
        ];
        let service = format!("fail{round}");
        let agents = fleet.agents(kind, &service, &backends);
        until_all(
            &views,
            &service,
            Instant::now(),
            |a, _| a.len() == 3,
            backends[0].addr,
        )
        .await;
        // Let the detectors learn the agents' heartbeat rhythm.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let killed = backends[0].addr;
        let start = Instant::now();
        agents[0].signal(nix::sys::signal::Signal::SIGKILL);
        let took = until_all(&views, &service, start, |a, x| !a.contains(&x), killed).await;
        detect_ms.push(took.as_secs_f64() * 1000.0);
        drop(agents);
    }
    drop(fleet);
    Row {
        kind,
        proxies: n,
        register_ms,
        detect_ms,
        idle,
    }
}

fn summary(v: &[f64]) -> String {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let median = s[s.len() / 2];
    format!("{median:.0} ms ({:.0}-{:.0})", s[0], s[s.len() - 1])
}

/// `KIND:PROXIES[:INTERVAL[:FAILURE_DETECTION]]`, comma-separated.
fn plan_from(text: &str) -> Vec<(Kind, usize)> {
    text.split(',')
        .map(|row| {
            let mut f = row.trim().split(':');
            let kind = f.next().unwrap_or("");
            let n: usize = f
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("{row:?}: KIND:PROXIES[:INTERVAL[:FAILURE_DETECTION]]"));
            let kind = match kind {
                "etcd" => Kind::Etcd,
                "gossip" => {
                    let mut arg = |d: &str| -> &'static str {
                        Box::leak(f.next().unwrap_or(d).to_owned().into_boxed_str())
                    };
                    let interval = arg("");
                    Kind::Gossip(arg("4s"), interval)
                }
                k => panic!("{k:?}: gossip or etcd"),
            };
            (kind, n)
        })
        .collect()
}

fn main() {
    let full_run = std::env::args().any(|a| a == "--bench");
    let plan = match std::env::var("CONVERGENCE") {
        Ok(text) => plan_from(&text),
        Err(_) if full_run => plan_from("gossip:5,gossip:20,gossip:50,etcd:5,etcd:20,etcd:50"),
        Err(_) => vec![(Kind::Gossip("1s", "100ms"), 3)],
    };
    let rounds = match std::env::var("CONVERGENCE_ROUNDS") {
        Ok(r) => r.parse().expect("CONVERGENCE_ROUNDS: a number"),
        Err(_) if full_run => 3,
        Err(_) => 1,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut rows = Vec::new();
    for (kind, n) in plan {
        let row = rt.block_on(measure(kind, n, rounds));
        print_row(&row);
        rows.push(row);
    }
    println!("\nconvergence on loopback (median and range over {rounds} rounds)");
    println!("| proxies | registry | registration -> listed by every proxy | SIGKILL of an agent -> removed from every proxy | idle traffic per member |");
    println!("|---|---|---|---|---|");
    for r in &rows {
        print_row(r);
    }
}

fn print_row(r: &Row) {
    let kind = match r.kind {
        Kind::Gossip(d, "") => format!("gossip, failure_detection {d} (default rounds)"),
        Kind::Gossip(d, i) => format!("gossip, failure_detection {d}, {i} rounds"),
        Kind::Etcd => "etcd, lease TTL 2s".to_owned(),
    };
    println!(
        "| {} | {kind} | {} | {} | {} |",
        r.proxies,
        summary(&r.register_ms),
        summary(&r.detect_ms),
        r.idle
    );
}
