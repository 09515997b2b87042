//! etcd as the shared registry, against a real etcd (`/usr/bin/etcd`, the
//! Debian package `etcd-server`) that each test starts on loopback ports
//! picked at run time, with a temporary data directory, and kills (by its
//! PID only) when it ends. Several wayfinder proxies run in-process, each
//! pointed at that etcd.
//!
//! Without etcd these tests fail, saying how to install it: they never pass
//! silently.

mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use http::header;
use nix::sys::signal::Signal;
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use support::{
    address_in_use, full, members, request, send, wait_for, wayfinder, AdminProxy, Backend, Daemon,
    Proc, ReservedPort,
};
use wayfinder::app::Running;

/// The key prefix the test proxies use.
const PREFIX: &str = "/wayfinder-test/";

// === impl Etcd ===

/// A real etcd owned by the test: its ports and its data directory.
struct Etcd {
    bin: String,
    client_port: u16,
    peer_port: u16,
    daemon: Daemon,
}

impl Etcd {
    /// Starts etcd in a fresh temporary directory and waits until it answers.
    async fn start() -> Etcd {
        // Where the Debian package puts it; `WAYFINDER_ETCD` overrides it.
        let bin = Daemon::binary("WAYFINDER_ETCD", "/usr/bin/etcd", "etcd-server");
        // etcd's JSON gateway dials the client listen address as given, so
        // it cannot be port 0: both ports are reserved until etcd starts,
        // and taken again if another process got one in that moment.
        for _ in 0..10 {
            let (client, peer) = (ReservedPort::tcp(), ReservedPort::tcp());
            let mut etcd = Etcd {
                bin: bin.clone(),
                client_port: client.port(),
                peer_port: peer.port(),
                daemon: Daemon::new("etcd"),
            };
            let cmd = etcd.command();
            client.release();
            peer.release();
            match etcd.try_spawn(cmd).await {
                Ok(()) => return etcd,
                Err(log) if address_in_use(&log) => continue,
                Err(log) => panic!("etcd exited during start:\n{log}"),
            }
        }
        panic!("etcd could not bind its ports in 10 tries");
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.client_port))
    }

    fn command(&self) -> Command {
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--name=default")
            .arg(format!(
                "--data-dir={}",
                self.daemon.dir.join("data").display()
            ))
            .arg(format!("--listen-client-urls={}", self.url()))
            .arg(format!("--advertise-client-urls={}", self.url()))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=default={peer}"))
            // A one-member cluster: elect itself quickly.
            .arg("--heartbeat-interval=50")
            .arg("--election-timeout=500");
        cmd
    }

    /// Starts `cmd` and waits until this etcd serves clients on its port
    /// (its log says so: not another process that took the port) and its
    /// gateway answers; `Err` with its log if it exits first.
    async fn try_spawn(&mut self, cmd: Command) -> Result<(), String> {
        let addr = self.addr();
        let ready = move || async move {
            post(addr, "/v3/kv/range", r#"{"key":"AA=="}"#.into())
                .await
                .is_ok_and(|(status, _)| status == 200)
        };
        // etcd 3.4: "serving insecure client requests on 127.0.0.1:P";
        // 3.5 names the address on a JSON line about serving clients. (A
        // failed bind names it too, on a line about the failure.)
        let addr_text = format!("127.0.0.1:{}", self.client_port);
        let bound = move |log: &str| {
            log.lines()
                .any(|l| l.contains("serving") && l.contains(&addr_text) && !address_in_use(l))
        };
        self.daemon
            .try_spawn(
                cmd,
                bound,
                Duration::from_secs(30),
                Duration::from_millis(20),
                ready,
            )
            .await
    }

    /// SIGKILL, then wait for it to exit.
    fn kill(&mut self) {
        self.daemon.kill();
    }

    /// Starts it again on the same ports and data (freed by the kill; in
    /// the moment before etcd binds them again, another process could take
    /// one, and the restart fails saying so).
    async fn restart(&mut self) {
        self.kill();
        let cmd = self.command();
        if let Err(log) = self.try_spawn(cmd).await {
            panic!("etcd exited during its restart:\n{log}");
        }
    }

    /// How many keys start with `prefix`.
    async fn count(&self, prefix: &str) -> u64 {
        let mut end = prefix.as_bytes().to_vec();
        *end.last_mut().expect("a prefix") += 1;
        let reply = self
            .call(
                "/v3/kv/range",
                json!({ "key": b64(prefix), "range_end": B64.encode(end), "count_only": true }),
            )
            .await;
        // The gateway leaves out zero values and writes int64 as a string.
        reply["count"]
            .as_str()
            .map_or(0, |c| c.parse().expect("count"))
    }

    /// A call straight to etcd's gateway, which must succeed.
    async fn call(&self, path: &str, body: Value) -> Value {
        let (status, text) = post(self.addr(), path, body.to_string())
            .await
            .unwrap_or_else(|e| panic!("etcd {path}: {e}"));
        assert_eq!(status, 200, "etcd {path}: {text}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("etcd {path}: {e}: {text}"))
    }
}

/// A POST of JSON `body` to etcd's gateway at `addr` on a fresh connection,
/// bounded to 10 s: status and body, or what failed.
async fn post(addr: SocketAddr, path: &str, body: String) -> Result<(u16, String), String> {
    let req = request("POST", "etcd", path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(full(body))
        .map_err(|e| e.to_string())?;
    match tokio::time::timeout(Duration::from_secs(10), send(addr, req)).await {
        Ok(Ok(reply)) => Ok((reply.status.as_u16(), reply.text())),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("POST {path}: no answer within 10s")),
    }
}

fn b64(s: &str) -> String {
    B64.encode(s)
}

// === impl Relay ===

/// A TCP relay in front of etcd that the test can cut (every connection
/// closed, new ones refused) and restore, to take etcd away from one proxy
/// while the test keeps talking to it.
struct Relay {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    task: JoinHandle<()>,
}

impl Relay {
    async fn start(to: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let addr = listener.local_addr().expect("relay address");
        let cut = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let task = tokio::spawn({
            let (cut, conns) = (cut.clone(), conns.clone());
            async move {
                loop {
                    let Ok((mut inbound, _)) = listener.accept().await else {
                        continue;
                    };
                    if cut.load(Ordering::SeqCst) {
                        continue; // dropped: the connection closes at once
                    }
                    conns.lock().unwrap().push(tokio::spawn(async move {
                        if let Ok(mut outbound) = TcpStream::connect(to).await {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    }));
                }
            }
        });
        Relay {
            addr,
            cut,
            conns,
            task,
        }
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.cut();
        self.task.abort();
    }
}

// === impl Wf ===

/// One wayfinder proxy in this process, using etcd at `endpoint`, with its
/// admin API on.
struct Wf(AdminProxy);

impl Wf {
    async fn start(endpoint: &str, extra: &str) -> Wf {
        Wf(AdminProxy::start(
            "",
            &format!(
                "[registry.etcd]\nendpoints = [\"{endpoint}\"]\nprefix = \"{PREFIX}\"\n\
                 dial_timeout = \"500ms\"\nrequest_timeout = \"2s\"\n{extra}"
            ),
        )
        .await)
    }

    fn running(&self) -> &Running {
        self.0.running()
    }

    /// Where its admin API listens.
    fn admin_addr(&self) -> SocketAddr {
        self.0.api.addr
    }

    /// A GET through the proxy for `Host: {service}.svc`.
    async fn get(&self, service: &str) -> Result<(u16, String), String> {
        match self.0.get(service).await {
            Ok(reply) => Ok((reply.status.as_u16(), reply.text())),
            Err(e) => Err(e.to_string()),
        }
    }

    /// An admin API call.
    async fn admin(&self, method: &str, path: &str, body: Option<Value>) -> (u16, String) {
        let body = body.map(|b| b.to_string());
        let reply = self.0.api.call(method, path, body.as_deref()).await;
        (reply.status.as_u16(), reply.text())
    }

    async fn register(
        &self,
        service: &str,
        id: &str,
        addr: SocketAddr,
        ttl: &str,
    ) -> (u16, String) {
        let reply = self.0.api.register_addr(service, id, addr, ttl).await;
        (reply.status.as_u16(), reply.text())
    }

    /// The addresses this proxy's snapshot lists for `service`.
    fn members(&self, service: &str) -> BTreeSet<SocketAddr> {
        members(self.running(), service).into_keys().collect()
    }

    /// The `etcd` entry of `GET /v1/sources`.
    async fn etcd_source(&self) -> Value {
        self.0.api.source("etcd").await
    }

    async fn stop(mut self) {
        self.0.shutdown().await;
    }
}

fn set(addrs: &[SocketAddr]) -> BTreeSet<SocketAddr> {
    addrs.iter().copied().collect()
}

// === tests ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_through_one_proxy_is_routable_through_another_and_deregistration_back() {
    let etcd = Etcd::start().await;
    let a = Wf::start(&etcd.url(), "").await;
    let b = Wf::start(&etcd.url(), "").await;
    let backend = Backend::start("files-1").await;
    assert_eq!(b.get("files").await.map(|r| r.0), Ok(404));

    let (status, text) = a.register("files", "f1", backend.addr, "30s").await;
    assert_eq!(status, 201, "{text}");
    wait_for(Duration::from_secs(15), "routable through B", || async {
        b.get("files").await == Ok((200, "files-1".to_owned()))
    })
    .await;
    let (_, text) = b.admin("GET", "/v1/registry/files", None).await;
    assert!(text.contains("\"source\": \"etcd\""), "{text}");

    // Deregistering through B removes it from A, even though it was the
    // service's last instance (an explicit removal, not a lease expiry).
    let (status, text) = b.admin("DELETE", "/v1/registry/files/f1", None).await;
    assert_eq!(status, 200, "{text}");
    wait_for(Duration::from_secs(15), "gone from A", || async {
        a.members("files").is_empty()
    })
    .await;
    assert_eq!(a.get("files").await.map(|r| r.0), Ok(404));
    let (status, _) = a.admin("DELETE", "/v1/registry/files/f1", None).await;
    assert_eq!(status, 404);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_of_a_killed_registrar_expires_on_every_proxy() {
    let etcd = Etcd::start().await;
    let a = Wf::start(&etcd.url(), "").await;
    let b = Wf::start(&etcd.url(), "").await;
    let stay1 = Backend::start("stay-1").await;
    let stay2 = Backend::start("stay-2").await;
    let doomed = Backend::start("doomed").await;
    for (id, be) in [("s1", &stay1), ("s2", &stay2)] {
        assert_eq!(a.register("api", id, be.addr, "60s").await.0, 201);
    }
    let mut cmd = wayfinder(&["register", "--registry"]);
    cmd.arg(format!("http://{}", b.admin_addr()))
        .args(["--service", "api", "--id", "doomed", "--address"])
        .arg(doomed.addr.to_string())
        .args(["--check-tcp", "--ttl", "2s"]);
    let mut registrar = Proc::spawn(cmd);
    let all = set(&[stay1.addr, stay2.addr, doomed.addr]);
    wait_for(
        Duration::from_secs(10),
        "registrar's instance on both",
        || async { a.members("api") == all && b.members("api") == all },
    )
    .await;

    let killed = Instant::now();
    registrar.signal(Signal::SIGKILL);
    registrar.wait(10, "registrar exits after SIGKILL").await;
    let rest = set(&[stay1.addr, stay2.addr]);
    wait_for(
        Duration::from_secs(30),
        "expired on both proxies (TTL 2s)",
        || async { a.members("api") == rest && b.members("api") == rest },
    )
    .await;
    println!(
        "registrar killed: its instance left both proxies after {:?}",
        killed.elapsed()
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_outage_keeps_the_last_set_refuses_registrations_and_recovers() {
    let mut etcd = Etcd::start().await;
    let a = Wf::start(&etcd.url(), "").await;
    let b = Wf::start(&etcd.url(), "").await;
    let backends = [
        Backend::start("web-1").await,
        Backend::start("web-2").await,
        Backend::start("web-3").await,
    ];
    for (i, be) in backends.iter().enumerate() {
        assert_eq!(
            a.register("web", &format!("w{i}"), be.addr, "60s").await.0,
            201
        );
    }
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    wait_for(Duration::from_secs(15), "registered on both", || async {
        b.members("web") == set(&addrs)
    })
    .await;

    etcd.kill();
    wait_for(Duration::from_secs(15), "etcd source failing", || async {
        a.etcd_source().await["state"] == "failing" && b.etcd_source().await["state"] == "failing"
    })
    .await;
    let mut errors = Vec::new();
    for i in 0..60 {
        let wf = if i % 2 == 0 { &a } else { &b };
        match wf.get("web").await {
            Ok((200, body)) if body.starts_with("web-") => {}
            other => errors.push(format!("{other:?}")),
        }
    }
    assert!(
        errors.is_empty(),
        "client errors during the outage: {errors:?}"
    );
    let extra = Backend::start("web-4").await;
    let (status, text) = a.register("web", "w4", extra.addr, "60s").await;
    assert_eq!(status, 503, "{text}");
    assert!(
        text.contains("etcd") && text.contains("unavailable"),
        "{text}"
    );
    let (status, text) = b.admin("PUT", "/v1/registry/web/w0/heartbeat", None).await;
    assert_eq!(status, 503, "{text}");
    let source = a.etcd_source().await;
    assert_eq!(source["instances"], 3, "{source}");
    println!("during the outage, /v1/sources etcd: {source}");

    etcd.restart().await;
    let t0 = Instant::now();
    wait_for(
        Duration::from_secs(15),
        "registration accepted again",
        || async { b.register("web", "w4", extra.addr, "60s").await.0 == 201 },
    )
    .await;
    let mut all = addrs.clone();
    all.push(extra.addr);
    wait_for(
        Duration::from_secs(15),
        "new registration on both",
        || async { a.members("web") == set(&all) && b.members("web") == set(&all) },
    )
    .await;
    println!(
        "after etcd restarted: a new registration reached both proxies in {:?}",
        t0.elapsed()
    );
    wait_for(Duration::from_secs(15), "etcd source ok again", || async {
        a.etcd_source().await["state"] == "ok" && b.etcd_source().await["state"] == "ok"
    })
    .await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_behind_a_compaction_relists() {
    let etcd = Etcd::start().await;
    let relay = Relay::start(etcd.addr()).await;
    let a = Wf::start(&format!("http://{}", relay.addr), "").await;
    let backends = [
        Backend::start("c-1").await,
        Backend::start("c-2").await,
        Backend::start("c-3").await,
        Backend::start("c-4").await,
    ];
    for (i, be) in backends[..3].iter().enumerate() {
        assert_eq!(
            a.register("comp", &format!("c{i}"), be.addr, "60s").await.0,
            201
        );
    }
    assert_eq!(a.members("comp").len(), 3);

    // Take etcd away from the proxy, change things behind its back and
    // compact the history its watch would resume from.
    relay.cut();
    wait_for(Duration::from_secs(15), "proxy notices", || async {
        a.etcd_source().await["state"] == "failing"
    })
    .await;
    let key = |id: &str| b64(&format!("{PREFIX}services/comp/{id}"));
    etcd.call("/v3/kv/deleterange", json!({ "key": key("c0") }))
        .await;
    let value = json!({ "address": backends[3].addr.to_string(), "weight": 2 }).to_string();
    let put = etcd
        .call(
            "/v3/kv/put",
            json!({ "key": key("c3"), "value": b64(&value) }),
        )
        .await;
    let revision = put["header"]["revision"]
        .as_str()
        .expect("revision")
        .to_owned();
    etcd.call(
        "/v3/kv/compaction",
        json!({ "revision": revision, "physical": true }),
    )
    .await;

    relay.restore();
    let want = set(&[backends[1].addr, backends[2].addr, backends[3].addr]);
    let took = wait_for(
        Duration::from_secs(10),
        "proxy re-listed after compaction",
        || async { a.members("comp") == want },
    )
    .await;
    println!("resumed after compaction to revision {revision}: re-listed in {took:?}");
    let weight = a.running().registry.load().service("comp").and_then(|s| {
        s.members()
            .iter()
            .find(|m| m.instance.addr() == backends[3].addr)
            .map(|m| m.weight)
    });
    assert_eq!(
        weight,
        Some(2),
        "a key written by another tool is read with its weight"
    );
    wait_for(Duration::from_secs(15), "etcd source ok", || async {
        a.etcd_source().await["state"] == "ok"
    })
    .await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authenticated_etcd_with_username_and_password() {
    let etcd = Etcd::start().await;
    etcd.call(
        "/v3/auth/user/add",
        json!({ "name": "root", "password": "root-pw" }),
    )
    .await;
    etcd.call("/v3/auth/role/add", json!({ "name": "root" }))
        .await;
    etcd.call(
        "/v3/auth/user/grant",
        json!({ "user": "root", "role": "root" }),
    )
    .await;
    etcd.call("/v3/auth/enable", json!({})).await;

    let a = Wf::start(&etcd.url(), "username = \"root\"\npassword = \"root-pw\"\n").await;
    let backend = Backend::start("secure-1").await;
    let (status, text) = a.register("secure", "s1", backend.addr, "30s").await;
    assert_eq!(status, 201, "{text}");
    wait_for(Duration::from_secs(15), "routable", || async {
        a.get("secure").await == Ok((200, "secure-1".to_owned()))
    })
    .await;
    assert_eq!(
        a.admin("PUT", "/v1/registry/secure/s1/heartbeat", None)
            .await
            .0,
        200
    );

    // Without credentials etcd refuses, and the proxy says so.
    let anonymous = Wf::start(&etcd.url(), "").await;
    let (status, text) = anonymous
        .register("secure", "s2", backend.addr, "30s")
        .await;
    assert_eq!(status, 503, "{text}");
    assert_eq!(anonymous.etcd_source().await["state"], "failing");
    a.stop().await;
    anonymous.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mass_lease_expiry_is_held_back_by_self_preservation() {
    let etcd = Etcd::start().await;
    let a = Wf::start(&etcd.url(), "").await;
    let b = Wf::start(&etcd.url(), "").await;
    let backends = [
        Backend::start("m-1").await,
        Backend::start("m-2").await,
        Backend::start("m-3").await,
    ];
    for (i, be) in backends.iter().enumerate() {
        assert_eq!(
            a.register("mass", &format!("m{i}"), be.addr, "2s").await.0,
            201
        );
    }
    let all: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    wait_for(Duration::from_secs(15), "on both", || async {
        b.members("mass") == set(&all)
    })
    .await;
    // No heartbeats: every lease expires. That looks like an outage of the
    // registrars, not a decision: beyond the first half of the service, the
    // removals are held back on both proxies.
    let held = |s: Value| s["held_back"].as_array().map_or(0, Vec::len);
    wait_for(
        Duration::from_secs(30),
        "expiry held back on both",
        || async { held(a.etcd_source().await) >= 2 && held(b.etcd_source().await) >= 2 },
    )
    .await;
    // Every lease has expired and both proxies have seen all that came of
    // it: etcd lists no instance of `mass` any more, and a key written
    // after that (events arrive in revision order) is on both proxies.
    let mass = format!("{PREFIX}services/mass/");
    wait_for(Duration::from_secs(30), "every lease expired", || async {
        etcd.count(&mass).await == 0
    })
    .await;
    let (_hold, witness) = support::refused_addr();
    let key = b64(&format!("{PREFIX}services/witness/w1"));
    let value = b64(&json!({ "address": witness.to_string() }).to_string());
    etcd.call("/v3/kv/put", json!({ "key": key, "value": value }))
        .await;
    wait_for(Duration::from_secs(30), "a later key on both", || async {
        a.members("witness").len() == 1 && b.members("witness").len() == 1
    })
    .await;
    for wf in [&a, &b] {
        let kept = wf.members("mass").len();
        assert!(kept >= 2, "only {kept} of 3 kept");
        assert_eq!(held(wf.etcd_source().await), kept);
        assert_eq!(wf.get("mass").await.map(|r| r.0), Ok(200));
    }
    // An operator confirms: the removals apply.
    let (status, text) = a.admin("POST", "/v1/sources/etcd/release", None).await;
    assert_eq!(status, 200, "{text}");
    wait_for(Duration::from_secs(15), "released on A", || async {
        a.members("mass").is_empty()
    })
    .await;
    assert!(
        b.members("mass").len() >= 2,
        "B keeps them until released there"
    );
    a.stop().await;
    b.stop().await;
}
