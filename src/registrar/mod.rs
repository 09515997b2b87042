//! `wayfinder register`: third-party registration. Runs beside a service
//! (or starts it as a child), checks its health itself and keeps it
//! registered with a proxy's admin API while it is healthy.
//!
//! Loop, every third of the TTL: check the service; healthy and not
//! registered: register; healthy and registered: heartbeat (a 404 means the
//! proxy lost its soft state, e.g. a restart: register again; every third
//! heartbeat also reads the proxy's view of the instance); unhealthy and
//! registered: deregister. Each change of the check's state is logged once.
//!
//! Registry answers: connection failures, timeouts, 5xx (e.g. a 503 while
//! etcd is unreachable), 408, 409 and 429 are retried with capped
//! exponential backoff, logged once per state change; any other answer
//! that is not a success (400, 401, 403, 404 on register...) cannot succeed
//! by retrying: the registrar stops (deregistering and stopping the child
//! as below) and exits 1 with the proxy's reason.
//!
//! Signals: SIGTERM, SIGINT and SIGQUIT stop it: mark the instance
//! draining, wait until its in-flight requests finish (bounded by the drain
//! timeout; a second stop signal cuts the wait short), deregister, then stop
//! the child (see [`child`]). SIGHUP does not stop it: it has nothing to
//! reload (its settings are its arguments) and passes the SIGHUP on to the
//! child's process group, or ignores it without a child.
//!
//! Exit code: 0 after a stop it was asked for when the child then exited 0
//! or of the SIGTERM it was sent (or without a child); the child's code
//! (128 + signal when a signal ended it) when the child exited by itself or
//! had to be killed; 1 when the registry refused it or it could not run.
//!
//! [`status`] is `wayfinder status`, another client of the admin API.

mod child;
mod client;
pub mod docker;
pub mod gossip;
pub mod proxy_health;
pub mod status;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitStatus;
use std::time::Duration;

use http::{Method, StatusCode, Uri};
use tokio::net::TcpStream;

pub use child::exec_child;
use child::Child;
use client::{Answer, Client};
use proxy_health::Agreement;

/// Longest wait for one admin API call (the drain wait gets the drain
/// timeout on top).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The proxy's view of the instance is read with every this many
/// heartbeats (once per TTL), and from every registration's answer.
const PROXY_VIEW_EVERY: u32 = 3;

/// What to register and how to watch it.
#[derive(Debug, Clone)]
pub struct Options {
    /// The proxy's admin API, e.g. `http://127.0.0.1:9900`.
    pub registry: Uri,
    /// Service name.
    pub service: String,
    /// Instance address.
    pub address: SocketAddr,
    /// Instance id (default: the address).
    pub id: String,
    /// Health check.
    pub check: Check,
    /// TTL asked for; heartbeats go every third of it.
    pub ttl: Duration,
    /// Tags.
    pub tags: BTreeMap<String, String>,
    /// Bearer token for the admin API.
    pub token: Option<String>,
    /// Longest wait for in-flight requests when stopping.
    pub drain_timeout: Duration,
    /// Longest wait for the child to exit after SIGTERM when stopping.
    pub stop_timeout: Duration,
    /// A command to start as the service, if any.
    pub command: Vec<String>,
}

/// How the registrar checks the service.
#[derive(Debug, Clone)]
pub enum Check {
    /// GET this URL; 2xx or 3xx passes.
    Http(Uri),
    /// Connect to the instance address.
    Tcp,
    /// No check: registered while running.
    None,
}

/// Why the registrar stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum RegistrarError {
    /// The child command could not start.
    #[error("cannot start {command:?}: {source}")]
    Spawn {
        /// The command.
        command: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Waiting on the child failed.
    #[error("waiting for the child failed: {0}")]
    Wait(std::io::Error),
    /// The signal handlers could not be installed.
    #[error("cannot handle signals: {0}")]
    Signals(std::io::Error),
    /// The registry refused a call in a way retrying cannot change.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// With `--gossip`: the fleet could not be joined.
    #[error("{0}")]
    Gossip(String),
}

/// A registry answer that retrying cannot change (a bad name, a wrong
/// token, not an admin API...).
#[derive(Debug, thiserror::Error)]
#[error("the registry at {registry} refused to {call} {service}/{id}: {status}: {body}{hint}; not retrying")]
pub struct Refusal {
    registry: Uri,
    call: &'static str,
    service: String,
    id: String,
    /// The answer's status.
    pub status: StatusCode,
    body: String,
    hint: &'static str,
}

/// Why the supervision loop ended.
#[derive(Debug)]
enum Ending {
    /// A stop signal (its name).
    Stop(&'static str),
    /// The child exited by itself.
    Exited(ExitStatus),
    /// A registry call was refused for good.
    Refused(Refusal),
    /// Waiting for the child failed.
    WaitFailed(std::io::Error),
}

/// A registry call that did not succeed.
#[derive(Debug)]
enum Failure {
    /// May succeed later: retried with backoff.
    Retry(String),
    /// Cannot succeed.
    Refused(Refusal),
}

/// Runs until a stop signal, the child's exit or a refused registration;
/// returns the exit code to use (see the module documentation).
///
/// Installs handlers for SIGTERM, SIGINT, SIGQUIT and SIGHUP. Must run on a
/// thread that outlives the child (see [`exec_child`]): in `block_on` on
/// the main thread.
pub async fn run(opts: Options) -> Result<i32, RegistrarError> {
    let mut sup = Supervisor::start(&opts)?;
    let mut agent = Agent::new(&opts);
    let ending = agent.supervise(&mut sup).await;
    agent.finish(&mut sup, ending).await
}

// === signals and the child ===

/// The signals the registrar handles.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    quit: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

/// A signal received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sig {
    /// SIGTERM, SIGINT or SIGQUIT (its name).
    Stop(&'static str),
    /// SIGHUP.
    Hup,
}

impl Signals {
    fn new() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            quit: signal(SignalKind::quit())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    async fn recv(&mut self) -> Sig {
        tokio::select! {
            Some(()) = self.term.recv() => Sig::Stop("SIGTERM"),
            Some(()) = self.int.recv() => Sig::Stop("SIGINT"),
            Some(()) = self.quit.recv() => Sig::Stop("SIGQUIT"),
            Some(()) = self.hup.recv() => Sig::Hup,
            else => std::future::pending().await,
        }
    }
}

/// Signals and the child: what can interrupt the registrar's work.
struct Supervisor {
    signals: Signals,
    child: Option<Child>,
}

enum Event {
    Signal(Sig),
    Exit(std::io::Result<ExitStatus>),
}

impl Supervisor {
    /// Installs the signal handlers, then starts `opts.command` if any.
    // Called once per run, returning the registrar's own error (as `run`
    // does): its size costs nothing here.
    #[allow(clippy::result_large_err)]
    fn start(opts: &Options) -> Result<Supervisor, RegistrarError> {
        // Before the child starts: from here on no signal ends us unhandled.
        let signals = Signals::new().map_err(RegistrarError::Signals)?;
        let child = if opts.command.is_empty() {
            None
        } else {
            let child = Child::spawn(&opts.command).map_err(|source| RegistrarError::Spawn {
                command: opts.command.join(" "),
                source,
            })?;
            tracing::info!(pid = child.pid(), command = %opts.command.join(" "), "started the service");
            Some(child)
        };
        Ok(Supervisor { signals, child })
    }

    /// Runs `work` to completion unless a stop signal or the child's exit
    /// comes first (SIGHUP is handled on the way).
    async fn until<T>(&mut self, work: impl Future<Output = T>) -> Result<T, Ending> {
        tokio::pin!(work);
        loop {
            let event = tokio::select! {
                biased;
                sig = self.signals.recv() => Event::Signal(sig),
                status = wait_child(&mut self.child) => Event::Exit(status),
                out = &mut work => return Ok(out),
            };
            match event {
                Event::Signal(Sig::Hup) => self.hangup(),
                Event::Signal(Sig::Stop(name)) => return Err(Ending::Stop(name)),
                Event::Exit(Ok(status)) => return Err(Ending::Exited(status)),
                Event::Exit(Err(e)) => return Err(Ending::WaitFailed(e)),
            }
        }
    }

    /// While stopping: runs `work` unless another stop signal comes first
    /// (`None`).
    async fn unless_stopped_again<T>(&mut self, work: impl Future<Output = T>) -> Option<T> {
        tokio::pin!(work);
        loop {
            let sig = tokio::select! {
                biased;
                sig = self.signals.recv() => sig,
                out = &mut work => return Some(out),
            };
            match sig {
                Sig::Hup => self.hangup(),
                Sig::Stop(name) => {
                    tracing::warn!(signal = %name, "stop signal again: not waiting any longer");
                    return None;
                }
            }
        }
    }

    /// Whether a stop signal has arrived and not been handled yet.
    async fn stop_pending(&mut self) -> bool {
        // `timeout` polls the receiver once before looking at the clock.
        matches!(
            tokio::time::timeout(Duration::ZERO, self.signals.recv()).await,
            Ok(Sig::Stop(_))
        )
    }

    /// SIGHUP: passed on to the child's group; without one, ignored.
    fn hangup(&self) {
        match &self.child {
            Some(child) if child.exited().is_none() => {
                tracing::info!(
                    pgid = child.pid(),
                    "SIGHUP: nothing to reload here (the registrar's settings are its arguments); passing it on to the service's process group"
                );
                child.signal_group(nix::sys::signal::Signal::SIGHUP);
            }
            _ => tracing::info!(
                "SIGHUP ignored: nothing to reload (the registrar's settings are its arguments)"
            ),
        }
    }
}

async fn wait_child(child: &mut Option<Child>) -> std::io::Result<ExitStatus> {
    match child {
        Some(c) => c.wait().await,
        None => std::future::pending().await,
    }
}

fn code_of(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// The exit code after the child ended with `status`; `asked`: whether the
/// registrar had been asked to stop (and so stopped the child, or the child
/// got the same stop signal, as systemd sends it to the whole group). A
/// stop that went well (the child exited 0 or of SIGTERM) is 0; anything
/// else is the child's code, 128 + signal when a signal ended it.
fn exit_code(asked: bool, status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    let clean = status.success() || status.signal() == Some(nix::libc::SIGTERM);
    if asked && clean {
        0
    } else {
        code_of(status)
    }
}

// === the check ===

/// Remembers the check's last result, so each change is logged once.
#[derive(Debug, Default)]
struct CheckLog {
    passing: Option<bool>,
}

/// A change of the check's result.
#[derive(Debug, Clone, PartialEq, Eq)]
enum CheckChange {
    /// Passing now; `again`: after failing.
    Passing { again: bool },
    /// Failing now; `first`: before it ever passed.
    Failing { first: bool, reason: String },
}

impl CheckLog {
    fn observe(&mut self, result: &Result<(), String>) -> Option<CheckChange> {
        let now = result.is_ok();
        let before = self.passing.replace(now);
        if before == Some(now) {
            return None;
        }
        Some(match result {
            Ok(()) => CheckChange::Passing {
                again: before.is_some(),
            },
            Err(reason) => CheckChange::Failing {
                first: before.is_none(),
                reason: reason.clone(),
            },
        })
    }
}

async fn check(opts: &Options) -> Result<(), String> {
    check_target(&opts.check, opts.address, opts.ttl).await
}

/// Runs `check` against `address`, bounded by 2 s (or `ttl` if shorter).
async fn check_target(check: &Check, address: SocketAddr, ttl: Duration) -> Result<(), String> {
    let timeout = Duration::from_secs(2).min(ttl);
    let work = async {
        match check {
            Check::None => Ok(()),
            Check::Tcp => TcpStream::connect(address)
                .await
                .map(|_| ())
                .map_err(|e| format!("connect {address}: {e}")),
            Check::Http(url) => {
                let pq = url.path_and_query().map_or("/", |p| p.as_str());
                match Client::new(url.clone(), None)
                    .call(Method::GET, pq, None, timeout)
                    .await
                {
                    Ok(a) if a.status.is_success() || a.status.is_redirection() => Ok(()),
                    Ok(a) => Err(format!("GET {url}: {}", a.status)),
                    Err(e) => Err(format!("GET {url}: {e}")),
                }
            }
        }
    };
    tokio::time::timeout(timeout, work)
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "no answer within {}",
                humantime::format_duration(timeout)
            ))
        })
}

// === the registration ===

/// The registrar's state and its calls to the admin API.
struct Agent<'a> {
    opts: &'a Options,
    admin: Client,
    /// `/v1/registry/{service}/{id}`.
    path: String,
    /// Registered (a successful register, no deregistration since).
    registered: bool,
    /// A register call went out whose outcome is not known (no answer).
    unsure: bool,
    check_log: CheckLog,
    agreement: Agreement,
    heartbeats: u32,
}

impl<'a> Agent<'a> {
    fn new(opts: &'a Options) -> Agent<'a> {
        Agent {
            opts,
            admin: Client::new(opts.registry.clone(), opts.token.clone()),
            path: format!("/v1/registry/{}/{}", opts.service, opts.id),
            registered: false,
            unsure: false,
            check_log: CheckLog::default(),
            agreement: Agreement::default(),
            heartbeats: 0,
        }
    }

    /// Rounds until something ends them.
    async fn supervise(&mut self, sup: &mut Supervisor) -> Ending {
        let interval = (self.opts.ttl / 3).max(Duration::from_millis(50));
        let mut failing = false;
        let mut backoff = Duration::ZERO;
        loop {
            let outcome = match sup.until(self.round()).await {
                Ok(outcome) => outcome,
                Err(end) => return end,
            };
            let pause = match outcome {
                Ok(called) => {
                    if called && failing {
                        tracing::info!("registry calls succeed again");
                        failing = false;
                        backoff = Duration::ZERO;
                    }
                    // A round without a call (the check fails) proves nothing.
                    if failing {
                        backoff
                    } else {
                        interval
                    }
                }
                Err(Failure::Retry(error)) => {
                    if !failing {
                        tracing::warn!(%error, "registry call failed; retrying with backoff");
                        failing = true;
                    } else {
                        tracing::debug!(%error, "registry call failed again");
                    }
                    backoff =
                        (backoff * 2).clamp(Duration::from_millis(250), Duration::from_secs(10));
                    backoff
                }
                Err(Failure::Refused(refusal)) => return Ending::Refused(refusal),
            };
            if let Err(end) = sup.until(tokio::time::sleep(pause)).await {
                return end;
            }
        }
    }

    /// One check and the registry call it calls for; `Ok(true)` when a
    /// call was made and succeeded.
    async fn round(&mut self) -> Result<bool, Failure> {
        let checked = check(self.opts).await;
        if !matches!(self.opts.check, Check::None) {
            if let Some(change) = self.check_log.observe(&checked) {
                self.log_check(&change);
            }
        }
        match (checked, self.registered) {
            (Ok(()), false) => self.register().await.map(|()| true),
            (Ok(()), true) => self.heartbeat().await.map(|()| true),
            (Err(_), true) => self.deregister_unhealthy().await.map(|()| true),
            (Err(reason), false) => {
                tracing::debug!(%reason, "check failing");
                Ok(false)
            }
        }
    }

    fn log_check(&self, change: &CheckChange) {
        let (service, id) = (self.opts.service.as_str(), self.opts.id.as_str());
        match change {
            CheckChange::Passing { again: false } => {
                tracing::info!(%service, %id, "check passing")
            }
            CheckChange::Passing { again: true } => {
                tracing::info!(%service, %id, "check passing again")
            }
            CheckChange::Failing {
                first: true,
                reason,
            } => tracing::warn!(
                %service,
                %id,
                %reason,
                "check failing; registering once it passes"
            ),
            CheckChange::Failing {
                first: false,
                reason,
            } => tracing::warn!(%service, %id, %reason, "check failing"),
        }
    }

    fn refusal(&self, call: &'static str, answer: &Answer) -> Refusal {
        let status = answer.status;
        let hint = match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                " (check --token or WAYFINDER_TOKEN)"
            }
            StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED => {
                " (is --registry the proxy's admin API?)"
            }
            s if s.is_redirection() => " (is --registry the proxy's admin API?)",
            _ => "",
        };
        Refusal {
            registry: self.opts.registry.clone(),
            call,
            service: self.opts.service.clone(),
            id: self.opts.id.clone(),
            status,
            body: answer.text(),
            hint,
        }
    }

    /// A call's unwanted answer: retried, or refused for good.
    fn failure(&self, call: &'static str, answer: &Answer) -> Failure {
        if retryable(answer.status) {
            Failure::Retry(format!("{call}: {}: {}", answer.status, answer.text()))
        } else {
            Failure::Refused(self.refusal(call, answer))
        }
    }

    async fn register(&mut self) -> Result<(), Failure> {
        let body = serde_json::json!({
            "address": self.opts.address.to_string(),
            "ttl": humantime::format_duration(self.opts.ttl).to_string(),
            "tags": self.opts.tags,
        });
        self.unsure = true;
        let answer = self
            .admin
            .call(
                Method::PUT,
                &self.path,
                Some(body.to_string()),
                CALL_TIMEOUT,
            )
            .await
            .map_err(|e| Failure::Retry(format!("register: {e}")))?;
        self.unsure = false;
        match answer.status {
            StatusCode::OK | StatusCode::CREATED => {
                tracing::info!(service = %self.opts.service, id = %self.opts.id, address = %self.opts.address, "registered");
                self.registered = true;
                self.heartbeats = 0;
                self.observe_proxy(&answer.body);
                Ok(())
            }
            _ => Err(self.failure("register", &answer)),
        }
    }

    async fn heartbeat(&mut self) -> Result<(), Failure> {
        let path = format!("{}/heartbeat", self.path);
        let answer = self
            .admin
            .call(Method::PUT, &path, None, CALL_TIMEOUT)
            .await
            .map_err(|e| Failure::Retry(format!("heartbeat: {e}")))?;
        match answer.status {
            StatusCode::OK => {
                self.heartbeats += 1;
                if self.heartbeats % PROXY_VIEW_EVERY == 0 {
                    self.read_proxy_view().await;
                }
                Ok(())
            }
            StatusCode::NOT_FOUND => {
                tracing::warn!(
                    "registry forgot the instance (proxy restarted?); registering again"
                );
                self.registered = false;
                self.agreement.reset();
                self.register().await
            }
            _ => Err(self.failure("heartbeat", &answer)),
        }
    }

    async fn deregister_unhealthy(&mut self) -> Result<(), Failure> {
        let answer = self
            .admin
            .call(Method::DELETE, &self.path, None, CALL_TIMEOUT)
            .await
            .map_err(|e| Failure::Retry(format!("deregister: {e}")))?;
        match answer.status {
            StatusCode::OK | StatusCode::NOT_FOUND => {
                tracing::info!(service = %self.opts.service, id = %self.opts.id, "deregistered while the check fails");
                self.registered = false;
                self.agreement.reset();
                Ok(())
            }
            _ => Err(self.failure("deregister", &answer)),
        }
    }

    /// Reads the proxy's view of the instance (advisory: failures are only
    /// logged at debug level).
    async fn read_proxy_view(&mut self) {
        match self
            .admin
            .call(Method::GET, &self.path, None, CALL_TIMEOUT)
            .await
        {
            Ok(a) if a.status == StatusCode::OK => self.observe_proxy(&a.body),
            Ok(a) => tracing::debug!(status = %a.status, "reading the proxy's view failed"),
            Err(error) => tracing::debug!(%error, "reading the proxy's view failed"),
        }
    }

    /// Compares the proxy's view in a registration's JSON, when it has one,
    /// with the check (which passes: this runs only then).
    fn observe_proxy(&mut self, body: &[u8]) {
        if let Some(view) = proxy_health::parse(body) {
            if let Some(change) = self.agreement.observe(&view) {
                Agreement::log(&change, &self.opts.service, &self.opts.id);
            }
        }
    }

    /// After the loop: drain, deregister, stop the child as `ending` calls
    /// for; the exit code.
    async fn finish(
        &mut self,
        sup: &mut Supervisor,
        ending: Ending,
    ) -> Result<i32, RegistrarError> {
        let registered = self.registered || self.unsure;
        match ending {
            Ending::Stop(signal) => {
                tracing::info!(%signal, "stopping");
                if registered {
                    self.drain(sup).await;
                    self.deregister().await;
                }
                let Some(child) = sup.child.as_mut() else {
                    return Ok(0);
                };
                let stopped = child
                    .stop(self.opts.stop_timeout)
                    .await
                    .map_err(RegistrarError::Wait)?;
                let code = exit_code(true, stopped.status);
                if code == 0 {
                    tracing::info!(status = %stopped.status, "the service stopped");
                } else if stopped.forced {
                    tracing::warn!(status = %stopped.status, "the service was killed after the stop timeout");
                } else if stopped.before {
                    tracing::warn!(status = %stopped.status, "the service had exited by itself");
                } else {
                    tracing::warn!(status = %stopped.status, "the service did not stop cleanly");
                }
                Ok(code)
            }
            Ending::Exited(status) => {
                tracing::warn!(%status, "the service exited");
                if registered {
                    self.deregister().await;
                }
                // The same stop signal can reach it and us at once (systemd
                // signals the whole control group): then it was a stop.
                let asked = sup.stop_pending().await;
                if let Some(child) = sup.child.as_mut() {
                    child.reap_group(self.opts.stop_timeout).await;
                }
                Ok(exit_code(asked, status))
            }
            Ending::Refused(refusal) => {
                let auth = matches!(
                    refusal.status,
                    StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
                );
                if registered && !auth {
                    self.deregister().await;
                }
                if let Some(child) = sup.child.as_mut() {
                    child
                        .stop(self.opts.stop_timeout)
                        .await
                        .map_err(RegistrarError::Wait)?;
                }
                Err(refusal.into())
            }
            Ending::WaitFailed(e) => {
                if registered {
                    self.deregister().await;
                }
                // Dropping the child SIGKILLs its group.
                sup.child = None;
                Err(RegistrarError::Wait(e))
            }
        }
    }

    /// The drain handshake: stop new requests, wait (bounded; a second stop
    /// signal cuts it short) until in-flight ones finish.
    async fn drain(&self, sup: &mut Supervisor) {
        tracing::info!("draining before deregistering");
        let path = format!("{}/drain", self.path);
        match self
            .admin
            .call(Method::PUT, &path, None, CALL_TIMEOUT)
            .await
        {
            Ok(a) if a.status == StatusCode::OK => {}
            Ok(a) => {
                tracing::warn!(status = %a.status, body = %a.text(), "drain refused; deregistering now");
                return;
            }
            Err(error) => {
                tracing::warn!(%error, "drain call failed; deregistering now");
                return;
            }
        }
        let timeout = self.opts.drain_timeout;
        let wait = format!(
            "{}?wait=drained&timeout={}ms",
            self.path,
            timeout.as_millis()
        );
        let call = self
            .admin
            .call(Method::GET, &wait, None, timeout + CALL_TIMEOUT);
        match sup.unless_stopped_again(call).await {
            None => {}
            Some(Ok(a)) if a.status == StatusCode::OK => {
                if drained(&a.body) {
                    tracing::info!("drained");
                } else {
                    tracing::warn!(timeout = %humantime::format_duration(timeout), "drain timeout reached with requests in flight");
                }
            }
            Some(Ok(a)) => {
                tracing::warn!(status = %a.status, body = %a.text(), "drain wait refused")
            }
            Some(Err(error)) => tracing::warn!(%error, "drain wait failed"),
        }
    }

    async fn deregister(&mut self) {
        match self
            .admin
            .call(Method::DELETE, &self.path, None, CALL_TIMEOUT)
            .await
        {
            Ok(a) if a.status == StatusCode::OK => {
                tracing::info!(service = %self.opts.service, id = %self.opts.id, "deregistered");
                self.registered = false;
                self.unsure = false;
            }
            Ok(a) if a.status == StatusCode::NOT_FOUND => {
                tracing::info!(service = %self.opts.service, id = %self.opts.id, "not registered (any more)");
                self.registered = false;
                self.unsure = false;
            }
            Ok(a) => tracing::warn!(
                status = %a.status,
                body = %a.text(),
                "deregister refused; the TTL will remove the instance"
            ),
            Err(error) => tracing::warn!(
                %error,
                "deregister failed; the TTL will remove the instance"
            ),
        }
    }
}

/// Whether an answer with `status` may turn out differently later: 5xx
/// (e.g. 503 while etcd is unreachable), 408, 409 (the address is held by
/// another id, which may expire) and 429.
fn retryable(status: StatusCode) -> bool {
    status.is_server_error()
        || matches!(
            status,
            StatusCode::REQUEST_TIMEOUT | StatusCode::CONFLICT | StatusCode::TOO_MANY_REQUESTS
        )
}

/// The `drained` flag of a registration's JSON.
fn drained(body: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("drained").and_then(serde_json::Value::as_bool))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn only_answers_that_can_change_are_retried() {
        for s in [500, 502, 503, 504, 408, 409, 429] {
            assert!(retryable(StatusCode::from_u16(s).unwrap()), "{s}");
        }
        for s in [400, 401, 403, 404, 405, 413, 422, 301] {
            assert!(!retryable(StatusCode::from_u16(s).unwrap()), "{s}");
        }
    }

    #[test]
    fn a_clean_stop_exits_zero_anything_else_passes_the_code_on() {
        let exited = |code: i32| ExitStatus::from_raw(code << 8);
        let killed = |sig: i32| ExitStatus::from_raw(sig);
        // Asked to stop: exit 0 or death by the SIGTERM sent is a clean stop.
        assert_eq!(exit_code(true, exited(0)), 0);
        assert_eq!(exit_code(true, killed(nix::libc::SIGTERM)), 0);
        // ...a failing exit, or SIGKILL after the stop timeout, is not.
        assert_eq!(exit_code(true, exited(3)), 3);
        assert_eq!(exit_code(true, killed(nix::libc::SIGKILL)), 137);
        // Not asked: the child's own end, whatever it was.
        assert_eq!(exit_code(false, exited(0)), 0);
        assert_eq!(exit_code(false, exited(4)), 4);
        assert_eq!(exit_code(false, killed(nix::libc::SIGTERM)), 143);
        assert_eq!(exit_code(false, killed(nix::libc::SIGHUP)), 129);
    }

    #[test]
    fn each_change_of_the_check_is_told_once() {
        let mut log = CheckLog::default();
        let fail = |r: &str| Err(r.to_owned());
        assert_eq!(
            log.observe(&fail("connect: refused")),
            Some(CheckChange::Failing {
                first: true,
                reason: "connect: refused".into()
            })
        );
        assert_eq!(log.observe(&fail("connect: refused")), None);
        assert_eq!(log.observe(&fail("status 500")), None);
        assert_eq!(
            log.observe(&Ok(())),
            Some(CheckChange::Passing { again: true })
        );
        assert_eq!(log.observe(&Ok(())), None);
        assert_eq!(
            log.observe(&fail("status 503")),
            Some(CheckChange::Failing {
                first: false,
                reason: "status 503".into()
            })
        );
        let mut fresh = CheckLog::default();
        assert_eq!(
            fresh.observe(&Ok(())),
            Some(CheckChange::Passing { again: false })
        );
    }

    #[test]
    fn drained_reads_the_flag() {
        assert!(drained(br#"{"in_flight": 0, "drained": true}"#));
        assert!(!drained(br#"{"in_flight": 2, "drained": false}"#));
        assert!(!drained(b"not json"));
    }

    #[test]
    fn a_refusal_says_what_was_refused_and_what_to_check() {
        let opts = Options {
            registry: "http://127.0.0.1:9900".parse().unwrap(),
            service: "files".into(),
            address: "127.0.0.1:9012".parse().unwrap(),
            id: "f1".into(),
            check: Check::None,
            ttl: Duration::from_secs(10),
            tags: BTreeMap::new(),
            token: None,
            drain_timeout: Duration::from_secs(1),
            stop_timeout: Duration::from_secs(1),
            command: Vec::new(),
        };
        let agent = Agent::new(&opts);
        let answer = Answer {
            status: StatusCode::UNAUTHORIZED,
            body: "missing or wrong bearer token\n".into(),
        };
        let Failure::Refused(r) = agent.failure("register", &answer) else {
            panic!("401 retried");
        };
        assert_eq!(
            r.to_string(),
            "the registry at http://127.0.0.1:9900/ refused to register files/f1: \
             401 Unauthorized: missing or wrong bearer token \
             (check --token or WAYFINDER_TOKEN); not retrying"
        );
        let busy = Answer {
            status: StatusCode::SERVICE_UNAVAILABLE,
            body: "etcd unreachable".into(),
        };
        assert!(
            matches!(agent.failure("heartbeat", &busy), Failure::Retry(m) if m.contains("etcd unreachable"))
        );
    }
}
