//! Operating wayfinder: readiness and the pre-stop delay, a second signal,
//! dual-stack listeners, the admin API's read authentication and views of
//! the running state (`/v1/status`, `/v1/config`, `/v1/routes`, failed
//! reloads in `/v1/sources`), and what `wayfinder check` and `run` say
//! about a config. Signals go to the real `wayfinder` binary this test
//! spawns (by its PID); the rest runs in-process or as short commands.

mod support;

use std::net::SocketAddr;
use std::process::ExitStatus;
use std::time::Duration;

use http::{header, StatusCode};
use nix::sys::signal::Signal;
use serde_json::Value;
use tokio::process::Command;
use wayfinder::app::StartError;

use support::{
    parse_config, request, start_proxy, wayfinder, within, AdminProxy, Api, Backend, ConfigFile,
    H1Client, Proc, Reply,
};

const TOKEN: &str = "secret-token-1";

/// Runs a short-lived command to completion: exit status, stdout, stderr.
async fn finish(mut cmd: Command) -> (ExitStatus, String, String) {
    let out = within(30, "wayfinder exits", cmd.output())
        .await
        .expect("spawn wayfinder");
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `wayfinder check --config FILE`.
async fn check(file: &ConfigFile) -> (ExitStatus, String, String) {
    let mut cmd = wayfinder(&["check", "--config"]);
    cmd.arg(&file.path);
    finish(cmd).await
}

/// `wayfinder run --config FILE`, its stderr collected.
fn run(file: &ConfigFile) -> Proc {
    let mut cmd = wayfinder(&["run", "--config"]);
    cmd.arg(&file.path);
    Proc::spawn(cmd)
}

/// One admin GET on a fresh connection, each step bounded (2 s); `None`
/// when nothing answered in time (not listening yet, or not serving yet).
async fn try_get(addr: SocketAddr, path: &str) -> Option<Reply> {
    let call = async {
        let mut c = H1Client::connect(addr).await.ok()?;
        c.request(request("GET", "admin", path).body(support::empty()).ok()?)
            .await
            .ok()
    };
    tokio::time::timeout(Duration::from_secs(2), call)
        .await
        .ok()
        .flatten()
}

/// Polls `GET path` on `addr` until `cond` holds for a reply (bounded).
async fn wait_reply(
    secs: u64,
    addr: SocketAddr,
    path: &str,
    what: &str,
    mut cond: impl FnMut(&Reply) -> bool,
) -> Reply {
    within(secs, what, async {
        loop {
            if let Some(r) = try_get(addr, path).await {
                if cond(&r) {
                    return r;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

/// A GET through the proxy for `Host: {service}.svc` on a fresh connection.
async fn via_proxy(addr: SocketAddr, service: &str) -> Reply {
    within(
        10,
        "GET through the proxy",
        support::get(addr, &format!("{service}.svc"), "/"),
    )
    .await
    .unwrap_or_else(|e| panic!("GET {service}.svc: {e}"))
}

// === readiness ===

/// Until etcd's first listing (or its timeout) the registry is not loaded:
/// the admin API already answers, `/readyz` says 503 "starting", `/healthz`
/// 200; then `/readyz` turns 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_until_the_first_snapshot_then_200() {
    // An "etcd" that accepts connections (in the kernel's backlog) and
    // never answers: the first listing waits its full timeout.
    let mute = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let etcd = mute.local_addr().unwrap();
    // Both listeners on port 0; the admin API on 127.0.0.2 to tell them
    // apart. It is found in /proc before start finishes (and so before the
    // "wayfinder listening" line names it).
    let config = ConfigFile::new(
        "ops-readyz-start",
        &format!(
            "listen = [\"127.0.0.1:0\"]\n[admin]\nlisten = \"127.0.0.2:0\"\n\
             [registry.etcd]\nendpoints = [\"http://{etcd}\"]\n\
             dial_timeout = \"1s\"\nrequest_timeout = \"4s\"\n"
        ),
    );
    let mut proc = run(&config);
    let admin = within(15, "the admin API listens", async {
        loop {
            let found = proc
                .tcp_listeners()
                .into_iter()
                .find(|a| a.ip() == std::net::IpAddr::from([127, 0, 0, 2]));
            if let Some(a) = found {
                return a;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let first = wait_reply(15, admin, "/readyz", "a first /readyz answer", |_| true).await;
    assert_eq!(
        (first.status, first.text().as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n"),
        "{}",
        proc.log()
    );
    let live = try_get(admin, "/healthz").await.expect("/healthz answers");
    assert_eq!(live.status, StatusCode::OK);
    assert!(
        !proc.log().contains("wayfinder listening"),
        "start finished before the check:\n{}",
        proc.log()
    );
    let ready = wait_reply(20, admin, "/readyz", "/readyz turns 200", |r| {
        r.status == StatusCode::OK
    })
    .await;
    assert_eq!(ready.text(), "ready\n");
    assert!(proc.log().contains("wayfinder listening"), "{}", proc.log());
    proc.signal(Signal::SIGTERM);
    let status = proc.wait(20, "wayfinder exits").await;
    assert!(status.success(), "{status}\n{}", proc.log());
}

/// SIGTERM with a pre-stop delay: `/readyz` says 503 "draining" at once,
/// the proxy keeps answering requests (new connections too), and a second
/// SIGTERM ends the process at once, long before the delay would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pre_stop_serves_while_not_ready_and_a_second_sigterm_forces_the_exit() {
    let hello = Backend::start("hello").await;
    let config = ConfigFile::new(
        "ops-pre-stop",
        &format!(
            "listen = [\"127.0.0.1:0\"]\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [timeouts]\npre_stop = \"120s\"\nshutdown_drain = \"5s\"\n\
             [services.hello]\ninstances = [\"{}\"]\n",
            hello.addr
        ),
    );
    let mut proc = run(&config);
    let listening = proc.listening(30).await;
    let (proxy, admin) = (listening.proxy(), listening.admin());
    wait_reply(10, admin, "/readyz", "ready", |r| {
        r.status == StatusCode::OK
    })
    .await;
    assert_eq!(via_proxy(proxy, "hello").await.text(), "hello");

    proc.signal(Signal::SIGTERM);
    let draining = wait_reply(10, admin, "/readyz", "/readyz reports draining", |r| {
        r.status != StatusCode::OK
    })
    .await;
    assert_eq!(
        (draining.status, draining.text().as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    );
    // Still serving: a new connection, a request, an answer.
    let hits = hello.hits();
    let reply = via_proxy(proxy, "hello").await;
    assert_eq!(
        (reply.status, reply.text().as_str()),
        (StatusCode::OK, "hello")
    );
    assert_eq!(hello.hits(), hits + 1);
    assert_eq!(
        try_get(admin, "/healthz").await.unwrap().status,
        StatusCode::OK
    );
    let still = try_get(admin, "/readyz").await.unwrap();
    assert_eq!(
        still.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "pre-stop ended early"
    );

    proc.signal(Signal::SIGTERM);
    let status = proc.wait(15, "wayfinder exits on a second SIGTERM").await;
    assert!(!status.success(), "a forced exit reports failure: {status}");
    let log = proc.log();
    assert!(log.contains("second signal"), "{log}");
    assert!(!log.contains("pre-stop delay over"), "{log}");
}

/// SIGINT with a short pre-stop delay: not ready, then the delay ends, the
/// proxy drains and exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pre_stop_delay_ends_then_the_proxy_drains_and_exits_zero() {
    let hello = Backend::start("hello").await;
    let config = ConfigFile::new(
        "ops-pre-stop-end",
        &format!(
            "listen = [\"127.0.0.1:0\"]\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [timeouts]\npre_stop = \"1s\"\n\
             [services.hello]\ninstances = [\"{}\"]\n",
            hello.addr
        ),
    );
    let mut proc = run(&config);
    let admin = proc.listening(30).await.admin();
    wait_reply(10, admin, "/readyz", "ready", |r| {
        r.status == StatusCode::OK
    })
    .await;
    proc.signal(Signal::SIGINT);
    let status = proc
        .wait(20, "wayfinder exits after the pre-stop delay")
        .await;
    assert!(status.success(), "{status}\n{}", proc.log());
    let log = proc.log();
    let (pre, over, drained) = (
        log.find("pre-stop: /readyz reports not ready")
            .expect("pre-stop logged"),
        log.find("pre-stop delay over")
            .expect("end of pre-stop logged"),
        log.find("drained").expect("drain logged"),
    );
    assert!(pre < over && over < drained, "{log}");
}

// === dual stack ===

/// `listen = ["0.0.0.0:P", "[::]:P"]` (nginx's usual pair) binds: IPv6
/// listeners are IPv6-only. Both families are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_stack_pair_binds_and_serves_both_families() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("SKIPPED: this machine cannot bind the IPv6 loopback [::1]");
        return;
    }
    let hello = Backend::start("hello").await;
    // The same port on both families: held by bound sockets (not
    // listening) until the proxy starts, in this process; if it is taken
    // in that moment anyway, the start fails to bind and is retried.
    let mut tries = 0;
    let (port, running) = loop {
        tries += 1;
        let (v4, v6, port) = dual_stack_port();
        let config = parse_config(&format!(
            "listen = [\"0.0.0.0:{port}\", \"[::]:{port}\"]\n[admin]\nlisten = \"off\"\n\
             [services.hello]\ninstances = [\"{}\"]\n",
            hello.addr
        ));
        drop((v4, v6));
        match start_proxy(&config).await {
            Ok(running) => break (port, running),
            Err(StartError::Bind { .. }) if tries < 20 => continue,
            Err(e) => panic!("the dual-stack pair must bind: {e}"),
        }
    };
    for addr in [
        SocketAddr::from(([127, 0, 0, 1], port)),
        SocketAddr::new("::1".parse().unwrap(), port),
    ] {
        let reply = via_proxy(addr, "hello").await;
        assert_eq!(reply.text(), "hello", "through {addr}");
    }
    within(30, "shutdown", running.shutdown()).await;
}

/// Both listeners on port 0 (what every in-process test does).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_and_proxy_may_both_listen_on_port_zero() {
    // Port 0 asks the OS for a free port, so these never clash; tests (and
    // operators running several instances) rely on it.
    let config = parse_config("listen = [\"127.0.0.1:0\"]\n[admin]\nlisten = \"127.0.0.1:0\"\n");
    let running = start_proxy(&config).await.expect("start");
    let admin = running.admin.expect("admin listener");
    assert_ne!(admin, running.listen[0]);
    let reply = support::get(admin, "admin", "/healthz").await.unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    within(30, "shutdown", running.shutdown()).await;
}

/// A port bound (not listening) on `0.0.0.0` and, IPv6-only, on `[::]`.
fn dual_stack_port() -> (socket2::Socket, socket2::Socket, u16) {
    use socket2::{Domain, Socket, Type};
    let v4 = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    v4.bind(&SocketAddr::from(([0, 0, 0, 0], 0)).into())
        .expect("bind 0.0.0.0:0");
    let port = v4
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .expect("bound address")
        .port();
    let v6 = Socket::new(Domain::IPV6, Type::STREAM, None).expect("socket");
    v6.set_only_v6(true).expect("IPV6_V6ONLY");
    match v6.bind(&SocketAddr::new("::".parse().unwrap(), port).into()) {
        Ok(()) => (v4, v6, port),
        // Taken on IPv6: another.
        Err(_) => dual_stack_port(),
    }
}

// === the admin API ===

/// With `admin.auth_reads`, every call but `/healthz` and `/readyz` needs
/// the token; the scheme is case-insensitive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_reads_requires_the_token_for_every_read_but_the_probes() {
    let wf = AdminProxy::start(
        &format!("token = \"{TOKEN}\"\nauth_reads = true"),
        "[services.a]\ninstances = [\"127.0.0.1:9\"]\n",
    )
    .await;
    let api = &wf.api;
    for path in [
        "/v1/services",
        "/v1/registry",
        "/v1/registry/a",
        "/v1/sources",
        "/v1/status",
        "/v1/config",
        "/v1/routes",
        "/nowhere",
    ] {
        let r = api.call_with("GET", path, None, None).await;
        assert_eq!(
            r.status,
            StatusCode::UNAUTHORIZED,
            "GET {path}: {}",
            r.text()
        );
        let r = api
            .call_with("GET", path, Some("wrong-token-0"), None)
            .await;
        assert_eq!(
            r.status,
            StatusCode::UNAUTHORIZED,
            "GET {path} with a wrong token"
        );
    }
    for path in ["/v1/services", "/v1/registry", "/v1/status"] {
        let r = api.call_with("GET", path, Some(TOKEN), None).await;
        assert_eq!(r.status, StatusCode::OK, "GET {path}: {}", r.text());
    }
    for path in ["/healthz", "/readyz"] {
        let r = api.call_with("GET", path, None, None).await;
        assert_eq!(r.status, StatusCode::OK, "GET {path}: {}", r.text());
    }
}

/// `Authorization: bearer TOKEN` (any case of the scheme) is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_scheme_is_case_insensitive() {
    let wf = AdminProxy::start(&format!("token = \"{TOKEN}\""), "").await;
    let backend = Backend::start("lower").await;
    let body = format!(r#"{{"address":"{}","ttl":"30s"}}"#, backend.addr);
    let r = wf
        .api
        .call_auth(
            "PUT",
            "/v1/registry/lower/l1",
            Some(&format!("bearer {TOKEN}")),
            Some(&body),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let r = wf
        .api
        .call_auth(
            "DELETE",
            "/v1/registry/lower/l1",
            Some(&format!("BEARER {TOKEN}")),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
}

/// `HEAD /healthz` (and `/readyz`) answers like GET, without a body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_healthz_answers_like_get_without_a_body() {
    let wf = AdminProxy::start("", "").await;
    for path in ["/healthz", "/readyz"] {
        let get = wf.api.call("GET", path, None).await;
        let head = wf.api.call("HEAD", path, None).await;
        assert_eq!(head.status, StatusCode::OK, "HEAD {path}");
        assert!(head.body.is_empty(), "HEAD {path} has a body");
        assert_eq!(
            head.headers
                .get(header::CONTENT_LENGTH)
                .map(|v| v.as_bytes()),
            Some(get.body.len().to_string().as_bytes()),
            "HEAD {path}: the GET answer's length"
        );
    }
}

/// `GET /v1/config`: the config in effect, the admin token and the etcd
/// password redacted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_config_shows_the_config_with_secrets_redacted() {
    let (_hold, refused) = support::refused_addr();
    let wf = AdminProxy::start(
        &format!("token = \"{TOKEN}\""),
        &format!(
            "[timeouts]\nconnect = \"750ms\"\n\
             [registry.etcd]\nendpoints = [\"http://{refused}\"]\nusername = \"wf\"\n\
             password = \"etcd-password-9\"\ndial_timeout = \"100ms\"\nrequest_timeout = \"100ms\"\n\
             [services.a]\ninstances = [\"127.0.0.1:9\"]\n"
        ),
    )
    .await;
    let reply = wf.api.get("/v1/config").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let text = reply.text();
    assert!(!text.contains(TOKEN), "admin token shown: {text}");
    assert!(
        !text.contains("etcd-password-9"),
        "etcd password shown: {text}"
    );
    let v = reply.json();
    let c = &v["config"];
    assert_eq!(c["admin"]["token"], "<redacted>");
    assert_eq!(c["registry"]["etcd"]["auth"]["password"], "<redacted>");
    assert_eq!(c["registry"]["etcd"]["auth"]["username"], "wf");
    assert_eq!(c["timeouts"]["connect"], "750ms");
    assert_eq!(c["services"]["a"]["instances"][0]["address"], "127.0.0.1:9");
}

/// `GET /v1/routes`: the routes in the order they are tried, with their
/// service's instances, and the conventions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_routes_lists_the_routes_in_precedence_order() {
    let wf = AdminProxy::start(
        "",
        "[conventions]\npath = true\n\
         [[routes]]\npath = \"/\"\nservice = \"a\"\n\
         [[routes]]\nhost = \"*.example.com\"\nservice = \"b\"\n\
         [[routes]]\nhost = \"api.example.com\"\npath = \"/v1\"\nstrip_prefix = true\nservice = \"a\"\n\
         [[routes]]\nhost = \"api.example.com\"\nservice = \"b\"\n\
         [services.a]\ninstances = [\"127.0.0.1:9\", \"127.0.0.1:10\"]\n\
         [services.b]\n",
    )
    .await;
    let v = wf.api.json("/v1/routes").await;
    let routes: Vec<(Value, String, bool, String)> = v["routes"]
        .as_array()
        .expect("routes")
        .iter()
        .map(|r| {
            (
                r["host"].clone(),
                r["path"].as_str().unwrap().to_owned(),
                r["strip_prefix"].as_bool().unwrap(),
                r["service"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let s = |x: &str| Value::from(x);
    assert_eq!(
        routes,
        [
            (s("api.example.com"), "/v1".into(), true, "a".into()),
            (s("api.example.com"), "/".into(), false, "b".into()),
            (s("*.example.com"), "/".into(), false, "b".into()),
            (Value::Null, "/".into(), false, "a".into()),
        ]
    );
    assert_eq!(v["routes"][0]["instances"], 2);
    assert_eq!(v["routes"][1]["instances"], 0);
    assert_eq!(v["conventions"]["host_suffixes"][0], ".svc");
    assert_eq!(v["conventions"]["path"], true);
}

/// A rejected reload shows in `/v1/sources` (the `config` source failing,
/// with the error naming file and key) and in `/v1/status` (outcome,
/// error, file, time); a later valid reload clears it, and the settings it
/// changed that need a restart are listed in its log line and in
/// `/v1/status`, while `/v1/config` keeps their running values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_outcomes_and_restart_needed_settings_are_visible() {
    let hello = Backend::start("hello").await;
    let base = format!(
        "listen = [\"127.0.0.1:0\"]\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [services.hello]\ninstances = [\"{}\"]\n",
        hello.addr
    );
    let file = ConfigFile::new("ops-reload", &base);
    let mut proc = run(&file);
    let api = Api::new(proc.listening(30).await.admin());
    let status = api.json("/v1/status").await;
    assert_eq!(status["last_reload"], Value::Null);
    assert_eq!(status["config_file"], file.path.display().to_string());
    assert_eq!(api.source("config").await["state"], "ok");

    // An invalid file (a typo on line 7).
    file.write(&format!("{base}[proxy]\nvai = \"x\"\n"));
    let status = within(15, "the rejected reload in /v1/status", async {
        loop {
            let s = api.json("/v1/status").await;
            if s["last_reload"]["outcome"] == "rejected" {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let reload = &status["last_reload"];
    let error = reload["error"].as_str().unwrap();
    assert!(error.contains("proxy.vai"), "{error}");
    assert!(
        error.contains(&format!("{}:7:", file.path.display())),
        "{error}"
    );
    assert_eq!(reload["file"], file.path.display().to_string());
    assert!(reload["at"].as_f64().unwrap() > 1.0e9, "{reload}");
    assert!(reload["ago_s"].as_f64().unwrap() >= 0.0, "{reload}");
    let source = api.source("config").await;
    assert_eq!(source["state"], "failing", "{source}");
    let last_error = source["last_error"].as_str().unwrap();
    assert!(last_error.contains("proxy.vai"), "{source}");
    assert!(last_error.contains(file.file_name()), "{source}");
    assert!(source["last_error_ago_s"].as_f64().is_some(), "{source}");
    // Still serving the running config.
    assert_eq!(
        api.json("/v1/config").await["config"]["proxy"]["via"],
        "wayfinder"
    );

    // A valid file that changes settings read only at start.
    file.write(&format!(
        "{base}[proxy]\nvia = \"edge-1\"\n[limits]\nmax_connections = 500\n"
    ));
    let status = within(15, "the applied reload in /v1/status", async {
        loop {
            let s = api.json("/v1/status").await;
            if s["last_reload"]["outcome"] == "applied" {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let pending = serde_json::json!(["limits.max_connections", "proxy.via"]);
    assert_eq!(status["last_reload"]["restart_needed"], pending, "{status}");
    assert_eq!(status["restart_needed"], pending, "{status}");
    proc.wait_log(10, "config reloaded").await;
    let log = proc.log();
    let line = log
        .lines()
        .find(|l| l.contains("config reloaded"))
        .expect("reload line");
    assert!(
        line.contains("limits.max_connections") && line.contains("proxy.via"),
        "{line}"
    );
    let source = api.source("config").await;
    assert_eq!(source["state"], "ok", "{source}");
    assert_eq!(source["last_error"], Value::Null, "{source}");
    let config = api.json("/v1/config").await;
    assert_eq!(config["restart_needed"], pending);
    assert_eq!(
        config["config"]["proxy"]["via"], "wayfinder",
        "value in effect"
    );
    assert_eq!(config["config"]["limits"]["max_connections"], 10000);

    proc.signal(Signal::SIGTERM);
    let status = proc.wait(20, "wayfinder exits").await;
    assert!(status.success(), "{status}\n{}", proc.log());
}

// === check and run ===

/// `check` reports every error of a file, in line order, not only the first.
#[tokio::test]
async fn check_reports_several_errors() {
    let bad = ConfigFile::new(
        "ops-check-several",
        "listen = [\"127.0.0.1:8080\", \"127.0.0.1:8080\"]\n\
         [timeouts]\nconect = \"2s\"\n\
         [services.api]\ninstances = [\"127.0.0.1:9001\", \"localhost\"]\n\
         [[routes]]\nservice = \"nope\"\n",
    );
    let (status, stdout, stderr) = check(&bad).await;
    assert!(!status.success(), "accepted: {stdout}");
    assert!(stderr.contains("4 errors"), "{stderr}");
    let path = bad.path.display();
    for want in [
        format!("{path}:1:29: listen[1]: 127.0.0.1:8080 is listed twice"),
        format!("{path}:3:1: timeouts.conect: unknown field"),
        format!("{path}:5:"),
        "services.api.instances[1]".to_owned(),
        format!("{path}:7:11: routes[0].service: no service named \"nope\""),
    ] {
        assert!(stderr.contains(&want), "missing {want:?} in:\n{stderr}");
    }
}

/// A table defined twice is named by its key path and line.
#[tokio::test]
async fn check_names_a_duplicate_table() {
    let bad = ConfigFile::new(
        "ops-check-dup",
        "[services.api]\ninstances = [\"127.0.0.1:9001\"]\n\n[services.api]\ninstances = [\"127.0.0.1:9002\"]\n",
    );
    let (status, _, stderr) = check(&bad).await;
    assert!(!status.success());
    let want = format!(
        "{}:4:11: services.api: table [services.api] is defined twice (first on line 1)",
        bad.path.display()
    );
    assert!(stderr.contains(&want), "missing {want:?} in:\n{stderr}");
    assert!(!stderr.contains("(syntax)"), "{stderr}");
}

/// `check` validates `admin.token_env` by name (a warning when it is not
/// set); `run` requires its value.
#[tokio::test]
async fn check_takes_token_env_by_name_and_run_needs_its_value() {
    let var = "WAYFINDER_OPS_TEST_TOKEN_UNSET";
    let file = ConfigFile::new(
        "ops-token-env",
        &format!("listen = [\"127.0.0.1:0\"]\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken_env = \"{var}\"\n"),
    );
    let mut cmd = wayfinder(&["check", "--config"]);
    cmd.arg(&file.path).env_remove(var);
    let (status, stdout, stderr) = finish(cmd).await;
    assert!(
        status.success(),
        "{status}\nstdout: {stdout}\nstderr: {stderr}"
    );
    assert!(stdout.contains(": ok ("), "{stdout}");
    assert!(
        stderr.contains("warning") && stderr.contains(var),
        "{stderr}"
    );

    let mut cmd = wayfinder(&["run", "--config"]);
    cmd.arg(&file.path).env_remove(var);
    let (status, _, stderr) = finish(cmd).await;
    assert!(!status.success(), "run started without the token");
    assert!(stderr.contains("admin.token_env"), "{stderr}");
    assert!(stderr.contains(var), "{stderr}");
}

/// A state file that cannot be written is refused at start, naming it.
#[tokio::test]
async fn run_refuses_an_unwritable_state_file() {
    // Its directory is a regular file: nobody, root included, can write there.
    let not_a_dir = ConfigFile::new("ops-state-parent", "");
    let state = not_a_dir.path.join("state.json");
    let file = ConfigFile::new(
        "ops-state",
        &format!(
            "listen = [\"127.0.0.1:0\"]\n[admin]\nlisten = \"off\"\n\
             [registry]\nstate_file = \"{}\"\n",
            state.display()
        ),
    );
    let mut cmd = wayfinder(&["run", "--config"]);
    cmd.arg(&file.path);
    let (status, _, stderr) = finish(cmd).await;
    assert!(
        !status.success(),
        "started with an unwritable state file:\n{stderr}"
    );
    assert!(stderr.contains("registry.state_file"), "{stderr}");
    assert!(stderr.contains(&state.display().to_string()), "{stderr}");
    assert!(!stderr.contains("wayfinder listening"), "{stderr}");
}

/// A negative duration gets our own message with key path and line.
#[tokio::test]
async fn check_explains_a_negative_duration() {
    let bad = ConfigFile::new(
        "ops-negative",
        "[services.api]\ninstances = [\"127.0.0.1:9001\"]\n[services.api.health]\nkind = \"tcp\"\ninterval = \"-5s\"\n",
    );
    let (status, _, stderr) = check(&bad).await;
    assert!(!status.success());
    let want = format!(
        "{}:5:12: services.api.health.interval: \"-5s\" is negative",
        bad.path.display()
    );
    assert!(stderr.contains(&want), "missing {want:?} in:\n{stderr}");
    assert!(
        !stderr.contains("expected number"),
        "parser message leaked: {stderr}"
    );
}

/// An admin API beyond loopback with no token is worth a warning, in
/// `check`. (`run` logs the same words at start.)
#[tokio::test]
async fn check_warns_about_an_open_admin_api() {
    let file = ConfigFile::new(
        "ops-open-admin",
        "listen = [\"127.0.0.1:8080\"]\n[admin]\nlisten = \"0.0.0.0:9900\"\n",
    );
    let (status, _, stderr) = check(&file).await;
    assert!(status.success(), "{stderr}");
    assert!(
        stderr.contains("warning: admin.listen 0.0.0.0:9900 is not a loopback address and no admin.token is set"),
        "{stderr}"
    );
}

/// `run` logs the admin API's warnings at start: here, a token on a
/// non-loopback address (bound for the length of the test only) with
/// reads left open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_warns_about_reads_left_open_beyond_loopback() {
    let file = ConfigFile::new(
        "ops-open-reads",
        &format!(
            "listen = [\"127.0.0.1:0\"]\n[admin]\nlisten = \"0.0.0.0:0\"\ntoken = \"{TOKEN}\"\n"
        ),
    );
    let mut proc = run(&file);
    proc.wait_log(30, "wayfinder listening").await;
    assert!(
        proc.log().contains("admin.auth_reads is off"),
        "{}",
        proc.log()
    );
    proc.signal(Signal::SIGTERM);
    let status = proc.wait(20, "wayfinder exits").await;
    assert!(status.success(), "{status}\n{}", proc.log());
}
