//! The gossip fleet with real processes on loopback: several `wayfinder
//! run` proxies with `[registry.gossip]` and `wayfinder register --gossip`
//! agents, each its own process with its own UDP gossip port, every
//! datagram sealed with the fleet's secret. Waits are bounded polls of the
//! admin API, never fixed sleeps.

mod support;

use std::time::Duration;

use nix::sys::signal::Signal;

use support::fleet::{Agent, FleetOptions, FleetProxy, SECRET};
use support::{full, request, send, wait_for, Backend};

/// Generous bound for anything gossip must spread or detect (with 100 ms
/// rounds it takes well under a second or two; CI machines are slow).
const SPREAD: Duration = Duration::from_secs(20);

async fn fleet_of(n: usize, opts: FleetOptions) -> Vec<FleetProxy> {
    support::fleet::start_fleet(n, opts).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_through_one_proxy_is_routable_through_every_proxy() {
    let proxies = fleet_of(3, FleetOptions::default()).await;
    let backend = Backend::start("files-1").await;
    let body = format!("{{\"address\":\"{}\",\"ttl\":\"30s\"}}", backend.addr);
    let r = send(
        proxies[0].at.admin(),
        request("PUT", "admin", "/v1/registry/files/f1")
            .body(full(body))
            .unwrap(),
    )
    .await
    .unwrap();
    assert!(r.status.is_success(), "{}", r.text());
    for p in &proxies {
        p.wait_instances("files", &[backend.addr], SPREAD).await;
        assert_eq!(p.route("files").await.as_deref(), Some("files-1"));
    }
    let sources = proxies[2].admin_json("/v1/sources").await;
    let gossip = sources
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "gossip")
        .expect("the gossip source");
    assert_eq!(gossip["instances"], 1);

    // Deregistering is explicit everywhere: even the service's last
    // instance goes at once (an implicit removal would be held back).
    let r = send(
        proxies[0].at.admin(),
        request("DELETE", "admin", "/v1/registry/files/f1")
            .body(support::empty())
            .unwrap(),
    )
    .await
    .unwrap();
    assert!(r.status.is_success());
    for p in &proxies {
        p.wait_instances("files", &[], SPREAD).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_killed_are_removed_implicitly_and_agents_stopped_leave_explicitly() {
    let proxies = fleet_of(2, FleetOptions::default()).await;
    let seed = proxies[0].gossip;
    let backends = [
        Backend::start("api-1").await,
        Backend::start("api-2").await,
        Backend::start("api-3").await,
    ];
    let addrs: Vec<_> = backends.iter().map(|b| b.addr).collect();
    let mut agents: Vec<Agent> = addrs
        .iter()
        .map(|a| Agent::start("api", *a, seed, SECRET))
        .collect();
    for p in &proxies {
        p.wait_instances("api", &addrs, SPREAD).await;
    }

    // SIGKILL: declared dead by the failure detector; one of three is
    // within the self-preservation guard's 50 %, so it goes.
    agents[0].kill();
    let mut detected = Duration::ZERO;
    for p in &proxies {
        detected = detected.max(p.wait_instances("api", &addrs[1..], SPREAD).await);
    }
    println!("SIGKILLed agent removed from every proxy after {detected:?}");
    let members = proxies[1].admin_json("/v1/members").await;
    let dead = members["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["address"] == agents[0].gossip.to_string())
        .expect("the killed agent is still listed");
    assert_eq!(dead["state"], "dead");

    // It comes back (a new process, a new generation): its instance too.
    agents[0] = Agent::start("api", addrs[0], seed, SECRET);
    for p in &proxies {
        p.wait_instances("api", &addrs, SPREAD).await;
    }

    // SIGTERM: drains, leaves, exits 0; explicit everywhere.
    agents[1].proc.signal(Signal::SIGTERM);
    let status = agents[1].proc.wait(20, "agent leaving").await;
    assert!(status.success(), "{}", agents[1].proc.log());
    for p in &proxies {
        p.wait_instances("api", &[addrs[0], addrs[2]], SPREAD).await;
    }

    // The two left go one by one: SIGTERM of one is explicit (applied),
    // SIGKILL of the last is implicit: self-preservation holds it back.
    agents[0].proc.signal(Signal::SIGTERM);
    agents[0].proc.wait(20, "agent leaving").await;
    for p in &proxies {
        p.wait_instances("api", &[addrs[2]], SPREAD).await;
    }
    agents[2].kill();
    for p in &proxies {
        wait_for(
            SPREAD,
            "the last instance's removal is held back",
            || async {
                let sources = p.admin_json("/v1/sources").await;
                sources.as_array().unwrap().iter().any(|s| {
                    s["name"] == "gossip"
                        && s["held"].as_array().is_some_and(|h| {
                            h.iter()
                                .any(|h| h["reason"].as_str().unwrap_or("").contains("dead"))
                        })
                })
            },
        )
        .await;
        assert_eq!(p.instances("api").await.len(), 1, "held, still listed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_with_a_wrong_secret_or_none_cannot_join_or_inject() {
    let proxies = fleet_of(1, FleetOptions::default()).await;
    let p = &proxies[0];
    let seed = p.gossip;
    let backend = Backend::start("intruder").await;
    let wrong = Agent::start("api", backend.addr, seed, "not-the-fleet-secret-0123456789");
    let clear = FleetProxy::start(
        "clear",
        &FleetOptions {
            join: vec![seed],
            secret: None,
            ..FleetOptions::default()
        },
    )
    .await;
    // Their datagrams reach the proxy and are dropped there.
    wait_for(SPREAD, "datagrams from both strangers rejected", || async {
        p.admin_json("/v1/members").await["traffic"]["rejected_datagrams"]
            .as_u64()
            .unwrap_or(0)
            >= 10
    })
    .await;
    let members = p.admin_json("/v1/members").await;
    assert_eq!(members["members"].as_array().unwrap().len(), 1, "{members}");
    assert!(p.instances("api").await.is_empty());
    // A correct agent joining now is accepted: the fleet works.
    let good = Backend::start("good").await;
    let _agent = Agent::start("api", good.addr, seed, SECRET);
    p.wait_instances("api", &[good.addr], SPREAD).await;
    let members = clear.admin_json("/v1/members").await;
    assert_eq!(
        members["members"].as_array().unwrap().len(),
        1,
        "the clear one is alone: {members}"
    );
    drop(wrong);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_wrapping_a_command_leaves_when_it_exits_and_stops_it_when_stopped() {
    let proxies = fleet_of(1, FleetOptions::default()).await;
    let p = &proxies[0];
    let seed = p.gossip;
    let wrap = |addr, command: &[&str]| {
        Agent::wrapping("svc", addr, seed, SECRET, "200ms", ("1s", "100ms"), command)
    };

    // The command exits by itself (code 3): the agent leaves at once, so
    // even the service's last instance goes (explicitly), and exits 3.
    let b = Backend::start("svc-1").await;
    let mut agent = wrap(b.addr, &["sh", "-c", "sleep 1; exit 3"]);
    p.wait_instances("svc", &[b.addr], SPREAD).await;
    let status = agent.proc.wait(20, "agent after its command exited").await;
    assert_eq!(status.code(), Some(3), "{}", agent.proc.log());
    p.wait_instances("svc", &[], SPREAD).await;

    // SIGTERM: drains, leaves, then stops the command (SIGTERM to its
    // group); a clean stop exits 0.
    let mut agent = wrap(b.addr, &["sleep", "60"]);
    p.wait_instances("svc", &[b.addr], SPREAD).await;
    agent.proc.signal(Signal::SIGTERM);
    let status = agent.proc.wait(20, "agent stopping").await;
    assert!(status.success(), "{}", agent.proc.log());
    let log = agent.proc.log();
    let left = log.find("left the gossip fleet").expect("left");
    let stopped = log
        .find("the service stopped")
        .expect("stopped its command");
    assert!(left < stopped, "leaves before stopping the service:\n{log}");
    p.wait_instances("svc", &[], SPREAD).await;
}
