//! A gossip fleet partitioned for real: three `wayfinder run` proxies, each
//! in a network namespace of its own, gossip over a bridge (see
//! `support::netns`); the test cuts one proxy off the bridge and heals it.
//! While cut off, that proxy keeps every instance it knew (its gossip
//! source fails, then turns stale) and serves its own registrations; the
//! two others declare it dead. After healing, the fleet converges: what was
//! registered on either side during the partition is routable everywhere.
//!
//! Needs root and `ip` (iproute2; `.ci/test` installs it): without them
//! the test fails saying so.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::fleet::{FleetOptions, FleetProxy, Place};
use support::netns::Partitionable;
use support::{full, request, send, wait_for, Backend};

/// Bound for anything gossip must spread or detect (100 ms rounds).
const SPREAD: Duration = Duration::from_secs(20);

async fn register(p: &FleetProxy, service: &str, addr: SocketAddr) {
    let body = format!("{{\"address\":\"{addr}\",\"ttl\":\"120s\"}}");
    let path = format!("/v1/registry/{service}/{service}-1");
    let r = send(
        p.at.admin(),
        request("PUT", "admin", &path).body(full(body)).unwrap(),
    )
    .await
    .unwrap();
    assert!(r.status.is_success(), "{}", r.text());
}

/// The state of the proxy's `gossip` source and its last error.
async fn gossip_source(p: &FleetProxy) -> (String, String) {
    let sources = p.admin_json("/v1/sources").await;
    let s = sources
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "gossip")
        .cloned()
        .unwrap_or_default();
    (
        s["state"].as_str().unwrap_or("").to_owned(),
        s["last_error"].to_string(),
    )
}

/// Members `p` lists in `state`, by name.
async fn members_in(p: &FleetProxy, state: &str) -> Vec<String> {
    let mut names: Vec<String> = p.admin_json("/v1/members").await["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["state"] == state)
        .map(|m| m["name"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_cut_off_keeps_its_instances_and_the_fleet_converges_after_healing() {
    // Dropped last: the processes go before their namespaces.
    let net = Partitionable::new(3);
    let mut proxies: Vec<FleetProxy> = Vec::new();
    for i in 0..3 {
        let opts = FleetOptions {
            join: vec![SocketAddr::new(net.gossip_ip(0), 7946)],
            max_staleness: Some("1s"),
            place: Place::Namespace {
                ns: net.namespace(i),
                listen: net.ctl_ip(i),
                gossip: SocketAddr::new(net.gossip_ip(i), 7946),
            },
            ..FleetOptions::default()
        };
        proxies.push(FleetProxy::start(&format!("proxy-{i}"), &opts).await);
    }
    let all = ["proxy-0", "proxy-1", "proxy-2"];
    for p in &proxies {
        wait_for(SPREAD, "every proxy sees every other", || async {
            members_in(p, "alive").await == all
        })
        .await;
    }
    let backend = async |name: &str| Backend::builder(name).at(net.host()).start().await;
    let (a, b) = (backend("a-1").await, backend("b-1").await);
    // `a` registered on the side that stays, `b` on the proxy to cut off.
    register(&proxies[0], "a", a.addr).await;
    register(&proxies[2], "b", b.addr).await;
    for p in &proxies {
        p.wait_instances("a", &[a.addr], SPREAD).await;
        p.wait_instances("b", &[b.addr], SPREAD).await;
    }

    // === cut proxy-2 off ===
    net.cut(2);
    let cut = &proxies[2];
    for p in &proxies[..2] {
        wait_for(SPREAD, "the others declare proxy-2 dead", || async {
            members_in(p, "dead").await == ["proxy-2"]
        })
        .await;
    }
    wait_for(SPREAD, "proxy-2's gossip source fails", || async {
        gossip_source(cut).await.0 == "failing"
    })
    .await;
    assert_eq!(members_in(cut, "alive").await, ["proxy-2"]);
    let (state, error) = gossip_source(cut).await;
    assert!(error.contains("cut off"), "{state}: {error}");
    // Nothing is lost on the cut-off side: the last set keeps serving,
    // then the source is shown stale (max_staleness = 1s).
    wait_for(SPREAD, "proxy-2's gossip source turns stale", || async {
        gossip_source(cut).await.0 == "stale"
    })
    .await;
    assert_eq!(cut.route("a").await.as_deref(), Some("a-1"));
    assert_eq!(cut.route("b").await.as_deref(), Some("b-1"));

    // Registrations on both sides while partitioned.
    let (c, d) = (backend("c-1").await, backend("d-1").await);
    register(&proxies[0], "c", c.addr).await;
    register(cut, "d", d.addr).await;
    proxies[1].wait_instances("c", &[c.addr], SPREAD).await;
    cut.wait_instances("d", &[d.addr], SPREAD).await;
    // The partition is real: what reached proxy-1 did not reach proxy-2,
    // and the reverse.
    assert!(cut.instances("c").await.is_empty());
    assert!(proxies[1].instances("d").await.is_empty());
    assert_eq!(cut.route("a").await.as_deref(), Some("a-1"));

    // === heal ===
    net.heal(2);
    for p in &proxies {
        wait_for(SPREAD, "every proxy sees every other again", || async {
            members_in(p, "alive").await == all
        })
        .await;
    }
    wait_for(SPREAD, "proxy-2's gossip source reports again", || async {
        gossip_source(cut).await.0 == "ok"
    })
    .await;
    for p in &proxies {
        for (service, backend) in [("a", &a), ("b", &b), ("c", &c), ("d", &d)] {
            p.wait_instances(service, &[backend.addr], SPREAD).await;
            assert_eq!(
                p.route(service).await.as_deref(),
                Some(backend.name()),
                "{service} through {}",
                p.at.proxy()
            );
        }
    }
    drop(proxies);
}
