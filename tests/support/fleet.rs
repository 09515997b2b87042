//! Gossip fleets and Serf agents made of real processes on loopback:
//! `wayfinder run` proxies with `[registry.gossip]` ([`FleetProxy`]),
//! `wayfinder register --gossip` agents ([`Agent`]), `serf agent`s
//! ([`SerfAgent`], the Debian package `serf`), and reads of a proxy's
//! admin API and routing. Every process is owned by its handle (killed by
//! its PID when dropped).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::Value;

use super::{
    get, request, send, wait_for, wayfinder, ConfigFile, Daemon, Listening, Proc, ReservedPort,
};

/// A shared secret long enough for `registry.gossip.secret`.
pub const SECRET: &str = "fleet-test-secret-0123456789abcdef";

/// A gossip UDP port for a member: held until the member is spawned.
pub fn gossip_port() -> ReservedPort {
    ReservedPort::tcp_and_udp()
}

/// A `wayfinder run` process that is a member of a fleet.
#[derive(Debug)]
pub struct FleetProxy {
    /// The process.
    pub proc: Proc,
    /// Reads of its admin API and routing.
    pub view: ProxyView,
    /// Its gossip address.
    pub gossip: SocketAddr,
    _config: ConfigFile,
}

impl std::ops::Deref for FleetProxy {
    type Target = ProxyView;
    fn deref(&self) -> &ProxyView {
        &self.view
    }
}

/// What a test reads from a running proxy: its admin API and routing.
#[derive(Debug, Clone)]
pub struct ProxyView {
    /// Its listeners.
    pub at: Listening,
}

/// How a test proxy gossips.
#[derive(Debug, Clone)]
pub struct FleetOptions {
    /// Seeds.
    pub join: Vec<SocketAddr>,
    /// The secret, if any.
    pub secret: Option<String>,
    /// `failure_detection`.
    pub failure_detection: &'static str,
    /// Time between rounds (empty: the default for `failure_detection`).
    pub interval: &'static str,
    /// `registry.self_preservation_percent`.
    pub preserve: u8,
    /// `registry.max_staleness`, if not the default.
    pub max_staleness: Option<&'static str>,
    /// `proxy.max_attempts`, if not the default (1: a request sent to an
    /// instance that is gone is a client error, not a retry).
    pub max_attempts: Option<u8>,
    /// Where it runs: loopback (the default) or a namespace of its own.
    pub place: Place,
}

/// Where a [`FleetProxy`] runs.
#[derive(Debug, Clone)]
pub enum Place {
    /// On loopback, every port picked at run time.
    Loopback,
    /// In network namespace `ns` (see [`super::netns`]): its proxy and
    /// admin API listen on `listen` (port 0), gossip binds `gossip`.
    Namespace {
        /// The namespace.
        ns: String,
        /// The address its listeners bind.
        listen: IpAddr,
        /// Its gossip address.
        gossip: SocketAddr,
    },
}

impl Default for FleetOptions {
    fn default() -> Self {
        FleetOptions {
            join: Vec::new(),
            secret: Some(SECRET.to_owned()),
            failure_detection: "1s",
            interval: "100ms",
            preserve: 50,
            max_staleness: None,
            max_attempts: None,
            place: Place::Loopback,
        }
    }
}

impl FleetProxy {
    /// Starts proxy `name` with `opts` and waits until it listens. On
    /// loopback, a gossip port taken in the moment between its reservation
    /// and the proxy's bind is retried with a new one.
    pub async fn start(name: &str, opts: &FleetOptions) -> FleetProxy {
        for _ in 0..10 {
            match Self::try_start(name, opts).await {
                Ok(proxy) => return proxy,
                Err(log)
                    if matches!(opts.place, Place::Loopback) && super::address_in_use(&log) =>
                {
                    continue
                }
                Err(log) => panic!("proxy {name} exited before listening; log:\n{log}"),
            }
        }
        panic!("no free gossip port for proxy {name} in 10 tries");
    }

    /// One try of [`FleetProxy::start`]: the log when the proxy exits
    /// before it listens.
    async fn try_start(name: &str, opts: &FleetOptions) -> Result<FleetProxy, String> {
        let (port, gossip, listen) = match &opts.place {
            Place::Loopback => {
                let port = gossip_port();
                let gossip = port.addr();
                (Some(port), gossip, IpAddr::V4(Ipv4Addr::LOCALHOST))
            }
            Place::Namespace { gossip, listen, .. } => (None, *gossip, *listen),
        };
        let join: Vec<String> = opts.join.iter().map(|a| format!("\"{a}\"")).collect();
        let secret = opts
            .secret
            .as_ref()
            .map_or(String::new(), |s| format!("secret = \"{s}\"\n"));
        let staleness = opts
            .max_staleness
            .map_or(String::new(), |s| format!("max_staleness = \"{s}\"\n"));
        let interval = match opts.interval {
            "" => String::new(),
            i => format!("interval = \"{i}\"\n"),
        };
        let attempts = opts
            .max_attempts
            .map_or(String::new(), |n| format!("[proxy]\nmax_attempts = {n}\n"));
        let text = format!(
            "listen = [\"{listen}:0\"]\n{attempts}\
             [admin]\nlisten = \"{listen}:0\"\n\
             [timeouts]\nshutdown_drain = \"2s\"\n\
             [registry]\nself_preservation_percent = {}\n{staleness}\
             [registry.gossip]\nname = \"{name}\"\nbind = \"{gossip}\"\njoin = [{}]\n\
             failure_detection = \"{}\"\n{interval}\
             leave_timeout = \"500ms\"\nretry_join_max = \"1s\"\n{secret}",
            opts.preserve,
            join.join(", "),
            opts.failure_detection,
        );
        let config = ConfigFile::new(name, &text);
        let path = config.path.to_str().expect("utf-8 path");
        let cmd = match &opts.place {
            Place::Loopback => wayfinder(&["run", "--config", path]),
            Place::Namespace { ns, .. } => {
                // `ip netns exec` execs the binary: the PID is wayfinder's.
                let mut cmd = tokio::process::Command::new(super::netns::ip_binary());
                cmd.args(["netns", "exec", ns, env!("CARGO_BIN_EXE_wayfinder")])
                    .args(["run", "--config", path])
                    .env_remove("RUST_LOG")
                    .env("NO_COLOR", "1");
                cmd
            }
        };
        if let Some(port) = port {
            port.release();
        }
        let proc = Proc::spawn(cmd);
        let at = proc.try_listening(20).await?;
        Ok(FleetProxy {
            proc,
            view: ProxyView { at },
            gossip,
            _config: config,
        })
    }
}

/// Starts `n` loopback proxies (`proxy-0` ... ), all joining through the
/// first, and waits until each sees all `n` alive.
pub async fn start_fleet(n: usize, opts: FleetOptions) -> Vec<FleetProxy> {
    let spread = Duration::from_secs(30);
    let first = FleetProxy::start("proxy-0", &opts).await;
    let seed = first.gossip;
    let mut all = vec![first];
    for i in 1..n {
        let o = FleetOptions {
            join: vec![seed],
            ..opts.clone()
        };
        all.push(FleetProxy::start(&format!("proxy-{i}"), &o).await);
    }
    for p in &all {
        wait_for(spread, "every proxy sees every other", || async {
            p.admin_json("/v1/members").await["members"]
                .as_array()
                .is_some_and(|m| m.iter().filter(|m| m["state"] == "alive").count() == n)
        })
        .await;
    }
    all
}

impl ProxyView {
    /// `GET path` on its admin API, as JSON.
    pub async fn admin_json(&self, path: &str) -> Value {
        let r = get(self.at.admin(), "admin", path)
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        r.json()
    }

    /// The addresses and weights of `service`'s instances it lists.
    pub async fn instances(&self, service: &str) -> BTreeMap<SocketAddr, u64> {
        let doc = self.admin_json("/v1/services").await;
        let mut out = BTreeMap::new();
        for s in doc["services"].as_array().into_iter().flatten() {
            if s["name"] == service {
                for i in s["instances"].as_array().into_iter().flatten() {
                    let addr = i["address"].as_str().unwrap().parse().unwrap();
                    out.insert(addr, i["weight"].as_u64().unwrap_or(0));
                }
            }
        }
        out
    }

    /// The body a GET through it to `service` answers, if 200.
    pub async fn route(&self, service: &str) -> Option<String> {
        let host = format!("{service}.svc");
        let r = send(
            self.at.proxy(),
            request("GET", &host, "/").body(super::empty()).unwrap(),
        )
        .await
        .ok()?;
        (r.status == 200).then(|| r.text())
    }

    /// Waits (at most `limit`) until its set of `service`'s instances is
    /// `want`; how long it took.
    pub async fn wait_instances(
        &self,
        service: &str,
        want: &[SocketAddr],
        limit: Duration,
    ) -> Duration {
        let mut want: Vec<SocketAddr> = want.to_vec();
        want.sort();
        let what = format!("{} lists {service} = {want:?}", self.at.proxy());
        wait_for(limit, &what, || async {
            self.instances(service)
                .await
                .keys()
                .copied()
                .collect::<Vec<_>>()
                == want
        })
        .await
    }
}

/// A `wayfinder register --gossip` process.
#[derive(Debug)]
pub struct Agent {
    /// The process.
    pub proc: Proc,
    /// Its gossip address.
    pub gossip: SocketAddr,
}

impl Agent {
    /// Starts an agent publishing `address` as an instance of `service`,
    /// joining through `seed`, sealing with `secret`.
    pub fn start(service: &str, address: SocketAddr, seed: SocketAddr, secret: &str) -> Agent {
        Agent::start_draining(service, address, seed, secret, "500ms")
    }

    /// [`Agent::start`] with `--drain-timeout drain`.
    pub fn start_draining(
        service: &str,
        address: SocketAddr,
        seed: SocketAddr,
        secret: &str,
        drain: &str,
    ) -> Agent {
        Agent::spawn(service, address, seed, secret, drain, ("1s", "100ms"))
    }

    /// [`Agent::start`] with `--drain-timeout drain`, and
    /// `--failure-detection` and `--gossip-interval` from `timing` (an
    /// empty interval: the default).
    pub fn spawn(
        service: &str,
        address: SocketAddr,
        seed: SocketAddr,
        secret: &str,
        drain: &str,
        timing: (&str, &str),
    ) -> Agent {
        Agent::wrapping(service, address, seed, secret, drain, timing, &[])
    }

    /// [`Agent::spawn`] wrapping `command` (after `--`; none if empty).
    pub fn wrapping(
        service: &str,
        address: SocketAddr,
        seed: SocketAddr,
        secret: &str,
        drain: &str,
        (failure_detection, interval): (&str, &str),
        command: &[&str],
    ) -> Agent {
        let port = gossip_port();
        let gossip = port.addr();
        port.release();
        let mut cmd = wayfinder(&[
            "register",
            "--gossip",
            "--gossip-bind",
            &gossip.to_string(),
            "--join",
            &seed.to_string(),
            "--failure-detection",
            failure_detection,
            "--service",
            service,
            "--address",
            &address.to_string(),
            "--ttl",
            "3s",
            "--drain-timeout",
            drain,
        ]);
        if !interval.is_empty() {
            cmd.args(["--gossip-interval", interval]);
        }
        if !command.is_empty() {
            cmd.arg("--").args(command);
        }
        cmd.env("WAYFINDER_GOSSIP_SECRET", secret);
        Agent {
            proc: Proc::spawn(cmd),
            gossip,
        }
    }

    /// SIGKILL.
    pub fn kill(&self) {
        self.proc.signal(Signal::SIGKILL);
    }
}

/// A real `serf agent` on loopback ports picked at run time.
#[derive(Debug)]
pub struct SerfAgent {
    /// Its node name.
    pub name: String,
    /// Its gossip address.
    pub bind: SocketAddr,
    /// Its RPC address.
    pub rpc: SocketAddr,
    /// The process.
    pub daemon: Daemon,
    /// Its command line (after the binary).
    pub args: Vec<String>,
}

/// The serf binary; a missing one fails the test saying how to install it.
pub fn serf_binary() -> String {
    Daemon::binary("WAYFINDER_SERF", "/usr/bin/serf", "serf")
}

impl SerfAgent {
    /// Starts agent `name` with `tags`, joining `join` if given, and waits
    /// until its RPC answers.
    pub async fn start(name: &str, tags: &[(&str, String)], join: Option<SocketAddr>) -> SerfAgent {
        SerfAgent::start_with(name, tags, join, &[]).await
    }

    /// [`SerfAgent::start`] with `extra` arguments (e.g. `-rpc-auth=KEY`).
    pub async fn start_with(
        name: &str,
        tags: &[(&str, String)],
        join: Option<SocketAddr>,
        extra: &[&str],
    ) -> SerfAgent {
        let bin = serf_binary();
        for _ in 0..10 {
            let (bind, rpc) = (ReservedPort::tcp_and_udp(), ReservedPort::tcp());
            let (bind_addr, rpc_addr) = (bind.addr(), rpc.addr());
            let mut args = vec![
                "agent".to_owned(),
                format!("-node={name}"),
                format!("-bind={bind_addr}"),
                format!("-rpc-addr={rpc_addr}"),
                "-log-level=info".to_owned(),
            ];
            if let Some(j) = join {
                args.push(format!("-join={j}"));
            }
            args.extend(extra.iter().map(|a| (*a).to_owned()));
            for (k, v) in tags {
                args.push("-tag".to_owned());
                args.push(format!("{k}={v}"));
            }
            let mut cmd = std::process::Command::new(&bin);
            cmd.args(&args);
            let mut daemon = Daemon::new("serf");
            bind.release();
            rpc.release();
            let started = daemon
                .try_spawn(
                    cmd,
                    // serf writes its banner to stdout, not to the log: the RPC
                    // port answering is the sign (it was reserved until now).
                    |_| true,
                    Duration::from_secs(20),
                    Duration::from_millis(20),
                    || async move { tokio::net::TcpStream::connect(rpc_addr).await.is_ok() },
                )
                .await;
            match started {
                Ok(()) => {
                    return SerfAgent {
                        name: name.to_owned(),
                        bind: bind_addr,
                        rpc: rpc_addr,
                        daemon,
                        args,
                    }
                }
                Err(log) if super::address_in_use(&log) => continue,
                Err(log) => panic!("serf agent {name} exited:\n{log}"),
            }
        }
        panic!("no free ports for serf agent {name} in 10 tries");
    }

    /// Starts it again (killed before) on the same ports.
    pub async fn restart(&mut self) {
        let mut cmd = std::process::Command::new(serf_binary());
        cmd.args(&self.args);
        let rpc = self.rpc;
        self.daemon
            .try_spawn(
                cmd,
                // serf writes its banner to stdout, not to the log: the RPC
                // port answering is the sign (it was reserved until now).
                |_| true,
                Duration::from_secs(20),
                Duration::from_millis(20),
                || async move { tokio::net::TcpStream::connect(rpc).await.is_ok() },
            )
            .await
            .unwrap_or_else(|log| panic!("serf agent {} did not restart:\n{log}", self.name));
    }

    /// Runs `serf ARGS -rpc-addr=THIS` and checks it succeeded.
    pub fn cli(&self, args: &[&str]) {
        let out = std::process::Command::new(serf_binary())
            .args(args)
            .arg(format!("-rpc-addr={}", self.rpc))
            .output()
            .expect("run serf");
        assert!(
            out.status.success(),
            "serf {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
