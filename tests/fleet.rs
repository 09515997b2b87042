//! A fleet at the scale of issue 16, as separate processes on loopback:
//! five `wayfinder run` proxies and ten `wayfinder register --gossip`
//! agents, sealed gossip every 100 ms. A registration through any proxy is
//! routable through every proxy; a SIGKILLed agent's instance leaves every
//! proxy; a SIGTERMed one drains, leaves, and its instance then stops,
//! with no client error under a steady load through every proxy. Waits
//! are bounded polls of the admin API, never fixed sleeps.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use nix::sys::signal::Signal;

use support::fleet::{start_fleet, Agent, FleetOptions, SECRET};
use support::{errors, full, request, send, wait_for, Backend, Load};

/// Bound for anything gossip must spread or detect (a 2-core CI machine
/// runs fifteen processes here beside the other tests).
const SPREAD: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_proxies_and_ten_agents() {
    // One attempt per request: a request sent to an instance that has
    // stopped fails the client instead of being retried elsewhere.
    let opts = FleetOptions {
        max_attempts: Some(1),
        ..FleetOptions::default()
    };
    let proxies = start_fleet(5, opts).await;
    let seed = proxies[0].gossip;

    // A registration through each proxy is routable through every proxy.
    let mut registered = Vec::new();
    for (i, p) in proxies.iter().enumerate() {
        let b = Backend::start(&format!("reg-{i}")).await;
        let body = format!("{{\"address\":\"{}\",\"ttl\":\"60s\"}}", b.addr);
        let path = format!("/v1/registry/reg{i}/r{i}");
        let r = send(
            p.at.admin(),
            request("PUT", "admin", &path).body(full(body)).unwrap(),
        )
        .await
        .unwrap();
        assert!(r.status.is_success(), "{}", r.text());
        registered.push(b);
    }
    for p in &proxies {
        for (i, b) in registered.iter().enumerate() {
            let service = format!("reg{i}");
            p.wait_instances(&service, &[b.addr], SPREAD).await;
            assert_eq!(p.route(&service).await.as_deref(), Some(b.name()));
        }
    }

    // Ten agents, one instance of `api` each.
    let backends: Vec<Backend> = {
        let mut v = Vec::new();
        for i in 0..10 {
            v.push(Backend::start(&format!("api-{i}")).await);
        }
        v
    };
    let mut addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    // A drain timeout long enough for the draining state to reach every
    // proxy on a busy machine (gossip there can take seconds instead of a
    // few 100 ms rounds); the registrar's default is 30 s.
    let mut agents: Vec<Agent> = addrs
        .iter()
        .map(|a| Agent::start_draining("api", *a, seed, SECRET, "4s"))
        .collect();
    for p in &proxies {
        p.wait_instances("api", &addrs, SPREAD).await;
    }

    // SIGKILL of the agent (its instance keeps running): declared dead,
    // removed from every proxy (one of ten is within the self-preservation
    // guard).
    agents[0].kill();
    addrs.remove(0);
    for p in &proxies {
        p.wait_instances("api", &addrs, SPREAD).await;
    }

    // SIGTERM under load through every proxy: the agent publishes its
    // instance draining, waits its drain timeout, leaves and exits; its
    // instance (as a service would after its registrar) then stops. No
    // client sees an error.
    let loads: Vec<Load> = proxies
        .iter()
        .map(|p| Load::start(p.at.proxy(), "api.svc", 2))
        .collect();
    for l in &loads {
        l.run_for(20).await;
    }
    let leaving = &mut agents[1];
    leaving.proc.signal(Signal::SIGTERM);
    let status = leaving.proc.wait(20, "agent leaving").await;
    assert!(status.success(), "{}", leaving.proc.log());
    backends[1].stop().await;
    addrs.remove(0);
    for p in &proxies {
        p.wait_instances("api", &addrs, SPREAD).await;
    }
    for l in &loads {
        l.settle().await;
    }
    let mut seen_leaving = false;
    for l in loads {
        let samples = l.finish().await;
        let errs = errors(&samples);
        if !errs.is_empty() {
            // What each proxy saw of the instance, to tell why.
            let needle = backends[1].addr.to_string();
            for p in &proxies {
                let log = p.proc.log();
                let lines: Vec<&str> = log.lines().filter(|l| l.contains(&needle)).collect();
                eprintln!("proxy {}:\n{}", p.at.proxy(), lines.join("\n"));
            }
            eprintln!("agent:\n{}", agents[1].proc.log());
        }
        assert!(
            errs.is_empty(),
            "{} client errors: {errs:?}; api-0 {}, api-1 {}",
            errs.len(),
            backends[0].addr,
            backends[1].addr
        );
        seen_leaving |= samples
            .iter()
            .any(|s| matches!(&s.result, Ok((_, b)) if b == "api-1"));
    }
    assert!(seen_leaving, "the leaving instance took requests before");
    // It said it was leaving: listed as left (a proxy that judged it dead
    // first, as a starved machine can, keeps it dead: its instance went
    // all the same).
    wait_for(SPREAD, "the agent is listed as left", || async {
        let mut left = false;
        for p in &proxies {
            let m = p.admin_json("/v1/members").await;
            left |= m["members"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["address"] == agents[1].gossip.to_string() && m["state"] == "left");
        }
        left
    })
    .await;
}
