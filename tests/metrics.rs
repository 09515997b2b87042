//! `GET /metrics` against the real `wayfinder run` binary in front of real
//! hyper instances: the exposition is read by a real Prometheus
//! text-format parser (`prometheus-parse`), and the numbers are the ones
//! the test caused: requests by service, instance and status class on both
//! codecs (the HTTP/1.1 fast path and hyper, here HTTP/1.0), connect
//! failures and retries, requests without a route, histograms, a
//! registered instance appearing and leaving, registration counts, process
//! metrics; OpenMetrics when `Accept` asks for it; and nothing counted with
//! `[metrics] enabled = false`.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use prometheus_parse::{Sample, Scrape, Value};
use support::{get, refused_addr, wayfinder, within, Api, Backend, ConfigFile, Proc};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Scrapes `admin`'s `/metrics` and parses it.
async fn scrape(api: &Api) -> Scrape {
    let reply = api.get("/metrics").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let ct = reply.headers["content-type"].to_str().unwrap().to_owned();
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    let text = reply.text();
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("Prometheus text format")
}

/// The samples of `name` whose labels include all of `labels`.
fn find<'a>(s: &'a Scrape, name: &str, labels: &[(&str, &str)]) -> Vec<&'a Sample> {
    s.samples
        .iter()
        .filter(|x| x.metric == name && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .collect()
}

fn number(v: &Value) -> f64 {
    match v {
        Value::Counter(n) | Value::Gauge(n) | Value::Untyped(n) => *n,
        Value::Histogram(h) => h.iter().map(|b| b.count).fold(0.0, f64::max),
        Value::Summary(_) => f64::NAN,
    }
}

/// The sum of `name` over the samples with `labels`.
fn total(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    find(s, name, labels).iter().map(|x| number(&x.value)).sum()
}

/// Scrapes until `cond` holds (bounded): counters are bumped right after
/// the response goes out, so a scrape may race the last request by a hair.
async fn scrape_until(api: &Api, what: &str, cond: impl Fn(&Scrape) -> bool) -> Scrape {
    within(10, what, async {
        loop {
            let s = scrape(api).await;
            if cond(&s) {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

/// An HTTP/1.0 GET (served by the hyper codec); returns the status line.
async fn get_http10(proxy: SocketAddr, host: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(proxy).await.unwrap();
    s.write_all(format!("GET / HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    within(10, "HTTP/1.0 answer", s.read_to_string(&mut out))
        .await
        .unwrap();
    out.lines().next().unwrap_or_default().to_owned()
}

async fn start(config: &str) -> (Proc, ConfigFile, SocketAddr, Api) {
    let file = ConfigFile::new("metrics", config);
    let proc = Proc::spawn(wayfinder(&["run", "--config", file.path.to_str().unwrap()]));
    let l = proc.listening(20).await;
    (
        proc,
        file,
        l.listen[0],
        Api::new(l.admin.expect("admin on")),
    )
}

#[tokio::test]
async fn counts_what_the_proxy_did() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let (_hold, down) = refused_addr();
    let config = format!(
        "listen = [\"127.0.0.1:0\"]\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [services.web]\ninstances = [\"{}\", \"{}\"]\n\
         [services.down]\ninstances = [\"{down}\"]\n",
        a.addr, b.addr
    );
    let (_proc, _file, proxy, api) = start(&config).await;

    for _ in 0..8 {
        let r = get(proxy, "web.svc", "/").await.unwrap();
        assert_eq!(r.status, 200);
    }
    for _ in 0..2 {
        assert!(get_http10(proxy, "web.svc").await.contains(" 200 "));
    }
    let r = get(proxy, "down.svc", "/").await.unwrap();
    assert_eq!(r.status, 502, "{}", r.text());
    let r = get(proxy, "nowhere.example", "/").await.unwrap();
    assert_eq!(r.status, 404);

    let web = [("service", "web")];
    let s = scrape_until(&api, "10 web requests counted", |s| {
        total(s, "wayfinder_requests_total", &web) >= 10.0
            && total(s, "wayfinder_requests_unrouted_total", &[]) >= 1.0
            && total(s, "wayfinder_requests_total", &[("service", "down")]) >= 1.0
    })
    .await;
    // By instance and class, across both codecs.
    let a_addr = a.addr.to_string();
    let b_addr = b.addr.to_string();
    let per = |inst: &str| {
        total(
            &s,
            "wayfinder_requests_total",
            &[("service", "web"), ("instance", inst), ("code", "2xx")],
        )
    };
    assert_eq!(per(&a_addr) + per(&b_addr), 10.0);
    assert_eq!(per(&a_addr), a.hits() as f64);
    assert_eq!(total(&s, "wayfinder_requests_total", &web), 10.0);
    assert_eq!(
        total(
            &s,
            "wayfinder_requests_total",
            &[("service", "web"), ("method", "GET")]
        ),
        10.0,
        "counted by method"
    );
    // The failed service: answered by the proxy itself (instance ""), its
    // one instance refusing connections.
    assert_eq!(
        total(
            &s,
            "wayfinder_requests_total",
            &[("service", "down"), ("instance", ""), ("code", "5xx")]
        ),
        1.0
    );
    let down_addr = down.to_string();
    let failures = total(
        &s,
        "wayfinder_upstream_connect_failures_total",
        &[("service", "down"), ("instance", &down_addr)],
    );
    assert!(failures >= 1.0, "connect failures: {failures}");
    assert_eq!(
        total(&s, "wayfinder_requests_unrouted_total", &[("code", "4xx")]),
        1.0
    );
    // Histograms: one observation per request, upstream TTFB too.
    let count = |name: &str| {
        find(&s, name, &web)
            .iter()
            .find_map(|x| match &x.value {
                Value::Histogram(h) => h.iter().map(|b| b.count).reduce(f64::max),
                _ => None,
            })
            .unwrap_or(0.0)
    };
    assert_eq!(count("wayfinder_request_duration_seconds"), 10.0);
    assert_eq!(count("wayfinder_upstream_ttfb_seconds"), 10.0);
    // Gauges and state.
    assert_eq!(
        total(&s, "wayfinder_in_flight_requests", &[("instance", &a_addr)]),
        0.0
    );
    assert_eq!(
        total(
            &s,
            "wayfinder_instance_health",
            &[("instance", &a_addr), ("state", "not_checked")]
        ),
        1.0
    );
    assert_eq!(total(&s, "wayfinder_service_panic_mode", &web), 0.0);
    assert_eq!(total(&s, "wayfinder_service_instances", &web), 2.0);
    assert!(total(&s, "wayfinder_snapshot_version", &[]) >= 1.0);
    assert_eq!(
        total(
            &s,
            "wayfinder_source_state",
            &[("source", "config"), ("state", "ok")]
        ),
        1.0,
        "{:?}",
        find(&s, "wayfinder_source_state", &[])
    );
    assert_eq!(
        total(&s, "wayfinder_source_instances", &[("source", "config")]),
        3.0
    );
    assert!(total(&s, "process_resident_memory_bytes", &[]) > 1e6);
    assert!(total(&s, "process_open_fds", &[]) >= 3.0);
    // CPU time is counted in 10 ms ticks: a young, idle process may show 0.
    assert_eq!(find(&s, "process_cpu_seconds_total", &[]).len(), 1);
    assert!(total(&s, "wayfinder_client_connections", &[]) >= 0.0);
    assert!(!find(&s, "wayfinder_build_info", &[]).is_empty());

    // A registered instance appears, is counted, and leaves.
    let c = Backend::start("c").await;
    api.register_ok("reg", "c1", c.addr, "60s").await;
    let c_addr = c.addr.to_string();
    let s = scrape_until(&api, "registered instance listed", |s| {
        !find(s, "wayfinder_in_flight_requests", &[("instance", &c_addr)]).is_empty()
    })
    .await;
    assert_eq!(total(&s, "wayfinder_registrations_total", &[]), 1.0);
    let r = api.deregister("reg", "c1").await;
    assert!(r.status.is_success(), "{}", r.text());
    let s = scrape_until(&api, "deregistered instance gone", |s| {
        find(s, "wayfinder_in_flight_requests", &[("instance", &c_addr)]).is_empty()
    })
    .await;
    assert_eq!(total(&s, "wayfinder_deregistrations_total", &[]), 1.0);
    assert!(
        !s.samples
            .iter()
            .any(|x| x.labels.get("instance") == Some(c_addr.as_str())),
        "no sample names the instance that left"
    );

    // OpenMetrics on request.
    let req = support::client::request("GET", "admin", "/metrics")
        .header("accept", "application/openmetrics-text; version=1.0.0")
        .body(support::empty())
        .unwrap();
    let reply = support::send(api.addr, req).await.unwrap();
    let ct = reply.headers["content-type"].to_str().unwrap();
    assert!(ct.starts_with("application/openmetrics-text"), "{ct}");
    let text = reply.text();
    assert!(text.ends_with("# EOF\n"), "OpenMetrics ends with # EOF");
    assert!(text.contains("# TYPE wayfinder_requests counter\n"));
}

#[tokio::test]
async fn counting_can_be_switched_off() {
    let a = Backend::start("a").await;
    let config = format!(
        "listen = [\"127.0.0.1:0\"]\n[admin]\nlisten = \"127.0.0.1:0\"\n[metrics]\nenabled = false\n\
         [services.web]\ninstances = [\"{}\"]\n",
        a.addr
    );
    let (_proc, _file, proxy, api) = start(&config).await;
    for _ in 0..3 {
        assert_eq!(get(proxy, "web.svc", "/").await.unwrap().status, 200);
    }
    let s = scrape(&api).await;
    assert_eq!(total(&s, "wayfinder_requests_total", &[]), 0.0);
    assert_eq!(
        total(&s, "wayfinder_service_instances", &[("service", "web")]),
        1.0
    );
}
