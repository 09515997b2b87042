//! Ports, temporary files and the processes a test spawns: the real
//! `wayfinder` binary ([`wayfinder`], [`Proc`]) and servers such as etcd or
//! dnsmasq ([`Daemon`]). Only PIDs a test itself spawned are ever
//! signalled.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

// === ports a process must be told before it starts ===

/// A loopback port held by a bound TCP socket that does not listen
/// (connecting to it is refused, binding it fails), for a process that must
/// be given its port before it starts and cannot bind port 0 itself (etcd's
/// gateway dials its own listen address; dnsmasq's `--port=0` turns DNS
/// off; a command `wayfinder register` wraps, whose address the registrar
/// is told). Everything else binds port 0 and reads the address back.
///
/// Release it right before spawning. In the short window between the
/// release and the process binding the port, another process may bind it:
/// callers that can tell (the process logs that it bound the port, or
/// exits saying the address is in use) retry with a new reservation.
#[derive(Debug)]
pub struct ReservedPort {
    tcp: tokio::net::TcpSocket,
    udp: Option<std::net::UdpSocket>,
    port: u16,
}

impl ReservedPort {
    /// A TCP port on 127.0.0.1.
    pub fn tcp() -> ReservedPort {
        let tcp = tokio::net::TcpSocket::new_v4().expect("socket");
        tcp.bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .expect("bind 127.0.0.1:0");
        let port = tcp.local_addr().expect("bound address").port();
        ReservedPort {
            tcp,
            udp: None,
            port,
        }
    }

    /// A port on 127.0.0.1 free for both TCP and UDP (a DNS server's).
    pub fn tcp_and_udp() -> ReservedPort {
        for _ in 0..50 {
            let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind udp");
            let port = udp.local_addr().expect("udp address").port();
            let tcp = tokio::net::TcpSocket::new_v4().expect("socket");
            if tcp.bind(SocketAddr::from(([127, 0, 0, 1], port))).is_ok() {
                return ReservedPort {
                    tcp,
                    udp: Some(udp),
                    port,
                };
            }
        }
        panic!("no port free for both TCP and UDP in 50 tries");
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Frees the port for the process about to bind it; returns it.
    pub fn release(self) -> u16 {
        drop(self.tcp);
        drop(self.udp);
        self.port
    }
}

/// Whether a log says a bind failed because the address was taken.
pub fn address_in_use(log: &str) -> bool {
    log.to_ascii_lowercase().contains("address already in use")
}

/// A unique path under the temp directory:
/// `wayfinder-{tag}-{pid}-{sequence}-{nanos}{ext}` (`ext` with its dot, or
/// empty).
pub fn temp_path(tag: &str, ext: &str) -> PathBuf {
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    std::env::temp_dir().join(format!(
        "wayfinder-{tag}-{}-{}-{nanos}{ext}",
        std::process::id(),
        SEQ.fetch_add(1, SeqCst)
    ))
}

/// This process's resident set size in bytes, from `/proc/self/status`.
pub fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

// === impl ConfigFile ===

/// A config file under the temp directory, removed on drop.
#[derive(Debug)]
pub struct ConfigFile {
    /// Where it is.
    pub path: PathBuf,
}

impl ConfigFile {
    /// Writes `text` to a new `.toml` file named after `tag`.
    pub fn new(tag: &str, text: &str) -> ConfigFile {
        let file = ConfigFile {
            path: temp_path(tag, ".toml"),
        };
        file.write(text);
        file
    }

    /// Its file name.
    pub fn file_name(&self) -> &str {
        self.path.file_name().unwrap().to_str().unwrap()
    }

    /// Replaces its contents with `text`.
    pub fn write(&self, text: &str) {
        std::fs::write(&self.path, text).expect("write config");
    }

    /// Replaces the file with `text` (same length as now) keeping its
    /// modification time, so only a SIGHUP can notice the change.
    pub fn replace_unnoticed(&self, text: &str) {
        let meta = std::fs::metadata(&self.path).unwrap();
        assert_eq!(meta.len(), text.len() as u64, "lengths must match");
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        let f = std::fs::File::options().write(true).open(&tmp).unwrap();
        f.set_modified(meta.modified().unwrap()).unwrap();
        drop(f);
        std::fs::rename(&tmp, &self.path).unwrap();
        let now = std::fs::metadata(&self.path).unwrap();
        assert_eq!(now.modified().unwrap(), meta.modified().unwrap());
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_file(self.path.with_extension("tmp"));
    }
}

// === wayfinder, the binary ===

/// `wayfinder ARGS...` (the real binary): logs on stderr without colour at
/// its default level, no stdin, killed if the handle is dropped while it
/// still runs.
pub fn wayfinder(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wayfinder"));
    cmd.args(args)
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

// === impl Proc ===

/// A process this test spawned, its stderr collected in the background.
/// Killed (SIGKILL, by tokio) if dropped while still running.
#[derive(Debug)]
pub struct Proc {
    child: Child,
    log: Arc<Mutex<String>>,
    reader: JoinHandle<()>,
}

impl Proc {
    /// Spawns `cmd` with stdin and stdout closed and stderr collected.
    pub fn spawn(mut cmd: Command) -> Proc {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("spawn process");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let sink = log.clone();
        let reader = tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        Proc { child, log, reader }
    }

    /// Its PID.
    pub fn pid(&self) -> i32 {
        self.child.id().expect("process still running") as i32
    }

    /// Its stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Sends it `sig`.
    pub fn signal(&self, sig: Signal) {
        nix::sys::signal::kill(Pid::from_raw(self.pid()), sig).expect("signal our child");
    }

    /// Waits (bounded) until stderr contains `needle`; fails at once when
    /// stderr closes (the process exited) without it.
    pub async fn wait_log(&self, secs: u64, needle: &str) {
        if let Err(log) = self.try_wait_log(secs, needle).await {
            panic!("log line containing {needle:?}: stderr closed without it; log:\n{log}");
        }
    }

    /// [`Proc::wait_log`], with the log as the error when the process
    /// exited without the line (a caller may retry, see
    /// [`address_in_use`]); not within `secs` fails the test.
    pub async fn try_wait_log(&self, secs: u64, needle: &str) -> Result<(), String> {
        let found = tokio::time::timeout(Duration::from_secs(secs), async {
            loop {
                // Whether it closed is read first: the lines read before are in.
                let closed = self.reader.is_finished();
                if self.log.lock().unwrap().contains(needle) {
                    return Ok(());
                }
                if closed {
                    return Err(self.log());
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        found.unwrap_or_else(|_| {
            panic!(
                "log line containing {needle:?}: not within {secs}s; log:\n{}",
                self.log()
            )
        })
    }

    /// Waits (bounded) for `wayfinder run`'s "wayfinder listening" line
    /// and returns the addresses it names: a config may then listen on
    /// port 0 (proxy and admin API) and the test reads the ports back.
    pub async fn listening(&self, secs: u64) -> Listening {
        self.try_listening(secs)
            .await
            .unwrap_or_else(|log| panic!("wayfinder exited before listening; log:\n{log}"))
    }

    /// [`Proc::listening`], with the log as the error when the process
    /// exited first.
    pub async fn try_listening(&self, secs: u64) -> Result<Listening, String> {
        self.try_wait_log(secs, "wayfinder listening").await?;
        let log = self.log();
        let line = log
            .lines()
            .find(|l| l.contains("wayfinder listening"))
            .expect("the line just waited for");
        Ok(Listening::parse(line).unwrap_or_else(|| panic!("unexpected listening line: {line}")))
    }

    /// The IPv4 TCP addresses it listens on now, read from `/proc` (its
    /// sockets' inodes, matched against the listening entries of
    /// `/proc/net/tcp`): where a process that bound port 0 listens, before
    /// it says so in its log.
    pub fn tcp_listeners(&self) -> Vec<SocketAddr> {
        let pid = self.pid();
        let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|dir| {
                dir.flatten()
                    .filter_map(|e| std::fs::read_link(e.path()).ok())
                    .filter_map(|l| {
                        let l = l.to_str()?;
                        Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
                    })
                    .collect()
            })
            .unwrap_or_default();
        let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap_or_default();
        table
            .lines()
            .skip(1)
            .filter_map(|line| {
                let f: Vec<&str> = line.split_whitespace().collect();
                // sl local_address rem_address st ... inode (column 9);
                // state 0A is LISTEN.
                if f.len() < 10 || f[3] != "0A" || !inodes.iter().any(|i| i == f[9]) {
                    return None;
                }
                let (ip, port) = f[1].split_once(':')?;
                // The address is its network-order bytes read as a number
                // in host order, printed in hex.
                let ip = u32::from_str_radix(ip, 16).ok()?;
                let ip = std::net::Ipv4Addr::from(ip.to_ne_bytes());
                Some(SocketAddr::from((ip, u16::from_str_radix(port, 16).ok()?)))
            })
            .collect()
    }

    /// Waits (bounded) for the process to exit.
    pub async fn wait(&mut self, secs: u64, what: &str) -> ExitStatus {
        let status = match tokio::time::timeout(Duration::from_secs(secs), self.child.wait()).await
        {
            Ok(s) => s.expect("wait for child"),
            Err(_) => panic!("{what}: still running after {secs}s; log:\n{}", self.log()),
        };
        // The pipe closes with the process; let the reader catch up.
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.reader).await;
        status
    }
}

/// The addresses in `wayfinder run`'s "wayfinder listening" log line
/// (`listen=[127.0.0.1:41234] admin=127.0.0.1:41235`, `admin=off`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listening {
    /// The proxy's listeners.
    pub listen: Vec<SocketAddr>,
    /// Its TLS listeners (`[[tls]]`).
    pub tls: Vec<SocketAddr>,
    /// The admin API's, unless it is off.
    pub admin: Option<SocketAddr>,
}

impl Listening {
    fn parse(line: &str) -> Option<Listening> {
        let list = line.split("listen=[").nth(1)?.split(']').next()?;
        let listen = list
            .split(',')
            .map(|a| a.trim().parse().ok())
            .collect::<Option<Vec<SocketAddr>>>()?;
        let tls = match line.split("listen_tls=[").nth(1)?.split(']').next()? {
            "" => Vec::new(),
            list => list
                .split(',')
                .map(|a| a.trim().parse().ok())
                .collect::<Option<Vec<SocketAddr>>>()?,
        };
        let admin = line.split(" admin=").nth(1)?.split_whitespace().next()?;
        let admin = match admin {
            "off" => None,
            a => Some(a.parse().ok()?),
        };
        Some(Listening { listen, tls, admin })
    }

    /// The first proxy listener.
    pub fn proxy(&self) -> SocketAddr {
        self.listen[0]
    }

    /// The admin API's address; it must be on.
    pub fn admin(&self) -> SocketAddr {
        self.admin.expect("admin API on")
    }
}

// === impl Daemon ===

/// A server a test runs for real (etcd, dnsmasq): in the foreground, its
/// stderr in a log file in a temporary directory of its own. SIGKILLed (by
/// its PID only) and its directory removed on drop.
#[derive(Debug)]
pub struct Daemon {
    name: &'static str,
    /// Its temporary directory: the log, and whatever else it keeps.
    pub dir: PathBuf,
    child: Option<std::process::Child>,
    /// Where the log written by the latest start begins.
    log_from: u64,
}

impl Daemon {
    /// The binary named by the environment variable `var`, else `default`.
    /// A missing binary fails the test, saying which `package` to install.
    pub fn binary(var: &str, default: &str, package: &str) -> String {
        let bin = std::env::var(var).unwrap_or_else(|_| default.to_owned());
        assert!(
            Path::new(&bin).exists(),
            "{bin} not found: these tests need it for real. Install it with \
             `sudo apt-get install {package}` (./.ci/test does this), or point \
             {var} at the binary"
        );
        bin
    }

    /// `name` (in messages and its directory's name), not running yet.
    pub fn new(name: &'static str) -> Daemon {
        let dir = temp_path(name, "");
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {name} temp dir: {e}"));
        Daemon {
            name,
            dir,
            child: None,
            log_from: 0,
        }
    }

    /// Starts `cmd` (no stdin or stdout, stderr appended to the log) and
    /// waits until `bound` holds for the log written since this start (it
    /// shows a line the process logs once it has bound its ports: proof
    /// that what answers is this process, not another one on a port it
    /// failed to get), then polls `ready` every `every` until it holds.
    /// A process that exits first is an `Err` with what it logged since it
    /// was started (for example, a port taken in the moment after its
    /// reservation was released: see [`address_in_use`]); one not ready
    /// within `limit` fails the test, showing the end of its log.
    pub async fn try_spawn<F, Fut>(
        &mut self,
        mut cmd: std::process::Command,
        bound: impl Fn(&str) -> bool,
        limit: Duration,
        every: Duration,
        mut ready: F,
    ) -> Result<(), String>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        let name = self.name;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap_or_else(|e| panic!("{name} log file: {e}"));
        self.log_from = log.metadata().map_or(0, |m| m.len());
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        self.child = Some(child);
        let start = Instant::now();
        while !(bound(&self.log_since_start()) && ready().await) {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Err(format!("({status})\n{}", self.log_since_start()));
            }
            assert!(
                start.elapsed() < limit,
                "{name} did not answer within {limit:?}:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(every).await;
        }
        Ok(())
    }

    /// What it logged since it was last started.
    pub fn log_since_start(&self) -> String {
        let bytes = std::fs::read(self.log_path()).unwrap_or_default();
        let from = (self.log_from as usize).min(bytes.len());
        String::from_utf8_lossy(&bytes[from..]).into_owned()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join(format!("{}.log", self.name))
    }

    /// The last 20 lines of its log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// SIGKILL, then wait for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
