//! The registration API on the admin listener, end to end (issue 4):
//! registering (routable once the `PUT` is answered, idempotent),
//! deregistering, long polls, the bearer token, input validation, the drain
//! handshake and client-side discovery. TTL expiry and self-preservation are
//! in tests/registration_ttl.rs, hot reload of the config file in
//! tests/hot_reload.rs and `wayfinder register` in tests/registrar.rs.
//!
//! wayfinder runs in this process with its listeners on loopback port 0;
//! instances are real hyper servers.

mod support;

use std::time::{Duration, Instant};

use http::{header, StatusCode};

use support::{refused_addr, wait_until, within, AdminProxy, Api, Backend, Gate, H1Client, Reply};

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

// === 1. register -> routable ===

/// A registration is routable once its `PUT` is answered: the answer says
/// `routable` and the very next request through the proxy reaches the
/// instance. (How fast that is belongs in a benchmark, not here.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_is_routable_once_answered_and_registering_again_updates_it() {
    let wf = AdminProxy::start("", "").await;
    let mut backends = Vec::new();
    for n in 0..3 {
        let name = format!("quick{n}");
        let backend = Backend::start(&name).await;
        let mut proxy = H1Client::connect(wf.proxy).await.unwrap();
        let host = format!("{name}.svc");
        let before = proxy.get(&host, "/").await.unwrap();
        assert_eq!(
            before.status,
            StatusCode::NOT_FOUND,
            "routable before registering: {}",
            before.text()
        );

        let reply = wf
            .api
            .register(
                &name,
                &format!("i{n}"),
                &format!(r#"{{"address":"{}","ttl":"30s"}}"#, backend.addr),
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
        let doc = reply.json();
        // The answer waits for the snapshot that lists the instance (for a
        // second at most: a machine too loaded to publish within it gets
        // `routable: false` and is waited for below).
        if doc["proxy_health"]["routable"] == true {
            let r = proxy.get(&host, "/").await.unwrap();
            assert_eq!(
                (r.status, r.text()),
                (StatusCode::OK, name.clone()),
                "the answer said routable: {doc}"
            );
        }
        within(10, "the registration routes", async {
            loop {
                let r = proxy.get(&host, "/").await.unwrap();
                if r.status == StatusCode::OK {
                    assert_eq!(r.text(), name);
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        backends.push(backend);
    }

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
    let gate = Gate::new();
    let slow = Backend::builder("slow").gated(&gate).start().await;
    let fast = Backend::start("fast").await;
    wf.api.register_ok("dereg", "s1", slow.addr, "30s").await;

    // A request reaches the only instance, which holds it...
    let proxy = wf.proxy;
    let in_flight = tokio::spawn(async move { support::get(proxy, "dereg.svc", "/").await });
    wait_until(10, "slow request reaches its instance", || slow.hits() == 1).await;
    // ...a second instance joins, the first is deregistered meanwhile.
    wf.api.register_ok("dereg", "f1", fast.addr, "30s").await;
    let reply = wf.api.deregister("dereg", "s1").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(wf.api.addresses("dereg").await, vec![fast.addr.to_string()]);

    for _ in 0..10 {
        assert_eq!(wf.get_ok("dereg").await, "fast");
    }
    assert_eq!(slow.hits(), 1, "a deregistered instance got new requests");
    assert_eq!(fast.hits(), 10);

    // ...and answers it now: the request was not cut by the removal.
    assert_eq!(slow.answered(), 0);
    gate.open();
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

// === 4. long poll ===

/// A long poll on `path` with `index` and `wait`, sent in the background;
/// gives the reply and how long it took.
fn long_poll(api: &Api, path: String) -> tokio::task::JoinHandle<(Reply, Duration)> {
    let api = api.clone();
    tokio::spawn(async move {
        let started = Instant::now();
        let reply = api.get(&path).await;
        (reply, started.elapsed())
    })
}

/// Long polls return on a change with a larger index, and only then: a
/// poll the change did not wake would run into its `wait` (60 s here, far
/// beyond the bound the test waits for it), and one that returned early
/// would carry the old index.
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

    // A change returns the poll, with a larger index and the change in it.
    // (The pause gives the poll time to arrive first, so that it is the
    // change that wakes it; nothing is asserted about the pause itself.)
    let poll = long_poll(&wf.api, format!("/v1/registry/watched?index={n}&wait=60s"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    wf.api.register_ok("watched", "w2", two.addr, "60s").await;
    let (reply, _) = within(20, "long poll woken by a registration", poll)
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    let m = index_of(&reply);
    assert!(m > n, "index {m} not past {n}");
    assert_eq!(reply.json()["instances"].as_array().unwrap().len(), 2);

    // Nothing changes: it waits the full `wait` (not less) and answers the
    // same index.
    let (reply, took) = within(
        20,
        "long poll without a change",
        long_poll(&wf.api, format!("/v1/registry/watched?index={m}&wait=1s")),
    )
    .await
    .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(index_of(&reply), m);
    assert!(
        took >= Duration::from_millis(950),
        "returned after {took:?}"
    );
    // Heartbeats change nothing a watcher cares about: a poll running while
    // one is accepted still answers the same index when its wait ends.
    let poll = long_poll(&wf.api, format!("/v1/registry/watched?index={m}&wait=1s"));
    assert_eq!(
        wf.api.heartbeat("watched", "w1").await.status,
        StatusCode::OK
    );
    let (reply, _) = within(20, "long poll", poll).await.unwrap();
    assert_eq!(index_of(&reply), m);

    // The all-services poll follows the snapshot version the same way.
    let all = wf.api.get("/v1/registry").await;
    let v = index_of(&all);
    let poll = long_poll(&wf.api, format!("/v1/registry?index={v}&wait=60s"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        wf.api.deregister("watched", "w2").await.status,
        StatusCode::OK
    );
    let (reply, _) = within(20, "all-services poll woken by a deregistration", poll)
        .await
        .unwrap();
    assert!(index_of(&reply) > v);
    let watched = reply.json()["services"]
        .as_array()
        .and_then(|l| l.iter().find(|s| s["service"] == "watched").cloned())
        .expect("watched listed");
    assert_eq!(watched["instances"].as_array().unwrap().len(), 1);

    // The service disappearing counts as a change: 200, no instances.
    let last = wf.api.get("/v1/registry/watched").await;
    let k = index_of(&last);
    let poll = long_poll(&wf.api, format!("/v1/registry/watched?index={k}&wait=60s"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        wf.api.deregister("watched", "w1").await.status,
        StatusCode::OK
    );
    let (reply, _) = within(20, "long poll woken by the service leaving", poll)
        .await
        .unwrap();
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
    // The instance holds each request until the test opens the gate.
    let gate = Gate::new();
    let slow = Backend::builder("slow").gated(&gate).start().await;
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

    // A short wait times out (no earlier than asked), still not drained:
    // the request is held.
    let drain_started = Instant::now();
    let short = wf
        .api
        .get("/v1/registry/drain/d1?wait=drained&timeout=200ms")
        .await;
    assert!(drain_started.elapsed() >= Duration::from_millis(190));
    let doc = short.json();
    assert_eq!(doc["drained"], false, "{doc}");
    assert_eq!(doc["in_flight"], 1, "{doc}");

    let api = wf.api.clone();
    let waiter = tokio::spawn(async move {
        api.get("/v1/registry/drain/d1?wait=drained&timeout=25s")
            .await
    });

    // No new picks while draining.
    for _ in 0..10 {
        assert_eq!(wf.get_ok("drain").await, "fast");
    }
    assert_eq!(slow.hits(), 1, "a draining instance got new requests");

    // The instance answers: the waiter returns, drained. (Had it returned
    // before, while the request was held, it would show it in flight.)
    assert_eq!(slow.answered(), 0);
    gate.open();
    let drained = within(20, "wait=drained", waiter).await.unwrap();
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
