//! Traffic management on real instances (issue 17): `p2c_ewma` keeps a
//! slow instance's share small, header-keyed `consistent_hash` keeps keys
//! on their instance and moves only a leaver's, a 95/5 split holds over
//! real requests and follows a reload, a header picks its subset, zones
//! spill over when the local instances die, and saturated instances make
//! the queue answer 503 with `Retry-After`, on both codecs. Assertions
//! use what the instances saw and what the clients got.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;

use support::{
    parse_config, request, send, wait_until, within, Backend, Gate, H1Client, Proxy, Reply,
};

/// `n` GETs for `host` over one keep-alive connection, with `headers`;
/// the body (the instance's name) of each.
async fn names(addr: SocketAddr, host: &str, n: usize, headers: &[(&str, &str)]) -> Vec<String> {
    let mut c = H1Client::connect(addr).await.expect("connect");
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let mut req = request("GET", host, "/");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let reply = c
            .request(req.body(support::empty()).unwrap())
            .await
            .expect("request");
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        out.push(reply.text());
    }
    out
}

fn tally(names: &[String]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for n in names {
        *m.entry(n.clone()).or_insert(0) += 1;
    }
    m
}

/// Issue 17: three instances, one ten times slower; under concurrent load
/// `p2c_ewma` sends it a small share (round-robin would send a third,
/// least-connections about 9%). Measured 1.3-2.5% on the loaded 2-core
/// machine, mostly the first requests, sent before the slow instance's
/// first answer gave it an average.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2c_ewma_gives_a_slow_instance_a_small_share() {
    let fast1 = Backend::builder("fast1")
        .delay(Duration::from_millis(2))
        .start()
        .await;
    let fast2 = Backend::builder("fast2")
        .delay(Duration::from_millis(2))
        .start()
        .await;
    let slow = Backend::builder("slow")
        .delay(Duration::from_millis(20))
        .start()
        .await;
    let proxy = Proxy::start(&format!(
        "[services.s]\nbalance = \"p2c_ewma\"\ninstances = [\"{}\", \"{}\", \"{}\"]\n\
         [services.s.p2c_ewma]\ndecay = \"2s\"\n",
        fast1.addr, fast2.addr, slow.addr
    ))
    .await;
    let addr = proxy.addr;
    let workers: Vec<_> = (0..8)
        .map(|_| tokio::spawn(async move { names(addr, "s.svc", 75, &[]).await }))
        .collect();
    let mut all = Vec::new();
    for w in workers {
        all.extend(within(60, "p2c load", w).await.unwrap());
    }
    let t = tally(&all);
    let share = *t.get("slow").unwrap_or(&0) as f64 / all.len() as f64;
    println!(
        "p2c_ewma over real requests: {t:?}; slow share {:.1}%",
        share * 100.0
    );
    assert!(share < 0.06, "the slow instance got {:.1}%", share * 100.0);
}

/// Issue 17: header-keyed consistent hashing sends each key to one
/// instance across 1,000 requests; when an instance leaves, only its keys
/// move.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_keeps_keys_and_moves_only_the_leavers() {
    let mut backends = Vec::new();
    for i in 0..4 {
        backends.push(Backend::start(&format!("b{i}")).await);
    }
    let list: Vec<String> = backends.iter().map(|b| format!("\"{}\"", b.addr)).collect();
    let proxy = Proxy::start(&format!(
        "[services.s]\nbalance = \"consistent_hash\"\ninstances = [{}]\n\
         [services.s.consistent_hash]\nkey = \"header:x-user\"\n",
        list.join(", ")
    ))
    .await;
    let mut c = H1Client::connect(proxy.addr).await.unwrap();
    let mut owner: HashMap<String, String> = HashMap::new();
    for i in 0..1000 {
        let user = format!("user-{}", i % 40);
        let req = request("GET", "s.svc", "/")
            .header("x-user", &user)
            .body(support::empty())
            .unwrap();
        let name = c.request(req).await.unwrap().text();
        let first = owner.entry(user.clone()).or_insert_with(|| name.clone());
        assert_eq!(*first, name, "{user} moved without a reason");
    }
    let used: std::collections::BTreeSet<_> = owner.values().cloned().collect();
    assert!(used.len() >= 3, "40 keys spread: {used:?}");
    // b1 leaves: its keys go elsewhere, every other key stays.
    backends[1].stop().await;
    let mut c = H1Client::connect(proxy.addr).await.unwrap();
    let mut moved = 0;
    for i in 0..40 {
        let user = format!("user-{i}");
        let req = request("GET", "s.svc", "/")
            .header("x-user", &user)
            .body(support::empty())
            .unwrap();
        let reply = c.request(req).await.unwrap();
        assert_eq!(reply.status, StatusCode::OK);
        let now = reply.text();
        if owner[&user] == "b1" {
            assert_ne!(now, "b1");
            moved += 1;
        } else {
            assert_eq!(now, owner[&user], "{user} belonged to a staying instance");
        }
    }
    println!("consistent_hash: {moved} of 40 keys moved when 1 of 4 instances left");
}

const V1: &str = "version = \"1\"";
const V2: &str = "version = \"2\"";

fn canary_config(v1: &[&Backend], v2: &Backend, weights: (u32, u32)) -> String {
    let mut inst: Vec<String> = v1
        .iter()
        .map(|b| format!("{{ address = \"{}\", tags = {{ {V1} }} }}", b.addr))
        .collect();
    inst.push(format!(
        "{{ address = \"{}\", tags = {{ {V2} }} }}",
        v2.addr
    ));
    format!(
        "listen = [\"127.0.0.1:0\"]\n[admin]\nlisten = \"off\"\n\
         [[routes]]\nhost = \"shop\"\nservice = \"shop\"\n\
         split = [{{ tags = {{ {V1} }}, weight = {} }}, {{ tags = {{ {V2} }}, weight = {} }}]\n\
         subset_by = {{ header = \"x-version\", tag = \"version\" }}\n\
         [services.shop]\ninstances = [{}]\n",
        weights.0,
        weights.1,
        inst.join(", ")
    )
}

/// Issue 17: a 95/5 split over real requests (exact over whole rounds of
/// 100), `x-version: 2` reaching the canary every time, and a reload to
/// 50/50 applied without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_split_holds_follows_reload_and_header_picks_the_subset() {
    let a = Backend::start("v1a").await;
    let b = Backend::start("v1b").await;
    let canary = Backend::start("v2").await;
    let running = support::start_proxy(&parse_config(&canary_config(&[&a, &b], &canary, (95, 5))))
        .await
        .expect("start");
    let addr = running.listen[0];
    let got = names(addr, "shop", 2000, &[]).await;
    let t = tally(&got);
    println!("95/5 split over 2000 real requests: {t:?}");
    assert_eq!(t["v2"], 100, "{t:?}");
    let asked = names(addr, "shop", 50, &[("x-version", "2")]).await;
    assert!(asked.iter().all(|n| n == "v2"), "{asked:?}");

    running
        .registry
        .apply_config(&parse_config(&canary_config(&[&a, &b], &canary, (50, 50))));
    assert!(running.registry.settled(Duration::from_secs(5)).await);
    let got = names(addr, "shop", 1000, &[]).await;
    let t = tally(&got);
    assert_eq!(t["v2"], 500, "after the reload: {t:?}");
    running.shutdown().await;
}

/// Issue 17: with `[zone] name = "a"` traffic stays on the zone-a
/// instances; when they die it spills over to zone b.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zone_spills_over_when_local_instances_die() {
    let a1 = Backend::start("a1").await;
    let a2 = Backend::start("a2").await;
    let b1 = Backend::start("b1").await;
    let b2 = Backend::start("b2").await;
    let inst = |b: &Backend, z: &str| {
        format!(
            "{{ address = \"{}\", tags = {{ zone = \"{z}\" }} }}",
            b.addr
        )
    };
    let proxy = Proxy::start(&format!(
        "[zone]\nname = \"a\"\nmin_available_percent = 50\n\
         [services.s]\ninstances = [{}, {}, {}, {}]\n",
        inst(&a1, "a"),
        inst(&a2, "a"),
        inst(&b1, "b"),
        inst(&b2, "b"),
    ))
    .await;
    let t = tally(&names(proxy.addr, "s.svc", 40, &[]).await);
    assert_eq!(t.keys().cloned().collect::<Vec<_>>(), ["a1", "a2"], "{t:?}");
    a1.stop().await;
    a2.stop().await;
    // Connect failures eject them; every request is still answered (by a
    // retry at first, then by zone b directly).
    let t = tally(&names(proxy.addr, "s.svc", 40, &[]).await);
    assert_eq!(t.keys().cloned().collect::<Vec<_>>(), ["b1", "b2"], "{t:?}");
    let svc = proxy.running.as_ref().unwrap().registry.load_full();
    let pool = &svc.service("s").unwrap().pools()[0];
    wait_until(5, "zone preference dropped", || {
        pool.preferred_local().is_none()
    })
    .await;
}

/// Issue 17: one instance with `max_in_flight = 1` and a queue of one:
/// the second request waits, the third is refused at once, and the waiter
/// is refused when the timeout passes; both get 503 with `Retry-After`.
/// Then the held request completes and the next one is served. Both
/// codecs (the fast path and hyper).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saturated_instances_queue_then_answer_503_with_retry_after() {
    for fast_path in [true, false] {
        let gate = Gate::new();
        let held = Backend::builder("held").gated(&gate).start().await;
        let proxy = Arc::new(
            Proxy::start(&format!(
                "[proxy]\nfast_path = {fast_path}\n\
                 [services.s]\ninstances = [\"{}\"]\nmax_in_flight = 1\n\
                 [services.s.queue]\nsize = 1\ntimeout = \"300ms\"\n",
                held.addr
            ))
            .await,
        );
        let get = |proxy: Arc<Proxy>| {
            tokio::spawn(async move {
                send(
                    proxy.addr,
                    request("GET", "s.svc", "/").body(support::empty()).unwrap(),
                )
                .await
            })
        };
        let first = get(proxy.clone());
        wait_until(5, "first request at the instance", || held.hits() == 1).await;
        let queued = get(proxy.clone());
        let svc = proxy.running.as_ref().unwrap().registry.load_full();
        let waiters = svc.service("s").unwrap().live().waiters().clone();
        wait_until(5, "second request queued", || waiters.waiting() == 1).await;
        let refused: Reply = within(5, "third request", get(proxy.clone()))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            refused.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "fast_path={fast_path}"
        );
        assert_eq!(refused.headers["retry-after"], "1");
        assert!(
            refused.text().contains("max_in_flight"),
            "{}",
            refused.text()
        );
        let timed_out: Reply = within(5, "queued request", queued).await.unwrap().unwrap();
        assert_eq!(timed_out.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(timed_out.headers["retry-after"], "1");
        gate.open();
        let done: Reply = within(5, "held request", first).await.unwrap().unwrap();
        assert_eq!(done.status, StatusCode::OK);
        let next: Reply = within(5, "next request", get(proxy.clone()))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(next.status, StatusCode::OK);
        assert_eq!(
            held.hits(),
            2,
            "refused requests never reached the instance"
        );
    }
}

/// Issue 17: with `sticky_cookie`, the first answer sets a cookie naming
/// its instance; requests carrying it stay there (round-robin would
/// rotate) and get no new cookie; when that instance leaves, the next
/// answer names another. Both codecs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_cookie_keeps_a_client_on_its_instance() {
    for fast_path in [true, false] {
        let backends = [
            Backend::start("s0").await,
            Backend::start("s1").await,
            Backend::start("s2").await,
        ];
        let list: Vec<String> = backends.iter().map(|b| format!("\"{}\"", b.addr)).collect();
        let proxy = Proxy::start(&format!(
            "[proxy]\nfast_path = {fast_path}\n[services.s]\nsticky_cookie = \"wf_sticky\"\ninstances = [{}]\n",
            list.join(", ")
        ))
        .await;
        let first = proxy.get("s.svc", "/").await.unwrap();
        let set = first.headers["set-cookie"].to_str().unwrap().to_owned();
        assert!(
            set.starts_with("wf_sticky=") && set.contains("Path=/"),
            "{set}"
        );
        let cookie = set.split(';').next().unwrap().to_owned();
        let mut c = H1Client::connect(proxy.addr).await.unwrap();
        for _ in 0..12 {
            let req = request("GET", "s.svc", "/")
                .header("cookie", format!("a=b; {cookie}"))
                .body(support::empty())
                .unwrap();
            let reply = c.request(req).await.unwrap();
            assert_eq!(reply.text(), first.text(), "fast_path={fast_path}");
            assert!(reply.headers.get("set-cookie").is_none());
        }
        let stuck = backends.iter().find(|b| b.name() == first.text()).unwrap();
        stuck.stop().await;
        let req = request("GET", "s.svc", "/")
            .header("cookie", cookie.clone())
            .body(support::empty())
            .unwrap();
        let moved = send(proxy.addr, req).await.unwrap();
        assert_eq!(moved.status, StatusCode::OK);
        assert_ne!(moved.text(), first.text());
        let renewed = moved.headers["set-cookie"].to_str().unwrap();
        assert_ne!(renewed.split(';').next().unwrap(), cookie);
    }
}

/// GETs for `host` from `workers` keep-alive connections until `stop` is
/// set; returns how many each worker sent.
fn load_until(
    addr: SocketAddr,
    host: &'static str,
    workers: usize,
    stop: &Arc<std::sync::atomic::AtomicBool>,
) -> Vec<tokio::task::JoinHandle<usize>> {
    (0..workers)
        .map(|_| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut c = H1Client::connect(addr).await.expect("connect");
                let mut sent = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let reply = c.get(host, "/").await.expect("request");
                    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
                    sent += 1;
                }
                sent
            })
        })
        .collect()
}

/// The `GET /v1/services` entry of the instance at `addr` of `service`.
async fn instance_view(api: &support::Api, service: &str, addr: SocketAddr) -> serde_json::Value {
    let doc = api.json("/v1/services").await;
    let services = doc["services"].as_array().expect("services");
    let s = services
        .iter()
        .find(|s| s["name"] == service)
        .expect("the service");
    s["instances"]
        .as_array()
        .expect("instances")
        .iter()
        .find(|i| i["address"] == addr.to_string())
        .cloned()
        .expect("the instance")
}

/// Issue 17: latency outlier detection on real instances. One of three
/// answers after 150 ms, the others at once: the slow one is ejected for
/// its p99 (the reason says so, the metric shows it), the fast ones are
/// not, and traffic keeps flowing to them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_outlier_ejects_the_slow_instance_only() {
    let fast1 = Backend::start("fast1").await;
    let fast2 = Backend::start("fast2").await;
    let slow = Backend::builder("slow")
        .delay(Duration::from_millis(150))
        .start()
        .await;
    // A floor of 40 ms: a fast instance's jitter on a loaded machine
    // never counts.
    let mut proxy = support::AdminProxy::start(
        "",
        &format!(
            "[services.s]\ninstances = [\"{}\", \"{}\", \"{}\"]\n[services.s.outlier]\n\
             latency_min_requests = 5\nlatency_interval = \"500ms\"\nlatency_floor = \"40ms\"\n\
             base_ejection = \"30s\"\n",
            fast1.addr, fast2.addr, slow.addr
        ),
    )
    .await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers = load_until(proxy.proxy, "s.svc", 4, &stop);
    let api = proxy.api.clone();
    support::wait_for(Duration::from_secs(20), "the slow instance ejected", || {
        let api = api.clone();
        async move { !instance_view(&api, "s", slow.addr).await["ejected_for_ms"].is_null() }
    })
    .await;
    let ejected = instance_view(&api, "s", slow.addr).await;
    let reason = ejected["last_transition"]["reason"].as_str().unwrap_or("");
    assert!(reason.contains("p99 latency"), "{ejected}");
    assert!(
        ejected["latency_p99_ms"].as_f64().unwrap_or(0.0) >= 100.0,
        "{ejected}"
    );
    // Requests go on, to the fast ones only.
    let before = (fast1.hits() + fast2.hits(), slow.hits());
    wait_until(10, "more requests to the fast instances", || {
        fast1.hits() + fast2.hits() > before.0 + 50
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in workers {
        within(10, "load worker", w).await.unwrap();
    }
    assert!(
        slow.hits() <= before.1 + 4,
        "ejected, yet {} more requests",
        slow.hits() - before.1
    );
    for fast in [&fast1, &fast2] {
        let v = instance_view(&api, "s", fast.addr).await;
        assert!(v["ejected_for_ms"].is_null() && v["ejections"] == 0, "{v}");
    }
    let metrics = api.get("/metrics").await.text();
    let line = metrics
        .lines()
        .find(|l| l.starts_with("wayfinder_instance_ejected") && l.contains(&slow.addr.to_string()))
        .unwrap_or_else(|| panic!("no wayfinder_instance_ejected line for {}", slow.addr));
    assert!(line.ends_with(" 1") || line.ends_with(" 1.0"), "{line}");
    proxy.shutdown().await;
}

/// Issue 17: hedging on real instances. One instance holds every request
/// (a closed gate), the other answers at once; with `hedge_after`, every
/// GET is answered by the fast one (the held attempt is cancelled, as the
/// debug header shows), on a connection that starts on the fast path;
/// a POST is never hedged: the one sent to the held instance waits for
/// its response timeout and gets 504, and the fast instance never sees a
/// copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hedged_gets_finish_at_the_fast_instance_and_posts_are_never_hedged() {
    let gate = Gate::new();
    let held = Backend::builder("held").gated(&gate).start().await;
    let fast = Backend::start("fast").await;
    let proxy = Proxy::start(&format!(
        "[proxy]\ndebug_header = true\n\
         [services.s]\ninstances = [\"{}\", \"{}\"]\nhedge_after = \"20ms\"\n\
         [services.s.timeouts]\nresponse_header = \"500ms\"\n\
         [services.s.retry_budget]\npercent = 100\n",
        held.addr, fast.addr
    ))
    .await;
    let mut c = H1Client::connect(proxy.addr).await.unwrap();
    let mut slowest = Duration::ZERO;
    let mut cancelled = 0;
    for _ in 0..20 {
        let start = std::time::Instant::now();
        let reply = within(10, "hedged GET", c.get("s.svc", "/")).await.unwrap();
        slowest = slowest.max(start.elapsed());
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        assert_eq!(reply.text(), "fast");
        let trail = reply.headers["x-wayfinder-debug"]
            .to_str()
            .unwrap()
            .to_owned();
        if trail.contains(&format!("{} cancelled", held.addr)) {
            cancelled += 1;
        }
    }
    println!("20 hedged GETs: slowest {slowest:?}; {cancelled} held attempts cancelled");
    assert!(
        held.hits() >= 5,
        "round-robin sent first attempts to the held instance: {}",
        held.hits()
    );
    assert_eq!(
        cancelled,
        held.hits(),
        "each held attempt hedged over and cancelled"
    );

    let before = fast.hits();
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let req = request("POST", "s.svc", "/")
            .body(support::full("x"))
            .unwrap();
        let reply = within(10, "POST", send(proxy.addr, req)).await.unwrap();
        statuses.push(reply.status);
    }
    let ok = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    let timed_out = statuses
        .iter()
        .filter(|s| **s == StatusCode::GATEWAY_TIMEOUT)
        .count();
    assert!(timed_out >= 1 && ok + timed_out == 4, "{statuses:?}");
    assert_eq!(
        fast.hits() - before,
        ok,
        "no POST copied to the fast instance"
    );
    gate.open();
}

/// The canary config of [`canary_config`] with the route named "shop"
/// and the admin API on (tables only, for [`support::AdminProxy`]).
fn named_canary_tables(v1: &[&Backend], v2: &Backend, weights: (u32, u32)) -> String {
    let text = canary_config(v1, v2, weights);
    let tables = &text[text.find("[[routes]]").expect("routes")..];
    tables.replacen("[[routes]]\n", "[[routes]]\nname = \"shop\"\n", 1)
}

/// Issue 17: a split changed through the admin API applies without a
/// restart, measured over real requests (95/5, then 50/50 set with the
/// token, then back to the file's by DELETE); `GET /v1/routes` shows it
/// and where it comes from; bad calls are refused by name; a reload that
/// leaves the route's split alone keeps it, one that changes it wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_changed_through_the_admin_api_without_a_restart() {
    let a = Backend::start("v1a").await;
    let b = Backend::start("v1b").await;
    let canary = Backend::start("v2").await;
    let mut proxy = support::AdminProxy::start(
        "token = \"split-t0ken\"",
        &named_canary_tables(&[&a, &b], &canary, (95, 5)),
    )
    .await;
    let mut api = proxy.api.clone();
    let addr = proxy.proxy;
    let canary_share = |got: Vec<String>| got.iter().filter(|n| *n == "v2").count();
    assert_eq!(canary_share(names(addr, "shop", 1000, &[]).await), 50);

    let half = r#"{"split": [{"tags": {"version": "1"}, "weight": 50}, {"tags": {"version": "2"}, "weight": 50}]}"#;
    let path = "/v1/routes/shop/split";
    assert_eq!(
        api.call("PUT", path, Some(half)).await.status,
        StatusCode::UNAUTHORIZED
    );
    api.token = Some("split-t0ken".into());
    let reply = api.call("PUT", path, Some(half)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.json()["split_from"], "admin_api");
    assert_eq!(canary_share(names(addr, "shop", 1000, &[]).await), 500);
    let routes = api.json("/v1/routes").await;
    let route = &routes["routes"][0];
    assert_eq!(
        (route["name"].as_str(), route["split_from"].as_str()),
        (Some("shop"), Some("admin_api"))
    );
    assert_eq!(route["split"][1]["weight"], 50, "{route}");

    // Refused by name: one entry, a bad weight, an unknown route.
    let one = r#"{"split": [{"tags": {"version": "1"}, "weight": 1}]}"#;
    let reply = api.call("PUT", path, Some(one)).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.text().contains("2 to 8"), "{}", reply.text());
    let heavy = half.replace("50}]", "20000}]");
    let reply = api.call("PUT", path, Some(&heavy)).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(
        reply.text().contains("entry 1: weight 20000"),
        "{}",
        reply.text()
    );
    let reply = api.call("PUT", "/v1/routes/nope/split", Some(half)).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "{}", reply.text());
    assert_eq!(
        canary_share(names(addr, "shop", 100, &[]).await),
        50,
        "unchanged"
    );

    // A reload that leaves the split alone keeps the API's.
    let running = proxy.running();
    let tables = named_canary_tables(&[&a, &b], &canary, (95, 5));
    let file = |tables: &str| {
        support::parse_config(&format!(
            "listen = [\"127.0.0.1:0\"]\n[admin]\nlisten = \"off\"\n{}\n[services.shop.retry_budget]\npercent = 10\n",
            tables
        ))
    };
    running.registry.apply_config(&file(&tables));
    assert!(running.registry.settled(Duration::from_secs(5)).await);
    assert_eq!(canary_share(names(addr, "shop", 100, &[]).await), 50);
    // DELETE: the file's 95/5 again.
    let reply = api.call("DELETE", path, None).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.json()["split_from"], "config");
    assert_eq!(canary_share(names(addr, "shop", 1000, &[]).await), 50);
    // Set again, then a reload that changes the route's split: the file wins.
    assert_eq!(
        api.call("PUT", path, Some(half)).await.status,
        StatusCode::OK
    );
    let changed = named_canary_tables(&[&a, &b], &canary, (90, 10));
    running.registry.apply_config(&file(&changed));
    assert!(running.registry.settled(Duration::from_secs(5)).await);
    assert_eq!(canary_share(names(addr, "shop", 1000, &[]).await), 100);
    proxy.shutdown().await;
}
