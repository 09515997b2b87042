//! Lifecycle correctness (issue 12): draining versus panic mode, the last
//! instance's TTL under self-preservation (`registry.max_hold`), one state
//! per instance in every admin view, registrations that answer with the
//! proxy's real view of the instance (`proxy_health`), and the operator's
//! drain of any instance across reloads and restarts.
//!
//! Everything is real: wayfinder in-process ([`AdminProxy`]) or as the
//! binary ([`Proc`]), hyper instances on loopback ports picked at run time.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use http::{Response, StatusCode};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use nix::sys::signal::Signal;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use support::{
    full, temp_path, wayfinder, within, AdminProxy, Api, Backend, Body, ConfigFile, Proc, Reply,
};

const TOKEN: &str = "lifecycle-token";

// === helpers ===

/// An instance that answers its name on every path but `/healthz`, which
/// answers `healthz` (a status), counting the requests that are not checks.
struct Checked {
    addr: SocketAddr,
    served: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Checked {
    async fn start(name: &'static str, healthz: StatusCode) -> Checked {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let served = Arc::new(AtomicUsize::new(0));
        let count = served.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let count = count.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let count = count.clone();
                        async move {
                            let (status, body) = if req.uri().path() == "/healthz" {
                                (healthz, "healthz")
                            } else {
                                count.fetch_add(1, SeqCst);
                                (StatusCode::OK, name)
                            };
                            let mut resp = Response::new(full(body));
                            *resp.status_mut() = status;
                            Ok::<Response<Body>, Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Checked { addr, served, task }
    }
}

impl Drop for Checked {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The entry for `addr` in a list of instances.
fn entry(list: &Value, addr: SocketAddr) -> Value {
    list.as_array()
        .and_then(|l| l.iter().find(|i| i["address"] == addr.to_string()))
        .cloned()
        .unwrap_or_else(|| panic!("no instance {addr} in {list}"))
}

/// The instance `addr` of `service` in `GET /v1/services`.
fn in_services(doc: &Value, service: &str, addr: SocketAddr) -> Value {
    let svc = doc["services"]
        .as_array()
        .and_then(|l| l.iter().find(|s| s["name"] == service))
        .unwrap_or_else(|| panic!("no service {service} in {doc}"));
    entry(&svc["instances"], addr)
}

/// The instance `addr` of `service` in `GET /v1/registry`.
fn in_registry(doc: &Value, service: &str, addr: SocketAddr) -> Value {
    let svc = doc["services"]
        .as_array()
        .and_then(|l| l.iter().find(|s| s["service"] == service))
        .unwrap_or_else(|| panic!("no service {service} in {doc}"));
    entry(&svc["instances"], addr)
}

/// The fields of an instance's state that every view must show alike
/// (times that run are left out; `since` is kept).
fn state_of(v: &Value) -> Value {
    let mut held = v["held_back"].clone();
    if let Some(h) = held.as_object_mut() {
        h.remove("held_for_s");
        h.remove("applies_in_s");
    }
    serde_json::json!({
        "health": v["health"],
        "available": v["available"],
        "routable": v["routable"],
        "draining": v["draining"],
        "drained_by": v["drained_by"],
        "held_back": held,
        "proxy_health": v["proxy_health"],
    })
}

/// `status` of a call, or the test fails showing the body.
fn expect(reply: Reply, status: StatusCode, what: &str) -> Reply {
    assert_eq!(reply.status, status, "{what}: {}", reply.text());
    reply
}

/// The bodies of `n` GETs for `service` through the proxy at `proxy`.
async fn bodies(proxy: SocketAddr, service: &str, n: usize) -> Vec<String> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let reply = within(
            10,
            "GET",
            support::get(proxy, &format!("{service}.svc"), "/"),
        )
        .await
        .unwrap_or_else(|e| panic!("GET {service}.svc: {e}"));
        out.push(if reply.status == StatusCode::OK {
            reply.text()
        } else {
            format!("{}", reply.status.as_u16())
        });
    }
    out
}

// === 1. panic mode never reaches draining instances ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_mode_sends_nothing_to_draining_instances() {
    let wf = AdminProxy::start("", "").await;
    let g1 = Backend::start("g1").await;
    let g2 = Backend::start("g2").await;
    let g3 = Backend::start("g3").await;
    wf.api.register_ok("files", "g1", g1.addr, "60s").await;
    wf.api.register_ok("files", "g2", g2.addr, "60s").await;
    wf.api.register_ok("files", "g3", g3.addr, "60s").await;
    for id in ["g1", "g2"] {
        let path = format!("/v1/registry/files/{id}/drain");
        expect(
            wf.api.call("PUT", &path, None).await,
            StatusCode::OK,
            "drain",
        );
        let drained = wf
            .api
            .json(&format!("/v1/registry/files/{id}?wait=drained&timeout=5s"))
            .await;
        assert_eq!(drained["drained"], true, "{drained}");
    }

    // Two of three draining is not a reason for panic mode: the one left is
    // all of the instances that count.
    let got = bodies(wf.proxy, "files", 6).await;
    assert_eq!(got, vec!["g3"; 6], "requests went to draining instances");
    let services = wf.api.json("/v1/services").await;
    let files = services["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "files")
        .unwrap()
        .clone();
    assert_eq!(files["panic"], false, "{files}");

    // The last one fails too: panic mode widens the choice to failing
    // instances, never to draining ones.
    g3.stop().await;
    let got = bodies(wf.proxy, "files", 6).await;
    assert!(
        got.iter().all(|b| b != "g1" && b != "g2"),
        "panic mode sent requests to draining instances: {got:?}"
    );
    assert_eq!((g1.hits(), g2.hits()), (0, 0));
}

// === 2. the last instance's TTL ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_instance_expiry_is_held_with_reason_then_removed_after_max_hold() {
    // A max_hold long enough for the checks of the held state below to run
    // inside it on a loaded machine.
    let wf = AdminProxy::start("", "[registry]\nmax_hold = \"3s\"\n").await;
    let lonely = Backend::start("lonely").await;
    wf.api
        .register_ok("lonely", "l1", lonely.addr, "300ms")
        .await;
    assert_eq!(wf.get_ok("lonely").await, "lonely");

    // The TTL lapses: the registration shows as expired and held, with why
    // and since when, while the proxy keeps routing to it.
    let reg = within(10, "registration shows as expired", async {
        loop {
            let reply = wf.api.get("/v1/registry/lonely/l1").await;
            let doc = expect(reply, StatusCode::OK, "expired but held").json();
            if doc["expired"] == true {
                return doc;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let held = &reg["held_back"];
    let reason = held["reason"].as_str().unwrap_or_else(|| panic!("{reg}"));
    assert!(
        reason.contains("registration l1 expired: no heartbeat within its TTL of 300ms")
            && reason.contains("self-preservation")
            && reason.contains("without instances"),
        "{reason}"
    );
    assert!(held["since"].as_f64().unwrap() > 1.0e9, "{held}");
    assert!(held["applies_in_s"].as_f64().unwrap() <= 3.0, "{held}");
    let listed = wf.api.instances("lonely").await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["held_back"]["reason"], held["reason"]);
    assert_eq!(listed[0]["held_back"]["since"], held["since"]);
    let source = wf.api.source("api").await;
    assert_eq!(source["held"][0]["reason"], held["reason"], "{source}");
    assert_eq!(source["held"][0]["id"], "l1", "{source}");
    assert_eq!(wf.get_ok("lonely").await, "lonely");

    // After max_hold the removal applies: wait for it on the long poll.
    let index: u64 = wf.api.json("/v1/registry/lonely").await["index"]
        .as_u64()
        .unwrap();
    within(20, "the held removal applies after max_hold", async {
        let mut index = index;
        loop {
            let reply = wf
                .api
                .get(&format!("/v1/registry/lonely?index={index}&wait=5s"))
                .await;
            let doc = expect(reply, StatusCode::OK, "long poll").json();
            if doc["instances"].as_array().is_some_and(Vec::is_empty) {
                return;
            }
            index = doc["index"].as_u64().unwrap();
        }
    })
    .await;
    expect(
        wf.api.get("/v1/registry/lonely/l1").await,
        StatusCode::NOT_FOUND,
        "gone after max_hold",
    );
    assert_eq!(wf.api.source("api").await["held"], serde_json::json!([]));
    let hits = lonely.hits();
    let after = wf.get("lonely").await.unwrap();
    assert_ne!(after.status, StatusCode::OK, "{}", after.text());
    assert_eq!(lonely.hits(), hits, "routed to after its removal");
}

// === 2. every view agrees ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_view_agrees_on_each_instances_state() {
    let st = Backend::start("st").await;
    let wf = AdminProxy::start(
        "",
        &format!("[services.stat]\ninstances = [\"{}\"]\n", st.addr),
    )
    .await;
    let f1 = Backend::start("f1").await;
    let f2 = Backend::start("f2").await;
    let f3 = Backend::start("f3").await;
    let s1 = Backend::start("s1").await;
    wf.api.register_ok("files", "f1", f1.addr, "60s").await;
    wf.api.register_ok("files", "f2", f2.addr, "60s").await;
    wf.api.register_ok("files", "f3", f3.addr, "60s").await;
    wf.api.register_ok("solo", "s1", s1.addr, "300ms").await;
    // f2 drains itself; an operator drains f3 and the static instance.
    let calls = [
        "/v1/registry/files/f2/drain".to_owned(),
        format!("/v1/services/files/instances/{}/drain", f3.addr),
        format!("/v1/services/stat/instances/{}/drain", st.addr),
    ];
    for path in &calls {
        expect(wf.api.call("PUT", path, None).await, StatusCode::OK, path);
    }
    // s1 stops heartbeating: held, as the last instance of `solo`.
    within(10, "s1 expires", async {
        while wf.api.json("/v1/registry/solo/s1").await["expired"] != true {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;

    let all = wf.api.json("/v1/registry").await;
    let services = wf.api.json("/v1/services").await;
    let sources = wf.api.json("/v1/sources").await;
    let cases = [
        ("files", Some("f1"), f1.addr, vec![], false),
        ("files", Some("f2"), f2.addr, vec!["source"], false),
        ("files", Some("f3"), f3.addr, vec!["operator"], false),
        ("solo", Some("s1"), s1.addr, vec![], true),
        ("stat", None, st.addr, vec!["operator"], false),
    ];
    for (service, id, addr, drained_by, held) in cases {
        let one = entry(
            &wf.api.json(&format!("/v1/registry/{service}")).await["instances"],
            addr,
        );
        let views = [
            (
                "GET /v1/registry",
                state_of(&in_registry(&all, service, addr)),
            ),
            ("GET /v1/registry/{service}", state_of(&one)),
            (
                "GET /v1/services",
                state_of(&in_services(&services, service, addr)),
            ),
        ];
        for (name, view) in &views[1..] {
            assert_eq!(
                view, &views[0].1,
                "{service} {addr}: {name} disagrees with {}",
                views[0].0
            );
        }
        let state = &views[0].1;
        let draining = !drained_by.is_empty();
        assert_eq!(
            state["drained_by"],
            serde_json::json!(drained_by),
            "{state}"
        );
        assert_eq!(state["draining"], draining, "{state}");
        assert_eq!(state["routable"], !draining, "{state}");
        assert_eq!(state["proxy_health"]["routable"], !draining, "{state}");
        assert_eq!(state["proxy_health"]["state"], "healthy", "{state}");
        assert_eq!(state["held_back"].is_object(), held, "{state}");
        if let Some(id) = id {
            let reg = wf.api.json(&format!("/v1/registry/{service}/{id}")).await;
            assert_eq!(reg["expired"], held, "{reg}");
            assert_eq!(reg["proxy_health"], state["proxy_health"], "{reg}");
            assert_eq!(reg["held_back"]["reason"], state["held_back"]["reason"]);
            assert_eq!(reg["held_back"]["since"], state["held_back"]["since"]);
        }
        if held {
            let api = sources
                .as_array()
                .unwrap()
                .iter()
                .find(|s| s["name"] == "api")
                .unwrap();
            assert_eq!(
                api["held_back"],
                serde_json::json!([format!("{service} {addr}")])
            );
            assert_eq!(api["held"][0]["reason"], state["held_back"]["reason"]);
            assert_eq!(api["held"][0]["since"], state["held_back"]["since"]);
        }
    }
    // And the proxy routes as the views say.
    let got = bodies(wf.proxy, "files", 4).await;
    assert_eq!(got, vec!["f1"; 4]);
    assert_eq!(bodies(wf.proxy, "solo", 2).await, vec!["s1"; 2]);
}

// === 3. routable when registered ===

/// A service `files` with an HTTP check of `/healthz`; `extra` goes into
/// its health table.
fn checked_service(name: &str, extra: &str) -> String {
    format!(
        "[services.{name}]\npanic_threshold = 0\n[services.{name}.health]\nkind = \"http\"\npath = \"/healthz\"\ninterval = \"2s\"\njitter = \"1s\"\n{extra}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_under_an_active_check_answers_after_the_first_check() {
    let wf = AdminProxy::start("", &checked_service("files", "")).await;
    let f1 = Checked::start("f1", StatusCode::OK).await;
    let reply = wf.api.register_addr("files", "f1", f1.addr, "60s").await;
    let doc = expect(reply, StatusCode::CREATED, "register").json();
    assert_eq!(
        doc["proxy_health"],
        serde_json::json!({"state": "healthy", "reason": "first check passed", "routable": true}),
        "{doc}"
    );
    assert_eq!(
        doc["address"],
        f1.addr.to_string(),
        "existing fields kept: {doc}"
    );
    assert_eq!(doc["ttl"], "1m", "{doc}");
    // Routable as the answer says: the very next request reaches it.
    assert_eq!(wf.get_ok("files").await, "f1");
    assert_eq!(f1.served.load(SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_may_carry_its_own_passing_check() {
    // Checks every 10 s, the first one up to 2.5 s after the instance
    // appears: without its own word, the instance waits that long.
    let wf = AdminProxy::start(
        "",
        "[services.files]\npanic_threshold = 0\n[services.files.health]\nkind = \"http\"\npath = \"/healthz\"\ninterval = \"10s\"\njitter = \"5s\"\n",
    )
    .await;
    let f1 = Checked::start("f1", StatusCode::OK).await;
    let bad = wf
        .api
        .register(
            "files",
            "f1",
            &format!(r#"{{"address":"{}","initial_health":"great"}}"#, f1.addr),
        )
        .await;
    let bad = expect(bad, StatusCode::BAD_REQUEST, "bad initial_health");
    assert!(bad.text().starts_with("initial_health:"), "{}", bad.text());
    assert!(
        wf.api.addresses("files").await.is_empty(),
        "a bad call changed something"
    );

    let reply = wf
        .api
        .register(
            "files",
            "f1",
            &format!(
                r#"{{"address":"{}","ttl":"60s","initial_health":"healthy"}}"#,
                f1.addr
            ),
        )
        .await;
    let doc = expect(reply, StatusCode::CREATED, "register").json();
    assert_eq!(doc["proxy_health"]["state"], "healthy", "{doc}");
    assert_eq!(doc["proxy_health"]["routable"], true, "{doc}");
    assert_eq!(
        doc["proxy_health"]["reason"],
        "its registration reported a passing check of its own"
    );
    assert_eq!(wf.get_ok("files").await, "f1");
}

// === 9. the proxy's view of a registration ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_health_reports_the_proxys_failing_check() {
    let tables = format!(
        "{}{}",
        checked_service("files", "unhealthy_threshold = 1\n"),
        checked_service("slow", "unhealthy_threshold = 3\n")
    );
    let wf = AdminProxy::start("", &tables).await;
    // Serves `/` (so a TCP or `/` check of its own passes) but fails the
    // proxy's `/healthz`.
    let f1 = Checked::start("f1", StatusCode::NOT_FOUND).await;
    let reply = wf.api.register_addr("files", "f1", f1.addr, "60s").await;
    let doc = expect(reply, StatusCode::CREATED, "register").json();
    let ph = &doc["proxy_health"];
    assert_eq!(ph["state"], "unhealthy", "{doc}");
    assert_eq!(ph["routable"], false, "{doc}");
    let reason = ph["reason"].as_str().unwrap_or_else(|| panic!("{doc}"));
    assert!(reason.contains("status 404"), "{reason}");
    // The same on a GET, and the proxy indeed routes nothing to it.
    let again = wf.api.json("/v1/registry/files/f1").await;
    assert_eq!(&again["proxy_health"], ph);
    let reply = wf.get("files").await.unwrap();
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        reply.text()
    );
    assert_eq!(f1.served.load(SeqCst), 0);

    // Undecided after one failure of three: the answer says so, and why.
    let reply = wf.api.register_addr("slow", "s1", f1.addr, "60s").await;
    let doc = expect(reply, StatusCode::CREATED, "register").json();
    assert_eq!(
        doc["proxy_health"],
        serde_json::json!({"state": "unknown", "reason": "last health check failed: status 404", "routable": false}),
        "{doc}"
    );
    // `?wait=0s` answers without waiting for a check: not routable yet.
    let s2 = Checked::start("s2", StatusCode::NOT_FOUND).await;
    let reply = wf
        .api
        .call(
            "PUT",
            "/v1/registry/slow/s2?wait=0s",
            Some(&format!(r#"{{"address":"{}"}}"#, s2.addr)),
        )
        .await;
    let doc = expect(reply, StatusCode::CREATED, "register without waiting").json();
    assert_eq!(doc["proxy_health"]["state"], "unknown", "{doc}");
    assert_eq!(doc["proxy_health"]["routable"], false, "{doc}");
}

// === 4. drain any instance ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_drain_calls_check_their_input() {
    let a = Backend::start("a").await;
    let wf = AdminProxy::start(
        &format!("token = \"{TOKEN}\""),
        &format!("[services.web]\ninstances = [\"{}\"]\n", a.addr),
    )
    .await;
    let path = format!("/v1/services/web/instances/{}/drain", a.addr);
    let no_token = wf.api.call("PUT", &path, None).await;
    expect(no_token, StatusCode::UNAUTHORIZED, "no token");
    let api = Api {
        token: Some(TOKEN.to_owned()),
        ..wf.api.clone()
    };
    let cases = [
        (
            "PUT",
            "/v1/services/web/instances/127.0.0.1:1/drain",
            StatusCode::NOT_FOUND,
        ),
        (
            "DELETE",
            "/v1/services/web/instances/127.0.0.1:1/drain",
            StatusCode::NOT_FOUND,
        ),
        (
            "PUT",
            "/v1/services/nope/instances/127.0.0.1:1/drain",
            StatusCode::NOT_FOUND,
        ),
        (
            "PUT",
            "/v1/services/web/instances/localhost:80/drain",
            StatusCode::BAD_REQUEST,
        ),
        (
            "PUT",
            "/v1/services/web/instances/127.0.0.1/drain",
            StatusCode::BAD_REQUEST,
        ),
        (
            "PUT",
            "/v1/services/Bad_Name!/instances/127.0.0.1:1/drain",
            StatusCode::BAD_REQUEST,
        ),
        ("POST", &path, StatusCode::METHOD_NOT_ALLOWED),
    ];
    for (method, p, status) in cases {
        let reply = api.call(method, p, None).await;
        let text = reply.text();
        expect(reply, status, &format!("{method} {p}"));
        if status == StatusCode::BAD_REQUEST {
            assert!(
                text.starts_with("address:") || text.starts_with("service:"),
                "{text}"
            );
        }
    }
    assert_eq!(
        bodies(wf.proxy, "web", 2).await,
        vec!["a"; 2],
        "a bad call changed something"
    );
    // Percent-encoded addresses are understood too.
    let encoded = format!(
        "/v1/services/web/instances/{}/drain",
        a.addr.to_string().replace(':', "%3A")
    );
    expect(
        api.call("PUT", &encoded, None).await,
        StatusCode::OK,
        "drain",
    );
    assert_eq!(bodies(wf.proxy, "web", 1).await, vec!["503"]);
    expect(
        api.call("DELETE", &path, None).await,
        StatusCode::OK,
        "undrain",
    );
    expect(
        api.call("DELETE", &path, None).await,
        StatusCode::OK,
        "undrain again",
    );
    assert_eq!(bodies(wf.proxy, "web", 1).await, vec!["a"]);
}

/// The running binary's config: `web` with static instances `statics`,
/// the proxy and the admin API on port 0 (read back from its log).
fn web_config(state: &std::path::Path, statics: &[SocketAddr], extra: &str) -> String {
    let list: Vec<String> = statics.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "listen = [\"127.0.0.1:0\"]\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [registry]\nstate_file = \"{}\"\n\
         [services.web]\ninstances = [{}]\n{extra}",
        state.display(),
        list.join(", ")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_drain_of_any_instance_survives_reload_and_restart() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let c = Backend::start("c").await;
    let state = temp_path("lifecycle-state", ".json");
    let v1 = web_config(&state, &[a.addr, b.addr], "");
    let file = ConfigFile::new("lifecycle-drain", &v1);
    let start = || {
        let mut cmd = wayfinder(&["run", "--config"]);
        cmd.arg(&file.path);
        Proc::spawn(cmd)
    };
    let mut proc = start();
    let listening = proc.listening(30).await;
    let (proxy, api) = (listening.proxy(), Api::new(listening.admin()));

    // A static instance and a registered one, drained by address.
    api.register_ok("web", "c1", c.addr, "1h").await;
    for addr in [a.addr, c.addr] {
        let path = format!("/v1/services/web/instances/{addr}/drain");
        expect(api.call("PUT", &path, None).await, StatusCode::OK, &path);
    }
    assert_eq!(bodies(proxy, "web", 6).await, vec!["b"; 6]);
    let web = in_services(&api.json("/v1/services").await, "web", a.addr);
    assert_eq!(web["drained_by"], serde_json::json!(["operator"]), "{web}");

    // A hot reload (the file changes: a new route) keeps both drains.
    file.write(&format!(
        "{v1}[[routes]]\nhost = \"web.example\"\nservice = \"web\"\n"
    ));
    within(10, "the reload applies", async {
        loop {
            let reply = support::get(proxy, "web.example", "/").await;
            if reply.is_ok_and(|r| r.status == StatusCode::OK) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    proc.wait_log(10, "config reloaded").await;
    assert_eq!(
        bodies(proxy, "web", 6).await,
        vec!["b"; 6],
        "a reload undid a drain"
    );

    // A restart with the state file keeps them too (on new ports).
    proc.signal(Signal::SIGTERM);
    proc.wait(30, "proxy exits").await;
    let mut proc = start();
    let listening = proc.listening(30).await;
    let (proxy, api) = (listening.proxy(), Api::new(listening.admin()));
    assert_eq!(
        bodies(proxy, "web", 6).await,
        vec!["b"; 6],
        "a restart undid a drain"
    );

    // Cancelled: both take requests again.
    for addr in [a.addr, c.addr] {
        let path = format!("/v1/services/web/instances/{addr}/drain");
        expect(api.call("DELETE", &path, None).await, StatusCode::OK, &path);
    }
    let mut got = bodies(proxy, "web", 6).await;
    got.sort();
    assert_eq!(got, ["a", "a", "b", "b", "c", "c"]);
    proc.signal(Signal::SIGTERM);
    proc.wait(30, "proxy exits").await;
    let _ = std::fs::remove_file(&state);
}
