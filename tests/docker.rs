//! `wayfinder register --docker` against the real Docker Engine: the
//! registrar binary, a proxy in this process (admin API on a loopback
//! port) and containers of a test image built here (no image can be
//! pulled): `docker/demo.rs` compiled by `rustc` into a static binary and
//! `docker import`ed as the image's only file.
//!
//! Each test works in a scope of its own: every container it runs carries
//! the label `wayfinder.test=SCOPE` and its registrar sees only those
//! (`--docker-label`), so tests running side by side (and anything else on
//! the engine) do not meet. A [`Scope`] removes, by id, every container,
//! image and network the test made when it is dropped, panicking or not.
//!
//! Containers publish on 127.0.0.1 only (`-p 127.0.0.1::8080`) and the
//! registrar advertises 127.0.0.1: all traffic stays on loopback.
//!
//! Timings (`docker run` to routable, `docker kill` to removed) are printed
//! (run with `--nocapture` to see them), not asserted: waits are bounded
//! generously so a loaded machine does not fail the tests.

mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use http::StatusCode;
use nix::sys::signal::Signal;
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinSet;

use support::{get, wayfinder, within, AdminProxy, Api, Proc};

/// The engine's socket the tests use (and forward to, for the socket cut).
const DOCKER_SOCK: &str = "/var/run/docker.sock";

/// Longest wait for one `docker` command.
const DOCKER_CMD_TIMEOUT: Duration = Duration::from_secs(60);

// === docker, the command ===

/// `docker ARGS`: its stdout, trimmed; a failure fails the test.
async fn docker(args: &[&str]) -> String {
    let (ok, out, err) = docker_try(args).await;
    assert!(ok, "docker {}: {err}", args.join(" "));
    out
}

/// `docker ARGS`: (success, stdout trimmed, stderr).
async fn docker_try(args: &[&str]) -> (bool, String, String) {
    let mut cmd = tokio::process::Command::new("docker");
    cmd.args(args)
        .env("DOCKER_HOST", format!("unix://{DOCKER_SOCK}"))
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = match tokio::time::timeout(DOCKER_CMD_TIMEOUT, cmd.output()).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => panic!("docker {}: cannot run docker: {e}", args.join(" ")),
        Err(_) => panic!(
            "docker {}: no exit within {DOCKER_CMD_TIMEOUT:?}",
            args.join(" ")
        ),
    };
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `docker ARGS` from a destructor (no runtime needed); errors ignored.
fn docker_blocking(args: &[&str]) -> String {
    std::process::Command::new("docker")
        .args(args)
        .env("DOCKER_HOST", format!("unix://{DOCKER_SOCK}"))
        .stdin(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

// === the test image ===

/// `docker/demo.rs` as a static binary, compiled once per test process.
fn demo_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("docker/demo.rs");
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let tmp = dir.join(format!("wayfinder-demo.{}.tmp", std::process::id()));
        let out = dir.join("wayfinder-demo");
        let status = std::process::Command::new(std::env::var("RUSTC").unwrap_or("rustc".into()))
            .args([
                "--edition",
                "2021",
                "-C",
                "opt-level=1",
                "-C",
                "panic=abort",
                "-C",
                "strip=symbols",
                "-C",
                "target-feature=+crt-static",
            ])
            .arg(&src)
            .arg("-o")
            .arg(&tmp)
            .status()
            .expect("run rustc");
        assert!(status.success(), "rustc docker/demo.rs: {status}");
        // Atomic: another test process may be reading the previous one.
        std::fs::rename(&tmp, &out).expect("rename the demo binary");
        out
    })
    .clone()
}

// === the scope: labels and cleanup ===

/// What a test made on the engine, removed by id when dropped.
struct Scope {
    /// `wayfinder.test=...`, on every container of this test.
    label: String,
    tag: String,
    containers: Mutex<Vec<String>>,
    images: Mutex<Vec<String>>,
}

impl Scope {
    fn new(name: &str) -> Scope {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let unique = format!(
            "{}-{}-{}",
            name,
            std::process::id(),
            SEQ.fetch_add(1, SeqCst)
        );
        Scope {
            label: format!("wayfinder.test={unique}"),
            tag: format!("wayfinder-test-demo:{unique}"),
            containers: Mutex::new(Vec::new()),
            images: Mutex::new(Vec::new()),
        }
    }

    /// Imports the demo binary as an image; `healthcheck`: with a
    /// HEALTHCHECK that GETs /healthz every 300 ms (one failure turns it
    /// unhealthy). Returns its id.
    async fn image(&self, healthcheck: bool) -> String {
        let bin = demo_binary();
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("rootfs-{}", self.tag.replace([':', '='], "-")));
        std::fs::create_dir_all(&dir).expect("rootfs dir");
        std::fs::copy(&bin, dir.join("wayfinder-demo")).expect("copy the demo binary");
        let tar = dir.with_extension("tar");
        let status = std::process::Command::new("tar")
            .arg("-C")
            .arg(&dir)
            .arg("-cf")
            .arg(&tar)
            .arg("wayfinder-demo")
            .status()
            .expect("run tar");
        assert!(status.success(), "tar: {status}");
        let tag = format!("{}{}", self.tag, if healthcheck { "-hc" } else { "" });
        let mut args = vec![
            "import".to_owned(),
            "--change".into(),
            r#"ENTRYPOINT ["/wayfinder-demo"]"#.into(),
            "--change".into(),
            "EXPOSE 8080".into(),
        ];
        if healthcheck {
            args.push("--change".into());
            args.push(
                r#"HEALTHCHECK --interval=300ms --timeout=2s --retries=1 CMD ["/wayfinder-demo","check"]"#
                    .into(),
            );
        }
        args.push(tar.to_string_lossy().into_owned());
        args.push(tag);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let id = docker(&args).await;
        self.images.lock().unwrap().push(id.clone());
        let _ = std::fs::remove_file(&tar);
        let _ = std::fs::remove_dir_all(&dir);
        id
    }

    /// `docker run -d` in this scope, publishing 8080 on 127.0.0.1, with
    /// `args` before the image. Returns the container's id.
    async fn run(&self, image: &str, args: &[&str]) -> String {
        let mut all = vec!["run", "-d", "-l", &self.label, "-p", "127.0.0.1::8080"];
        all.extend_from_slice(args);
        all.push(image);
        let (ok, out, err) = docker_try(&all).await;
        // Recorded before judging: a container created but not started is
        // removed all the same.
        if !out.is_empty() {
            self.containers.lock().unwrap().push(out.clone());
        }
        assert!(ok, "docker {}: {err}", all.join(" "));
        out
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        // Every container of the scope, also any whose id was never seen.
        let mut ids: BTreeSet<String> = self.containers.lock().unwrap().iter().cloned().collect();
        let listed = docker_blocking(&[
            "ps",
            "-aq",
            "--no-trunc",
            "--filter",
            &format!("label={}", self.label),
        ]);
        ids.extend(listed.lines().map(str::to_owned));
        if !ids.is_empty() {
            let mut args = vec!["rm", "-f", "-v"];
            args.extend(ids.iter().map(String::as_str));
            docker_blocking(&args);
        }
        for image in self.images.lock().unwrap().iter() {
            docker_blocking(&["rmi", "-f", image]);
        }
    }
}

/// The host port a container's 8080 is published on, 127.0.0.1.
async fn published(id: &str) -> SocketAddr {
    let out = docker(&["port", id, "8080/tcp"]).await;
    let line = out
        .lines()
        .find(|l| l.starts_with("127.0.0.1:"))
        .unwrap_or_else(|| panic!("{id}: no 127.0.0.1 binding in {out:?}"));
    line.parse().expect("IP:PORT")
}

// === the registrar ===

/// `wayfinder register --docker` for `scope`, against `api`.
fn registrar(api: &Api, scope: &Scope, extra: &[&str]) -> Proc {
    let mut cmd = wayfinder(&["register", "--docker", "--advertise-ip", "127.0.0.1"]);
    cmd.arg("--registry")
        .arg(format!("http://{}", api.addr))
        .args(["--docker-label", &scope.label])
        .args(extra)
        .env("RUST_LOG", "info,wayfinder::registrar=debug");
    Proc::spawn(cmd)
}

/// The addresses of `service` the proxy lists, sorted.
async fn listed(api: &Api, service: &str) -> Vec<String> {
    api.addresses(service).await
}

/// Waits (bounded) until `cond` holds for `service`'s addresses; returns
/// how long it took.
async fn wait_listed(
    api: &Api,
    service: &str,
    what: &str,
    cond: impl Fn(&[String]) -> bool,
) -> Duration {
    let start = Instant::now();
    api.wait_addresses(30, service, what, cond).await;
    start.elapsed()
}

/// The id of the registration of `addr` in `service`, if listed.
async fn id_of(api: &Api, service: &str, addr: SocketAddr) -> Option<String> {
    api.instances(service)
        .await
        .iter()
        .find(|i| i["address"] == addr.to_string())
        .and_then(|i| i["id"].as_str().map(str::to_owned))
}

/// GETs through the proxy until every one of `names` answered (bounded).
async fn answers_from_all(wf: &AdminProxy, service: &str, names: &[String]) {
    let mut seen = BTreeSet::new();
    within(20, &format!("answers from all of {names:?}"), async {
        while !names.iter().all(|n| seen.contains(n)) {
            let reply = get(wf.proxy, &format!("{service}.svc"), "/")
                .await
                .expect("GET through the proxy");
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
            let text = reply.text();
            let name = text.trim().trim_start_matches("hello from ").to_owned();
            seen.insert(name);
        }
    })
    .await;
}

fn short(id: &str) -> String {
    id[..12].to_owned()
}

// === tests ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labelled_containers_are_routable_stop_drains_kill_removes_unlabelled_ignored() {
    let scope = Scope::new("basic");
    let image = scope.image(false).await;
    // No retries: a request sent to a container that stopped listening
    // would reach the client as an error, so only the drain on the stop
    // signal keeps `docker stop` clean.
    let wf = AdminProxy::start("", "[services.hello]\nmax_attempts = 1\n").await;
    let mut reg = registrar(&wf.api, &scope, &[]);
    reg.wait_log(30, "registration ids").await;

    // A container without wayfinder labels first: events are handled in
    // order, so once the labelled ones after it are in, it was seen.
    let plain = scope.run(&image, &[]).await;
    let plain_addr = published(&plain).await;

    let mut ids = Vec::new();
    let mut addrs = Vec::new();
    for n in 0..3 {
        let start = Instant::now();
        let id = scope
            .run(
                &image,
                &["-l", "wayfinder.service=hello", "-l", "wayfinder.tags.n=x"],
            )
            .await;
        let run_cli = start.elapsed();
        let addr = published(&id).await;
        let addr_s = addr.to_string();
        wait_listed(&wf.api, "hello", "a new container listed", |a| {
            a.contains(&addr_s)
        })
        .await;
        println!(
            "docker run -> routable (container {n}): {:?} (the docker run command took {run_cli:?} of it)",
            start.elapsed()
        );
        ids.push(id);
        addrs.push(addr);
    }
    let names: Vec<String> = ids.iter().map(|i| short(i)).collect();
    answers_from_all(&wf, "hello", &names).await;
    let listed_now = listed(&wf.api, "hello").await;
    assert_eq!(listed_now.len(), 3, "{listed_now:?}");
    assert!(!listed_now.contains(&plain_addr.to_string()));
    let id0 = id_of(&wf.api, "hello", addrs[0]).await.expect("listed");
    assert!(
        id0.starts_with("docker:") && id0.ends_with(&format!(":{}:8080", names[0])),
        "{id0}"
    );
    let reg_json = wf.api.json(&format!("/v1/registry/hello/{id0}")).await;
    assert_eq!(reg_json["tags"]["n"], "x", "{reg_json}");
    let log = reg.log();
    let plain_short = short(&plain);
    assert!(
        !log.lines()
            .any(|l| l.contains(&plain_short) && l.contains("registered")),
        "{log}"
    );

    // `docker stop` with requests in flight (slow ones on every instance)
    // and a steady stream of new ones: no client sees an error.
    let stop_errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut slow = JoinSet::new();
    for _ in 0..6 {
        let proxy = wf.proxy;
        slow.spawn(async move { get(proxy, "hello.svc", "/slow?ms=1500").await });
    }
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let steady = {
        let (proxy, done, errors) = (wf.proxy, done.clone(), stop_errors.clone());
        tokio::spawn(async move {
            let mut n = 0;
            while !done.load(SeqCst) {
                match get(proxy, "hello.svc", "/").await {
                    Ok(r) if r.status == StatusCode::OK => {}
                    Ok(r) => errors
                        .lock()
                        .unwrap()
                        .push(format!("{}: {}", r.status, r.text())),
                    Err(e) => errors.lock().unwrap().push(e.to_string()),
                }
                n += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            n
        })
    };
    // Let the slow requests reach their instances.
    tokio::time::sleep(Duration::from_millis(300)).await;
    docker(&["stop", &ids[0]]).await;
    let gone0 = addrs[0].to_string();
    wait_listed(&wf.api, "hello", "the stopped container removed", |a| {
        !a.contains(&gone0)
    })
    .await;
    while let Some(r) = slow.join_next().await {
        let reply = r.expect("join").expect("slow request through the proxy");
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    }
    done.store(true, SeqCst);
    let steady_n = within(20, "steady requests end", steady)
        .await
        .expect("join");
    let errors = stop_errors.lock().unwrap().clone();
    assert!(
        errors.is_empty(),
        "client errors during docker stop: {errors:?}"
    );
    assert!(steady_n > 0);
    let log = reg.log();
    assert!(
        log.contains("draining: the container got its stop signal"),
        "{log}"
    );

    // `docker kill`: removed.
    let start = Instant::now();
    docker(&["kill", &ids[1]]).await;
    let cli = start.elapsed();
    let gone1 = addrs[1].to_string();
    wait_listed(&wf.api, "hello", "the killed container removed", |a| {
        !a.contains(&gone1)
    })
    .await;
    println!(
        "docker kill -> removed: {:?} (the docker kill command took {cli:?} of it)",
        start.elapsed()
    );
    assert_eq!(listed(&wf.api, "hello").await, [addrs[2].to_string()]);
    answers_from_all(&wf, "hello", &names[2..]).await;
    // The unlabelled container was never registered, in any service.
    let all = wf.api.json("/v1/registry").await.to_string();
    assert!(!all.contains(&plain_addr.to_string()), "{all}");

    reg.signal(Signal::SIGTERM);
    let status = reg.wait(20, "registrar stops").await;
    assert!(status.success(), "{status}\n{}", reg.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_healthy_containers_are_registered_and_unhealthy_ones_come_back() {
    let scope = Scope::new("health");
    let image = scope.image(true).await;
    let wf = AdminProxy::start("", "").await;
    let _reg = registrar(&wf.api, &scope, &[]);
    let id = scope
        .run(&image, &["-l", "wayfinder.service=checked"])
        .await;
    let addr = published(&id).await;
    let addr_s = addr.to_string();
    wait_listed(&wf.api, "checked", "registered once healthy", |a| {
        a.contains(&addr_s)
    })
    .await;
    // It was registered only once Docker called it healthy.
    let health = docker(&["inspect", "-f", "{{.State.Health.Status}}", &id]).await;
    assert_eq!(health, "healthy");

    // Its check fails: Docker calls it unhealthy, it leaves.
    let r = get(addr, "x", "/sick").await.expect("GET /sick");
    assert_eq!(r.status, StatusCode::OK);
    wait_listed(&wf.api, "checked", "removed when unhealthy", |a| {
        a.is_empty()
    })
    .await;
    let health = docker(&["inspect", "-f", "{{.State.Health.Status}}", &id]).await;
    assert_eq!(health, "unhealthy");
    // ...and comes back when healthy again.
    let r = get(addr, "x", "/well").await.expect("GET /well");
    assert_eq!(r.status, StatusCode::OK);
    wait_listed(&wf.api, "checked", "back when healthy", |a| {
        a.contains(&addr_s)
    })
    .await;
    assert_eq!(
        wf.get_ok("checked").await.trim(),
        format!("hello from {}", short(&id))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_deregisters_and_unpause_registers_again() {
    let scope = Scope::new("pause");
    let image = scope.image(false).await;
    let wf = AdminProxy::start("", "").await;
    let _reg = registrar(&wf.api, &scope, &[]);
    let id = scope
        .run(
            &image,
            &[
                "-e",
                "SERVICE_NAME=paused",
                "-e",
                "SERVICE_TAGS=primary,version=2",
            ],
        )
        .await;
    let addr = published(&id).await.to_string();
    wait_listed(
        &wf.api,
        "paused",
        "registered (Registrator's SERVICE_NAME)",
        |a| a.contains(&addr),
    )
    .await;
    let inst = wf.api.instances("paused").await;
    assert_eq!(inst[0]["tags"]["version"], "2", "{inst:?}");
    assert_eq!(inst[0]["tags"]["primary"], "", "{inst:?}");
    docker(&["pause", &id]).await;
    wait_listed(&wf.api, "paused", "removed while paused", |a| a.is_empty()).await;
    docker(&["unpause", &id]).await;
    wait_listed(&wf.api, "paused", "back after unpause", |a| {
        a.contains(&addr)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_registrar_reconciles_without_duplicates_or_leftovers() {
    let scope = Scope::new("restart");
    let image = scope.image(false).await;
    let wf = AdminProxy::start("", "").await;
    // A registration that is not the registrar's: never touched.
    let (_hold, other) = support::refused_addr();
    wf.api.register_ok("svc", "manual-1", other, "120s").await;

    // A long TTL: what goes away below goes by the reconcile, not by expiry.
    let args = ["--ttl", "120s", "--registrar-id", "reconcile-test"];
    let mut reg = registrar(&wf.api, &scope, &args);
    let a = scope.run(&image, &["-l", "wayfinder.service=svc"]).await;
    let b = scope.run(&image, &["-l", "wayfinder.service=svc"]).await;
    let (addr_a, addr_b) = (
        published(&a).await.to_string(),
        published(&b).await.to_string(),
    );
    wait_listed(&wf.api, "svc", "a and b registered", |l| {
        l.contains(&addr_a) && l.contains(&addr_b)
    })
    .await;

    // The registrar dies; meanwhile a is killed and c starts.
    reg.signal(Signal::SIGKILL);
    reg.wait(20, "registrar killed").await;
    docker(&["kill", &a]).await;
    docker(&["rm", &a]).await;
    let c = scope.run(&image, &["-l", "wayfinder.service=svc"]).await;
    let addr_c = published(&c).await.to_string();
    // Nothing follows Docker now: a is still listed, c is not.
    let now = listed(&wf.api, "svc").await;
    assert!(now.contains(&addr_a) && !now.contains(&addr_c), "{now:?}");

    let _reg = registrar(&wf.api, &scope, &args);
    wait_listed(&wf.api, "svc", "reconciled", |l| {
        l.contains(&addr_b) && l.contains(&addr_c) && !l.contains(&addr_a)
    })
    .await;
    let instances = wf.api.instances("svc").await;
    let ids: Vec<&str> = instances.iter().filter_map(|i| i["id"].as_str()).collect();
    let mut expected = vec![
        "manual-1".to_owned(),
        format!("docker:reconcile-test:{}:8080", short(&b)),
        format!("docker:reconcile-test:{}:8080", short(&c)),
    ];
    expected.sort();
    let mut got: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
    got.sort();
    assert_eq!(got, expected, "{instances:?}");
}

/// A unix socket that forwards every connection to the engine's, and can
/// be cut (listener closed, socket file removed, open connections
/// dropped) and restored.
struct SocketCut {
    path: PathBuf,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl SocketCut {
    fn new(path: PathBuf) -> SocketCut {
        let mut s = SocketCut { path, task: None };
        s.restore();
        s
    }

    fn restore(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        let listener = UnixListener::bind(&self.path).expect("bind the forwarding socket");
        self.task = Some(tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    break;
                };
                conns.spawn(async move {
                    if let Ok(mut outbound) = UnixStream::connect(DOCKER_SOCK).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        }));
    }

    /// Dropping the task drops the listener and every connection.
    fn cut(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for SocketCut {
    fn drop(&mut self) {
        self.cut();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_docker_socket_keeps_registrations_until_their_ttl_and_resyncs() {
    let scope = Scope::new("socket");
    let image = scope.image(false).await;
    // Expired registrations leave at once (no self-preservation hold), so
    // the TTL is what removes them.
    let wf = AdminProxy::start("", "[registry]\nself_preservation_percent = 0\n").await;
    let sock = support::temp_path("docker-cut", ".sock");
    let mut cut = SocketCut::new(sock.clone());
    let host = format!("unix://{}", sock.display());
    let reg = registrar(&wf.api, &scope, &["--ttl", "3s", "--docker-host", &host]);
    let a = scope.run(&image, &["-l", "wayfinder.service=keep"]).await;
    let b = scope.run(&image, &["-l", "wayfinder.service=keep"]).await;
    let (addr_a, addr_b) = (
        published(&a).await.to_string(),
        published(&b).await.to_string(),
    );
    wait_listed(&wf.api, "keep", "a and b registered", |l| {
        l.contains(&addr_a) && l.contains(&addr_b)
    })
    .await;

    // The socket goes away: the registrations stay, not heartbeated.
    cut.cut();
    let cut_at = Instant::now();
    within(30, "the registrar notices", async {
        while !reg.log().contains("lost Docker") && !reg.log().contains("Docker does not answer") {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let now = listed(&wf.api, "keep").await;
    assert!(now.contains(&addr_a) && now.contains(&addr_b), "{now:?}");
    // While it is away, b dies and c starts: it cannot see either.
    docker(&["kill", &b]).await;
    let c = scope.run(&image, &["-l", "wayfinder.service=keep"]).await;
    let addr_c = published(&c).await.to_string();
    // Then the TTL (3s) removes them: nothing heartbeats them.
    wait_listed(&wf.api, "keep", "expired after the TTL", |l| l.is_empty()).await;
    println!(
        "socket cut -> registrations expired: {:?}",
        cut_at.elapsed()
    );
    assert!(
        cut_at.elapsed() >= Duration::from_secs(2),
        "removed before the TTL"
    );

    // The socket comes back: a resync registers what runs, nothing else.
    cut.restore();
    wait_listed(&wf.api, "keep", "resynced", |l| {
        l.contains(&addr_a) && l.contains(&addr_c) && !l.contains(&addr_b)
    })
    .await;
    reg.wait_log(30, "Docker answers again").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_ports_register_several_services() {
    let scope = Scope::new("ports");
    let image = scope.image(false).await;
    let wf = AdminProxy::start("", "").await;
    let _reg = registrar(&wf.api, &scope, &[]);
    // Port 8080 is published by Scope::run; 9090 too, (nothing listens on
    // it: the proxy does not check it).
    let id = scope
        .run(
            &image,
            &[
                "-p",
                "127.0.0.1::9090",
                "-l",
                "SERVICE_8080_NAME=front",
                "-l",
                "SERVICE_9090_NAME=metrics",
            ],
        )
        .await;
    let front = published(&id).await.to_string();
    wait_listed(&wf.api, "front", "front registered", |l| {
        l == [front.clone()]
    })
    .await;
    wait_listed(&wf.api, "metrics", "metrics registered", |l| l.len() == 1).await;
    let metrics = wf.api.instances("metrics").await;
    assert!(
        metrics[0]["id"]
            .as_str()
            .unwrap()
            .ends_with(&format!("{}:9090", short(&id))),
        "{metrics:?}"
    );
}

// === the image and the compose example ===

/// `docker-compose` (Compose v1, Debian's) or, without it, `docker compose`.
fn compose_command() -> Vec<String> {
    let v1 = std::process::Command::new("docker-compose")
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if v1 {
        vec!["docker-compose".into()]
    } else {
        vec!["docker".into(), "compose".into()]
    }
}

/// A compose project of this test: `down` and removal by id of whatever
/// it left (containers, its network) when dropped.
struct Compose {
    project: String,
    network: String,
    env: Vec<(String, String)>,
}

impl Compose {
    fn command(&self, args: &[&str]) -> std::process::Command {
        let cmd = compose_command();
        let mut c = std::process::Command::new(&cmd[0]);
        c.args(&cmd[1..])
            .args(["-p", &self.project, "-f"])
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("docker/compose.yml"))
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("DOCKER_HOST", format!("unix://{DOCKER_SOCK}"))
            .stdin(Stdio::null());
        c
    }
}

impl Drop for Compose {
    fn drop(&mut self) {
        let _ = self
            .command(&["down", "-t", "2"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let filter = format!("label=com.docker.compose.project={}", self.project);
        let ids = docker_blocking(&["ps", "-aq", "--no-trunc", "--filter", &filter]);
        for id in ids.lines() {
            docker_blocking(&["rm", "-f", "-v", id]);
        }
        let nets = docker_blocking(&[
            "network",
            "ls",
            "-q",
            "--no-trunc",
            "--filter",
            &format!("name=^{}$", self.network),
        ]);
        for id in nets.lines() {
            docker_blocking(&["network", "rm", id]);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_and_the_compose_example_serve_three_instances_through_the_proxy() {
    let scope = Scope::new("compose");
    let unique = scope.tag.rsplit(':').next().unwrap().to_owned();
    let (image, demo) = (
        format!("wayfinder-test:{unique}"),
        format!("wayfinder-test-demo:{unique}"),
    );
    // The documented build, from this test's binary (a debug build:
    // quicker than the release one it builds by default).
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("docker/build-image.sh");
    let out = within(
        300,
        "docker/build-image.sh",
        tokio::process::Command::new("bash")
            .arg(&script)
            .args([
                "--binary",
                env!("CARGO_BIN_EXE_wayfinder"),
                "--tag",
                &image,
                "--demo-tag",
                &demo,
            ])
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("run docker/build-image.sh");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    for id in stdout.lines().filter(|l| l.starts_with("sha256:")) {
        scope.images.lock().unwrap().push(id.to_owned());
    }
    assert!(
        out.status.success(),
        "build-image.sh: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(scope.images.lock().unwrap().len(), 2, "{stdout}");

    // Docker publishes the proxy on this host port; released just before
    // `compose up` binds it (a small window, as for the other daemons).
    let port = support::ReservedPort::tcp().release();
    let project = format!("wft{}", unique.replace(['-', '.'], ""));
    let compose = Compose {
        network: format!("{project}-net"),
        env: vec![
            ("WAYFINDER_IMAGE".into(), image.clone()),
            ("WAYFINDER_DEMO_IMAGE".into(), demo.clone()),
            ("WAYFINDER_PORT".into(), port.to_string()),
            ("WAYFINDER_NETWORK".into(), format!("{project}-net")),
        ],
        project,
    };
    let mut up = compose.command(&["up", "-d"]);
    let out = tokio::task::spawn_blocking(move || up.output())
        .await
        .expect("join")
        .expect("run compose up");
    assert!(
        out.status.success(),
        "compose up: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );

    // One command, then the proxy answers from all three instances in turn.
    let proxy: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut seen = BTreeSet::new();
    let start = Instant::now();
    within(
        90,
        "answers from three instances through the proxy",
        async {
            while seen.len() < 3 {
                if let Ok(r) = get(proxy, "localhost", "/").await {
                    if r.status == StatusCode::OK && r.text().starts_with("hello from ") {
                        seen.insert(r.text());
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        },
    )
    .await;
    println!(
        "compose up -> three instances answering: {:?}",
        start.elapsed()
    );
    drop(compose);
}
