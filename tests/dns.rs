//! DNS discovery against a real DNS server: each test starts its own
//! dnsmasq (Debian package `dnsmasq-base`) in the foreground on a loopback port
//! picked at run time, with its records given on the command line, and
//! kills it (by its PID only) when done. Instances are real hyper servers.
//!
//! Without dnsmasq these tests fail, saying how to install it: they never
//! pass silently.

mod support;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::time::Duration;

use tokio::net::UdpSocket;

use support::{
    address_in_use, members, wait_for, AdminProxy, Backend, Daemon, Proxy, ReservedPort,
};
use wayfinder::app::Running;

// === impl Dnsmasq ===

/// A dnsmasq owned by the test, answering only the records it was given
/// (authoritative for `.test`: other names there are NXDOMAIN).
struct Dnsmasq {
    bin: String,
    port: u16,
    daemon: Daemon,
}

impl Dnsmasq {
    /// Starts with `records` (dnsmasq options such as
    /// `--host-record=a.test,127.0.0.2`) and waits until it answers.
    async fn start(records: &[String]) -> Dnsmasq {
        // Where the Debian package puts it; `WAYFINDER_DNSMASQ` overrides it.
        let bin = Daemon::binary("WAYFINDER_DNSMASQ", "/usr/sbin/dnsmasq", "dnsmasq-base");
        // dnsmasq cannot bind port 0 (`--port=0` turns DNS off): the port is
        // reserved (UDP and TCP) until it starts, and taken again if
        // another process got it in that moment.
        for _ in 0..10 {
            let reserved = ReservedPort::tcp_and_udp();
            let mut d = Dnsmasq {
                bin: bin.clone(),
                port: reserved.port(),
                daemon: Daemon::new("dnsmasq"),
            };
            let cmd = d.command(records);
            reserved.release();
            match d.try_spawn(cmd).await {
                Ok(()) => return d,
                Err(log) if address_in_use(&log) => continue,
                Err(log) => panic!("dnsmasq exited during start:\n{log}"),
            }
        }
        panic!("dnsmasq could not bind a port in 10 tries");
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn command(&self, records: &[String]) -> Command {
        // Foreground, on our own port and address only, reading no system
        // file: it cannot clash with a system dnsmasq.
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--no-daemon")
            .arg(format!("--port={}", self.port))
            .arg("--listen-address=127.0.0.1")
            .arg("--bind-interfaces")
            .arg("--no-resolv")
            .arg("--no-hosts")
            .arg("--conf-file=/dev/null")
            .arg(format!(
                "--pid-file={}",
                self.daemon.dir.join("dnsmasq.pid").display()
            ))
            .arg("--local=/test/")
            .arg("--local-ttl=1")
            .arg("--log-facility=-")
            .args(records);
        cmd
    }

    /// Starts `cmd` and waits until it answers; `Err` with its log if it
    /// exits first.
    async fn try_spawn(&mut self, cmd: Command) -> Result<(), String> {
        let addr = self.addr();
        // dnsmasq says "started" once its sockets are bound (and exits,
        // saying why, when it cannot bind them).
        self.daemon
            .try_spawn(
                cmd,
                |log: &str| log.contains("started, version"),
                Duration::from_secs(10),
                Duration::from_millis(10),
                move || answers(addr),
            )
            .await
    }

    fn kill(&mut self) {
        self.daemon.kill();
    }

    /// The same server (port) with other records. (The kill frees the
    /// port; another process taking it before dnsmasq binds it again fails
    /// the restart, saying so.)
    async fn restart(&mut self, records: &[String]) {
        self.kill();
        let cmd = self.command(records);
        if let Err(log) = self.try_spawn(cmd).await {
            panic!("dnsmasq exited during its restart:\n{log}");
        }
    }
}

/// Whether a DNS server answers at `addr` (any answer to a query for
/// `ready.test`).
async fn answers(addr: SocketAddr) -> bool {
    let Ok(sock) = UdpSocket::bind("127.0.0.1:0").await else {
        return false;
    };
    // Header (id 1, recursion desired, one question), then ready.test A IN.
    let mut query = vec![0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in ["ready", "test"] {
        query.push(label.len() as u8);
        query.extend_from_slice(label.as_bytes());
    }
    query.extend_from_slice(&[0, 0, 1, 0, 1]);
    if sock.send_to(&query, addr).await.is_err() {
        return false;
    }
    let mut buf = [0u8; 512];
    matches!(
        tokio::time::timeout(Duration::from_millis(200), sock.recv_from(&mut buf)).await,
        Ok(Ok((n, _))) if n >= 12 && buf[..2] == [0, 1]
    )
}

// === impl Wf ===

/// A wayfinder proxy in this process.
struct Wf(Proxy);

impl Wf {
    async fn start(tables: &str) -> Wf {
        Wf(Proxy::start(tables).await)
    }

    fn running(&self) -> &Running {
        self.0.running.as_ref().expect("running")
    }

    /// Address -> weight of `service`'s instances in the snapshot.
    fn members(&self, service: &str) -> BTreeMap<SocketAddr, u32> {
        members(self.running(), service)
    }

    /// The state of source `name`.
    fn source_state(&self, name: &str) -> Option<&'static str> {
        self.running()
            .registry
            .sources()
            .into_iter()
            .find(|s| &*s.name == name)
            .map(|s| s.state)
    }

    /// The body of a GET for `Host: {service}.svc`, or what went wrong.
    async fn get(&self, service: &str) -> Result<String, String> {
        let host = format!("{service}.svc");
        match tokio::time::timeout(Duration::from_secs(10), self.0.get(&host, "/")).await {
            Ok(Ok(reply)) if reply.status.is_success() => Ok(reply.text()),
            Ok(Ok(reply)) => Err(format!("{}: {}", reply.status, reply.text())),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("no answer within 10s".to_owned()),
        }
    }

    /// Bodies of `n` GETs, counted.
    async fn spread(&self, service: &str, n: usize) -> BTreeMap<String, usize> {
        let mut seen = BTreeMap::new();
        for _ in 0..n {
            let body = self
                .get(service)
                .await
                .unwrap_or_else(|e| panic!("GET {service}: {e}"));
            *seen.entry(body).or_default() += 1;
        }
        seen
    }

    async fn stop(mut self) {
        self.0.shutdown().await;
    }
}

fn dns_table(service: &str, body: &str, dns: &Dnsmasq) -> String {
    format!(
        "[services.{service}.dns]\n{body}\nnameserver = \"{}\"\n",
        dns.addr()
    )
}

// === tests ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_records_with_a_configured_port_route_to_every_address() {
    // Two instances on the same port, on two loopback addresses.
    let first = Backend::builder("web-a")
        .at(SocketAddr::new(IpAddr::from([127, 0, 0, 2]), 0))
        .try_start()
        .await
        .expect("bind 127.0.0.2");
    let port = first.addr.port();
    let second = Backend::builder("web-b")
        .at(SocketAddr::new(IpAddr::from([127, 0, 0, 3]), port))
        .try_start()
        .await
        .expect("bind 127.0.0.3 on the same port");
    let dns = Dnsmasq::start(&[
        "--host-record=web.test,127.0.0.2".to_owned(),
        "--host-record=web.test,127.0.0.3".to_owned(),
    ])
    .await;
    let wf = Wf::start(&dns_table(
        "web",
        &format!("name = \"web.test\"\nkind = \"a\"\nport = {port}\nmin_refresh = \"100ms\""),
        &dns,
    ))
    .await;
    wait_for(
        Duration::from_secs(15),
        "both addresses resolved",
        || async { wf.members("web").len() == 2 },
    )
    .await;
    assert_eq!(
        wf.members("web").keys().copied().collect::<Vec<_>>(),
        vec![first.addr, second.addr]
    );
    let seen = wf.spread("web", 10).await;
    assert_eq!(seen.get("web-a"), Some(&5), "{seen:?}");
    assert_eq!(seen.get("web-b"), Some(&5), "{seen:?}");
    assert_eq!(wf.source_state("dns:web"), Some("ok"));
    wf.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srv_records_give_ports_and_weights() {
    let one = Backend::start("srv-1").await;
    let two = Backend::start("srv-2").await;
    let backup = Backend::start("backup").await;
    let dns = Dnsmasq::start(&[
        format!(
            "--srv-host=_http._tcp.api.test,one.test,{},0,1",
            one.addr.port()
        ),
        format!(
            "--srv-host=_http._tcp.api.test,two.test,{},0,3",
            two.addr.port()
        ),
        // A higher priority value is a backup: not used while others exist.
        format!(
            "--srv-host=_http._tcp.api.test,one.test,{},1,1",
            backup.addr.port()
        ),
        "--host-record=one.test,127.0.0.1".to_owned(),
        "--host-record=two.test,127.0.0.1".to_owned(),
    ])
    .await;
    let wf = Wf::start(&dns_table(
        "api",
        "name = \"_http._tcp.api.test\"\nkind = \"srv\"\nmin_refresh = \"100ms\"",
        &dns,
    ))
    .await;
    wait_for(Duration::from_secs(15), "SRV resolved", || async {
        !wf.members("api").is_empty()
    })
    .await;
    let want = BTreeMap::from([(one.addr, 1), (two.addr, 3)]);
    assert_eq!(wf.members("api"), want);
    let seen = wf.spread("api", 8).await;
    assert_eq!(seen.get("srv-1"), Some(&2), "{seen:?}");
    assert_eq!(seen.get("srv-2"), Some(&6), "{seen:?}");
    wf.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_changes_follow_the_ttl_and_a_lost_server_keeps_the_last_set() {
    let one = Backend::start("v1").await;
    let two = Backend::start("v2").await;
    let srv = |b: &Backend, host: &str| {
        format!(
            "--srv-host=_http._tcp.svc.test,{host}.test,{},0,1",
            b.addr.port()
        )
    };
    let hosts = [
        "--host-record=one.test,127.0.0.1".to_owned(),
        "--host-record=two.test,127.0.0.1".to_owned(),
    ];
    let mut dns = Dnsmasq::start(&[srv(&one, "one"), hosts[0].clone()]).await;
    // Record TTL is 1s (--local-ttl): re-resolved after it, within bounds.
    let wf = Wf::start(&dns_table(
        "svc",
        "name = \"_http._tcp.svc.test\"\nkind = \"srv\"\nmin_refresh = \"200ms\"\n\
         max_refresh = \"10s\"\nnxdomain_grace = \"1s\"",
        &dns,
    ))
    .await;
    wait_for(Duration::from_secs(15), "first answer", || async {
        wf.members("svc").len() == 1
    })
    .await;

    // The records change: the pool follows after the TTL.
    dns.restart(&[
        srv(&one, "one"),
        srv(&two, "two"),
        hosts[0].clone(),
        hosts[1].clone(),
    ])
    .await;
    let took = wait_for(Duration::from_secs(15), "second instance added", || async {
        wf.members("svc").len() == 2
    })
    .await;
    println!("DNS change picked up after {took:?} (record TTL 1s)");
    assert_eq!(wf.spread("svc", 4).await.len(), 2);

    // The server goes away: the last good set keeps serving.
    dns.kill();
    wait_for(Duration::from_secs(15), "source failing", || async {
        wf.source_state("dns:svc") == Some("failing")
    })
    .await;
    let seen = wf.spread("svc", 6).await;
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(wf.members("svc").len(), 2);

    // Back, but the name is gone (NXDOMAIN): kept for the grace period,
    // then emptied.
    dns.restart(&hosts).await;
    let emptied = wait_for(
        Duration::from_secs(15),
        "set emptied after the grace",
        || async { wf.members("svc").is_empty() },
    )
    .await;
    println!("NXDOMAIN: set emptied {emptied:?} after the server came back (grace 1s)");
    assert!(wf.get("svc").await.is_err());

    // And the name coming back brings the instances back.
    dns.restart(&[srv(&two, "two"), hosts[1].clone()]).await;
    wait_for(Duration::from_secs(15), "name back", || async {
        wf.members("svc").keys().copied().collect::<Vec<_>>() == vec![two.addr]
    })
    .await;
    assert_eq!(wf.get("svc").await, Ok("v2".to_owned()));
    wf.stop().await;
}

/// Issue 12.4: an operator drains a DNS instance by address; the drain
/// holds while DNS keeps reporting it and across a config reload that
/// restarts the name's resolution, until cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_drain_of_a_dns_instance_survives_refreshes_and_a_reload() {
    let first = Backend::builder("web-a")
        .at(SocketAddr::new(IpAddr::from([127, 0, 0, 2]), 0))
        .try_start()
        .await
        .expect("bind 127.0.0.2");
    let port = first.addr.port();
    let _second = Backend::builder("web-b")
        .at(SocketAddr::new(IpAddr::from([127, 0, 0, 3]), port))
        .try_start()
        .await
        .expect("bind 127.0.0.3 on the same port");
    let dns = Dnsmasq::start(&[
        "--host-record=web.test,127.0.0.2".to_owned(),
        "--host-record=web.test,127.0.0.3".to_owned(),
    ])
    .await;
    let table = |refresh: &str| {
        dns_table(
            "web",
            &format!(
                "name = \"web.test\"\nkind = \"a\"\nport = {port}\nmin_refresh = \"{refresh}\""
            ),
            &dns,
        )
    };
    let mut wf = AdminProxy::start("", &table("100ms")).await;
    let running = wf.running();
    wait_for(
        Duration::from_secs(15),
        "both addresses resolved",
        || async { members(running, "web").len() == 2 },
    )
    .await;
    let drain = format!("/v1/services/web/instances/{}/drain", first.addr);
    let reply = wf.api.call("PUT", &drain, None).await;
    assert_eq!(reply.status, http::StatusCode::OK, "{}", reply.text());
    let only_b = || async {
        for _ in 0..6 {
            assert_eq!(wf.get_ok("web").await, "web-b");
        }
    };
    only_b().await;

    // DNS re-resolves (TTL 1s, min_refresh 100ms): still drained.
    let source = |wf: &AdminProxy| {
        wf.running()
            .registry
            .sources()
            .into_iter()
            .find(|s| &*s.name == "dns:web")
            .and_then(|s| s.last_success)
    };
    let before = source(&wf);
    wait_for(Duration::from_secs(15), "DNS reported again", || async {
        source(&wf) != before
    })
    .await;
    only_b().await;

    // A reload that restarts the name's resolution: still drained.
    let text = format!(
        "listen = [\"127.0.0.1:0\"]\n[admin]\nlisten = \"127.0.0.1:{}\"\n\n{}",
        wf.api.addr.port(),
        table("100ms")
    );
    let mut current = support::parse_config(&text);
    let file = support::ConfigFile::new("dns-drain", &text.replace("\"100ms\"", "\"150ms\""));
    assert_eq!(
        wf.running().reload(&file.path, &mut current).ok(),
        Some(true)
    );
    wait_for(
        Duration::from_secs(15),
        "resolved again after the reload",
        || async { members(wf.running(), "web").len() == 2 },
    )
    .await;
    only_b().await;

    let reply = wf.api.call("DELETE", &drain, None).await;
    assert_eq!(reply.status, http::StatusCode::OK, "{}", reply.text());
    let mut seen = BTreeMap::new();
    for _ in 0..4 {
        *seen.entry(wf.get_ok("web").await).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    wf.shutdown().await;
}
