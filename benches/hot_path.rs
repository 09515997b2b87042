//! Criterion benches for wayfinder's per-request hot path and for the
//! off-path snapshot rebuild that feeds it.
//!
//! Each bench says in its doc comment what it measures. Everything is built
//! through the public API (`Config::parse`, `Registry`, `balance::pick`,
//! `Router::route`, `request_headers`), so the numbers are what the proxy
//! itself pays. Run: `cargo bench --bench hot_path` (full) or
//! `cargo bench --bench hot_path -- --quick` (smoke run, well under a minute).

use std::fmt::Write as _;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use http::header::{HeaderMap, HeaderName, HeaderValue};

use wayfinder::balance::{self, Choice, Tried};
use wayfinder::clock;
use wayfinder::config::{stable_hash, Config};
use wayfinder::proxy::headers::request_headers;
use wayfinder::registry::{InstanceSpec, Registry, Removals};

fn parse(text: &str) -> Config {
    Config::parse(text, Path::new("bench.toml")).expect("bench config is valid")
}

/// A config with one service `s` of `n` loopback instances under `policy`.
fn service_config(policy: &str, n: usize) -> Config {
    let mut text =
        format!("[admin]\nlisten = \"off\"\n[services.s]\nbalance = \"{policy}\"\ninstances = [\n");
    for i in 0..n {
        writeln!(text, "  \"127.0.0.1:{}\",", 20_000 + i).unwrap();
    }
    text.push_str("]\n");
    parse(&text)
}

// === snapshot load + pick ===

/// One request's balancing step: `Registry::load` (one `ArcSwap` load), the
/// service lookup by name, `balance::pick` with the current clock, and the
/// drop of the in-flight guard and the snapshot guard. Round-robin is one
/// atomic increment; least-connections scans every member (all idle here,
/// so the rotating tie-break decides), which is why it grows with `n`.
/// Random draws a slot; p2c_ewma draws two members and compares their
/// latency (every member has one) times their load; consistent_hash
/// hashes a 12-byte key (included), binary-searches the ring and, for
/// its load bound, sums the members' in-flight counts (so it grows with
/// `n`).
fn pick(c: &mut Criterion) {
    let mut group = c.benchmark_group("pick");
    for policy in [
        "round_robin",
        "least_connections",
        "random",
        "p2c_ewma",
        "consistent_hash",
    ] {
        for n in [3, 30, 300] {
            let reg = Registry::new(&service_config(policy, n));
            {
                let snap = reg.load();
                let svc = snap.service("s").unwrap();
                let decay = svc.policy().traffic.p2c.decay;
                for (i, m) in svc.members().iter().enumerate() {
                    let took = Duration::from_micros(500 + 10 * i as u64);
                    m.instance.latency().observe(took, clock::now_ms(), decay);
                }
            }
            let keyed = policy == "consistent_hash";
            group.bench_function(BenchmarkId::new(policy, n), |b| {
                b.iter(|| {
                    let snap = reg.load();
                    let svc = snap.service(black_box("s")).unwrap();
                    let guard = if keyed {
                        let mut choice = Choice::ANY;
                        choice.set_hash(stable_hash(black_box(b"user-4711-ab")));
                        balance::pick_with(svc, &choice, clock::now_ms(), &Tried::default()).ok()
                    } else {
                        balance::pick(svc, clock::now_ms(), &Tried::default())
                    };
                    black_box(guard.is_some())
                })
            });
        }
    }
    group.finish();
}

/// A request on a canary route, balancing side: the subsets' pools looked
/// up by fingerprint (one in twenty asks version 2 first, as a 95/5
/// split would), then a round-robin pick in the chosen subset of a
/// 30-instance service (half version 1, half version 2), with
/// `max_in_flight` set (the guard's checked increment).
fn pick_subset(c: &mut Criterion) {
    let mut text = String::from(
        "[admin]\nlisten = \"off\"\n[[routes]]\nservice = \"s\"\n\
         split = [{ tags = { version = \"1\" }, weight = 95 }, { tags = { version = \"2\" }, weight = 5 }]\n\
         [services.s]\nmax_in_flight = 1000\ninstances = [\n",
    );
    for i in 0..30 {
        let v = 1 + i % 2;
        writeln!(
            text,
            "  {{ address = \"127.0.0.1:{}\", tags = {{ version = \"{v}\" }} }},",
            20_000 + i
        )
        .unwrap();
    }
    text.push_str("]\n");
    let reg = Registry::new(&parse(&text));
    let v1 = stable_hash_pair("version", "1");
    let v2 = stable_hash_pair("version", "2");
    c.bench_function("pick/split_95_5_limited/30", |b| {
        let mut turn = 0u32;
        b.iter(|| {
            let snap = reg.load();
            let svc = snap.service(black_box("s")).unwrap();
            turn = turn.wrapping_add(1);
            let (first, second) = if turn % 20 == 0 { (v2, v1) } else { (v1, v2) };
            let mut choice = Choice::ANY;
            for fp in [first, second] {
                if let Some(i) = svc.pool_index(fp) {
                    choice.then_pool(i);
                }
            }
            let guard = balance::pick_with(svc, &choice, clock::now_ms(), &Tried::default());
            black_box(guard.is_ok())
        })
    });
}

fn stable_hash_pair(k: &str, v: &str) -> u64 {
    wayfinder::config::pair_hash(k.as_bytes(), v.as_bytes())
}

// === router match ===

/// A routing table of about `n` routes in the shape a real one has: 40%
/// exact hosts, 10% wildcard hosts, 50% host-less path prefixes (every fifth
/// one stripping its prefix), over ten services.
fn router_config(n: usize) -> Config {
    let (exact, wildcard) = (n * 4 / 10, n / 10);
    let mut text = String::from("[admin]\nlisten = \"off\"\n");
    for i in 0..n {
        let svc = i % 10;
        if i < exact {
            let path = if i % 2 == 0 { "/" } else { "/api" };
            write!(
                text,
                "[[routes]]\nhost = \"app{i}.example.com\"\npath = \"{path}\"\nservice = \"svc{svc}\"\n"
            )
        } else if i < exact + wildcard {
            write!(
                text,
                "[[routes]]\nhost = \"*.tenant{i}.example.net\"\nservice = \"svc{svc}\"\n"
            )
        } else {
            let strip = i % 5 == 0;
            write!(
                text,
                "[[routes]]\npath = \"/p{i}\"\nstrip_prefix = {strip}\nservice = \"svc{svc}\"\n"
            )
        }
        .unwrap();
    }
    for svc in 0..10 {
        writeln!(
            text,
            "[services.svc{svc}]\ninstances = [\"127.0.0.1:{}\"]",
            30_000 + svc
        )
        .unwrap();
    }
    parse(&text)
}

/// `Router::route` through the current snapshot for three kinds of request
/// against tables of 10 and 1,000 routes, each aimed at the last route of
/// its kind: `exact` (Host in the exact-host map), `wildcard` (Host matched
/// by a `*.suffix` after the exact lookup missed), `hostless` (no host rule
/// matches, so every wildcard suffix is tried before the path prefixes).
fn router(c: &mut Criterion) {
    let mut group = c.benchmark_group("router");
    for n in [10, 1_000] {
        let reg = Registry::new(&router_config(n));
        let (exact, wildcard) = (n * 4 / 10, n / 10);
        let cases = [
            (
                "exact",
                format!("app{}.example.com", exact - 1),
                "/api/users/42".to_owned(),
            ),
            (
                "wildcard",
                format!("eu.tenant{}.example.net:8080", exact + wildcard - 1),
                "/orders/7".to_owned(),
            ),
            (
                "hostless",
                "www.unknown.org".to_owned(),
                format!("/p{}/items?page=2", n - 1),
            ),
        ];
        for (kind, host, path) in &cases {
            let found = reg.load().router().route(Some(host), path).is_some();
            assert!(
                found,
                "bench request {kind} {host}{path} must match a route"
            );
            group.bench_function(BenchmarkId::new(*kind, n), |b| {
                b.iter(|| {
                    let snap = reg.load();
                    let target = snap.router().route(Some(black_box(host)), black_box(path));
                    black_box(target.map(|t| t.strip))
                })
            });
        }
    }
    group.finish();
}

// === request header rewrite ===

/// A browser-like request head of eight headers, one of them listed in
/// `Connection` (so it must be dropped) and an existing `X-Forwarded-For`
/// (so the client address is appended to the chain).
fn browser_request() -> HeaderMap {
    let pairs = [
        ("host", "api.example.com"),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
        ),
        ("accept", "application/json, text/plain, */*"),
        ("accept-encoding", "gzip, deflate, br"),
        ("accept-language", "en-GB,en;q=0.7"),
        ("connection", "keep-alive, x-trace-hop"),
        ("x-trace-hop", "edge-3"),
        ("x-forwarded-for", "203.0.113.7"),
    ];
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    map
}

/// `request_headers` on [`browser_request`]: the hyper codec's header
/// step through the forwarding policy (indexing the map's lines, checking
/// framing, Host and trust, dropping `Connection` and the header it lists,
/// joining `X-Forwarded-For`, adding `X-Forwarded-Proto`,
/// `X-Forwarded-Host` and `Via`) into a new map; the output map's drop is
/// included.
fn header_rewrite(c: &mut Criterion) {
    let src = browser_request();
    let out = request_headers(&src, "198.51.100.23").expect("valid request");
    assert!(!out.contains_key("x-trace-hop") && !out.contains_key("connection"));
    assert_eq!(out["x-forwarded-for"], "203.0.113.7, 198.51.100.23");
    c.bench_function("headers/request_8", |b| {
        b.iter(|| request_headers(black_box(&src), black_box("198.51.100.23")))
    });
}

// === snapshot build + swap ===

const SERVICES: usize = 1_000;
const PER_SERVICE: usize = 10;

/// 10,000 instances across 1,000 services (`bsvc0`..`bsvc999`, 10 each, on
/// distinct loopback addresses). With `churn`, the last instance of every
/// tenth service moves to another port, so 100 instances differ from the
/// set without it.
fn instance_set(churn: bool) -> Vec<InstanceSpec> {
    let mut out = Vec::with_capacity(SERVICES * PER_SERVICE);
    for s in 0..SERVICES {
        let service: Arc<str> = Arc::from(format!("bsvc{s}"));
        for i in 0..PER_SERVICE {
            let moved = churn && s % 10 == 0 && i == PER_SERVICE - 1;
            let port = if moved { 40_000 + i } else { 10_000 + i } as u16;
            // One loopback address per service (127.1.x.y), so no two
            // services share an instance address.
            let ip = IpAddr::V4(Ipv4Addr::new(127, 1, (s / 250) as u8, (s % 250) as u8 + 1));
            out.push(InstanceSpec {
                service: service.clone(),
                addr: SocketAddr::new(ip, port),
                weight: 1,
                id: Some(Arc::from(format!("bsvc{s}-{i}"))),
                tags: None,
                draining: false,
            });
        }
    }
    out
}

/// The refresher's work for a source update in a large registry:
/// an explicit `report` of a full set of 10,000 instances (1,000 services),
/// then `rebuild`: merge and sort the sources, compare with the published
/// shape, materialize the new snapshot (reusing live state by identity,
/// 100 instances new each time) and swap it in, dropping the old one.
/// Alternates between two sets so every rebuild publishes. Cloning the
/// input set is setup and is not timed.
fn rebuild(c: &mut Criterion) {
    let reg = Registry::new(&parse("[admin]\nlisten = \"off\"\n"));
    let sets = [instance_set(false), instance_set(true)];
    reg.update_source("bench", sets[0].clone());
    assert!(reg.rebuild());
    assert_eq!(reg.load().instance_count(), SERVICES * PER_SERVICE);
    let mut next = 1;
    let mut group = c.benchmark_group("registry");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(5));
    group.throughput(Throughput::Elements((SERVICES * PER_SERVICE) as u64));
    group.bench_function("rebuild_10k_instances_1k_services", |b| {
        b.iter_batched(
            || {
                let set = sets[next].clone();
                next ^= 1;
                set
            },
            |set| {
                // Explicit: the self-preservation guard would hold back
                // repeated removals within its burst window.
                reg.report("bench", set, Removals::Explicit);
                assert!(reg.rebuild(), "every rebuild must publish a change");
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

/// The refresher's work when one instance registers or leaves a large
/// registry (10,000 instances, 1,000 services): an explicit `report` of a second
/// source with one instance (or none), then `rebuild` and swap. Unchanged
/// services keep their entries, so this is the cost of one service's change
/// plus the merge, compare and swap of the whole snapshot.
fn rebuild_one(c: &mut Criterion) {
    let reg = Registry::new(&parse("[admin]\nlisten = \"off\"\n"));
    reg.update_source("bench", instance_set(false));
    assert!(reg.rebuild());
    let one = InstanceSpec::new(Arc::from("joiner"), "127.0.0.1:9".parse().unwrap());
    let mut present = false;
    let mut group = c.benchmark_group("registry");
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(5));
    group.bench_function("rebuild_10k_instances_one_changes", |b| {
        b.iter(|| {
            present = !present;
            let set = if present {
                vec![one.clone()]
            } else {
                Vec::new()
            };
            reg.report("api", set, Removals::Explicit);
            assert!(reg.rebuild(), "every rebuild must publish a change");
        })
    });
    group.finish();
}

/// One watch event of an etcd source that mirrors a large registry (10,000
/// instances, 1,000 services): the source reports its whole set with one
/// instance gone (or back), as an implicit update, so the
/// self-preservation guard compares the old set against the new one
/// before `rebuild` publishes. `registry.self_preservation_percent = 100`
/// keeps the guard from holding the removal back, so every event publishes
/// (the guard's comparison runs in full either way). Cloning the input set
/// is setup and is not timed.
fn etcd_update(c: &mut Criterion) {
    let reg = Registry::new(&parse(
        "[admin]\nlisten = \"off\"\n[registry]\nself_preservation_percent = 100\n",
    ));
    let full = instance_set(false);
    let mut short = full.clone();
    short.remove(SERVICES * PER_SERVICE / 2);
    let sets = [full, short];
    reg.update_source("etcd", sets[0].clone());
    assert!(reg.rebuild());
    let mut next = 1;
    let mut group = c.benchmark_group("registry");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(5));
    group.bench_function("etcd_update_10k_instances_one_leaves", |b| {
        b.iter_batched(
            || {
                let set = sets[next].clone();
                next ^= 1;
                set
            },
            |set| {
                reg.report("etcd", set, Removals::Implicit);
                assert!(reg.rebuild(), "every event must publish a change");
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(
    benches,
    pick,
    pick_subset,
    router,
    header_rewrite,
    rebuild,
    rebuild_one,
    etcd_update
);
criterion_main!(benches);
