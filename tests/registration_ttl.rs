//! Registration TTLs end to end (issue 4): an instance that stops
//! heartbeating leaves; self-preservation holds back the removal of the
//! last instance of a service, or of a burst of expiries, until an operator
//! releases it or the registration itself is deregistered.
//!
//! wayfinder runs in this process with its listeners on loopback port 0;
//! instances are real hyper servers. What is asserted is what the admin API
//! and the proxy show once an event has happened (a registration lapsed, a
//! later update was applied), never after a fixed sleep; the precise timing
//! of the expiry sweep and of the burst window is unit-tested with paused
//! time in `registry`.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::StatusCode;

use support::{refused_addr, wait_until, within, AdminProxy, Api, Backend};

// === 3. TTL ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_lapse_removes_an_instance_that_stops_heartbeating() {
    let wf = AdminProxy::start("", "").await;
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let lapsing = Backend::start("lapsing").await;
    let first_registered = Instant::now();
    wf.api.register_ok("ttl", "a", a.addr, "1s").await;
    wf.api.register_ok("ttl", "b", b.addr, "1s").await;

    // a and b heartbeat every 100 ms; `lapsing` never does. Each round in
    // which both heartbeats are accepted is recorded.
    let failures = Arc::new(AtomicUsize::new(0));
    let accepted_at = Arc::new(Mutex::new(first_registered));
    let beats = {
        let (api, failures, accepted_at) = (wf.api.clone(), failures.clone(), accepted_at.clone());
        tokio::spawn(async move {
            loop {
                let mut ok = true;
                for id in ["a", "b"] {
                    if api.heartbeat("ttl", id).await.status != StatusCode::OK {
                        failures.fetch_add(1, SeqCst);
                        ok = false;
                    }
                }
                if ok {
                    *accepted_at.lock().unwrap() = Instant::now();
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
        .wait_addresses(15, "ttl", "the lapsed instance leaves", |a| a.len() == 2)
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

    // The heartbeating ones outlive their 1 s TTL several times over: their
    // heartbeats are still accepted (a lapsed registration answers 404, as
    // above) 2.5 s after they registered.
    wait_until(30, "heartbeats accepted 2.5 TTLs after registering", || {
        *accepted_at.lock().unwrap() >= first_registered + Duration::from_millis(2500)
    })
    .await;
    assert_eq!(failures.load(SeqCst), 0, "heartbeats failed");
    assert_eq!(wf.api.addresses("ttl").await, want);
    beats.abort();
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
    // Still held after later updates of the api source (each one also
    // runs the expiry sweep again).
    for n in 0..2 {
        later_update(&wf, n).await;
        assert_eq!(
            wf.api.addresses("lonely").await,
            vec![lonely.addr.to_string()]
        );
        assert_eq!(wf.api.json("/v1/registry/lonely/l1").await["expired"], true);
    }

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
            15,
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
    within(15, "registration lapses", async {
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
        .wait_addresses(15, "other", "o2 deregistered", |a| a.len() == 1)
        .await;
    // (And a later update on top, in case the removal came a step late.)
    later_update(&wf, 0).await;
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
        .wait_addresses(15, "lonely", "l1 deregistered", <[String]>::is_empty)
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

    // Once all three have lapsed and the pool shows it: each lapsed
    // instance is either removed or held back (still listed), and at most
    // half of the 4 were removed. How the expiries group into sweeps
    // decides how many are held (1 to 3); without the burst adding up they
    // would all be removed, one sweep at a time (1 of 4, 1 of 3, 1 of 2).
    let keeper_addr = keeper.addr.to_string();
    let lapsing_addrs: Vec<String> = lapsing.iter().map(|b| b.addr.to_string()).collect();
    let (left, held) = within(15, "the burst of expiries applied", async {
        loop {
            let mut lapsed = 0;
            for i in 0..3 {
                let r = wf.api.get(&format!("/v1/registry/burst/l{i}")).await;
                if r.status == StatusCode::NOT_FOUND || r.json()["expired"] == true {
                    lapsed += 1;
                }
            }
            let left = wf.api.addresses("burst").await;
            let held: Vec<String> = wf.api.source("api").await["held_back"]
                .as_array()
                .unwrap()
                .iter()
                .map(|h| {
                    let h = h.as_str().unwrap();
                    h.strip_prefix("burst ").unwrap_or(h).to_owned()
                })
                .collect();
            let mut want: Vec<String> = held.clone();
            want.push(keeper_addr.clone());
            want.sort();
            if lapsed == 3 && left == want {
                return (left, held);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    println!("after a burst of 3 expiries of 4: listed {left:?}, held back {held:?}");
    assert!(
        held.iter().all(|h| lapsing_addrs.contains(h)),
        "held back something else: {held:?}"
    );
    assert!(
        !held.is_empty(),
        "a burst of TTL expiries removed 3 of 4 instances (more than 50%): left {left:?}"
    );
    assert!(left.contains(&keeper_addr), "{left:?}");
}

/// An update of the api source that the test can see applied: registers
/// `witness-{n}` (a fresh service) and waits until it is listed. Whatever
/// an update of the source would do to a held-back removal has been done
/// once this returns; the registration also runs the expiry sweep again.
async fn later_update(wf: &AdminProxy, n: usize) {
    let (_hold, addr) = refused_addr();
    let service = format!("witness-{n}");
    wf.api.register_ok(&service, "w", addr, "60s").await;
    wf.api
        .wait_addresses(15, &service, "the later update applied", |a| a.len() == 1)
        .await;
}
