//! End-to-end tests of the registry (issue 4): the registration API on the
//! admin listener, TTL expiry and self-preservation, long polls, the bearer
//! token, input validation, the drain handshake, client-side discovery and hot
//! reload of the config file (the real binary). `wayfinder register` is
//! tested in tests/registrar.rs.
//!
//! Everything listens on loopback with ports picked at run time. Every
//! process a test spawns is killed if the test ends early (`kill_on_drop`);
//! only PIDs the test itself spawned are ever signalled.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use nix::sys::signal::Signal;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

use support::{
    empty, full, refused_addr, request, wait_until, wayfinder, within, AdminProxy, Api, Backend,
    ConfigFile, H1Client, Proc, Reply,
};

const TOKEN: &str = "secret-token-1";

// === helpers ===

/// The `x-wayfinder-index` header of a reply.
fn index_of(reply: &Reply) -> u64 {
    reply
        .headers
        .get("x-wayfinder-index")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no x-wayfinder-index in {:?}", reply.headers))
}

// === helpers: processes ===

// === helpers: a backend that streams slowly ===

/// An HTTP/1.1 instance answering every request with `chunks` chunks, one
/// every `every`. Stops (with its connections) on drop.
struct SlowStream {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for SlowStream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn stream_chunk(i: usize) -> String {
    format!("chunk {i:04} {}\n", "x".repeat(1000))
}

fn stream_expected(chunks: usize) -> String {
    (0..chunks).map(stream_chunk).collect()
}

async fn slow_stream_backend(chunks: usize, every: Duration) -> SlowStream {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut conns = JoinSet::new();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            };
            while conns.try_join_next().is_some() {}
            conns.spawn(async move {
                let service = service_fn(move |_req| async move {
                    let body = futures_util::stream::unfold(0usize, move |i| async move {
                        if i >= chunks {
                            return None;
                        }
                        if i > 0 {
                            tokio::time::sleep(every).await;
                        }
                        let frame = Frame::data(Bytes::from(stream_chunk(i)));
                        Some((Ok::<_, Infallible>(frame), i + 1))
                    });
                    Ok::<_, Infallible>(hyper::Response::new(StreamBody::new(body)))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    SlowStream { addr, task }
}

// === 1. register -> routable ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_is_routable_quickly() {
    let wf = AdminProxy::start("", "").await;
    let mut samples = Vec::new();
    let mut backends = Vec::new();
    for n in 0..5 {
        let name = format!("quick{n}");
        let backend = Backend::start(&name).await;
        // Keep-alive connections opened beforehand: only the registration
        // path is measured.
        let mut admin = H1Client::connect(wf.api.addr).await.unwrap();
        let mut proxy = H1Client::connect(wf.proxy).await.unwrap();
        let host = format!("{name}.svc");
        let before = proxy.get(&host, "/").await.unwrap();
        assert_ne!(before.status, StatusCode::OK, "routable before registering");

        let body = format!(r#"{{"address":"{}","ttl":"30s"}}"#, backend.addr);
        let put = request("PUT", "admin", &format!("/v1/registry/{name}/i{n}"))
            .body(full(body))
            .unwrap();
        let started = Instant::now();
        let reply = within(5, "register", admin.request(put)).await.unwrap();
        let answered = started.elapsed();
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
        let routable = within(5, "first 200 through the proxy", async {
            loop {
                let r = proxy.get(&host, "/").await.unwrap();
                if r.status == StatusCode::OK {
                    assert_eq!(r.text(), name);
                    return started.elapsed();
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await;
        println!(
            "registration-to-routable latency ({name}): {:.3} ms (PUT answered after {:.3} ms)",
            routable.as_secs_f64() * 1e3,
            answered.as_secs_f64() * 1e3
        );
        samples.push(routable);
        backends.push(backend);
    }
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "registration-to-routable latency over {} registrations: min {:.3} ms, median {:.3} ms, max {:.3} ms (target 100 ms)",
        samples.len(),
        ms(samples[0]),
        ms(samples[samples.len() / 2]),
        ms(samples[samples.len() - 1])
    );
    assert!(
        samples[samples.len() - 1] < Duration::from_secs(1),
        "registration took {:?} to become routable",
        samples[samples.len() - 1]
    );

    // Registering again is idempotent: 200, one instance, fields updated.
    let again = wf
        .api
        .register(
            "quick0",
            "i0",
            &format!(
                r#"{{"address":"{}","ttl":"30s","weight":4,"tags":{{"v":"2"}}}}"#,
                backends[0].addr
            ),
        )
        .await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.text());
    let list = wf.api.instances("quick0").await;
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["weight"], 4);
    assert_eq!(list[0]["tags"]["v"], "2");
}

// === 2. deregister ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deregister_stops_new_requests_and_in_flight_completes() {
    let wf = AdminProxy::start("", "").await;
    let slow = Backend::builder("slow")
        .delay(Duration::from_millis(1000))
        .start()
        .await;
    let fast = Backend::start("fast").await;
    wf.api.register_ok("dereg", "s1", slow.addr, "30s").await;

    // A slow request reaches the only instance...
    let proxy = wf.proxy;
    let in_flight = tokio::spawn(async move { support::get(proxy, "dereg.svc", "/").await });
    wait_until(10, "slow request reaches its instance", || slow.hits() == 1).await;
    // ...a second instance joins, the first is deregistered mid-request.
    wf.api.register_ok("dereg", "f1", fast.addr, "30s").await;
    let reply = wf.api.deregister("dereg", "s1").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(wf.api.addresses("dereg").await, vec![fast.addr.to_string()]);

    for _ in 0..10 {
        assert_eq!(wf.get_ok("dereg").await, "fast");
    }
    assert_eq!(slow.hits(), 1, "a deregistered instance got new requests");
    assert_eq!(fast.hits(), 10);

    let reply = within(10, "in-flight request", in_flight)
        .await
        .unwrap()
        .expect("in-flight request to a deregistered instance");
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), "slow");

    // Gone from the registration API too; a second DELETE is a 404.
    let get = wf.api.get("/v1/registry/dereg/s1").await;
    assert_eq!(get.status, StatusCode::NOT_FOUND);
    let again = wf.api.deregister("dereg", "s1").await;
    assert_eq!(again.status, StatusCode::NOT_FOUND);
    assert_eq!(
        wf.api
            .call("PUT", "/v1/registry/dereg/s1/heartbeat", None)
            .await
            .status,
        StatusCode::NOT_FOUND
    );

    // Deregistering the last instance is explicit: applied, not held back.
    let reply = wf.api.deregister("dereg", "f1").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(wf.api.addresses("dereg").await.is_empty());
    assert_eq!(
        wf.api.source("api").await["held_back"],
        serde_json::json!([])
    );
    let after = wf.get("dereg").await.unwrap();
    assert_ne!(after.status, StatusCode::OK);
    assert_eq!(fast.hits(), 10);
}

// === 3. TTL ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_lapse_removes_an_instance_that_stops_heartbeating() {
    let wf = AdminProxy::start("", "").await;
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let lapsing = Backend::start("lapsing").await;
    wf.api.register_ok("ttl", "a", a.addr, "1s").await;
    wf.api.register_ok("ttl", "b", b.addr, "1s").await;

    // a and b heartbeat every 100 ms; `lapsing` never does.
    let failures = Arc::new(AtomicUsize::new(0));
    let beats = {
        let (api, failures) = (wf.api.clone(), failures.clone());
        tokio::spawn(async move {
            loop {
                for id in ["a", "b"] {
                    if api.heartbeat("ttl", id).await.status != StatusCode::OK {
                        failures.fetch_add(1, SeqCst);
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let registered = Instant::now();
    wf.api
        .register_ok("ttl", "lapsing", lapsing.addr, "300ms")
        .await;
    assert_eq!(wf.api.addresses("ttl").await.len(), 3);

    let left = wf
        .api
        .wait_addresses(5, "ttl", "the lapsed instance leaves", |a| a.len() == 2)
        .await;
    let gone_after = registered.elapsed();
    println!("instance with ttl 300ms left the pool {gone_after:?} after registering");
    assert!(
        gone_after >= Duration::from_millis(290),
        "removed before its TTL: {gone_after:?}"
    );
    let mut want = vec![a.addr.to_string(), b.addr.to_string()];
    want.sort();
    assert_eq!(left, want);
    // One of three is within the self-preservation guard: nothing held back.
    assert_eq!(
        wf.api.source("api").await["held_back"],
        serde_json::json!([])
    );
    assert_eq!(
        wf.api.get("/v1/registry/ttl/lapsing").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        wf.api.heartbeat("ttl", "lapsing").await.status,
        StatusCode::NOT_FOUND,
        "a lapsed registration accepted a heartbeat"
    );

    let before = lapsing.hits();
    for _ in 0..6 {
        let body = wf.get_ok("ttl").await;
        assert!(body == "a" || body == "b", "{body}");
    }
    assert_eq!(lapsing.hits(), before, "a lapsed instance got requests");

    // The heartbeating ones outlive their 1 s TTL several times over.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(wf.api.addresses("ttl").await, want);
    beats.abort();
    assert_eq!(failures.load(SeqCst), 0, "heartbeats failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_lapse_of_the_last_instance_is_held_back_until_released() {
    let wf = AdminProxy::start("", "").await;
    let lonely = Backend::start("lonely").await;
    wf.api
        .register_ok("lonely", "l1", lonely.addr, "300ms")
        .await;
    assert_eq!(wf.get_ok("lonely").await, "lonely");

    // The registration lapses...
    wait_lapsed(&wf.api, "lonely", "l1").await;
    // ...but emptying the service is held back, visibly: the registration
    // shows as expired and held.
    let reg = wf.api.json("/v1/registry/lonely/l1").await;
    assert_eq!(reg["expired"], true, "{reg}");
    assert!(reg["held_back"]["reason"].is_string(), "{reg}");
    let api = wf.api.source("api").await;
    assert_eq!(
        api["held_back"],
        serde_json::json!([format!("lonely {}", lonely.addr)]),
        "{api}"
    );
    assert_eq!(
        wf.api.addresses("lonely").await,
        vec![lonely.addr.to_string()]
    );
    assert_eq!(wf.get_ok("lonely").await, "lonely");
    // Still held a while later.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        wf.api.addresses("lonely").await,
        vec![lonely.addr.to_string()]
    );

    // An unknown source is a 404; the operator releases the api source.
    let none = wf.api.call("POST", "/v1/sources/nope/release", None).await;
    assert_eq!(none.status, StatusCode::NOT_FOUND);
    let released = wf.api.call("POST", "/v1/sources/api/release", None).await;
    assert_eq!(released.status, StatusCode::OK, "{}", released.text());
    assert!(
        released.text().contains("released 1"),
        "{}",
        released.text()
    );
    wf.api
        .wait_addresses(
            5,
            "lonely",
            "released removal applies",
            <[String]>::is_empty,
        )
        .await;
    assert_eq!(
        wf.api.source("api").await["held_back"],
        serde_json::json!([])
    );
    assert_eq!(
        wf.api.get("/v1/registry/lonely/l1").await.status,
        StatusCode::NOT_FOUND,
        "released: the expired registration is gone"
    );
    let hits = lonely.hits();
    let after = wf.get("lonely").await.unwrap();
    assert_ne!(after.status, StatusCode::OK, "{}", after.text());
    assert_eq!(lonely.hits(), hits);
}

/// Waits until the registration `service/id` has lapsed: gone (404), or
/// shown as expired while self-preservation holds back its removal.
async fn wait_lapsed(api: &Api, service: &str, id: &str) {
    within(5, "registration lapses", async {
        loop {
            let reply = api.get(&format!("/v1/registry/{service}/{id}")).await;
            if reply.status == StatusCode::NOT_FOUND || reply.json()["expired"] == true {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_back_removal_survives_an_unrelated_deregistration() {
    let wf = AdminProxy::start("", "").await;
    let lonely = Backend::start("lonely").await;
    let o1 = Backend::start("o1").await;
    let o2 = Backend::start("o2").await;
    wf.api.register_ok("other", "o1", o1.addr, "60s").await;
    wf.api.register_ok("other", "o2", o2.addr, "60s").await;
    wf.api
        .register_ok("lonely", "l1", lonely.addr, "300ms")
        .await;
    wait_lapsed(&wf.api, "lonely", "l1").await;
    let held = serde_json::json!([format!("lonely {}", lonely.addr)]);
    assert_eq!(wf.api.source("api").await["held_back"], held);

    // Deregistering an instance of another service is explicit about that
    // instance only; the held-back expiry of `lonely` is not asked for.
    assert_eq!(
        wf.api.deregister("other", "o2").await.status,
        StatusCode::OK
    );
    wf.api
        .wait_addresses(5, "other", "o2 deregistered", |a| a.len() == 1)
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        wf.api.addresses("lonely").await,
        vec![lonely.addr.to_string()],
        "an unrelated deregistration applied the held-back removal of the last instance of `lonely`"
    );
    assert_eq!(wf.api.source("api").await["held_back"], held);
    assert_eq!(wf.get_ok("lonely").await, "lonely");

    // Deregistering the expired registration itself applies its removal.
    assert_eq!(
        wf.api.deregister("lonely", "l1").await.status,
        StatusCode::OK
    );
    wf.api
        .wait_addresses(5, "lonely", "l1 deregistered", <[String]>::is_empty)
        .await;
    assert_eq!(
        wf.api.source("api").await["held_back"],
        serde_json::json!([])
    );
    assert_eq!(
        wf.api.deregister("lonely", "l1").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_ttl_expiries_is_held_back_like_one_update() {
    let wf = AdminProxy::start("", "").await;
    let keeper = Backend::start("keeper").await;
    wf.api
        .register_ok("burst", "keeper", keeper.addr, "60s")
        .await;
    // Three instances stop heartbeating together (say, a zone goes away);
    // their registrations were a few ms apart, so their TTLs lapse a few
    // ms apart: one burst of 3 of 4 instances (75% > 50%).
    let mut lapsing = Vec::new();
    for i in 0..3 {
        let b = Backend::start(&format!("lapsing{i}")).await;
        wf.api
            .register_ok("burst", &format!("l{i}"), b.addr, "300ms")
            .await;
        lapsing.push(b);
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert_eq!(wf.api.addresses("burst").await.len(), 4);
    wait_lapsed(&wf.api, "burst", "l2").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let left = wf.api.addresses("burst").await;
    let held = wf.api.source("api").await["held_back"].clone();
    println!("after a burst of 3 expiries of 4: listed {left:?}, held back {held}");
    assert!(
        left.len() >= 2,
        "a burst of TTL expiries removed {} of 4 instances (more than 50%): left {left:?}, held back {held}",
        4 - left.len()
    );
    assert_ne!(held, serde_json::json!([]), "nothing held back");
}

// === 4. long poll ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_returns_on_change_and_times_out_with_the_same_index() {
    let wf = AdminProxy::start("", "").await;
    let one = Backend::start("one").await;
    let two = Backend::start("two").await;
    wf.api.register_ok("watched", "w1", one.addr, "60s").await;
    let first = wf.api.get("/v1/registry/watched").await;
    assert_eq!(first.status, StatusCode::OK);
    let n = index_of(&first);
    assert_eq!(first.json()["index"], n);

    // A change returns the poll early, with a larger index.
    let api = wf.api.clone();
    let started = Instant::now();
    let poll = tokio::spawn(async move {
        let r = api
            .get(&format!("/v1/registry/watched?index={n}&wait=2s"))
            .await;
        (r, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!poll.is_finished(), "long poll returned before any change");
    wf.api.register_ok("watched", "w2", two.addr, "60s").await;
    let (reply, took) = within(5, "long poll", poll).await.unwrap();
    println!("long poll returned {took:?} after it started (change at ~300ms)");
    assert_eq!(reply.status, StatusCode::OK);
    let m = index_of(&reply);
    assert!(m > n, "index {m} not past {n}");
    assert!(
        took < Duration::from_millis(1500),
        "returned after {took:?}"
    );
    assert_eq!(reply.json()["instances"].as_array().unwrap().len(), 2);

    // Nothing changes: it waits the full `wait` and answers the same index.
    let started = Instant::now();
    let reply = wf
        .api
        .get(&format!("/v1/registry/watched?index={m}&wait=2s"))
        .await;
    let took = started.elapsed();
    println!("long poll without a change returned after {took:?} (wait=2s)");
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(index_of(&reply), m);
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(4),
        "timed out after {took:?}"
    );
    // Heartbeats change nothing a watcher cares about.
    let api = wf.api.clone();
    let poll = tokio::spawn(async move {
        api.get(&format!("/v1/registry/watched?index={m}&wait=1s"))
            .await
    });
    assert_eq!(
        wf.api.heartbeat("watched", "w1").await.status,
        StatusCode::OK
    );
    let reply = within(5, "long poll", poll).await.unwrap();
    assert_eq!(index_of(&reply), m);

    // The all-services poll follows the snapshot version the same way.
    let all = wf.api.get("/v1/registry").await;
    let v = index_of(&all);
    let api = wf.api.clone();
    let started = Instant::now();
    let poll = tokio::spawn(async move {
        let r = api.get(&format!("/v1/registry?index={v}&wait=2s")).await;
        (r, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        wf.api.deregister("watched", "w2").await.status,
        StatusCode::OK
    );
    let (reply, took) = within(5, "long poll", poll).await.unwrap();
    assert!(index_of(&reply) > v);
    assert!(
        took < Duration::from_millis(1500),
        "returned after {took:?}"
    );

    // The service disappearing counts as a change: 200, no instances.
    let last = wf.api.get("/v1/registry/watched").await;
    let k = index_of(&last);
    let api = wf.api.clone();
    let poll = tokio::spawn(async move {
        api.get(&format!("/v1/registry/watched?index={k}&wait=2s"))
            .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        wf.api.deregister("watched", "w1").await.status,
        StatusCode::OK
    );
    let reply = within(5, "long poll", poll).await.unwrap();
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert!(index_of(&reply) > k);
    assert_eq!(reply.json()["instances"], serde_json::json!([]));

    // A bad index or wait is a 400 naming the parameter.
    let bad = wf.api.get("/v1/registry/watched?index=x").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.text().starts_with("index:"), "{}", bad.text());
    let bad = wf.api.get("/v1/registry/watched?index=1&wait=soon").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.text().starts_with("wait:"), "{}", bad.text());
}

// === 5. token ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_is_required_for_changes_when_configured() {
    let wf = AdminProxy::start(&format!("token = \"{TOKEN}\""), "").await;
    let backend = Backend::start("guarded").await;
    let api = &wf.api;
    let path = "/v1/registry/guarded/g1";
    let body = format!(r#"{{"address":"{}","ttl":"30s"}}"#, backend.addr);

    let none = api.call_with("PUT", path, None, Some(&body)).await;
    assert_eq!(none.status, StatusCode::UNAUTHORIZED, "{}", none.text());
    assert_eq!(
        none.headers
            .get(header::WWW_AUTHENTICATE)
            .map(|v| v.as_bytes()),
        Some(&b"Bearer"[..])
    );
    let wrong = api
        .call_with("PUT", path, Some("secret-token-2"), Some(&body))
        .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    let prefix = api
        .call_with("PUT", path, Some("secret-token"), Some(&body))
        .await;
    assert_eq!(prefix.status, StatusCode::UNAUTHORIZED);
    let basic = api
        .call_auth("PUT", path, Some(&format!("Basic {TOKEN}")), Some(&body))
        .await;
    assert_eq!(basic.status, StatusCode::UNAUTHORIZED);
    // Nothing was registered by the refused calls.
    assert_eq!(api.get(path).await.status, StatusCode::NOT_FOUND);
    assert!(api.addresses("guarded").await.is_empty());

    let ok = api.call_with("PUT", path, Some(TOKEN), Some(&body)).await;
    assert_eq!(ok.status, StatusCode::CREATED, "{}", ok.text());
    assert_eq!(wf.get_ok("guarded").await, "guarded");

    // Reads need no token.
    for read in [
        "/v1/registry",
        "/v1/registry/guarded",
        path,
        "/v1/sources",
        "/v1/status",
        "/v1/services",
        "/healthz",
    ] {
        let r = api.call_with("GET", read, None, None).await;
        assert_eq!(r.status, StatusCode::OK, "GET {read}: {}", r.text());
    }

    // Every other change needs it too.
    for (method, p) in [
        ("PUT", format!("{path}/heartbeat")),
        ("PUT", format!("{path}/drain")),
        ("DELETE", format!("{path}/drain")),
        ("DELETE", path.to_owned()),
        ("POST", "/v1/sources/api/release".to_owned()),
    ] {
        let r = api.call_with(method, &p, None, None).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{method} {p}");
    }
    assert_eq!(
        api.addresses("guarded").await,
        vec![backend.addr.to_string()]
    );
    let beat = api
        .call_with("PUT", &format!("{path}/heartbeat"), Some(TOKEN), None)
        .await;
    assert_eq!(beat.status, StatusCode::OK);
    let gone = api.call_with("DELETE", path, Some(TOKEN), None).await;
    assert_eq!(gone.status, StatusCode::OK);
    assert!(api.addresses("guarded").await.is_empty());
}

// === 6. bad input ===

/// What a registry read looks like, to compare before and after.
async fn registry_state(api: &Api) -> (String, String, String) {
    let all = api.get("/v1/registry").await;
    let one = api.get("/v1/registry/good/i1").await;
    let missing = api.get("/v1/registry/good/i9").await;
    assert_eq!(all.status, StatusCode::OK);
    assert_eq!(one.status, StatusCode::OK);
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    (
        format!("{}\n{}", index_of(&all), all.text()),
        one.text(),
        missing.text(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_400_naming_the_field_and_changes_nothing() {
    let wf = AdminProxy::start("", "").await;
    let good = Backend::start("good").await;
    let reply = wf
        .api
        .register(
            "good",
            "i1",
            &format!(
                r#"{{"address":"{}","weight":2,"ttl":"60s","tags":{{"v":"1"}}}}"#,
                good.addr
            ),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    let state = registry_state(&wf.api).await;
    let (_, other) = refused_addr();
    let other = other.to_string();
    let huge = format!(
        r#"{{"address":"{other}","tags":{{"k":"{}"}}}}"#,
        "x".repeat(70 * 1024)
    );
    let cases: Vec<(&str, String, &str)> = vec![
        ("bad JSON", format!(r#"{{"address":"{other}""#), "body"),
        ("not JSON", "hello".to_owned(), "body"),
        ("empty body", String::new(), "body"),
        ("JSON array", "[]".to_owned(), "body"),
        (
            "unknown field",
            format!(r#"{{"address":"{other}","colour":"red"}}"#),
            "colour",
        ),
        ("missing address", r#"{"ttl":"10s"}"#.to_owned(), "address"),
        ("address null", r#"{"address":null}"#.to_owned(), "address"),
        (
            "address a number",
            r#"{"address":9001}"#.to_owned(),
            "address",
        ),
        (
            "hostname address",
            r#"{"address":"localhost:9001"}"#.to_owned(),
            "address",
        ),
        (
            "address without port",
            r#"{"address":"127.0.0.1"}"#.to_owned(),
            "address",
        ),
        (
            "address port 0",
            r#"{"address":"127.0.0.1:0"}"#.to_owned(),
            "address",
        ),
        (
            "unspecified address",
            r#"{"address":"0.0.0.0:9001"}"#.to_owned(),
            "address",
        ),
        (
            "weight 0",
            format!(r#"{{"address":"{other}","weight":0}}"#),
            "weight",
        ),
        (
            "weight too big",
            format!(r#"{{"address":"{other}","weight":5000}}"#),
            "weight",
        ),
        (
            "weight negative",
            format!(r#"{{"address":"{other}","weight":-1}}"#),
            "weight",
        ),
        (
            "weight a string",
            format!(r#"{{"address":"{other}","weight":"heavy"}}"#),
            "weight",
        ),
        (
            "ttl without unit",
            format!(r#"{{"address":"{other}","ttl":"10"}}"#),
            "ttl",
        ),
        (
            "ttl words",
            format!(r#"{{"address":"{other}","ttl":"soon"}}"#),
            "ttl",
        ),
        (
            "ttl too short",
            format!(r#"{{"address":"{other}","ttl":"10ms"}}"#),
            "ttl",
        ),
        (
            "ttl too long",
            format!(r#"{{"address":"{other}","ttl":"48h"}}"#),
            "ttl",
        ),
        (
            "ttl a number",
            format!(r#"{{"address":"{other}","ttl":10}}"#),
            "ttl",
        ),
        (
            "tags a list",
            format!(r#"{{"address":"{other}","tags":["a"]}}"#),
            "tags",
        ),
        (
            "tag value a number",
            format!(r#"{{"address":"{other}","tags":{{"a":1}}}}"#),
            "tags",
        ),
        (
            "empty tag key",
            format!(r#"{{"address":"{other}","tags":{{"":"x"}}}}"#),
            "tags",
        ),
        ("body over 64 KiB", huge, "body"),
    ];
    // Every case is tried; the problems are reported together.
    let mut problems = Vec::new();
    for (what, body, field) in &cases {
        // Both as an update of the existing registration and as a new one.
        for id in ["i1", "i9"] {
            let reply = wf.api.register("good", id, body).await;
            let text = reply.text();
            println!("{what} (id {id}): {} {}", reply.status, text.trim());
            if reply.status != StatusCode::BAD_REQUEST {
                problems.push(format!(
                    "{what} (id {id}): {} {}",
                    reply.status,
                    text.trim()
                ));
            } else if !names_field(&text, field) {
                problems.push(format!(
                    "{what} (id {id}): message does not name {field:?}: {}",
                    text.trim()
                ));
            }
            if registry_state(&wf.api).await != state {
                problems.push(format!("{what} (id {id}): changed the registry"));
            }
        }
    }

    let body = format!(r#"{{"address":"{other}"}}"#);
    let long_id = "i".repeat(129);
    let path_cases: Vec<(&str, String, &str)> = vec![
        (
            "upper-case service",
            "/v1/registry/Good/i9".to_owned(),
            "service",
        ),
        (
            "service with a dot",
            "/v1/registry/go.od/i9".to_owned(),
            "service",
        ),
        (
            "service starting with '-'",
            "/v1/registry/-good/i9".to_owned(),
            "service",
        ),
        (
            "service too long",
            format!("/v1/registry/{}/i9", "s".repeat(64)),
            "service",
        ),
        (
            "id with '*'",
            "/v1/registry/good/bad*id".to_owned(),
            "instance_id",
        ),
        (
            "id with '%20'",
            "/v1/registry/good/bad%20id".to_owned(),
            "instance_id",
        ),
        (
            "id too long",
            format!("/v1/registry/good/{long_id}"),
            "instance_id",
        ),
    ];
    for (what, path, field) in &path_cases {
        let reply = wf.api.call("PUT", path, Some(&body)).await;
        let text = reply.text();
        println!("{what}: {} {}", reply.status, text.trim());
        if reply.status != StatusCode::BAD_REQUEST || !text.starts_with(&format!("{field}:")) {
            problems.push(format!("{what}: {} {}", reply.status, text.trim()));
        }
        if registry_state(&wf.api).await != state {
            problems.push(format!("{what}: changed the registry"));
        }
    }
    assert!(
        problems.is_empty(),
        "bad registrations not answered 400 naming the field:\n{}",
        problems.join("\n")
    );

    // Another id claiming a registered address conflicts, changing nothing.
    let taken = wf
        .api
        .register("good", "i9", &format!(r#"{{"address":"{}"}}"#, good.addr))
        .await;
    assert_eq!(taken.status, StatusCode::CONFLICT, "{}", taken.text());
    assert!(taken.text().starts_with("address:"), "{}", taken.text());
    assert_eq!(registry_state(&wf.api).await, state);

    // The registration still routes with its original settings.
    assert_eq!(wf.get_ok("good").await, "good");
    let list = wf.api.instances("good").await;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["weight"], 2);
    assert_eq!(list[0]["tags"], serde_json::json!({"v": "1"}));
}

/// Whether a 400 message names `field`: it starts with `field:` (or a path
/// inside it, `tags.a:`), or is reported against the body and quotes it
/// (`body: missing field `address``).
fn names_field(text: &str, field: &str) -> bool {
    text.starts_with(&format!("{field}:"))
        || text.starts_with(&format!("{field}."))
        || (text.starts_with("body:") && text.contains(&format!("`{field}`")))
}

// === 7. drain handshake ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_handshake_waits_for_in_flight_requests() {
    let wf = AdminProxy::start("", "").await;
    let slow = Backend::builder("slow")
        .delay(Duration::from_millis(1200))
        .start()
        .await;
    let fast = Backend::start("fast").await;
    wf.api.register_ok("drain", "d1", slow.addr, "30s").await;

    let proxy = wf.proxy;
    let in_flight = tokio::spawn(async move { support::get(proxy, "drain.svc", "/").await });
    wait_until(10, "slow request reaches its instance", || slow.hits() == 1).await;
    wf.api.register_ok("drain", "d2", fast.addr, "30s").await;

    let drain = wf
        .api
        .call("PUT", "/v1/registry/drain/d1/drain", None)
        .await;
    assert_eq!(drain.status, StatusCode::OK, "{}", drain.text());
    let listed = wf.api.instances("drain").await;
    let d1 = listed
        .iter()
        .find(|i| i["id"] == "d1")
        .expect("a draining instance stays listed");
    assert_eq!(d1["draining"], true, "{d1}");
    assert_eq!(d1["in_flight"], 1, "{d1}");
    assert_eq!(d1["available"], false, "{d1}");

    let state = wf.api.get("/v1/registry/drain/d1").await;
    assert_eq!(state.status, StatusCode::OK);
    let doc = state.json();
    assert_eq!(doc["draining"], true, "{doc}");
    assert_eq!(doc["in_flight"], 1, "{doc}");
    assert_eq!(doc["drained"], false, "{doc}");

    // A short wait times out, still not drained.
    let drain_started = Instant::now();
    let short = wf
        .api
        .get("/v1/registry/drain/d1?wait=drained&timeout=200ms")
        .await;
    assert!(drain_started.elapsed() >= Duration::from_millis(190));
    assert_eq!(short.json()["drained"], false, "{}", short.text());

    let api = wf.api.clone();
    let waiter = tokio::spawn(async move {
        let r = api
            .get("/v1/registry/drain/d1?wait=drained&timeout=2s")
            .await;
        (r, Instant::now())
    });

    // No new picks while draining.
    for _ in 0..10 {
        assert_eq!(wf.get_ok("drain").await, "fast");
    }
    assert_eq!(slow.hits(), 1, "a draining instance got new requests");

    let (drained, drained_at) = within(10, "wait=drained", waiter).await.unwrap();
    assert_eq!(drained.status, StatusCode::OK);
    let doc = drained.json();
    assert_eq!(doc["drained"], true, "{doc}");
    assert_eq!(doc["in_flight"], 0, "{doc}");
    assert_eq!(slow.answered(), 1, "drained before the instance answered");
    let reply = within(10, "in-flight request", in_flight)
        .await
        .unwrap()
        .expect("in-flight request to a draining instance");
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), "slow");
    println!(
        "wait=drained returned {:?} after the drain started",
        drained_at.duration_since(drain_started)
    );

    // Cancelling the drain makes it pickable again; then deregister.
    let cancel = wf
        .api
        .call("DELETE", "/v1/registry/drain/d1/drain", None)
        .await;
    assert_eq!(cancel.status, StatusCode::OK);
    within(10, "drain cancelled", async {
        while slow.hits() == 1 {
            wf.get_ok("drain").await;
        }
    })
    .await;
    assert_eq!(
        wf.api.deregister("drain", "d1").await.status,
        StatusCode::OK
    );
    assert_eq!(wf.api.addresses("drain").await, vec![fast.addr.to_string()]);
}

// === 11. client-side discovery ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_lists_instances_with_tags_and_filters_healthy() {
    let wf = AdminProxy::start(
        "",
        "[services.disco.health]\nkind = \"tcp\"\ninterval = \"200ms\"\ntimeout = \"100ms\"\nhealthy_threshold = 1\nunhealthy_threshold = 1\n",
    )
    .await;
    let live = Backend::start("live").await;
    let (_hold, dead) = refused_addr();
    let reply = wf
        .api
        .register(
            "disco",
            "live-1",
            &format!(
                r#"{{"address":"{}","weight":3,"ttl":"60s","tags":{{"version":"2","zone":"a"}}}}"#,
                live.addr
            ),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    let reg = reply.json();
    assert_eq!(reg["service"], "disco");
    assert_eq!(reg["id"], "live-1");
    assert_eq!(reg["ttl"], "1m");
    wf.api
        .register(
            "disco",
            "dead-1",
            &format!(r#"{{"address":"{dead}","ttl":"60s","tags":{{"version":"1"}}}}"#),
        )
        .await;

    let healthy = within(10, "the live instance passes its check", async {
        loop {
            let r = wf.api.get("/v1/registry/disco?healthy=true").await;
            assert_eq!(r.status, StatusCode::OK);
            let doc = r.json();
            let list = doc["instances"].as_array().cloned().unwrap_or_default();
            if list.len() == 1 {
                assert_eq!(doc["index"], index_of(&r));
                return list;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let one = &healthy[0];
    assert_eq!(one["id"], "live-1", "{one}");
    assert_eq!(one["address"], live.addr.to_string());
    assert_eq!(one["weight"], 3);
    assert_eq!(
        one["tags"],
        serde_json::json!({"version": "2", "zone": "a"})
    );
    assert_eq!(one["source"], "api");
    assert_eq!(one["health"], "healthy");
    assert_eq!(one["available"], true);

    // Without the filter both are listed, with their health.
    let all = wf.api.instances("disco").await;
    assert_eq!(all.len(), 2, "{all:?}");
    let dead_entry = all
        .iter()
        .find(|i| i["id"] == "dead-1")
        .expect("dead listed");
    assert_eq!(dead_entry["available"], false, "{dead_entry}");
    assert_eq!(dead_entry["tags"], serde_json::json!({"version": "1"}));
    assert_ne!(dead_entry["health"], "healthy");

    // The all-services view has it too; unknown services are a 404.
    let everything = wf.api.get("/v1/registry?healthy=true").await;
    let doc = everything.json();
    let disco = doc["services"]
        .as_array()
        .and_then(|l| l.iter().find(|s| s["service"] == "disco").cloned())
        .expect("disco in /v1/registry");
    assert_eq!(disco["instances"].as_array().unwrap().len(), 1);
    assert_eq!(
        wf.api.get("/v1/registry/nosuch").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(wf.get_ok("disco").await, "live");
}

// === 10. hot reload ===

/// Pads `text` with a comment to exactly `len` bytes.
fn pad_to(text: &str, len: usize) -> String {
    assert!(text.len() + 2 <= len, "{} > {len}", text.len());
    format!("{text}#{}\n", "-".repeat(len - text.len() - 2))
}

/// A GET on a fresh connection to `addr`, bounded.
async fn get_at(addr: SocketAddr, host: &str) -> Reply {
    within(10, "GET", support::get(addr, host, "/"))
        .await
        .unwrap_or_else(|e| panic!("GET {host}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_reload_applies_valid_files_keeps_streams_and_rejects_invalid_ones() {
    let old = Backend::start("old").await;
    let fresh = Backend::start("fresh").await;
    let chunks = 20;
    let streamer = slow_stream_backend(chunks, Duration::from_millis(125)).await;

    let v1 = format!(
        "listen = [\"127.0.0.1:0\"]\n\
         [admin]\nlisten = \"off\"\n\
         [services.old]\ninstances = [\"{}\"]\n\
         [services.stream]\ninstances = [\"{}\"]\n",
        old.addr, streamer.addr
    );
    // A new route and service; the streaming service's policy changes too.
    let v2_body = format!(
        "listen = [\"127.0.0.1:0\"]\n\
         [admin]\nlisten = \"off\"\n\
         [[routes]]\nhost = \"new.example\"\nservice = \"fresh\"\n\
         [services.old]\ninstances = [\"{}\"]\n\
         [services.stream]\nbalance = \"least_connections\"\ninstances = [\"{}\"]\n\
         [services.fresh]\ninstances = [\"{}\"]\n",
        old.addr, streamer.addr, fresh.addr
    );
    // Another route, for the SIGHUP step.
    let v3 = format!(
        "listen = [\"127.0.0.1:0\"]\n\
         [admin]\nlisten = \"off\"\n\
         [[routes]]\nhost = \"new.example\"\nservice = \"fresh\"\n\
         [[routes]]\nhost = \"hup.example\"\nservice = \"old\"\n\
         [services.old]\ninstances = [\"{}\"]\n\
         [services.stream]\nbalance = \"least_connections\"\ninstances = [\"{}\"]\n\
         [services.fresh]\ninstances = [\"{}\"]\n",
        old.addr, streamer.addr, fresh.addr
    );
    let v2 = pad_to(&v2_body, v3.len());
    // A typo: the same named error `wayfinder check` gives.
    let invalid = format!("{v3}[timeouts]\nconect = \"2s\"\n");

    let file = ConfigFile::new("registry-reload", &v1);
    let mut cmd = wayfinder(&["run", "--config"]);
    cmd.arg(&file.path);
    let mut proc = Proc::spawn(cmd);
    let addr = proc.listening(30).await.proxy();

    assert_eq!(get_at(addr, "old.svc").await.text(), "old");
    assert_ne!(get_at(addr, "new.example").await.status, StatusCode::OK);

    // A slow streaming response is in flight...
    let mut client = H1Client::connect(addr).await.unwrap();
    let resp = client
        .send(request("GET", "stream.svc", "/").body(empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let first = within(10, "first chunk", body.frame())
        .await
        .expect("a first frame")
        .expect("first chunk")
        .into_data()
        .expect("data");
    let stream = tokio::spawn(async move {
        let rest = body.collect().await.map(|b| b.to_bytes());
        (rest, Instant::now())
    });

    // ...when the file changes: the new route works after the next poll.
    let written = Instant::now();
    file.write(&v2);
    within(10, "new route after a file change", async {
        while get_at(addr, "new.example").await.status != StatusCode::OK {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let took = written.elapsed();
    println!("file change applied after {took:?} (polled every second)");
    assert!(took < Duration::from_millis(2500), "reload took {took:?}");
    assert!(
        !stream.is_finished(),
        "the stream ended before the reload; it does not span it"
    );
    assert_eq!(get_at(addr, "new.example").await.text(), "fresh");
    assert_eq!(get_at(addr, "old.svc").await.text(), "old");

    let (rest, _) = within(20, "stream completes", stream).await.unwrap();
    let rest = rest.expect("stream body across the reload");
    let mut whole = first.to_vec();
    whole.extend_from_slice(&rest);
    assert_eq!(
        whole.len(),
        stream_expected(chunks).len(),
        "stream cut short across the reload"
    );
    assert!(
        whole == stream_expected(chunks).as_bytes(),
        "stream corrupted"
    );
    proc.wait_log(5, "config reloaded").await;

    // SIGHUP reloads a change the poll cannot see (same size and mtime).
    file.replace_unnoticed(&v3);
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert_ne!(
        get_at(addr, "hup.example").await.status,
        StatusCode::OK,
        "the poll saw a change with the same size and mtime"
    );
    let hup = Instant::now();
    proc.signal(Signal::SIGHUP);
    within(5, "new route after SIGHUP", async {
        while get_at(addr, "hup.example").await.status != StatusCode::OK {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    println!("SIGHUP reload applied after {:?}", hup.elapsed());
    assert_eq!(get_at(addr, "hup.example").await.text(), "old");

    // An invalid file is rejected with the named error; the config stays.
    let rejected_before = proc.log().matches("config reload rejected").count();
    file.write(&invalid);
    proc.wait_log(10, "config reload rejected").await;
    let log = proc.log();
    assert!(log.contains("timeouts.conect"), "error not named:\n{log}");
    assert!(log.contains("unknown field"), "{log}");
    for (host, want) in [
        ("old.svc", "old"),
        ("new.example", "fresh"),
        ("hup.example", "old"),
    ] {
        let r = get_at(addr, host).await;
        assert_eq!(r.status, StatusCode::OK, "{host} after an invalid file");
        assert_eq!(r.text(), want);
    }
    // SIGHUP with the invalid file: rejected again, still serving.
    proc.signal(Signal::SIGHUP);
    within(10, "second rejection", async {
        while proc.log().matches("config reload rejected").count() < rejected_before + 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(get_at(addr, "new.example").await.text(), "fresh");

    proc.signal(Signal::SIGTERM);
    let status = proc.wait(20, "wayfinder exits after SIGTERM").await;
    assert!(status.success(), "{status}\n{}", proc.log());
}
