//! Active health checks end to end (issue 3): a failing check takes an
//! instance out of rotation and passing checks bring it back, a killed and
//! restarted instance, panic mode, slow start, flapping, impossible check
//! settings, and an instance removed from the config finishing what it has.
//! What happens to a request when an instance fails (retries, timeouts,
//! passive ejection) is in tests/retries.rs.
//!
//! Real hyper instances ([`support::Inst`]) and wayfinder run in-process on
//! loopback ports; state is observed through the admin API
//! (`GET /v1/services`), what the instances receive and what clients get.
//! Nothing is asserted against the clock beyond "not before": thresholds
//! are checked by counting the checks an instance received, and the
//! precise timing of the state machines (check intervals, the slow-start
//! ramp, ejection backoff) is unit-tested with paused time in `health`,
//! `balance` and `registry`.

mod support;

use std::path::Path;
use std::sync::atomic::Ordering::SeqCst;
use std::time::{Duration, Instant};

use http::StatusCode;
use serde_json::Value;

use support::{
    errors, health_check, inst_service, instance_in, parse_config, service_in, within, AdminProxy,
    H1Client, Inst, Load, FAIL, FLAP, PASS,
};
use wayfinder::config::Config;

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

/// The config text of a proxy with admin API for `tables` (which must
/// start with a table header), as [`AdminProxy::start`] builds it.
fn config_text(tables: &str) -> String {
    format!("listen = [\"127.0.0.1:0\"]\n[admin]\nlisten = \"127.0.0.1:0\"\n{tables}")
}

// === 1. active checks remove and re-admit ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_health_check_removes_then_readmits_without_client_errors() {
    within(60, "remove and re-admit", async {
        let (interval, healthy, unhealthy) = (100u64, 2u32, 3u32);
        let insts = [
            Inst::start("a").await,
            Inst::start("b").await,
            Inst::start("c").await,
        ];
        let wf = AdminProxy::start(
            "",
            &format!(
                "{}{}",
                inst_service(
                    "hc",
                    &[&insts[0], &insts[1], &insts[2]],
                    "slow_start = \"0s\"\n"
                ),
                health_check("hc", interval, healthy, unhealthy)
            ),
        )
        .await;
        wf.api.all_health("hc", "healthy", 20).await;
        let load = Load::start(wf.proxy, "hc.svc", 4);
        load.run_for(100).await;
        let b = &insts[1];

        // /healthz turns 503: out of rotation once `unhealthy` checks in a
        // row have failed, not before.
        let failed_before = b.failed_checks();
        b.set_health(FAIL);
        wf.api.health_is("hc", b.addr, "unhealthy", 20).await;
        let failed = b.failed_checks() - failed_before;
        println!("marked unhealthy after {failed} failed checks (threshold {unhealthy})");
        assert!(
            failed >= unhealthy as usize,
            "marked unhealthy after {failed} failed checks, threshold {unhealthy}"
        );
        let entry = wf.api.instance("hc", b.addr).await;
        assert_eq!(entry["available"], false, "{entry}");
        assert_eq!(entry["last_transition"]["to"], "unhealthy", "{entry}");
        let reason = entry["last_transition"]["reason"].as_str().unwrap_or("");
        assert!(
            reason.contains("3 consecutive checks failed") && reason.contains("503"),
            "transition reason: {reason:?}"
        );

        // Removed: once the requests in flight when it left have finished,
        // none of the next 200 reaches it.
        load.settle().await;
        let hits_removed = b.hits();
        load.run_for(200).await;
        assert_eq!(b.hits(), hits_removed, "an unhealthy instance got requests");

        // Passing again: re-admitted once `healthy` checks have passed.
        let passed_before = b.passed_checks();
        b.set_health(PASS);
        wf.api.health_is("hc", b.addr, "healthy", 20).await;
        let passed = b.passed_checks() - passed_before;
        assert!(
            passed >= healthy as usize,
            "re-admitted after {passed} passed checks, threshold {healthy}"
        );
        let entry = wf.api.instance("hc", b.addr).await;
        let reason = entry["last_transition"]["reason"].as_str().unwrap_or("");
        assert!(
            reason.contains("2 consecutive checks passed"),
            "transition reason: {reason:?}"
        );
        let hits_back = b.hits();
        load.run_for(150).await;
        assert!(b.hits() > hits_back, "re-admitted instance gets no traffic");

        let samples = load.finish().await;
        assert_eq!(errors(&samples), Vec::<String>::new(), "client errors");
    })
    .await;
}

// === 2. killed instance: no client errors, and back after a restart ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_instance_no_client_errors_and_restart_brings_it_back() {
    within(60, "kill and restart", async {
        let insts = [
            Inst::start("a").await,
            Inst::start("b").await,
            Inst::start("c").await,
        ];
        for i in &insts {
            i.ctl.delay_ms.store(2, SeqCst);
        }
        let wf = AdminProxy::start(
            "",
            &format!(
                "{}{}[services.pool.outlier]\nbase_ejection = \"500ms\"\n",
                inst_service(
                    "pool",
                    &[&insts[0], &insts[1], &insts[2]],
                    "slow_start = \"0s\"\n"
                ),
                health_check("pool", 100, 2, 2)
            ),
        )
        .await;
        wf.api.all_health("pool", "healthy", 20).await;
        let load = Load::start(wf.proxy, "pool.svc", 4);
        load.run_for(200).await;
        let b = &insts[1];

        let killed = Instant::now();
        b.stop().await;
        let mut unavailable = None;
        let unhealthy = within(20, "killed instance marked unhealthy", async {
            loop {
                let entry = wf.api.instance("pool", b.addr).await;
                if unavailable.is_none() && entry["available"] == false {
                    unavailable = Some(killed.elapsed());
                }
                if entry["health"] == "unhealthy" {
                    return killed.elapsed();
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        let unavailable = unavailable.unwrap_or(unhealthy);
        load.run_for(300).await;
        let hits_down = b.hits();

        let restarted = Instant::now();
        b.restart().await;
        wf.api.health_is("pool", b.addr, "healthy", 20).await;
        let readmitted = restarted.elapsed();
        within(20, "restarted instance gets traffic", async {
            while b.hits() == hits_down {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
        .await;
        let traffic = restarted.elapsed();
        load.run_for(200).await;
        let samples = load.finish().await;
        let errs = errors(&samples);

        println!("failover figures (3 instances, 4 clients, checks every 100ms, thresholds 2/2):");
        println!(
            "  requests: {}, client-visible errors: {}",
            samples.len(),
            errs.len()
        );
        println!(
            "  kill -> out of rotation (admin available=false): {} ms",
            ms(unavailable)
        );
        println!(
            "  kill -> marked unhealthy by active checks: {} ms",
            ms(unhealthy)
        );
        println!("  restart -> re-admitted (healthy): {} ms", ms(readmitted));
        println!("  restart -> first request served: {} ms", ms(traffic));

        // (The figures are for reading; how fast checks decide is unit-tested
        // with paused time.)
        assert_eq!(errs, Vec::<String>::new(), "clients saw errors");
        for i in &insts {
            assert!(i.hits() > 0, "{} got nothing", i.name);
        }
    })
    .await;
}

// === 4. panic mode ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_mode_spreads_over_failing_instances_and_off_gives_503() {
    within(60, "panic mode", async {
        let on = [
            Inst::start("on1").await,
            Inst::start("on2").await,
            Inst::start("on3").await,
        ];
        let off = [Inst::start("off1").await, Inst::start("off2").await];
        for i in on.iter().chain(&off) {
            i.set_health(FAIL);
        }
        let wf = AdminProxy::start("", &format!(
            "{}{}{}{}",
            inst_service("on", &[&on[0], &on[1], &on[2]], "panic_threshold = 50\n"),
            health_check("on", 100, 2, 2),
            inst_service("off", &[&off[0], &off[1]], "panic_threshold = 0\n"),
            health_check("off", 100, 2, 2),
        ))
        .await;
        wf.api.all_health("on", "unhealthy", 20).await;
        wf.api.all_health("off", "unhealthy", 20).await;
        let on_svc = wf.api.service("on").await;
        assert_eq!(on_svc["panic"], true, "{on_svc}");
        assert_eq!(wf.api.service("off").await["panic"], false);

        let mut client = H1Client::connect(wf.proxy).await.unwrap();
        for _ in 0..30 {
            let reply = client.get("on.svc", "/").await.unwrap();
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        }
        let hits: Vec<usize> = on.iter().map(Inst::hits).collect();
        assert_eq!(hits.iter().sum::<usize>(), 30);
        assert!(
            hits.iter().all(|&h| h >= 5),
            "panic mode should spread over all instances: {hits:?}"
        );

        for _ in 0..5 {
            let reply = client.get("off.svc", "/").await.unwrap();
            assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(
                reply.text(),
                "no available instance of service \"off\" (2 instances: 2 unhealthy, 0 ejected, 0 draining)\n"
            );
        }
        assert_eq!(off[0].hits() + off[1].hits(), 0);

        // One instance back above the threshold: panic mode ends and the
        // healthy instance takes everything.
        on[0].set_health(PASS);
        on[1].set_health(PASS);
        wf.api.health_is("on", on[1].addr, "healthy", 20).await;
        wf.api.health_is("on", on[0].addr, "healthy", 20).await;
        wf.api.until(20, "on: panic over", |doc| {
            service_in(doc, "on")["panic"] == false
        })
        .await;
        let stale = on[2].hits();
        for _ in 0..20 {
            let reply = client.get("on.svc", "/").await.unwrap();
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        }
        assert_eq!(
            on[2].hits(),
            stale,
            "unhealthy instance used outside panic mode"
        );
    })
    .await;
}

// === 6. slow start ===

/// Sends `n` GETs for `ramp.svc` one after another; how many `warm` served.
async fn warm_share(client: &mut H1Client, n: usize) -> f64 {
    let mut warm = 0;
    for _ in 0..n {
        let reply = client.get("ramp.svc", "/").await.unwrap();
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        if reply.text() == "warm" {
            warm += 1;
        }
    }
    warm as f64 / n as f64
}

/// A re-admitted instance starts below full weight, its weight rises to
/// full without falling back, and its share of requests follows: small
/// while its weight is low, even once the ramp is over. The shape of the
/// ramp (from 10%, linear over `slow_start`) is unit-tested with paused
/// time in `registry::instance` and `balance`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_start_ramps_a_readmitted_instances_share() {
    within(90, "slow start", async {
        let insts = [Inst::start("steady").await, Inst::start("warm").await];
        let warm = &insts[1];
        let wf = AdminProxy::start(
            "",
            &format!(
                "{}{}",
                inst_service(
                    "ramp",
                    &[&insts[0], &insts[1]],
                    "slow_start = \"4s\"\npanic_threshold = 0\n"
                ),
                health_check("ramp", 100, 2, 2)
            ),
        )
        .await;
        let weight = || async {
            wf.api.instance("ramp", warm.addr).await["weight_percent"]
                .as_u64()
                .expect("weight_percent")
        };
        wf.api.all_health("ramp", "healthy", 20).await;
        warm.set_health(FAIL);
        wf.api.health_is("ramp", warm.addr, "unhealthy", 20).await;
        warm.set_health(PASS);
        wf.api.health_is("ramp", warm.addr, "healthy", 20).await;
        let at_admission = weight().await;

        // Early in the ramp: every request of this batch saw a weight of at
        // most `early`% (read after it), so `warm` could take at most its
        // weight's share of them.
        let mut client = H1Client::connect(wf.proxy).await.unwrap();
        let share_early = warm_share(&mut client, 60).await;
        let early = weight().await;
        println!(
            "slow start: weight {at_admission}% at admission, {early}% after 60 requests \
             of which warm served {:.0}%",
            share_early * 100.0
        );
        assert!(at_admission < 100, "re-admitted at full weight");
        assert!(
            early < 100,
            "the 4 s ramp was over before 60 requests were sent: nothing to compare"
        );
        let bound = early as f64 / (100 + early) as f64 + 0.12;
        assert!(
            share_early <= bound,
            "warm served {share_early:.2} of the requests at weight {early}% (bound {bound:.2})"
        );

        // The weight rises to full, never falling on the way.
        let mut seen = vec![at_admission, early];
        within(30, "the ramp reaches full weight", async {
            while *seen.last().unwrap() < 100 {
                tokio::time::sleep(Duration::from_millis(50)).await;
                seen.push(weight().await);
            }
        })
        .await;
        assert!(
            seen.windows(2).all(|w| w[1] >= w[0]),
            "weight fell while ramping: {seen:?}"
        );

        // After the ramp: an even share.
        let share_after = warm_share(&mut client, 100).await;
        println!(
            "slow start: after the ramp warm served {:.0}%",
            share_after * 100.0
        );
        assert!(
            (0.40..=0.60).contains(&share_after),
            "after the ramp warm served {share_after:.2}"
        );
        assert!(
            share_early + 0.15 < share_after,
            "no ramp: {share_early:.2} then {share_after:.2}"
        );
    })
    .await;
}

// === 7. flapping ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flapping_instance_does_not_change_state() {
    within(60, "flapping", async {
        let insts = [
            Inst::start("stable").await,
            Inst::start("flap-up").await,
            Inst::start("flap-down").await,
        ];
        let (up, down) = (&insts[1], &insts[2]);
        down.set_health(FAIL);
        let interval = 150;
        let wf = AdminProxy::start(
            "",
            &format!(
                "{}{}",
                inst_service(
                    "flap",
                    &[&insts[0], &insts[1], &insts[2]],
                    "panic_threshold = 0\nslow_start = \"0s\"\n"
                ),
                health_check("flap", interval, 2, 2)
            ),
        )
        .await;
        wf.api.health_is("flap", up.addr, "healthy", 20).await;
        wf.api.health_is("flap", down.addr, "unhealthy", 20).await;
        let up_before = transition(&wf.api.instance("flap", up.addr).await);
        let down_before = transition(&wf.api.instance("flap", down.addr).await);
        up.set_health(FLAP);
        down.set_health(FLAP);
        let (up_checks, down_checks) = (up.checks(), down.checks());
        within(20, "20 checks of each flapping instance", async {
            while up.checks() < up_checks + 20 || down.checks() < down_checks + 20 {
                let svc = wf.api.service("flap").await;
                let (u, d) = (instance_in(&svc, up.addr), instance_in(&svc, down.addr));
                assert_eq!(u["health"], "healthy", "{u}");
                assert_eq!(transition(&u), up_before, "flapping instance changed state");
                assert_eq!(d["health"], "unhealthy", "{d}");
                assert_eq!(
                    transition(&d),
                    down_before,
                    "flapping instance changed state"
                );
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        })
        .await;
        // The healthy flapper keeps serving; the unhealthy one gets nothing.
        let mut client = H1Client::connect(wf.proxy).await.unwrap();
        for _ in 0..12 {
            let reply = client.get("flap.svc", "/").await.unwrap();
            assert_eq!(reply.status, StatusCode::OK);
        }
        assert!(up.hits() > 0);
        assert_eq!(down.hits(), 0);
    })
    .await;
}

/// An instance's last transition: what it changed to, why and when (not
/// the ever-growing `ago`).
fn transition(instance: &Value) -> (Value, Value, Value) {
    let t = &instance["last_transition"];
    (t["to"].clone(), t["reason"].clone(), t["at"].clone())
}

// === 8. bad health config ===

#[test]
fn impossible_health_config_is_rejected_with_the_key() {
    let base = "[services.bad]\ninstances = [\"127.0.0.1:9\"]\n[services.bad.health]\n";
    let cases = [
        (
            "kind = \"http\"\ninterval = \"1s\"\ntimeout = \"1s\"\n",
            "services.bad.health.timeout",
        ),
        (
            "kind = \"tcp\"\ninterval = \"1s\"\ntimeout = \"2s\"\n",
            "services.bad.health.timeout",
        ),
        (
            "kind = \"http\"\nhealthy_threshold = 0\n",
            "services.bad.health.healthy_threshold",
        ),
        (
            "kind = \"http\"\nunhealthy_threshold = 0\n",
            "services.bad.health.unhealthy_threshold",
        ),
        ("kind = \"grpc\"\n", "services.bad.health.kind"),
        (
            "kind = \"http\"\ninterval = \"1s\"\njitter = \"1s\"\n",
            "services.bad.health.jitter",
        ),
        (
            "kind = \"http\"\nexpect = [\"200-999\"]\n",
            "services.bad.health.expect[0]",
        ),
    ];
    for (health, key) in cases {
        let text = config_text(&format!("{base}{health}"));
        let err =
            Config::parse(&text, Path::new("bad.toml")).expect_err(&format!("accepted: {health}"));
        let shown = err.to_string();
        assert!(
            shown.contains(key),
            "{health:?}: error {shown:?} does not name {key}"
        );
        assert!(shown.starts_with("bad.toml:"), "{shown}");
    }
}

// === 9. draining on removal ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_instance_finishes_in_flight_request_and_gets_no_new_ones() {
    within(60, "drain on removal", async {
        let insts = [Inst::start("gone").await, Inst::start("kept").await];
        let (gone, kept) = (&insts[0], &insts[1]);
        // Requests for /slow are held until the test lets them go.
        for i in &insts {
            i.ctl.hold_slow.store(true, SeqCst);
        }
        let wf = AdminProxy::start("", &inst_service("drain", &[gone, kept], "")).await;
        // Two slow requests: round robin puts one on each instance.
        let slow = |addr| tokio::spawn(support::get(addr, "drain.svc", "/slow"));
        let (r1, r2) = (slow(wf.proxy), slow(wf.proxy));
        support::wait_until(20, "one slow request on each", || {
            gone.hits() == 1 && kept.hits() == 1
        })
        .await;

        let removed = parse_config(&config_text(&inst_service("drain", &[kept], "")));
        wf.running().registry.apply_config(&removed);
        wf.api
            .until(20, "drain: gone removed", |doc| {
                instance_in(&service_in(doc, "drain"), gone.addr).is_null()
            })
            .await;
        let mut client = H1Client::connect(wf.proxy).await.unwrap();
        for _ in 0..20 {
            let reply = client.get("drain.svc", "/").await.unwrap();
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
            assert_eq!(reply.text(), "kept");
        }
        assert_eq!(gone.hits(), 1, "a removed instance got a new request");
        assert!(
            gone.conns() > 0,
            "the removed instance's connection closed early"
        );

        // Let the held requests go: both complete, the removed instance's too.
        for i in &insts {
            i.ctl.slow_gate.open();
        }
        let mut bodies = Vec::new();
        for r in [r1, r2] {
            let reply = within(20, "held request", r)
                .await
                .unwrap()
                .expect("slow request completed");
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
            bodies.push(reply.text());
        }
        bodies.sort();
        assert_eq!(bodies, ["gone", "kept"], "the in-flight request was cut");
        // Its connections close once the last request on it has finished.
        support::wait_until(20, "connections to the removed instance closed", || {
            gone.conns() == 0
        })
        .await;
        assert_eq!(gone.hits(), 1);
    })
    .await;
}
