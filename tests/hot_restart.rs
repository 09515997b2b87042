//! Hot restart (`wayfinder run --handoff-socket` / `--takeover`), with
//! real processes: a successor takes over the listening sockets (plain,
//! TLS, admin) and the registrations of a running proxy under a steady
//! load of keep-alive and new connections, and not one request fails;
//! the old process drains and exits 0. A takeover with nothing to take
//! over from fails at once with a clear message.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use support::pki::Pki;
use support::{errors, temp_path, wayfinder, within, Api, Backend, ConfigFile, Load, Proc};

/// `wayfinder run --config FILE ARGS...`, its stderr collected.
fn run(file: &ConfigFile, args: &[&str]) -> Proc {
    let mut cmd = wayfinder(&["run", "--config"]);
    cmd.arg(&file.path).args(args);
    Proc::spawn(cmd)
}

/// Clients that each open a new connection per request until stopped;
/// every failure, as text.
struct Fresh {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<Vec<String>>>,
}

impl Fresh {
    fn start(addr: SocketAddr, host: &'static str, workers: usize) -> Fresh {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicUsize::new(0));
        let tasks = (0..workers)
            .map(|_| {
                let (stop, done) = (stop.clone(), done.clone());
                tokio::spawn(async move {
                    let mut failed = Vec::new();
                    while !stop.load(SeqCst) {
                        match support::get(addr, host, "/").await {
                            Ok(r) if r.status == StatusCode::OK => {}
                            Ok(r) => failed.push(format!("{}: {}", r.status, r.text())),
                            Err(e) => failed.push(format!("client error: {e}")),
                        }
                        done.fetch_add(1, SeqCst);
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    failed
                })
            })
            .collect();
        Fresh { stop, done, tasks }
    }

    async fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, SeqCst);
        let mut failed = Vec::new();
        for t in self.tasks {
            failed.extend(t.await.expect("client task"));
        }
        (self.done.load(SeqCst), failed)
    }
}

/// One GET over TLS on a fresh connection (`Connection: close`): the status
/// line and the body.
async fn tls_get(pki: &Pki, addr: SocketAddr, host: &str) -> String {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect TLS listener");
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = pki
        .connector()
        .connect(name, tcp)
        .await
        .expect("TLS handshake");
    tls.write_all(
        format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_successor_takes_over_under_load_without_a_failed_request() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let reg = Backend::start("registered").await;
    let pki = Pki::new("hot-restart");
    let (crt, key) = pki.leaf("server", &["localhost"], false);
    let socket = temp_path("handoff", ".sock");
    let socket_arg = socket.to_str().unwrap();
    let config = ConfigFile::new(
        "hot-restart",
        &format!(
            "listen = [\"127.0.0.1:0\"]\n\
             [[tls]]\nlisten = [\"127.0.0.1:0\"]\n\
             certificates = [{{ cert = \"{}\", key = \"{}\" }}]\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n\
             [timeouts]\nshutdown_drain = \"15s\"\n\
             [services.hello]\ninstances = [\"{}\", \"{}\"]\n",
            crt.display(),
            key.display(),
            a.addr,
            b.addr
        ),
    );
    let mut old = run(&config, &["--handoff-socket", socket_arg]);
    let at = old.listening(30).await;
    let (proxy, admin) = (at.proxy(), at.admin());
    assert_eq!(at.tls.len(), 1, "{}", old.log());

    // A self-registration held only in the old process's memory.
    let api = Api::new(admin);
    api.register_ok("selfreg", "r1", reg.addr, "60s").await;
    let reply = within(10, "GET selfreg", support::get(proxy, "selfreg.svc", "/"))
        .await
        .unwrap();
    assert_eq!(reply.text(), "registered");

    let keep_alive = Load::start(proxy, "hello.svc", 6);
    let fresh = Fresh::start(proxy, "hello.svc", 2);
    keep_alive.run_for(100).await;

    let mut new = run(
        &config,
        &["--takeover", socket_arg, "--handoff-socket", socket_arg],
    );
    let now = new.listening(30).await;
    assert_eq!(now, at, "the successor serves the same listeners");
    new.wait_log(30, "took over; the previous process drains")
        .await;
    let status = old.wait(30, "the old process after the takeover").await;
    assert!(
        status.success(),
        "old exited with {status}; log:\n{}",
        old.log()
    );
    let log = old.log();
    assert!(
        log.contains("handed over to the successor; draining"),
        "{log}"
    );
    assert!(log.contains("drained"), "{log}");
    assert!(
        !log.contains("pre-stop"),
        "no pre-stop delay after a hand-over: {log}"
    );

    // Only the successor is left: the load goes on through it.
    keep_alive.run_for(100).await;
    keep_alive.settle().await;
    let samples = keep_alive.finish().await;
    let (fresh_done, fresh_failed) = fresh.finish().await;
    assert_eq!(errors(&samples), Vec::<String>::new(), "keep-alive clients");
    assert_eq!(fresh_failed, Vec::<String>::new(), "new-connection clients");
    assert!(fresh_done > 0 && samples.len() > 200);

    // The registration came along, its TTL still running, and the TLS
    // and admin listeners are served by the successor.
    let reply = within(10, "GET selfreg", support::get(proxy, "selfreg.svc", "/"))
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), "registered");
    let r1 = api.json("/v1/registry/selfreg/r1").await;
    assert_eq!(r1["address"], reg.addr.to_string(), "{r1}");
    let answer = within(10, "GET over TLS", tls_get(&pki, at.tls[0], "hello.svc")).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(new
        .log()
        .contains("took over the registrations of the previous process"));

    // The successor listens on the hand-over socket in turn.
    assert!(socket.exists());
    new.signal(nix::sys::signal::Signal::SIGTERM);
    let status = new.wait(30, "the successor after SIGTERM").await;
    assert!(status.success(), "{}", new.log());
    assert!(!socket.exists(), "removed at a plain shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_without_a_running_proxy_fails_at_once_and_says_why() {
    let config = ConfigFile::new("hot-restart-none", "listen = [\"127.0.0.1:0\"]\n");
    let socket = temp_path("handoff-none", ".sock");
    let mut cmd = wayfinder(&["run", "--config"]);
    cmd.arg(&config.path).arg("--takeover").arg(&socket);
    let out = within(20, "wayfinder run --takeover", cmd.output())
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("no running wayfinder answered") && stderr.contains("--handoff-socket"),
        "{stderr}"
    );
}

/// A process this test caused to start (not its child): SIGKILLed by its
/// PID on drop if still there.
struct Adopted(i32);

impl Adopted {
    /// Whether it has exited (gone, or a zombie nobody reaped yet).
    fn exited(&self) -> bool {
        match std::fs::read_to_string(format!("/proc/{}/stat", self.0)) {
            Err(_) => true,
            Ok(stat) => stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        }
    }
}

impl Drop for Adopted {
    fn drop(&mut self) {
        if !self.exited() {
            let pid = nix::unistd::Pid::from_raw(self.0);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// The `MAINPID=` of the next `READY=1` on the sd_notify socket.
async fn next_ready(notify: &tokio::net::UnixDatagram) -> i32 {
    let mut buf = [0u8; 256];
    let n = within(30, "READY=1 on NOTIFY_SOCKET", notify.recv(&mut buf))
        .await
        .unwrap();
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(msg.contains("READY=1"), "{msg}");
    msg.lines()
        .find_map(|l| l.strip_prefix("MAINPID="))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no MAINPID in {msg:?}"))
}

/// SIGUSR2 (systemd's `ExecReload`): the running proxy starts its
/// successor itself, which takes over and tells systemd (`NOTIFY_SOCKET`)
/// it is the main process now; the old one exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr2_starts_a_successor_that_tells_systemd_it_is_the_main_process() {
    let a = Backend::start("a").await;
    let dir = temp_path("hot-restart-usr2", "");
    std::fs::create_dir_all(&dir).unwrap();
    let notify = tokio::net::UnixDatagram::bind(dir.join("notify")).unwrap();
    let socket = dir.join("handoff.sock");
    let log = dir.join("stderr.log");
    let config = ConfigFile::new(
        "hot-restart-usr2",
        &format!(
            "listen = [\"127.0.0.1:0\"]\n[services.hello]\ninstances = [\"{}\"]\n",
            a.addr
        ),
    );
    let mut cmd = wayfinder(&["run", "--config"]);
    cmd.arg(&config.path)
        .arg("--handoff-socket")
        .arg(&socket)
        .env("NOTIFY_SOCKET", dir.join("notify"))
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    let mut old = cmd.spawn().unwrap();
    let old_pid = old.id().unwrap() as i32;
    assert_eq!(next_ready(&notify).await, old_pid);
    let text = std::fs::read_to_string(&log).unwrap();
    let proxy: SocketAddr = text
        .split("listen=[")
        .nth(1)
        .and_then(|s| s.split(']').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no listen address in:\n{text}"));
    let reply = within(10, "GET", support::get(proxy, "hello.svc", "/"))
        .await
        .unwrap();
    assert_eq!(reply.text(), "a");

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old_pid),
        nix::sys::signal::Signal::SIGUSR2,
    )
    .unwrap();
    let new = Adopted(next_ready(&notify).await);
    assert_ne!(new.0, old_pid);
    let status = within(30, "the old process exits", old.wait())
        .await
        .unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{status}:\n{text}");
    assert!(text.contains("SIGUSR2: started a successor"), "{text}");
    let reply = within(10, "GET", support::get(proxy, "hello.svc", "/"))
        .await
        .unwrap();
    assert_eq!(reply.text(), "a", "served by the successor");

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(new.0),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    within(30, "the successor exits on SIGTERM", async {
        while !new.exited() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A successor that fails after receiving the sockets (here: its access
/// log cannot be opened) exits 1; the running proxy resumes its admin API
/// and keeps serving, and a later takeover still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_successor_leaves_the_running_proxy_serving() {
    let a = Backend::start("a").await;
    let socket = temp_path("handoff-fail", ".sock");
    let socket_arg = socket.to_str().unwrap();
    let tables = format!(
        "listen = [\"127.0.0.1:0\"]\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [services.hello]\ninstances = [\"{}\"]\n",
        a.addr
    );
    let good = ConfigFile::new("hot-restart-good", &tables);
    let bad = ConfigFile::new(
        "hot-restart-bad",
        &format!("{tables}[access_log]\nenabled = true\npath = \"/nonexistent/dir/access.log\"\n"),
    );
    let mut old = run(&good, &["--handoff-socket", socket_arg]);
    let at = old.listening(30).await;

    let mut failed = run(&bad, &["--takeover", socket_arg]);
    let status = failed.wait(30, "the failing successor").await;
    assert_eq!(status.code(), Some(1), "{}", failed.log());
    assert!(failed.log().contains("access_log.path"), "{}", failed.log());
    old.wait_log(30, "hand-over failed; still serving, admin API resumed")
        .await;
    let api = Api::new(at.admin());
    assert_eq!(api.get("/readyz").await.status, StatusCode::OK);
    let reply = within(10, "GET", support::get(at.proxy(), "hello.svc", "/"))
        .await
        .unwrap();
    assert_eq!(reply.text(), "a");

    let new = run(&good, &["--takeover", socket_arg]);
    new.wait_log(30, "took over; the previous process drains")
        .await;
    assert!(
        old.wait(30, "the old process").await.success(),
        "{}",
        old.log()
    );
    let reply = within(10, "GET", support::get(at.proxy(), "hello.svc", "/"))
        .await
        .unwrap();
    assert_eq!(reply.text(), "a");
    drop(new);
    let _ = std::fs::remove_file(&socket);
}
