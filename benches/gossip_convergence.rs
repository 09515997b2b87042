//! Convergence of the gossip fleet, with real processes on loopback: N
//! `wayfinder run` proxies in one fleet (sealed gossip), then
//! - registration: time from a `PUT /v1/registry/...` on one proxy until
//!   every proxy routes a request to the instance;
//! - failure: time from SIGKILL of a `wayfinder register --gossip` agent
//!   until no proxy lists its instance (three agents run, so the
//!   self-preservation guard lets one go);
//! - idle gossip: bytes per second each member sends, over 5 s of quiet.
//!
//! A timing harness, not a criterion bench (the quantity is seconds of
//! gossip, not nanoseconds of CPU). `cargo bench --bench gossip_convergence`
//! runs fleets of 3, 5 and 10 proxies at the default gossip interval
//! (500 ms) and 10 proxies at 100 ms; `cargo test --all-targets` runs one
//! small fleet once as a smoke test.

#[path = "../tests/support/mod.rs"]
#[allow(unused_imports)]
mod support;

use std::time::{Duration, Instant};

use support::fleet::{Agent, FleetOptions, FleetProxy, SECRET};
use support::{full, request, send, Backend};

const LIMIT: Duration = Duration::from_secs(60);

struct Row {
    proxies: usize,
    interval: &'static str,
    register_ms: Vec<f64>,
    detect_ms: Vec<f64>,
    idle_bps: f64,
}

async fn until_all(
    proxies: &[FleetProxy],
    mut ok: impl AsyncFnMut(&FleetProxy) -> bool,
) -> Duration {
    let start = Instant::now();
    let mut done = vec![false; proxies.len()];
    while done.iter().any(|d| !d) {
        assert!(
            start.elapsed() < LIMIT,
            "fleet did not converge within {LIMIT:?}"
        );
        for (i, p) in proxies.iter().enumerate() {
            if !done[i] && ok(p).await {
                done[i] = true;
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    start.elapsed()
}

async fn measure(n: usize, interval: &'static str, rounds: usize) -> Row {
    let opts = FleetOptions {
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
    until_all(&proxies, async |p| {
        p.admin_json("/v1/members").await["members"]
            .as_array()
            .is_some_and(|m| m.iter().filter(|m| m["state"] == "alive").count() == n)
    })
    .await;

    // Idle gossip, per member.
    let sent = async |ps: &[FleetProxy]| -> u64 {
        let mut total = 0;
        for p in ps {
            total += p.admin_json("/v1/members").await["traffic"]["sent_bytes"]
                .as_u64()
                .unwrap_or(0);
        }
        total
    };
    let (b0, t0) = (sent(&proxies).await, Instant::now());
    tokio::time::sleep(Duration::from_secs(5)).await;
    let idle_bps = (sent(&proxies).await - b0) as f64 / t0.elapsed().as_secs_f64() / n as f64;

    let mut register_ms = Vec::new();
    let mut detect_ms = Vec::new();
    for round in 0..rounds {
        let b = Backend::start(&format!("reg-{round}")).await;
        let body = format!("{{\"address\":\"{}\",\"ttl\":\"60s\"}}", b.addr);
        let path = format!("/v1/registry/conv/r{round}");
        let start = Instant::now();
        let r = send(
            proxies[round % n].at.admin(),
            request("PUT", "admin", &path).body(full(body)).unwrap(),
        )
        .await
        .unwrap();
        assert!(r.status.is_success());
        let name = b.name().to_owned();
        until_all(&proxies, async |p| {
            p.route("conv").await.is_some_and(|t| t == name)
        })
        .await;
        register_ms.push(start.elapsed().as_secs_f64() * 1000.0);
        let _ = send(
            proxies[round % n].at.admin(),
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
        let agents: Vec<Agent> = backends
            .iter()
            .map(|b| Agent::start(&service, b.addr, seed, SECRET))
            .collect();
        until_all(&proxies, async |p| p.instances(&service).await.len() == 3).await;
        // Let the detectors learn the agents' heartbeat rhythm.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let killed = backends[0].addr;
        let start = Instant::now();
        agents[0].kill();
        until_all(&proxies, async |p| {
            !p.instances(&service).await.contains_key(&killed)
        })
        .await;
        detect_ms.push(start.elapsed().as_secs_f64() * 1000.0);
        drop(agents);
    }
    Row {
        proxies: n,
        interval,
        register_ms,
        detect_ms,
        idle_bps,
    }
}

fn summary(v: &[f64]) -> String {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let median = s[s.len() / 2];
    format!("{median:>7.0} ({:.0}-{:.0})", s[0], s[s.len() - 1])
}

fn main() {
    let full_run = std::env::args().any(|a| a == "--bench");
    let plan: Vec<(usize, &'static str, usize)> = if full_run {
        vec![
            (3, "500ms", 3),
            (5, "500ms", 3),
            (10, "500ms", 3),
            (10, "100ms", 3),
        ]
    } else {
        vec![(3, "100ms", 1)]
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let rows: Vec<Row> = plan
        .into_iter()
        .map(|(n, interval, rounds)| rt.block_on(measure(n, interval, rounds)))
        .collect();
    println!("\ngossip convergence on loopback (median and range over rounds, ms)");
    println!("proxies  interval  registration->routable everywhere  SIGKILL->removed everywhere  idle gossip per member");
    for r in &rows {
        println!(
            "{:>7}  {:>8}  {:>33}  {:>27}  {:>10.0} B/s",
            r.proxies,
            r.interval,
            summary(&r.register_ms),
            summary(&r.detect_ms),
            r.idle_bps
        );
    }
}
