//! What happens to a request when an instance fails, end to end (issue 3):
//! a request that reached an instance is not replayed unless idempotent, a
//! GET is retried on another instance, the retry budget caps retries and
//! counts the requests served before, and a hanging instance gets a 504 at
//! the configured bound and is ejected (passive health). Active health
//! checks are in tests/health_checks.rs.
//!
//! Real hyper instances and wayfinder run in-process on loopback ports;
//! every retry is seen in the `x-wayfinder-debug` header or in what the
//! instances received.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::StatusCode;

use support::{
    backend_of, empty, inst_service, post_order, refused_addr, request, service_at, within,
    AdminProxy, Backend, H1Client, Inst, Reply,
};

// === 3. hanging instance: 504 at the bound, then ejected ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_instance_times_out_with_504_and_is_ejected() {
    within(60, "hanging instance", async {
        let insts = [
            Inst::start("hang").await,
            Inst::start("ok1").await,
            Inst::start("ok2").await,
        ];
        let hang = &insts[0];
        hang.ctl.delay_ms.store(60_000, SeqCst);
        let wf = AdminProxy::start(
            "",
            &inst_service(
                "stuck",
                &[&insts[0], &insts[1], &insts[2]],
                "[services.stuck.timeouts]\nresponse_header = \"300ms\"\n\
             [services.stuck.outlier]\nconsecutive_failures = 2\nbase_ejection = \"30s\"\n\
             max_ejection = \"30s\"\n",
            ),
        )
        .await;
        let mut client = H1Client::connect(wf.proxy).await.unwrap();
        let mut timeouts = Vec::new();
        let mut served = BTreeMap::<String, usize>::new();
        for _ in 0..30 {
            let started = Instant::now();
            let reply = client.get("stuck.svc", "/").await.unwrap();
            let took = started.elapsed();
            match reply.status {
                StatusCode::OK => *served.entry(backend_of(&reply)).or_default() += 1,
                StatusCode::GATEWAY_TIMEOUT => {
                    assert_eq!(
                        reply.text(),
                        format!(
                            "service \"stuck\" instance {} sent no response within 300ms\n",
                            hang.addr
                        )
                    );
                    timeouts.push(took);
                }
                other => panic!("unexpected {other}: {}", reply.text()),
            }
        }
        println!("504 after: {timeouts:?}");
        assert_eq!(
            timeouts.len(),
            2,
            "two timeouts in a row eject the instance (consecutive_failures = 2)"
        );
        // Not before the bound (when after it is the timer's business,
        // unit-tested with paused time).
        for took in &timeouts {
            assert!(
                *took >= Duration::from_millis(290),
                "504 after {took:?}, configured 300ms"
            );
        }
        assert_eq!(
            hang.hits(),
            2,
            "the hanging instance got traffic after ejection"
        );
        assert_eq!(served.values().sum::<usize>(), 28, "{served:?}");
        assert!(
            served.contains_key("ok1") && served.contains_key("ok2"),
            "{served:?}"
        );
        let entry = wf.api.instance("stuck", hang.addr).await;
        assert_eq!(entry["available"], false, "{entry}");
        assert!(entry["ejected_for_ms"].as_u64().is_some(), "{entry}");
        assert_eq!(entry["ejections"], 1, "{entry}");
        assert_eq!(entry["last_transition"]["to"], "ejected", "{entry}");
    })
    .await;
}

// === 5. retries: POST not replayed, GET retried, the budget caps ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_is_not_replayed_after_reaching_an_instance() {
    within(30, "POST not replayed", async {
        let sinks = [
            Backend::close_after_request("s1").await,
            Backend::close_after_request("s2").await,
        ];
        let addrs = [sinks[0].addr, sinks[1].addr];
        let wf = AdminProxy::start(
            "",
            &format!("{}max_attempts = 3\n", service_at("sink", None, &addrs)),
        )
        .await;
        let reply = post_order(wf.proxy, "sink.svc").await.unwrap();
        assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
        assert!(
            reply.text().starts_with("service \"sink\" unreachable: "),
            "{}",
            reply.text()
        );
        assert_eq!(
            sinks[0].hits() + sinks[1].hits(),
            1,
            "the POST was replayed"
        );

        // Contrast: a bodyless GET that reached an instance is retried on
        // the other one; a bodyless POST is not idempotent, so it is not.
        let reply = support::get(wf.proxy, "sink.svc", "/x").await.unwrap();
        assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "GET for contrast");
        let before = sinks[0].hits() + sinks[1].hits();
        assert_eq!(before, 3, "a GET is retried on the other instance");
        let mut client = H1Client::connect(wf.proxy).await.unwrap();
        let post = request("POST", "sink.svc", "/empty")
            .header("content-length", "0")
            .body(empty())
            .unwrap();
        let reply = client.request(post).await.unwrap();
        assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
        assert_eq!(
            sinks[0].hits() + sinks[1].hits(),
            before + 1,
            "bodyless POST replayed"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_is_retried_on_another_instance_after_connect_failure() {
    within(30, "GET retried", async {
        let (_hold, dead) = refused_addr();
        let live = Inst::start("live").await;
        // Outlier detection off, so the dead instance stays in rotation and
        // every other request tries it first.
        let wf = AdminProxy::start(
            "",
            &format!(
                "[proxy]\ndebug_header = true\n{}max_attempts = 3\n\
             [services.retry.outlier]\nconnect_failures = 0\nconsecutive_failures = 0\n\
             [services.retry.retry_budget]\nmin_per_second = 50\n",
                service_at("retry", None, &[dead, live.addr])
            ),
        )
        .await;
        let mut client = H1Client::connect(wf.proxy).await.unwrap();
        let mut retried = 0;
        for _ in 0..6 {
            let reply = client.get("retry.svc", "/").await.unwrap();
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
            assert_eq!(reply.text(), "live");
            let debug = reply
                .headers
                .get("x-wayfinder-debug")
                .expect("debug header")
                .to_str()
                .unwrap()
                .to_owned();
            let attempts: Vec<&str> = debug.split("; ").collect();
            let last = format!("attempt {} {} 200", attempts.len(), live.addr);
            assert_eq!(attempts.last().copied(), Some(last.as_str()), "{debug}");
            match attempts.len() {
                1 => {}
                2 => {
                    let first = format!("attempt 1 {dead} connect failed");
                    assert!(attempts[0].starts_with(&first), "{debug}");
                    retried += 1;
                }
                _ => panic!("more attempts than instances: {debug}"),
            }
        }
        // (Retry picks advance the round-robin cursor too, so with two
        // instances the dead one may come first for every request.)
        assert!(
            retried >= 3,
            "the dead instance was tried {retried} times in 6 requests"
        );
        assert_eq!(live.hits(), 6);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_budget_caps_retries() {
    within(60, "retry budget", async {
        let resets = [
            Backend::close_after_request("r1").await,
            Backend::close_after_request("r2").await,
            Backend::close_after_request("r3").await,
        ];
        let addrs: Vec<SocketAddr> = resets.iter().map(|b| b.addr).collect();
        let wf = AdminProxy::start(
            "",
            &format!(
                "{}max_attempts = 3\n\
             [services.budget.outlier]\nconnect_failures = 0\nconsecutive_failures = 0\n\
             [services.budget.retry_budget]\npercent = 20\nmin_per_second = 0\n",
                service_at("budget", None, &addrs)
            ),
        )
        .await;
        let requests = 200usize;
        let next = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let (next, addr) = (next.clone(), wf.proxy);
            tasks.push(tokio::spawn(async move {
                let mut statuses = Vec::new();
                while next.fetch_add(1, SeqCst) < requests {
                    let reply = support::get(addr, "budget.svc", "/").await.unwrap();
                    statuses.push(reply.status);
                }
                statuses
            }));
        }
        let mut statuses = Vec::new();
        for t in tasks {
            statuses.extend(t.await.unwrap());
        }
        assert_eq!(statuses.len(), requests);
        assert!(
            statuses.iter().all(|s| *s == StatusCode::BAD_GATEWAY),
            "{statuses:?}"
        );
        let hits: usize = resets.iter().map(Backend::hits).sum();
        let retries = hits - requests;
        let svc = wf.api.service("budget").await;
        let refused = svc["retries_refused"].as_u64().unwrap_or(0);
        println!(
            "retry budget: {requests} requests, {retries} retries ({:.1}%), {refused} refused",
            retries as f64 * 100.0 / requests as f64
        );
        assert!(retries > 0, "the budget allowed no retry at all");
        assert!(
            retries <= requests / 5 + 3,
            "{retries} retries for {requests} requests: over the 20% budget"
        );
        assert!(refused > 0, "{svc}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_budget_counts_requests_served_before_the_first_retry() {
    // "retries <= percent of requests over the last ~10 s" (README): a
    // service that just served 100 requests may retry the next failure.
    within(30, "retry budget window", async {
        let insts = [Inst::start("up").await, Inst::start("down").await];
        let wf = AdminProxy::start(
            "",
            &format!(
                "[proxy]\ndebug_header = true\n{}",
                inst_service(
                    "fresh",
                    &[&insts[0], &insts[1]],
                    "[services.fresh.retry_budget]\npercent = 20\nmin_per_second = 0\n",
                )
            ),
        )
        .await;
        let mut client = H1Client::connect(wf.proxy).await.unwrap();
        for _ in 0..100 {
            let reply = client.get("fresh.svc", "/").await.unwrap();
            assert_eq!(reply.status, StatusCode::OK);
        }
        insts[1].stop().await;
        // The next two requests: round robin gives one of them the stopped
        // instance first; it is retried on the other, and says so.
        let mut attempts = Vec::new();
        for _ in 0..2 {
            let reply = client.get("fresh.svc", "/").await.unwrap();
            assert_eq!(
                reply.status,
                StatusCode::OK,
                "retry refused although 100 requests were served just before: {}",
                reply.text()
            );
            assert_eq!(reply.text(), "up");
            attempts.push(debug_attempts(&reply));
        }
        let down = insts[1].addr;
        let retried: Vec<&Vec<String>> = attempts.iter().filter(|a| a.len() == 2).collect();
        assert_eq!(retried.len(), 1, "one request needed a retry: {attempts:?}");
        assert!(
            retried[0][0].starts_with(&format!("attempt 1 {down} ")),
            "{attempts:?}"
        );
        assert_eq!(
            retried[0][1],
            format!("attempt 2 {} 200", insts[0].addr),
            "{attempts:?}"
        );
    })
    .await;
}

/// The attempts an `x-wayfinder-debug` header lists (`proxy.debug_header`).
fn debug_attempts(reply: &Reply) -> Vec<String> {
    reply
        .headers
        .get("x-wayfinder-debug")
        .expect("debug header")
        .to_str()
        .unwrap()
        .split("; ")
        .map(str::to_owned)
        .collect()
}
