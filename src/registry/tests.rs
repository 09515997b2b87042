use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::diff::changed_services;
use super::*;
use crate::config::Protocol;

fn config(text: &str) -> Config {
    Config::parse(text, Path::new("t.toml")).unwrap()
}

fn spec(service: &str, port: u16) -> InstanceSpec {
    InstanceSpec::new(
        Arc::from(service),
        format!("127.0.0.1:{port}").parse().unwrap(),
    )
}

#[test]
fn first_snapshot_holds_static_instances() {
    let reg = Registry::new(&config(
        "[services.a]\ninstances = [\"127.0.0.1:1\", \"127.0.0.1:2\"]\n",
    ));
    let snap = reg.load();
    assert_eq!(snap.version(), 1);
    assert_eq!(snap.service("a").unwrap().members().len(), 2);
    assert_eq!(snap.instance_count(), 2);
}

#[test]
fn unchanged_inputs_do_not_publish() {
    let reg = Registry::new(&config("[services.a]\ninstances = [\"127.0.0.1:1\"]\n"));
    assert!(!reg.rebuild());
    reg.update_source("api", vec![]);
    assert!(!reg.rebuild(), "an empty source changes nothing");
    reg.update_source("api", vec![spec("a", 2)]);
    assert!(reg.rebuild());
    assert_eq!(reg.load().version(), 2);
}

#[test]
fn sources_merge_by_identity_and_first_source_wins() {
    let reg = Registry::new(&config("[services.a]\ninstances = [\"127.0.0.1:1\"]\n"));
    let mut dup = spec("a", 1);
    dup.weight = 7;
    reg.update_source("api", vec![dup, spec("a", 2), spec("b", 3)]);
    reg.rebuild();
    let snap = reg.load();
    let a = snap.service("a").unwrap();
    assert_eq!(a.members().len(), 2);
    assert_eq!(a.members()[0].weight, 1, "the config's entry wins");
    assert_eq!(&*a.members()[0].source, STATIC_SOURCE);
    assert_eq!(&*a.members()[1].source, "api");
    assert_eq!(snap.service("b").unwrap().balance(), Balance::RoundRobin);
}

#[test]
fn live_state_survives_swaps_and_leaves_with_the_instance() {
    let reg = Registry::new(&config("[services.a]\ninstances = [\"127.0.0.1:1\"]\n"));
    let before = reg.load_full();
    let state = before.service("a").unwrap().members()[0].instance.clone();
    let guard = InFlightGuard::new(state.clone());
    reg.update_source("api", vec![spec("a", 2)]);
    assert!(reg.rebuild());
    let after = reg.load_full();
    let same = &after.service("a").unwrap().members()[0].instance;
    assert!(
        Arc::ptr_eq(&state, same),
        "unchanged instance keeps its live state"
    );
    assert_eq!(same.in_flight(), 1);

    // Removing the instance: new snapshots stop listing it, the request in
    // flight still finishes against the old state.
    let empty = config("[services.a]\ninstances = [\"127.0.0.1:50\"]\n");
    reg.apply_config(&empty);
    reg.rebuild();
    let now = reg.load_full();
    assert!(now
        .service("a")
        .unwrap()
        .members()
        .iter()
        .all(|m| m.instance.addr().port() != 1));
    assert_eq!(state.in_flight(), 1);
    drop(guard);
    assert_eq!(state.in_flight(), 0);
}

/// Readers racing a writer that swaps between two different views must
/// always see one complete view: never an empty service, never a mix.
#[test]
fn concurrent_readers_never_see_a_torn_or_empty_view() {
    let reg = Registry::new(&config("[services.z]\ninstances = [\"127.0.0.1:50\"]\n"));
    let set_a: Vec<_> = (1..=5).map(|p| spec("a", p)).collect();
    let set_b: Vec<_> = (101..=103).map(|p| spec("a", p)).collect();
    reg.update_source("api", set_a.clone());
    assert!(reg.rebuild());
    let stop = Arc::new(AtomicBool::new(false));
    // Every reader is running before the writer starts, and reads at least
    // once after it stopped: on a busy machine a reader thread may not be
    // scheduled at all while the 2,000 swaps run.
    let started = Arc::new(std::sync::Barrier::new(5));
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let reg = reg.clone();
            let stop = stop.clone();
            let started = started.clone();
            std::thread::spawn(move || {
                let mut seen = 0u64;
                started.wait();
                loop {
                    let done = stop.load(Ordering::Relaxed);
                    let snap = reg.load();
                    let members = snap.service("a").expect("service present").members();
                    let ports: Vec<u16> =
                        members.iter().map(|m| m.instance.addr().port()).collect();
                    assert!(
                        ports == [1, 2, 3, 4, 5] || ports == [101, 102, 103],
                        "torn view {ports:?} at version {}",
                        snap.version()
                    );
                    assert_eq!(snap.instance_count(), ports.len() + 1, "plus the static z");
                    seen += 1;
                    if done {
                        return seen;
                    }
                }
            })
        })
        .collect();
    started.wait();
    for i in 0..2_000 {
        let set = if i % 2 == 0 {
            set_b.clone()
        } else {
            set_a.clone()
        };
        reg.report("api", set, Removals::Explicit);
        assert!(reg.rebuild());
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        assert!(r.join().unwrap() > 0);
    }
    assert_eq!(reg.load().version(), 2_002);
}

#[tokio::test]
async fn refresher_publishes_after_an_update() {
    let reg = Registry::new(&config("[services.z]\ninstances = [\"127.0.0.1:50\"]\n"));
    tokio::spawn(reg.clone().run_refresher());
    let mut versions = reg.watch();
    reg.update_source("api", vec![spec("a", 9)]);
    tokio::time::timeout(std::time::Duration::from_secs(10), versions.changed())
        .await
        .expect("published within 10 s")
        .unwrap();
    assert_eq!(*versions.borrow(), 2);
    assert_eq!(reg.load().service("a").unwrap().members().len(), 1);
}

#[test]
fn self_preservation_holds_back_mass_removals_until_released() {
    let reg = Registry::new(&config("[services.z]\ninstances = [\"127.0.0.1:50\"]\n"));
    reg.update_source("api", (1..=4).map(|p| spec("a", p)).collect());
    reg.rebuild();
    // Losing 3 of 4 at once without deregistrations: held back.
    reg.update_source("api", vec![spec("a", 1)]);
    reg.rebuild();
    assert_eq!(reg.load().service("a").unwrap().members().len(), 4);
    let status = reg
        .sources()
        .into_iter()
        .find(|s| &*s.name == "api")
        .unwrap();
    assert_eq!(status.held_back.len(), 3);
    assert_eq!(reg.release_held("api"), Some(3));
    reg.rebuild();
    assert_eq!(reg.load().service("a").unwrap().members().len(), 1);
    // Removing one of four is within the 50% guard.
    reg.update_source("api", (1..=4).map(|p| spec("a", p)).collect());
    reg.rebuild();
    reg.update_source("api", (1..=3).map(|p| spec("a", p)).collect());
    reg.rebuild();
    assert_eq!(reg.load().service("a").unwrap().members().len(), 3);
    // Emptying a service is held back; an explicit deregistration is not.
    reg.update_source("api", vec![]);
    reg.rebuild();
    assert_eq!(reg.load().service("a").unwrap().members().len(), 3);
    reg.report("api", vec![], Removals::Explicit);
    reg.rebuild();
    assert!(reg.load().service("a").is_none());
}

#[test]
fn service_index_moves_only_when_the_service_changes() {
    let reg = Registry::new(&config("[services.z]\ninstances = [\"127.0.0.1:50\"]\n"));
    reg.update_source("api", vec![spec("a", 1)]);
    reg.rebuild();
    let a1 = reg.load().service("a").unwrap().index();
    let z1 = reg.load().service("z").unwrap().index();
    reg.update_source("api", vec![spec("a", 1), spec("a", 2)]);
    reg.rebuild();
    assert!(reg.load().service("a").unwrap().index() > a1);
    assert_eq!(reg.load().service("z").unwrap().index(), z1);
}

#[test]
fn failing_source_keeps_its_set() {
    let reg = Registry::new(&config("[services.z]\ninstances = [\"127.0.0.1:50\"]\n"));
    reg.update_source("dns", vec![spec("a", 1)]);
    reg.rebuild();
    reg.source_failed("dns", "timeout".into());
    reg.rebuild();
    assert_eq!(reg.load().service("a").unwrap().members().len(), 1);
    let st = reg
        .sources()
        .into_iter()
        .find(|s| &*s.name == "dns")
        .unwrap();
    assert_eq!(st.state, "failing");
    assert_eq!(st.last_error.unwrap().1, "timeout");
}

#[test]
fn incremental_rebuilds_touch_only_changed_services() {
    let reg = Registry::new(&config(
        "[services.a]\ninstances = [\"127.0.0.1:1\"]\n\
         [services.b]\ninstances = [\"127.0.0.1:2\"]\n\
         [services.empty]\n",
    ));
    let before = reg.load_full();
    // Joins a configured service from another source, then a new service.
    reg.report(
        "api",
        vec![spec("a", 3), spec("c", 4), spec("c", 5)],
        Removals::Explicit,
    );
    assert!(reg.rebuild());
    let mid = reg.load_full();
    let ports = |snap: &Snapshot, s: &str| -> Vec<u16> {
        snap.service(s)
            .map(|e| {
                e.members()
                    .iter()
                    .map(|m| m.instance.addr().port())
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(ports(&mid, "a"), [1, 3]);
    assert_eq!(ports(&mid, "c"), [4, 5]);
    assert!(
        Arc::ptr_eq(before.service("b").unwrap(), mid.service("b").unwrap()),
        "an unchanged service keeps its entry"
    );
    assert!(mid.service("empty").is_some(), "configured services stay");
    let a3 = mid.service("a").unwrap().members()[1].instance.clone();

    // Leaves: "c" disappears, "a" shrinks back, and the leaver drains.
    reg.report("api", vec![], Removals::Explicit);
    assert!(reg.rebuild());
    let after = reg.load_full();
    assert_eq!(ports(&after, "a"), [1]);
    assert!(after.service("c").is_none());
    assert_eq!(a3.lifecycle(), Lifecycle::Removed);
    assert_eq!(
        after.service("a").unwrap().members()[0]
            .instance
            .lifecycle(),
        Lifecycle::Serving
    );
    assert!(Arc::ptr_eq(
        before.service("b").unwrap(),
        after.service("b").unwrap()
    ));
    assert!(!reg.rebuild(), "nothing left to publish");

    // A reload that changes nothing but the file's statics of "b".
    reg.apply_config(&config(
        "[services.a]\ninstances = [\"127.0.0.1:1\"]\n\
         [services.b]\ninstances = [\"127.0.0.1:2\", \"127.0.0.1:6\"]\n\
         [services.empty]\n",
    ));
    assert!(reg.rebuild());
    assert_eq!(ports(&reg.load(), "b"), [2, 6]);
    assert_eq!(ports(&reg.load(), "a"), [1]);
}

#[test]
fn changed_services_compare_sets_service_by_service() {
    let set = |v: &[(&str, u16)]| v.iter().map(|(s, p)| spec(s, *p)).collect::<Vec<_>>();
    let names = |v: Vec<Arc<str>>| {
        let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
        v.sort();
        v
    };
    let old = set(&[("a", 1), ("a", 2), ("b", 3)]);
    assert!(changed_services(&old, &old.clone()).is_empty());
    assert_eq!(
        names(changed_services(
            &old,
            &set(&[("a", 1), ("a", 2), ("c", 4)])
        )),
        ["b", "c"]
    );
    // Spread out (not one run per service): still compared per service.
    let spread = set(&[("a", 1), ("b", 3), ("a", 2)]);
    assert!(changed_services(&old, &spread).is_empty());
    assert_eq!(
        names(changed_services(&spread, &set(&[("a", 1), ("b", 3)]))),
        ["a"]
    );
}

/// Issue 12.2: a held-back removal shows on the member (why, since when),
/// keeps its start when reported again, and applies once `max_hold` passed.
#[test]
fn held_back_removal_is_shown_and_applies_after_max_hold() {
    let reg = Registry::new(&config(
        "[registry]\nmax_hold = \"2s\"\n[services.z]\ninstances = [\"127.0.0.1:50\"]\n",
    ));
    reg.update_source("api", vec![spec("a", 1)]);
    reg.rebuild();
    let index = reg.load().service("a").unwrap().index();
    let cause = |s: &InstanceSpec| format!("{} went quiet", s.addr);
    reg.report_because("api", vec![], Removals::Implicit, &cause);
    reg.rebuild();
    let snap = reg.load_full();
    let a = snap.service("a").unwrap();
    assert!(a.index() > index, "a hold changes the service's content");
    let held = a.members()[0].held.clone().expect("held back");
    assert!(
        held.reason.starts_with("127.0.0.1:1 went quiet; removal held back by self-preservation: it would leave service a without instances"),
        "{}",
        held.reason
    );
    assert_eq!(held.until_ms, held.since_ms + 2_000);
    let addr = "127.0.0.1:1".parse().unwrap();
    assert_eq!(reg.held_back("api", "a", addr), Some(held.clone()));
    assert_eq!(reg.next_hold_deadline(), Some(held.until_ms));
    // Reported again without it: the same hold, not a new one.
    reg.update_source("api", vec![spec("b", 7)]);
    reg.rebuild();
    let again = reg.load().service("a").unwrap().members()[0].held.clone();
    assert!(Arc::ptr_eq(&held, &again.unwrap()));

    assert_eq!(reg.apply_overdue_holds(held.until_ms - 1), 0);
    assert_eq!(reg.apply_overdue_holds(held.until_ms), 1);
    reg.rebuild();
    assert!(reg.load().service("a").is_none(), "removed after max_hold");
    assert_eq!(reg.held_back("api", "a", addr), None);
    assert_eq!(reg.next_hold_deadline(), None);
    assert!(reg.sources().iter().all(|s| s.held_back.is_empty()));

    // A held instance listed again is no longer held.
    reg.update_source("api", vec![spec("b", 7), spec("c", 3)]);
    reg.rebuild();
    reg.update_source("api", vec![spec("b", 7)]);
    reg.rebuild();
    assert!(reg.load().service("c").unwrap().members()[0].held.is_some());
    reg.update_source("api", vec![spec("b", 7), spec("c", 3)]);
    reg.rebuild();
    assert!(reg.load().service("c").unwrap().members()[0].held.is_none());
}

/// The refresher sleeps until the first hold ends (on the paused clock)
/// and then applies it, without any other input.
#[tokio::test(start_paused = true)]
async fn refresher_applies_a_hold_when_max_hold_passes() {
    let reg = Registry::new(&config(
        "[registry]\nmax_hold = \"30s\"\n[services.z]\ninstances = [\"127.0.0.1:50\"]\n",
    ));
    tokio::spawn(reg.clone().run_refresher());
    let limit = std::time::Duration::from_secs(5);
    reg.update_source("api", vec![spec("a", 1)]);
    assert!(reg.settled(limit).await);
    reg.update_source("api", vec![]);
    assert!(reg.settled(limit).await);
    let held = reg.load().service("a").unwrap().members()[0].held.clone();
    assert!(held.is_some(), "the last instance is held back");
    tokio::time::sleep(std::time::Duration::from_millis(29_900)).await;
    assert!(reg.load().service("a").is_some(), "still held at 29.9 s");
    let mut versions = reg.watch();
    tokio::time::timeout(std::time::Duration::from_secs(1), versions.changed())
        .await
        .expect("applied when max_hold passed")
        .unwrap();
    assert!(reg.load().service("a").is_none());
}

/// Observed removals from one service add up within a burst window of
/// ten seconds (on the paused clock) against the size it had when the
/// burst began; after the window a new burst starts.
#[tokio::test(start_paused = true)]
async fn removals_add_up_within_a_burst_window() {
    let reg = Registry::new(&config("[services.z]\ninstances = [\"127.0.0.1:50\"]\n"));
    let count = |reg: &Registry| {
        reg.rebuild();
        reg.load().service("a").unwrap().members().len()
    };
    let step = |s: u64| tokio::time::advance(std::time::Duration::from_secs(s));
    reg.update_source("api", (1..=4).map(|p| spec("a", p)).collect());
    assert_eq!(count(&reg), 4);
    reg.update_source("api", (1..=3).map(|p| spec("a", p)).collect());
    assert_eq!(count(&reg), 3, "1 of 4 leaves");
    step(5).await;
    reg.update_source("api", (1..=2).map(|p| spec("a", p)).collect());
    assert_eq!(count(&reg), 2, "2 of 4 within 5 s: 50% is not over 50%");
    step(4).await;
    reg.update_source("api", vec![spec("a", 1)]);
    assert_eq!(count(&reg), 2, "3 of 4 within 9 s: held back");
    step(2).await;
    reg.update_source("api", vec![spec("a", 1)]);
    assert_eq!(count(&reg), 1, "a new burst: 1 of 2");
    assert!(reg.sources().iter().all(|s| s.held_back.is_empty()));
}

/// An instance joining a running service ramps up over `slow_start` on the
/// paused clock: 10% of its share at first, linearly to all of it.
#[tokio::test(start_paused = true)]
async fn joining_instance_ramps_up_over_slow_start() {
    let reg = Registry::new(&config(
        "[services.a]\ninstances = [\"127.0.0.1:1\"]\nslow_start = \"10s\"\n",
    ));
    reg.update_source("api", vec![spec("a", 2)]);
    reg.rebuild();
    let snap = reg.load_full();
    let (present, joined) = (
        &snap.service("a").unwrap().members()[0].instance,
        &snap.service("a").unwrap().members()[1].instance,
    );
    let window = std::time::Duration::from_secs(10);
    let warmth = |i: &InstanceState| i.warmth(clock::now_ms(), window);
    assert_eq!(warmth(present), 1000, "there at start: no ramp");
    assert_eq!(warmth(joined), 100);
    tokio::time::advance(std::time::Duration::from_secs(5)).await;
    assert_eq!(warmth(joined), 500);
    tokio::time::advance(std::time::Duration::from_millis(4_999)).await;
    assert_eq!(warmth(joined), 999);
    tokio::time::advance(std::time::Duration::from_millis(1)).await;
    assert_eq!(warmth(joined), 1000);
}

/// Issue 12.4: an operator drains any instance, whatever its source; the
/// drain survives a config reload and ends only when cancelled.
#[test]
fn operator_drain_applies_to_any_instance_and_survives_reload() {
    let text = "[services.a]\ninstances = [\"127.0.0.1:1\", \"127.0.0.1:2\"]\n";
    let reg = Registry::new(&config(text));
    let one = "127.0.0.1:1".parse().unwrap();
    assert_eq!(reg.set_operator_drain("a", one, true), Ok(true));
    assert_eq!(reg.set_operator_drain("a", one, true), Ok(false));
    assert!(matches!(
        reg.set_operator_drain("a", "127.0.0.1:9".parse().unwrap(), true),
        Err(DrainError::UnknownInstance { .. })
    ));
    assert!(matches!(
        reg.set_operator_drain("nope", one, false),
        Err(DrainError::UnknownInstance { .. })
    ));
    reg.rebuild();
    let member = |reg: &Registry| {
        let snap = reg.load_full();
        let m = &snap.service("a").unwrap().members()[0];
        (
            m.operator_drain,
            m.instance.lifecycle() == Lifecycle::Draining,
        )
    };
    assert_eq!(member(&reg), (true, true));
    reg.apply_config(&config(&format!("{text}max_attempts = 3\n")));
    reg.rebuild();
    assert_eq!(member(&reg), (true, true), "kept across a reload");
    // Gone from the config and back: still drained.
    reg.apply_config(&config("[services.a]\ninstances = [\"127.0.0.1:2\"]\n"));
    reg.rebuild();
    assert_eq!(
        reg.set_operator_drain("a", "127.0.0.1:2".parse().unwrap(), false),
        Ok(false)
    );
    reg.apply_config(&config(text));
    reg.rebuild();
    assert_eq!(member(&reg), (true, true));
    assert_eq!(reg.operator_drains().len(), 1);
    assert_eq!(reg.set_operator_drain("a", one, false), Ok(true));
    reg.rebuild();
    assert_eq!(member(&reg), (false, false));
}

/// Issue 12.3: a registration's own passing check makes a new instance
/// start healthy (now or when it appears); a decided health is kept.
#[test]
fn vouched_instance_starts_healthy() {
    let reg = Registry::new(&config(
        "[services.a]\n[services.a.health]\nkind = \"tcp\"\ninterval = \"10s\"\n",
    ));
    reg.vouch_healthy("a", "127.0.0.1:1".parse().unwrap());
    reg.update_source("api", vec![spec("a", 1), spec("a", 2)]);
    reg.rebuild();
    let snap = reg.load_full();
    let m = snap.service("a").unwrap().members();
    assert_eq!(m[0].instance.health(), Health::Healthy);
    assert_eq!(m[1].instance.health(), Health::Unknown);
    reg.vouch_healthy("a", "127.0.0.1:2".parse().unwrap());
    assert_eq!(m[1].instance.health(), Health::Healthy);
    m[1].instance.set_health(Health::Unhealthy);
    reg.vouch_healthy("a", "127.0.0.1:2".parse().unwrap());
    assert_eq!(
        m[1].instance.health(),
        Health::Unhealthy,
        "the proxy's verdict stands"
    );
}

#[tokio::test]
async fn settled_waits_until_changes_are_published() {
    let reg = Registry::new(&config("[services.z]\ninstances = [\"127.0.0.1:50\"]\n"));
    tokio::spawn(reg.clone().run_refresher());
    assert!(reg.settled(std::time::Duration::from_secs(5)).await);
    reg.update_source("api", vec![spec("a", 9)]);
    assert!(reg.settled(std::time::Duration::from_secs(5)).await);
    assert_eq!(reg.load().service("a").unwrap().members().len(), 1);
    reg.report("api", vec![], Removals::Explicit);
    assert!(reg.settled(std::time::Duration::from_secs(5)).await);
    assert!(reg.load().service("a").is_none());
}

/// A failing source turns stale once `registry.max_staleness` has passed
/// since its last good report (on the paused clock); its set keeps
/// serving, and reporting again ends it.
#[tokio::test(start_paused = true)]
async fn failing_source_turns_stale_after_max_staleness() {
    let reg = Registry::new(&config(
        "[registry]\nmax_staleness = \"30s\"\n[services.z]\ninstances = [\"127.0.0.1:50\"]\n",
    ));
    let state = |reg: &Registry| {
        reg.sources()
            .into_iter()
            .find(|s| &*s.name == "dns")
            .unwrap()
            .state
    };
    reg.update_source("dns", vec![spec("a", 1)]);
    assert_eq!(state(&reg), "ok");
    reg.source_failed("dns", "timeout".into());
    assert_eq!(state(&reg), "failing");
    tokio::time::advance(std::time::Duration::from_secs(30)).await;
    assert_eq!(state(&reg), "failing", "30 s is not over max_staleness");
    tokio::time::advance(std::time::Duration::from_millis(1)).await;
    assert_eq!(state(&reg), "stale");
    reg.rebuild();
    assert_eq!(reg.load().service("a").unwrap().members().len(), 1);
    reg.update_source("dns", vec![spec("a", 1)]);
    assert_eq!(state(&reg), "ok");
}

#[test]
fn instances_declare_the_protocol_of_a_service_whose_config_does_not() {
    let reg = Registry::new(&config(
        "[services.a]\n[services.w]\nprotocol = \"http1\"\n",
    ));
    let tagged = |service: &str, port: u16, protocol: &str| {
        let mut s = spec(service, port);
        let tags = [("protocol".to_owned(), protocol.to_owned())];
        s.tags = Some(Arc::new(tags.into_iter().collect()));
        s
    };
    let protocol = |reg: &Registry, service: &str| {
        reg.load()
            .service(service)
            .unwrap()
            .policy()
            .upstream
            .protocol
    };
    // Declared by every tagged instance (an untagged one does not count),
    // on a configured service and on one only registrations name.
    reg.update_source(
        "api",
        vec![
            tagged("a", 1, "h2c"),
            spec("a", 2),
            tagged("b", 3, "h2c"),
            tagged("w", 4, "h2c"),
        ],
    );
    reg.rebuild();
    assert_eq!(protocol(&reg, "a"), Protocol::H2c);
    assert_eq!(protocol(&reg, "b"), Protocol::H2c);
    assert_eq!(protocol(&reg, "w"), Protocol::Http1, "the config writes it");
    // Instances that disagree, or declare what plain TCP cannot carry,
    // leave the service's own protocol.
    reg.update_source(
        "api",
        vec![
            tagged("a", 1, "h2c"),
            tagged("a", 2, "http1"),
            tagged("b", 3, "h2"),
        ],
    );
    reg.rebuild();
    assert_eq!(protocol(&reg, "a"), Protocol::Http1);
    assert_eq!(protocol(&reg, "b"), Protocol::Http1);
    // Incremental rebuilds (one service changed) apply it too.
    reg.update_source(
        "api",
        vec![
            tagged("a", 1, "h2c"),
            tagged("a", 2, "h2c"),
            tagged("b", 3, "h2"),
        ],
    );
    reg.rebuild();
    assert_eq!(protocol(&reg, "a"), Protocol::H2c);
}
